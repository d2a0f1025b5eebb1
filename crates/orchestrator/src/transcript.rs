//! Keeping the assistants' own session files — Claude Code transcripts, Codex rollouts —
//! in PostgreSQL, and putting them back before a resume on a replica that lacks them
//! (`docs/architecture.md#transcripts`).
//!
//! - [`snapshot`], after a turn's run: stores what was appended to the session's file
//!   since the last snapshot (or the whole file, when it no longer starts with the
//!   stored bytes).
//! - [`restore`], before a resume: when the file on this machine is missing, shorter
//!   than the stored copy or different in the stored part, writes the stored copy to the
//!   same path (temporary file + rename), for the same assistant and working directory
//!   only.
//!
//! Both only log their failures: a turn never fails because of a transcript, it falls
//! back to the history rebuild (`docs/architecture.md#stale-session-recovery`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parley_assistant::{Assistant, SessionFile, is_plain_relative};
use parley_db::session::Session;
use parley_db::transcript::{self, TAIL_BYTES, Transcript};
use parley_db::{DbError, Pool};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

/// Default of [`crate::Config::transcript_max_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// What a [`snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Bytes written to the database (the appended part, or the whole file).
    pub bytes_written: u64,
    /// The file's length.
    pub file_bytes: u64,
    /// True when the whole file was stored (first snapshot, or the file was rewritten).
    pub whole: bool,
    /// How long it took (reading the file and the transaction).
    pub elapsed: Duration,
}

/// Why a stored copy was written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::AsRefStr)]
#[strum(serialize_all = "snake_case")]
pub enum RestoreReason {
    /// No file on this machine.
    Missing,
    /// The file is shorter than the stored copy.
    Shorter,
    /// The file does not start with the stored bytes.
    Different,
}

/// A stored copy written back before a resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Bytes written.
    pub bytes: u64,
    /// The worker (replica) that stored the copy.
    pub stored_by: String,
    /// When it stored it.
    pub stored_at: DateTime<Utc>,
    /// Why the copy was written back.
    pub reason: RestoreReason,
    /// The file's absolute path.
    pub path: PathBuf,
}

/// The stored copy of a session's file as [`restore`] read it before the turn ran, for
/// [`snapshot`] after it: nothing else writes it meanwhile (the turn holds the
/// conversation's run lock, and an append is checked against the stored length anyway),
/// so a turn reads the row once.
#[derive(Debug, Clone)]
pub struct Kept {
    session_id: uuid::Uuid,
    stored: Option<Transcript>,
}

/// The absolute working directory as stored with a transcript: canonical when it
/// exists, empty when the assistant runs in Parley's own directory.
fn cwd_key(cwd: Option<&Path>) -> String {
    cwd.map(|c| std::fs::canonicalize(c).unwrap_or_else(|_| c.to_path_buf()).display().to_string()).unwrap_or_default()
}

/// SHA-256 of the bytes `[len - TAIL_BYTES, len)` (from 0 when shorter) of `file`.
fn tail_hash_of_file(file: &mut std::fs::File, len: u64) -> std::io::Result<Vec<u8>> {
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
    if buf.len() as u64 != len - start {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank while read"));
    }
    Ok(Sha256::digest(&buf).to_vec())
}

/// SHA-256 of the last `TAIL_BYTES` of `bytes`.
fn tail_hash(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.len().saturating_sub(usize::try_from(TAIL_BYTES).unwrap_or(usize::MAX));
    Sha256::digest(&bytes[start..]).to_vec()
}

/// What is to be stored, read from the file off the async runtime.
enum Pending {
    /// The file did not change since the stored copy.
    Unchanged,
    /// Bytes appended after the stored copy.
    Appended { start: u64, data: Vec<u8>, len: u64, tail: Vec<u8> },
    /// The whole file (no stored copy, or it is no longer a prefix).
    Whole { data: Vec<u8>, tail: Vec<u8> },
    /// Over the size limit.
    TooLarge { len: u64 },
}

fn read_for_snapshot(path: &Path, stored: Option<(u64, Vec<u8>)>, max_bytes: u64) -> std::io::Result<Pending> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max_bytes {
        return Ok(Pending::TooLarge { len });
    }
    if let Some((stored_len, stored_tail)) = stored
        && stored_len <= len
        && tail_hash_of_file(&mut file, stored_len)? == stored_tail
    {
        if stored_len == len {
            return Ok(Pending::Unchanged);
        }
        file.seek(SeekFrom::Start(stored_len))?;
        let mut data = Vec::new();
        Read::by_ref(&mut file).take(len - stored_len).read_to_end(&mut data)?;
        let len = stored_len + data.len() as u64;
        let tail = tail_hash_of_file(&mut file, len)?;
        return Ok(Pending::Appended { start: stored_len, data, len, tail });
    }
    file.seek(SeekFrom::Start(0))?;
    let mut data = Vec::new();
    Read::by_ref(&mut file).take(len).read_to_end(&mut data)?;
    let tail = tail_hash(&data);
    Ok(Pending::Whole { data, tail })
}

/// Stores the session's file after a turn ran in it: the bytes appended since the last
/// snapshot, or the whole file when there is no stored copy of this assistant session
/// in this directory or the file no longer starts with it. A file above `max_bytes` is
/// not stored and its stored copy is deleted (an older, shorter copy would resume with
/// less context, silently). Returns what it did; `None` when there was nothing to store
/// or it failed (logged). `kept` is what [`restore`] read before the turn, when it read
/// this session's copy; without it the copy is read here.
pub async fn snapshot(
    pool: &Pool,
    assistant: &dyn Assistant,
    session: &Session,
    cwd: Option<&Path>,
    worker_id: &str,
    max_bytes: u64,
    kept: Option<Kept>,
) -> Option<SnapshotStats> {
    let id = session.assistant_session_id.as_deref()?;
    let file = assistant.session_file(id, cwd)?;
    if !is_plain_relative(&file.relative) {
        warn!(path = %file.relative.display(), "not storing a session file outside the assistant's home");
        return None;
    }
    let started = Instant::now();
    let kept = kept.filter(|k| k.session_id == session.session_id);
    match snapshot_inner(pool, assistant.name(), session, id, &file, cwd, worker_id, max_bytes, kept).await {
        Ok(Some(mut stats)) => {
            stats.elapsed = started.elapsed();
            debug!(
                bytes_written = stats.bytes_written,
                file_bytes = stats.file_bytes,
                whole = stats.whole,
                elapsed_ms = stats.elapsed.as_millis(),
                "stored the assistant's session file"
            );
            Some(stats)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, path = %file.path().display(), "could not store the assistant's session file");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn snapshot_inner(
    pool: &Pool,
    assistant: &str,
    session: &Session,
    id: &str,
    file: &SessionFile,
    cwd: Option<&Path>,
    worker_id: &str,
    max_bytes: u64,
    kept: Option<Kept>,
) -> Result<Option<SnapshotStats>, DbError> {
    let cwd = cwd_key(cwd);
    let relative = file.relative.to_string_lossy().into_owned();
    let mut client = pool.get().await?;
    let stored = match kept {
        Some(kept) => kept.stored,
        None => transcript::get(&client, session.session_id).await?,
    };
    let same = stored.as_ref().filter(|t| {
        t.assistant == assistant && t.assistant_session_id == id && t.cwd == cwd && t.relative_path == relative
    });
    let prefix = same.map(|t| (u64::try_from(t.bytes).unwrap_or(0), t.tail_sha256.clone()));
    let path = file.path();
    let read = match tokio::task::spawn_blocking(move || read_for_snapshot(&path, prefix, max_bytes)).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Ok(Err(e)) => return Err(DbError::Other(format!("reading {}: {e}", file.path().display()).into())),
        Err(e) => return Err(DbError::Other(e.to_string().into())),
    };
    let to_i64 = |n: u64| i64::try_from(n).map_err(|e| DbError::Other(e.to_string().into()));
    let tx = client.transaction().await?;
    let stats = match read {
        Pending::Unchanged => return Ok(None),
        Pending::TooLarge { len } => {
            warn!(bytes = len, max_bytes, path = %file.path().display(),
                "the assistant's session file is over --transcript-max-bytes: not stored; a replica without it recovers from history");
            if stored.is_some() {
                transcript::delete(&tx, session.session_id).await?;
            }
            tx.commit().await?;
            return Ok(None);
        }
        Pending::Appended { start, data, len, tail } => {
            let snap = snapshot_row(session, assistant, id, &cwd, &relative, to_i64(len)?, &tail, worker_id);
            if !transcript::append(&tx, &snap, to_i64(start)?, &data).await? {
                debug!("the stored session file changed meanwhile; not appending");
                return Ok(None);
            }
            SnapshotStats { bytes_written: data.len() as u64, file_bytes: len, whole: false, elapsed: Duration::ZERO }
        }
        Pending::Whole { data, tail } => {
            let len = data.len() as u64;
            let snap = snapshot_row(session, assistant, id, &cwd, &relative, to_i64(len)?, &tail, worker_id);
            transcript::replace(&tx, &snap, &data).await?;
            SnapshotStats { bytes_written: len, file_bytes: len, whole: true, elapsed: Duration::ZERO }
        }
    };
    tx.commit().await?;
    Ok(Some(stats))
}

#[allow(clippy::too_many_arguments)]
fn snapshot_row<'a>(
    session: &Session,
    assistant: &'a str,
    id: &'a str,
    cwd: &'a str,
    relative: &'a str,
    bytes: i64,
    tail: &'a [u8],
    worker_id: &'a str,
) -> transcript::Snapshot<'a> {
    transcript::Snapshot {
        session_id: session.session_id,
        conversation_id: session.conversation_id,
        assistant,
        assistant_session_id: id,
        cwd,
        relative_path: relative,
        bytes,
        tail_sha256: tail,
        stored_by: worker_id,
    }
}

/// How the file on disk compares with the stored copy.
fn compare(path: &Path, stored: &Transcript) -> std::io::Result<Option<RestoreReason>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(RestoreReason::Missing)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let stored_len = u64::try_from(stored.bytes).unwrap_or(u64::MAX);
    if len < stored_len {
        return Ok(Some(RestoreReason::Shorter));
    }
    if tail_hash_of_file(&mut file, stored_len)? != stored.tail_sha256 {
        return Ok(Some(RestoreReason::Different));
    }
    Ok(None)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over `path` (the directories are created as needed).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().ok_or_else(|| std::io::Error::other("no parent directory"))?;
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.parley-restore-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Before resuming `session`: when this machine lacks its file, or has a shorter or
/// different one, writes the stored copy back to the same path — only a copy stored for
/// the same assistant, assistant session ID and working directory (created here when
/// missing). Returns the stored copy as read, for [`snapshot`] after the turn (`None` when
/// it was not read), and what was restored: `None` when nothing needed to be, there is
/// no stored copy, or restoring failed (logged: the resume then goes on, and a stale
/// session recovers from history).
pub async fn restore(
    pool: &Pool,
    assistant: &dyn Assistant,
    session: &Session,
    cwd: Option<&Path>,
    worker_id: &str,
) -> (Option<Kept>, Option<Restored>) {
    let Some(id) = session.assistant_session_id.as_deref() else { return (None, None) };
    if assistant.session_home().is_none() {
        return (None, None);
    }
    let mut kept = None;
    match restore_inner(pool, assistant, session, id, cwd, worker_id, &mut kept).await {
        Ok(restored) => (kept, restored),
        Err(e) => {
            warn!(error = %e, "could not restore the assistant's session file; resuming without it");
            (kept, None)
        }
    }
}

async fn restore_inner(
    pool: &Pool,
    assistant: &dyn Assistant,
    session: &Session,
    id: &str,
    cwd: Option<&Path>,
    worker_id: &str,
    kept: &mut Option<Kept>,
) -> Result<Option<Restored>, DbError> {
    let client = pool.get().await?;
    let stored = transcript::get(&client, session.session_id).await?;
    *kept = Some(Kept { session_id: session.session_id, stored: stored.clone() });
    let Some(stored) = stored else { return Ok(None) };
    if let Some(dir) = cwd
        && let Err(e) = tokio::fs::create_dir_all(dir).await
    {
        return Err(DbError::Other(format!("creating the working directory {}: {e}", dir.display()).into()));
    }
    let here = cwd_key(cwd);
    if stored.assistant != assistant.name() || stored.assistant_session_id != id || stored.cwd != here {
        info!(stored_assistant = %stored.assistant, stored_cwd = %stored.cwd, cwd = %here,
            "the stored session file is for another assistant, session or directory; not restoring it");
        return Ok(None);
    }
    let relative = PathBuf::from(&stored.relative_path);
    let path = match assistant.session_file(id, cwd) {
        // Claude's path is computed from the directory: it must be where the copy came from.
        Some(file) if file.relative != relative => {
            info!(stored = %relative.display(), here = %file.relative.display(),
                "the stored session file has another path here; not restoring it");
            return Ok(None);
        }
        Some(file) => file.path(),
        // Codex finds its rollout by thread ID: none here, so it goes where it was.
        None if is_plain_relative(&relative) => match assistant.session_home() {
            Some(home) => home.join(&relative),
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let check = {
        let (path, stored) = (path.clone(), stored.clone());
        tokio::task::spawn_blocking(move || compare(&path, &stored)).await
    };
    let reason = match check {
        Ok(Ok(Some(reason))) => reason,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => return Err(DbError::Other(format!("reading {}: {e}", path.display()).into())),
        Err(e) => return Err(DbError::Other(e.to_string().into())),
    };
    let Some(bytes) = transcript::bytes(&client, session.session_id, stored.bytes).await? else {
        warn!("the stored session file is incomplete; not restoring it");
        return Ok(None);
    };
    if tail_hash(&bytes) != stored.tail_sha256 {
        warn!("the stored session file does not match its checksum; not restoring it");
        return Ok(None);
    }
    let written = bytes.len() as u64;
    let target = path.clone();
    match tokio::task::spawn_blocking(move || write_atomically(&target, &bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(DbError::Other(format!("writing {}: {e}", path.display()).into())),
        Err(e) => return Err(DbError::Other(e.to_string().into())),
    }
    transcript::mark_restored(&client, session.session_id, worker_id).await?;
    info!(bytes = written, reason = reason.as_ref(), stored_by = %stored.stored_by, path = %path.display(),
        "restored the assistant's session file before resuming");
    Ok(Some(Restored { bytes: written, stored_by: stored.stored_by, stored_at: stored.stored_at, reason, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_compared_by_length_and_the_hash_of_the_stored_tail() {
        let dir = std::env::temp_dir().join(format!("parley-transcript-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("test io");
        let path = dir.join("t.jsonl");
        let stored_bytes = b"{\"a\":1}\n{\"b\":2}\n".repeat(10_000);
        let stored = Transcript {
            session_id: uuid::Uuid::nil(),
            conversation_id: uuid::Uuid::nil(),
            assistant: "claude".into(),
            assistant_session_id: "x".into(),
            cwd: String::new(),
            relative_path: "projects/x/x.jsonl".into(),
            bytes: i64::try_from(stored_bytes.len()).expect("test io"),
            tail_sha256: tail_hash(&stored_bytes),
            stored_by: "w".into(),
            stored_at: Utc::now(),
            restores: 0,
            restored_by: None,
            restored_at: None,
        };
        assert_eq!(compare(&path, &stored).expect("test io"), Some(RestoreReason::Missing));
        write_atomically(&path, &stored_bytes[..stored_bytes.len() - 1]).expect("test io");
        assert_eq!(compare(&path, &stored).expect("test io"), Some(RestoreReason::Shorter));
        let mut longer = stored_bytes.clone();
        longer.extend_from_slice(b"{\"c\":3}\n");
        write_atomically(&path, &longer).expect("test io");
        assert_eq!(compare(&path, &stored).expect("test io"), None, "a longer file with the stored prefix is kept");
        let mut changed = longer.clone();
        let at = stored_bytes.len() - 3;
        changed[at] = b'9';
        write_atomically(&path, &changed).expect("test io");
        assert_eq!(compare(&path, &stored).expect("test io"), Some(RestoreReason::Different));

        // A snapshot of the longer file appends exactly the new line.
        write_atomically(&path, &longer).expect("test io");
        let prefix = Some((u64::try_from(stored.bytes).expect("test io"), stored.tail_sha256.clone()));
        match read_for_snapshot(&path, prefix.clone(), u64::MAX).expect("test io") {
            Pending::Appended { start, data, len, tail } => {
                assert_eq!(start, stored_bytes.len() as u64);
                assert_eq!(data, b"{\"c\":3}\n");
                assert_eq!(len, longer.len() as u64);
                assert_eq!(tail, tail_hash(&longer));
            }
            _ => panic!("expected an append"),
        }
        // A rewritten file is stored whole; one over the limit not at all.
        write_atomically(&path, &changed).expect("test io");
        assert!(matches!(read_for_snapshot(&path, prefix.clone(), u64::MAX).expect("test io"), Pending::Whole { .. }));
        assert!(matches!(read_for_snapshot(&path, prefix, 100).expect("test io"), Pending::TooLarge { .. }));
        std::fs::remove_dir_all(&dir).expect("test io");
    }
}
