//! The in-process event hub: live delivery of a conversation's events to followers
//! (SSE clients), with no gap and no duplicate against the database log.
//!
//! A worker publishes each event live *before* it is persisted (so relay latency is not
//! a commit), and keeps it in the conversation's `pending` list until its batch is
//! committed. A follower subscribes first, then reads `pending`, then the database,
//! and merges by `seq`: an event published before the subscription is in `pending` or
//! already committed; one published after arrives on the channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use parley_db::event::Event;
use tokio::sync::broadcast;
use uuid::Uuid;

/// How many live events a slow follower may fall behind before it resynchronises from
/// the database.
const CHANNEL_CAPACITY: usize = 256;

#[derive(Debug)]
struct Channel {
    tx: broadcast::Sender<Arc<Event>>,
    pending: Mutex<Vec<Arc<Event>>>,
}

/// Per-conversation broadcast channels and not-yet-persisted events.
#[derive(Debug, Default)]
pub struct EventHub {
    channels: Mutex<HashMap<Uuid, Arc<Channel>>>,
}

/// A live subscription to one conversation's events. Dropping it releases the
/// conversation's channel when nobody else uses it.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<EventHub>,
    conversation_id: Uuid,
    /// Live events published after the subscription started.
    pub receiver: broadcast::Receiver<Arc<Event>>,
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

impl EventHub {
    fn channel(&self, conversation_id: Uuid) -> Arc<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
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
        Subscription { hub: Arc::clone(self), conversation_id, receiver }
    }

    /// Publishes an event live. When `persisted` is false it is also kept as pending
    /// until [`EventHub::persisted`] is called with its `seq` or a later one.
    pub fn publish(&self, event: Arc<Event>, persisted: bool) {
        let channel = self.channel(event.conversation_id);
        if !persisted {
            channel.pending.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&event));
        }
        // No receivers is fine: nobody follows this conversation right now.
        let _ = channel.tx.send(event);
    }

    /// Drops pending events up to and including `seq`: they are committed.
    pub fn persisted(&self, conversation_id: Uuid, seq: i64) {
        let channel = self.channel(conversation_id);
        channel.pending.lock().unwrap_or_else(PoisonError::into_inner).retain(|e| e.seq > seq);
        self.release(conversation_id);
    }

    fn pending(&self, conversation_id: Uuid) -> Vec<Arc<Event>> {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels
            .get(&conversation_id)
            .map(|c| c.pending.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// Removes a conversation's channel when it has no receiver and nothing pending.
    fn release(&self, conversation_id: Uuid) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = channels.get(&conversation_id) {
            let idle = channel.tx.receiver_count() == 0
                && channel.pending.lock().unwrap_or_else(PoisonError::into_inner).is_empty();
            if idle {
                channels.remove(&conversation_id);
            }
        }
    }

    /// How many conversations have a live channel (for metrics and tests).
    #[must_use]
    pub fn channel_count(&self) -> usize {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}
