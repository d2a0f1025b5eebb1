//! A real `parley serve` process for end-to-end tests, the chaos script and benchmarks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

/// A running `parley serve` process, killed on drop, with a data directory of its own
/// (conversation workspaces) removed on drop.
pub struct Parley {
    /// The process.
    pub child: Child,
    /// `PARLEY_DATA_DIR` of the process.
    pub data_dir: std::path::PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `http://ADDR/metrics` when started with `--metrics-bind`.
    pub metrics_url: Option<String>,
    /// The HTTP client.
    pub http: reqwest::Client,
}

impl Parley {
    /// Starts the `parley` binary at `bin` as `serve` on a free port against
    /// `database_url` with extra args, and waits until it listens.
    ///
    /// # Panics
    /// When the process cannot start or exits before listening.
    pub fn start(bin: &str, database_url: &str, worker_id: &str, extra: &[&str]) -> Self {
        Self::start_with_env(bin, database_url, worker_id, extra, &[])
    }

    /// [`Parley::start`] with extra environment variables (e.g. a platform's secret).
    ///
    /// # Panics
    /// When the process cannot start or exits before listening.
    pub fn start_with_env(
        bin: &str,
        database_url: &str,
        worker_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let data_dir = std::env::temp_dir().join(format!("parley-data-{}", Uuid::new_v4()));
        let mut child = Command::new(bin)
            // Loopback, single user: no API tokens (`--auth off`).
            .args(["serve", "--bind", "127.0.0.1:0", "--auth", "off", "--worker-id", worker_id])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("PARLEY_DATA_DIR", &data_dir)
            .env("RUST_LOG", std::env::var("PARLEY_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start parley");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics_url = None;
        let base = loop {
            let line = lines.next().expect("parley exited before listening").expect("read stdout");
            if let Some(rest) = line.strip_prefix("Parley serves metrics on ") {
                metrics_url = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.strip_prefix("Parley is listening on ") {
                break rest.split_whitespace().next().expect("url").to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, data_dir, base, metrics_url, http: reqwest::Client::new() }
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as an OOM kill or a crashed node would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long it took.
    ///
    /// # Panics
    /// When it does not exit within `limit`.
    pub fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("kill -TERM");
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("parley did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// An absolute URL for `path`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a conversation and returns its id.
    ///
    /// # Panics
    /// When the server does not answer with one.
    pub async fn create_conversation(&self) -> Uuid {
        let v: Value = self
            .http
            .post(self.url("/api/conversations"))
            .json(&json!({}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        v["conversation_id"].as_str().expect("id").parse().expect("uuid")
    }

    /// Posts a message; returns the status (0 when the server could not be reached) and body.
    pub async fn post(&self, conversation: Uuid, text: &str) -> (u16, Value) {
        match self
            .http
            .post(self.url(&format!("/api/conversations/{conversation}/messages")))
            .json(&json!({ "text": text }))
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Posts a message that must be accepted; returns its turn id.
    ///
    /// # Panics
    /// When it is not answered with 202.
    pub async fn send(&self, conversation: Uuid, text: &str) -> Uuid {
        let (status, body) = self.post(conversation, text).await;
        assert_eq!(status, 202, "{body}");
        body["turn_id"].as_str().expect("turn").parse().expect("uuid")
    }

    /// GETs `path`; returns the status (0 when unreachable) and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        match self.http.get(self.url(path)).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                (status, resp.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// The turn's JSON.
    pub async fn turn(&self, turn: Uuid) -> Value {
        self.get(&format!("/api/turns/{turn}")).await.1
    }

    /// Waits until the turn has a final status.
    ///
    /// # Panics
    /// After `limit`.
    pub async fn wait_turn(&self, turn: Uuid, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.turn(turn).await;
            if let Some(s) = t["status"].as_str()
                && s != "queued"
                && s != "running"
            {
                return t;
            }
            assert!(Instant::now() < deadline, "turn {turn} not finished: {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the turn has status `want`.
    ///
    /// # Panics
    /// After `limit`.
    pub async fn wait_status(&self, turn: Uuid, want: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.turn(turn).await;
            if t["status"] == want {
                return t;
            }
            assert!(Instant::now() < deadline, "turn {turn} never {want}: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The conversation's first 500 messages.
    pub async fn messages(&self, conversation: Uuid) -> Vec<Value> {
        let (_, v) = self.get(&format!("/api/conversations/{conversation}/messages?limit=500")).await;
        v["messages"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Parley {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
