//! Test harness: a real Parley (orchestrator + workers + HTTP server, in process) over
//! a fresh PostgreSQL database, with a wiremock server standing in for every platform
//! API and recording each call.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use futures::StreamExt;
use futures::stream::BoxStream;
use parley_assistant::{Assistant, AssistantError, Chunk, Demo, DemoConfig, RunRequest};
use parley_orchestrator::{Config, Orchestrator};
use parley_platforms::PlatformsConfig;
use parley_server::launch::Settings;
use parley_test_support::TestDb;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{any, method, path_regex};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const SLACK_NOW: i64 = 1_767_225_602;
pub const GITHUB_SECRET: &str = "It's a Secret to Everybody";
pub const DISCORD_PUBLIC_KEY: &str = "485ce6e837ee5ce618c256f565492c6b64c9366747455791f608c3e7f65195da";
pub const DISCORD_SEED: &str = "4e1090df6d5ea1e90dd97a88c1168d813b79464b63669bb8064949aeeaa258a1";
pub const TELEGRAM_SECRET: &str = "tg_fixture_secret-0123456789ABCDEF";
pub const GENERIC_SECRET: &str = "generic-test-secret";
pub const TELEGRAM_BOT_TOKEN: &str = "123456:TEST-BOT-TOKEN";

/// The platforms crate's fixtures (see the README there).
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../platforms/tests/fixtures")
}

/// A fixture request: path, headers, body bytes.
pub fn fixture(platform: &str, name: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let body = std::fs::read(fixtures().join(format!("{platform}/requests/{name}.body"))).unwrap();
    let meta: Value = serde_json::from_slice(
        &std::fs::read(fixtures().join(format!("{platform}/requests/{name}.headers.json"))).unwrap(),
    )
    .unwrap();
    let headers = meta["headers"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            !matches!(k.to_ascii_lowercase().as_str(), "host" | "content-length" | "connection" | "accept-encoding")
        })
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (meta["path"].as_str().unwrap().to_owned(), headers, body)
}

/// One recorded platform API call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The path with its query (`/discord/webhooks/…?wait=true`).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl From<&Request> for Call {
    fn from(request: &Request) -> Self {
        let url = &request.url;
        Self {
            method: request.method.to_string(),
            path: url.query().map_or_else(|| url.path().to_owned(), |q| format!("{}?{q}", url.path())),
            headers: request.headers.clone(),
            body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
            raw: request.body.clone(),
        }
    }
}

/// Matches requests whose path contains a string (`/sendMessage`, `chat.update`).
struct PathContains(String);

impl Match for PathContains {
    fn matches(&self, request: &Request) -> bool {
        request.url.path().contains(&self.0)
    }
}

/// The platform APIs' stand-in: a wiremock server under one prefix per platform
/// (`/tg`, `/slack/api`, `/discord`, `/gh`; anything else is a generic callback) that
/// answers as the real APIs do, takes scripted answers first, and records every call.
#[derive(Clone)]
pub struct MockApi {
    server: Arc<MockServer>,
    pub addr: SocketAddr,
}

/// A JSON answer with a fresh message id from `ids`, made by `body`.
fn with_id(
    ids: &Arc<AtomicI64>,
    status: u16,
    body: impl Fn(i64) -> Value + Send + Sync + 'static,
) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
    let ids = Arc::clone(ids);
    move |_: &Request| ResponseTemplate::new(status).set_body_json(body(ids.fetch_add(1, Ordering::SeqCst)))
}

impl MockApi {
    pub async fn start() -> Self {
        let server = MockServer::start().await;
        let ids = Arc::new(AtomicI64::new(1000));
        // Telegram Bot API: `sendMessage` returns the Message; other methods `true`.
        Mock::given(PathContains("/sendMessage".into()))
            .respond_with(with_id(&ids, 200, |id| json!({ "ok": true, "result": { "message_id": id } })))
            .mount(&server)
            .await;
        Mock::given(path_regex("^/tg/"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true, "result": true })))
            .mount(&server)
            .await;
        // Slack Web API: `chat.postMessage` returns the message's `ts`.
        Mock::given(path_regex(r"chat\.postMessage$"))
            .respond_with(with_id(&ids, 200, |id| json!({ "ok": true, "ts": format!("1767225603.{id:06}") })))
            .mount(&server)
            .await;
        Mock::given(path_regex("^/slack/"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true })))
            .mount(&server)
            .await;
        // GitHub REST: a created comment is `201`; Discord: the message object.
        Mock::given(method("POST"))
            .and(path_regex("^/gh/"))
            .respond_with(with_id(&ids, 201, |id| json!({ "id": id.to_string() })))
            .mount(&server)
            .await;
        Mock::given(path_regex("^/(discord|gh)/"))
            .respond_with(with_id(&ids, 200, |id| json!({ "id": id.to_string() })))
            .mount(&server)
            .await;
        // The generic webhook's callback.
        Mock::given(any()).respond_with(ResponseTemplate::new(200).set_body_json(json!({}))).mount(&server).await;
        let addr = *server.address();
        Self { server: Arc::new(server), addr }
    }

    pub fn base(&self, prefix: &str) -> String {
        format!("{}{prefix}", self.server.uri())
    }

    /// Answers the next call whose path contains `path` with `status`, `body` and
    /// `headers`, before the default answers; scripts for one path are used in order.
    pub async fn script(&self, path: &str, status: u16, body: Value, headers: &[(&str, &str)]) {
        let mut answer = ResponseTemplate::new(status).set_body_json(body);
        for (name, value) in headers {
            answer = answer.insert_header(*name, *value);
        }
        Mock::given(PathContains(path.into()))
            .respond_with(answer)
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&self.server)
            .await;
    }

    pub async fn calls(&self) -> Vec<Call> {
        self.server.received_requests().await.unwrap_or_default().iter().map(Call::from).collect()
    }

    pub async fn calls_to(&self, path_part: &str) -> Vec<Call> {
        self.calls().await.into_iter().filter(|c| c.path.contains(path_part)).collect()
    }

    /// Waits until `pred` holds over the calls (panics after `timeout`).
    pub async fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls().await;
            if pred(&calls) {
                return calls;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; calls: {:#?}", summarize(&calls));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn summarize(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{} {} {}", c.method, c.path, c.body.to_string().chars().take(160).collect::<String>()))
        .collect()
}

/// An assistant answering every message with `reply` in ten chunks.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub reply: String,
}

impl Assistant for Fixed {
    fn name(&self) -> &str {
        "fixed"
    }

    fn run(&self, _request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        let chars: Vec<char> = self.reply.chars().collect();
        let mut chunks: Vec<Result<Chunk, AssistantError>> = vec![Ok(Chunk::SessionStarted { id: "fixed-1".into() })];
        for piece in chars.chunks(chars.len().div_ceil(10).max(1)) {
            chunks.push(Ok(Chunk::Text { text: piece.iter().collect() }));
        }
        chunks.push(Ok(Chunk::Completed {
            session_id: Some("fixed-1".into()),
            usage: None,
            cost_usd: None,
            duration_ms: None,
        }));
        futures::stream::iter(chunks)
            .then(|c| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                c
            })
            .boxed()
    }
}

/// Options of a test Parley.
#[derive(Clone)]
pub struct Options {
    pub demo: DemoConfig,
    pub fixed_reply: Option<String>,
    pub edit_interval_ms: u64,
    pub extra_env: Vec<(&'static str, String)>,
    pub clock: Arc<AtomicI64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            demo: DemoConfig { chunk_delay: Duration::from_millis(10), slow_chunk_delay: Duration::from_millis(300) },
            fixed_reply: None,
            edit_interval_ms: 50,
            extra_env: Vec::new(),
            clock: Arc::new(AtomicI64::new(SLACK_NOW)),
        }
    }
}

/// A running Parley with its mock platform APIs.
pub struct Parley {
    pub db: Arc<TestDb>,
    pub mock: MockApi,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub orchestrator: Orchestrator,
    pub clock: Arc<AtomicI64>,
    shutdown: CancellationToken,
    launched: parley_server::launch::Launched,
}

impl Parley {
    pub async fn start(options: Options) -> Self {
        let db = Arc::new(TestDb::new().await);
        let mock = MockApi::start().await;
        Self::start_on(db, mock, options).await
    }

    /// A Parley with these environment variables on top of the defaults (the
    /// allow-list tests set theirs this way).
    pub async fn with_env(vars: &[(&'static str, &str)]) -> Self {
        let extra_env = vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Self::start(Options { extra_env, ..Options::default() }).await
    }

    pub async fn start_on(db: Arc<TestDb>, mock: MockApi, options: Options) -> Self {
        let mut env: HashMap<&str, String> = HashMap::from([
            ("PARLEY_TELEGRAM_SECRET_TOKEN", TELEGRAM_SECRET.to_owned()),
            ("PARLEY_TELEGRAM_BOT_TOKEN", TELEGRAM_BOT_TOKEN.to_owned()),
            ("PARLEY_TELEGRAM_API_BASE", mock.base("/tg")),
            ("PARLEY_TELEGRAM_BOT_USERNAME", "fixture_bot".to_owned()),
            ("PARLEY_SLACK_SIGNING_SECRET", SLACK_SECRET.to_owned()),
            ("PARLEY_SLACK_BOT_TOKEN", "xoxb-test".to_owned()),
            ("PARLEY_SLACK_API_BASE", mock.base("/slack/api")),
            ("PARLEY_DISCORD_PUBLIC_KEY", DISCORD_PUBLIC_KEY.to_owned()),
            ("PARLEY_DISCORD_BOT_TOKEN", "discord-bot-token".to_owned()),
            ("PARLEY_DISCORD_API_BASE", mock.base("/discord")),
            ("PARLEY_GITHUB_WEBHOOK_SECRET", GITHUB_SECRET.to_owned()),
            ("PARLEY_GITHUB_TOKEN", "ghs_test".to_owned()),
            ("PARLEY_GITHUB_API_BASE", mock.base("/gh")),
            ("PARLEY_GENERIC_SECRET", GENERIC_SECRET.to_owned()),
            ("PARLEY_PLATFORM_EDIT_INTERVAL_MS", options.edit_interval_ms.to_string()),
            // Tests of the allow-lists set them (and `…_ALLOW_EVERYONE=false`) in `extra_env`.
            ("PARLEY_TELEGRAM_ALLOW_EVERYONE", "true".to_owned()),
            ("PARLEY_SLACK_ALLOW_EVERYONE", "true".to_owned()),
            ("PARLEY_DISCORD_ALLOW_EVERYONE", "true".to_owned()),
            ("PARLEY_GITHUB_ALLOW_EVERYONE", "true".to_owned()),
        ]);
        for (k, v) in &options.extra_env {
            env.insert(k, v.clone());
        }
        let mut config = PlatformsConfig::from_lookup(|k| env.get(k).cloned()).expect("platform config");
        config.sink.backoff = Duration::from_millis(20);
        let clock = Arc::clone(&options.clock);
        let default_assistant = if options.fixed_reply.is_some() { "fixed" } else { "demo" };
        let config_orchestrator = Config {
            worker_id: format!("platforms-test-{}", uuid::Uuid::new_v4()),
            workers: 4,
            idle_poll: Duration::from_millis(100),
            default_assistant: default_assistant.into(),
            ..Config::default()
        };
        let mut assistants: Vec<Arc<dyn Assistant>> = vec![Arc::new(Demo::new(options.demo.clone()))];
        if let Some(reply) = &options.fixed_reply {
            assistants.push(Arc::new(Fixed { reply: reply.clone() }));
        }
        let settings = Settings {
            assistants,
            platforms: Some(config),
            platform_clock: Some({
                let clock = Arc::clone(&clock);
                Arc::new(move || clock.load(Ordering::SeqCst))
            }),
            drain: Duration::from_secs(2),
            ..Settings::new(db.config.clone(), config_orchestrator)
        };
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let launched =
            parley_server::launch(settings, listener, shutdown.clone().cancelled_owned()).await.expect("launch");
        Self {
            db,
            mock,
            addr: launched.local_addr(),
            http: reqwest::Client::new(),
            orchestrator: launched.orchestrator().clone(),
            clock,
            shutdown,
            launched,
        }
    }

    /// Stops the server and workers (running turns are requeued after the grace).
    pub async fn stop(self) -> (Arc<TestDb>, MockApi) {
        self.shutdown.cancel();
        let _ = self.launched.stopped().await;
        (Arc::clone(&self.db), self.mock.clone())
    }

    pub async fn post(&self, path: &str, headers: &[(String, String)], body: Vec<u8>) -> (u16, Value) {
        let mut req = self.http.post(format!("http://{}{path}", self.addr)).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn replay(&self, platform: &str, name: &str) -> (u16, Value) {
        let (path, headers, body) = fixture(platform, name);
        self.post(&path, &headers, body).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        let client = self.db.pool.get().await.unwrap();
        client.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Waits until every turn is finished.
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.count("select count(*) from turn where status in ('queued', 'running')").await;
            if open == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "turns still open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---- request builders ----

pub fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

pub fn telegram_update(update_id: i64, chat_id: i64, text: &str, is_bot: bool) -> (Vec<(String, String)>, Vec<u8>) {
    let body = parley_test_support::telegram::update(update_id, chat_id, text, is_bot);
    let headers = h(&[("content-type", "application/json"), ("x-telegram-bot-api-secret-token", TELEGRAM_SECRET)]);
    (headers, serde_json::to_vec(&body).unwrap())
}

pub fn slack_signed(body: &Value, ts: i64) -> (Vec<(String, String)>, Vec<u8>) {
    let raw = serde_json::to_vec(body).unwrap();
    let mut base = format!("v0:{ts}:").into_bytes();
    base.extend_from_slice(&raw);
    let sig = format!("v0={}", parley_platforms::verify::hmac_sha256_hex(SLACK_SECRET.as_bytes(), &base));
    (
        h(&[
            ("content-type", "application/json"),
            ("x-slack-request-timestamp", &ts.to_string()),
            ("x-slack-signature", &sig),
        ]),
        raw,
    )
}

pub fn slack_mention(event_id: &str, ts: &str, text: &str) -> Value {
    json!({
        "type": "event_callback",
        "team_id": "T0AB12CD3",
        "event_id": event_id,
        "event_time": SLACK_NOW,
        "authorizations": [{ "team_id": "T0AB12CD3", "user_id": "U0BOT12345", "is_bot": true }],
        "event": { "type": "app_mention", "user": "U0USR12345", "text": format!("<@U0BOT12345> {text}"), "ts": ts, "channel": "C0CHAN1234", "event_ts": ts }
    })
}

pub fn discord_signed(body: &Value) -> (Vec<(String, String)>, Vec<u8>) {
    use ed25519_dalek::Signer;
    let seed: [u8; 32] = hex::decode(DISCORD_SEED).unwrap().try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let raw = serde_json::to_vec(body).unwrap();
    let ts = "1767225620";
    let mut msg = ts.as_bytes().to_vec();
    msg.extend_from_slice(&raw);
    let sig = hex::encode(key.sign(&msg).to_bytes());
    (h(&[("content-type", "application/json"), ("x-signature-ed25519", &sig), ("x-signature-timestamp", ts)]), raw)
}

pub fn discord_command(id: &str, name: &str, prompt: Option<&str>) -> Value {
    let options = prompt.map_or_else(|| json!([]), |p| json!([{ "name": "prompt", "type": 3, "value": p }]));
    json!({
        "type": 2, "id": id, "application_id": "1234567890123456789", "token": format!("tok-{id}"),
        "channel_id": "645027906669510667",
        "member": { "user": { "id": "53908232506183680", "username": "mason" } },
        "data": { "id": "1", "name": name, "type": 1, "options": options }
    })
}

pub fn github_signed(event: &str, delivery: &str, body: &Value) -> (Vec<(String, String)>, Vec<u8>) {
    let raw = serde_json::to_vec(body).unwrap();
    let sig = format!("sha256={}", parley_platforms::verify::hmac_sha256_hex(GITHUB_SECRET.as_bytes(), &raw));
    (
        h(&[
            ("content-type", "application/json"),
            ("x-github-event", event),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", &sig),
        ]),
        raw,
    )
}

pub fn github_comment(body_text: &str, login: &str, user_type: &str) -> Value {
    json!({
        "action": "created",
        "issue": { "number": 7, "title": "Build broken" },
        "comment": { "id": 99, "body": body_text, "user": { "login": login, "type": user_type } },
        "repository": { "full_name": "acme/widgets" },
        "sender": { "login": login, "type": user_type }
    })
}

pub fn generic_signed(delivery: &str, body: &Value) -> (Vec<(String, String)>, Vec<u8>) {
    let raw = serde_json::to_vec(body).unwrap();
    let sig = parley_platforms::verify::generic_signature(GENERIC_SECRET, &raw);
    (h(&[("content-type", "application/json"), ("x-parley-signature", &sig), ("x-delivery-id", delivery)]), raw)
}

pub const LONG: Duration = Duration::from_secs(20);
