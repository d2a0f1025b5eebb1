// One open conversation: its messages, the live replies streamed over SSE, and the
// bookkeeping that shows every reply exactly once.
//
// Exactly-once, across reloads and reconnects:
// 1. Stored messages are the truth and are rendered keyed by `message_id` (a message
//    is never rendered twice).
// 2. On open, messages are read FIRST, then the conversation's `resume_after_seq`
//    (the seq just before the running turn's current attempt started, or the last
//    event), then the event stream opens with `?after=` that seq (always a position:
//    the server's `snapshot` start is for clients without one). An attempt running when the cursor was read had not finished when the
//    messages were read, so its reply is not among them: its events are shown live,
//    from its `turn_started` on, and nothing earlier is replayed.
// 3. A live attempt ends with an event carrying the `message_id` of the stored reply;
//    the message, when fetched, is adopted by the attempt (its text replaces the
//    streamed text if they differ) instead of being rendered again. If that message
//    was already on the page, the live copy is dropped.
// 4. Reconnects (EventSource's own, with Last-Event-ID, or ours with `?after=` the last
//    seq seen) continue after the last event seen; events at or below it are ignored.
// 5. A `turn_started` for an attempt still on screen (a re-run after an interruption)
//    clears its text: a re-run answers in full.

import { api, randomKey } from './api.js';
import { h, clear, formatBytes, formatElapsed } from './dom.js';
import { renderMarkdown } from './markdown.js';

// Every `EventKind` of the server (crates/db/src/event.rs), in its order: a Rust test
// (`the_web_ui_listens_to_every_event_kind`) fails when the two lists differ.
const EVENT_KINDS = [
  'turn_started',
  'text',
  'thinking',
  'tool_use',
  'tool_result',
  'session_reset',
  'session_restored',
  'turn_completed',
  'turn_failed',
  'turn_cancelled',
  'turn_interrupted',
];
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
// Why a `session_restored` event wrote the stored session file back.
const RESTORE_REASONS = {
  missing: 'the file was missing on this replica',
  shorter: 'the file on this replica was shorter',
  different: 'the file on this replica differed',
};

const INF = Number.MAX_SAFE_INTEGER;

/** Compares two sort keys `[a, b, c]` lexicographically. */
function cmp(x, y) {
  for (let k = 0; k < 3; k += 1) if (x[k] !== y[k]) return x[k] < y[k] ? -1 : 1;
  return 0;
}

/** A one-line view of a tool call's input, like the server's `tool_line`. */
function toolSummary(name, input) {
  let detail = '';
  if (input && typeof input === 'object') {
    for (const k of ['command', 'file_path', 'path', 'pattern', 'url', 'query', 'description']) {
      if (typeof input[k] === 'string') {
        detail = input[k];
        break;
      }
    }
    if (!detail) {
      const s = JSON.stringify(input);
      detail = s === '{}' ? '' : s;
    }
  } else if (input != null) {
    detail = String(input);
  }
  if (detail.length > 80) detail = `${detail.slice(0, 79)}…`;
  return { name: String(name ?? 'tool'), detail };
}

function prettyJson(v) {
  try {
    return JSON.stringify(v, null, 2);
  } catch {
    return String(v);
  }
}

export class ConversationView {
  /**
   * @param {object} o
   * @param {string} o.id conversation id
   * @param {HTMLElement} o.container the messages element
   * @param {(state: object) => void} o.onState running/queued/connection changes
   * @param {() => void} o.onChanged something worth refreshing the list and sessions for
   */
  constructor({ id, container, onState, onChanged }) {
    this.id = id;
    this.container = container;
    this.onState = onState;
    this.onChanged = onChanged;
    this.closed = false;
    /** message_id → element of rendered stored messages */
    this.rendered = new Map();
    /** turn_id → user message_id */
    this.turnUser = new Map();
    /** turn_id → attempts on screen, oldest first */
    this.attempts = new Map();
    /** pending sends: message_id (once known) → element */
    this.pending = new Map();
    /** turns known to wait in the queue */
    this.queuedTurns = new Set();
    this.maxMid = 0;
    this.lastSeq = 0;
    this.es = null;
    this.reopenTimer = null;
    this.backoff = 1000;
    this.connection = 'connecting';
    this.dirty = new Set();
    this.frame = 0;
    this.syncChain = Promise.resolve();
    this.localCounter = 0;
    this.tick = setInterval(() => this.emitState(), 1000);
  }

  /** Loads the conversation and starts following its events. */
  async open() {
    clear(this.container);
    const messages = await api.listMessages(this.id, 0);
    if (this.closed) return;
    for (const m of messages) this.renderMessage(m);
    await this.loadOpenTurns(messages);
    if (this.closed) return;
    // Only the newest turn can be retried (`/retry` re-runs the last finished turn).
    const lastTurn = [...messages].reverse().find((m) => m.role === 'user' && m.turn_id)?.turn_id;
    for (const b of this.container.querySelectorAll('.retry-btn')) {
      if (b.closest('[data-turn-id]')?.dataset.turnId !== lastTurn) b.remove();
    }
    const cursor = await this.resumeCursor();
    if (this.closed) return;
    this.lastSeq = cursor;
    this.openStream();
    this.scrollToEnd(true);
    this.emitState();
  }

  /** Stops following; the view is dropped. */
  close() {
    this.closed = true;
    clearInterval(this.tick);
    clearTimeout(this.reopenTimer);
    if (this.es) this.es.close();
    this.es = null;
  }

  // ----- loading -----

  /** The conversation's `resume_after_seq` (read after the messages). */
  async resumeCursor() {
    const c = await api.getConversation(this.id);
    // Unknown: replay everything; rule 3 drops replies already on the page.
    return typeof c.resume_after_seq === 'number' ? c.resume_after_seq : 0;
  }

  /** Shows the state of the newest turns that have no reply on the page yet. */
  async loadOpenTurns(messages) {
    const answered = new Set(messages.filter((m) => m.role === 'assistant' && m.turn_id).map((m) => m.turn_id));
    const open = messages.filter((m) => m.role === 'user' && m.turn_id && !answered.has(m.turn_id)).slice(-20);
    const turns = await Promise.all(open.map((m) => api.turn(m.turn_id).catch(() => null)));
    const lastUserTurn = [...messages].reverse().find((m) => m.role === 'user' && m.turn_id)?.turn_id;
    for (const t of turns) {
      if (!t || this.closed) continue;
      if (t.status === 'queued' || t.status === 'interrupted') this.setQueued(t.turn_id, true);
      else if (t.status === 'failed' || t.status === 'cancelled' || t.status === 'skipped') {
        if (this.attempts.has(t.turn_id)) continue;
        const a = this.newAttempt(t.turn_id, t.user_message_id);
        a.restored = true;
        this.finishAttempt(a, t.status, { error: t.error, retry: t.status === 'failed' && t.turn_id === lastUserTurn });
      }
    }
  }

  // ----- the event stream -----

  openStream() {
    if (this.closed) return;
    if (this.es) this.es.close();
    const es = new EventSource(api.eventsUrl(this.id, this.lastSeq));
    this.es = es;
    this.setConnection('connecting');
    es.onopen = () => {
      this.backoff = 1000;
      this.setConnection('live');
    };
    es.onerror = () => {
      if (this.es !== es) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. an error status): reconnect ourselves after the last seq seen.
        this.setConnection('offline');
        clearTimeout(this.reopenTimer);
        this.reopenTimer = setTimeout(() => this.openStream(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 15000);
      } else {
        this.setConnection('reconnecting');
      }
    };
    for (const kind of EVENT_KINDS) {
      es.addEventListener(kind, (ev) => {
        if (this.es !== es) return;
        const seq = Number(ev.lastEventId);
        if (Number.isFinite(seq)) {
          if (seq <= this.lastSeq) return;
          this.lastSeq = seq;
        }
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          return;
        }
        this.onEvent(kind, data);
      });
    }
  }

  /** Reopens the stream now if it is not open or connecting (after a send). */
  ensureStream() {
    if (!this.es || this.es.readyState === EventSource.CLOSED) {
      clearTimeout(this.reopenTimer);
      this.openStream();
    }
  }

  setConnection(c) {
    if (this.connection === c) return;
    this.connection = c;
    this.emitState();
  }

  onEvent(kind, d) {
    const tid = d.turn_id;
    if (!tid) return;
    if (kind === 'turn_started') {
      this.setQueued(tid, false);
      if (d.message_id) this.turnUser.set(tid, d.message_id);
      let a = this.currentAttempt(tid);
      if (a && !TERMINAL.has(a.status)) {
        this.resetAttempt(a);
      } else {
        for (const list of this.attempts.values()) for (const x of list) this.dropRetry(x);
        for (const b of this.container.querySelectorAll('.retry-btn')) b.remove();
        a = this.newAttempt(tid, d.message_id);
      }
      a.status = 'running';
      a.attempt = d.attempt;
      a.startedAt = Date.now();
      this.renderFooter(a);
      api
        .turn(tid)
        .then((t) => {
          if (t.started_at && a.status === 'running') a.startedAt = Math.min(Date.now(), Date.parse(t.started_at));
        })
        .catch(() => {});
      this.emitState();
      this.scrollToEnd();
      return;
    }
    const a = this.currentAttempt(tid);
    if (!a || a.messageId != null || TERMINAL.has(a.status)) return;
    switch (kind) {
      case 'text': {
        const last = a.segments[a.segments.length - 1];
        if (last && last.type === 'text') last.text += d.text ?? '';
        else this.addSegment(a, { type: 'text', text: d.text ?? '' });
        this.markDirty(a.segments[a.segments.length - 1]);
        break;
      }
      case 'thinking': {
        const last = a.segments[a.segments.length - 1];
        if (last && last.type === 'thinking') last.text += d.text ?? '';
        else this.addSegment(a, { type: 'thinking', text: d.text ?? '' });
        this.markDirty(a.segments[a.segments.length - 1]);
        break;
      }
      case 'tool_use':
        this.addSegment(a, { type: 'tool', id: d.id, name: d.name, input: d.input, result: null });
        break;
      case 'tool_result': {
        const seg = a.segments.find((s) => s.type === 'tool' && s.id === d.id);
        if (seg) {
          seg.result = { isError: !!d.is_error, output: d.output ?? '' };
          this.renderSegment(seg);
        } else {
          this.addSegment(a, { type: 'tool', id: d.id, name: 'result', input: null, result: { isError: !!d.is_error, output: d.output ?? '' } });
        }
        break;
      }
      case 'session_reset':
        this.addSegment(a, { type: 'notice', data: d });
        this.onChanged?.();
        break;
      case 'session_restored':
        this.addSegment(a, { type: 'restored', data: d });
        this.onChanged?.();
        break;
      case 'turn_completed':
        this.finishAttempt(a, 'completed', { messageId: d.message_id, usage: d.usage });
        break;
      case 'turn_failed':
        this.finishAttempt(a, 'failed', { messageId: d.message_id, error: d.error, retry: true });
        break;
      case 'turn_cancelled':
        this.finishAttempt(a, 'cancelled', { messageId: d.message_id });
        break;
      case 'turn_interrupted':
        this.resetAttempt(a);
        a.status = 'interrupted';
        this.renderFooter(a);
        this.emitState();
        break;
      default:
        break;
    }
    this.scrollToEnd();
  }

  // ----- attempts (live replies) -----

  currentAttempt(tid) {
    const list = this.attempts.get(tid);
    return list ? list[list.length - 1] : undefined;
  }

  newAttempt(tid, userMid) {
    const u = userMid ?? this.turnUser.get(tid) ?? this.maxMid;
    const segmentsEl = h('div', { class: 'segments' });
    const footerEl = h('div', { class: 'msg-footer' });
    const el = h(
      'article',
      { class: 'msg assistant live', 'aria-label': 'Assistant reply', dataset: { turnId: tid } },
      h('div', { class: 'avatar', 'aria-hidden': 'true' }, 'P'),
      h('div', { class: 'bubble' }, segmentsEl, footerEl),
    );
    const a = {
      turnId: tid,
      el,
      segmentsEl,
      footerEl,
      segments: [],
      status: 'running',
      messageId: null,
      terminalMid: undefined,
      startedAt: Date.now(),
      key: [u, 1, INF - 1000 + (this.attempts.get(tid)?.length ?? 0)],
    };
    if (!this.attempts.has(tid)) this.attempts.set(tid, []);
    this.attempts.get(tid).push(a);
    this.place(el, a.key);
    return a;
  }

  resetAttempt(a) {
    a.segments = [];
    clear(a.segmentsEl);
    a.el.classList.remove('failed', 'cancelled', 'interrupted');
  }

  addSegment(a, seg) {
    seg.attempt = a;
    seg.el = h('div', { class: `segment segment-${seg.type}` });
    a.segments.push(seg);
    a.segmentsEl.append(seg.el);
    this.renderSegment(seg);
  }

  markDirty(seg) {
    this.dirty.add(seg);
    if (!this.frame) {
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        const segs = [...this.dirty];
        this.dirty.clear();
        for (const s of segs) this.renderSegment(s);
        this.scrollToEnd();
      });
    }
  }

  renderSegment(seg) {
    const el = seg.el;
    if (seg.type === 'text') {
      clear(el).append(renderMarkdown(seg.text));
      el.classList.add('md');
    } else if (seg.type === 'thinking') {
      const open = el.querySelector('details')?.open ?? false;
      clear(el).append(
        h(
          'details',
          { class: 'activity thinking', open },
          h('summary', {}, h('span', { class: 'activity-icon', 'aria-hidden': 'true' }, '∴'), 'Thinking'),
          h('div', { class: 'activity-body thinking-text' }, seg.text),
        ),
      );
    } else if (seg.type === 'tool') {
      const open = el.querySelector('details')?.open ?? false;
      const { name, detail } = toolSummary(seg.name, seg.input);
      const state = seg.result ? (seg.result.isError ? 'error' : 'done') : 'running';
      clear(el).append(
        h(
          'details',
          { class: `activity tool tool-${state}`, open },
          h(
            'summary',
            {},
            h('span', { class: 'activity-icon', 'aria-hidden': 'true' }, '⚙'),
            h('span', { class: 'tool-name' }, name),
            detail ? h('code', { class: 'tool-detail' }, detail) : null,
            h('span', { class: `tool-state ${state}` }, state === 'running' ? 'running…' : state === 'error' ? 'error' : 'done'),
          ),
          h(
            'div',
            { class: 'activity-body' },
            seg.input != null ? [h('div', { class: 'activity-label' }, 'Input'), h('pre', {}, prettyJson(seg.input))] : null,
            seg.result ? [h('div', { class: 'activity-label' }, seg.result.isError ? 'Error output' : 'Output'), h('pre', {}, seg.result.output)] : null,
          ),
        ),
      );
    } else if (seg.type === 'notice') {
      const d = seg.data;
      const n = Number(d.history_messages ?? 0);
      clear(el).append(
        h(
          'details',
          { class: 'session-notice' },
          h(
            'summary',
            {},
            h('span', { class: 'activity-icon', 'aria-hidden': 'true' }, '↻'),
            `Assistant session expired — continued in a fresh session with the conversation's history${n ? ` (${n} earlier message${n === 1 ? '' : 's'})` : ''}.`,
          ),
          h(
            'dl',
            { class: 'notice-detail' },
            d.old_assistant_session_id ? [h('dt', {}, 'Expired session'), h('dd', {}, h('code', {}, d.old_assistant_session_id))] : null,
            d.detail ? [h('dt', {}, 'Assistant said'), h('dd', {}, d.detail)] : null,
          ),
        ),
      );
    } else if (seg.type === 'restored') {
      const d = seg.data;
      clear(el).append(
        h(
          'details',
          { class: 'session-notice session-restored' },
          h(
            'summary',
            {},
            h('span', { class: 'activity-icon', 'aria-hidden': 'true' }, '⤓'),
            `Assistant session restored from Parley's copy (${formatBytes(d.bytes)}), then resumed.`,
          ),
          h(
            'dl',
            { class: 'notice-detail' },
            d.assistant_session_id ? [h('dt', {}, 'Assistant session'), h('dd', {}, h('code', {}, d.assistant_session_id))] : null,
            d.reason ? [h('dt', {}, 'Why'), h('dd', {}, RESTORE_REASONS[d.reason] || d.reason)] : null,
            d.stored_by ? [h('dt', {}, 'Stored by'), h('dd', {}, d.stored_by)] : null,
          ),
        ),
      );
    }
  }

  /** Ends an attempt: status, footer, and the stored reply fetched for adoption. */
  finishAttempt(a, status, { messageId, error, retry, usage } = {}) {
    a.status = status;
    a.error = error;
    a.retry = !!retry;
    a.usage = usage;
    a.terminalMid = messageId ?? null;
    a.el.classList.remove('live');
    a.el.classList.toggle('failed', status === 'failed');
    a.el.classList.toggle('cancelled', status === 'cancelled');
    if (messageId != null && this.rendered.has(messageId) && a.messageId !== messageId) {
      // The stored reply is already on the page (replayed events): drop the live copy.
      this.removeAttempt(a);
    } else {
      this.renderFooter(a);
      if (messageId != null && a.messageId == null) this.syncMessages();
    }
    this.emitState();
    this.onChanged?.();
  }

  removeAttempt(a) {
    a.el.remove();
    const list = this.attempts.get(a.turnId) || [];
    const i = list.indexOf(a);
    if (i >= 0) list.splice(i, 1);
  }

  dropRetry(a) {
    if (a.retry) {
      a.retry = false;
      this.renderFooter(a);
    }
  }

  renderFooter(a) {
    const f = clear(a.footerEl);
    a.el.dataset.status = a.status;
    a.el.setAttribute('aria-busy', a.status === 'running' ? 'true' : 'false');
    if (a.status === 'running' && a.segments.length === 0) {
      f.append(h('span', { class: 'typing', 'aria-label': 'The assistant is writing' }, h('i'), h('i'), h('i')));
    } else if (a.status === 'interrupted') {
      f.append(h('span', { class: 'note' }, 'Interrupted by a server restart — it runs again shortly.'));
    } else if (a.status === 'cancelled') {
      f.append(h('span', { class: 'note' }, a.segments.length || a.messageId ? 'Cancelled — the reply is incomplete.' : 'Cancelled.'));
    } else if (a.status === 'failed') {
      f.append(
        h(
          'div',
          { class: 'error-box', role: 'alert' },
          h('span', { class: 'error-title' }, 'The reply failed'),
          h('span', { class: 'error-text' }, a.error || 'unknown error'),
          a.retry
            ? h('button', { type: 'button', class: 'btn btn-small retry-btn', 'aria-label': 'Retry the failed reply', onclick: () => this.send('/retry') }, 'Retry')
            : null,
        ),
      );
    }
  }

  /** Serialised fetch of messages newer than the newest on the page. */
  syncMessages() {
    this.syncChain = this.syncChain
      .then(async () => {
        if (this.closed) return;
        const news = await api.listMessages(this.id, this.maxMid);
        if (this.closed) return;
        for (const m of news) this.renderMessage(m);
        this.scrollToEnd();
      })
      .catch(() => {});
    return this.syncChain;
  }

  // ----- stored messages -----

  renderMessage(m) {
    if (this.rendered.has(m.message_id)) return;
    this.maxMid = Math.max(this.maxMid, m.message_id);
    if (m.role === 'user' && m.turn_id) this.turnUser.set(m.turn_id, m.message_id);
    if (m.role === 'assistant' && m.turn_id) {
      const list = this.attempts.get(m.turn_id) || [];
      const a =
        list.find((x) => x.terminalMid === m.message_id) ||
        list.find((x) => x.messageId == null && !TERMINAL.has(x.status) && x.status !== 'interrupted');
      if (a) {
        this.adopt(a, m);
        return;
      }
    }
    const el = this.messageElement(m);
    this.rendered.set(m.message_id, el);
    const pending = this.pending.get(m.message_id);
    if (pending) {
      pending.replaceWith(el);
      this.pending.delete(m.message_id);
    }
    this.place(el, this.keyOf(m));
    if (m.role === 'user' && m.turn_id && this.queuedTurns.has(m.turn_id)) this.setQueued(m.turn_id, true);
  }

  keyOf(m) {
    if (m.role === 'assistant' && m.turn_id && this.turnUser.has(m.turn_id)) return [this.turnUser.get(m.turn_id), 1, m.message_id];
    return [m.message_id, 0, 0];
  }

  /** The stored reply `m` takes over the live attempt `a`. */
  adopt(a, m) {
    a.messageId = m.message_id;
    if (a.terminalMid === undefined) a.terminalMid = m.message_id;
    this.rendered.set(m.message_id, a.el);
    const streamed = a.segments.filter((s) => s.type === 'text').map((s) => s.text).join('');
    if (streamed !== m.content) {
      // Authoritative text wins: replace the streamed text, keep tools and notices.
      for (const s of a.segments.filter((x) => x.type === 'text')) s.el.remove();
      a.segments = a.segments.filter((x) => x.type !== 'text');
      if (m.content) this.addSegment(a, { type: 'text', text: m.content });
    }
    for (const s of a.segments) if (this.dirty.has(s)) this.renderSegment(s);
    a.el.dataset.messageId = String(m.message_id);
    a.el.classList.toggle('incomplete', !!m.metadata?.incomplete);
    a.key = this.keyOf(m);
    this.place(a.el, a.key);
    if (m.metadata?.usage) a.usage = m.metadata.usage;
    if (a.status === 'completed') this.renderMeta(a, m);
  }

  renderMeta(a, m) {
    const u = m.metadata?.usage;
    if (!u) return;
    a.footerEl.append(h('span', { class: 'meta' }, `${u.input_tokens ?? 0} in · ${u.output_tokens ?? 0} out tokens`));
  }

  messageElement(m) {
    const meta = m.metadata || {};
    if (m.role === 'system') {
      return h(
        'div',
        { class: `notice system-notice${meta.ok === false ? ' refused' : ''}`, role: 'note', dataset: { messageId: m.message_id } },
        h('span', { class: 'notice-label' }, meta.command ? `/${meta.command}` : 'Parley'),
        h('div', { class: 'notice-text' }, m.content),
      );
    }
    if (m.role === 'user') {
      const isCommand = typeof meta.command === 'string';
      return h(
        'article',
        { class: `msg user${isCommand ? ' command' : ''}`, 'aria-label': 'Your message', dataset: { messageId: m.message_id, turnId: m.turn_id || '' } },
        h('div', { class: 'bubble' }, isCommand ? h('code', { class: 'command-text' }, m.content) : h('div', { class: 'md' }, renderMarkdown(m.content))),
        h('div', { class: 'msg-badges' }),
      );
    }
    // A stored assistant reply.
    const tools = Array.isArray(meta.tool_calls) ? meta.tool_calls : [];
    const footer = h('div', { class: 'msg-footer' });
    if (meta.incomplete && meta.error) {
      footer.append(
        h(
          'div',
          { class: 'error-box', role: 'alert' },
          h('span', { class: 'error-title' }, 'The reply failed'),
          h('span', { class: 'error-text' }, meta.error),
          h('button', { type: 'button', class: 'btn btn-small retry-btn', 'aria-label': 'Retry the failed reply', onclick: () => this.send('/retry') }, 'Retry'),
        ),
      );
    } else if (meta.incomplete) {
      footer.append(h('span', { class: 'note' }, meta.cancelled ? 'Cancelled — the reply is incomplete.' : 'Incomplete reply.'));
    } else if (meta.usage) {
      footer.append(h('span', { class: 'meta' }, `${meta.usage.input_tokens ?? 0} in · ${meta.usage.output_tokens ?? 0} out tokens`));
    }
    return h(
      'article',
      {
        class: `msg assistant${meta.incomplete ? ' incomplete' : ''}${meta.error ? ' failed' : ''}`,
        'aria-label': 'Assistant reply',
        dataset: {
          messageId: m.message_id,
          turnId: m.turn_id || '',
          status: meta.error ? 'failed' : meta.cancelled ? 'cancelled' : meta.incomplete ? 'incomplete' : 'completed',
        },
      },
      h('div', { class: 'avatar', 'aria-hidden': 'true' }, 'P'),
      h(
        'div',
        { class: 'bubble' },
        h(
          'div',
          { class: 'segments' },
          tools.map((t) => {
          const { name, detail } = toolSummary(t.name, t.input);
          return h(
            'details',
            { class: 'activity tool tool-done' },
            h('summary', {}, h('span', { class: 'activity-icon', 'aria-hidden': 'true' }, '⚙'), h('span', { class: 'tool-name' }, name), detail ? h('code', { class: 'tool-detail' }, detail) : null),
            h('div', { class: 'activity-body' }, h('div', { class: 'activity-label' }, 'Input'), h('pre', {}, prettyJson(t.input))),
          );
        }),
          m.content ? h('div', { class: 'segment segment-text md' }, renderMarkdown(m.content)) : null,
        ),
        footer,
      ),
    );
  }

  setQueued(tid, queued) {
    if (queued) this.queuedTurns.add(tid);
    else this.queuedTurns.delete(tid);
    const mid = this.turnUser.get(tid);
    const el = mid != null ? this.rendered.get(mid) || this.pending.get(mid) : null;
    const badges = el?.querySelector('.msg-badges');
    if (!badges) return;
    clear(badges);
    if (queued) badges.append(h('span', { class: 'badge badge-queued' }, 'queued'));
  }

  // ----- placement -----

  place(el, key) {
    el.dataset.k0 = String(key[0]);
    el.dataset.k1 = String(key[1]);
    el.dataset.k2 = String(key[2]);
    el.remove();
    const children = this.container.children;
    for (let i = children.length - 1; i >= 0; i -= 1) {
      const c = children[i];
      const ck = [Number(c.dataset.k0), Number(c.dataset.k1), Number(c.dataset.k2)];
      if (cmp(ck, key) <= 0) {
        c.after(el);
        return;
      }
    }
    this.container.prepend(el);
  }

  /** A local notice (not stored), shown after everything on the page now. */
  notice(text, kind = 'info') {
    this.localCounter += 1;
    const el = h('div', { class: `notice local-notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, h('div', { class: 'notice-text' }, text));
    this.place(el, [this.maxMid, 2, this.localCounter]);
    this.scrollToEnd(true);
  }

  scrollToEnd(force = false) {
    const c = this.container;
    const near = c.scrollHeight - c.scrollTop - c.clientHeight < 160;
    if (force || near) c.scrollTop = c.scrollHeight;
  }

  // ----- actions -----

  /** Posts a message or a `/command`; returns false when it could not be sent. */
  async send(text, key = randomKey(), existing = null) {
    const isCommand = /^\/[A-Za-z_]+(@\S+)?(\s|$)/.test(text.trim());
    this.localCounter += 1;
    const el =
      existing ||
      h(
        'article',
        { class: `msg user pending${isCommand ? ' command' : ''}`, 'aria-label': 'Your message (sending)' },
        h('div', { class: 'bubble' }, isCommand ? h('code', { class: 'command-text' }, text) : h('div', { class: 'md' }, renderMarkdown(text))),
        h('div', { class: 'msg-badges' }, h('span', { class: 'badge' }, 'sending…')),
      );
    if (!existing) this.place(el, [INF, 0, this.localCounter]);
    else clear(el.querySelector('.msg-badges')).append(h('span', { class: 'badge' }, 'sending…'));
    this.scrollToEnd(true);
    try {
      const { status, data } = await api.postMessage(this.id, text, key);
      if (this.closed) return true;
      el.classList.remove('pending');
      clear(el.querySelector('.msg-badges'));
      if (this.rendered.has(data.message_id)) {
        el.remove();
      } else {
        this.pending.set(data.message_id, el);
        if (status === 202 && data.turn_id) {
          this.turnUser.set(data.turn_id, data.message_id);
          this.place(el, [data.message_id, 0, 0]);
          if (!this.attempts.has(data.turn_id)) this.setQueued(data.turn_id, true);
        }
      }
      this.ensureStream();
      await this.syncMessages();
      this.onChanged?.();
      return true;
    } catch (e) {
      const badges = clear(el.querySelector('.msg-badges'));
      badges.append(
        h('span', { class: 'badge badge-failed' }, `Not sent: ${e.message}`),
        h('button', { type: 'button', class: 'btn btn-small', 'aria-label': 'Try sending again', onclick: () => this.send(text, key, el) }, 'Try again'),
      );
      return false;
    }
  }

  async cancel() {
    try {
      const r = await api.cancel(this.id);
      this.notice(r.text || 'Cancelled.');
    } catch (e) {
      this.notice(e.status === 409 ? e.message || 'Nothing is running.' : `Cancel failed: ${e.message}`, e.status === 409 ? 'info' : 'error');
    }
  }

  async reset() {
    try {
      const r = await api.reset(this.id);
      this.notice(r.text || 'The session was reset.');
    } catch (e) {
      this.notice(e.status === 409 ? e.message : `Reset failed: ${e.message}`, e.status === 409 ? 'info' : 'error');
    }
    this.onChanged?.();
  }

  // ----- state for the run indicator -----

  runningAttempt() {
    for (const list of this.attempts.values()) {
      const a = list[list.length - 1];
      if (a && a.status === 'running') return a;
    }
    return null;
  }

  emitState() {
    if (this.closed) return;
    const a = this.runningAttempt();
    let waiting = false;
    for (const list of this.attempts.values()) if (list[list.length - 1]?.status === 'interrupted') waiting = true;
    this.onState?.({
      running: !!a,
      waiting,
      elapsed: a ? formatElapsed(Date.now() - a.startedAt) : '',
      connection: this.connection,
    });
  }
}
