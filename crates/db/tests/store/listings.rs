//! Every listing is read from an index a page at a time: on a generated data set (the
//! real schema, upgraded from V4 by the migrations, as a deployment would be), each
//! list's first and deep pages are run with `auto_explain` capturing their actual plans,
//! which must contain no sequential scan and read no more rows of the listed table than
//! the page holds.
//!
//! Speed itself is measured by `parley-bench scale` (docs/performance.md), not here.

use futures::StreamExt;
use parley_db::{conversation, event, message, session, turn};
use parley_test_support::TestDb;
use parley_test_support::dataset::{self, Spec};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

/// Rows a page asks the store for (a page of 50 and one more, as the web API does).
const LIMIT: i64 = 51;

/// A pooled client whose statements' plans arrive as JSON, through `auto_explain`
/// notices.
struct Explaining {
    client: deadpool_postgres::Client,
    notices: mpsc::UnboundedReceiver<String>,
}

/// Opens connections whose notices go to a channel instead of the log.
struct NoticeConnect(mpsc::UnboundedSender<String>);

impl deadpool_postgres::Connect for NoticeConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let (config, tx) = (config.clone(), self.0.clone());
        Box::pin(async move {
            let (client, mut connection) = config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                while let Some(Ok(message)) = messages.next().await {
                    if let AsyncMessage::Notice(notice) = message {
                        let _ = tx.send(notice.message().to_owned());
                    }
                }
            });
            Ok((client, task))
        })
    }
}

impl Explaining {
    async fn connect(db: &TestDb) -> Self {
        let (tx, notices) = mpsc::unbounded_channel();
        let config: tokio_postgres::Config = db.url().parse().expect("url");
        let manager = deadpool_postgres::Manager::from_connect(
            config,
            NoticeConnect(tx),
            deadpool_postgres::ManagerConfig::default(),
        );
        let pool = deadpool_postgres::Pool::builder(manager).max_size(1).build().expect("pool");
        let client = pool.get().await.expect("connect");
        client
            .batch_execute(
                "load 'auto_explain'; set auto_explain.log_min_duration = 0; set auto_explain.log_analyze = on; \
                 set auto_explain.log_format = json; set auto_explain.log_level = notice; \
                 set client_min_messages = notice",
            )
            .await
            .expect("auto_explain (a PostgreSQL contrib module) loads");
        Self { client, notices }
    }

    /// The plans of the statements run since the last call, in order.
    async fn plans(&mut self) -> Vec<Value> {
        // A marker statement: its plan arrives after every earlier one.
        self.client.simple_query("select 'plans end here'").await.expect("marker");
        let mut plans = Vec::new();
        while let Some(text) = self.notices.recv().await {
            let json = text.find('{').map(|i| &text[i..]).expect("a JSON plan");
            let plan: Value = serde_json::from_str(json).expect("plan JSON");
            if plan["Query Text"].as_str().is_some_and(|q| q.contains("plans end here")) {
                return plans;
            }
            plans.push(plan);
        }
        panic!("the notice stream ended");
    }
}

/// Every node of a plan, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    for child in plan["Plans"].as_array().into_iter().flatten() {
        out.extend(nodes(child));
    }
    out
}

/// Asserts that `plans` (one statement's, or several runs of it) scan no table
/// sequentially and read at most `max_rows` rows of each of `tables` (and the one row
/// after them).
fn assert_indexed(what: &str, plans: &[Value], tables: &[&str], max_rows: i64) {
    assert!(!plans.is_empty(), "{what}: no plan captured");
    for plan in plans {
        for node in nodes(&plan["Plan"]) {
            let kind = node["Node Type"].as_str().unwrap_or_default();
            assert_ne!(kind, "Seq Scan", "{what}: sequential scan of {}: {plan:#}", node["Relation Name"]);
            let Some(table) = node["Relation Name"].as_str() else { continue };
            if !tables.contains(&table) {
                continue;
            }
            let count = |k: &str| node[k].as_f64().unwrap_or(0.0);
            let loops = count("Actual Loops").max(1.0);
            let read =
                (count("Actual Rows") + count("Rows Removed by Filter") + count("Rows Removed by Index Recheck"))
                    * loops;
            // One more than the page: an incremental sort reads the row after the last
            // group to know that the group ended.
            #[allow(clippy::cast_precision_loss)]
            let max = (max_rows + 1) as f64;
            assert!(read <= max, "{what}: {kind} read {read} rows of {table} (a page is {max_rows}): {plan:#}");
        }
    }
}

/// Runs `list` three times, returning those runs' plans and the rows. (Listings are not
/// cached statements: each run is planned with its own parameters.)
async fn explained<T>(
    x: &mut Explaining,
    list: impl AsyncFn(&deadpool_postgres::Client) -> parley_db::DbResult<Vec<T>>,
) -> (Vec<Value>, Vec<T>) {
    x.plans().await; // what ran before is not this listing
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows = list(&x.client).await.expect("list");
    }
    (x.plans().await, rows)
}

/// A data set of `conversations` × 3 turns in twenty owners' hands, upgraded from V4 to
/// the latest schema, with turns in every listed status.
async fn generated(conversations: i64) -> TestDb {
    let db = TestDb::empty().await;
    parley_db::migrate::run_to(&db.config, 4).await.expect("migrate to V4");
    let (mut client, connection) = tokio_postgres::connect(&db.url(), NoTls).await.expect("connect");
    let connection = tokio::spawn(connection);
    // Twenty owners: one owner's rows are a small part of the whole, as with real users.
    let mut owners: Vec<String> = vec!["alice".into(), "bob".into()];
    owners.extend((3..=20).map(|i| format!("user-{i}")));
    let spec = Spec { conversations, turns: 3, text_events: 1, owners };
    let made = dataset::generate(&mut client, &spec).await.expect("generate");
    let n = conversations;
    assert_eq!(made.rows, [n, n + n / 9, 6 * n, 3 * n, 9 * n], "conversations, sessions, messages, turns, events");
    parley_db::migrate::run(&db.config).await.expect("migrate to the latest schema");
    // Turns in every listed status: 300 queued, 40 running (one per conversation), 200
    // interrupted, besides the generated failed ones.
    client
        .batch_execute(
            "update turn set status = 'queued', finished_at = null where turn_id in \
                 (select turn_id from turn where status = 'completed' order by user_message_id limit 300); \
             update turn set status = 'running' where turn_id in \
                 (select distinct on (conversation_id) turn_id from turn where status = 'completed' \
                  order by conversation_id, user_message_id desc limit 40); \
             update turn set status = 'interrupted' where turn_id in \
                 (select turn_id from turn where status = 'completed' order by user_message_id desc limit 200)",
        )
        .await
        .expect("statuses");
    client.batch_execute("vacuum analyze").await.expect("vacuum");
    drop(client);
    let _ = connection.await;
    db
}

#[tokio::test]
async fn every_listing_reads_one_index_range_at_any_depth() {
    // Large enough that the planner, left to itself, prefers an index to a scan for a
    // page (on a few hundred rows a scan is cheaper, and it would rightly take it).
    let db = generated(30_000).await;
    let mut x = Explaining::connect(&db).await;

    // Conversations, everyone's and one owner's: the first page and the last one.
    for owner in [None, Some("alice")] {
        let (plans, first) = explained(&mut x, async |c| conversation::list(c, owner, None, LIMIT).await).await;
        assert_eq!(first.len(), 51);
        assert!(first.iter().all(|c| owner.is_none_or(|o| c.owner == o)));
        assert_indexed(
            &format!("conversations of {owner:?}, first page"),
            &plans,
            &["conversation_activity", "conversation"],
            LIMIT,
        );
        let row = x
            .client
            .query_one(
                "select last_activity_at, conversation_id from conversation_activity where $1::text is null or owner = $1 \
                 order by last_activity_at, conversation_id offset 30 limit 1",
                &[&owner],
            )
            .await
            .expect("a deep key");
        let key = conversation::ListKey { last_activity_at: row.get(0), conversation_id: row.get(1) };
        let (plans, last) = explained(&mut x, async |c| conversation::list(c, owner, Some(key), LIMIT).await).await;
        assert_eq!(last.len(), 30, "the 30 oldest follow the 31st oldest");
        assert_indexed(
            &format!("conversations of {owner:?}, last page"),
            &plans,
            &["conversation_activity", "conversation"],
            LIMIT,
        );
    }

    // Sessions by status, everyone's and one owner's, first and deep pages, and one
    // conversation's.
    let statuses = [
        session::StatusFilter::All,
        session::StatusFilter::Active,
        session::StatusFilter::Ended,
        session::StatusFilter::Failed,
    ];
    for status in statuses {
        for owner in [None, Some("bob")] {
            let what = format!("sessions {status:?} of {owner:?}");
            let (plans, first) =
                explained(&mut x, async |c| session::list(c, status, None, owner, None, LIMIT).await).await;
            assert!(!first.is_empty(), "{what}");
            assert_indexed(&format!("{what}, first page"), &plans, &["session"], LIMIT);
            let deep = first.get(first.len() / 2).map(session::ListKey::of);
            let (plans, _) =
                explained(&mut x, async |c| session::list(c, status, None, owner, deep, LIMIT).await).await;
            assert_indexed(&format!("{what}, next page"), &plans, &["session"], LIMIT);
        }
    }
    let one: Uuid =
        x.client.query_one("select conversation_id from conversation limit 1", &[]).await.expect("id").get(0);
    let all = session::StatusFilter::All;
    let (plans, _) = explained(&mut x, async |c| session::list(c, all, Some(one), None, None, LIMIT).await).await;
    assert_indexed("one conversation's sessions", &plans, &["session"], LIMIT);

    // Turns by status across conversations: the first page and the last one.
    for status in turn::LISTED_STATUSES {
        let what = format!("{status} turns");
        let (plans, first) = explained(&mut x, async |c| turn::list_by_status(c, status, None, LIMIT).await).await;
        assert!(!first.is_empty(), "{what}");
        assert!(first.iter().all(|t| t.status == status), "{what}");
        assert_indexed(&format!("{what}, first page"), &plans, &["turn"], LIMIT);
        let row = x
            .client
            .query_one(
                "select user_message_id, turn_id from turn where status = $1 order by user_message_id, turn_id \
                 offset 10 limit 1",
                &[&status.as_ref()],
            )
            .await
            .expect("a deep key");
        let key = turn::ListKey { user_message_id: row.get(0), turn_id: row.get(1) };
        let (plans, last) = explained(&mut x, async |c| turn::list_by_status(c, status, Some(key), LIMIT).await).await;
        assert_eq!(last.len(), 10, "{what}: the 10 oldest follow the 11th oldest");
        assert_indexed(&format!("{what}, last page"), &plans, &["turn"], LIMIT);
    }

    // One session's turns, and its usage totals (which read only its conversation's six
    // messages).
    let sid: Uuid = x
        .client
        .query_one("select session_id from session where conversation_id = $1 and active", &[&one])
        .await
        .expect("session")
        .get(0);
    let (plans, turns) = explained(&mut x, async |c| turn::list_for_session(c, sid, None, LIMIT).await).await;
    assert_eq!(turns.len(), 3);
    assert_indexed("a session's turns", &plans, &["turn"], LIMIT);
    let (plans, _) = explained(&mut x, async |c| session::usage_totals(c, sid).await.map(|u| vec![u])).await;
    assert_indexed("a session's usage totals", &plans, &["message"], 6);

    // A conversation's messages and events, from the middle of its log.
    let (plans, _) = explained(&mut x, async |c| message::list(c, one, 3, LIMIT).await).await;
    assert_indexed("messages", &plans, &["message"], LIMIT);
    let (plans, _) = explained(&mut x, async |c| event::list_after(c, one, 1 << 20, LIMIT).await).await;
    assert_indexed("events", &plans, &["event"], LIMIT);

    // The history a rebuilt prompt reads: four outlines, then those four messages' excerpts,
    // in a conversation long enough that reading all of it would show (on six messages a
    // bitmap scan of them all is as cheap as the index range, and the planner may take it).
    x.client
        .execute(
            "insert into message (conversation_id, role, content) \
             select $1, case when i % 2 = 0 then 'user' else 'assistant' end, 'message ' || i \
             from generate_series(1, 400) i",
            &[&one],
        )
        .await
        .expect("a long conversation");
    x.client.batch_execute("analyze message").await.expect("analyze");
    let (plans, outline) = explained(&mut x, async |c| message::history_outline(c, one, 0, i64::MAX, 4).await).await;
    assert_eq!(outline.len(), 4);
    assert_indexed("history outline", &plans, &["message"], 4);
    let requests: Vec<message::ExcerptRequest> =
        outline.iter().map(|o| message::ExcerptRequest { message_id: o.message_id, head: 10, tail: 10 }).collect();
    let (plans, excerpts) = explained(&mut x, async |c| message::history_excerpts(c, &requests).await).await;
    assert_eq!(excerpts.len(), 4);
    assert_indexed("history excerpts", &plans, &["message"], 4);
}

#[tokio::test]
async fn the_upgrade_to_indexed_listings_keeps_every_row_listable() {
    let db = generated(3_000).await;
    let client = db.pool.get().await.expect("client");
    // Every conversation has its activity row, with its owner; every session its owner.
    let missing: i64 = client
        .query_one(
            "select (select count(*) from conversation c left join conversation_activity a using (conversation_id) \
                     where a.owner is distinct from c.owner) \
                  + (select count(*) from session s join conversation c using (conversation_id) \
                     where s.owner <> c.owner)",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(missing, 0);
    // Walking alice's conversations page by page visits each once, newest first.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = conversation::list(&client, Some("alice"), after, 101).await.expect("page");
        after = page.last().and_then(conversation::ListKey::of);
        let done = page.len() < 101;
        seen.extend(page.into_iter().map(|c| (c.summary.expect("summary").last_activity_at, c.conversation_id)));
        if done {
            break;
        }
    }
    assert_eq!(seen.len(), 150);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "strictly newest first, no repeat");
}

#[tokio::test]
async fn a_long_conversation_is_summarised_from_its_newest_rows() {
    // One conversation holding the whole table: the planner knows every row is that
    // conversation's, and must still read only its newest ones.
    let db = TestDb::empty().await;
    parley_db::migrate::run_to(&db.config, 4).await.expect("migrate to V4");
    let (mut client, connection) = tokio_postgres::connect(&db.url(), NoTls).await.expect("connect");
    let connection = tokio::spawn(connection);
    let made = dataset::generate(&mut client, &Spec::new(1, 10_000)).await.expect("generate");
    parley_db::migrate::run(&db.config).await.expect("migrate to the latest schema");
    client
        .batch_execute(
            "update turn set status = 'running', finished_at = null \
             where turn_id = (select turn_id from turn order by user_message_id desc limit 1)",
        )
        .await
        .expect("a running turn");
    client.batch_execute("vacuum analyze").await.expect("vacuum");
    drop(client);
    let _ = connection.await;
    let one = made.conversations[0];
    let mut x = Explaining::connect(&db).await;
    let (list, rows) = explained(&mut x, async |c| conversation::list(c, None, None, LIMIT).await).await;
    assert_eq!(rows[0].summary.as_ref().map(|s| s.running), Some(true));
    let (summary, _) = explained(&mut x, async |c| conversation::summary(c, one).await.map(|s| vec![s])).await;
    let (snapshot, _) = explained(&mut x, async |c| conversation::snapshot(c, one).await.map(|s| vec![s])).await;
    for (what, plans) in [("list", list), ("summary", summary), ("snapshot", snapshot)] {
        // The one-row tables may be scanned; the conversation's turns, messages and
        // events are read from their newest end: at most the latest turn's four events.
        for plan in &plans {
            for node in nodes(&plan["Plan"]) {
                let table = node["Relation Name"].as_str().unwrap_or_default();
                if ["turn", "message", "event"].contains(&table) {
                    assert_ne!(node["Node Type"], "Seq Scan", "{what} scans {table}: {plan:#}");
                    let rows = node["Actual Rows"].as_f64().unwrap_or(0.0)
                        + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
                    assert!(rows <= 4.0, "{what} read {rows} rows of {table}: {plan:#}");
                }
            }
        }
    }
}
