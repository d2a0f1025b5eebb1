-- The worker (replica) that holds the conversation's warm assistant process
-- (docs/architecture.md#warm-processes): set by the claim of a turn of an assistant
-- that keeps warm processes. Other workers leave the conversation's new turns to it for
-- a short window, and the holder reuses its process only when it was the holder before
-- the claim (no other replica ran the conversation since).
alter table conversation add column warm_worker_id text;
