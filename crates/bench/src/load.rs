//! The Parley load: one driver per conversation posts a message, follows the turn on
//! SSE until `turn_completed`, and posts the next — closed loop, so the offered load is
//! the concurrency. A gate starts and stops the drivers between phases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::server::Target;

/// How long a driver waits for a turn to complete before giving up on it.
const TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// The message every driver sends.
pub const MESSAGE: &str = "Benchmark message: please answer briefly.";

/// One SSE event as the client received it.
#[derive(Debug)]
pub(crate) struct Received {
    /// The event's kind (`text`, `turn_completed`…).
    pub(crate) kind: String,
    /// The turn it belongs to.
    pub(crate) turn_id: Option<Uuid>,
    /// The `ts` the worker put in the event (Unix µs), when present.
    ts: Option<i64>,
    /// When it arrived.
    pub(crate) at: Instant,
    /// When it arrived, in Unix µs.
    at_unix_us: i64,
}

#[derive(Deserialize)]
struct EventData {
    turn_id: Option<Uuid>,
    ts: Option<i64>,
}

/// Now, in Unix microseconds.
#[must_use]
pub fn unix_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One finished (or failed) turn as a driver saw it.
#[derive(Debug, Clone)]
pub struct TurnRecord {
    /// The phase it was posted in.
    pub phase: usize,
    /// The turn.
    pub turn_id: Uuid,
    /// Which replica the driver followed it on (index into the targets).
    pub follow_replica: usize,
    /// When the POST was sent.
    pub posted: Instant,
    /// When `turn_completed` arrived; `None` when it failed or timed out.
    pub completed: Option<Instant>,
    /// POST → first `text` event.
    pub first_text: Option<Duration>,
    /// Relay latency of each `text` event: received − produced (`ts`), in µs.
    pub relay_us: Vec<i64>,
}

/// Shared state of the drivers.
#[derive(Debug)]
pub struct Load {
    gate: watch::Sender<Option<usize>>,
    in_flight: Arc<AtomicUsize>,
    records: Arc<Mutex<Vec<TurnRecord>>>,
    errors: Arc<AtomicUsize>,
}

impl Load {
    /// Starts one driver per conversation, each following its conversation on SSE at
    /// `targets[follow[i]]` and posting to `targets[post[i]]`. Drivers wait for the gate.
    ///
    /// # Errors
    /// When an SSE stream cannot be opened.
    pub async fn start(targets: &[Target], conversations: &[(Uuid, usize, usize)]) -> Result<Self> {
        let (gate, _) = watch::channel(None);
        let load = Self {
            gate,
            in_flight: Arc::new(AtomicUsize::new(0)),
            records: Arc::new(Mutex::new(Vec::new())),
            errors: Arc::new(AtomicUsize::new(0)),
        };
        for &(conversation, post, follow) in conversations {
            let events = open_sse(&targets[follow], conversation).await?;
            let driver = Driver {
                post: targets[post].clone(),
                conversation,
                follow_replica: follow,
                events,
                gate: load.gate.subscribe(),
                in_flight: Arc::clone(&load.in_flight),
                records: Arc::clone(&load.records),
                errors: Arc::clone(&load.errors),
            };
            tokio::spawn(driver.run());
        }
        Ok(load)
    }

    /// Opens the gate for `phase`.
    pub fn open(&self, phase: usize) {
        self.gate.send_replace(Some(phase));
    }

    /// Closes the gate and waits until every started turn finished.
    pub async fn close(&self) {
        self.gate.send_replace(None);
        let deadline = Instant::now() + TURN_TIMEOUT + Duration::from_secs(5);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The records so far.
    #[must_use]
    pub fn records(&self) -> Vec<TurnRecord> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Failed posts, failed turns and timeouts so far.
    #[must_use]
    pub fn errors(&self) -> usize {
        self.errors.load(Ordering::SeqCst)
    }
}

/// Opens `GET …/events` and forwards each event, stamped on arrival, to a channel.
pub(crate) async fn open_sse(target: &Target, conversation: Uuid) -> Result<mpsc::UnboundedReceiver<Received>> {
    let resp = target
        .http
        .get(target.url(&format!("/api/conversations/{conversation}/events")))
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await?;
    if resp.status() != 200 {
        bail!("SSE {conversation}: {}", resp.status());
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = resp.bytes_stream().eventsource();
    tokio::spawn(async move {
        while let Some(Ok(e)) = stream.next().await {
            let (at, at_unix_us) = (Instant::now(), unix_us());
            let data: Option<EventData> = serde_json::from_str(&e.data).ok();
            let received = Received {
                kind: e.event,
                turn_id: data.as_ref().and_then(|d| d.turn_id),
                ts: data.and_then(|d| d.ts),
                at,
                at_unix_us,
            };
            if tx.send(received).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

struct Driver {
    post: Target,
    conversation: Uuid,
    follow_replica: usize,
    events: mpsc::UnboundedReceiver<Received>,
    gate: watch::Receiver<Option<usize>>,
    in_flight: Arc<AtomicUsize>,
    records: Arc<Mutex<Vec<TurnRecord>>>,
    errors: Arc<AtomicUsize>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let phase = match self.gate.wait_for(Option::is_some).await {
                Ok(p) => p.unwrap_or_default(),
                Err(_) => return,
            };
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let ok = self.turn(phase).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if !ok {
                self.errors.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Posts one message and follows its turn to the end. False on any failure.
    async fn turn(&mut self, phase: usize) -> bool {
        // Events of earlier turns still queued (e.g. after a timeout) are stale.
        while self.events.try_recv().is_ok() {}
        let posted = Instant::now();
        let Ok(turn_id) = self.post.post_message(self.conversation, MESSAGE).await else { return false };
        let mut record = TurnRecord {
            phase,
            turn_id,
            follow_replica: self.follow_replica,
            posted,
            completed: None,
            first_text: None,
            relay_us: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + TURN_TIMEOUT;
        let ok = loop {
            let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.events.recv()).await else { break false };
            if e.turn_id != Some(turn_id) {
                continue;
            }
            match e.kind.as_str() {
                "text" => {
                    record.first_text.get_or_insert(e.at - posted);
                    if let Some(ts) = e.ts {
                        record.relay_us.push(e.at_unix_us - ts);
                    }
                }
                "turn_completed" => {
                    record.completed = Some(e.at);
                    break true;
                }
                "turn_failed" | "turn_cancelled" | "turn_interrupted" => break false,
                _ => {}
            }
        };
        self.records.lock().unwrap_or_else(PoisonError::into_inner).push(record);
        ok
    }
}
