-- The write path of a turn, made cheaper without giving up integrity:
--
-- 1. Events are a log that only Parley writes, eight or more rows per turn; checking a
--    foreign key for each cost more than the rest of storing them. Their conversation
--    is checked once by the statement that stores them (the turn's own row), and
--    deleting a conversation deletes its events in the same statement
--    (conversation::delete), which is what the cascade did.
alter table event drop constraint event_conversation_id_fkey;

-- 2. Every message refreshes conversation.updated_at. With updated_at in an index each
--    refresh wrote a new entry into every index of the table; without it, and with room
--    left on each page, PostgreSQL updates the row in place (a HOT update). Lists sort
--    one owner's conversations in memory instead.
drop index conversation_owner_idx;
create index conversation_owner_idx on conversation (owner);
alter table conversation set (fillfactor = 70);
