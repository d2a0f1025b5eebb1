-- One name per concept. "Delivery" now means a webhook receipt only (GitHub's word, and
-- the `inbound_delivery` table's); how a conversation's replies reach its platform,
-- `stream` or `batch`, is its reply mode. A key that makes a repeated request return its
-- first answer is an idempotency key, whether it came as an `Idempotency-Key` header or
-- as a platform's delivery id. Renames only: every row and value is kept, and the check
-- constraint follows its column.
alter table conversation rename column delivery to reply_mode;
alter table conversation rename constraint conversation_delivery_check to conversation_reply_mode_check;
alter table inbound_delivery rename column delivery_id to idempotency_key;
