//! Workers: claim queued turns, resolve the session, run the assistant, publish and
//! persist events, deliver replies, finish — and recover from stale assistant sessions.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use parley_assistant::{Assistant, AssistantError, Chunk, RunRequest, Usage, run_marker};
use parley_db::conversation::{self, Conversation, Delivery};
use parley_db::event::{self, Event};
use parley_db::message::{self, Message, Role};
use parley_db::run_lock::RunLock;
use parley_db::session::{self, NewSession, Session, SessionSettings, Transition};
use parley_db::turn::{self, Claimed, LeaseState, Turn, TurnStatus};
use parley_db::{DbError, DbResult, GenericClient, PooledClient};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::notify::Signal;
use crate::sink::{ReplySink, ReplyStatus, ReplyUpdate};
use crate::{Orchestrator, RunningTurn, prompt, settings};

/// Longest tool output kept in an event, in characters.
const TOOL_OUTPUT_CHARS: usize = 1_000;
/// Longest text in one `text` or `thinking` event, in characters: longer chunks become
/// several events. Together with [`TOOL_OUTPUT_CHARS`] and [`TOOL_INPUT_BYTES`] this keeps
/// every event small enough to relay live to other replicas in one notification (even
/// at six bytes a character once JSON-escaped).
const EVENT_TEXT_CHARS: usize = 1_000;
/// Largest tool input shown whole in a `tool_use` event, in bytes of JSON; a larger one
/// is shown as a preview (the full input is kept in the reply's metadata).
const TOOL_INPUT_BYTES: usize = 3_000;
/// How long a finished turn waits for its platform reply to be delivered.
const SINK_FINAL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped run's stream may take to end (its CLI gets `SIGTERM`, a grace
/// period, then `SIGKILL`) before the run's processes are killed outright.
const STOP_DRAIN: Duration = Duration::from_secs(15);
/// How long killing a run's processes may take before Parley gives up on them (a
/// process stuck in the kernel ignores even `SIGKILL` for a while).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Which running turns [`Orchestrator::take_back`] takes.
#[derive(Debug, Clone, Copy)]
enum TakeBack {
    /// Those whose lease expired, on any replica.
    Expired,
    /// Those this worker id ran before it restarted.
    Owned,
}

/// Why a running turn is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum StopReason {
    None = 0,
    /// `/cancel`.
    Cancelled = 1,
    /// Shutdown after the grace period.
    Interrupted = 2,
    /// The lease was lost: another worker may run it now.
    LeaseLost = 3,
}

/// A running turn's stop switch: a token plus why it fired.
#[derive(Debug, Clone, Default)]
pub(crate) struct TurnControl {
    pub(crate) token: CancellationToken,
    reason: Arc<AtomicU8>,
}

impl TurnControl {
    fn stop(&self, reason: StopReason) {
        // The first reason wins.
        let _ = self.reason.compare_exchange(StopReason::None as u8, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.token.cancel();
    }

    pub(crate) fn cancel(&self) {
        self.stop(StopReason::Cancelled);
    }

    fn reason(&self) -> StopReason {
        match self.reason.load(Ordering::SeqCst) {
            1 => StopReason::Cancelled,
            2 => StopReason::Interrupted,
            3 => StopReason::LeaseLost,
            _ => StopReason::None,
        }
    }
}

/// Allocates event numbers for one turn, publishes events live at once and writes them
/// to the database in batches.
struct Emitter {
    conversation_id: Uuid,
    turn_id: Uuid,
    next_seq: i64,
    /// One past the last number of the reserved block.
    block_end: i64,
    unflushed: Vec<Event>,
    last_flush: Instant,
}

impl Emitter {
    fn event(&mut self, kind: &str, mut data: Value) -> Event {
        let now = Utc::now();
        if let Some(obj) = data.as_object_mut() {
            obj.insert("turn_id".into(), json!(self.turn_id));
            // When it was produced, in Unix microseconds: clients measure relay latency with it.
            obj.insert("ts".into(), json!(now.timestamp_micros()));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Event {
            conversation_id: self.conversation_id,
            seq,
            turn_id: Some(self.turn_id),
            kind: kind.into(),
            data,
            created_at: now,
        }
    }
}

/// What the assistant produced so far in this turn.
#[derive(Debug, Default)]
struct Reply {
    text: String,
    tools: Vec<String>,
    tool_calls: Vec<Value>,
    usage: Option<Usage>,
    cost_usd: Option<f64>,
    duration_ms: Option<u64>,
    completed_session_id: Option<String>,
}

impl Reply {
    fn update(&self, turn_id: Uuid, status: ReplyStatus) -> ReplyUpdate {
        ReplyUpdate { turn_id: Some(turn_id), text: self.text.clone(), tools: self.tools.clone(), status }
    }

    fn metadata(&self) -> Value {
        let mut meta = json!({});
        if let Some(u) = self.usage {
            meta["usage"] = json!(u);
        }
        if let Some(c) = self.cost_usd {
            meta["cost_usd"] = json!(c);
        }
        if let Some(d) = self.duration_ms {
            meta["duration_ms"] = json!(d);
        }
        if !self.tool_calls.is_empty() {
            meta["tool_calls"] = Value::Array(self.tool_calls.clone());
        }
        meta
    }
}

/// How an attempt ended.
enum Outcome {
    Completed,
    Failed(AssistantError),
    Stopped(StopReason),
}

/// A compact one-line view of a tool call, e.g. `Bash: ls -la`.
fn tool_line(name: &str, input: &Value) -> String {
    let detail = ["command", "file_path", "path", "pattern", "url", "query", "description"]
        .iter()
        .find_map(|k| input.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let s = input.to_string();
            if s == "{}" || s == "null" { String::new() } else { s }
        });
    let detail: String = detail.chars().take(80).collect();
    if detail.is_empty() { name.to_owned() } else { format!("{name}: {detail}") }
}

/// Splits text into pieces of at most `max` characters (one piece when it is shorter).
fn pieces(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

/// A tool input as a `tool_use` event shows it: whole when small, else a preview.
fn shown_input(input: &Value) -> Value {
    let encoded = input.to_string();
    if encoded.len() <= TOOL_INPUT_BYTES {
        return input.clone();
    }
    json!({ "truncated": true, "preview": truncate(&encoded, EVENT_TEXT_CHARS) })
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}… [{} more characters]", &s[..i], s[i..].chars().count()),
        None => s.to_owned(),
    }
}

/// Delivers a turn's reply to a platform sink through a latest-wins channel.
struct SinkHandle {
    tx: watch::Sender<Option<ReplyUpdate>>,
    stream: bool,
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    fn start(sink: Arc<dyn ReplySink>, conversation: Conversation) -> Self {
        let (tx, mut rx) = watch::channel::<Option<ReplyUpdate>>(None);
        let stream = conversation.delivery == Delivery::Stream;
        let task = tokio::spawn(
            async move {
                while rx.changed().await.is_ok() {
                    let update = rx.borrow_and_update().clone();
                    let Some(update) = update else { continue };
                    let last = update.is_final();
                    if let Err(e) = sink.deliver(&conversation, update).await {
                        warn!(error = %e, "reply delivery failed");
                    }
                    if last {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        Self { tx, stream, task }
    }

    fn progress(&self, update: ReplyUpdate) {
        if self.stream {
            let _ = self.tx.send(Some(update));
        }
    }

    async fn finish(self, update: ReplyUpdate) {
        let _ = self.tx.send(Some(update));
        if tokio::time::timeout(SINK_FINAL_TIMEOUT, self.task).await.is_err() {
            warn!("reply delivery did not finish in time; it goes on in the background");
        }
    }
}

/// One turn being run by a worker.
struct TurnRun<'a> {
    orch: &'a Orchestrator,
    conversation: Conversation,
    turn: Turn,
    user_message: Message,
    /// The conversation's active session as read at claim time.
    active_session: Option<Session>,
    control: TurnControl,
    /// The run's marker, carried by every process its assistant starts.
    run_id: Uuid,
    emitter: Emitter,
    reply: Reply,
    sink: Option<SinkHandle>,
    /// The turn's working directory under the workspace root (resolved before the run).
    cwd: Option<std::path::PathBuf>,
}

impl Orchestrator {
    /// Runs this replica's workers until `shutdown` fires, then drains: running turns
    /// get [`crate::Config::shutdown_grace`] to finish, after which they are stopped and
    /// re-queued for the next start (or another replica).
    pub async fn run_workers(&self, shutdown: CancellationToken) {
        let config = self.config().clone();
        self.kill_left_behind().await;
        match self.take_back(TakeBack::Owned).await {
            Ok(0) => {}
            Ok(n) => {
                info!(turns = n, worker_id = %config.worker_id, "re-queued turns this worker ran before it restarted")
            }
            Err(e) => warn!(error = %e, "could not re-queue this worker's old turns; the sweeper will"),
        }
        // Helpers outlive the workers' drain: events of draining turns still go out.
        let helpers_stop = CancellationToken::new();
        let mut helpers = JoinSet::new();
        let outbox = self.inner.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(outbox) = outbox {
            let orch = self.clone();
            let stop = helpers_stop.clone();
            helpers.spawn(async move { orch.run_sender(outbox, stop).await });
        }
        if let Some(db) = self.inner.listen.clone() {
            let orch = self.clone();
            let stop = helpers_stop.clone();
            helpers.spawn(async move { orch.run_listener(db, stop).await });
        }
        {
            let orch = self.clone();
            let stop = shutdown.clone();
            helpers.spawn(async move { orch.run_sweeper(stop).await });
        }
        {
            let orch = self.clone();
            let stop = shutdown.clone();
            helpers.spawn(async move { orch.run_retention(stop).await });
        }
        let mut workers = JoinSet::new();
        for n in 0..config.workers.max(1) {
            let orch = self.clone();
            let stop = shutdown.clone();
            workers.spawn(async move { orch.worker_loop(n, stop).await });
        }
        shutdown.cancelled().await;
        info!(running = self.running_count(), grace = ?config.shutdown_grace, "draining workers");
        let drained =
            tokio::time::timeout(config.shutdown_grace, async { while workers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let running: Vec<RunningTurn> = self
                .inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .values()
                .cloned()
                .collect();
            warn!(turns = running.len(), "grace period over; interrupting running turns");
            for r in running {
                r.control.stop(StopReason::Interrupted);
            }
            while workers.join_next().await.is_some() {}
        }
        helpers_stop.cancel();
        while helpers.join_next().await.is_some() {}
        info!("workers stopped");
    }

    /// Every [`crate::Config::sweep_interval`], takes back turns whose lease expired
    /// (their worker crashed or lost the database): re-queued, or `interrupted` after
    /// [`crate::Config::max_attempts`] claims, with an event and a message telling the user.
    async fn run_sweeper(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config().sweep_interval) => {}
            }
            match self.take_back(TakeBack::Expired).await {
                Ok(0) => {}
                Ok(n) => info!(turns = n, "took back turns whose lease expired"),
                Err(e) => debug!(error = %e, "sweeping expired leases failed"),
            }
        }
    }

    /// At start-up, before this worker re-queues its old turns: kills the processes of
    /// the runs its previous incarnation left running (found by the run IDs recorded
    /// with its running turns), and those of any other Parley process on this host that
    /// is gone (a crash under another worker id).
    async fn kill_left_behind(&self) {
        let orphans = run_marker::kill_orphans(KILL_WAIT).await;
        if orphans > 0 {
            warn!(processes = orphans, "killed assistant processes left by a stopped Parley");
        }
        let runs = match self.pool().get().await {
            Ok(client) => turn::running_runs(&client, &self.config().worker_id).await,
            Err(e) => Err(DbError::from(e)),
        };
        match runs {
            Ok(runs) => {
                for run_id in runs {
                    let killed = run_marker::kill_run(run_id, KILL_WAIT).await;
                    if killed > 0 {
                        warn!(%run_id, processes = killed, "killed the processes of a run this worker left before it restarted");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not read this worker's old runs; their processes are not looked for"),
        }
    }

    /// Takes back running turns that no worker runs any more, with a
    /// `turn_interrupted` event each (so followers drop the partial reply they saw).
    /// Processes of their runs found on this host are killed.
    async fn take_back(&self, which: TakeBack) -> DbResult<usize> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let swept = match which {
            TakeBack::Expired => turn::sweep_expired(&tx, self.config().max_attempts).await?,
            TakeBack::Owned => turn::requeue_owned(&tx, &self.config().worker_id).await?,
        };
        let mut events = Vec::new();
        for t in &swept {
            let requeued = t.status == "queued";
            let mut data = json!({ "turn_id": t.turn_id, "requeued": requeued, "attempt": t.attempt });
            if requeued {
                warn!(turn_id = %t.turn_id, attempt = t.attempt, "lease expired; re-queued the turn");
            } else {
                let text = format!(
                    "This message could not be answered: the server running it stopped {} times. Send /retry to try again.",
                    t.attempt
                );
                warn!(turn_id = %t.turn_id, attempt = t.attempt, "lease expired too often; turn interrupted");
                let msg = message::insert(
                    &tx,
                    t.conversation_id,
                    Some(t.turn_id),
                    Role::System,
                    &text,
                    &json!({ "notice": "interrupted" }),
                )
                .await?;
                data["error"] = json!(text);
                data["message_id"] = json!(msg.message_id);
            }
            let seq = event::reserve_block(&tx).await?;
            events.push(Event {
                conversation_id: t.conversation_id,
                seq,
                turn_id: Some(t.turn_id),
                kind: "turn_interrupted".into(),
                data,
                created_at: Utc::now(),
            });
        }
        event::insert_batch(&tx, &events).await?;
        tx.commit().await?;
        for e in events {
            self.hub().publish(Arc::new(e.clone()), true, false);
            self.signal(Signal::Event { event: e, persisted: true });
        }
        if !swept.is_empty() {
            self.wake();
        }
        // A replica that lost its lease stops its run itself; on this host, make sure.
        for run_id in swept.iter().filter_map(|t| t.run_id) {
            let killed = run_marker::kill_run(run_id, KILL_WAIT).await;
            if killed > 0 {
                warn!(%run_id, processes = killed, "killed the processes of a run whose lease expired");
            }
        }
        Ok(swept.len())
    }

    async fn worker_loop(&self, n: usize, shutdown: CancellationToken) {
        // After a failed claim: 100 ms, doubling up to 5 s; back to 100 ms after a claim.
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_factor(2.0)
            .with_max_delay(Duration::from_secs(5))
            .without_max_times();
        let mut delays = backoff.build();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let notified = self.inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let run_id = Uuid::new_v4();
            let claimed = match self.inner.coordination.get().await {
                Ok(client) => turn::claim(&client, &self.config().worker_id, self.config().lease, run_id)
                    .await
                    .map(|claimed| claimed.map(|claimed| (claimed, client))),
                Err(e) => Err(DbError::from(e)),
            };
            match claimed {
                Ok(Some((claimed, client))) => {
                    delays = backoff.build();
                    // More may be queued: let one more idle worker look (a cascade, not a herd).
                    self.wake_local();
                    self.run_turn(claimed, run_id, client).await;
                }
                Ok(None) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(self.config().idle_poll) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    warn!(worker = n, error = %e, "claiming a turn failed; backing off");
                    tokio::select! {
                        () = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Runs a claimed turn: holds it (lease and run lock, see [`Self::keep_turn`]; the
    /// claim took the lock on `client` when it could), runs it so that a panic fails
    /// only this turn, kills whatever the run's processes left, and only then lets the
    /// run lock go.
    async fn run_turn(&self, claimed: Claimed, run_id: Uuid, client: PooledClient) {
        let t = claimed.turn.clone();
        let span = info_span!("turn", conversation_id = %t.conversation_id, turn_id = %t.turn_id, attempt = t.attempt);
        async {
            let control = TurnControl::default();
            self.inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(t.conversation_id, RunningTurn { turn_id: t.turn_id, control: control.clone() });
            let keeper_stop = CancellationToken::new();
            // However this function ends (even dropped), the keeper stops.
            let _keeper_guard = keeper_stop.clone().drop_guard();
            let (locked_tx, locked_rx) = oneshot::channel();
            let lock = RunLock::claimed(&self.inner.coordination, client, t.conversation_id, claimed.run_locked);
            let keeper = tokio::spawn(
                self.clone()
                    .keep_turn(t.clone(), lock, control.clone(), keeper_stop.clone(), locked_tx)
                    .in_current_span(),
            );
            let sink_conversation =
                self.inner.sinks.contains_key(&claimed.conversation.platform).then(|| claimed.conversation.clone());
            let started = Instant::now();
            // Taken by the claim (the common case): no need to hear it from the keeper.
            let result = if claimed.run_locked || locked_rx.await.unwrap_or(false) {
                Some(AssertUnwindSafe(self.drive(claimed, control, run_id)).catch_unwind().await)
            } else {
                None
            };
            // Nothing of this run may outlive it: the next run may start once the lock goes.
            let killed = run_marker::end_run(run_id, KILL_WAIT).await;
            if killed > 0 {
                warn!(processes = killed, "killed processes the assistant left behind");
            }
            match result {
                None => {
                    warn!("another run of this conversation is still stopping; re-queueing the turn");
                    if let Ok(client) = self.pool().get().await {
                        let _ = turn::unclaim(&client, t.turn_id).await;
                    }
                }
                Some(Ok(Ok(status))) => {
                    info!(status, elapsed_ms = started.elapsed().as_millis() as u64, "turn finished");
                }
                Some(Ok(Err(e))) if is_conversation_gone(&e) => {
                    info!("the conversation was deleted during the turn; its result is dropped");
                }
                Some(Ok(Err(e))) => {
                    error!(error = %e, "turn could not be finished; re-queueing it");
                    if let Ok(client) = self.pool().get().await {
                        let _ = turn::requeue(&client, t.turn_id).await;
                    }
                }
                Some(Err(panic)) => {
                    let what = panic_message(panic.as_ref());
                    error!(panic = %what, "the turn panicked; failing it");
                    if let Err(e) = self.fail_panicked(&t, sink_conversation, &what).await {
                        error!(error = %e, "could not mark the panicked turn failed; the sweeper will re-queue it");
                    }
                }
            }
            // The lock goes back with its connection before this worker claims again, so
            // a worker never holds more than one coordination connection.
            keeper_stop.cancel();
            let _ = keeper.await;
            self.inner.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&t.conversation_id);
            // This worker claims again at once, so the conversation's next queued turn
            // needs no wake-up (nor a notification to other replicas).
        }
        .instrument(span)
        .await;
    }

    /// Ends a turn whose run panicked: `failed` with an error saying so, a `turn_failed`
    /// event, and the failure delivered to its platform. Nothing is written when the
    /// turn is no longer running (or its conversation is gone).
    async fn fail_panicked(&self, t: &Turn, conversation: Option<Conversation>, what: &str) -> DbResult<()> {
        let error =
            format!("internal error: Parley failed while answering this message ({what}). Send /retry to try again.");
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        if !conversation::lock_shared(&tx, t.conversation_id).await?
            || !turn::finish(&tx, t.turn_id, TurnStatus::Failed, Some(&error)).await?
        {
            tx.rollback().await?;
            return Ok(());
        }
        let seq = event::reserve_block(&tx).await?;
        let now = Utc::now();
        let event = Event {
            conversation_id: t.conversation_id,
            seq,
            turn_id: Some(t.turn_id),
            kind: "turn_failed".into(),
            data: json!({ "turn_id": t.turn_id, "ts": now.timestamp_micros(), "error": error, "message_id": null }),
            created_at: now,
        };
        event::insert_batch(&tx, std::slice::from_ref(&event)).await?;
        tx.commit().await?;
        self.hub().persisted(t.conversation_id, seq);
        self.hub().publish(Arc::new(event.clone()), true, false);
        self.signal(Signal::Persisted { conversation_id: t.conversation_id, seq });
        self.signal(Signal::Event { event, persisted: true });
        if let Some(conversation) = conversation
            && let Some(sink) = self.inner.sinks.get(&conversation.platform)
        {
            let update = ReplyUpdate {
                turn_id: Some(t.turn_id),
                text: String::new(),
                tools: Vec::new(),
                status: ReplyStatus::Failed { error },
            };
            if let Err(e) = sink.deliver(&conversation, update).await {
                warn!(error = %e, "delivering the failure of the panicked turn failed");
            }
        }
        Ok(())
    }

    /// Holds a claimed turn for its worker until `stop`: takes the conversation's run
    /// lock ([`RunLock`]) — waiting up to a lease for a previous run still stopping,
    /// then reporting `false` through `locked` so the turn is re-queued — and extends the
    /// turn's lease every third of its length on the lock's connection. Stops the turn
    /// when a cancel was requested through the database, the lease was lost, the lease
    /// ran out before it could be extended, or the lock was lost to another run. Keeps
    /// the lock until `stop` (after the run's processes are gone), then releases it.
    async fn keep_turn(
        self,
        t: Turn,
        mut lock: RunLock,
        control: TurnControl,
        stop: CancellationToken,
        locked: oneshot::Sender<bool>,
    ) {
        let lease = self.config().lease;
        let worker_id = self.config().worker_id.clone();
        let mut locked = Some(locked);
        let claimed_at = Instant::now();
        let mut extended_at = claimed_at;
        let mut next_extension = claimed_at + lease / 3;
        let mut extending = true;
        let mut poll = Duration::from_millis(5);
        let mut told = false;
        loop {
            if lock.is_held()
                && let Some(tx) = locked.take()
            {
                // Taken by the claim.
                let _ = tx.send(true);
            } else if !lock.is_held() && (locked.is_some() || extending) {
                match lock.try_acquire().await {
                    Ok(true) => {
                        if let Some(tx) = locked.take() {
                            let _ = tx.send(true);
                        } else {
                            info!("run lock taken again on a new connection");
                        }
                        poll = Duration::from_millis(5);
                    }
                    Ok(false) if locked.is_none() => {
                        warn!("another run of this conversation took its run lock; stopping the turn");
                        control.stop(StopReason::LeaseLost);
                        extending = false;
                    }
                    Ok(false) | Err(_) if claimed_at.elapsed() >= lease => {
                        if let Some(tx) = locked.take() {
                            let _ = tx.send(false);
                            return;
                        }
                    }
                    Ok(false) => {
                        if !told && claimed_at.elapsed() >= Duration::from_secs(1) {
                            told = true;
                            info!("waiting for a previous run of this conversation to stop");
                        }
                    }
                    Err(e) => debug!(error = %e, "taking the run lock failed; retrying"),
                }
            }
            let wake =
                if lock.is_held() || !extending { next_extension } else { next_extension.min(Instant::now() + poll) };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if !lock.is_held() {
                poll = (poll * 2).min(Duration::from_millis(250));
            }
            if !extending || Instant::now() < next_extension {
                continue;
            }
            next_extension = Instant::now() + lease / 3;
            let state = match lock.client().await {
                Ok(client) => turn::extend_lease(client, t.turn_id, &worker_id, lease).await,
                Err(e) => Err(e),
            };
            match state {
                Ok(LeaseState::Held) => extended_at = Instant::now(),
                Ok(LeaseState::CancelRequested) => {
                    extended_at = Instant::now();
                    control.stop(StopReason::Cancelled);
                }
                Ok(LeaseState::Lost) => {
                    warn!("lease lost; stopping the turn");
                    control.stop(StopReason::LeaseLost);
                    extending = false;
                }
                Err(e) => {
                    warn!(error = %e, "extending the lease failed");
                    lock.check();
                    if extended_at.elapsed() >= lease {
                        warn!("the lease ran out before it could be extended; stopping the turn");
                        control.stop(StopReason::LeaseLost);
                        extending = false;
                    }
                }
            }
        }
        if let Some(tx) = locked.take() {
            let _ = tx.send(false);
        }
        lock.release().await;
    }

    /// Runs a claimed turn to its end. Returns the final status.
    async fn drive(&self, claimed: Claimed, control: TurnControl, run_id: Uuid) -> DbResult<&'static str> {
        // The claim read the conversation, the message and the active session too.
        let Claimed { turn: t, first_event_seq, conversation, user_message, active_session, .. } = claimed;
        let sink = self
            .inner
            .sinks
            .get(&conversation.platform)
            .map(|s| SinkHandle::start(Arc::clone(s), conversation.clone()));
        let mut run = TurnRun {
            orch: self,
            emitter: Emitter {
                conversation_id: conversation.conversation_id,
                turn_id: t.turn_id,
                next_seq: first_event_seq,
                block_end: first_event_seq + event::BLOCK_SIZE,
                unflushed: Vec::new(),
                last_flush: Instant::now(),
            },
            conversation,
            turn: t,
            user_message,
            active_session,
            control,
            run_id,
            reply: Reply::default(),
            sink,
            cwd: None,
        };
        run.execute().await
    }

    fn assistant_named(&self, name: &str) -> Option<Arc<dyn Assistant>> {
        self.inner.assistants.get(name).cloned()
    }
}

impl TurnRun<'_> {
    async fn execute(&mut self) -> DbResult<&'static str> {
        let Some(assistant) = self.orch.assistant_named(&self.conversation.assistant) else {
            let err = AssistantError::Refused(format!(
                "the assistant {:?} is not configured on this server (configured: {})",
                self.conversation.assistant,
                self.orch.assistant_names().join(", ")
            ));
            let session = self.resolve_session("unknown").await?;
            return self.finish(&session, Outcome::Failed(err)).await;
        };
        let mut session = self.resolve_session(assistant.name()).await?;
        match self.orch.working_directory(&self.conversation).await {
            Ok(cwd) => self.cwd = cwd,
            Err(e) => {
                // Checked before every run: a link may have appeared since the cwd was accepted.
                warn!(error = %e, "refusing to run the turn outside the workspace root");
                let err = AssistantError::Refused(format!("{e}; the turn was not run"));
                return self.finish(&session, Outcome::Failed(err)).await;
            }
        }
        self.emit("turn_started", json!({ "attempt": self.turn.attempt, "session_id": session.session_id, "message_id": self.user_message.message_id })).await;

        let (prompt, history) = self.prompt_for(&session).await?;
        let mut outcome = self.attempt(&assistant, &mut session, prompt, history).await?;

        if let Outcome::Failed(AssistantError::StaleSession { session_id: stale, detail }) = &outcome
            && session.assistant_session_id.as_deref() == Some(stale.as_str())
        {
            let (stale, detail) = (stale.clone(), detail.clone());
            warn!(assistant_session_id = %stale, %detail, "assistant session is stale; continuing in a fresh session with history");
            let previous = session.session_id;
            session = self.recover_stale(&session, &stale).await?;
            let (prompt, history) = self.prompt_for(&session).await?;
            self.emit(
                "session_reset",
                json!({
                    "reason": "stale-session",
                    "old_assistant_session_id": stale,
                    "previous_session_id": previous,
                    "session_id": session.session_id,
                    "history_messages": history,
                    "detail": detail,
                }),
            )
            .await;
            outcome = self.attempt(&assistant, &mut session, prompt, history).await?;
        }
        self.finish(&session, outcome).await
    }

    /// The conversation's active session for `assistant`, started when there is none
    /// (or when the conversation moved to another assistant).
    ///
    /// The common case — the active session read at claim time runs this assistant —
    /// needs no database work: the turn records its session when it finishes.
    async fn resolve_session(&mut self, assistant: &str) -> DbResult<Session> {
        if let Some(active) = self.active_session.take()
            && active.assistant == assistant
            && settings::session_change(&active, &self.conversation).is_none()
        {
            return Ok(active);
        }
        let run_settings = SessionSettings::of(&self.conversation);
        let mut client = self.orch.pool().get().await?;
        let conversation_id = self.conversation.conversation_id;
        for _ in 0..3 {
            let tx = client.transaction().await?;
            if !conversation::lock_shared(&tx, conversation_id).await? {
                return Err(DbError::not_found("conversation"));
            }
            let active = session::active(&tx, conversation_id).await?;
            let resolved = match active {
                Some(s) if s.assistant == assistant && settings::session_change(&s, &self.conversation).is_none() => {
                    Ok(s)
                }
                Some(s) => {
                    // The conversation moved to another assistant, directory, model or prompt.
                    let reason =
                        settings::session_change(&s, &self.conversation).unwrap_or(Transition::AssistantChanged);
                    session::end(&tx, s.session_id, reason, None).await?;
                    session::start(
                        &tx,
                        &NewSession {
                            conversation_id,
                            assistant,
                            parent_session_id: Some(s.session_id),
                            reason,
                            history_from_message_id: s.history_from_message_id,
                            settings: &run_settings,
                        },
                    )
                    .await
                }
                None => {
                    let last = session::last_ended(&tx, conversation_id).await?;
                    let reason = last
                        .as_ref()
                        .and_then(|s| s.ended_reason.as_deref())
                        .and_then(Transition::parse)
                        .unwrap_or(Transition::FirstMessage);
                    session::start(
                        &tx,
                        &NewSession {
                            conversation_id,
                            assistant,
                            parent_session_id: last.as_ref().map(|s| s.session_id),
                            reason,
                            history_from_message_id: last.map_or(0, |s| s.history_from_message_id),
                            settings: &run_settings,
                        },
                    )
                    .await
                }
            };
            match resolved {
                Ok(s) => {
                    turn::set_session(&tx, self.turn.turn_id, s.session_id).await?;
                    tx.commit().await?;
                    return Ok(s);
                }
                // Someone else started one first: read it again.
                Err(e) if e.is_conflict_on(parley_db::constraint::SESSION_ONE_ACTIVE) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(DbError::Other("could not resolve the conversation's session".into()))
    }

    /// The prompt and how many history messages it carries: the message alone when the
    /// session will be resumed, else rebuilt from history.
    async fn prompt_for(&self, session: &Session) -> DbResult<(String, usize)> {
        if session.assistant_session_id.is_some() {
            return Ok((self.user_message.content.clone(), 0));
        }
        let config = self.orch.config();
        let client = self.orch.pool().get().await?;
        let history = message::history_before(
            &client,
            self.conversation.conversation_id,
            session.history_from_message_id,
            self.user_message.message_id,
            i64::try_from(config.history_budget_chars).unwrap_or(i64::MAX),
            i64::try_from(config.history_max_messages).unwrap_or(i64::MAX),
        )
        .await?;
        Ok((prompt::with_history(&history, &self.user_message.content), history.len()))
    }

    /// Writes NULL over the stale assistant session ID (compare-and-set), ends the
    /// session as `stale-session` and starts its child.
    async fn recover_stale(&self, stale_session: &Session, stale_id: &str) -> DbResult<Session> {
        let mut client = self.orch.pool().get().await?;
        let tx = client.transaction().await?;
        if !conversation::lock_shared(&tx, self.conversation.conversation_id).await? {
            return Err(DbError::not_found("conversation"));
        }
        let cleared = session::clear_assistant_session_id(&tx, stale_session.session_id, stale_id).await?;
        debug!(cleared, "cleared the stale assistant session ID");
        let ended = session::end(&tx, stale_session.session_id, Transition::StaleSession, None).await?;
        let fresh = match session::active(&tx, self.conversation.conversation_id).await? {
            // A /reset started a new session meanwhile: use it.
            Some(active) if !ended || active.session_id != stale_session.session_id => active,
            _ => {
                session::start(
                    &tx,
                    &NewSession {
                        conversation_id: self.conversation.conversation_id,
                        assistant: &stale_session.assistant,
                        parent_session_id: Some(stale_session.session_id),
                        reason: Transition::StaleSession,
                        history_from_message_id: stale_session.history_from_message_id,
                        settings: &SessionSettings::of(&self.conversation),
                    },
                )
                .await?
            }
        };
        turn::set_session(&tx, self.turn.turn_id, fresh.session_id).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    /// Runs the assistant once, streaming its chunks into events and the reply.
    async fn attempt(
        &mut self,
        assistant: &Arc<dyn Assistant>,
        session: &mut Session,
        prompt: String,
        history: usize,
    ) -> DbResult<Outcome> {
        let request = RunRequest {
            prompt,
            message: self.user_message.content.clone(),
            history_messages: history,
            resume: session.assistant_session_id.clone(),
            cwd: self.cwd.clone(),
            cancel: self.control.token.child_token(),
            run_id: self.run_id,
            settings: self.orch.run_settings(&self.conversation),
        };
        // PostgreSQL cannot store NUL (U+0000): assistant output is made storable here, where it enters.
        let mut stream = assistant.run(request).map(|r| r.map(Chunk::without_nul).map_err(AssistantError::without_nul));
        loop {
            let next = tokio::select! {
                biased;
                () = self.control.token.cancelled() => {
                    // The adapter saw the same cancellation: let it stop its processes
                    // gracefully (its stream then ends) before they are killed outright.
                    let _ = tokio::time::timeout(STOP_DRAIN, async { while stream.next().await.is_some() {} }).await;
                    return Ok(Outcome::Stopped(self.control.reason()));
                }
                next = stream.next() => next,
            };
            let chunk = match next {
                None => {
                    return Ok(Outcome::Failed(AssistantError::Protocol(
                        "the assistant ended without a result".into(),
                    )));
                }
                Some(Err(AssistantError::Cancelled)) if self.control.token.is_cancelled() => {
                    return Ok(Outcome::Stopped(self.control.reason()));
                }
                Some(Err(e)) => return Ok(Outcome::Failed(e)),
                Some(Ok(chunk)) => chunk,
            };
            match chunk {
                Chunk::SessionStarted { id } => {
                    if session.assistant_session_id.as_deref() != Some(id.as_str()) {
                        // Stored at once, so a crash mid-turn still knows what to resume.
                        let client = self.orch.pool().get().await?;
                        session::set_assistant_session_id(&client, session.session_id, &id).await?;
                        session.assistant_session_id = Some(id);
                    }
                }
                Chunk::Text { text } => {
                    self.reply.text.push_str(&text);
                    for piece in pieces(&text, EVENT_TEXT_CHARS) {
                        self.emit("text", json!({ "text": piece })).await;
                    }
                    self.progress();
                }
                Chunk::Thinking { text } => {
                    for piece in pieces(&text, EVENT_TEXT_CHARS) {
                        self.emit("thinking", json!({ "text": piece })).await;
                    }
                }
                Chunk::ToolUse { id, name, input } => {
                    self.reply.tools.push(tool_line(&name, &input));
                    let shown = shown_input(&input);
                    self.reply.tool_calls.push(json!({ "id": id, "name": name, "input": input }));
                    self.emit("tool_use", json!({ "id": id, "name": name, "input": shown })).await;
                    self.progress();
                }
                Chunk::ToolResult { id, is_error, output } => {
                    self.emit(
                        "tool_result",
                        json!({ "id": id, "is_error": is_error, "output": truncate(&output, TOOL_OUTPUT_CHARS) }),
                    )
                    .await;
                }
                Chunk::Completed { session_id, usage, cost_usd, duration_ms } => {
                    self.reply.usage = usage;
                    self.reply.cost_usd = cost_usd;
                    self.reply.duration_ms = duration_ms;
                    self.reply.completed_session_id = session_id;
                    return Ok(Outcome::Completed);
                }
            }
        }
    }

    fn progress(&self) {
        if let Some(sink) = &self.sink {
            sink.progress(self.reply.update(self.turn.turn_id, ReplyStatus::Running));
        }
    }

    /// Makes sure the event-number block has room for `n` more events.
    async fn reserve(&mut self, n: i64) -> DbResult<()> {
        if self.emitter.next_seq + n > self.emitter.block_end {
            let client = self.orch.pool().get().await?;
            let first = event::reserve_block(&client).await?;
            self.emitter.next_seq = first;
            self.emitter.block_end = first + event::BLOCK_SIZE;
        }
        Ok(())
    }

    /// Creates an event and publishes it.
    async fn emit(&mut self, kind: &str, data: Value) {
        if let Err(e) = self.reserve(1).await {
            warn!(error = %e, "cannot reserve event numbers; event dropped");
            return;
        }
        let event = self.emitter.event(kind, data);
        self.publish(event).await;
    }

    /// Publishes an event live (here and to the other replicas) and writes the
    /// unflushed batch when the flush interval has passed. A failed write keeps the
    /// events for the next try.
    async fn publish(&mut self, event: Event) {
        let shared = Arc::new(event.clone());
        self.orch.hub().publish(Arc::clone(&shared), false, false);
        self.orch.signal(Signal::Event { event, persisted: false });
        let event = Arc::unwrap_or_clone(shared);
        self.emitter.unflushed.push(event);
        if self.emitter.last_flush.elapsed() >= self.orch.config().event_flush_interval {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if self.emitter.unflushed.is_empty() {
            return;
        }
        let written = match self.orch.pool().get().await {
            Ok(client) => event::insert_batch(&client, &self.emitter.unflushed).await,
            Err(e) => Err(DbError::from(e)),
        };
        match written {
            Ok(()) => {
                let last = self.emitter.unflushed.last().map_or(0, |e| e.seq);
                self.emitter.unflushed.clear();
                self.orch.hub().persisted(self.conversation.conversation_id, last);
                self.orch.signal(Signal::Persisted { conversation_id: self.conversation.conversation_id, seq: last });
            }
            Err(e) => warn!(error = %e, "writing events failed; will retry"),
        }
        self.emitter.last_flush = Instant::now();
    }

    /// Ends the turn in one transaction: the assistant message (partial ones marked
    /// incomplete), the session's assistant session ID and `last_error`, the turn's
    /// status, and the remaining events with the final one.
    ///
    /// While the database is unreachable it retries for up to half a lease, so a short
    /// outage does not throw the reply away (past that the sweeper re-runs the turn).
    async fn finish(&mut self, session: &Session, outcome: Outcome) -> DbResult<&'static str> {
        let deadline = Instant::now() + self.orch.config().lease / 2;
        // 100 ms, doubling up to 2 s. The loop stays (not `backon::Retryable`): each attempt
        // borrows `self` mutably, which backon's attempt factory cannot hand out in turn.
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_factor(2.0)
            .with_max_delay(Duration::from_secs(2))
            .without_max_times()
            .build();
        loop {
            match self.finish_once(session, &outcome).await {
                Err(DbError::Unavailable(e) | DbError::Retryable(e)) if Instant::now() < deadline => {
                    warn!(error = %e, "database unavailable while finishing the turn; retrying");
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(2))).await;
                }
                other => return other,
            }
        }
    }

    /// Stores a successful turn in one statement (see [`turn::complete`]).
    async fn complete(&mut self, session: &Session) -> DbResult<&'static str> {
        self.reserve(1).await?;
        let conversation_id = self.conversation.conversation_id;
        let turn_id = self.turn.turn_id;
        let client = self.orch.pool().get().await?;
        let stored_id = session.assistant_session_id.as_deref();
        let final_event = self.emitter.event(
            "turn_completed",
            json!({
                "usage": self.reply.usage,
                "cost_usd": self.reply.cost_usd,
                "duration_ms": self.reply.duration_ms,
            }),
        );
        let changed_id = self.reply.completed_session_id.as_deref().filter(|id| Some(*id) != stored_id);
        let completed = turn::complete(
            &client,
            &turn::Completion {
                turn_id,
                worker_id: &self.orch.config().worker_id,
                conversation_id,
                session_id: session.session_id,
                assistant_session_id: changed_id,
                content: &self.reply.text,
                metadata: &self.reply.metadata(),
                events: &self.emitter.unflushed,
                final_event: &final_event,
            },
        )
        .await?;
        let Some(message_id) = completed else {
            warn!(
                "the turn was no longer running when it finished (taken back, or its conversation deleted); its result is dropped"
            );
            self.orch.hub().persisted(conversation_id, self.emitter.next_seq - 1);
            return Ok("lost");
        };
        let mut final_event = final_event;
        final_event.data["message_id"] = json!(message_id);
        self.after_commit(final_event);
        if let Some(sink) = self.sink.take() {
            sink.finish(self.reply.update(turn_id, ReplyStatus::Completed)).await;
        }
        Ok(TurnStatus::Completed.as_str())
    }

    async fn finish_once(&mut self, session: &Session, outcome: &Outcome) -> DbResult<&'static str> {
        if matches!(outcome, Outcome::Completed) {
            return self.complete(session).await;
        }
        self.reserve(2).await?;
        let conversation_id = self.conversation.conversation_id;
        let turn_id = self.turn.turn_id;
        let mut client = self.orch.pool().get().await?;
        let tx = client.transaction().await?;
        // First, as everywhere: a concurrent delete of the conversation waits for this
        // transaction, or has committed and nothing is written.
        if !conversation::lock_shared(&tx, conversation_id).await? {
            return Err(DbError::not_found("conversation"));
        }
        turn::set_session(&tx, turn_id, session.session_id).await?;
        let (status, final_event, update) = match outcome {
            Outcome::Completed => unreachable!("completed turns are stored by complete()"),
            Outcome::Failed(err) => {
                let text = err.to_string();
                warn!(error = %text, "turn failed");
                let partial = self.store_partial(&tx, json!({ "error": text })).await?;
                session::set_last_error(&tx, session.session_id, Some(&text)).await?;
                let data = json!({ "error": text, "message_id": partial });
                self.turn.error = Some(text.clone());
                (TurnStatus::Failed, self.emitter.event("turn_failed", data), Some(ReplyStatus::Failed { error: text }))
            }
            &Outcome::Stopped(StopReason::Cancelled | StopReason::None) => {
                let partial = self.store_partial(&tx, json!({ "cancelled": true })).await?;
                (
                    TurnStatus::Cancelled,
                    self.emitter.event("turn_cancelled", json!({ "message_id": partial })),
                    Some(ReplyStatus::Cancelled),
                )
            }
            &Outcome::Stopped(StopReason::Interrupted) => {
                // Re-queued for the next start: the re-run answers in full, so the partial
                // reply is not stored (it would repeat in history).
                turn::requeue(&tx, turn_id).await?;
                event::insert_batch(&tx, &self.emitter.unflushed).await?;
                let e = self.emitter.event("turn_interrupted", json!({ "requeued": true }));
                event::insert_batch(&tx, std::slice::from_ref(&e)).await?;
                tx.commit().await?;
                self.after_commit(e);
                return Ok("requeued");
            }
            &Outcome::Stopped(StopReason::LeaseLost) => {
                tx.rollback().await?;
                let last = self.emitter.next_seq - 1;
                self.orch.hub().persisted(conversation_id, last);
                return Ok("lost");
            }
        };
        if !turn::finish(&tx, turn_id, status, self.turn.error.as_deref()).await? {
            tx.rollback().await?;
            warn!("the turn was no longer running when it finished; its result is dropped");
            self.orch.hub().persisted(conversation_id, self.emitter.next_seq - 1);
            return Ok("lost");
        }
        event::insert_batch(&tx, &self.emitter.unflushed).await?;
        event::insert_batch(&tx, std::slice::from_ref(&final_event)).await?;
        tx.commit().await?;
        self.after_commit(final_event);
        if let (Some(sink), Some(st)) = (self.sink.take(), update) {
            sink.finish(self.reply.update(turn_id, st)).await;
        }
        Ok(status.as_str())
    }

    /// Stores the partial reply (if any text came) marked incomplete; returns its id.
    async fn store_partial(&self, tx: &impl GenericClient, extra: Value) -> DbResult<Option<i64>> {
        if self.reply.text.is_empty() {
            return Ok(None);
        }
        let mut meta = self.reply.metadata();
        meta["incomplete"] = json!(true);
        if let (Some(m), Some(e)) = (meta.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        let msg = message::insert(
            tx,
            self.conversation.conversation_id,
            Some(self.turn.turn_id),
            Role::Assistant,
            &self.reply.text,
            &meta,
        )
        .await?;
        Ok(Some(msg.message_id))
    }

    fn after_commit(&mut self, final_event: Event) {
        self.emitter.unflushed.clear();
        let hub = self.orch.hub();
        let conversation_id = self.conversation.conversation_id;
        hub.persisted(conversation_id, final_event.seq);
        hub.publish(Arc::new(final_event.clone()), true, false);
        self.orch.signal(Signal::Persisted { conversation_id, seq: final_event.seq });
        self.orch.signal(Signal::Event { event: final_event, persisted: true });
    }
}

/// Whether a turn's write failed because its conversation was deleted meanwhile.
fn is_conversation_gone(e: &DbError) -> bool {
    parley_db::constraint::CONVERSATION_REFERENCES.iter().any(|c| e.is_conflict_on(c))
        || matches!(e, DbError::NotFound { what: "conversation" })
}

/// A panic's message, from its payload (`panic!` with a literal or a formatted string).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_split_into_event_sized_pieces_keeping_every_character() {
        let text = "é".repeat(2_500);
        let parts: Vec<&str> = pieces(&text, EVENT_TEXT_CHARS).collect();
        assert_eq!(parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(), vec![1_000, 1_000, 500]);
        assert_eq!(parts.concat(), text);
        assert_eq!(pieces("short", EVENT_TEXT_CHARS).collect::<Vec<_>>(), vec!["short"]);
        assert_eq!(pieces("", EVENT_TEXT_CHARS).count(), 0);
    }

    #[test]
    fn large_tool_inputs_are_previewed_and_small_ones_kept() {
        let small = json!({ "command": "ls" });
        assert_eq!(shown_input(&small), small);
        let large = json!({ "content": "\u{1}".repeat(5_000) });
        let shown = shown_input(&large);
        assert_eq!(shown["truncated"], true);
        assert!(shown.to_string().len() < 7_000, "{} bytes", shown.to_string().len());
    }
}
