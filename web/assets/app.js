// Parley's web UI: the conversation list, routing (`#/c/<id>`), the composer, the
// header actions and the session panel. The open conversation itself lives in
// conversation.js, its settings panel in settings.js.

import { api, ApiError, onUnauthorized, setToken, token } from './api.js';
import { h, clear, formatBytes, relativeTime } from './dom.js';
import { ConversationView } from './conversation.js';
import { SettingsPanel } from './settings.js';

const $ = (id) => document.getElementById(id);

const els = {
  list: $('conversation-list'),
  listWrap: $('conversation-list-wrap'),
  listEmpty: $('list-empty'),
  listMore: $('list-more'),
  messages: $('messages'),
  welcome: $('welcome'),
  title: $('conversation-title'),
  status: $('conversation-status'),
  input: $('input'),
  composer: $('composer'),
  send: $('send-button'),
  cancel: $('cancel-button'),
  reset: $('reset-button'),
  del: $('delete-button'),
  sessionsButton: $('sessions-button'),
  sessionsPanel: $('sessions-panel'),
  sessionChain: $('session-chain'),
  closeSessions: $('close-sessions'),
  settingsButton: $('settings-button'),
  settingsPanel: $('settings-panel'),
  closeSettings: $('close-settings'),
  indicator: $('run-indicator'),
  runLabel: $('run-label'),
  connection: $('connection'),
  sidebar: $('sidebar'),
  scrim: $('scrim'),
  toggleSidebar: $('toggle-sidebar'),
  newConversation: $('new-conversation'),
  account: $('account'),
  signOut: $('sign-out'),
  tokenDialog: $('token-dialog'),
  tokenForm: $('token-form'),
  tokenInput: $('token-input'),
  tokenError: $('token-error'),
};

/** Conversations fetched per page of the list. */
const LIST_PAGE = 50;

const state = {
  /** The list as loaded so far, most recently active first. */
  conversations: [],
  /** The cursor of the next (older) page; null once the oldest is loaded. */
  listNext: null,
  view: null,
  currentId: null,
  running: false,
  sending: false,
};

// ----- conversation list -----

function statusBadge(c) {
  if (c.running) return h('span', { class: 'badge badge-running' }, h('span', { class: 'dot', 'aria-hidden': 'true' }), 'running');
  if (c.queued > 0) return h('span', { class: 'badge badge-queued' }, `${c.queued} queued`);
  if (c.last_turn_status === 'failed') return h('span', { class: 'badge badge-failed' }, 'failed');
  if (c.last_turn_status === 'interrupted') return h('span', { class: 'badge badge-queued' }, 'interrupted');
  return null;
}

function titleOf(c) {
  return c.title?.trim() || 'Untitled conversation';
}

/** When a conversation was last active: its list key, or when it changed. */
function activeAt(c) {
  return c.last_activity_at || c.updated_at;
}

function renderList() {
  clear(els.list);
  els.listEmpty.hidden = state.conversations.length > 0;
  els.listMore.hidden = !state.listNext;
  for (const c of state.conversations) {
    const active = c.conversation_id === state.currentId;
    els.list.append(
      h(
        'li',
        {},
        h(
          'a',
          {
            class: `conversation-item${active ? ' active' : ''}`,
            href: `#/c/${c.conversation_id}`,
            'aria-current': active ? 'page' : null,
            dataset: { id: c.conversation_id },
          },
          h('span', { class: 'conversation-title' }, titleOf(c)),
          h('span', { class: 'conversation-meta' }, h('span', {}, c.platform === 'web' ? relativeTime(activeAt(c)) : `${c.platform} · ${relativeTime(activeAt(c))}`), statusBadge(c)),
        ),
      ),
    );
  }
  const current = state.conversations.find((c) => c.conversation_id === state.currentId);
  if (current) {
    els.title.textContent = titleOf(current);
    const badge = statusBadge(current);
    els.status.hidden = !badge || current.running;
    clear(els.status);
    if (badge && !current.running) {
      els.status.className = badge.className;
      els.status.append(...badge.childNodes);
    }
  }
}

/** Orders two list entries as the server does: newest activity first, then id. */
function listOrder(a, b) {
  const d = Date.parse(activeAt(b)) - Date.parse(activeAt(a));
  if (d) return d;
  return a.conversation_id < b.conversation_id ? 1 : a.conversation_id > b.conversation_id ? -1 : 0;
}

let listTimer = 0;
let listInFlight = null;
/**
 * Re-reads the first page and keeps the older pages already loaded after it (activity
 * only moves a conversation up, so they stay valid; one that moved up is in the page).
 */
async function refreshList() {
  if (listInFlight) return listInFlight;
  listInFlight = (async () => {
    try {
      const page = await api.listConversations(LIST_PAGE);
      const first = page.conversations;
      const inFirst = new Set(first.map((c) => c.conversation_id));
      const last = first[first.length - 1];
      const older = page.next && last ? state.conversations.filter((c) => !inFirst.has(c.conversation_id) && listOrder(last, c) < 0) : [];
      state.conversations = [...first, ...older];
      if (!older.length) state.listNext = page.next;
      renderList();
      setConnectionText(null);
      maybeLoadMore();
    } catch (e) {
      if (!(e instanceof ApiError)) setConnectionText('Server unreachable — retrying…');
    } finally {
      listInFlight = null;
    }
  })();
  return listInFlight;
}

let moreInFlight = null;
/** Appends the next older page of conversations. */
async function loadMore() {
  if (moreInFlight || !state.listNext) return moreInFlight;
  moreInFlight = (async () => {
    try {
      const page = await api.listConversations(LIST_PAGE, state.listNext);
      const have = new Set(state.conversations.map((c) => c.conversation_id));
      state.conversations.push(...page.conversations.filter((c) => !have.has(c.conversation_id)));
      state.listNext = page.next;
      renderList();
    } catch (e) {
      if (!(e instanceof ApiError)) setConnectionText('Server unreachable — retrying…');
      return;
    } finally {
      moreInFlight = null;
    }
    maybeLoadMore();
  })();
  return moreInFlight;
}

/** Loads older conversations when the list is scrolled near its end (or does not fill it). */
function maybeLoadMore() {
  const w = els.listWrap;
  if (state.listNext && w.scrollHeight - w.scrollTop - w.clientHeight < 200) loadMore();
}

function scheduleListRefresh(ms = 150) {
  clearTimeout(listTimer);
  listTimer = setTimeout(refreshList, ms);
}

// ----- connection / running state -----

let connectionOverride = null;
function setConnectionText(text) {
  connectionOverride = text;
  paintConnection();
}

let lastConnection = 'live';
function paintConnection() {
  const text =
    connectionOverride ??
    (state.view
      ? { live: 'Live', connecting: 'Connecting…', reconnecting: 'Connection lost — reconnecting…', offline: 'Offline — retrying…' }[lastConnection] ?? ''
      : '');
  els.connection.textContent = text;
  els.connection.className = `sidebar-foot conn-${connectionOverride ? 'offline' : lastConnection}`;
}

function onViewState(s) {
  state.running = s.running;
  lastConnection = s.connection;
  paintConnection();
  els.indicator.hidden = !(s.running || s.waiting);
  els.cancel.hidden = !s.running;
  els.runLabel.textContent = s.running ? `Working… ${s.elapsed}` : s.waiting ? 'Interrupted — waiting to run again…' : '';
}

// ----- session panel -----

const REASONS = {
  'first-message': 'first message',
  'reset-requested': 'reset requested',
  'stale-session': 'assistant session expired',
  'assistant-changed': 'assistant changed',
  'cwd-changed': 'working directory changed',
  'session-deleted': 'previous session deleted',
};

function shortId(s) {
  return s ? (s.length > 12 ? `${s.slice(0, 8)}…` : s) : '—';
}

async function refreshSessions() {
  if (els.sessionsPanel.hidden || !state.currentId) return;
  const id = state.currentId;
  let sessions;
  try {
    sessions = await api.sessions(id);
  } catch (e) {
    clear(els.sessionChain).append(h('li', { class: 'error-text' }, `Could not load sessions: ${e.message}`));
    return;
  }
  if (id !== state.currentId) return;
  clear(els.sessionChain);
  if (!sessions.length) els.sessionChain.append(h('li', { class: 'empty-hint' }, 'No session yet: the first message starts one.'));
  for (const s of sessions) {
    els.sessionChain.append(
      h(
        'li',
        { class: `session-item${s.active ? ' active' : ''}${s.last_error ? ' has-error' : ''}` },
        h(
          'div',
          { class: 'session-head' },
          h('span', { class: `badge ${s.active ? 'badge-running' : ''}` }, s.active ? 'active' : 'ended'),
          h('span', { class: 'session-assistant' }, s.assistant),
          h('time', { datetime: s.started_at, title: new Date(s.started_at).toLocaleString() }, relativeTime(s.started_at)),
        ),
        h(
          'dl',
          { class: 'session-facts' },
          h('dt', {}, 'Started'),
          h('dd', {}, REASONS[s.transition_reason] || s.transition_reason),
          s.ended_reason ? [h('dt', {}, 'Ended'), h('dd', {}, REASONS[s.ended_reason] || s.ended_reason)] : null,
          h('dt', {}, 'Assistant session'),
          h('dd', {}, h('code', { title: s.assistant_session_id || '' }, shortId(s.assistant_session_id))),
          s.transcript
            ? [
                h('dt', {}, 'Kept transcript'),
                h(
                  'dd',
                  { class: 'session-transcript' },
                  `${formatBytes(s.transcript.bytes)}, stored by ${s.transcript.stored_by}`,
                  s.transcript.restores
                    ? `; restored ${s.transcript.restores}× (last by ${s.transcript.restored_by})`
                    : '',
                ),
              ]
            : null,
          s.last_error ? [h('dt', {}, 'Last error'), h('dd', { class: 'error-text' }, s.last_error)] : null,
        ),
      ),
    );
  }
}

function showSessions(show) {
  if (show) showSettings(false);
  els.sessionsPanel.hidden = !show;
  els.sessionsButton.setAttribute('aria-expanded', String(show));
  document.body.classList.toggle('sessions-open', show);
  if (show) refreshSessions();
}

// ----- settings panel -----

const settings = new SettingsPanel((saved) => {
  const i = state.conversations.findIndex((c) => c.conversation_id === saved.conversation_id);
  if (i >= 0) state.conversations[i] = { ...state.conversations[i], ...saved };
  renderList();
  scheduleListRefresh();
  refreshSessions();
});

function showSettings(show) {
  if (show) showSessions(false);
  els.settingsPanel.hidden = !show;
  els.settingsButton.setAttribute('aria-expanded', String(show));
  if (show && state.currentId) settings.load(state.currentId);
}

// ----- routing -----

function currentRoute() {
  const m = /^#\/c\/([0-9a-fA-F-]{36})$/.exec(location.hash);
  return m ? m[1].toLowerCase() : null;
}

async function route() {
  const id = currentRoute();
  if (id === state.currentId && state.view) return;
  if (state.view) state.view.close();
  state.view = null;
  state.currentId = id;
  state.running = false;
  onViewState({ running: false, waiting: false, elapsed: '', connection: 'live' });
  showSidebar(false);
  const has = !!id;
  els.reset.disabled = !has;
  els.del.disabled = !has;
  els.sessionsButton.disabled = !has;
  els.settingsButton.disabled = !has;
  if (has && !els.settingsPanel.hidden) settings.load(id);
  renderList();
  if (!has) {
    showSettings(false);
    clear(els.messages).append(els.welcome);
    els.title.textContent = 'New conversation';
    els.status.hidden = true;
    showSessions(false);
    els.input.focus();
    return;
  }
  const view = new ConversationView({
    id,
    container: els.messages,
    onState: onViewState,
    onChanged: () => {
      scheduleListRefresh();
      refreshSessions();
    },
  });
  state.view = view;
  try {
    await view.open();
  } catch (e) {
    if (state.view !== view) return;
    view.close();
    clear(els.messages).append(
      h('div', { class: 'notice local-notice error', role: 'alert' }, h('div', { class: 'notice-text' }, e instanceof ApiError && e.status === 404 ? 'This conversation does not exist (it may have been deleted).' : `Could not load the conversation: ${e.message}`)),
    );
    return;
  }
  refreshSessions();
  els.input.focus();
}

// ----- composer -----

function autoGrow() {
  els.input.style.height = 'auto';
  els.input.style.height = `${Math.min(els.input.scrollHeight, 240)}px`;
  els.send.disabled = !els.input.value.trim() || state.sending;
}

async function submit() {
  const text = els.input.value;
  if (!text.trim() || state.sending) return;
  state.sending = true;
  els.send.disabled = true;
  try {
    if (!state.currentId) {
      const firstLine = text.trim().split('\n')[0];
      // A plain title: the first line without Markdown marks.
      const title = firstLine.startsWith('/') ? '' : firstLine.replace(/[*_`#>~]|\[demo:\w+\]/g, '').replace(/\s+/g, ' ').trim().slice(0, 80);
      const c = await api.createConversation(title);
      state.conversations.unshift(c);
      location.hash = `#/c/${c.conversation_id}`;
      await route();
    }
    const view = state.view;
    if (!view) return;
    els.input.value = '';
    autoGrow();
    const ok = await view.send(text);
    if (!ok && !els.input.value) {
      // Keep nothing lost: the failed message offers "Try again" in place.
    }
    scheduleListRefresh(100);
  } catch (e) {
    if (state.view) state.view.notice(`Could not start the conversation: ${e.message}`, 'error');
    else setConnectionText(`Could not create the conversation: ${e.message}`);
  } finally {
    state.sending = false;
    autoGrow();
  }
}

// ----- API token (sign in / sign out) -----

function paintAccount() {
  els.account.hidden = !token();
}

/** Shows the sign-in dialog; resolves once a token is stored. */
function askForToken(rejected) {
  return new Promise((resolve) => {
    els.tokenError.hidden = !rejected;
    els.tokenError.textContent = rejected ? 'That token was not accepted (unknown or revoked). Enter another one.' : '';
    els.tokenInput.setAttribute('aria-invalid', String(rejected));
    els.tokenInput.value = '';
    const done = (e) => {
      e.preventDefault();
      const value = els.tokenInput.value.trim();
      if (!value) return;
      els.tokenForm.removeEventListener('submit', done);
      setToken(value);
      els.tokenDialog.close();
      paintAccount();
      resolve();
    };
    els.tokenForm.addEventListener('submit', done);
    if (!els.tokenDialog.open) els.tokenDialog.showModal();
    els.tokenInput.focus();
  });
}

function signOut() {
  setToken(null);
  paintAccount();
  if (state.view) state.view.close();
  state.view = null;
  state.currentId = null;
  state.conversations = [];
  state.listNext = null;
  renderList();
  location.hash = '#/';
  // The next request answers 401 (when the server needs a token) and asks for one.
  refreshList().then(route);
}

// ----- narrow screens -----

function showSidebar(show) {
  document.body.classList.toggle('sidebar-open', show);
  els.scrim.hidden = !show;
  els.toggleSidebar.setAttribute('aria-expanded', String(show));
}

// ----- wiring -----

function init() {
  onUnauthorized(askForToken);
  paintAccount();
  // Without a token nothing works: Escape does not dismiss the sign-in dialog.
  els.tokenDialog.addEventListener('cancel', (e) => e.preventDefault());
  els.signOut.addEventListener('click', signOut);
  els.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    submit();
  });
  els.input.addEventListener('input', autoGrow);
  els.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      submit();
    }
  });
  document.addEventListener('keydown', (e) => {
    if (e.key !== 'Escape') return;
    if (document.body.classList.contains('sidebar-open')) {
      showSidebar(false);
      return;
    }
    if (state.view && state.running) {
      e.preventDefault();
      state.view.cancel();
    } else if (!els.sessionsPanel.hidden) {
      showSessions(false);
    } else if (!els.settingsPanel.hidden) {
      showSettings(false);
    }
  });
  els.cancel.addEventListener('click', () => state.view?.cancel());
  els.reset.addEventListener('click', () => state.view?.reset());
  els.del.addEventListener('click', async () => {
    const id = state.currentId;
    if (!id) return;
    const c = state.conversations.find((x) => x.conversation_id === id);
    if (!window.confirm(`Delete “${c ? titleOf(c) : 'this conversation'}” with all its messages? This cannot be undone.`)) return;
    try {
      await api.deleteConversation(id);
      state.conversations = state.conversations.filter((x) => x.conversation_id !== id);
      location.hash = '#/';
      refreshList();
    } catch (e) {
      state.view?.notice(`Delete failed: ${e.message}`, 'error');
    }
  });
  els.sessionsButton.addEventListener('click', () => showSessions(els.sessionsPanel.hidden));
  els.closeSessions.addEventListener('click', () => showSessions(false));
  els.settingsButton.addEventListener('click', () => showSettings(els.settingsPanel.hidden));
  els.closeSettings.addEventListener('click', () => showSettings(false));
  els.newConversation.addEventListener('click', () => {
    if (location.hash === '#/' || location.hash === '') route();
    else location.hash = '#/';
  });
  els.listWrap.addEventListener('scroll', maybeLoadMore, { passive: true });
  els.toggleSidebar.addEventListener('click', () => showSidebar(!document.body.classList.contains('sidebar-open')));
  els.scrim.addEventListener('click', () => showSidebar(false));
  window.addEventListener('hashchange', route);
  window.addEventListener('online', () => state.view?.ensureStream());
  setInterval(() => {
    if (!document.hidden) refreshList();
  }, 5000);
  const narrow = window.matchMedia('(max-width: 760px)');
  const placeholder = () => {
    els.input.placeholder = narrow.matches ? 'Message Parley…' : 'Message Parley — Enter to send, Shift+Enter for a new line';
  };
  narrow.addEventListener('change', placeholder);
  placeholder();
  refreshList().then(route);
  autoGrow();
}

init();
