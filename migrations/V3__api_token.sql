-- API tokens of the web API (issue 7). A token is shown once when created; only its
-- SHA-256 is stored. A request with a token acts as the token's principal, which owns
-- the conversations it creates (conversation.owner).
create table api_token (
    api_token_id uuid not null,
    principal    text not null,
    token_hash   bytea not null,
    admin        boolean not null default false,
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz,
    last_used_at timestamptz,
    constraint api_token_pkey primary key (api_token_id),
    constraint api_token_token_hash_key unique (token_hash),
    constraint api_token_token_hash_check check (length(token_hash) = 32),
    constraint api_token_principal_check check (length(principal) between 1 and 200)
);

-- Conversation lists are filtered by owner.
create index conversation_owner_idx on conversation (owner, updated_at desc);
