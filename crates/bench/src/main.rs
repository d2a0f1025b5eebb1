//! `parley-bench`: drives a real Parley server (started here from the release `parley`
//! binary, or an existing one with `--url`) with N concurrent web conversations, each
//! following its turns on SSE, and measures it against the database floor in the same
//! run. See `docs/performance.md`.
//!
//! ```sh
//! cargo build --release -p parley && cargo run --release -p parley-bench -- --conversations 16
//! ```
//!
//! `parley-bench scale` measures instead how each API operation's latency grows with the
//! stored data (see [`scale`]); `parley-bench idle` only the server's memory per idle SSE
//! stream and after they close (see [`idle`]); `parley-bench claude-warm` and
//! `parley-bench codex-warm` the follow-up latency of the real CLIs, cold and warm (see
//! [`warm`]).

#![forbid(unsafe_code)]

mod floor;
mod idle;
mod load;
mod pgstat;
mod scale;
mod server;
mod stats;
mod transcripts;
mod warm;
mod webhook;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use parley_test_support::process::Parley;
use uuid::Uuid;

use crate::floor::Floor;
use crate::load::{Load, TurnRecord};
use crate::pgstat::{Counters, Delta, STATS_SETTLE};
use crate::server::{ScratchDb, SpawnOptions, Target};
use crate::stats::{Samples, fmt_ms};

/// The command line: the load benchmark's options, or a mode.
#[derive(Debug, Parser)]
#[command(
    name = "parley-bench",
    about = "Load benchmark of Parley against the PostgreSQL floor; `scale`: latency as the data grows",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Another benchmark than the load one.
    #[command(subcommand)]
    mode: Option<Mode>,
    /// The load benchmark's options.
    #[command(flatten)]
    load: Args,
}

/// The other benchmarks.
#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Latency of each API operation as the data grows (1k–100k conversations, one
    /// conversation of 100–50,000 turns), for one server or a baseline and a server.
    Scale(scale::ScaleArgs),
    /// The per-turn cost of keeping the assistant's session file in PostgreSQL: a
    /// conversation of tool-calling turns with the real Claude CLI and the mock API.
    Transcripts(transcripts::TranscriptArgs),
    /// Server memory per idle SSE stream (1,000 and 10,000 streams, each on its own
    /// conversation) and after they close, for one server or a baseline and a server.
    Idle(idle::IdleArgs),
    /// Follow-up latency of the real Claude CLI, cold and warm, against the mock
    /// Anthropic API, beside a bare warm CLI (`docs/performance.md`).
    ClaudeWarm(warm::ClaudeWarmArgs),
    /// Follow-up latency of the real Codex CLI, cold (`codex exec` per turn) and warm
    /// (`codex app-server`), against the mock OpenAI Responses API, beside a bare warm
    /// `codex app-server` (`docs/performance.md`).
    CodexWarm(warm::CodexWarmArgs),
}

/// Options of the load benchmark.
#[derive(Debug, clap::Args)]
struct Args {
    /// Concurrent conversations (and floor clients), each a closed loop.
    #[arg(long, default_value_t = 16)]
    conversations: usize,
    /// Seconds of each measured phase (floor and Parley alternate).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up (Parley, then floor) before the measured phases.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Floor/Parley phase pairs.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Replicas to start on one database (1 or 2). With 2, conversations post to and
    /// follow on both, so some turns are followed on the replica that does not run them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    replicas: u8,
    /// Idle SSE connection counts at which the server's memory is read.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    sse_idle: Vec<usize>,
    /// Skip the idle SSE memory measurement.
    #[arg(long)]
    skip_idle: bool,
    /// Seconds of the Parley and floor loads whose database commits are counted.
    #[arg(long, default_value_t = 5)]
    commit_phase: u64,
    /// Skip the commit count (it waits about 50 s for PostgreSQL's statistics).
    #[arg(long)]
    skip_commits: bool,
    /// Rounds of 50 concurrent Telegram webhook deliveries (0 skips them).
    #[arg(long, default_value_t = 10)]
    webhook_rounds: usize,
    /// Target an existing server instead of starting one (`http://HOST:PORT`).
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for the web API of the `--url` server.
    #[arg(long, env = "PARLEY_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PostgreSQL server where scratch databases are created (the floor's, and the
    /// started server's unless `--parley-database`). Defaults to
    /// `PARLEY_TEST_DATABASE_URL`, then `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long)]
    database_url: Option<String>,
    /// Run the started server on this named database (created and migrated by
    /// `parley serve`, not dropped) instead of a fresh one; with `--url`, the name of
    /// the target's database on the `--database-url` server, for counting commits.
    #[arg(long)]
    parley_database: Option<String>,
    /// With `--url`: the server's process id, to read its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// With `--url`: the server's `PARLEY_TELEGRAM_SECRET_TOKEN`, for the webhook phase.
    #[arg(long)]
    telegram_secret: Option<String>,
    /// The `parley` binary (default: `parley` next to this executable).
    #[arg(long)]
    parley_bin: Option<PathBuf>,
    /// Extra argument for each started `parley serve` (repeat it), e.g. `--serve-arg=--workers=16`.
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
}

/// One measured phase.
#[derive(Debug, Clone, Copy)]
struct Phase {
    turns: u64,
    secs: f64,
}

impl Phase {
    fn rate(self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let turns = self.turns as f64;
        if self.secs > 0.0 { turns / self.secs } else { 0.0 }
    }
}

/// Everything the table shows.
#[derive(Debug, Default)]
struct Results {
    parley: Vec<Phase>,
    floor: Vec<Phase>,
    first_text: Samples,
    completed: Samples,
    relay_same: Samples,
    relay_cross: Samples,
    relay_note: String,
    errors: usize,
    webhook: Option<Samples>,
    idle: Option<idle::IdleReport>,
    rss_note: String,
    commits: Option<CommitReport>,
}

#[derive(Debug, Clone, Copy, Default)]
struct CommitReport {
    parley_turns: u64,
    parley: Delta,
    parley_load_secs: f64,
    floor_turns: u64,
    floor: Delta,
    idle_parley: Delta,
    idle_cluster: Delta,
}

fn admin_url(args: &Args) -> String {
    args.database_url.clone().unwrap_or_else(default_admin_url)
}

/// `PARLEY_TEST_DATABASE_URL`, then `postgres://postgres@127.0.0.1:5432/postgres`.
fn default_admin_url() -> String {
    std::env::var("PARLEY_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let args = match cli.mode {
        Some(Mode::Scale(scale)) => return scale::run(scale).await,
        Some(Mode::Transcripts(t)) => return transcripts::run(t).await,
        Some(Mode::Idle(idle)) => {
            let admin = idle.database_url.clone().unwrap_or_else(default_admin_url);
            return idle::run(idle, &admin).await;
        }
        Some(Mode::ClaudeWarm(warm)) => return warm::run_claude(warm).await,
        Some(Mode::CodexWarm(warm)) => return warm::run_codex(warm).await,
        None => cli.load,
    };
    let nofile = server::raise_nofile().unwrap_or(0);
    let admin = admin_url(&args);
    let started = Instant::now();
    let load_before = loadavg();

    // The servers.
    let mut scratch: Vec<ScratchDb> = Vec::new();
    let mut processes: Vec<Parley> = Vec::new();
    let mut worker_ids: Vec<String> = Vec::new();
    let (targets, parley_db_url): (Vec<Target>, Option<String>) = match &args.url {
        Some(url) => {
            let db = args.parley_database.as_ref().map(|n| server::url_for(&admin, n)).transpose()?;
            (vec![Target::new(url, args.token.clone())?], db)
        }
        None => {
            let bin = match &args.parley_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?.with_file_name("parley"),
            };
            if !bin.exists() {
                bail!("{} not found: build it first with `cargo build --release -p parley`", bin.display());
            }
            let db_url = match &args.parley_database {
                Some(name) => server::url_for(&admin, name)?,
                None => {
                    let db = ScratchDb::create(&admin, "parley").await?;
                    let url = db.url.clone();
                    scratch.push(db);
                    url
                }
            };
            let telegram_api = server::telegram_stand_in().await?;
            let mut targets = Vec::new();
            for r in 0..args.replicas {
                let options = SpawnOptions {
                    bin: bin.clone(),
                    database_url: db_url.clone(),
                    worker_id: format!("bench-{r}"),
                    extra: args.serve_arg.clone(),
                    telegram_api: telegram_api.clone(),
                    log: std::env::temp_dir().join(format!("parley-bench-{}-{r}.log", std::process::id())),
                    log_level: "warn",
                };
                let p = tokio::task::spawn_blocking(move || server::spawn(&options)).await??;
                targets.push(Target::new(&p.base, None)?);
                worker_ids.push(format!("bench-{r}"));
                processes.push(p);
            }
            (targets, Some(db_url))
        }
    };
    let floor_db = ScratchDb::create(&admin, "floor").await?;

    let result = run(&args, &targets, parley_db_url.as_deref(), &floor_db, &processes, &worker_ids).await;

    let load_after = loadavg();
    drop(processes);
    floor_db.drop_now().await;
    for db in scratch {
        db.drop_now().await;
    }
    let results = result?;
    print_table(&args, &results, nofile, &load_before, &load_after, started.elapsed());
    Ok(())
}

#[allow(clippy::too_many_lines)]
async fn run(
    args: &Args,
    targets: &[Target],
    parley_db_url: Option<&str>,
    floor_db: &ScratchDb,
    processes: &[Parley],
    worker_ids: &[String],
) -> Result<Results> {
    let mut results = Results::default();
    let n = args.conversations.max(1);
    let replicas = targets.len();
    eprintln!("parley-bench: {n} conversations, {replicas} replica(s); setting up");

    // Conversation i posts to replica i % R and is followed on replica (i / R) % R.
    let mut conversations = Vec::new();
    for i in 0..n {
        let post = i % replicas;
        let follow = (i / replicas) % replicas;
        conversations.push((targets[post].create_conversation().await?, post, follow));
    }
    let load = Load::start(targets, &conversations).await?;
    let floor = Floor::start(&floor_db.url, n).await?;
    let duration = Duration::from_secs(args.duration);

    // Warm-up, then alternating floor / Parley phases.
    eprintln!("warm-up {} s", args.warmup * 2);
    load.open(0);
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    load.close().await;
    floor.phase(Duration::from_secs(args.warmup)).await;
    for round in 1..=args.rounds {
        let (turns, start, end) = floor.phase(duration).await;
        results.floor.push(Phase { turns, secs: (end - start).as_secs_f64() });
        eprintln!("round {round}: floor {:.0} turns/s", results.floor.last().map_or(0.0, |p| p.rate()));
        let start = Instant::now();
        load.open(round);
        tokio::time::sleep(duration).await;
        let end = Instant::now();
        load.close().await;
        let turns = load.records().iter().filter(|r| r.phase == round && r.completed.is_some_and(|c| c <= end)).count();
        results.parley.push(Phase { turns: turns as u64, secs: (end - start).as_secs_f64() });
        eprintln!("round {round}: parley {:.0} turns/s", results.parley.last().map_or(0.0, |p| p.rate()));
    }
    let measured: Vec<TurnRecord> =
        load.records().into_iter().filter(|r| r.phase >= 1 && r.phase <= args.rounds).collect();
    results.errors = load.errors();

    // Latencies, and relay latency by whether the follower's replica ran the turn.
    let ran_on = match parley_db_url {
        Some(url) if replicas > 1 => {
            let client = server::connect(url).await?;
            let ids: Vec<Uuid> = measured.iter().map(|r| r.turn_id).collect();
            let rows = client.query("select turn_id, worker_id from turn where turn_id = any($1)", &[&ids]).await?;
            let mut map = HashMap::new();
            for row in rows {
                let worker: Option<String> = row.try_get(1)?;
                if let Some(idx) = worker.and_then(|w| worker_ids.iter().position(|x| *x == w)) {
                    map.insert(row.try_get::<_, Uuid>(0)?, idx);
                }
            }
            Some(map)
        }
        _ => None,
    };
    for r in &measured {
        if let Some(d) = r.first_text {
            results.first_text.push(d);
        }
        if let Some(c) = r.completed {
            results.completed.push(c - r.posted);
        }
        let same = match &ran_on {
            Some(map) => map.get(&r.turn_id).map(|run| *run == r.follow_replica),
            None => Some(true),
        };
        for &us in &r.relay_us {
            match same {
                Some(true) => results.relay_same.push_us(us),
                Some(false) => results.relay_cross.push_us(us),
                None => {}
            }
        }
    }
    results.relay_note = match (&ran_on, args.url.is_some()) {
        (Some(_), _) => "replica that ran the turn read from turn.worker_id".into(),
        (None, true) => "one server assumed".into(),
        (None, false) if replicas == 1 => "one replica; run with --replicas 2 for the cross-replica row".into(),
        (None, false) => String::new(),
    };
    if measured.iter().all(|r| r.relay_us.is_empty()) && !measured.is_empty() {
        results.relay_note = "events carry no `ts`: the server predates the produced-at timestamp".into();
    }

    // Database commits per turn.
    if !args.skip_commits
        && let Some(url) = parley_db_url
    {
        let parley_name = url.rsplit('/').next().unwrap_or_default().to_owned();
        results.commits = Some(count_commits(args, url, &parley_name, &load, &floor, floor_db).await?);
    }

    // Webhook acknowledgements.
    let secret = match &args.url {
        Some(_) => args.telegram_secret.clone(),
        None => Some(server::TELEGRAM_SECRET.to_owned()),
    };
    if args.webhook_rounds > 0
        && let Some(secret) = secret
    {
        eprintln!("webhooks: {} rounds of {}", args.webhook_rounds, webhook::CONCURRENCY);
        results.webhook = Some(webhook::telegram(&targets[0], &secret, args.webhook_rounds).await?);
        wait_idle(parley_db_url).await;
    }

    // Idle SSE memory.
    let pid = args.server_pid.or_else(|| processes.first().map(Parley::pid));
    if args.skip_idle {
        results.rss_note = "skipped (--skip-idle)".into();
    } else if let Some(pid) = pid {
        let settle = Duration::from_secs(5);
        results.idle = Some(idle::measure(&targets[0], pid, &args.sse_idle, settle).await?);
        results.rss_note = "each stream follows a different new conversation; raw HTTP/1.1 sockets, not read".into();
    } else {
        results.rss_note = "needs --server-pid with --url".into();
    }
    Ok(results)
}

/// Counts commits, transaction ids and WAL around a Parley load and a floor load of
/// `--commit-phase` seconds each, with an idle interval to subtract the background.
async fn count_commits(
    args: &Args,
    parley_url: &str,
    parley_name: &str,
    load: &Load,
    floor: &Floor,
    floor_db: &ScratchDb,
) -> Result<CommitReport> {
    let client = server::connect(parley_url).await?;
    let secs = Duration::from_secs(args.commit_phase.max(1));
    eprintln!(
        "commit count: ~{} s (waiting for PostgreSQL statistics)",
        4 * STATS_SETTLE.as_secs() + 2 * secs.as_secs()
    );
    tokio::time::sleep(STATS_SETTLE).await;
    let a = Counters::read(&client, parley_name).await?;
    let phase = usize::MAX;
    let start = Instant::now();
    load.open(phase);
    tokio::time::sleep(secs).await;
    load.close().await;
    let parley_load_secs = start.elapsed().as_secs_f64();
    let parley_turns = load.records().iter().filter(|r| r.phase == phase && r.completed.is_some()).count() as u64;
    tokio::time::sleep(STATS_SETTLE).await;
    let b = Counters::read(&client, parley_name).await?;
    let fb = Counters::read(&client, &floor_db.name).await?;
    let before = floor.done();
    floor.phase(secs).await;
    let floor_turns = floor.done() - before;
    tokio::time::sleep(STATS_SETTLE).await;
    let c = Counters::read(&client, parley_name).await?;
    let fc = Counters::read(&client, &floor_db.name).await?;
    tokio::time::sleep(STATS_SETTLE).await;
    let d = Counters::read(&client, parley_name).await?;
    let mut floor_delta = fc.since(&fb);
    // Cluster-wide counters are the same in both readings; commits are the floor database's.
    floor_delta.commits = fc.commits - fb.commits;
    Ok(CommitReport {
        parley_turns,
        parley: b.since(&a),
        parley_load_secs,
        floor_turns,
        floor: floor_delta,
        idle_parley: c.since(&b),
        idle_cluster: d.since(&c),
    })
}

/// Waits until no turn is queued or running (or 60 s), when the database is known.
async fn wait_idle(parley_db_url: Option<&str>) {
    let Some(url) = parley_db_url else {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return;
    };
    let Ok(client) = server::connect(url).await else { return };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let busy: i64 = match client
            .query_one("select count(*) from turn where status in ('queued', 'running')", &[])
            .await
            .and_then(|r| r.try_get(0))
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `met`, `NOT met` or `-` (no target).
fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "-",
    }
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
fn print_table(args: &Args, r: &Results, nofile: u64, load_before: &str, load_after: &str, elapsed: Duration) {
    let total = |phases: &[Phase]| -> Phase {
        Phase { turns: phases.iter().map(|p| p.turns).sum(), secs: phases.iter().map(|p| p.secs).sum() }
    };
    let (parley, floor) = (total(&r.parley), total(&r.floor));
    let ratio = if floor.rate() > 0.0 { parley.rate() / floor.rate() } else { 0.0 };
    let per_round = |phases: &[Phase]| phases.iter().map(|p| format!("{:.0}", p.rate())).collect::<Vec<_>>().join(", ");
    let mut rows: Vec<(String, String, String, &'static str)> = Vec::new();
    let mut row = |m: &str, v: String, t: &str, ok: Option<bool>| rows.push((m.into(), v, t.into(), verdict(ok)));

    row("Parley turns/s", format!("{:.0}  (rounds: {})", parley.rate(), per_round(&r.parley)), "", None);
    row(
        "DB floor turns/s (2 commits/turn)",
        format!("{:.0}  (rounds: {})", floor.rate(), per_round(&r.floor)),
        "",
        None,
    );
    let ratios: Vec<String> = r
        .parley
        .iter()
        .zip(&r.floor)
        .map(|(p, f)| format!("{:.2}", p.rate() / f.rate().max(f64::MIN_POSITIVE)))
        .collect();
    row("Parley / floor", format!("{ratio:.2}  (rounds: {})", ratios.join(", ")), ">= 0.60", Some(ratio >= 0.6));
    let p = |s: &Samples, q| s.percentile_ms(q);
    row(
        "POST -> first text p50 / p99",
        r.first_text.p50_p99(),
        "<= 5 / 25 ms",
        p(&r.first_text, 50.0).zip(p(&r.first_text, 99.0)).map(|(a, b)| a <= 5.0 && b <= 25.0),
    );
    row("POST -> turn_completed p50 / p99", r.completed.p50_p99(), "", None);
    row(
        "SSE relay, same replica p50 / p99",
        r.relay_same.p50_p99(),
        "p50 <= 1 ms",
        p(&r.relay_same, 50.0).map(|a| a <= 1.0),
    );
    row(
        "SSE relay, across replicas p50 / p99",
        r.relay_cross.p50_p99(),
        "p50 <= 5 ms",
        p(&r.relay_cross, 50.0).map(|a| a <= 5.0),
    );
    match &r.webhook {
        Some(w) => row(
            "Webhook ack (Telegram) p50 / p99",
            format!("{}  max {} ms", w.p50_p99(), w.percentile_ms(100.0).map(fmt_ms).unwrap_or_default()),
            "p99 <= 50 ms (ack_bench)",
            w.percentile_ms(99.0).map(|v| v <= 50.0),
        ),
        None => row("Webhook ack (Telegram)", "skipped".into(), "", None),
    }
    match &r.idle {
        Some(idle) => {
            for (m, v, t, ok) in idle.rows() {
                row(&m, v, &t, ok);
            }
        }
        None => row(
            "Server RSS per idle SSE stream",
            r.rss_note.clone(),
            &format!("<= {:.0} KiB @ 10,000", idle::TARGET_KIB_PER_STREAM),
            None,
        ),
    }
    if let Some(c) = &r.commits {
        let pt = c.parley_turns.max(1) as f64;
        let ft = c.floor_turns.max(1) as f64;
        let idle_rate = c.idle_parley.commits as f64 / c.idle_parley.secs.max(1e-9);
        let bg_xid = c.idle_cluster.xids as f64 / c.idle_cluster.secs.max(1e-9);
        let bg_wal = c.idle_cluster.wal_bytes as f64 / c.idle_cluster.secs.max(1e-9);
        let bg_rec = c.idle_cluster.wal_records as f64 / c.idle_cluster.secs.max(1e-9);
        let commits = (c.parley.commits as f64 - idle_rate * (c.parley.secs - c.parley_load_secs)) / pt;
        let xids = (c.parley.xids as f64 - bg_xid * c.parley.secs) / pt;
        let wal = (c.parley.wal_bytes as f64 - bg_wal * c.parley.secs) / pt;
        let rec = (c.parley.wal_records as f64 - bg_rec * c.parley.secs) / pt;
        let f_commits = c.floor.commits as f64 / ft;
        let f_xids = (c.floor.xids as f64 - bg_xid * c.floor.secs) / ft;
        let f_wal = (c.floor.wal_bytes as f64 - bg_wal * c.floor.secs) / ft;
        let f_rec = (c.floor.wal_records as f64 - bg_rec * c.floor.secs) / ft;
        row(
            "DB commits per turn (xact_commit, all)",
            format!("{commits:.1}  ({} turns; idle server: {idle_rate:.1} commits/s subtracted)", c.parley_turns),
            "<= 3",
            Some(commits <= 3.0),
        );
        row(
            "WAL-writing commits per turn (xids)",
            format!("{xids:.1}  (floor: {f_xids:.2}, cluster-wide)"),
            "<= 3",
            Some(xids <= 3.0),
        );
        row(
            "WAL per turn",
            format!("{:.1} KiB, {rec:.0} records  (floor: {:.1} KiB, {f_rec:.0})", wal / 1024.0, f_wal / 1024.0),
            "",
            None,
        );
        row("Floor commits per turn (calibration)", format!("{f_commits:.2}  ({} turns)", c.floor_turns), "= 2", None);
    } else {
        row("DB commits per turn", "skipped".into(), "<= 3", None);
    }

    println!();
    println!(
        "parley-bench: {} conversations, {} replica(s), {} round(s) of {} s floor + {} s Parley after {} s warm-up; \
         {} cores; open files {nofile}; load avg {load_before} -> {load_after}; {:.0} s total",
        args.conversations,
        if args.url.is_some() { "external".into() } else { args.replicas.to_string() },
        args.rounds,
        args.duration,
        args.duration,
        args.warmup,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        elapsed.as_secs_f64()
    );
    print_rows(&rows);
    if r.errors > 0 {
        println!("failed or timed-out turns: {}", r.errors);
    }
    if !r.relay_note.is_empty() {
        println!("relay: {}", r.relay_note);
    }
    if !r.rss_note.is_empty() {
        println!("idle SSE: {}", r.rss_note);
    }
}

/// Prints a Markdown table of metric, value, target and verdict rows.
fn print_rows(rows: &[(String, String, String, &str)]) {
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.chars().count()).max().unwrap_or(0).max(6);
    println!("| {:<w0$} | {:<w1$} | {:<w2$} | {:<7} |", "metric", "value", "target", "");
    println!("|{}|{}|{}|{}|", "-".repeat(w0 + 2), "-".repeat(w1 + 2), "-".repeat(w2 + 2), "-".repeat(9));
    for (m, v, t, ok) in rows {
        println!("| {m:<w0$} | {v:<w1$} | {t:<w2$} | {ok:<7} |");
    }
}
