//! Replica-to-replica signals over PostgreSQL LISTEN/NOTIFY
//! (`docs/architecture.md#replica-signals`): wake-ups for queued turns, live events for
//! SSE followers connected to another replica, "stored up to seq" marks, and cancel
//! requests that must reach the replica running a turn.
//!
//! Sending goes through a queue drained by one task, several notifications per round
//! trip (`select pg_notify(...) from unnest($1)`), so a worker never waits on it.
//! Receiving uses a dedicated connection (pooled connections drop notifications),
//! reconnecting with backoff; after a reconnect the hub resynchronises followers from
//! the database and workers poll for turns, so nothing missed during a gap is lost.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use parley_db::event::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::Orchestrator;

/// The NOTIFY channel.
pub const CHANNEL: &str = "parley";
/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_900;
/// Most notifications sent in one round trip.
const MAX_BATCH: usize = 64;

/// One notification's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Signal {
    /// A turn may be claimable.
    Wake,
    /// A live event; `persisted` when it was committed before it was sent.
    Event {
        /// The event.
        event: Event,
        /// True when it is already stored.
        persisted: bool,
    },
    /// The conversation's events up to `seq` are stored.
    Persisted {
        /// The conversation.
        conversation_id: Uuid,
        /// The highest stored seq.
        seq: i64,
    },
    /// Stop this turn wherever it runs.
    Cancel {
        /// The turn.
        turn_id: Uuid,
    },
    /// Another worker took the conversation's turn from `holder`, the worker that held
    /// its warm assistant process: the holder kills that process
    /// (`docs/architecture.md#warm-processes`).
    WarmTaken {
        /// The conversation.
        conversation_id: Uuid,
        /// The worker ID of the previous holder.
        holder: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending replica's random id, to ignore our own notifications.
    origin: Uuid,
    /// The signals, in the order they were sent.
    signals: Vec<Signal>,
}

/// The sending half: a queue of encoded signals drained by [`Orchestrator::run_sender`].
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    origin: Uuid,
    tx: mpsc::UnboundedSender<String>,
}

impl Notifier {
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        (Self { origin: Uuid::new_v4(), tx }, rx)
    }

    /// The start of every payload this replica sends.
    fn prefix(&self) -> String {
        format!("{{\"origin\":\"{}\",\"signals\":[", self.origin)
    }

    /// Queues a signal for the other replicas. Oversized events are not relayed live;
    /// followers elsewhere read them from the database when they are stored.
    pub(crate) fn send(&self, signal: Signal) {
        match serde_json::to_string(&signal) {
            Ok(encoded) if encoded.len() + self.prefix().len() + 2 <= MAX_PAYLOAD => {
                let _ = self.tx.send(encoded);
            }
            Ok(encoded) => debug!(bytes = encoded.len(), "notification too large to relay live"),
            Err(e) => warn!(error = %e, "cannot encode notification"),
        }
    }

    /// Packs encoded signals, in order, into as few payloads as fit PostgreSQL's limit.
    fn pack(&self, signals: &[String]) -> Vec<String> {
        let prefix = self.prefix();
        let mut payloads = Vec::new();
        let mut current = prefix.clone();
        for s in signals {
            if current.len() > prefix.len() && current.len() + s.len() + 2 > MAX_PAYLOAD {
                current.push_str("]}");
                payloads.push(std::mem::replace(&mut current, prefix.clone()));
            }
            if current.len() > prefix.len() {
                current.push(',');
            }
            current.push_str(s);
        }
        if current.len() > prefix.len() {
            current.push_str("]}");
            payloads.push(current);
        }
        payloads
    }
}

impl Orchestrator {
    /// Sends queued notifications until `stop` fires (and the queue is drained).
    pub(crate) async fn run_sender(&self, mut rx: mpsc::UnboundedReceiver<String>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, MAX_BATCH) => if n == 0 { return },
                () = stop.cancelled() => {
                    rx.close();
                    if rx.recv_many(&mut batch, MAX_BATCH).await == 0 { return }
                }
            }
            // Everything queued since the last round trip, in as few notifications as fit.
            let payloads = self.inner.notifier.pack(&batch);
            let sent = match self.inner.coordination.get().await {
                Ok(client) => match client.prepare_cached("select pg_notify($1, p) from unnest($2::text[]) p").await {
                    Ok(stmt) => {
                        client.execute(&stmt, &[&CHANNEL, &payloads]).await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = sent {
                // Receivers resynchronise from the database after their own gap; a
                // lost live notification costs latency, not data.
                debug!(error = %e, dropped = batch.len(), "could not send notifications");
            }
            batch.clear();
        }
    }

    /// Listens for other replicas' notifications on a dedicated connection until `stop`
    /// fires, reconnecting with backoff.
    pub(crate) async fn run_listener(&self, db: parley_db::DbConfig, stop: CancellationToken) {
        // `origin` is the envelope's first field, so our own payloads start with this.
        let own_prefix = self.inner.notifier.prefix();
        // 200 ms, doubling up to 5 s; back to 200 ms once connected.
        let reconnect = crate::doubling_backoff(Duration::from_millis(200), Duration::from_secs(5));
        let mut delays = reconnect.build();
        let mut first = true;
        loop {
            let connected = async {
                let (client, mut conn) = db.pg_config()?.connect(tokio_postgres::NoTls).await?;
                let (tx, rx) = mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_owned()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                debug!(error = %e, "notification connection failed");
                                break;
                            }
                        }
                    }
                });
                client.batch_execute(&format!("listen {CHANNEL}")).await?;
                Ok::<_, parley_db::DbError>((client, driver, rx))
            }
            .await;
            match connected {
                Ok((client, driver, mut rx)) => {
                    delays = reconnect.build();
                    if first {
                        debug!("listening for other replicas");
                    } else {
                        info!("notification connection re-established; resynchronising");
                    }
                    first = false;
                    // Whatever was missed while not listening is in the database.
                    self.hub().resync();
                    self.wake();
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => { driver.abort(); return; }
                            payload = rx.recv() => match payload {
                                Some(p) => self.on_notification(&own_prefix, &p),
                                None => break,
                            }
                        }
                    }
                    drop(client);
                    warn!("notification connection lost; reconnecting");
                }
                Err(e) => debug!(error = %e, "cannot open the notification connection"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))) => {}
            }
        }
    }

    fn on_notification(&self, own_prefix: &str, payload: &str) {
        // Our own notifications come back too: skip them before parsing.
        if payload.starts_with(own_prefix) {
            return;
        }
        let Ok(envelope) = serde_json::from_str::<Envelope>(payload) else {
            debug!("ignoring an unreadable notification");
            return;
        };
        for signal in envelope.signals {
            match signal {
                Signal::Wake => self.wake_local(),
                Signal::Event { event, persisted } => self.hub().publish(Arc::new(event), persisted, true),
                Signal::Persisted { conversation_id, seq } => self.hub().persisted(conversation_id, seq),
                Signal::Cancel { turn_id } => {
                    self.cancel_local(turn_id);
                }
                Signal::WarmTaken { conversation_id, holder } => {
                    if holder == self.config().worker_id {
                        self.forget_warm(conversation_id);
                    }
                }
            }
        }
    }

    /// Sends a signal to the other replicas.
    pub(crate) fn signal(&self, signal: Signal) {
        self.inner.notifier.send(signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_event(text: &str) -> Signal {
        let event = Event {
            conversation_id: Uuid::nil(),
            seq: 1,
            turn_id: None,
            kind: parley_db::event::EventKind::Text,
            data: serde_json::json!({ "text": text }),
            created_at: chrono::Utc::now(),
        };
        Signal::Event { event, persisted: false }
    }

    #[test]
    fn signals_are_packed_in_order_into_payloads_that_fit_and_carry_the_origin() {
        let (notifier, mut rx) = Notifier::new();
        let big = "x".repeat(3_000);
        for i in 0..10 {
            notifier.send(Signal::Cancel { turn_id: Uuid::from_u128(i) });
            notifier.send(Signal::Persisted { conversation_id: Uuid::nil(), seq: i64::try_from(i).expect("small") });
        }
        notifier.send(text_event(&big));
        let mut encoded = Vec::new();
        while let Ok(s) = rx.try_recv() {
            encoded.push(s);
        }
        let payloads = notifier.pack(&encoded);
        let mut decoded = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD, "{} bytes", p.len());
            assert!(p.starts_with(&notifier.prefix()));
            let envelope: Envelope = serde_json::from_str(p).expect("valid JSON");
            assert_eq!(envelope.origin, notifier.origin);
            decoded.extend(envelope.signals);
        }
        assert_eq!(decoded.len(), 21, "nothing lost");
        assert!(matches!(decoded[0], Signal::Cancel { turn_id } if turn_id == Uuid::from_u128(0)));
        assert!(matches!(decoded[20], Signal::Event { .. }), "order kept");
        let other = Envelope { origin: Uuid::new_v4(), signals: vec![Signal::Wake] };
        assert!(!serde_json::to_string(&other).expect("json").starts_with(&notifier.prefix()));
    }

    #[test]
    fn an_oversized_signal_is_not_queued() {
        let (notifier, mut rx) = Notifier::new();
        notifier.send(text_event(&"y".repeat(MAX_PAYLOAD)));
        assert!(rx.try_recv().is_err());
    }
}
