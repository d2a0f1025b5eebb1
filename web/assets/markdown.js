// A small, safe Markdown renderer: it builds DOM nodes directly and puts every piece of
// text in a text node, so no input can inject HTML. Raw HTML in the input is shown as
// text. Links are kept only for http(s) and mailto URLs; images render as links (the
// page's CSP loads no remote images).
//
// Supported: paragraphs (single newlines are line breaks), ATX headings, fenced code
// blocks (with a language label and a copy button; an unclosed fence runs to the end,
// which suits streaming), indented code, block quotes, ordered/unordered/task lists
// with nesting, tables, horizontal rules; inline code, **strong**, *emphasis*,
// ~~strikethrough~~, [links](url), <autolinks> and bare URLs, backslash escapes.

import { h, copyText } from './dom.js';

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const HR = /^ {0,3}((\*[ \t]*){3,}|(-[ \t]*){3,}|(_[ \t]*){3,})$/;
const QUOTE = /^ {0,3}> ?/;
const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])([ \t]+|$)/;
const TABLE_SEP = /^ *\|? *:?-+:? *(\| *:?-+:? *)*\|? *$/;
const BLANK = /^\s*$/;

/** Renders Markdown into a DocumentFragment. */
export function renderMarkdown(src) {
  const frag = document.createDocumentFragment();
  const lines = String(src ?? '').replace(/\r\n?/g, '\n').split('\n');
  for (const node of blocks(lines, 0)) frag.append(node);
  return frag;
}

function isBlockStart(line, next) {
  return (
    FENCE.test(line) ||
    HEADING.test(line) ||
    HR.test(line) ||
    QUOTE.test(line) ||
    LIST_ITEM.test(line) ||
    (line.includes('|') && next !== undefined && TABLE_SEP.test(next) && next.includes('-'))
  );
}

function blocks(lines, depth) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (BLANK.test(line)) {
      i += 1;
      continue;
    }
    let m = FENCE.exec(line);
    if (m) {
      const fence = m[1];
      const lang = m[2] || '';
      const body = [];
      i += 1;
      while (i < lines.length) {
        const close = lines[i].trim();
        if (close.startsWith(fence[0].repeat(fence.length)) && /^([`~])\1*$/.test(close) && close[0] === fence[0]) {
          i += 1;
          break;
        }
        body.push(lines[i]);
        i += 1;
      }
      out.push(codeBlock(body.join('\n'), lang));
      continue;
    }
    if (HR.test(line)) {
      out.push(h('hr'));
      i += 1;
      continue;
    }
    m = HEADING.exec(line);
    if (m) {
      const level = Math.min(6, m[1].length + 2); // h3–h6 inside a message
      out.push(h(`h${Math.min(level, 6)}`, { class: `md-h${m[1].length}` }, inline(m[2] || '')));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && !BLANK.test(lines[i]) && (QUOTE.test(lines[i]) || body.length)) {
        if (!QUOTE.test(lines[i]) && isBlockStart(lines[i], lines[i + 1])) break;
        body.push(lines[i].replace(QUOTE, ''));
        i += 1;
      }
      out.push(h('blockquote', {}, depth < 8 ? blocks(body, depth + 1) : inline(body.join('\n'))));
      continue;
    }
    m = LIST_ITEM.exec(line);
    if (m) {
      const [node, next] = list(lines, i, depth);
      out.push(node);
      i = next;
      continue;
    }
    if (line.includes('|') && i + 1 < lines.length && TABLE_SEP.test(lines[i + 1]) && lines[i + 1].includes('-')) {
      const [node, next] = table(lines, i);
      out.push(node);
      i = next;
      continue;
    }
    if (/^( {4}|\t)/.test(line)) {
      const body = [];
      while (i < lines.length && (/^( {4}|\t)/.test(lines[i]) || BLANK.test(lines[i]))) {
        body.push(lines[i].replace(/^( {4}|\t)/, ''));
        i += 1;
      }
      while (body.length && BLANK.test(body[body.length - 1])) body.pop();
      out.push(codeBlock(body.join('\n'), ''));
      continue;
    }
    const para = [];
    while (i < lines.length && !BLANK.test(lines[i]) && (para.length === 0 || !isBlockStart(lines[i], lines[i + 1]))) {
      para.push(lines[i].trim());
      i += 1;
    }
    out.push(h('p', {}, inline(para.join('\n'))));
  }
  return out;
}

function list(lines, start, depth) {
  const first = LIST_ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const el = ordered ? h('ol') : h('ul');
  if (ordered) {
    const n = parseInt(first[2], 10);
    if (n !== 1) el.setAttribute('start', String(n));
  }
  let i = start;
  while (i < lines.length) {
    const m = LIST_ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = m[0].length;
    const body = [lines[i].slice(m[0].length)];
    i += 1;
    let blankRun = 0;
    while (i < lines.length) {
      const l = lines[i];
      if (BLANK.test(l)) {
        blankRun += 1;
        body.push('');
        i += 1;
        continue;
      }
      const lead = l.match(/^ */)[0].length;
      const nested = LIST_ITEM.exec(l);
      if (lead >= Math.min(contentIndent, indent + 2)) {
        body.push(l.slice(Math.min(lead, contentIndent)));
        blankRun = 0;
        i += 1;
      } else if (!blankRun && !nested && !isBlockStart(l, lines[i + 1])) {
        body.push(l.trim()); // lazy continuation
        i += 1;
      } else {
        break;
      }
    }
    while (body.length && BLANK.test(body[body.length - 1])) body.pop();
    const li = h('li');
    const task = /^\[([ xX])\][ \t]+/.exec(body[0]);
    if (task) {
      body[0] = body[0].slice(task[0].length);
      li.className = 'task';
      li.append(h('input', { type: 'checkbox', disabled: true, checked: task[1] !== ' ', 'aria-label': 'task' }));
    }
    const inner = depth < 8 ? blocks(body, depth + 1) : [h('p', {}, inline(body.join('\n')))];
    // A tight item (one paragraph) shows without paragraph spacing.
    if (inner.length >= 1 && inner[0].tagName === 'P' && !body.includes('')) {
      li.append(...inner[0].childNodes);
      li.append(...inner.slice(1));
    } else {
      li.append(...inner);
    }
    el.append(li);
    if (blankRun && (i >= lines.length || !LIST_ITEM.test(lines[i]))) break;
  }
  return [el, i];
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith('|')) s = s.slice(1);
  if (s.endsWith('|') && !s.endsWith('\\|')) s = s.slice(0, -1);
  const cells = [];
  let cur = '';
  for (let k = 0; k < s.length; k += 1) {
    if (s[k] === '\\' && s[k + 1] === '|') {
      cur += '|';
      k += 1;
    } else if (s[k] === '|') {
      cells.push(cur.trim());
      cur = '';
    } else {
      cur += s[k];
    }
  }
  cells.push(cur.trim());
  return cells;
}

function table(lines, start) {
  const head = splitRow(lines[start]);
  const aligns = splitRow(lines[start + 1]).map((c) =>
    c.startsWith(':') && c.endsWith(':') ? 'center' : c.endsWith(':') ? 'right' : c.startsWith(':') ? 'left' : null,
  );
  const cls = (k) => (aligns[k] ? `align-${aligns[k]}` : null);
  const thead = h('thead', {}, h('tr', {}, head.map((c, k) => h('th', { class: cls(k), scope: 'col' }, inline(c)))));
  const tbody = h('tbody');
  let i = start + 2;
  while (i < lines.length && !BLANK.test(lines[i]) && lines[i].includes('|')) {
    const cells = splitRow(lines[i]);
    tbody.append(h('tr', {}, head.map((_, k) => h('td', { class: cls(k) }, inline(cells[k] ?? '')))));
    i += 1;
  }
  return [h('div', { class: 'table-wrap' }, h('table', {}, thead, tbody)), i];
}

function codeBlock(code, lang) {
  const safeLang = lang.replace(/[^\w+#.-]/g, '').slice(0, 30);
  const codeEl = h('code', { class: safeLang ? `language-${safeLang}` : null }, code);
  const button = h('button', { type: 'button', class: 'copy-btn', 'aria-label': 'Copy code' }, 'Copy');
  button.addEventListener('click', async () => {
    const ok = await copyText(code);
    button.textContent = ok ? 'Copied' : 'Copy failed';
    setTimeout(() => {
      button.textContent = 'Copy';
    }, 1500);
  });
  return h(
    'div',
    { class: 'code-block' },
    h('div', { class: 'code-head' }, h('span', { class: 'code-lang' }, safeLang || 'text'), button),
    h('pre', {}, codeEl),
  );
}

/** A URL a link may point to, or null: only absolute http(s) and mailto. */
export function safeUrl(raw) {
  const s = String(raw).trim();
  if (!/^(https?:\/\/|mailto:)/i.test(s)) return null;
  try {
    const u = new URL(s);
    return ['http:', 'https:', 'mailto:'].includes(u.protocol) ? u.href : null;
  } catch {
    return null;
  }
}

function link(href, children) {
  return h('a', { href, target: '_blank', rel: 'noopener noreferrer nofollow' }, children);
}

const ESCAPABLE = '\\`*_{}[]()#+-.!|~<>"\'';

/** Parses inline Markdown into an array of nodes. */
export function inline(text, depth = 0) {
  const out = [];
  let buf = '';
  const flush = () => {
    if (buf) out.push(document.createTextNode(buf));
    buf = '';
  };
  let i = 0;
  const s = text;
  while (i < s.length) {
    const c = s[i];
    if (c === '\\' && i + 1 < s.length && ESCAPABLE.includes(s[i + 1])) {
      buf += s[i + 1];
      i += 2;
      continue;
    }
    if (c === '\n') {
      flush();
      out.push(h('br'));
      i += 1;
      continue;
    }
    if (c === '`') {
      const run = /^`+/.exec(s.slice(i))[0];
      const end = s.indexOf(run, i + run.length);
      if (end !== -1) {
        flush();
        let code = s.slice(i + run.length, end).replace(/\n/g, ' ');
        if (/^ .* $/.test(code)) code = code.slice(1, -1);
        out.push(h('code', {}, code));
        i = end + run.length;
        continue;
      }
      buf += run;
      i += run.length;
      continue;
    }
    if (depth < 6 && (c === '*' || c === '_' || c === '~')) {
      const m = emphasis(s, i, depth);
      if (m) {
        flush();
        out.push(m.node);
        i = m.end;
        continue;
      }
    }
    if (c === '!' && s[i + 1] === '[') {
      const m = linkAt(s, i + 1, depth);
      if (m) {
        flush();
        out.push(m.href ? link(m.href, [`🖼 ${m.label || 'image'}`]) : document.createTextNode(s.slice(i, m.end)));
        i = m.end;
        continue;
      }
    }
    if (c === '[' && depth < 6) {
      const m = linkAt(s, i, depth);
      if (m) {
        flush();
        if (m.href) out.push(link(m.href, inline(m.label, depth + 1)));
        else out.push(...inline(m.label, depth + 1), document.createTextNode(` (${m.rawUrl})`));
        i = m.end;
        continue;
      }
    }
    if (c === '<') {
      const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(s.slice(i));
      const href = m && safeUrl(m[1]);
      if (href) {
        flush();
        out.push(link(href, [m[1]]));
        i += m[0].length;
        continue;
      }
    }
    if ((c === 'h' || c === 'H') && (i === 0 || /[\s(«"']/.test(s[i - 1]))) {
      const m = /^https?:\/\/[^\s<>"'«»]+/i.exec(s.slice(i));
      if (m) {
        let url = m[0].replace(/[.,;:!?)\]]+$/, '');
        // Keep a closing parenthesis that balances one in the URL.
        while (m[0].length > url.length && (url.match(/\(/g) || []).length > (url.match(/\)/g) || []).length) {
          const nextChar = m[0][url.length];
          url += nextChar;
          if (nextChar !== ')') break;
        }
        const href = safeUrl(url);
        if (href) {
          flush();
          out.push(link(href, [url]));
          i += url.length;
          continue;
        }
      }
    }
    buf += c;
    i += 1;
  }
  flush();
  return out;
}

function emphasis(s, i, depth) {
  const c = s[i];
  const double = s[i + 1] === c;
  if (c === '~' && !double) return null;
  const marker = double ? c + c : c;
  const startContent = i + marker.length;
  if (startContent >= s.length || /\s/.test(s[startContent])) return null;
  // `_` inside a word (snake_case) is not emphasis.
  if (c === '_' && i > 0 && /[\p{L}\p{N}]/u.test(s[i - 1])) return null;
  let j = startContent;
  while (j < s.length) {
    const k = s.indexOf(marker, j);
    if (k === -1) return null;
    if (s[k - 1] === '\\') {
      j = k + 1;
      continue;
    }
    if (k > startContent && !/\s/.test(s[k - 1])) {
      // For a single marker, do not close on the first half of a double one.
      if (!double && s[k + 1] === c) {
        j = k + 2;
        continue;
      }
      if (c === '_' && k + marker.length < s.length && /[\p{L}\p{N}]/u.test(s[k + marker.length])) {
        j = k + 1;
        continue;
      }
      const inner = inline(s.slice(startContent, k), depth + 1);
      const tag = c === '~' ? 'del' : double ? 'strong' : 'em';
      return { node: h(tag, {}, inner), end: k + marker.length };
    }
    j = k + 1;
  }
  return null;
}

function linkAt(s, i, depth) {
  // [label](url "title")
  let level = 0;
  let j = i;
  for (; j < s.length; j += 1) {
    if (s[j] === '\\') {
      j += 1;
      continue;
    }
    if (s[j] === '[') level += 1;
    else if (s[j] === ']') {
      level -= 1;
      if (level === 0) break;
    }
  }
  if (j >= s.length || s[j + 1] !== '(') return null;
  const label = s.slice(i + 1, j);
  let k = j + 2;
  let paren = 1;
  for (; k < s.length; k += 1) {
    if (s[k] === '(') paren += 1;
    else if (s[k] === ')') {
      paren -= 1;
      if (paren === 0) break;
    } else if (s[k] === '\n') return null;
  }
  if (k >= s.length) return null;
  const rawUrl = s.slice(j + 2, k).trim().replace(/\s+"[^"]*"$/, '').replace(/^<(.*)>$/, '$1');
  void depth;
  return { label, href: safeUrl(rawUrl), rawUrl, end: k + 1 };
}
