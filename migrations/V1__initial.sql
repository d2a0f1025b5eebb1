-- Parley's initial schema: see DESIGN.md section 3.
-- Names are lowercase and singular; keys are <table>_id; constraints are named.

create table conversation (
    conversation_id uuid primary key,
    platform        text not null,
    external_id     text not null,
    owner           text not null default 'local',
    title           text not null default '',
    assistant       text not null,
    cwd             text,
    delivery        text not null default 'stream',
    reply_target    jsonb not null default '{}'::jsonb,
    paused          boolean not null default false,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint conversation_platform_external_id_key unique (platform, external_id),
    constraint conversation_delivery_check check (delivery in ('stream', 'batch'))
);

create table session (
    session_id           uuid primary key,
    conversation_id      uuid not null,
    assistant            text not null,
    assistant_session_id text,
    active               boolean not null default true,
    parent_session_id    uuid,
    transition_reason    text not null,
    ended_reason         text,
    last_error           text,
    -- The rebuilt prompt carries messages from this id on: 0, or where /reset cut.
    history_from_message_id bigint not null default 0,
    started_at           timestamptz not null default now(),
    ended_at             timestamptz,
    constraint session_conversation_id_fkey foreign key (conversation_id)
        references conversation (conversation_id) on delete cascade,
    constraint session_parent_session_id_fkey foreign key (parent_session_id)
        references session (session_id) on delete set null,
    constraint session_transition_reason_check check (transition_reason in
        ('first-message', 'reset-requested', 'stale-session', 'assistant-changed', 'cwd-changed', 'session-deleted')),
    constraint session_active_ended_check check (active = (ended_at is null))
);
-- One active session per conversation, enforced by the database.
create unique index session_one_active_per_conversation on session (conversation_id) where active;
create index session_conversation_id_idx on session (conversation_id, started_at);

create table message (
    message_id      bigint generated always as identity primary key,
    conversation_id uuid not null,
    turn_id         uuid,
    role            text not null,
    content         text not null,
    metadata        jsonb not null default '{}'::jsonb,
    created_at      timestamptz not null default now(),
    constraint message_conversation_id_fkey foreign key (conversation_id)
        references conversation (conversation_id) on delete cascade,
    constraint message_role_check check (role in ('user', 'assistant', 'system'))
);
create index message_conversation_id_idx on message (conversation_id, message_id);

create table turn (
    turn_id          uuid primary key,
    conversation_id  uuid not null,
    session_id       uuid,
    user_message_id  bigint not null,
    status           text not null default 'queued',
    attempt          integer not null default 0,
    error            text,
    worker_id        text,
    lease_until      timestamptz,
    cancel_requested boolean not null default false,
    created_at       timestamptz not null default now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    constraint turn_conversation_id_fkey foreign key (conversation_id)
        references conversation (conversation_id) on delete cascade,
    constraint turn_session_id_fkey foreign key (session_id)
        references session (session_id) on delete set null,
    constraint turn_user_message_id_fkey foreign key (user_message_id)
        references message (message_id) on delete cascade,
    constraint turn_status_check check (status in
        ('queued', 'running', 'completed', 'failed', 'cancelled', 'interrupted', 'skipped'))
);
-- One running turn per conversation, enforced by the database.
create unique index turn_one_running_per_conversation on turn (conversation_id) where status = 'running';
create index turn_queued_idx on turn (user_message_id) where status = 'queued';
create index turn_conversation_id_idx on turn (conversation_id, user_message_id);
create index turn_session_id_idx on turn (session_id);

alter table message add constraint message_turn_id_fkey foreign key (turn_id)
    references turn (turn_id) on delete set null deferrable initially deferred;

create table event (
    conversation_id uuid not null,
    seq             bigint not null,
    turn_id         uuid,
    kind            text not null,
    data            jsonb not null default '{}'::jsonb,
    created_at      timestamptz not null default now(),
    constraint event_pkey primary key (conversation_id, seq),
    constraint event_conversation_id_fkey foreign key (conversation_id)
        references conversation (conversation_id) on delete cascade
);

create table inbound_delivery (
    platform        text not null,
    delivery_id     text not null,
    conversation_id uuid,
    response        jsonb,
    received_at     timestamptz not null default now(),
    constraint inbound_delivery_pkey primary key (platform, delivery_id),
    constraint inbound_delivery_conversation_id_fkey foreign key (conversation_id)
        references conversation (conversation_id) on delete cascade
);
create index inbound_delivery_received_at_idx on inbound_delivery (received_at);
