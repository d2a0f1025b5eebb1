//! The in-process event hub: a conversation's events sent live to its followers
//! (SSE clients), with no gap and no duplicate against the database log.
//!
//! A worker publishes each event live *before* it is persisted (so relay latency is not
//! a commit), and the hub keeps it in the conversation's `pending` list until its batch
//! is committed. A follower subscribes first, then reads `pending`, then the database,
//! and merges by `seq`: an event published before the subscription is in `pending` or
//! already committed; one published after arrives on the channel. Events of other
//! replicas arrive through [`crate::notify`] and are kept pending the same way until
//! their replica says they are stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use parley_db::event::Event;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// How many live events a slow follower may fall behind before it resynchronises from
/// the database.
/// Small on purpose: every followed conversation allocates it up front, and a follower
/// that lags catches up from the database without losing anything.
const CHANNEL_CAPACITY: usize = 32;

#[derive(Debug)]
struct Pending {
    event: Arc<Event>,
    remote: bool,
}

#[derive(Debug)]
struct Channel {
    tx: broadcast::Sender<Arc<Event>>,
    pending: Mutex<Vec<Pending>>,
}

/// Per-conversation broadcast channels and not-yet-persisted events.
#[derive(Debug)]
pub struct EventHub {
    channels: Mutex<HashMap<Uuid, Arc<Channel>>>,
    /// Bumped when live events may have been missed (the notification connection
    /// was re-established): followers then catch up from the database.
    generation: watch::Sender<u64>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self { channels: Mutex::new(HashMap::new()), generation: watch::channel(0).0 }
    }
}

/// A live subscription to one conversation's events. Dropping it releases the
/// conversation's channel when nobody else uses it.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<EventHub>,
    conversation_id: Uuid,
    /// Live events published after the subscription started.
    pub receiver: broadcast::Receiver<Arc<Event>>,
    /// Changes when followers must catch up from the database.
    pub generation: watch::Receiver<u64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Drop our receiver first so the count below no longer includes it.
        let (tx, _) = broadcast::channel(1);
        self.receiver = tx.subscribe();
        self.hub.release(self.conversation_id);
    }
}

impl Subscription {
    /// Events published but not yet committed, in `seq` order.
    #[must_use]
    pub fn pending(&self) -> Vec<Arc<Event>> {
        self.hub.pending(self.conversation_id)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventHub {
    fn channel(&self, conversation_id: Uuid) -> Arc<Channel> {
        lock(&self.channels)
            .entry(conversation_id)
            .or_insert_with(|| {
                Arc::new(Channel { tx: broadcast::channel(CHANNEL_CAPACITY).0, pending: Mutex::new(Vec::new()) })
            })
            .clone()
    }

    /// Subscribes to a conversation's live events.
    #[must_use]
    pub fn subscribe(self: &Arc<Self>, conversation_id: Uuid) -> Subscription {
        let receiver = self.channel(conversation_id).tx.subscribe();
        let mut generation = self.generation.subscribe();
        generation.mark_unchanged();
        Subscription { hub: Arc::clone(self), conversation_id, receiver, generation }
    }

    /// Publishes an event live. When `persisted` is false it is also kept as pending
    /// until [`EventHub::persisted`] is called with its `seq` or a later one. `remote`
    /// marks events relayed from another replica.
    pub fn publish(&self, event: Arc<Event>, persisted: bool, remote: bool) {
        let channel = self.channel(event.conversation_id);
        if !persisted {
            let mut pending = lock(&channel.pending);
            if pending.last().is_none_or(|p| p.event.seq < event.seq) {
                pending.push(Pending { event: Arc::clone(&event), remote });
            }
        }
        // No receivers is fine: nobody follows this conversation here right now.
        let conversation_id = event.conversation_id;
        let _ = channel.tx.send(event);
        if persisted {
            self.release(conversation_id);
        }
    }

    /// Drops pending events up to and including `seq`: they are committed.
    pub fn persisted(&self, conversation_id: Uuid, seq: i64) {
        let exists = lock(&self.channels).get(&conversation_id).cloned();
        if let Some(channel) = exists {
            lock(&channel.pending).retain(|p| p.event.seq > seq);
            self.release(conversation_id);
        }
    }

    /// Forgets events relayed from other replicas and tells followers to catch up from
    /// the database: called when the notification connection was re-established and
    /// messages may have been lost.
    pub fn resync(&self) {
        let channels: Vec<Arc<Channel>> = lock(&self.channels).values().cloned().collect();
        for c in channels {
            lock(&c.pending).retain(|p| !p.remote);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    fn pending(&self, conversation_id: Uuid) -> Vec<Arc<Event>> {
        let channel = lock(&self.channels).get(&conversation_id).cloned();
        channel.map(|c| lock(&c.pending).iter().map(|p| Arc::clone(&p.event)).collect()).unwrap_or_default()
    }

    /// Removes a conversation's channel when it has no receiver and nothing pending.
    fn release(&self, conversation_id: Uuid) {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(&conversation_id) {
            let idle = channel.tx.receiver_count() == 0 && lock(&channel.pending).is_empty();
            if idle {
                channels.remove(&conversation_id);
                // Give back the table's memory once most followers have left (after thousands
                // of idle streams closed, see docs/architecture.md#idle-event-streams).
                let len = channels.len();
                if channels.capacity() > 1024 && len * 4 < channels.capacity() {
                    channels.shrink_to(len * 2);
                }
            }
        }
    }

    /// How many conversations have a live channel (for metrics and tests).
    #[must_use]
    pub fn channel_count(&self) -> usize {
        lock(&self.channels).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_table_gives_its_memory_back_when_the_followers_leave() {
        let hub = Arc::new(EventHub::default());
        let followers: Vec<Subscription> = (0..5000).map(|_| hub.subscribe(Uuid::new_v4())).collect();
        let grown = lock(&hub.channels).capacity();
        assert!(grown >= 5000, "{grown}");
        drop(followers);
        assert_eq!(hub.channel_count(), 0);
        let left = lock(&hub.channels).capacity();
        assert!(left < grown / 4, "capacity {left} of {grown} kept after every follower left");
    }
}
