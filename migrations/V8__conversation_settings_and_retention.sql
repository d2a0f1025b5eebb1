-- Per-conversation settings, the settings each session runs with, and what retention
-- needs to find old rows without holding long locks.

-- 1. Settings a conversation's owner may change (PATCH /api/conversations/{id}, /model):
--    NULL means the server's default (the assistant's flags).
alter table conversation add column model text;
alter table conversation add column system_prompt text;
alter table conversation add column permission_mode text;
alter table conversation add constraint conversation_settings_length_check check (
    length(model) between 1 and 200 and length(system_prompt) between 1 and 10000
    and length(permission_mode) between 1 and 64);

-- 2. The settings a session was started with: {"model", "system_prompt", "cwd"}. When the
--    conversation's settings no longer match, the session ends with the reason of the
--    change and the next turn starts a fresh one with history. Sessions from before this
--    column ran with the conversation's cwd and the default model and prompt.
alter table session add column settings jsonb not null default '{}'::jsonb;
update session s set settings = jsonb_build_object('cwd', c.cwd)
  from conversation c where c.conversation_id = s.conversation_id and c.cwd is not null;

alter table session drop constraint session_transition_reason_check;
alter table session add constraint session_transition_reason_check check (transition_reason in
    ('first-message', 'reset-requested', 'stale-session', 'assistant-changed', 'cwd-changed',
     'model-changed', 'system-prompt-changed', 'session-deleted'));

-- 3. Retention. Events are appended in time order, so a BRIN index on created_at finds
--    old ones for a few pages of index and almost no cost on the write path; ended
--    sessions are few and change rarely.
create index event_created_at_brin on event using brin (created_at);
create index session_ended_at_idx on session (ended_at) where not active;
