// Browser tests of Parley's web UI: Debian's headless Chromium driven by playwright-core
// (no browser download), against a real `parley serve` (demo assistant) that this file
// starts, restarts and stops itself.
//
// Environment (scripts/test-ui sets it):
//   PARLEY_BIN      the parley binary (default ../../target/debug/parley)
//   DATABASE_URL    a fresh database for this run
//   PARLEY_PORT     a free port (default 18099)
//   ARTIFACTS_DIR   where screenshots go (default ../../artifacts)
//   CHROMIUM        the browser (default /usr/bin/chromium)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, createWriteStream } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = process.env.PARLEY_BIN || path.join(root, 'target', 'debug', 'parley');
const PORT = Number(process.env.PARLEY_PORT || 18099);
const BASE = `http://127.0.0.1:${PORT}`;
const ARTIFACTS = process.env.ARTIFACTS_DIR || path.join(root, 'artifacts');
const DATABASE_URL = process.env.DATABASE_URL || `postgres://postgres@127.0.0.1:5432/parley_ui_test_${process.pid}`;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

mkdirSync(ARTIFACTS, { recursive: true });
const serverLog = createWriteStream(path.join(ARTIFACTS, 'ui-test-server.log'), { flags: 'a' });

let server = null;
let browser = null;
let context = null;
let page = null;
const pageErrors = [];

// ----- the server -----

async function waitReady(timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`${BASE}/readyz`);
      if (r.ok) return;
    } catch {
      // not up yet
    }
    if (server && server.exitCode !== null) throw new Error(`parley exited with ${server.exitCode}; see artifacts/ui-test-server.log`);
    await sleep(200);
  }
  throw new Error('parley did not become ready');
}

// Authentication is off (a loopback server) except in the test that turns it on.
async function startServer(extra = ['--auth', 'off']) {
  server = spawn(BIN, ['serve', '--bind', `127.0.0.1:${PORT}`, ...extra], {
    env: { ...process.env, DATABASE_URL, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stdout.pipe(serverLog, { end: false });
  server.stderr.pipe(serverLog, { end: false });
  await waitReady();
}

async function stopServer() {
  if (!server || server.exitCode !== null) return;
  const proc = server;
  const exited = new Promise((resolve) => proc.once('exit', resolve));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 20000);
  await exited;
  clearTimeout(timer);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function apiGet(p) {
  const r = await fetch(`${BASE}/api${p}`);
  assert.ok(r.ok, `GET ${p} → ${r.status}`);
  return r.json();
}

// ----- page helpers -----

/** Creates an API token for `principal` with the CLI and returns it. */
function createToken(principal) {
  return execFileSync(BIN, ['tokens', 'create', '--principal', principal], {
    env: { ...process.env, DATABASE_URL, RUST_LOG: 'warn' },
    encoding: 'utf8',
  }).trim();
}

async function newPage(viewport = { width: 1280, height: 860 }, ctx = context) {
  const p = await ctx.newPage();
  await p.setViewportSize(viewport);
  p.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  p.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource|ERR_CONNECTION_REFUSED|EventSource/.test(m.text())) {
      pageErrors.push(`console: ${m.text()}`);
    }
  });
  p.on('dialog', (d) => {
    if (d.type() === 'confirm') return d.accept();
    pageErrors.push(`unexpected dialog: ${d.message()}`);
    return d.dismiss();
  });
  return p;
}

function conversationIdOf(p) {
  const m = /#\/c\/([0-9a-f-]{36})/.exec(p.url());
  assert.ok(m, `no conversation in ${p.url()}`);
  return m[1];
}

async function send(p, text) {
  const input = p.getByLabel('Message', { exact: true });
  await input.fill(text);
  await input.press('Enter');
}

/** Starts a new conversation with its first message; returns its id. */
async function startConversation(p, text) {
  await p.goto(`${BASE}/#/`);
  await p.getByRole('button', { name: 'New conversation' }).click();
  await send(p, text);
  await p.waitForURL(/#\/c\/[0-9a-f-]{36}$/);
  return conversationIdOf(p);
}

/** The assistant reply to the user message containing `marker`, once stored and shown. */
async function waitReply(p, marker, status = 'completed', timeout = 30000) {
  const sel = `.msg.assistant[data-status="${status}"][data-message-id]`;
  await p.waitForFunction(
    ({ sel, marker }) => [...document.querySelectorAll(sel)].some((e) => e.textContent.includes(marker)),
    { sel, marker },
    { timeout },
  );
  return p.locator(sel, { hasText: marker });
}

/** Records every distinct text of the newest assistant reply (streaming states). */
async function recordStates(p) {
  await p.evaluate(() => {
    window.__states = [];
    const box = document.getElementById('messages');
    const obs = new MutationObserver(() => {
      // The reply to the newest user message sits right after it.
      const users = box.querySelectorAll('.msg.user');
      const reply = users[users.length - 1]?.nextElementSibling;
      const text = reply?.matches('.msg.assistant') ? reply.querySelectorAll('.segment-text') : [];
      const t = [...text].map((e) => e.textContent).join('');
      if (t && window.__states[window.__states.length - 1] !== t) window.__states.push(t);
    });
    obs.observe(box, { subtree: true, childList: true, characterData: true });
  });
}

const normalize = (s) => s.replace(/\s+/g, ' ').trim();
const count = (hay, needle) => hay.split(needle).length - 1;

// ----- setup -----

before(async () => {
  await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-sync',
      '--disable-quic',
    ],
  });
  context = await browser.newContext({ colorScheme: 'light' });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: BASE });
  page = await newPage();
});

after(async () => {
  if (browser) await browser.close();
  await stopServer();
  serverLog.end();
});

// ----- tests -----

test('UI responses carry the security headers', async () => {
  for (const p of ['/', '/assets/app.js', '/assets/app.css']) {
    const r = await fetch(`${BASE}${p}`);
    assert.equal(r.status, 200, p);
    const csp = r.headers.get('content-security-policy') || '';
    assert.match(csp, /script-src 'self'/, p);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, p);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff', p);
    assert.equal(r.headers.get('referrer-policy'), 'no-referrer', p);
  }
  const js = await fetch(`${BASE}/assets/app.js`);
  assert.match(js.headers.get('content-type'), /javascript/);
  const etag = js.headers.get('etag');
  const again = await fetch(`${BASE}/assets/app.js`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  assert.equal((await fetch(`${BASE}/assets/missing.js`)).status, 404);
});

test('a reply streams in through several states and ends complete', async () => {
  await page.goto(`${BASE}/#/`);
  await recordStates(page);
  const id = await startConversation(page, 'Hello from the browser test');
  const reply = await waitReply(page, 'Hello from the browser test');
  const finalText = normalize(await reply.locator('.segments').innerText());
  assert.match(finalText, /^Demo reply to «Hello from the browser test»\. This is a fresh demo session/);
  const states = await page.evaluate(() => window.__states);
  const partial = states.filter((s) => normalize(s) !== finalText);
  assert.ok(partial.length >= 2, `expected several intermediate states, saw ${JSON.stringify(states)}`);
  for (const s of partial) assert.ok(finalText.startsWith(normalize(s)), `"${s}" is not a prefix of the reply`);
  const { messages } = await apiGet(`/conversations/${id}/messages`);
  const assistant = messages.filter((m) => m.role === 'assistant');
  assert.equal(assistant.length, 1);
  assert.equal(normalize(assistant[0].content), finalText);
  assert.equal(await page.locator('.msg.assistant').count(), 1);
  assert.equal(await page.locator('#run-indicator').isVisible(), false);
  // The new conversation is listed with the first message as its title.
  await page.locator('.conversation-item.active', { hasText: 'Hello from the browser test' }).waitFor();
});

test('reloading mid-reply continues the same reply once, with nothing repeated or missing', async () => {
  const id = conversationIdOf(page);
  const marker = '[demo:slow] Reload me mid-reply';
  await send(page, marker);
  // Wait until part of the slow reply is on screen, then reload.
  await page.waitForFunction(() => {
    const live = document.querySelector('.msg.assistant[data-status="running"] .segment-text');
    return live && live.textContent.length > 0;
  }, null, { timeout: 15000 });
  const before = await page.locator('.msg.assistant[data-status="running"] .segment-text').innerText();
  await page.reload();
  await recordStates(page);
  const reply = await waitReply(page, marker, 'completed', 30000);
  const text = normalize(await reply.locator('.segments').innerText());
  assert.ok(text.startsWith(normalize(before)), 'the reply after reload continues the text seen before it');
  const body = await page.locator('#messages').innerText();
  assert.equal(count(body, `Demo reply to «${marker}»`), 1, 'the reply is on the page once');
  assert.equal(await page.locator('.msg.assistant').count(), 2);
  const states = await page.evaluate(() => window.__states);
  assert.ok(states.length >= 2, `the reply kept streaming after the reload: ${JSON.stringify(states)}`);
  // The replay after the reload started at the reply's beginning (the stream cursor is
  // the running turn's start), not at whatever chunk came next.
  assert.ok(normalize(states[0]).startsWith('Demo reply to'), `first state after reload: ${states[0]}`);
  for (const st of states) assert.ok(text.startsWith(normalize(st)), `"${st}" is not a prefix of the reply`);
  assert.notEqual(normalize(states[0]), text, 'the reply was still streaming after the reload');
  const { messages } = await apiGet(`/conversations/${id}/messages`);
  const stored = messages.filter((m) => m.role === 'assistant').pop();
  assert.equal(normalize(stored.content), text, 'what is shown is exactly what was stored');
});

test('a connection lost mid-reply resumes where it stopped (Last-Event-ID)', async () => {
  const id = conversationIdOf(page);
  const marker = '[demo:slow] Survive a lost connection';
  await send(page, marker);
  await page.waitForFunction(() => {
    const live = document.querySelector('.msg.assistant[data-status="running"] .segment-text');
    return live && live.textContent.length > 0;
  }, null, { timeout: 15000 });
  // A graceful stop ends every event stream at once; the running turn finishes during
  // the grace period while the browser cannot reach the server.
  await stopServer();
  await page.locator('#connection.conn-reconnecting, #connection.conn-offline').waitFor({ timeout: 10000 });
  await startServer();
  const reply = await waitReply(page, marker, 'completed', 40000);
  const text = normalize(await reply.locator('.segments').innerText());
  const body = await page.locator('#messages').innerText();
  assert.equal(count(body, `Demo reply to «${marker}»`), 1);
  const { messages } = await apiGet(`/conversations/${id}/messages`);
  assert.equal(normalize(messages.filter((m) => m.role === 'assistant').pop().content), text);
  await page.locator('#connection.conn-live').waitFor({ timeout: 15000 });
});

test('a second tab opened mid-reply shows the reply once', async () => {
  const marker = '[demo:slow] Open another tab';
  await send(page, marker);
  await page.waitForFunction(() => document.querySelector('.msg.assistant[data-status="running"] .segment-text'), null, { timeout: 15000 });
  const other = await newPage();
  await other.goto(page.url());
  await waitReply(other, marker);
  await waitReply(page, marker);
  for (const p of [page, other]) {
    const body = await p.locator('#messages').innerText();
    assert.equal(count(body, `Demo reply to «${marker}»`), 1);
    assert.equal(await p.locator('.msg.assistant').count(), 4);
  }
  await other.close();
});

test('after a server restart the next message is answered and the recovery notice is shown', async () => {
  const id = conversationIdOf(page);
  await stopServer();
  await startServer();
  const marker = 'First message after the restart';
  await send(page, marker);
  const reply = await waitReply(page, marker, 'completed', 30000);
  const notice = reply.locator('.session-notice');
  await notice.waitFor();
  assert.match(await notice.innerText(), /Assistant session expired — continued in a fresh session with the conversation's history/);
  assert.match(normalize(await reply.innerText()), /fresh demo session .* earlier message/);
  // The session chain shows why the new session started.
  await page.getByRole('button', { name: 'Show the session chain' }).click();
  const chain = page.locator('#session-chain');
  await chain.locator('.session-item').nth(1).waitFor();
  assert.match(await chain.innerText(), /assistant session expired/);
  assert.equal(await chain.locator('.session-item.active').count(), 1);
  await page.getByRole('button', { name: 'Close the session panel' }).click();
  const sessions = (await apiGet(`/sessions?conversation_id=${id}`)).sessions;
  assert.ok(sessions.length >= 2);
  assert.equal(sessions[sessions.length - 1].transition_reason, 'stale-session');
  assert.equal(await chain.locator('.session-item').count(), sessions.length);
});

test('the session panel shows the kept transcript of a session and how often it was restored', async () => {
  const id = conversationIdOf(page);
  // The demo assistant keeps no session file: the listing is given one, as a claude
  // session's would look after two restores on another replica.
  const kept = {
    session_id: null,
    conversation_id: id,
    assistant: 'claude',
    assistant_session_id: 'b1c2d3e4-0000-4000-8000-000000000001',
    cwd: '/data/workspaces/w',
    relative_path: 'projects/-data-workspaces-w/b1c2d3e4-0000-4000-8000-000000000001.jsonl',
    bytes: 3 * 1024 * 1024 + 200 * 1024,
    stored_by: 'replica-b',
    stored_at: new Date().toISOString(),
    restores: 2,
    restored_by: 'replica-a',
    restored_at: new Date().toISOString(),
  };
  const listing = (url) => url.pathname === '/api/sessions';
  await page.route(listing, async (route) => {
    const response = await route.fetch();
    const body = await response.json();
    const last = body.sessions[body.sessions.length - 1];
    last.transcript = { ...kept, session_id: last.session_id };
    await route.fulfill({ response, json: body });
  });
  try {
    await page.getByRole('button', { name: 'Show the session chain' }).click();
    const item = page.locator('#session-chain .session-item.active');
    await item.locator('.session-transcript').waitFor();
    const text = normalize(await item.locator('.session-transcript').innerText());
    assert.match(text, /3\.2 MiB, stored by replica-b; restored 2× \(last by replica-a\)/);
    // A session without a kept copy says nothing about one.
    const ended = page.locator('#session-chain .session-item:not(.active)');
    if ((await ended.count()) > 0) assert.equal(await ended.first().locator('.session-transcript').count(), 0);
    await page.getByRole('button', { name: 'Close the session panel' }).click();
  } finally {
    await page.unroute(listing);
  }
});

test('HTML in messages renders as text, Markdown renders, and no script runs', async () => {
  await page.evaluate(() => {
    window.__xss = undefined;
  });
  const message =
    'XSS probe **bold** `inline code` <script>window.__xss=1</script> <img src=x onerror="window.__xss=2"> [bad](javascript:alert(1))\n```js\nconsole.log(42)\n```\nend';
  await startConversation(page, message);
  const reply = await waitReply(page, 'XSS probe');
  assert.equal(await page.evaluate(() => window.__xss), undefined, 'no injected script ran');
  assert.equal(await page.locator('#messages script, #messages img, #messages [onerror]').count(), 0);
  assert.equal(await page.locator('#messages a[href^="javascript"]').count(), 0);
  const text = await reply.innerText();
  assert.ok(text.includes('<script>window.__xss=1</script>'), 'the script tag is shown as text');
  assert.ok(text.includes('<img src=x onerror="window.__xss=2">'));
  assert.equal(await reply.locator('strong', { hasText: 'bold' }).count(), 1);
  assert.equal(await reply.locator('code', { hasText: 'inline code' }).count(), 1);
  const block = reply.locator('.code-block');
  assert.equal(await block.locator('code').innerText(), 'console.log(42)');
  await block.getByRole('button', { name: 'Copy code' }).click();
  await block.getByRole('button', { name: 'Copy code' }).filter({ hasText: 'Copied' }).waitFor();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'console.log(42)');
  // The user's own message renders the same way.
  const mine = page.locator('.msg.user', { hasText: 'XSS probe' });
  assert.equal(await mine.locator('strong').count(), 1);
});

test('a failed reply shows its error where it happened, and Retry runs it again', async () => {
  const marker = '[demo:fail] Please fail';
  await send(page, marker);
  const failed = page.locator('.msg.assistant[data-status="failed"]');
  await failed.first().waitFor({ timeout: 15000 });
  assert.match(await failed.first().locator('.error-box').innerText(), /the demo assistant failed/);
  // The failure sits right under the message that caused it.
  const after = await page.locator('.msg.user', { hasText: marker }).evaluate((el) => el.nextElementSibling?.dataset.status);
  assert.equal(after, 'failed');
  await failed.first().getByRole('button', { name: 'Retry the failed reply' }).click();
  await page.locator('.system-notice', { hasText: 'Retrying the last failed turn' }).waitFor();
  await page.waitForFunction(() => document.querySelectorAll('.msg.assistant[data-status="failed"]').length === 2, null, { timeout: 15000 });
  assert.equal(await page.getByRole('button', { name: 'Retry the failed reply' }).count(), 1, 'only the newest failure offers Retry');
  // After a reload the failure is still shown with its error.
  await page.reload();
  await page.locator('.msg.assistant[data-status="failed"] .error-box').first().waitFor();
});

test('Esc cancels a running reply', async () => {
  await send(page, '[demo:slow] Cancel me');
  await page.locator('#run-indicator').waitFor({ state: 'visible' });
  assert.match(await page.locator('#run-label').innerText(), /Working… \d+s/);
  await page.keyboard.press('Escape');
  await page.locator('.msg.assistant[data-status="cancelled"]').waitFor({ timeout: 15000 });
  await page.locator('#run-indicator').waitFor({ state: 'hidden' });
});

test('chat commands typed in the input show their reply as a notice', async () => {
  await send(page, '/status');
  const notice = page.locator('.system-notice', { hasText: '/status' });
  await notice.waitFor();
  assert.ok((await notice.innerText()).length > 10);
  await send(page, '/help');
  await page.locator('.system-notice', { hasText: '/retry' }).waitFor();
  // Shift+Enter adds a line instead of sending.
  const input = page.getByLabel('Message', { exact: true });
  await input.fill('line one');
  await input.press('Shift+Enter');
  await input.type('line two');
  assert.equal(await input.inputValue(), 'line one\nline two');
  await input.fill('');
});

test('Reset ends the session and Delete removes the conversation', async () => {
  const id = conversationIdOf(page);
  await page.getByRole('button', { name: 'Reset the assistant session' }).click();
  await page.locator('.local-notice').last().waitFor();
  await page.getByRole('button', { name: 'Delete this conversation' }).click();
  await page.waitForURL(/#\/$/);
  const r = await fetch(`${BASE}/api/conversations/${id}`);
  assert.equal(r.status, 404);
  assert.equal(await page.locator(`.conversation-item[data-id="${id}"]`).count(), 0);
});

test('the settings panel changes model, prompt and directory, shows refusals next to the field, and the next reply uses them', async () => {
  const id = await startConversation(page, 'Settings panel: hello');
  await waitReply(page, 'Settings panel: hello');
  await page.getByRole('button', { name: 'Conversation settings' }).click();
  const panel = page.locator('#settings-panel');
  await panel.waitFor();
  const field = (label) => panel.getByLabel(label, { exact: true });
  await page.waitForFunction(() => document.getElementById('setting-assistant').options.length > 1);
  assert.equal(await field('Title').inputValue(), 'Settings panel: hello');
  assert.equal(await field('Assistant').inputValue(), 'demo');
  assert.equal(await field('Model').inputValue(), '');
  // The demo has no permission modes: only the server's default, and the select is off.
  assert.equal(await field('Permission mode').locator('option').count(), 1);
  assert.equal(await field('Permission mode').isDisabled(), true);

  // A directory out of the workspace is refused where it was typed; nothing is stored.
  await field('Model').fill('opus');
  await field('Added to the system prompt').fill('Answer briefly.');
  await field('Working directory').fill('../escape');
  await panel.getByRole('button', { name: 'Save' }).click();
  await panel.locator('#settings-error').waitFor();
  assert.match(await panel.locator('#settings-error').innerText(), /\.\./);
  assert.equal(await field('Working directory').getAttribute('aria-invalid'), 'true');
  assert.equal((await apiGet(`/conversations/${id}`)).model, null);

  await field('Working directory').fill('notes');
  await panel.getByRole('button', { name: 'Save' }).click();
  await panel.locator('#settings-status', { hasText: 'fresh one' }).waitFor();
  assert.equal(await panel.locator('#settings-error').isVisible(), false);
  const saved = await apiGet(`/conversations/${id}`);
  assert.deepEqual([saved.model, saved.system_prompt, saved.cwd], ['opus', 'Answer briefly.', 'notes']);
  const { sessions } = await apiGet(`/sessions?conversation_id=${id}`);
  // Several changes at once: the reason is the first of assistant, directory, model, prompt.
  assert.equal(sessions[0].ended_reason, 'cwd-changed');
  await send(page, 'Which model now?');
  const reply = await waitReply(page, 'Which model now?');
  assert.match(await reply.innerText(), /Model: opus\./);

  // Another assistant offers its own permission modes; going back resets the mode.
  await field('Assistant').selectOption('claude');
  await field('Permission mode').selectOption('plan');
  await panel.getByRole('button', { name: 'Save' }).click();
  await panel.locator('#settings-status', { hasText: 'assistant changed' }).waitFor();
  const claude = await apiGet(`/conversations/${id}`);
  assert.deepEqual([claude.assistant, claude.permission_mode], ['claude', 'plan']);
  await field('Assistant').selectOption('demo');
  assert.equal(await field('Permission mode').inputValue(), '');
  await field('Title').fill('Renamed in settings');
  await panel.getByRole('button', { name: 'Save' }).click();
  await panel.locator('#settings-status', { hasText: 'Saved' }).waitFor();
  const back = await apiGet(`/conversations/${id}`);
  assert.deepEqual([back.assistant, back.permission_mode, back.title], ['demo', null, 'Renamed in settings']);
  await page.locator('.conversation-item.active', { hasText: 'Renamed in settings' }).waitFor();
  await page.screenshot({ path: path.join(ARTIFACTS, 'ui-settings.png') });
  await page.keyboard.press('Escape');
  await panel.waitFor({ state: 'hidden' });
});

test('screenshots of the conversation view (desktop and phone width)', async () => {
  const message =
    'Show me a **Markdown** sample [demo:tool] [demo:thinking]\n\n- a list item with `code`\n- a [link](https://example.com)\n\n```bash\ncargo build && ./target/debug/parley serve\n```\n\nThanks!';
  const id = await startConversation(page, message);
  await waitReply(page, 'Show me a');
  await send(page, 'And a second question, please.');
  await waitReply(page, 'second question');
  // The list badge follows the turn: no longer running.
  await page.waitForFunction((id) => {
    const item = document.querySelector(`.conversation-item[data-id="${id}"]`);
    return item && !item.querySelector('.badge-running');
  }, id);
  await page.locator('.msg.assistant .activity.tool summary').first().click();
  await page.getByRole('button', { name: 'Show the session chain' }).click();
  await page.locator('#session-chain .session-item').first().waitFor();
  await page.locator('#messages').evaluate((el) => {
    el.scrollTop = el.scrollHeight;
  });
  await page.mouse.move(0, 0);
  await page.screenshot({ path: path.join(ARTIFACTS, 'ui-conversation.png') });
  await page.getByRole('button', { name: 'Close the session panel' }).click();
  const phone = await newPage({ width: 390, height: 844 });
  await phone.goto(page.url());
  await waitReply(phone, 'second question');
  await phone.screenshot({ path: path.join(ARTIFACTS, 'ui-phone.png') });
  // The conversation list is reachable from the menu button at phone width.
  await phone.getByRole('button', { name: 'Show conversations' }).click();
  await phone.locator('.conversation-item.active').waitFor({ state: 'visible' });
  await phone.close();
});

test('the conversation list loads older conversations as it is scrolled', async () => {
  // More conversations than one page of the list (50), created oldest first.
  const titles = Array.from({ length: 70 }, (_, i) => `Scroll test ${String(i).padStart(2, '0')}`);
  for (const title of titles) {
    const r = await fetch(`${BASE}/api/conversations`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ title }),
    });
    assert.equal(r.status, 201);
  }
  let total = 0;
  for (let after = null; ; ) {
    const { conversations, next } = await apiGet(`/conversations?limit=200${after ? `&after=${after}` : ''}`);
    total += conversations.length;
    if (!next) break;
    after = next;
  }
  const p = await newPage();
  await p.goto(`${BASE}/#/`);
  const items = p.locator('#conversation-list .conversation-item');
  await p.locator('#conversation-list .conversation-item', { hasText: 'Scroll test 69' }).waitFor();
  assert.equal(await items.count(), 50, 'one page at first');
  assert.equal(await p.locator('.conversation-item', { hasText: 'Scroll test 00' }).count(), 0, 'the oldest is not loaded yet');
  await p.locator('#list-more').waitFor({ state: 'attached' });
  // Scrolling to the end of the list loads the older pages, each conversation once.
  for (let i = 0; i < 10 && (await items.count()) < total; i += 1) {
    await p.locator('#conversation-list-wrap').evaluate((el) => {
      el.scrollTop = el.scrollHeight;
    });
    await sleep(300);
  }
  await p.locator('.conversation-item', { hasText: 'Scroll test 00' }).waitFor();
  assert.equal(await items.count(), total, 'every conversation is listed once scrolled to the end');
  const ids = await items.evaluateAll((els) => els.map((e) => e.dataset.id));
  assert.equal(new Set(ids).size, ids.length, 'no conversation is listed twice');
  assert.equal(await p.locator('#list-more').isVisible(), false, 'nothing more to load');
  // The periodic refresh of the first page keeps the older pages.
  await sleep(5500);
  assert.equal(await items.count(), total);
  await p.close();
});

test('with auth on, the page asks for a token, a valid one works, and other principals\' conversations stay hidden', async () => {
  await stopServer();
  const alice = createToken('ui-alice');
  const bob = createToken('ui-bob');
  await startServer(['--auth', 'on']);
  const ctx = await browser.newContext({ colorScheme: 'light' });
  try {
    const bobs = await fetch(`${BASE}/api/conversations`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${bob}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ title: 'Bob private plans' }),
    });
    assert.equal(bobs.status, 201);
    const bobId = (await bobs.json()).conversation_id;
    assert.equal((await fetch(`${BASE}/api/conversations`)).status, 401);

    const p = await newPage(undefined, ctx);
    await p.goto(`${BASE}/#/`);
    const dialog = p.getByRole('dialog', { name: 'Sign in' });
    await dialog.waitFor({ state: 'visible' });
    const input = p.getByLabel('API token', { exact: true });
    assert.equal(await input.evaluate((e) => e === document.activeElement), true, 'the token field has focus');
    await p.screenshot({ path: path.join(ARTIFACTS, 'ui-sign-in.png') });
    await input.fill('parley_not-a-real-token');
    await input.press('Enter');
    await p.locator('#token-error').waitFor({ state: 'visible' });
    assert.match(await p.locator('#token-error').innerText(), /not accepted/);
    await input.fill(alice);
    await input.press('Enter');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await p.evaluate(() => localStorage.getItem('parley.token')), alice);

    // Alice talks: the conversation is hers and the reply streams (?access_token= on the events stream).
    const id = await startConversation(p, 'Hello as alice');
    await waitReply(p, 'Hello as alice');
    const titles = await p.locator('.conversation-title').allInnerTexts();
    assert.ok(titles.some((t) => t.includes('Hello as alice')), JSON.stringify(titles));
    assert.ok(!titles.some((t) => t.includes('Bob')), `bob's conversation is listed: ${JSON.stringify(titles)}`);
    await p.goto(`${BASE}/#/c/${bobId}`);
    await p.getByText('This conversation does not exist').waitFor();
    const asBob = await fetch(`${BASE}/api/conversations/${id}`, { headers: { Authorization: `Bearer ${bob}` } });
    assert.equal(asBob.status, 404);

    // Sign out forgets the token and asks again.
    await p.getByRole('button', { name: /Sign out/ }).click();
    await dialog.waitFor({ state: 'visible' });
    assert.equal(await p.evaluate(() => localStorage.getItem('parley.token')), null);
  } finally {
    await ctx.close();
    await stopServer();
    await startServer();
  }
});

test('no page errors or CSP violations', () => {
  assert.deepEqual(pageErrors, []);
});
