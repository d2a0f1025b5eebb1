//! The `transcript` and `transcript_chunk` tables: the assistants' own session files
//! (Claude Code transcripts, Codex rollouts) kept so that any replica can restore one
//! before resuming its session (`docs/architecture.md#transcripts`).
//!
//! A session has at most one stored file. It is stored as chunks, each the bytes
//! appended to the file since the previous snapshot, by their offset in the file
//! ([`append`]); a file that no longer starts with the stored bytes is stored anew
//! ([`replace`]). Both check what they extend (compare-and-set on the stored length), so
//! a late writer never mixes its bytes into a newer copy.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use crate::{DbError, DbResult};

/// The most bytes one `transcript_chunk` row holds; a longer append is split.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What is stored of one session's file (a `transcript` row, without its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Transcript {
    /// The session it belongs to.
    pub session_id: Uuid,
    /// The session's conversation.
    pub conversation_id: Uuid,
    /// The assistant whose file it is (`claude`, `codex`).
    pub assistant: String,
    /// The assistant session ID the file belongs to.
    pub assistant_session_id: String,
    /// The absolute working directory the assistant ran in (empty: Parley's own).
    pub cwd: String,
    /// The file's path under the assistant's home (Claude's config directory,
    /// `CODEX_HOME`), e.g. `projects/-work-w/<id>.jsonl`.
    pub relative_path: String,
    /// Bytes stored: the file's length at the last snapshot.
    pub bytes: i64,
    /// SHA-256 of the last (up to [`TAIL_BYTES`](crate::transcript::TAIL_BYTES)) stored bytes.
    #[serde(skip)]
    pub tail_sha256: Vec<u8>,
    /// The worker (replica) that stored the last snapshot.
    pub stored_by: String,
    /// When the last snapshot was stored.
    pub stored_at: DateTime<Utc>,
    /// How many times a replica restored the file before resuming.
    pub restores: i32,
    /// The worker that restored it last.
    pub restored_by: Option<String>,
    /// When it was restored last.
    pub restored_at: Option<DateTime<Utc>>,
}

from_row!(row => Transcript {
    session_id, conversation_id, assistant, assistant_session_id, cwd, relative_path, bytes,
    tail_sha256, stored_by, stored_at, restores, restored_by, restored_at,
});

/// How many bytes at the end of the stored copy [`Transcript::tail_sha256`] covers
/// (64 KiB, or the whole copy when shorter).
pub const TAIL_BYTES: u64 = 64 * 1024;

const COLUMNS: &str = "session_id, conversation_id, assistant, assistant_session_id, cwd, relative_path, \
                       bytes, tail_sha256, stored_by, stored_at, restores, restored_by, restored_at";

/// What a snapshot stores about the file besides its bytes.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// The session.
    pub session_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The assistant.
    pub assistant: &'a str,
    /// The assistant session ID.
    pub assistant_session_id: &'a str,
    /// The absolute working directory (empty: none).
    pub cwd: &'a str,
    /// The path under the assistant's home.
    pub relative_path: &'a str,
    /// The file's whole length after this snapshot.
    pub bytes: i64,
    /// SHA-256 of the last [`TAIL_BYTES`] of the first `bytes` bytes of the file.
    pub tail_sha256: &'a [u8],
    /// The worker storing it.
    pub stored_by: &'a str,
}

/// The stored file of `session_id`, without its bytes.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn get(client: &impl GenericClient, session_id: Uuid) -> DbResult<Option<Transcript>> {
    let stmt = client.prepare_cached(&format!("select {COLUMNS} from transcript where session_id = $1")).await?;
    client.query_opt(&stmt, &[&session_id]).await?.as_ref().map(Transcript::try_from).transpose()
}

/// The stored files of these sessions (those that have one), without their bytes.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn of_sessions(client: &impl GenericClient, session_ids: &[Uuid]) -> DbResult<Vec<Transcript>> {
    if session_ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(&format!("select {COLUMNS} from transcript where session_id = any($1)")).await?;
    client.query(&stmt, &[&session_ids]).await?.iter().map(Transcript::try_from).collect()
}

/// Stores `data`, the bytes of the file from offset `start` to `snapshot.bytes`, as
/// the continuation of a stored copy of exactly `start` bytes of the same assistant
/// session. Run it in a transaction. Returns false (and stores nothing) when the stored
/// copy is not that (another writer got there first, or there is none).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn append(client: &impl GenericClient, snapshot: &Snapshot<'_>, start: i64, data: &[u8]) -> DbResult<bool> {
    let stmt = client
        .prepare_cached(
            "update transcript set bytes = $3, tail_sha256 = $4, stored_by = $5, stored_at = now() \
             where session_id = $1 and assistant_session_id = $2 and bytes = $6",
        )
        .await?;
    let updated = client
        .execute(
            &stmt,
            &[
                &snapshot.session_id,
                &snapshot.assistant_session_id,
                &snapshot.bytes,
                &snapshot.tail_sha256,
                &snapshot.stored_by,
                &start,
            ],
        )
        .await?;
    if updated == 0 {
        return Ok(false);
    }
    insert_chunks(client, snapshot.session_id, start, data).await?;
    Ok(true)
}

/// Stores `data` as the whole file, replacing whatever copy the session had. Run it in
/// a transaction.
///
/// # Errors
/// [`DbError::NotFound`] when the session no longer exists; else
/// [`DbError::Unavailable`] / [`DbError::Other`].
pub async fn replace(client: &impl GenericClient, snapshot: &Snapshot<'_>, data: &[u8]) -> DbResult<()> {
    let delete = client.prepare_cached("delete from transcript_chunk where session_id = $1").await?;
    client.execute(&delete, &[&snapshot.session_id]).await?;
    let upsert = client
        .prepare_cached(
            "insert into transcript (session_id, conversation_id, assistant, assistant_session_id, cwd, \
               relative_path, bytes, tail_sha256, stored_by) \
             select $1, $2, $3, $4, $5, $6, $7, $8, $9 where exists (select 1 from session where session_id = $1) \
             on conflict (session_id) do update set assistant = excluded.assistant, \
               assistant_session_id = excluded.assistant_session_id, cwd = excluded.cwd, \
               relative_path = excluded.relative_path, bytes = excluded.bytes, \
               tail_sha256 = excluded.tail_sha256, stored_by = excluded.stored_by, stored_at = now()",
        )
        .await?;
    let stored = client
        .execute(
            &upsert,
            &[
                &snapshot.session_id,
                &snapshot.conversation_id,
                &snapshot.assistant,
                &snapshot.assistant_session_id,
                &snapshot.cwd,
                &snapshot.relative_path,
                &snapshot.bytes,
                &snapshot.tail_sha256,
                &snapshot.stored_by,
            ],
        )
        .await?;
    if stored == 0 {
        return Err(DbError::not_found("session"));
    }
    insert_chunks(client, snapshot.session_id, 0, data).await
}

async fn insert_chunks(client: &impl GenericClient, session_id: Uuid, start: i64, data: &[u8]) -> DbResult<()> {
    let stmt =
        client.prepare_cached("insert into transcript_chunk (session_id, start, data) values ($1, $2, $3)").await?;
    let mut offset = start;
    for piece in data.chunks(CHUNK_BYTES) {
        client.execute(&stmt, &[&session_id, &offset, &piece]).await?;
        offset += i64::try_from(piece.len()).map_err(|e| DbError::Other(e.to_string().into()))?;
    }
    Ok(())
}

/// The stored bytes of `session_id`'s file, in order; `None` when it has none or the
/// chunks do not add up to [`Transcript::bytes`] contiguously (a damaged copy).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn bytes(client: &impl GenericClient, session_id: Uuid, expected: i64) -> DbResult<Option<Vec<u8>>> {
    let stmt =
        client.prepare_cached("select start, data from transcript_chunk where session_id = $1 order by start").await?;
    let rows = client.query(&stmt, &[&session_id]).await?;
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    for row in &rows {
        let start: i64 = row.try_get(0)?;
        let data: &[u8] = row.try_get(1)?;
        if usize::try_from(start).ok() != Some(out.len()) {
            return Ok(None);
        }
        out.extend_from_slice(data);
    }
    Ok((i64::try_from(out.len()).ok() == Some(expected) && !rows.is_empty()).then_some(out))
}

/// Records that `worker_id` restored the stored file of `session_id`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn mark_restored(client: &impl GenericClient, session_id: Uuid, worker_id: &str) -> DbResult<()> {
    let stmt = client
        .prepare_cached(
            "update transcript set restores = restores + 1, restored_by = $2, restored_at = now() \
             where session_id = $1",
        )
        .await?;
    client.execute(&stmt, &[&session_id, &worker_id]).await?;
    Ok(())
}

/// Deletes the stored file of `session_id` (its chunks go with it). Returns whether
/// there was one.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn delete(client: &impl GenericClient, session_id: Uuid) -> DbResult<bool> {
    let stmt = client.prepare_cached("delete from transcript where session_id = $1").await?;
    Ok(client.execute(&stmt, &[&session_id]).await? > 0)
}
