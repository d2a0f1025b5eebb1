//! Idle SSE connections: many raw HTTP/1.1 `GET …/events` streams held open without
//! reading, to measure the server's memory per idle follower, and whether that memory
//! comes back once they close. A raw socket per stream (no HTTP client state, no task)
//! keeps the bench's own memory and CPU small.
//!
//! `parley-bench idle` runs only this measurement (see [`IdleArgs`]); the load benchmark
//! runs it last, after its other phases.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::server::{self, ScratchDb, SpawnOptions, Target};

/// Streams opened at a time.
const PARALLEL: usize = 64;

/// The target of the idle benchmark at its largest level, in KiB of server RSS per
/// idle stream.
pub const TARGET_KIB_PER_STREAM: f64 = 12.0;

/// The target for the memory after the streams closed: at most this fraction above the
/// server's RSS before they opened.
pub const TARGET_AFTER_CLOSE: f64 = 0.10;

/// Options of `parley-bench idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Idle stream counts at which the server's memory is read (each stream on its own
    /// new conversation).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    streams: Vec<usize>,
    /// Seconds to wait after the streams closed before the last RSS reading.
    #[arg(long, default_value_t = 5)]
    settle: u64,
    /// The server under test (default: `parley` next to this executable).
    #[arg(long)]
    parley_bin: Option<PathBuf>,
    /// Another server to measure first, on its own fresh database (e.g. the build before
    /// a change); shown as "baseline".
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// Extra argument for each started `parley serve` (repeat it).
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Target an existing server instead of starting one (`http://HOST:PORT`); needs
    /// `--server-pid`.
    #[arg(long, requires = "server_pid")]
    url: Option<String>,
    /// Bearer token for the web API of the `--url` server.
    #[arg(long, env = "PARLEY_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With `--url`: the server's process id, to read its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// PostgreSQL server where the scratch databases are created (default
    /// `PARLEY_TEST_DATABASE_URL`, then `postgres://postgres@127.0.0.1:5432/postgres`).
    #[arg(long)]
    pub database_url: Option<String>,
}

/// What one server's memory did: RSS (KiB) before any stream, at each level, and after
/// every stream closed.
#[derive(Debug, Default, Clone)]
pub struct IdleReport {
    /// RSS before the first stream, in KiB.
    pub base: u64,
    /// Per level: streams open, RSS in KiB, streams the server had closed.
    pub levels: Vec<(usize, u64, usize)>,
    /// RSS `settle` seconds after every stream closed, in KiB.
    pub after_close: Option<u64>,
    /// Seconds waited after closing.
    pub settle: u64,
}

impl IdleReport {
    /// Rows of the result table: metric, value, target, verdict (`None`: no target).
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn rows(&self) -> Vec<(String, String, String, Option<bool>)> {
        let largest = self.levels.iter().map(|l| l.0).max().unwrap_or(0);
        let mut rows = Vec::new();
        for &(level, rss, closed) in &self.levels {
            let per = rss.saturating_sub(self.base) as f64 / level.max(1) as f64;
            let closed = if closed > 0 { format!(", {closed} closed by server") } else { String::new() };
            let target = level == largest && level >= 10_000;
            rows.push((
                format!("Server RSS per idle SSE stream @ {level}"),
                format!("{per:.1} KiB  ({:.1} -> {:.1} MiB{closed})", mib(self.base), mib(rss)),
                if target { format!("<= {TARGET_KIB_PER_STREAM:.0} KiB @ 10,000") } else { String::new() },
                target.then_some(per <= TARGET_KIB_PER_STREAM),
            ));
        }
        if let Some(after) = self.after_close {
            let above = after as f64 / self.base.max(1) as f64 - 1.0;
            rows.push((
                format!("Server RSS {} s after they closed", self.settle),
                format!("{:.1} MiB  ({:+.1} % vs {:.1} MiB before)", mib(after), above * 100.0, mib(self.base)),
                format!("<= +{:.0} %", TARGET_AFTER_CLOSE * 100.0),
                Some(above <= TARGET_AFTER_CLOSE),
            ));
        }
        rows
    }
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Opens one stream and waits for its `200` response head.
async fn open(target: &Target, conversation: Uuid) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(target.authority()).await.context("connect")?;
    let auth = target.token.as_ref().map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /api/conversations/{conversation}/events HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n{auth}\r\n",
        target.authority()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await.context("head timeout")??;
        if n == 0 {
            bail!("closed before the response head");
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("SSE answered {}", String::from_utf8_lossy(&head).lines().next().unwrap_or_default());
    }
    Ok(stream)
}

/// Opens one stream per conversation, `parallel` at a time, and returns them.
///
/// # Errors
/// The first stream that cannot be opened.
pub async fn open_many(target: &Target, conversations: &[Uuid], parallel: usize) -> Result<Vec<TcpStream>> {
    futures::stream::iter(conversations.iter().copied())
        .map(|c| open(target, c))
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// How many of `streams` the server closed (a zero-byte read).
pub async fn closed_count(streams: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    let mut buf = [0u8; 256];
    for s in streams {
        // Drain what is there without waiting; a 0-byte read means end of stream.
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    closed
}

/// Opens idle SSE streams, each to a different new conversation, in steps up to each
/// of `levels`, and reads the server's RSS before, at each level, and `settle` seconds
/// after closing them all.
///
/// # Errors
/// When conversations cannot be created, a stream cannot be opened or the RSS read.
pub async fn measure(target: &Target, pid: u32, levels: &[usize], settle: Duration) -> Result<IdleReport> {
    let mut levels = levels.to_vec();
    levels.sort_unstable();
    levels.dedup();
    let mut report = IdleReport { settle: settle.as_secs(), ..IdleReport::default() };
    let Some(&max) = levels.last() else { return Ok(report) };
    eprintln!("idle SSE: creating {max} conversations");
    let conversations = target.create_conversations(max, 32).await?;
    // A round of streams opened and closed first, so that what the first streams
    // allocate once (each pooled database connection's prepared statements, lazily built
    // routes) is in the base.
    let warm = PARALLEL.min(max);
    drop(open_many(target, &conversations[..warm], PARALLEL).await?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.base = server::rss_kib(pid)?;
    let mut streams = Vec::with_capacity(max);
    for level in levels {
        eprintln!("idle SSE: opening streams up to {level}");
        let started = Instant::now();
        let more = open_many(target, &conversations[streams.len()..level], PARALLEL)
            .await
            .with_context(|| format!("opening idle SSE stream {} of {level}", streams.len()))?;
        streams.extend(more);
        eprintln!("idle SSE: {level} open after {:.1} s", started.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = server::rss_kib(pid)?;
        let closed = closed_count(&mut streams).await;
        report.levels.push((level, rss, closed));
    }
    eprintln!("idle SSE: closing {} streams", streams.len());
    drop(streams);
    tokio::time::sleep(settle).await;
    report.after_close = Some(server::rss_kib(pid)?);
    Ok(report)
}

/// `parley-bench idle`: the idle-stream memory of a started server (and of a baseline
/// server first, when given), or of an existing one.
///
/// # Errors
/// When a server cannot be started or measured.
pub async fn run(args: IdleArgs, admin_url: &str) -> Result<()> {
    let nofile = server::raise_nofile().unwrap_or(0);
    let started = Instant::now();
    let settle = Duration::from_secs(args.settle);
    let mut reports: Vec<(String, IdleReport)> = Vec::new();
    if let Some(url) = &args.url {
        let pid = args.server_pid.context("--url needs --server-pid")?;
        let target = Target::new(url, args.token.clone())?;
        reports.push((url.clone(), measure(&target, pid, &args.streams, settle).await?));
    } else {
        let bin = match &args.parley_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("parley"),
        };
        let mut bins = Vec::new();
        if let Some(b) = &args.baseline_bin {
            bins.push(("baseline", b.clone()));
        }
        bins.push(("parley", bin));
        let telegram_api = server::telegram_stand_in().await?;
        for (name, bin) in bins {
            if !bin.exists() {
                bail!("{} not found: build it first with `cargo build --release -p parley`", bin.display());
            }
            let db = ScratchDb::create(admin_url, "idle").await?;
            let options = SpawnOptions {
                bin: bin.clone(),
                database_url: db.url.clone(),
                worker_id: format!("idle-{name}"),
                extra: args.serve_arg.clone(),
                telegram_api: telegram_api.clone(),
                log: std::env::temp_dir().join(format!("parley-bench-{}-idle-{name}.log", std::process::id())),
                log_level: "info",
            };
            eprintln!("idle SSE: {name}: {}", bin.display());
            let measured = async {
                let process = tokio::task::spawn_blocking(move || server::spawn(&options)).await??;
                let target = Target::new(&process.base, None)?;
                let report = measure(&target, process.pid(), &args.streams, settle).await;
                drop(process);
                report
            }
            .await;
            db.drop_now().await;
            reports.push((format!("{name}: {}", bin.display()), measured?));
        }
    }
    println!();
    println!(
        "parley-bench idle: streams {:?}, each on its own new conversation (raw HTTP/1.1, not read); {} cores; open \
         files {nofile}; {:.0} s total",
        args.streams,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        started.elapsed().as_secs_f64()
    );
    for (name, report) in reports {
        println!();
        println!("{name}");
        let rows: Vec<_> = report.rows().into_iter().map(|(m, v, t, ok)| (m, v, t, crate::verdict(ok))).collect();
        crate::print_rows(&rows);
    }
    Ok(())
}
