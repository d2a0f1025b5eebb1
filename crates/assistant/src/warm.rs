//! The pool of warm processes that the CLI adapters share: one live CLI per active
//! conversation, kept between its turns (`docs/architecture.md#warm-processes`).
//!
//! An adapter's process type implements [`Warm`]; the pool ([`WarmPool`]) keeps idle
//! ones by conversation and enforces the limits of [`WarmConfig`]: at most
//! [`WarmConfig::max_processes`] live processes (the least recently used idle one goes
//! first), none idle longer than [`WarmConfig::idle_timeout`], and all of them within
//! [`WarmConfig::max_rss_bytes`] of resident memory (read from `/proc/PID/status`).
//! Processes answering a turn count towards the count and the memory but are never
//! evicted: only idle ones are.
//!
//! Whether a process may answer the next run is the adapter's decision
//! ([`WarmPool::take`] asks it); the pool only keeps, counts and kills.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};
use uuid::Uuid;

use crate::{AssistantError, Chunk, WarmKey, run_marker};

/// Limits of the warm processes of one adapter.
#[derive(Debug, Clone)]
pub struct WarmConfig {
    /// Most live warm processes, idle or answering (the least recently used idle one is
    /// evicted first); 0 turns warm processes off (every run starts its own process).
    pub max_processes: usize,
    /// An idle warm process is killed after this long without a message.
    pub idle_timeout: Duration,
    /// Most resident memory of all live warm processes together, in bytes (`VmRSS` of
    /// `/proc/PID/status`); over it the least recently used idle ones are killed.
    /// 0: no ceiling.
    pub max_rss_bytes: u64,
    /// How long a cancelled turn's process may take to acknowledge its interrupt and
    /// end the turn before it is killed.
    pub interrupt_wait: Duration,
}

impl Default for WarmConfig {
    fn default() -> Self {
        Self {
            max_processes: 32,
            idle_timeout: Duration::from_secs(600),
            max_rss_bytes: 8 * 1024 * 1024 * 1024,
            interrupt_wait: Duration::from_secs(2),
        }
    }
}

/// A live CLI process the pool can keep between turns.
pub(crate) trait Warm: Send + 'static {
    /// Its process ID, `None` once it was reaped.
    fn pid(&self) -> Option<i32>;
    /// The run ID its processes carry ([`run_marker`]); it outlives the turns it answers.
    fn run_id(&self) -> Uuid;
    /// When it last finished a turn (or started).
    fn last_used(&self) -> Instant;
    /// When it was ready for its first turn, in clock ticks since boot
    /// ([`run_marker::now_ticks`]), when the processes of its run started by then are
    /// its own and must outlive a turn; `None`: only [`Self::pid`] is.
    fn ready_ticks(&self) -> Option<u64> {
        None
    }
    /// Stops it and waits for its process to be gone.
    fn stop(self) -> BoxFuture<'static, ()>;
}

/// Resident memory of process `pid`, in bytes (`VmRSS` of `/proc/PID/status`); 0 when
/// unknown.
pub(crate) fn rss_of(pid: Option<i32>) -> u64 {
    let Some(pid) = pid else { return 0 };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Ends a warm process's run markers when it goes: see [`run_marker::keep_warm`]. The
/// process group is stopped by the process's own guard; this also reaches whatever
/// left the group.
#[derive(Debug)]
pub(crate) struct WarmRun(pub(crate) Uuid);

impl Drop for WarmRun {
    fn drop(&mut self) {
        run_marker::release_warm(self.0);
        let run_id = self.0;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(
                async move {
                    run_marker::kill_run(run_id, Duration::from_secs(10)).await;
                }
                .in_current_span(),
            );
        }
    }
}

/// A session file (Claude's transcript, Codex's rollout) as a warm process left it
/// after its last turn. A live CLI keeps its session in memory and appends to the file
/// it opened; a file that is gone, shorter, or another inode (a restore writes a new
/// one) means the process no longer matches what is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionFileSeen {
    path: PathBuf,
    inode: u64,
    size: u64,
}

impl SessionFileSeen {
    /// The file at `path` as it is now; `None` when it cannot be read.
    pub(crate) fn read(path: PathBuf) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&path).ok()?;
        Some(Self { inode: meta.ino(), size: meta.len(), path })
    }

    /// Why the file is no longer the one the process wrote, if it is not.
    pub(crate) fn changed(&self) -> Option<String> {
        match Self::read(self.path.clone()) {
            None => Some(format!("its session file {} is gone", self.path.display())),
            Some(now) if now.inode != self.inode => Some("its session file was replaced (another inode)".into()),
            Some(now) if now.size < self.size => Some("its session file is shorter than after its last turn".into()),
            Some(_) => None,
        }
    }
}

/// The controls of an adapter's warm processes that the worker uses, whatever the
/// processes' type ([`crate::Assistant::warm`]).
pub trait WarmProcesses: Send + Sync {
    /// True when the conversation has an idle warm process.
    fn holds(&self, conversation_id: Uuid) -> bool;
    /// Kills the conversation's idle process, if any.
    fn forget(&self, conversation_id: Uuid);
    /// Kills every idle process and waits (up to 10 s each) for them to be gone.
    fn stop_all(&self) -> BoxFuture<'_, ()>;
}

impl<P: Warm> WarmProcesses for WarmPool<P> {
    fn holds(&self, conversation_id: Uuid) -> bool {
        self.lock().contains_key(&conversation_id)
    }

    fn forget(&self, conversation_id: Uuid) {
        let gone = self.lock().remove(&conversation_id);
        if gone.is_some() {
            info!(%conversation_id, assistant = self.assistant, "killed the conversation's warm process");
        }
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<P> = self.lock().drain().map(|(_, w)| w).collect();
            for warm in all {
                let run_id = warm.run_id();
                warm.stop().await;
                run_marker::release_warm(run_id);
                run_marker::kill_run(run_id, Duration::from_secs(10)).await;
            }
        })
    }
}

/// A run on the conversation's warm process: the idle one when `unfit` finds nothing
/// against it, else a new one from `start` (a cold start); then `turn` on it, which
/// puts the process back into the pool when it may serve the next message.
pub(crate) fn run<P, T, S>(
    pool: Arc<WarmPool<P>>,
    key: WarmKey,
    run_id: Uuid,
    unfit: impl FnOnce(&mut P) -> Option<String> + Send + 'static,
    start: impl Future<Output = Result<P, AssistantError>> + Send + 'static,
    turn: T,
) -> BoxStream<'static, Result<Chunk, AssistantError>>
where
    P: Warm,
    T: FnOnce(Arc<WarmPool<P>>, P) -> S + Send + 'static,
    S: Stream<Item = Result<Chunk, AssistantError>> + Send + 'static,
{
    async_stream::stream! {
        let busy = pool.run_started(key.conversation_id);
        let process = match pool.take(key.conversation_id, unfit) {
            Some(process) => {
                crate::metrics::warm_reused(pool.assistant);
                debug!(conversation_id = %key.conversation_id, assistant = pool.assistant, "reusing the warm process");
                process
            }
            None => match start.await {
                Ok(process) => process,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            },
        };
        busy.serving(process.pid());
        run_marker::serve_with_warm(run_id, process.run_id());
        let mut turn = std::pin::pin!(turn(Arc::clone(&pool), process));
        while let Some(item) = turn.next().await {
            yield item;
        }
    }
    .boxed()
}

/// Conversations with a run in progress: how many runs, and the process serving them.
#[derive(Debug, Default)]
struct InUse {
    runs: usize,
    pid: Option<i32>,
}

/// The warm processes of one adapter, by conversation.
#[derive(Debug)]
pub(crate) struct WarmPool<P> {
    assistant: &'static str,
    config: WarmConfig,
    idle: Mutex<HashMap<Uuid, P>>,
    /// Conversations with a run in progress, which no process started ahead of a
    /// message may join, and whose processes count towards the limits.
    busy: Mutex<HashMap<Uuid, InUse>>,
    reaper: OnceLock<()>,
}

/// A run in progress on a conversation ([`WarmPool::run_started`]); ends when dropped.
#[derive(Debug)]
pub(crate) struct Busy<P: Warm> {
    pool: Arc<WarmPool<P>>,
    conversation_id: Uuid,
}

impl<P: Warm> Busy<P> {
    /// Records the process that serves the run, so that it counts towards the limits.
    pub(crate) fn serving(&self, pid: Option<i32>) {
        if let Some(in_use) = self.pool.busy().get_mut(&self.conversation_id) {
            in_use.pid = pid;
        }
    }
}

impl<P: Warm> Drop for Busy<P> {
    fn drop(&mut self) {
        let mut busy = self.pool.busy();
        if let Some(in_use) = busy.get_mut(&self.conversation_id) {
            in_use.runs -= 1;
            if in_use.runs == 0 {
                busy.remove(&self.conversation_id);
            }
        }
    }
}

impl<P: Warm> WarmPool<P> {
    /// An empty pool of `assistant`'s processes with these limits.
    #[must_use]
    pub(crate) fn new(assistant: &'static str, config: WarmConfig) -> Arc<Self> {
        Arc::new(Self { assistant, config, idle: Mutex::default(), busy: Mutex::default(), reaper: OnceLock::new() })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, P>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn busy(&self) -> MutexGuard<'_, HashMap<Uuid, InUse>> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a run of the conversation in progress until the returned guard is dropped.
    pub(crate) fn run_started(self: &Arc<Self>, conversation_id: Uuid) -> Busy<P> {
        self.busy().entry(conversation_id).or_default().runs += 1;
        Busy { pool: Arc::clone(self), conversation_id }
    }

    /// True while a run of the conversation is in progress.
    pub(crate) fn is_busy(&self, conversation_id: Uuid) -> bool {
        self.busy().contains_key(&conversation_id)
    }

    /// Its limits.
    #[must_use]
    pub fn config(&self) -> &WarmConfig {
        &self.config
    }

    /// The conversation's idle process, when `unfit` finds nothing against it; a
    /// process it rejects (with the reason) is killed.
    pub(crate) fn take(&self, conversation_id: Uuid, unfit: impl FnOnce(&mut P) -> Option<String>) -> Option<P> {
        let mut warm = self.lock().remove(&conversation_id)?;
        match unfit(&mut warm) {
            None => Some(warm),
            Some(why) => {
                info!(%conversation_id, %why, assistant = self.assistant, "not reusing the warm process; starting cold");
                None
            }
        }
    }

    /// Starts a process for the conversation ahead of its next message with `start`,
    /// when there is room and the conversation neither has an idle process nor a run in
    /// progress; a run that started meanwhile keeps its own process.
    pub(crate) async fn prewarm(
        self: Arc<Self>,
        conversation_id: Uuid,
        start: impl Future<Output = Result<P, AssistantError>>,
    ) {
        if self.holds(conversation_id) || self.is_busy(conversation_id) || !self.has_room() {
            return;
        }
        match start.await {
            Ok(process) if !self.holds(conversation_id) && !self.is_busy(conversation_id) => {
                debug!(%conversation_id, assistant = self.assistant, "started a warm process ahead of a message");
                self.put(conversation_id, process);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, assistant = self.assistant, "could not start a warm process ahead of a message")
            }
        }
    }

    /// Keeps `warm` for the conversation's next message, then evicts what is over the
    /// limits (least recently used first).
    pub(crate) fn put(self: &Arc<Self>, conversation_id: Uuid, warm: P) {
        if let Some(pid) = warm.pid() {
            run_marker::keep_warm(warm.run_id(), pid, warm.ready_ticks());
        }
        // The run that used it is ending: it counts as idle from now on, not twice.
        if let Some(in_use) = self.busy().get_mut(&conversation_id) {
            in_use.pid = None;
        }
        let evicted = {
            let mut idle = self.lock();
            let replaced = idle.insert(conversation_id, warm);
            let mut evicted: Vec<P> = replaced.into_iter().collect();
            evicted.extend(self.over_limits(&mut idle, Instant::now(), false));
            evicted
        };
        drop(evicted);
        self.start_reaper();
    }

    /// The PIDs of the processes serving runs now (the idle ones are not among them).
    fn in_use(&self) -> Vec<Option<i32>> {
        self.busy().values().filter(|u| u.pid.is_some()).map(|u| u.pid).collect()
    }

    /// Whether a new process may be started ahead of a message (there is room).
    pub(crate) fn has_room(&self) -> bool {
        let in_use = self.in_use().len();
        self.lock().len() + in_use < self.config.max_processes
    }

    /// Removes what is past the idle timeout, over the count, or over the memory
    /// ceiling; processes serving runs count but stay.
    ///
    /// Reading the memory costs a `/proc` read per live process, so the end of a turn
    /// ([`Self::put`]) checks the count and the idle timeout only (`memory` false) and
    /// the reaper checks the memory too, within one tick.
    fn over_limits(&self, idle: &mut HashMap<Uuid, P>, now: Instant, memory: bool) -> Vec<P> {
        let config = &self.config;
        let mut out = Vec::new();
        let expired: Vec<Uuid> = idle
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_used()) >= config.idle_timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            out.extend(idle.remove(&k));
            debug!(conversation_id = %k, assistant = self.assistant, "warm process idle too long");
        }
        let in_use = self.in_use();
        let memory = memory && config.max_rss_bytes > 0;
        let rss = |pid: Option<i32>| if memory { rss_of(pid) } else { 0 };
        let mut by_age: Vec<(Uuid, Instant, u64)> =
            idle.iter().map(|(k, w)| (*k, w.last_used(), rss(w.pid()))).collect();
        by_age.sort_by_key(|(_, used, _)| *used);
        let in_use_rss: u64 = in_use.iter().map(|pid| rss(*pid)).sum();
        let mut total: u64 = in_use_rss + by_age.iter().map(|(_, _, rss)| rss).sum::<u64>();
        let mut count = by_age.len() + in_use.len();
        for (k, _, rss) in by_age {
            let over_memory = memory && total > config.max_rss_bytes;
            if count <= config.max_processes && !over_memory {
                break;
            }
            info!(conversation_id = %k, rss_bytes = rss, over_memory, assistant = self.assistant, "evicting a warm process");
            out.extend(idle.remove(&k));
            total -= rss;
            count -= 1;
        }
        out
    }

    /// Starts the task that enforces the idle timeout and the memory ceiling (once).
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper.set(()).is_err() {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let tick = (self.config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(tick).await;
                    let Some(pool) = pool.upgrade() else { return };
                    let evicted = {
                        let mut idle = pool.lock();
                        pool.over_limits(&mut idle, Instant::now(), true)
                    };
                    drop(evicted);
                }
            }
            .instrument(tracing::info_span!(parent: None, "warm_pool", assistant = self.assistant)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in process: nothing runs, only its bookkeeping.
    #[derive(Debug)]
    struct Fake(Instant);

    impl Warm for Fake {
        fn pid(&self) -> Option<i32> {
            None
        }

        fn run_id(&self) -> Uuid {
            Uuid::nil()
        }

        fn last_used(&self) -> Instant {
            self.0
        }

        fn stop(self) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn processes_answering_a_turn_count_towards_the_cap_and_only_idle_ones_are_evicted() {
        let config = WarmConfig { max_processes: 2, max_rss_bytes: 0, ..WarmConfig::default() };
        let pool = WarmPool::new("test", config);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let me = i32::try_from(std::process::id()).ok();

        // a answers a turn, then is put back: it counts once, and is kept.
        let busy_a = pool.run_started(a);
        busy_a.serving(me);
        pool.put(a, Fake(Instant::now()));
        drop(busy_a);
        assert!(pool.holds(a));
        assert!(pool.has_room(), "one of two");

        // b answers a turn: two live processes, no room for a third started ahead.
        let busy_b = pool.run_started(b);
        busy_b.serving(me);
        assert!(!pool.has_room(), "b's process answering counts");
        // c's turn ends while b's still runs: the least recently used idle one (a) goes,
        // b's is never touched.
        let busy_c = pool.run_started(c);
        busy_c.serving(me);
        pool.put(c, Fake(Instant::now()));
        drop(busy_c);
        assert!(!pool.holds(a), "a evicted: a, b (answering) and c were three");
        assert!(pool.holds(c));
        drop(busy_b);
        assert!(pool.has_room());
    }

    #[test]
    fn a_session_file_changes_when_gone_replaced_or_shorter_not_when_it_grows() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("parley-warm-session-file-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("s.jsonl");
        std::fs::write(&path, "one\ntwo\n").expect("write");
        let seen = SessionFileSeen::read(path.clone()).expect("stat");
        assert_eq!(seen.changed(), None);
        std::fs::OpenOptions::new().append(true).open(&path).and_then(|mut f| f.write_all(b"three\n")).expect("append");
        assert_eq!(seen.changed(), None, "the CLI may append after its result");
        std::fs::write(&path, "one\n").expect("truncate");
        assert!(seen.changed().is_some_and(|why| why.contains("shorter")));
        // A restored copy is a new file (another inode), even when it is longer.
        let grown = SessionFileSeen::read(path.clone()).expect("stat");
        let copy = dir.join("copy");
        std::fs::write(&copy, "one\ntwo\nthree\nfour\n").expect("write");
        std::fs::rename(&copy, &path).expect("rename");
        assert!(grown.changed().is_some_and(|why| why.contains("inode")));
        std::fs::remove_file(&path).expect("remove");
        assert!(grown.changed().is_some_and(|why| why.contains("gone")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
