-- The assistants' own session files (Claude Code transcripts, Codex rollouts) kept in
-- PostgreSQL, so a replica without the file (another replica's turn, a wiped volume)
-- restores it before resuming instead of rebuilding the context from plain-text history
-- (docs/architecture.md#transcripts).
--
-- A file is stored as the chunks appended since the previous snapshot: one `transcript`
-- row per session with what is stored (its length and the SHA-256 of the stored bytes'
-- tail, to check that a file on disk still starts with them), and `transcript_chunk`
-- rows holding the bytes, by their offset in the file. Chunks are compressed by
-- PostgreSQL (lz4 TOAST compression, tried from 128-byte rows on).
create table transcript (
    session_id           uuid primary key references session (session_id) on delete cascade,
    conversation_id      uuid not null references conversation (conversation_id) on delete cascade,
    assistant            text not null,
    assistant_session_id text not null,
    -- The absolute working directory the assistant ran in ('' when it ran in Parley's own).
    cwd                  text not null,
    -- The file's path under the assistant's home (Claude's config directory, CODEX_HOME).
    relative_path        text not null,
    -- Bytes stored: the file's length at the last snapshot.
    bytes                bigint not null check (bytes >= 0),
    -- SHA-256 of the last (up to 64 KiB) stored bytes.
    tail_sha256          bytea not null,
    stored_by            text not null,
    stored_at            timestamptz not null default now(),
    -- Restores on a replica that lacked the file (or had a shorter or different one).
    restores             integer not null default 0,
    restored_by          text,
    restored_at          timestamptz
);

create index transcript_conversation on transcript (conversation_id);

create table transcript_chunk (
    session_id uuid not null references transcript (session_id) on delete cascade,
    -- Offset of the chunk's first byte in the file.
    start      bigint not null check (start >= 0),
    data       bytea not null,
    primary key (session_id, start)
) with (toast_tuple_target = 128);

alter table transcript_chunk alter column data set compression lz4;
