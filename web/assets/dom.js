// DOM helpers. Text always goes in as text nodes (never parsed as HTML).

/**
 * Creates an element: `h('div', {class: 'x', 'aria-label': 'y', onclick: fn}, child…)`.
 * Children are nodes or strings (strings become text nodes); null/false are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** Appends children (nodes, strings, arrays of them) to `el`. */
export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Removes every child of `el`. */
export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

/** `12s`, `1:05`, `1:02:03` for a duration in milliseconds. */
export function formatElapsed(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  const pad = (n) => String(n).padStart(2, '0');
  if (m < 60) return `${m}:${pad(s % 60)}`;
  return `${Math.floor(m / 60)}:${pad(m % 60)}:${pad(s % 60)}`;
}

/** A short relative time like `just now`, `5 min ago`, `3 h ago`, or a date. */
export function relativeTime(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const d = (Date.now() - t) / 1000;
  if (d < 45) return 'just now';
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(t).toLocaleDateString();
}

/** Copies text to the clipboard; falls back to a hidden textarea where the API is missing. */
export async function copyText(text) {
  if (navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // fall through
    }
  }
  const ta = h('textarea', { class: 'visually-hidden', 'aria-hidden': 'true' });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  ta.remove();
  return ok;
}

/** `n` bytes for people: 812 B, 14.2 KiB, 3.1 MiB. */
export function formatBytes(n) {
  const v = Number(n ?? 0);
  if (v < 1024) return `${v} B`;
  if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${(v / 1024 / 1024).toFixed(1)} MiB`;
}
