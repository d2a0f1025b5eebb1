-- Every list is read in the order of an index, one page at a time (keyset paging: see
-- the README's "Paging"), so a deep page costs what the first page costs, whatever the
-- number of rows. docs/performance.md has the measurements.

-- 1. Conversations, most recently active first.
--
--    The order key cannot be a column of `conversation`: ingest refreshes that row on
--    every message as an in-place (HOT) update (V4), which an index on the key would
--    turn into a new index entry in every index of the table. The key lives in a narrow
--    table of its own instead, written when a conversation is created and when one of
--    its turns ends (in the statement that ends the turn), never by ingest. `owner` is a
--    copy of the conversation's (it never changes), so each principal's list is one
--    index range.
create table conversation_activity (
    conversation_id  uuid not null,
    owner            text not null,
    last_activity_at timestamptz not null,
    constraint conversation_activity_pkey primary key (conversation_id),
    constraint conversation_activity_conversation_id_fkey foreign key (conversation_id)
        references conversation (conversation_id) on delete cascade
);
insert into conversation_activity (conversation_id, owner, last_activity_at)
    select conversation_id, owner, updated_at from conversation;
-- Everyone's (admins) and one owner's; both are read backwards (newest first).
create index conversation_activity_idx on conversation_activity (last_activity_at, conversation_id);
create index conversation_activity_owner_idx on conversation_activity (owner, last_activity_at, conversation_id);
-- Lists no longer filter `conversation` by owner.
drop index conversation_owner_idx;

-- 2. Sessions, oldest first, by status. `owner` is the conversation's, copied for the
--    same reason as above; a session is written a handful of times in its life, so its
--    indexes cost the turn path almost nothing.
alter table session add column owner text;
update session s set owner = c.owner from conversation c where c.conversation_id = s.conversation_id;
alter table session alter column owner set not null;
create index session_started_at_idx on session (started_at, session_id);
create index session_owner_started_at_idx on session (owner, started_at, session_id);
-- `active` = true or false: the active and the ended ones.
create index session_active_started_at_idx on session (active, started_at, session_id);
create index session_owner_active_started_at_idx on session (owner, active, started_at, session_id);
-- `failed`: the last turn failed.
create index session_failed_started_at_idx on session (started_at, session_id) where last_error is not null;
create index session_owner_failed_started_at_idx on session (owner, started_at, session_id)
    where last_error is not null;
-- One conversation's, in the same order.
drop index session_conversation_id_idx;
create index session_conversation_id_idx on session (conversation_id, started_at, session_id);

-- 3. Turns by status across conversations (the admin view), newest first. Queued turns
--    are served by `turn_queued_idx` and running ones by
--    `turn_one_running_per_conversation` (at most one per conversation, so a handful);
--    failed and interrupted turns get a partial index, which a successful turn never
--    enters: the success path writes no entry into it.
create index turn_failed_idx on turn (status, user_message_id, turn_id) where status in ('failed', 'interrupted');
-- A session's turns, oldest first (`GET /api/sessions/{id}/turns`).
drop index turn_session_id_idx;
create index turn_session_id_idx on turn (session_id, user_message_id, turn_id);
