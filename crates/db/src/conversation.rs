//! The `conversation` table: one row per chat thread on a platform (or in the web UI).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::{DbError, DbResult, text_enum, text_enum_opt};

vocabulary! {
    /// How a conversation's replies reach the user: `conversation.reply_mode` (its
    /// `conversation_reply_mode_check` constraint), spelled in lowercase.
    #[derive(Default)]
    pub enum ReplyMode ("lowercase") {
        /// Streamed while the assistant generates (SSE, message edits).
        #[default]
        Stream,
        /// One reply when the turn ends.
        Batch,
    }
}

/// A conversation row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The model the assistant runs with; `None`: the assistant's default (its flags).
    #[serde(default)]
    pub model: Option<String>,
    /// Text appended to the assistant's system prompt; `None`: nothing appended.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// The assistant's permission mode (Claude `--permission-mode`, Codex `--sandbox`);
    /// `None`: the server's default.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// How its replies reach the platform: `stream` or `batch`. Read from `delivery`, its
    /// former name, too.
    #[serde(alias = "delivery")]
    pub reply_mode: ReplyMode,
    /// What the platform needs to answer (chat id, thread ts, comment URL…).
    pub reply_target: serde_json::Value,
    /// While true, messages are stored and queued but no turn starts (`/pause`).
    pub paused: bool,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed (a message arrived, a setting changed).
    pub updated_at: DateTime<Utc>,
    /// Turn state and activity for lists; filled by [`list`] and [`summary`] only,
    /// flattened into the JSON.
    #[serde(flatten, skip_serializing_if = "Option::is_none", skip_deserializing)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub summary: Option<ConversationSummary>,
}

/// A conversation's turn state as [`list`] and [`summary`] report it (the web UI's
/// badges and stream cursor), read in one statement so the fields agree with each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationSummary {
    /// The list's order key: when the conversation was created or one of its turns last
    /// ended (completed, failed or cancelled). Lists are most recently active first.
    pub last_activity_at: DateTime<Utc>,
    /// Status of the turn of the newest user message (`queued`, `running`, `completed`,
    /// `failed`, …); `None` before the first turn.
    pub last_turn_status: Option<crate::turn::TurnStatus>,
    /// Whether a turn is running now.
    pub running: bool,
    /// How many turns wait in the queue.
    pub queued: i64,
    /// The `?after=` to open the events stream with after reading the messages: the seq
    /// just before the running turn's current attempt started, else the last stored
    /// event's seq (0 when none). Messages read before this list plus the events after
    /// this seq show every reply exactly once.
    pub resume_after_seq: i64,
}

impl TryFrom<&Row> for Conversation {
    type Error = DbError;

    fn try_from(row: &Row) -> DbResult<Self> {
        Ok(Self {
            conversation_id: row.try_get("conversation_id")?,
            platform: row.try_get("platform")?,
            external_id: row.try_get("external_id")?,
            owner: row.try_get("owner")?,
            title: row.try_get("title")?,
            assistant: row.try_get("assistant")?,
            cwd: row.try_get("cwd")?,
            model: row.try_get("model")?,
            system_prompt: row.try_get("system_prompt")?,
            permission_mode: row.try_get("permission_mode")?,
            reply_mode: text_enum(row, "reply_mode")?,
            reply_target: row.try_get("reply_target")?,
            paused: row.try_get("paused")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            summary: if row.columns().iter().any(|c| c.name() == "resume_after_seq") {
                Some(ConversationSummary {
                    last_activity_at: row.try_get("last_activity_at")?,
                    last_turn_status: text_enum_opt(row, "last_turn_status")?,
                    running: row.try_get("running")?,
                    queued: row.try_get("queued")?,
                    resume_after_seq: row.try_get("resume_after_seq")?,
                })
            } else {
                None
            },
        })
    }
}

const COLUMNS: &str = "conversation_id, platform, external_id, owner, title, assistant, cwd, \
                       model, system_prompt, permission_mode, reply_mode, reply_target, paused, created_at, updated_at";

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
    pub reply_mode: ReplyMode,
    /// Platform reply data.
    pub reply_target: serde_json::Value,
}

impl NewConversation {
    /// A web conversation of `owner` answered by `assistant`: streamed, in its default
    /// working directory, with no platform reply data.
    #[must_use]
    pub fn web(owner: &str, title: &str, assistant: &str) -> Self {
        Self {
            platform: "web".into(),
            external_id: String::new(),
            owner: owner.into(),
            title: title.into(),
            assistant: assistant.into(),
            cwd: None,
            reply_mode: ReplyMode::Stream,
            reply_target: serde_json::json!({}),
        }
    }
}

/// Inserts a conversation with a new random id.
///
/// # Errors
/// [`DbError::Conflict`] on [`crate::constraint::CONVERSATION_PLATFORM_EXTERNAL_ID`] when
/// the platform thread already has one.
pub async fn create(client: &impl GenericClient, new: &NewConversation) -> DbResult<Conversation> {
    insert(client, new, "").await
}

/// Returns the conversation of a platform thread, creating it when absent; an existing
/// row gets the latest `reply_target`.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn upsert_by_external_id(client: &impl GenericClient, new: &NewConversation) -> DbResult<Conversation> {
    insert(
        client,
        new,
        "on conflict (platform, external_id) do update set reply_target = excluded.reply_target, updated_at = now()",
    )
    .await
}

/// Inserts `new` with a random id (and `external_id` = that id when empty), with an
/// optional `on conflict` clause, and its `conversation_activity` row in the same
/// statement (an existing row keeps its own).
async fn insert(client: &impl GenericClient, new: &NewConversation, on_conflict: &str) -> DbResult<Conversation> {
    let id = Uuid::new_v4();
    let external_id = if new.external_id.is_empty() { id.to_string() } else { new.external_id.clone() };
    let row = client
        .query_one(
            &format!(
                "with c as ( \
                     insert into conversation (conversation_id, platform, external_id, owner, title, \
                     assistant, cwd, reply_mode, reply_target) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     {on_conflict} returning {COLUMNS}), \
                 a as ( \
                     insert into conversation_activity (conversation_id, owner, last_activity_at) \
                     select conversation_id, owner, created_at from c \
                     on conflict (conversation_id) do nothing) \
                 select {COLUMNS} from c"
            ),
            &[
                &id,
                &new.platform,
                &external_id,
                &new.owner,
                &new.title,
                &new.assistant,
                &new.cwd,
                &new.reply_mode.as_ref(),
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

/// Where a page of [`list`] starts: just after this conversation in the list's order
/// (the last row of the previous page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListKey {
    /// Its [`ConversationSummary::last_activity_at`].
    pub last_activity_at: DateTime<Utc>,
    /// Its id (the tie-breaker).
    pub conversation_id: Uuid,
}

impl ListKey {
    /// The key of a listed conversation (`None` when it carries no summary).
    #[must_use]
    pub fn of(c: &Conversation) -> Option<Self> {
        c.summary.as_ref().map(|s| Self { last_activity_at: s.last_activity_at, conversation_id: c.conversation_id })
    }
}

/// A page of conversations, most recently active first (by
/// [`ConversationSummary::last_activity_at`], then id), each with its
/// [`ConversationSummary`]: at most `limit` of them, starting just after `after` (from
/// the start when `None`). `owner = None` lists everyone's.
///
/// Keyset paging: the page is one range of `conversation_activity`'s index (the owner's,
/// or everyone's), and the summaries are computed for the page's rows only, so any page
/// costs what the first one does. Two statements: the page's keys (planned for each
/// call, so the plan sees the real cursor and size), then the page's conversations with
/// their summaries (a cached statement, planned once).
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn list(
    client: &impl GenericClient,
    owner: Option<&str>,
    after: Option<ListKey>,
    limit: i64,
) -> DbResult<Vec<Conversation>> {
    let owner_condition = if owner.is_some() { "owner = $4 and" } else { "$4::text is null and" };
    let page = format!(
        "select conversation_id, last_activity_at from conversation_activity \
         where {owner_condition} (last_activity_at, conversation_id) < ($1, $2) \
         order by last_activity_at desc, conversation_id desc limit $3"
    );
    // The first page starts after a key that sorts after every row.
    let after =
        after.unwrap_or(ListKey { last_activity_at: crate::page::after_any_time(), conversation_id: Uuid::max() });
    let keys = client.query(&page, &[&after.last_activity_at, &after.conversation_id, &limit, &owner]).await?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let ids = keys.iter().map(|r| r.try_get(0)).collect::<Result<Vec<Uuid>, _>>()?;
    let times = keys.iter().map(|r| r.try_get(1)).collect::<Result<Vec<DateTime<Utc>>, _>>()?;
    // The keys read above are the page's (a turn ending meanwhile does not move a row
    // of this page, or the next cursor, along with it).
    let stmt = client
        .prepare_cached(&format!(
            "select {COLUMNS}, p.last_activity_at, {SUMMARY_COLUMNS} \
             from unnest($1::uuid[], $2::timestamptz[]) with ordinality as p (conversation_id, last_activity_at, n) \
             join conversation c using (conversation_id) \
             order by p.n"
        ))
        .await?;
    let rows = client.query(&stmt, &[&ids, &times]).await?;
    rows.iter().map(Conversation::try_from).collect()
}

/// The [`ConversationSummary`] of `conversation c` (all but `last_activity_at`), as
/// correlated subqueries that use the turn and event indexes, so they cost the same for
/// any conversation. For `resume_after_seq`: turns run one at a time, so the running
/// turn's boundary events are the conversation's newest; the newest boundary event is
/// read from the end of the conversation's events (filtering by turn there would make
/// the planner expect a long backward walk and scan the table instead).
const SUMMARY_COLUMNS: &str = "\
    (select t.status from turn t where t.conversation_id = c.conversation_id \
     order by t.user_message_id desc limit 1) as last_turn_status, \
    exists (select 1 from turn t where t.conversation_id = c.conversation_id and t.status = 'running') as running, \
    (select count(*) from turn t where t.conversation_id = c.conversation_id and t.status = 'queued') as queued, \
    coalesce( \
      (select case when b.kind = 'turn_started' and b.turn_id = r.turn_id then b.seq - 1 end from turn r \
       cross join lateral (select e.seq, e.kind, e.turn_id from event e \
         where e.conversation_id = r.conversation_id and e.kind in \
         ('turn_started', 'turn_completed', 'turn_failed', 'turn_cancelled', 'turn_interrupted') \
         order by e.seq desc limit 1) b \
       where r.conversation_id = c.conversation_id and r.status = 'running'), \
      (select max(e.seq) from event e where e.conversation_id = c.conversation_id), \
      0) as resume_after_seq";

/// One conversation's [`ConversationSummary`] (what [`list`] shows beside it).
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn summary(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<ConversationSummary> {
    let stmt = client
        .prepare_cached(&format!(
            "select coalesce(a.last_activity_at, c.updated_at) as last_activity_at, {SUMMARY_COLUMNS} \
             from conversation c left join conversation_activity a using (conversation_id) \
             where c.conversation_id = $1"
        ))
        .await?;
    let row = client.query_opt(&stmt, &[&conversation_id]).await?.ok_or(DbError::not_found("conversation"))?;
    Ok(ConversationSummary {
        last_activity_at: row.try_get("last_activity_at")?,
        last_turn_status: text_enum_opt(&row, "last_turn_status")?,
        running: row.try_get("running")?,
        queued: row.try_get("queued")?,
        resume_after_seq: row.try_get("resume_after_seq")?,
    })
}

/// Where a conversation stands, as the events stream's `snapshot` event reports it to a
/// client that connects without a position (see [`snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    /// The conversation.
    pub conversation_id: Uuid,
    /// The newest turn (of the newest user message); null before the first.
    pub turn_id: Option<Uuid>,
    /// That turn's status (`queued`, `running`, `completed`, `failed`, …); null before
    /// the first turn.
    pub last_turn_status: Option<crate::turn::TurnStatus>,
    /// Whether a turn is running now.
    pub running: bool,
    /// How many turns wait in the queue.
    pub queued: i64,
    /// Whether the conversation is paused (`/pause`): queued turns wait for `/resume`.
    pub paused: bool,
    /// The newest stored message's id (null when there is none): the messages up to it
    /// are `GET …/messages`.
    pub last_message_id: Option<i64>,
    /// The stream continues with the events after this seq: those of the running or most
    /// recent turn's latest attempt (from its `turn_started`), then live ones. It is also
    /// the `snapshot` event's `id`, so a reconnect resumes right there.
    pub replay_after_seq: i64,
    /// When it was read, in Unix microseconds.
    pub ts: i64,
}

/// Reads where the conversation stands (see [`Snapshot`]). Every part is an index
/// lookup; finding the latest `turn_started` reads the events of the latest turn only.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn snapshot(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<Snapshot> {
    let stmt = client
        .prepare_cached(
            "select c.paused, t.turn_id, t.status as last_turn_status, \
                 exists (select 1 from turn r where r.conversation_id = c.conversation_id and r.status = 'running') \
                     as running, \
                 (select count(*) from turn q where q.conversation_id = c.conversation_id and q.status = 'queued') \
                     as queued, \
                 (select max(m.message_id) from message m where m.conversation_id = c.conversation_id) \
                     as last_message_id, \
                 coalesce( \
                   (select e.seq - 1 from event e where e.conversation_id = c.conversation_id \
                    and e.kind = 'turn_started' order by e.seq desc limit 1), \
                   (select max(e.seq) from event e where e.conversation_id = c.conversation_id), \
                   0) as replay_after_seq \
             from conversation c \
             left join lateral (select turn_id, status from turn where conversation_id = c.conversation_id \
                                order by user_message_id desc limit 1) t on true \
             where c.conversation_id = $1",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&conversation_id]).await?.ok_or(DbError::not_found("conversation"))?;
    Ok(Snapshot {
        conversation_id,
        turn_id: row.try_get("turn_id")?,
        last_turn_status: text_enum_opt(&row, "last_turn_status")?,
        running: row.try_get("running")?,
        queued: row.try_get("queued")?,
        paused: row.try_get("paused")?,
        last_message_id: row.try_get("last_message_id")?,
        replay_after_seq: row.try_get("replay_after_seq")?,
        ts: Utc::now().timestamp_micros(),
    })
}

/// Deletes a conversation with its sessions, messages, turns and events, in two
/// statements: run it in a transaction.
///
/// Whatever writes a turn's rows first takes [`lock_shared`] on the conversation (or, for
/// events, locks it in the same statement: [`crate::event::insert_batch`]), so the first
/// statement waits for writers that hold it and no writer starts after it; the second,
/// with a snapshot taken after that wait, removes every event committed meanwhile
/// (events have no foreign key: see migration V4). Taking the conversation's lock first
/// everywhere also keeps this delete and a finishing turn from deadlocking.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id.
pub async fn delete(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<()> {
    let deleted = client.execute("delete from conversation where conversation_id = $1", &[&conversation_id]).await?;
    if deleted == 0 {
        return Err(DbError::not_found("conversation"));
    }
    client.execute("delete from event where conversation_id = $1", &[&conversation_id]).await?;
    Ok(())
}

/// Locks the conversation row against deletion until the transaction ends (`for key
/// share`: other writers are not blocked). Returns false when the conversation does not
/// exist (any more). A transaction that writes a turn's rows calls this first, so that
/// it and [`delete`] take their locks in the same order.
///
/// # Errors
/// [`DbError::Unavailable`] / [`DbError::Other`] only.
pub async fn lock_shared(client: &impl GenericClient, conversation_id: Uuid) -> DbResult<bool> {
    let stmt = client.prepare_cached("select 1 from conversation where conversation_id = $1 for key share").await?;
    Ok(client.query_opt(&stmt, &[&conversation_id]).await?.is_some())
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

/// The settings of a conversation that its owner may change
/// (`PATCH /api/conversations/{id}`, `/model`), as stored: `None` means the server's
/// default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// [`Conversation::title`].
    pub title: String,
    /// [`Conversation::assistant`].
    pub assistant: String,
    /// [`Conversation::model`].
    pub model: Option<String>,
    /// [`Conversation::system_prompt`].
    pub system_prompt: Option<String>,
    /// [`Conversation::permission_mode`].
    pub permission_mode: Option<String>,
    /// [`Conversation::cwd`].
    pub cwd: Option<String>,
}

impl Conversation {
    /// Its changeable settings.
    #[must_use]
    pub fn settings(&self) -> Settings {
        Settings {
            title: self.title.clone(),
            assistant: self.assistant.clone(),
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
            permission_mode: self.permission_mode.clone(),
            cwd: self.cwd.clone(),
        }
    }
}

/// Stores a conversation's settings and returns the conversation. Run it in the
/// transaction that locked the row ([`lock`]) and checked the new values.
///
/// # Errors
/// [`DbError::NotFound`] when there is none with that id; [`DbError::Conflict`] on
/// `conversation_settings_length_check` for an empty or over-long value.
pub async fn set_settings(
    client: &impl GenericClient,
    conversation_id: Uuid,
    settings: &Settings,
) -> DbResult<Conversation> {
    let row = client
        .query_opt(
            &format!(
                "update conversation set title = $2, assistant = $3, model = $4, system_prompt = $5, \
                 permission_mode = $6, cwd = $7, updated_at = now() where conversation_id = $1 returning {COLUMNS}"
            ),
            &[
                &conversation_id,
                &settings.title,
                &settings.assistant,
                &settings.model,
                &settings.system_prompt,
                &settings.permission_mode,
                &settings.cwd,
            ],
        )
        .await?
        .ok_or(DbError::not_found("conversation"))?;
    Conversation::try_from(&row)
}
