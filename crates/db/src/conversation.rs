//! The `conversation` table: one row per chat thread on a platform (or in the web UI).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{DbError, DbResult};

/// How a conversation's replies reach the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Streamed while the assistant generates (SSE, message edits).
    #[default]
    Stream,
    /// One reply when the turn ends.
    Batch,
}

impl Delivery {
    /// The value stored in `conversation.delivery`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Batch => "batch",
        }
    }

    /// Parses `stream` or `batch`; anything else is `None`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stream" => Some(Self::Stream),
            "batch" => Some(Self::Batch),
            _ => None,
        }
    }
}

/// A conversation row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversation {
    /// Primary key.
    pub conversation_id: Uuid,
    /// Where it lives: `web`, `telegram`, `slack`, `discord`, `github`, `generic`.
    pub platform: String,
    /// The platform's identifier of the thread (Telegram chat[/topic], Slack
    /// channel/thread_ts, GitHub owner/repo#n, a uuid for the web). Unique per platform.
    pub external_id: String,
    /// The principal allowed to see it.
    pub owner: String,
    /// A human title; may be empty.
    pub title: String,
    /// Which assistant answers (`demo`, `claude`, `codex`, …).
    pub assistant: String,
    /// The assistant's working directory, when set.
    pub cwd: Option<String>,
    /// Stream or batch delivery.
    pub delivery: Delivery,
    /// What the platform needs to answer (chat id, thread ts, comment URL…).
    pub reply_target: serde_json::Value,
    /// While true, messages are stored and queued but no turn starts (`/pause`).
    pub paused: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed (a message arrived, a setting changed).
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<&Row> for Conversation {
    type Error = DbError;

    fn try_from(row: &Row) -> DbResult<Self> {
        let delivery: String = row.try_get("delivery")?;
        Ok(Self {
            conversation_id: row.try_get("conversation_id")?,
            platform: row.try_get("platform")?,
            external_id: row.try_get("external_id")?,
            owner: row.try_get("owner")?,
            title: row.try_get("title")?,
            assistant: row.try_get("assistant")?,
            cwd: row.try_get("cwd")?,
            delivery: Delivery::parse(&delivery).unwrap_or_default(),
            reply_target: row.try_get("reply_target")?,
            paused: row.try_get("paused")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

const COLUMNS: &str = "conversation_id, platform, external_id, owner, title, assistant, cwd, \
                       delivery, reply_target, paused, created_at, updated_at";

/// The fields of a conversation to create.
#[derive(Debug, Clone)]
pub struct NewConversation {
    /// Where it lives (see [`Conversation::platform`]).
    pub platform: String,
    /// The platform's thread identifier; for the web, the new conversation's id.
    pub external_id: String,
    /// The owning principal.
    pub owner: String,
    /// A human title.
    pub title: String,
    /// The assistant's name.
    pub assistant: String,
    /// The working directory.
    pub cwd: Option<String>,
    /// Stream or batch.
    pub delivery: Delivery,
    /// Platform reply data.
    pub reply_target: serde_json::Value,
}

/// Inserts a conversation with a new random id.
///
/// # Errors
/// [`DbError::Conflict`] on `conversation_platform_external_id_key` when the platform
/// thread already has one.
pub async fn create(client: &impl GenericClient, new: &NewConversation) -> DbResult<Conversation> {
    let id = Uuid::new_v4();
    let external_id = if new.external_id.is_empty() { id.to_string() } else { new.external_id.clone() };
    let row = client
        .query_one(
            &format!(
                "insert into conversation (conversation_id, platform, external_id, owner, title, \
                 assistant, cwd, delivery, reply_target) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 returning {COLUMNS}"
            ),
            &[
                &id,
                &new.platform,
                &external_id,
                &new.owner,
                &new.title,
                &new.assistant,
                &new.cwd,
                &new.delivery.as_str(),
                &new.reply_target,
            ],
        )
        .await?;
    Conversation::try_from(&row)
}

/// Returns the conversation of a platform thread, creating it when absent; an existing
/// row gets the latest `reply_target`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn upsert_by_external_id(client: &impl GenericClient, new: &NewConversation) -> DbResult<Conversation> {
    let row = client
        .query_one(
            &format!(
                "insert into conversation (conversation_id, platform, external_id, owner, title, \
                 assistant, cwd, delivery, reply_target) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 on conflict (platform, external_id) do update set reply_target = excluded.reply_target, \
                 updated_at = now() returning {COLUMNS}"
            ),
            &[
                &Uuid::new_v4(),
                &new.platform,
                &new.external_id,
                &new.owner,
                &new.title,
                &new.assistant,
                &new.cwd,
                &new.delivery.as_str(),
                &new.reply_target,
            ],
        )
        .await?;
    Conversation::try_from(&row)
}

/// Fetches one conversation.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn get(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Conversation> {
    let stmt = client.prepare_cached(&format!("select {COLUMNS} from conversation where conversation_id = $1")).await?;
    let row = client.query_opt(&stmt, &[&conversation_id]).await?.ok_or(DbError::not_found("conversation"))?;
    Conversation::try_from(&row)
}

/// Marks the conversation updated now and locks its row until the transaction ends,
/// returning it. Serialises the ingests and commands of one conversation, so message
/// ids are committed in the order they were assigned.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn lock(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Conversation> {
    let stmt = client
        .prepare_cached(&format!(
            "update conversation set updated_at = now() where conversation_id = $1 returning {COLUMNS}"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&conversation_id]).await?.ok_or(DbError::not_found("conversation"))?;
    Conversation::try_from(&row)
}

/// Lists conversations, most recently updated first. `owner = None` lists everyone's.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list(
    client: &impl GenericClient,
    owner: Option<&str>,
    limit: i64,
    offset: i64,
) -> DbResult<Vec<Conversation>> {
    let rows = client
        .query(
            &format!(
                "select {COLUMNS} from conversation where ($1::text is null or owner = $1) \
                 order by updated_at desc, conversation_id limit $2 offset $3"
            ),
            &[&owner, &limit, &offset],
        )
        .await?;
    rows.iter().map(Conversation::try_from).collect()
}

/// Deletes a conversation with its sessions, messages, turns and events.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn delete(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<()> {
    let n = client.execute("delete from conversation where conversation_id = $1", &[&conversation_id]).await?;
    if n == 0 {
        return Err(DbError::not_found("conversation"));
    }
    Ok(())
}

/// Sets the paused flag. Returns false when it already had that value.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn set_paused(client: &impl GenericClient, conversation_id: Uuid, paused: bool) -> DbResult<bool> {
    let row = client
        .query_opt(
            "update conversation c set paused = $2, updated_at = now() \
             from (select paused from conversation where conversation_id = $1 for update) old \
             where c.conversation_id = $1 returning old.paused",
            &[&conversation_id, &paused],
        )
        .await?
        .ok_or(DbError::not_found("conversation"))?;
    let old: bool = row.try_get(0)?;
    Ok(old != paused)
}
