//! The servers under test: `parley serve` processes (or an existing server), scratch
//! databases, the Telegram API stand-in, and the process's resident memory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use parley_test_support::process::Parley;
use serde_json::{Value, json};
use uuid::Uuid;

/// The Telegram webhook secret the spawned servers are given.
pub const TELEGRAM_SECRET: &str = "bench_telegram_secret-0123456789";

/// How to start one `parley serve`.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The `parley` binary.
    pub bin: PathBuf,
    /// `DATABASE_URL` of the server.
    pub database_url: String,
    /// `--worker-id`.
    pub worker_id: String,
    /// Extra `serve` arguments.
    pub extra: Vec<String>,
    /// Base URL of the Telegram API stand-in.
    pub telegram_api: String,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// Its `RUST_LOG`: `warn` where logging would only add noise to a throughput
    /// figure, `info` (what a deployment runs) where memory is measured.
    pub log_level: &'static str,
}

/// Settings the bench gives `parley serve` when it knows them: no authentication
/// (loopback only), and no per-principal limits — every request of the bench comes
/// from one principal, which a real deployment spreads over many.
const WHEN_KNOWN: [(&str, &str); 3] =
    [("--auth", "off"), ("--rate-limit-per-minute", "0"), ("--max-event-streams", "0")];

/// `parley serve --help`.
fn serve_help(bin: &Path) -> String {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Starts `parley serve` with the demo assistant in instant mode on a free loopback
/// port, Telegram configured against the stand-in, and the settings of [`WHEN_KNOWN`],
/// and waits until it listens. The
/// child inherits this process's raised open-files limit.
///
/// # Errors
/// When it cannot start or exits before listening (its log is named).
pub fn spawn(o: &SpawnOptions) -> Result<Parley> {
    let log = std::fs::File::create(&o.log).with_context(|| format!("create {}", o.log.display()))?;
    let mut args: Vec<String> =
        ["serve", "--bind", "127.0.0.1:0", "--worker-id", &o.worker_id, "--assistant", "demo"].map(Into::into).into();
    args.extend(["--demo-chunk-delay-ms".into(), "0".into()]);
    let help = serve_help(&o.bin);
    for (flag, value) in WHEN_KNOWN {
        if help.contains(&format!("{flag} ")) {
            args.extend([flag.into(), value.into()]);
        }
    }
    args.extend(o.extra.iter().cloned());
    let data_dir = std::env::temp_dir().join(format!("parley-bench-data-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(&o.bin)
        .args(&args)
        .env("DATABASE_URL", &o.database_url)
        .env("RUST_LOG", o.log_level)
        .env("PARLEY_TELEGRAM_SECRET_TOKEN", TELEGRAM_SECRET)
        .env("PARLEY_TELEGRAM_BOT_TOKEN", "123456:BENCH")
        .env("PARLEY_TELEGRAM_API_BASE", &o.telegram_api)
        // The bench's webhook deliveries come from made-up users.
        .env("PARLEY_TELEGRAM_ALLOW_EVERYONE", "true")
        .env("PARLEY_DATA_DIR", &data_dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", o.bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.strip_prefix("Parley is listening on ") {
                    break rest.split_whitespace().next().unwrap_or_default().to_owned();
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("parley exited before listening; see {}", o.log.display());
            }
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok(Parley { child, data_dir, base, metrics_url: None, http: reqwest::Client::new() })
}

/// A web API endpoint: base URL and a client that sends the bearer token, if any.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://HOST:PORT`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The bearer token, if the server needs one.
    pub token: Option<String>,
}

impl Target {
    /// A target at `base`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built or the token is not a valid header value.
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &token {
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {t}").parse()?);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self { base: base.trim_end_matches('/').to_owned(), http, token })
    }

    /// An absolute URL for `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `host:port` of the server.
    #[must_use]
    pub fn authority(&self) -> &str {
        self.base.split("://").nth(1).unwrap_or(&self.base)
    }

    /// Creates a conversation.
    ///
    /// # Errors
    /// When the server does not answer 201 with an id.
    pub async fn create_conversation(&self) -> Result<Uuid> {
        let resp = self.http.post(self.url("/api/conversations")).json(&json!({ "title": "bench" })).send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("create conversation: {status} {v}");
        }
        v["conversation_id"].as_str().ok_or_else(|| anyhow!("no conversation_id in {v}"))?.parse().map_err(Into::into)
    }

    /// Creates `n` conversations, `parallel` requests at a time.
    ///
    /// # Errors
    /// The first failure.
    pub async fn create_conversations(&self, n: usize, parallel: usize) -> Result<Vec<Uuid>> {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|_| self.create_conversation())
            .buffer_unordered(parallel.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Posts a message; returns its turn id.
    ///
    /// # Errors
    /// When the server does not answer 202 with a turn id.
    pub async fn post_message(&self, conversation: Uuid, text: &str) -> Result<Uuid> {
        let resp = self
            .http
            .post(self.url(&format!("/api/conversations/{conversation}/messages")))
            .json(&json!({ "text": text }))
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if status.as_u16() != 202 {
            bail!("post message: {status} {v}");
        }
        v["turn_id"].as_str().ok_or_else(|| anyhow!("no turn_id in {v}"))?.parse().map_err(Into::into)
    }
}

/// The server's resident set size (`VmRSS` of `/proc/PID/status`), in KiB.
///
/// # Errors
/// When the file cannot be read or has no `VmRSS` line.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))
}

/// Raises this process's open-files soft limit to its hard limit (children inherit it).
/// Returns the new soft limit.
///
/// # Errors
/// When the limit cannot be read or set.
pub fn raise_nofile() -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// A database created for this run and dropped at its end: migrated with Parley's
/// schema (like `parley_test_support::TestDb`, but on any server and not from a
/// template).
#[derive(Debug)]
pub struct ScratchDb {
    admin_url: String,
    /// Its name.
    pub name: String,
    /// How to reach it.
    pub url: String,
}

/// `admin_url` with its database name replaced.
///
/// # Errors
/// When `admin_url` does not parse.
pub fn url_for(admin_url: &str, database: &str) -> Result<String> {
    let cfg = tokio_postgres::Config::from_str(admin_url)?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("postgres");
    let password = cfg.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
    Ok(format!("postgres://{user}{password}@{host}:{port}/{database}"))
}

/// Connects with a background driver task.
///
/// # Errors
/// When PostgreSQL cannot be reached.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) =
        tokio_postgres::connect(url, tokio_postgres::NoTls).await.with_context(|| format!("connect to {url}"))?;
    tokio::spawn(conn);
    Ok(client)
}

impl ScratchDb {
    /// Creates and migrates `parley_bench_<pid>_<label>`.
    ///
    /// # Errors
    /// When it cannot be created or migrated.
    pub async fn create(admin_url: &str, label: &str) -> Result<Self> {
        let name = format!("parley_bench_{}_{label}", std::process::id());
        let admin = connect(admin_url).await?;
        admin.batch_execute(&format!("drop database if exists {name} with (force)")).await?;
        admin.batch_execute(&format!("create database {name}")).await?;
        let url = url_for(admin_url, &name)?;
        parley_db::migrate::run(&parley_db::DbConfig::new(url.clone())).await.context("migrate scratch database")?;
        Ok(Self { admin_url: admin_url.to_owned(), name, url })
    }

    /// Creates `parley_bench_<pid>_<label>` without migrating it (the caller migrates it,
    /// to an older schema for instance, or lets the server under test do it).
    ///
    /// # Errors
    /// When it cannot be created.
    pub async fn create_unmigrated(admin_url: &str, label: &str) -> Result<Self> {
        let name = format!("parley_bench_{}_{label}", std::process::id());
        let admin = connect(admin_url).await?;
        admin.batch_execute(&format!("drop database if exists {name} with (force)")).await?;
        admin.batch_execute(&format!("create database {name}")).await?;
        Ok(Self { admin_url: admin_url.to_owned(), name: name.clone(), url: url_for(admin_url, &name)? })
    }

    /// Drops it.
    pub async fn drop_now(self) {
        if let Ok(admin) = connect(&self.admin_url).await {
            let _ = admin.batch_execute(&format!("drop database if exists {} with (force)", self.name)).await;
        }
    }
}

/// Serves a stand-in Telegram Bot API on a free loopback port: every call succeeds
/// with `{"ok": true, "result": {"message_id": 1}}`. Returns its base URL.
///
/// # Errors
/// When it cannot listen.
pub async fn telegram_stand_in() -> Result<String> {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({ "ok": true, "result": { "message_id": 1, "date": 0, "chat": { "id": 1 } } }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}
