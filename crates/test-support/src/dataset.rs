//! Large data sets generated quickly in Parley's own schema, for the scale benchmark
//! (`parley-bench scale`) and the tests that check listings stay index-served.
//!
//! [`generate`] writes conversations with their sessions, messages, turns and events
//! with a few `insert … select … generate_series` statements in one transaction, as
//! Parley itself would have stored them: a turn answers its user message with an
//! assistant message, and its events are `turn_started`, `text` × N and
//! `turn_completed` (or `turn_failed`), numbered in an event block of their own.
//!
//! It writes the tables as migration V4 left them, so it runs on a database migrated
//! to V4 ([`parley_db::migrate::run_to`]); the later migrations then fill what they add
//! (the upgrade path of a real deployment), and the same data serves servers of either
//! schema. Foreign keys are not checked while loading (`session_replication_role =
//! replica`, which needs a superuser): the rows are consistent by construction.

use std::time::Duration;

use tokio_postgres::Client;
use uuid::Uuid;

/// What [`generate`] creates.
#[derive(Debug, Clone)]
pub struct Spec {
    /// How many conversations (`web`, assistant `demo`).
    pub conversations: i64,
    /// Turns per conversation, each a user message and its answer.
    pub turns: i64,
    /// `text` events per turn (besides its `turn_started` and final event).
    pub text_events: i64,
    /// Owners, assigned round-robin: conversation *i* belongs to `owners[i % len]`.
    pub owners: Vec<String>,
}

impl Spec {
    /// `conversations` × `turns`, two text events per turn, all owned by `local` (the
    /// principal of a server with `--auth off`).
    #[must_use]
    pub fn new(conversations: i64, turns: i64) -> Self {
        Self { conversations, turns, text_events: 2, owners: vec!["local".into()] }
    }
}

/// What [`generate`] created, for picking request targets.
///
/// Shape of the data: conversation *i* (1-based) was last active after conversation
/// *i − 1*; every 9th also has an ended session before its active one; in every 49th
/// the last turn failed (its session has `last_error`).
#[derive(Debug, Clone)]
pub struct Generated {
    /// Conversation ids, oldest first (index *i − 1*).
    pub conversations: Vec<Uuid>,
    /// Rows written: conversations, sessions, messages, turns, events.
    pub rows: [i64; 5],
    /// How long it took.
    pub took: Duration,
}

/// Generates `spec` into an empty database migrated to V4 (conversation ids are
/// `md5('c' || i)`, event numbers start at block 1), in one transaction, and returns
/// what it made. Run `vacuum analyze` afterwards: the planner needs statistics.
///
/// # Errors
/// When the rows clash with existing ones, the schema lacks V4's tables or columns, or
/// the role may not set `session_replication_role`.
pub async fn generate(client: &mut Client, spec: &Spec) -> Result<Generated, tokio_postgres::Error> {
    let started = std::time::Instant::now();
    let tx = client.transaction().await?;
    tx.batch_execute(
        "set local session_replication_role = replica; set local synchronous_commit = off; \
         set local work_mem = '256MB'",
    )
    .await?;
    let (n, t, x) = (spec.conversations, spec.turns, spec.text_events);
    // One row per turn, with everything the inserts below derive from it. Turn g (global,
    // 1-based) of conversation i happened at t0 + g × 100 ms; its messages are 2g − 1
    // (user) and 2g (assistant); its events use event block g.
    tx.execute(
        "create temp table gen_turn on commit drop as \
         select i, k, (i - 1) * $2::bigint + k as g, \
                md5('c' || i)::uuid as conversation_id, md5('s' || i)::uuid as session_id, \
                md5('t' || ((i - 1) * $2::bigint + k))::uuid as turn_id, \
                now() - make_interval(secs => ($1::bigint * $2::bigint + 10) * 0.1) \
                    + make_interval(secs => ((i - 1) * $2::bigint + k) * 0.1) as at, \
                (k = $2::bigint and i % 49 = 0) as failed \
         from generate_series(1, $1::bigint) i, generate_series(1, $2::bigint) k",
        &[&n, &t],
    )
    .await?;
    let conversation_rows = tx
        .execute(
            "insert into conversation (conversation_id, platform, external_id, owner, title, assistant, \
                                       created_at, updated_at) \
             select conversation_id, 'web', conversation_id::text, ($1::text[])[1 + i % cardinality($1::text[])], \
                    'Generated conversation ' || i, 'demo', min(at) - interval '1 second', max(at) \
             from gen_turn group by i, conversation_id",
            &[&spec.owners],
        )
        .await?;
    let ended = tx
        .execute(
            "insert into session (session_id, conversation_id, assistant, assistant_session_id, active, \
                                  transition_reason, ended_reason, started_at, ended_at) \
             select md5('e' || i)::uuid, conversation_id, 'demo', null, false, 'first-message', 'reset-requested', \
                    created_at - interval '1 second', created_at \
             from (select i, conversation_id, min(at) - interval '1 second' as created_at from gen_turn \
                   where i % 9 = 0 group by i, conversation_id) c",
            &[],
        )
        .await?;
    let active = tx
        .execute(
            "insert into session (session_id, conversation_id, assistant, assistant_session_id, active, \
                                  parent_session_id, transition_reason, last_error, started_at) \
             select session_id, conversation_id, 'demo', 'demo-' || i, true, \
                    case when i % 9 = 0 then md5('e' || i)::uuid end, \
                    case when i % 9 = 0 then 'reset-requested' else 'first-message' end, \
                    case when i % 49 = 0 then 'demo assistant failed: [demo:fail] in the message' end, \
                    min(at) - interval '1 second' \
             from gen_turn group by i, conversation_id, session_id",
            &[],
        )
        .await?;
    let messages = tx
        .execute(
            "insert into message (message_id, conversation_id, turn_id, role, content, metadata, created_at) \
             overriding system value \
             select 2 * g - 1, conversation_id, turn_id, 'user', \
                    'Message ' || k || ' of generated conversation ' || i || ': please answer briefly.', '{}', at \
             from gen_turn \
             union all \
             select 2 * g, conversation_id, turn_id, 'assistant', \
                    'Demo reply to «Message ' || k || ' of generated conversation ' || i || '»: a short answer.', \
                    case when failed then '{\"incomplete\": true, \"error\": \"demo assistant failed\"}'::jsonb \
                         else '{\"usage\": {\"input_tokens\": 12, \"output_tokens\": 9}}'::jsonb end, \
                    at + interval '50 milliseconds' \
             from gen_turn",
            &[],
        )
        .await?;
    let turns = tx
        .execute(
            "insert into turn (turn_id, conversation_id, session_id, user_message_id, status, attempt, error, \
                               worker_id, created_at, started_at, finished_at) \
             select turn_id, conversation_id, session_id, 2 * g - 1, \
                    case when failed then 'failed' else 'completed' end, 1, \
                    case when failed then 'demo assistant failed: [demo:fail] in the message' end, \
                    'generated', at, at + interval '1 millisecond', at + interval '50 milliseconds' \
             from gen_turn",
            &[],
        )
        .await?;
    let events = tx
        .execute(
            "insert into event (conversation_id, seq, turn_id, kind, data, created_at) \
             select conversation_id, (g << 20) + j, turn_id, \
                    case when j = 0 then 'turn_started' when j <= $1::bigint then 'text' \
                         when failed then 'turn_failed' else 'turn_completed' end, \
                    case when j = 0 then jsonb_build_object('turn_id', turn_id, 'attempt', 1, \
                                             'session_id', session_id, 'message_id', 2 * g - 1) \
                         when j <= $1::bigint then jsonb_build_object('turn_id', turn_id, \
                                             'text', 'Demo reply, part ' || j || ' of turn ' || k || '. ') \
                         when failed then jsonb_build_object('turn_id', turn_id, \
                                             'error', 'demo assistant failed', 'message_id', 2 * g) \
                         else jsonb_build_object('turn_id', turn_id, 'message_id', 2 * g, \
                                             'usage', jsonb_build_object('input_tokens', 12, 'output_tokens', 9)) \
                    end || jsonb_build_object('ts', (extract(epoch from at) * 1000000)::bigint + j), \
                    at + make_interval(secs => j * 0.001) \
             from gen_turn, generate_series(0, $1::bigint + 1) j",
            &[&x],
        )
        .await?;
    tx.batch_execute(
        "select setval(pg_get_serial_sequence('message', 'message_id'), \
                       greatest((select max(message_id) from message), 1)); \
         select setval('event_block', coalesce((select max(seq) >> 20 from event), 0) + 1, false)",
    )
    .await?;
    let ids = tx.query("select conversation_id from conversation order by updated_at, conversation_id", &[]).await?;
    let conversations = ids.iter().map(|r| r.try_get(0)).collect::<Result<Vec<Uuid>, _>>()?;
    tx.commit().await?;
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(Generated {
        conversations,
        rows: [as_i64(conversation_rows), as_i64(ended + active), as_i64(messages), as_i64(turns), as_i64(events)],
        took: started.elapsed(),
    })
}
