// The web API client: one fetch wrapper for every call.
//
// API tokens: when localStorage holds `parley.token`, every request carries it as
// `Authorization: Bearer …`. EventSource cannot send headers, so `eventsUrl` adds it as
// `?access_token=` (the server accepts that on the events stream only). When the server
// answers 401, the handler set with `onUnauthorized` (the sign-in dialog) is asked for a
// token and the request is sent again.

const TOKEN_KEY = 'parley.token';

/** An error answered by the API: `{error: {code, message}}` with an HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** The stored API token, or null. */
export function token() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

/** Stores an API token (null removes it: sign out). */
export function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lasts until the page closes
  }
}

let unauthorizedHandler = null;
let pendingSignIn = null;

/**
 * Sets what happens when the API answers 401: `handler(rejected)` resolves once a new
 * token is stored (`rejected` is true when a stored token was refused). Concurrent 401s
 * share one prompt.
 */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

function signIn(rejected) {
  if (!pendingSignIn) {
    pendingSignIn = Promise.resolve(unauthorizedHandler(rejected)).finally(() => {
      pendingSignIn = null;
    });
  }
  return pendingSignIn;
}

/** A random id for `Idempotency-Key` (crypto.randomUUID needs a secure context). */
export function randomKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Calls the API. `body` (when given) is sent as JSON. Resolves to
 * `{status, data}` (data is null for 204); rejects with ApiError on an error status
 * and with TypeError when the server cannot be reached.
 */
export async function request(method, path, { body, headers = {}, signal } = {}) {
  let res;
  for (;;) {
    const h = { Accept: 'application/json', ...headers };
    const t = token();
    if (t) h.Authorization = `Bearer ${t}`;
    const init = { method, headers: h, signal, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      h['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    res = await fetch(`/api${path}`, init);
    if (res.status !== 401 || !unauthorizedHandler) break;
    // A token stored meanwhile (another request's sign-in) is tried before asking.
    if (token() === t) await signIn(!!t);
  }
  let data = null;
  if (res.status !== 204) {
    const text = await res.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
  }
  if (!res.ok) {
    const err = data?.error;
    throw new ApiError(res.status, err?.code ?? 'http_error', err?.message ?? `HTTP ${res.status}`);
  }
  return { status: res.status, data };
}

const enc = encodeURIComponent;

export const api = {
  /** A page of conversations, most recently active first: `{conversations, next}`; pass `next` back as `after`. */
  listConversations: (limit = 50, after = null) =>
    request('GET', `/conversations?limit=${limit}${after ? `&after=${enc(after)}` : ''}`).then((r) => r.data),
  createConversation: (title) => request('POST', '/conversations', { body: { title } }).then((r) => r.data),
  deleteConversation: (id) => request('DELETE', `/conversations/${enc(id)}`),
  getConversation: (id) => request('GET', `/conversations/${enc(id)}`).then((r) => r.data),
  /** Changes a conversation's settings; resolves to the conversation with `session_ended`. */
  updateConversation: (id, changes) => request('PATCH', `/conversations/${enc(id)}`, { body: changes }).then((r) => r.data),
  assistants: () => request('GET', '/assistants').then((r) => r.data),
  /** Every message of a conversation after `after`, oldest first (all pages). */
  async listMessages(id, after = 0) {
    const all = [];
    let cursor = after;
    for (;;) {
      const { data } = await request('GET', `/conversations/${enc(id)}/messages?after=${cursor}&limit=500`);
      all.push(...data.messages);
      if (data.next_after == null) return all;
      cursor = data.next_after;
    }
  },
  postMessage: (id, text, key) =>
    request('POST', `/conversations/${enc(id)}/messages`, { body: { text }, headers: { 'Idempotency-Key': key } }),
  cancel: (id) => request('POST', `/conversations/${enc(id)}/cancel`).then((r) => r.data),
  reset: (id) => request('POST', `/conversations/${enc(id)}/reset`).then((r) => r.data),
  sessions: (id) => request('GET', `/sessions?conversation_id=${enc(id)}`).then((r) => r.data.sessions),
  turn: (id) => request('GET', `/turns/${enc(id)}`).then((r) => r.data),
  eventsUrl: (id, after) => {
    const t = token();
    return `/api/conversations/${enc(id)}/events?after=${after}${t ? `&access_token=${enc(t)}` : ''}`;
  },
};
