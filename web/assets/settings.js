// The settings panel of the open conversation: title, assistant, model, permission mode,
// working directory and the text added to the system prompt, saved with
// `PATCH /api/conversations/{id}` (only the fields that changed). The server checks every
// value; its 400 answers are shown next to the field they name.

import { api, ApiError } from './api.js';
import { h, clear } from './dom.js';

/** The field each of the server's error codes is about. */
const FIELD_OF_CODE = {
  invalid_title: 'title',
  invalid_assistant: 'assistant',
  invalid_model: 'model',
  invalid_system_prompt: 'system_prompt',
  invalid_permission_mode: 'permission_mode',
  invalid_cwd: 'cwd',
};

/** Why the assistant session ended, in words. */
const ENDED = {
  'assistant-changed': 'the assistant changed',
  'model-changed': 'the model changed',
  'system-prompt-changed': 'the system prompt changed',
  'cwd-changed': 'the working directory changed',
};

const $ = (id) => document.getElementById(id);

export class SettingsPanel {
  /** @param {(conversation: object) => void} onSaved called with the conversation after a save */
  constructor(onSaved) {
    this.onSaved = onSaved;
    this.form = $('settings-form');
    this.fields = {
      title: $('setting-title'),
      assistant: $('setting-assistant'),
      model: $('setting-model'),
      permission_mode: $('setting-permission-mode'),
      cwd: $('setting-cwd'),
      system_prompt: $('setting-system-prompt'),
    };
    this.error = $('settings-error');
    this.status = $('settings-status');
    this.save = $('settings-save');
    this.modeHint = $('permission-mode-hint');
    this.conversation = null;
    this.assistants = null;
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    this.fields.assistant.addEventListener('change', () => this.fillModes(this.fields.permission_mode.value));
  }

  /** Shows the settings of conversation `id`. */
  async load(id) {
    this.id = id;
    this.showError(null);
    this.status.textContent = '';
    try {
      const [conversation, assistants] = await Promise.all([api.getConversation(id), this.assistants ?? api.assistants()]);
      if (this.id !== id) return;
      this.assistants = assistants;
      this.fill(conversation);
    } catch (e) {
      this.showError(`Could not load the settings: ${e.message}`);
    }
  }

  fill(c) {
    this.conversation = c;
    const f = this.fields;
    f.title.value = c.title ?? '';
    clear(f.assistant).append(...this.assistants.assistants.map((a) => h('option', { value: a.name }, a.name)));
    f.assistant.value = c.assistant;
    f.model.value = c.model ?? '';
    f.cwd.value = c.cwd ?? '';
    f.system_prompt.value = c.system_prompt ?? '';
    this.fillModes(c.permission_mode ?? '');
  }

  /** The permission modes of the chosen assistant that the server allows; keeps `current` when it is one. */
  fillModes(current) {
    const select = this.fields.permission_mode;
    const name = this.fields.assistant.value;
    const modes = this.assistants.assistants.find((a) => a.name === name)?.permission_modes ?? [];
    clear(select).append(h('option', { value: '' }, "the server's default"), ...modes.map((m) => h('option', { value: m }, m)));
    select.value = modes.includes(current) ? current : '';
    select.disabled = modes.length === 0;
    this.modeHint.textContent = modes.length ? '' : `${name} has no permission modes this server lets a conversation choose.`;
  }

  /** The fields whose value differs from the conversation's, as the PATCH body. */
  changes() {
    const c = this.conversation;
    const f = this.fields;
    const optional = (v) => (v.trim() ? v : null);
    const now = {
      title: f.title.value,
      assistant: f.assistant.value,
      model: optional(f.model.value.trim()),
      permission_mode: optional(f.permission_mode.value),
      cwd: optional(f.cwd.value.trim()),
      system_prompt: optional(f.system_prompt.value),
    };
    const body = {};
    for (const [k, v] of Object.entries(now)) if (v !== (c[k] ?? (k === 'title' ? '' : null))) body[k] = v;
    return body;
  }

  async submit() {
    if (!this.conversation) return;
    const body = this.changes();
    this.showError(null);
    if (!Object.keys(body).length) {
      this.status.textContent = 'Nothing changed.';
      return;
    }
    this.save.disabled = true;
    this.status.textContent = 'Saving…';
    try {
      const saved = await api.updateConversation(this.id, body);
      this.fill(saved);
      this.status.textContent = saved.session_ended
        ? `Saved. The assistant session ended (${ENDED[saved.session_ended] ?? saved.session_ended}): the next message starts a fresh one with this conversation's history.`
        : 'Saved.';
      this.onSaved?.(saved);
    } catch (e) {
      this.status.textContent = '';
      const field = e instanceof ApiError ? FIELD_OF_CODE[e.code] : null;
      this.showError(e.message, field);
    } finally {
      this.save.disabled = false;
    }
  }

  /** Shows `message` (null clears it), marking `field` invalid. */
  showError(message, field = null) {
    this.error.hidden = !message;
    this.error.textContent = message ?? '';
    for (const [name, el] of Object.entries(this.fields)) {
      el.setAttribute('aria-invalid', String(name === field));
      if (name === field) el.setAttribute('aria-errormessage', 'settings-error');
      else el.removeAttribute('aria-errormessage');
    }
    if (field) this.fields[field].focus();
  }
}
