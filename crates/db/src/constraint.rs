//! The names of the constraints and unique indexes that callers branch on, as declared in
//! `migrations/*.sql`: compare a [`crate::DbError::Conflict`] with
//! [`crate::DbError::is_conflict_on`] and one of these, never with a string literal.
//!
//! A test (`crates/db/tests/store/constraint.rs`) checks that each name exists in a
//! migrated database, so a migration that renames one fails there rather than silently
//! turning a handled conflict into an internal error.

/// Partial unique index: at most one `running` turn per conversation
/// (`docs/architecture.md#one-running-turn`). A lost claim race conflicts on it.
pub const TURN_ONE_RUNNING: &str = "turn_one_running_per_conversation";

/// Partial unique index: at most one active session per conversation. Two workers
/// starting a session at once conflict on it; the loser reads the winner's.
pub const SESSION_ONE_ACTIVE: &str = "session_one_active_per_conversation";

/// Primary key `(platform, idempotency_key)` of `inbound_delivery`: an idempotency key (webhook
/// delivery ID or `Idempotency-Key`) recorded twice.
pub const INBOUND_DELIVERY_PKEY: &str = "inbound_delivery_pkey";

/// Unique `(platform, external_id)` of `conversation`: a platform thread already has its
/// conversation.
pub const CONVERSATION_PLATFORM_EXTERNAL_ID: &str = "conversation_platform_external_id_key";

/// The foreign keys from a conversation's rows to `conversation`: a write that conflicts
/// on one of them found its conversation deleted meanwhile.
pub const CONVERSATION_REFERENCES: [&str; 5] = [
    "session_conversation_id_fkey",
    "message_conversation_id_fkey",
    "turn_conversation_id_fkey",
    "inbound_delivery_conversation_id_fkey",
    "conversation_activity_conversation_id_fkey",
];

/// Every name above, for the test that checks them against the database.
pub const ALL: [&str; 9] = [
    TURN_ONE_RUNNING,
    SESSION_ONE_ACTIVE,
    INBOUND_DELIVERY_PKEY,
    CONVERSATION_PLATFORM_EXTERNAL_ID,
    CONVERSATION_REFERENCES[0],
    CONVERSATION_REFERENCES[1],
    CONVERSATION_REFERENCES[2],
    CONVERSATION_REFERENCES[3],
    CONVERSATION_REFERENCES[4],
];
