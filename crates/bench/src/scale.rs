//! `parley-bench scale`: how each web API operation's latency grows with the data.
//!
//! For each level — N conversations of `--turns-each` turns, then one conversation of T
//! turns — a scratch database is migrated to V4, filled by
//! [`parley_test_support::dataset::generate`] (a few `insert … select generate_series`
//! statements) and vacuumed; then each server binary (`--baseline-bin` first, when given,
//! then `--parley-bin`) is started on it in turn — a newer one applies its own
//! migrations, as an upgrade would — and every operation is timed one request at a
//! time. The tables give p50 / p99 per operation and level, plus the server's resident
//! memory during a full replay of the event log.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use parley_test_support::dataset::{self, Spec};
use parley_test_support::process::Parley;
use serde_json::Value;
use uuid::Uuid;

use crate::server::{self, ScratchDb, SpawnOptions, Target};
use crate::stats::{Samples, fmt_ms};

/// Options of `parley-bench scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Conversation counts of the many-conversations levels (each of `--turns-each` turns).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    conversations: Vec<i64>,
    /// Turns of each conversation at the many-conversations levels.
    #[arg(long, default_value_t = 10)]
    turns_each: i64,
    /// Turn counts of the one-conversation levels.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,50000")]
    turns: Vec<i64>,
    /// `text` events per generated turn (besides `turn_started` and the final event).
    #[arg(long, default_value_t = 2)]
    text_events: i64,
    /// Timed requests per operation (fewer when `--max-secs` runs out first; at least 5).
    #[arg(long, default_value_t = 40)]
    samples: usize,
    /// Seconds per operation at most, once 5 requests are timed.
    #[arg(long, default_value_t = 8)]
    max_secs: u64,
    /// The server under test (default: `parley` next to this executable).
    #[arg(long)]
    parley_bin: Option<PathBuf>,
    /// Another server to measure on the same data first, e.g. the previous release (it
    /// must understand a V4 database; it is shown as "baseline").
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// PostgreSQL server where the scratch database is created (default
    /// `PARLEY_TEST_DATABASE_URL`, then `postgres://postgres@127.0.0.1:5432/postgres`);
    /// its role must be a superuser (the generator sets `session_replication_role`).
    #[arg(long)]
    database_url: Option<String>,
}

/// A data level: what was generated.
#[derive(Debug, Clone, Copy)]
enum Level {
    /// N conversations of `turns_each` turns.
    Conversations(i64),
    /// One conversation of T turns.
    Turns(i64),
}

impl Level {
    fn label(self) -> String {
        match self {
            Self::Conversations(n) => format!("{} conv.", thousands(n)),
            Self::Turns(t) => format!("1 conv. × {} turns", thousands(t)),
        }
    }
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Operations, in table order.
const OPERATIONS: [&str; 18] = [
    "GET /api/conversations, first page",
    "GET /api/conversations, last page",
    "GET /api/conversations/{id}",
    "GET /api/sessions (first page)",
    "GET /api/sessions, last page",
    "GET /api/sessions?status=active",
    "GET /api/sessions?status=failed&limit=20",
    "GET /api/sessions?conversation_id=",
    "GET /api/sessions/{id}",
    "GET /api/sessions/{id}/turns, last page",
    "GET /api/turns?status=failed&limit=20",
    "GET …/messages, first page",
    "GET …/messages, last page",
    "events, recent Last-Event-ID",
    "events, no position",
    "events, ?after=0 (full replay)",
    "POST message → turn_completed",
    "server RSS during full replay",
];

/// One operation's result at one level.
#[derive(Debug, Clone, Default)]
enum Cell {
    /// p50 / p99 of the timed requests.
    Timed(Samples),
    /// Text (memory, or why it was not measured).
    Text(String),
    /// Not measured at this level.
    #[default]
    Blank,
}

/// What one server gave at every level.
#[derive(Debug, Default)]
struct Column {
    /// (level label, cells in [`OPERATIONS`] order, notes)
    levels: Vec<(String, Vec<Cell>, String)>,
}

/// Runs the scale benchmark and prints its tables.
///
/// # Errors
/// When the database, the data generation or a server fails.
pub async fn run(args: ScaleArgs) -> Result<()> {
    let admin = args
        .database_url
        .clone()
        .or_else(|| std::env::var("PARLEY_TEST_DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let parley = match &args.parley_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("parley"),
    };
    let mut bins = Vec::new();
    if let Some(b) = &args.baseline_bin {
        bins.push(("baseline", b.clone()));
    }
    bins.push(("parley", parley));
    for (_, bin) in &bins {
        if !bin.exists() {
            bail!("{} not found: build it first with `cargo build --release -p parley`", bin.display());
        }
    }
    let levels: Vec<Level> = args
        .conversations
        .iter()
        .map(|&n| Level::Conversations(n))
        .chain(args.turns.iter().map(|&t| Level::Turns(t)))
        .collect();
    let telegram_api = server::telegram_stand_in().await?;
    let started = Instant::now();
    let mut columns: Vec<Column> = bins.iter().map(|_| Column::default()).collect();
    for level in levels {
        let spec = match level {
            Level::Conversations(n) => Spec { text_events: args.text_events, ..Spec::new(n, args.turns_each) },
            Level::Turns(t) => Spec { text_events: args.text_events, ..Spec::new(1, t) },
        };
        eprintln!("scale: {}: generating", level.label());
        let db = ScratchDb::create_unmigrated(&admin, "scale").await?;
        let result = measure_level(&args, &db, &spec, level, &bins, &telegram_api).await;
        db.drop_now().await;
        for (column, cells) in columns.iter_mut().zip(result?) {
            column.levels.push(cells);
        }
    }
    println!();
    println!(
        "parley-bench scale: {} timed requests per operation (at most {} s each), one at a time; {} text events per \
         turn; {} cores; {:.0} s total",
        args.samples,
        args.max_secs,
        args.text_events,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        started.elapsed().as_secs_f64()
    );
    for ((name, bin), column) in bins.iter().zip(&columns) {
        println!();
        println!("{name}: {}", bin.display());
        print_column(column);
    }
    Ok(())
}

/// Generates one level and measures every server on it; one column entry per server.
async fn measure_level(
    args: &ScaleArgs,
    db: &ScratchDb,
    spec: &Spec,
    level: Level,
    bins: &[(&str, PathBuf)],
    telegram_api: &str,
) -> Result<Vec<(String, Vec<Cell>, String)>> {
    parley_db::migrate::run_to(&parley_db::DbConfig::new(db.url.clone()), 4).await.context("migrate to V4")?;
    let (mut client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let made = dataset::generate(&mut client, spec).await.context("generate")?;
    let vacuumed = Instant::now();
    client.batch_execute("vacuum analyze").await?;
    let generated = format!(
        "generated {} conversations, {} sessions, {} messages, {} turns, {} events in {:.1} s (+ vacuum {:.1} s)",
        made.rows[0],
        made.rows[1],
        made.rows[2],
        made.rows[3],
        made.rows[4],
        made.took.as_secs_f64(),
        vacuumed.elapsed().as_secs_f64()
    );
    eprintln!("scale: {}: {generated}", level.label());
    // The conversation whose operations are timed: the middle one.
    let conversation = made.conversations[made.conversations.len() / 2];
    let mut out = Vec::new();
    for (name, bin) in bins {
        eprintln!("scale: {}: {name}", level.label());
        let spawning = Instant::now();
        let options = SpawnOptions {
            bin: bin.clone(),
            database_url: db.url.clone(),
            worker_id: format!("scale-{name}"),
            extra: Vec::new(),
            telegram_api: telegram_api.to_owned(),
            log: std::env::temp_dir().join(format!("parley-bench-{}-scale-{name}.log", std::process::id())),
            log_level: "warn",
        };
        let process = tokio::task::spawn_blocking(move || server::spawn(&options)).await??;
        let start = spawning.elapsed();
        // A newer server may have migrated: give the planner fresh statistics.
        client.batch_execute("vacuum analyze").await?;
        let target = Target::new(&process.base, None)?;
        let cells = Measure { args, target: &target, process: &process, client: &client, conversation }
            .all(level)
            .await
            .with_context(|| format!("{name} at {}", level.label()))?;
        let notes = format!("{generated}; {name} started (with its migrations) in {:.1} s", start.as_secs_f64());
        out.push((level.label(), cells, notes));
        drop(process);
    }
    drop(client);
    let _ = connection.await;
    Ok(out)
}

/// The timing of one server at one level.
struct Measure<'a> {
    args: &'a ScaleArgs,
    target: &'a Target,
    process: &'a Parley,
    client: &'a tokio_postgres::Client,
    conversation: Uuid,
}

impl Measure<'_> {
    /// Every operation, in [`OPERATIONS`] order.
    async fn all(&self, level: Level) -> Result<Vec<Cell>> {
        let c = self.conversation;
        let mut cells = vec![Cell::Blank; OPERATIONS.len()];
        let paged = self.get_json("/api/conversations?limit=1").await?.get("next").is_some();
        cells[0] = self.get("/api/conversations?limit=50").await?;
        cells[1] = match (level, paged) {
            (Level::Turns(_), _) => Cell::Blank,
            (Level::Conversations(n), false) => {
                self.get(&format!("/api/conversations?limit=50&offset={}", n - 50)).await?
            }
            (Level::Conversations(_), true) => {
                let last = self.last_page("/api/conversations?limit=50", "conversations", 50).await?;
                self.get(&last).await?
            }
        };
        cells[2] = self.get(&format!("/api/conversations/{c}")).await?;
        cells[3] = self.get("/api/sessions").await?;
        if paged && matches!(level, Level::Conversations(_)) {
            cells[4] = self.get(&self.last_page("/api/sessions", "sessions", 200).await?).await?;
        } else if !paged {
            cells[4] = Cell::Text("no paging".into());
        }
        cells[5] = self.get("/api/sessions?status=active").await?;
        // Pages of 20: the smallest level has 20 of them, so every level's page is full.
        cells[6] = self.get("/api/sessions?status=failed&limit=20").await?;
        cells[7] = self.get(&format!("/api/sessions?conversation_id={c}")).await?;
        let session = self.get_json(&format!("/api/sessions?conversation_id={c}&status=active")).await?;
        let session = session["sessions"][0]["session_id"].as_str().ok_or_else(|| anyhow!("no active session"))?;
        cells[8] = self.get(&format!("/api/sessions/{session}")).await?;
        let session_turns = format!("/api/sessions/{session}/turns");
        if paged {
            cells[9] = self.get(&self.last_page(&session_turns, "turns", 100).await?).await?;
        } else {
            cells[9] = Cell::Text("no paging".into());
        }
        cells[10] = match self.target.http.get(self.target.url("/api/turns?status=failed")).send().await?.status() {
            s if s.is_success() => self.get("/api/turns?status=failed&limit=20").await?,
            s => Cell::Text(format!("none ({})", s.as_u16())),
        };
        let last_message: i64 = self
            .client
            .query_one("select max(message_id) from message where conversation_id = $1", &[&c])
            .await?
            .get(0);
        cells[11] = self.get(&format!("/api/conversations/{c}/messages?limit=100")).await?;
        cells[12] = self
            .get(&format!("/api/conversations/{c}/messages?limit=100&after={}", (last_message - 100).max(0)))
            .await?;
        let seqs: Vec<i64> = self
            .client
            .query("select seq from event where conversation_id = $1 order by seq desc limit 4", &[&c])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (last_seq, recent) = (seqs[0], seqs[seqs.len() - 1]);
        let events = format!("/api/conversations/{c}/events");
        cells[13] = self.sse(&events, Some(recent), last_seq, None).await?;
        cells[14] = self.sse(&events, None, last_seq, None).await?;
        let rss = Arc::new(AtomicU64::new(0));
        let before = server::rss_kib(self.process.pid())?;
        cells[15] = self.sse(&format!("{events}?after=0"), None, last_seq, Some(Arc::clone(&rss))).await?;
        cells[17] = Cell::Text(format!("{} → {} MiB", before / 1024, rss.load(Ordering::Relaxed).max(before) / 1024));
        cells[16] = self.turns(c, last_seq).await?;
        Ok(cells)
    }

    fn budget(&self) -> (usize, Duration) {
        (self.args.samples.max(5), Duration::from_secs(self.args.max_secs))
    }

    async fn get_json(&self, path: &str) -> Result<Value> {
        let resp = self.target.http.get(self.target.url(path)).send().await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Times `GET path` (the whole body read), after two untimed requests.
    async fn get(&self, path: &str) -> Result<Cell> {
        let (samples, budget) = self.budget();
        let mut timed = Samples::default();
        let started = Instant::now();
        for i in 0..samples + 2 {
            let t = Instant::now();
            let resp = self.target.http.get(self.target.url(path)).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            if !status.is_success() {
                bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
            }
            if i >= 2 {
                timed.push(t.elapsed());
                if timed.len() >= 5 && started.elapsed() > budget {
                    break;
                }
            }
        }
        Ok(Cell::Timed(timed))
    }

    /// The `path` of the list's last `page` items: `?after=` the cursor after which they
    /// follow, found by walking the list a page of 200 at a time (then one shorter page);
    /// `path` itself when the list is no longer than that.
    async fn last_page(&self, path: &str, field: &str, page: usize) -> Result<String> {
        let sep = if path.contains('?') { '&' } else { '?' };
        Ok(match self.cursor_before_last(path, field, page).await? {
            Some(after) => format!("{path}{sep}after={after}"),
            None => path.to_owned(),
        })
    }

    /// The cursor after which the last `page` items of a list follow (`None`: the list
    /// holds at most `page` items).
    async fn cursor_before_last(&self, path: &str, field: &str, page: usize) -> Result<Option<String>> {
        let path = path.split('?').next().unwrap_or(path);
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                Some(a) => format!("{path}?limit=200&after={a}"),
                None => format!("{path}?limit=200"),
            };
            let body = self.get_json(&url).await?;
            let n = body[field].as_array().map_or(0, Vec::len);
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => {
                    // `after` leaves these `n` items; skip all but the last `page` of them.
                    let skip = n.saturating_sub(page);
                    if skip == 0 {
                        return Ok(after);
                    }
                    let url = after
                        .map_or_else(|| format!("{path}?limit={skip}"), |a| format!("{path}?limit={skip}&after={a}"));
                    let body = self.get_json(&url).await?;
                    return body["next"]
                        .as_str()
                        .map(|n| Some(n.to_owned()))
                        .ok_or_else(|| anyhow!("{path}: no cursor"));
                }
            }
        }
    }

    /// Times opening the events stream until the event `until` arrives; with `rss`, the
    /// server's resident memory is sampled every 20 ms meanwhile and its peak kept there.
    async fn sse(
        &self,
        path: &str,
        last_event_id: Option<i64>,
        until: i64,
        rss: Option<Arc<AtomicU64>>,
    ) -> Result<Cell> {
        let (samples, budget) = self.budget();
        let mut timed = Samples::default();
        let started = Instant::now();
        let sampler = rss.map(|peak| {
            let pid = self.process.pid();
            tokio::spawn(async move {
                loop {
                    if let Ok(kib) = server::rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        });
        let result = async {
            for i in 0..samples + 1 {
                let t = Instant::now();
                let mut req = self.target.http.get(self.target.url(path)).timeout(Duration::from_secs(600));
                if let Some(id) = last_event_id {
                    req = req.header("last-event-id", id.to_string());
                }
                let resp = req.send().await?;
                if !resp.status().is_success() {
                    bail!("GET {path}: {}", resp.status());
                }
                let mut stream = resp.bytes_stream().eventsource();
                loop {
                    let Some(event) = stream.next().await else { bail!("{path}: the stream ended") };
                    let event = event.map_err(|e| anyhow!("{path}: {e}"))?;
                    if event.id.parse::<i64>().is_ok_and(|id| id >= until) {
                        break;
                    }
                }
                if i >= 1 {
                    timed.push(t.elapsed());
                    if timed.len() >= 5 && started.elapsed() > budget {
                        break;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Some(s) = sampler {
            s.abort();
        }
        result.map(|()| Cell::Timed(timed))
    }

    /// Times turns: POST a message, then its `turn_completed` on a stream opened after
    /// the last stored event.
    async fn turns(&self, conversation: Uuid, last_seq: i64) -> Result<Cell> {
        let (samples, budget) = self.budget();
        let resp = self
            .target
            .http
            .get(self.target.url(&format!("/api/conversations/{conversation}/events?after={last_seq}")))
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        let mut stream = resp.bytes_stream().eventsource();
        let mut timed = Samples::default();
        let started = Instant::now();
        for i in 0..samples + 2 {
            let t = Instant::now();
            let turn = self.target.post_message(conversation, crate::load::MESSAGE).await?.to_string();
            loop {
                let event = tokio::time::timeout(Duration::from_secs(30), stream.next())
                    .await
                    .map_err(|_| anyhow!("turn {turn} did not complete in 30 s"))?
                    .ok_or_else(|| anyhow!("the stream ended"))?
                    .map_err(|e| anyhow!("{e}"))?;
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if data["turn_id"] == turn.as_str() && event.event.starts_with("turn_") && event.event != "turn_started"
                {
                    if event.event != "turn_completed" {
                        bail!("turn {turn}: {}", event.event);
                    }
                    break;
                }
            }
            if i >= 2 {
                timed.push(t.elapsed());
                if timed.len() >= 5 && started.elapsed() > budget {
                    break;
                }
            }
        }
        Ok(Cell::Timed(timed))
    }
}

/// Prints one server's table: operations down, levels across; then the notes.
fn print_column(column: &Column) {
    let mut header = vec!["operation (p50 / p99 ms)".to_owned()];
    header.extend(column.levels.iter().map(|l| l.0.clone()));
    let mut rows = vec![header];
    for (i, op) in OPERATIONS.iter().enumerate() {
        let mut row = vec![(*op).to_owned()];
        for (_, cells, _) in &column.levels {
            row.push(match &cells[i] {
                Cell::Timed(s) => match (s.percentile_ms(50.0), s.percentile_ms(99.0)) {
                    (Some(a), Some(b)) => format!("{} / {}", fmt_ms(a), fmt_ms(b)),
                    _ => "n/a".into(),
                },
                Cell::Text(t) => t.clone(),
                Cell::Blank => "-".into(),
            });
        }
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            println!("|-{}-|", rule.join("-|-"));
        }
    }
    for (label, _, notes) in &column.levels {
        println!("{label}: {notes}");
    }
}
