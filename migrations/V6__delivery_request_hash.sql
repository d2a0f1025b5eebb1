-- What a delivery or an Idempotency-Key was first used for: the SHA-256 of the request
-- (the text, and for webhooks the conversation it names). A repeat of the key with
-- another request is refused (422 idempotency_key_reused) instead of being answered
-- with the first request's result. Rows written before this column hold NULL, which
-- matches any request.
alter table inbound_delivery add column request_hash bytea;
alter table inbound_delivery add constraint inbound_delivery_request_hash_check
    check (request_hash is null or length(request_hash) = 32);
