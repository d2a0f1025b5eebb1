//! The container image's behaviour, checked through the same binary with the image's own
//! environment (no container engine runs here): `parley serve` started with the
//! Dockerfile's `ENV` block (its `/data` moved into a scratch directory) and run as its
//! `HEALTHCHECK` runs `parley health`; the first admin token bootstrapped from a file as
//! `docker-compose.yml` mounts it, once across restarts and replicas; JSON logs whose
//! turn lines carry the turn's IDs; the warning about directories on the container's
//! root file system; and the variables the compose file sets being ones Parley reads.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_test_support::TestDb;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_parley");
const TOKEN: &str = "3f2c9a1be0d44c7f9e8b6a5d4c3b2a190817263544536271f0e1d2c3b4a59687";

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// The Dockerfile's `ENV` block as (name, value) pairs.
fn image_env() -> BTreeMap<String, String> {
    let dockerfile = repo_file("Dockerfile");
    let mut env = BTreeMap::new();
    for line in dockerfile.lines().skip_while(|l| !l.starts_with("ENV ")) {
        let line = line.trim_start_matches("ENV ").trim();
        let (pair, more) = line.strip_suffix('\\').map_or((line, false), |p| (p.trim(), true));
        let (name, value) = pair.split_once('=').unwrap_or_else(|| panic!("ENV line {pair:?} is not KEY=value"));
        env.insert(name.to_owned(), value.to_owned());
        if !more {
            break;
        }
    }
    assert!(env.contains_key("PARLEY_BIND"), "the Dockerfile has an ENV block: {env:?}");
    env
}

/// The Dockerfile's `HEALTHCHECK … CMD [...]` command.
fn healthcheck() -> Vec<String> {
    let dockerfile = repo_file("Dockerfile");
    let line = dockerfile.lines().find(|l| l.starts_with("HEALTHCHECK ")).expect("a HEALTHCHECK");
    let cmd = line.split_once("CMD ").expect("an exec-form CMD").1;
    serde_json::from_str(cmd).expect("CMD is a JSON array")
}

/// A scratch directory standing in for the image's `/data` volume, removed at drop.
struct Volume(PathBuf);

impl Volume {
    fn under(parent: &Path) -> Self {
        let dir = parent.join(format!("parley-volume-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        Self(dir)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The environment of the container: the image's, `/data` moved to `volume`, on
/// `port`, with the admin token in a file as the compose file mounts it, plus `extra`.
fn container_env(volume: &Volume, db: &TestDb, port: u16, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let data = volume.0.display().to_string();
    let token_file = volume.0.join("parley-admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut env: Vec<(String, String)> = image_env()
        .into_iter()
        .map(|(k, v)| {
            let v = if k == "PARLEY_BIND" { v.replace(":8080", &format!(":{port}")) } else { v };
            (k, v.replace("/data", &data))
        })
        .collect();
    env.extend([
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        ("HOME".to_owned(), volume.0.join("home").display().to_string()),
        ("DATABASE_URL".to_owned(), db.url()),
        ("PARLEY_BOOTSTRAP_ADMIN_TOKEN_FILE".to_owned(), token_file.display().to_string()),
        // The image has both CLIs; here any executable stands in (no turn runs them).
        ("PARLEY_CLAUDE_BIN".to_owned(), "/bin/true".to_owned()),
        ("PARLEY_CODEX_BIN".to_owned(), "/bin/true".to_owned()),
        ("PARLEY_ASSISTANT".to_owned(), "demo".to_owned()),
        ("PARLEY_DEMO_CHUNK_DELAY_MS".to_owned(), "0".to_owned()),
        ("PARLEY_SHUTDOWN_GRACE_SECS".to_owned(), "1".to_owned()),
    ]);
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

/// `parley serve` with a cleared environment plus `env`; stderr lines are collected.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
}

impl Server {
    fn start(env: Vec<(String, String)>) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let base = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("parley exited before listening: {:#?}", log.lock().unwrap());
            };
            if let Some(rest) = line.strip_prefix("Parley is listening on ") {
                break rest.split_whitespace().next().unwrap().replace("0.0.0.0", "127.0.0.1");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, base, log, env }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Runs `command` (the binary's subcommand and arguments) with the server's environment.
    fn run(&self, command: &[String]) -> std::process::Output {
        let (program, args) = command.split_first().unwrap();
        let program = if program.ends_with("/parley") { BIN } else { program.as_str() };
        Command::new(program)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap()
    }

    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "parley did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The stderr reader sees the end of the pipe shortly after the exit.
        std::thread::sleep(Duration::from_millis(100));
        self.lines()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn admin_tokens(db: &TestDb) -> Vec<(String, bool)> {
    let client = db.pool.get().await.unwrap();
    client
        .query("select principal, revoked_at is null from api_token where admin order by created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn storage_warnings(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| l.contains("container's root file system")).cloned().collect()
}

#[tokio::test]
async fn the_image_starts_with_auth_on_healthy_with_json_logs_that_name_each_turn() {
    let db = TestDb::new().await;
    let volume = Volume::under(&std::env::temp_dir());
    let server = Server::start(container_env(&volume, &db, free_port(), &[]));

    // Its HEALTHCHECK passes.
    let health = server.run(&healthcheck());
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    assert!(String::from_utf8_lossy(&health.stdout).contains("/readyz answered 200"));

    // Authentication is on, and the bootstrap token is an admin's.
    assert_eq!(call(&server, reqwest::Method::GET, "/api/conversations", None, None).await.0, 401);
    let (status, conv) = call(&server, reqwest::Method::POST, "/api/conversations", Some(TOKEN), Some(json!({}))).await;
    assert_eq!(status, 201, "{conv}");
    assert_eq!(admin_tokens(&db).await, vec![("admin".to_owned(), true)]);
    let id = conv["conversation_id"].as_str().unwrap().to_owned();
    let (status, posted) = call(
        &server,
        reqwest::Method::POST,
        &format!("/api/conversations/{id}/messages"),
        Some(TOKEN),
        Some(json!({"text": "hello from the container"})),
    )
    .await;
    assert_eq!(status, 202, "{posted}");
    let turn = posted["turn_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while call(&server, reqwest::Method::GET, &format!("/api/turns/{turn}"), Some(TOKEN), None).await.1["status"]
        != "completed"
    {
        assert!(Instant::now() < deadline, "the turn did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = server.stop();

    // Every line is a JSON object; the turn's own lines carry its IDs.
    let parsed: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(parsed.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string()));
    let finished = parsed.iter().find(|l| l["message"] == "turn finished").expect("a `turn finished` line");
    assert_eq!(finished["span"]["conversation_id"], id.as_str(), "{finished}");
    assert_eq!(finished["span"]["turn_id"], turn.as_str(), "{finished}");
    assert_eq!(finished["spans"][0]["name"], "turn");
    eprintln!(
        "a JSON log line of a turn, as the binary printed it:\n{}",
        lines[parsed.iter().position(|l| l == finished).unwrap()]
    );
    assert!(!lines.iter().any(|l| l.contains('\u{1b}')), "no colour codes in a file");
    // The volume stands on the root file system here (a scratch directory), so each
    // directory that would be lost with the container is named.
    let warnings = storage_warnings(&lines);
    for dir in ["claude", "codex", "workspaces"] {
        let path = volume.0.join(dir).display().to_string();
        assert!(warnings.iter().any(|w| w.contains(&path)), "no warning for {path}: {warnings:#?}");
    }
}

#[tokio::test]
async fn the_bootstrap_token_is_stored_once_across_restarts_and_replicas_and_never_after_a_revoke() {
    let db = TestDb::new().await;
    let volume = Volume::under(&std::env::temp_dir());
    // Two replicas starting together store one token.
    let (env1, env2) = (container_env(&volume, &db, free_port(), &[]), container_env(&volume, &db, free_port(), &[]));
    let (first, second) = std::thread::scope(|s| {
        let first = s.spawn(|| Server::start(env1));
        let second = s.spawn(|| Server::start(env2));
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_eq!(admin_tokens(&db).await, vec![("admin".to_owned(), true)]);
    for server in [&first, &second] {
        assert_eq!(call(server, reqwest::Method::GET, "/api/conversations", Some(TOKEN), None).await.0, 200);
    }
    drop(second);
    // A restart stores nothing new.
    first.stop();
    let env = container_env(&volume, &db, free_port(), &[]);
    let again = Server::start(env.clone());
    assert_eq!(admin_tokens(&db).await, vec![("admin".to_owned(), true)]);
    assert!(again.lines().iter().any(|l| l.contains("an admin token exists")), "{:#?}", again.lines());
    // Revoked, it stays revoked: a restart with the same file does not bring it back.
    let client = db.pool.get().await.unwrap();
    let id: uuid::Uuid = client.query_one("select api_token_id from api_token", &[]).await.unwrap().get(0);
    let revoke = again.run(&[BIN.to_owned(), "tokens".into(), "revoke".into(), id.to_string()]);
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    again.stop();
    let after = Server::start(env);
    assert_eq!(admin_tokens(&db).await, vec![("admin".to_owned(), false)]);
    assert!(after.lines().iter().any(|l| l.contains("revoked")), "the log says why: {:#?}", after.lines());
    assert_eq!(call(&after, reqwest::Method::GET, "/api/conversations", Some(TOKEN), None).await.0, 401);
}

#[tokio::test]
async fn a_short_bootstrap_token_and_an_unready_server_fail_clearly() {
    let db = TestDb::new().await;
    let volume = Volume::under(&std::env::temp_dir());
    let port = free_port();
    let mut env = container_env(&volume, &db, port, &[]);
    let short = volume.0.join("short-token");
    std::fs::write(&short, "tooshort\n").unwrap();
    env.retain(|(k, _)| k != "PARLEY_BOOTSTRAP_ADMIN_TOKEN_FILE");
    env.push(("PARLEY_BOOTSTRAP_ADMIN_TOKEN_FILE".into(), short.display().to_string()));
    let out = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(admin_tokens(&db).await.is_empty(), "nothing stored");
    // Nothing listens on the port: the health check fails.
    let (program, args) = healthcheck().split_first().map(|(p, a)| (p.clone(), a.to_vec())).unwrap();
    assert!(program.ends_with("/parley"), "{program}");
    let out = Command::new(BIN)
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test]
async fn a_volume_on_its_own_file_system_draws_no_warning() {
    let shm = Path::new("/dev/shm");
    let root_dev = std::fs::metadata("/").map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap();
    let shm_dev = std::fs::metadata(shm).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok();
    if shm_dev.is_none_or(|d| d == root_dev) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "/dev/shm is needed as a file system other than /");
        eprintln!("SKIPPED: /dev/shm is not a file system of its own here");
        return;
    }
    let db = TestDb::new().await;
    let volume = Volume::under(shm);
    let server = Server::start(container_env(&volume, &db, free_port(), &[]));
    assert_eq!(call(&server, reqwest::Method::GET, "/api/conversations", Some(TOKEN), None).await.0, 200);
    let lines = server.stop();
    assert!(storage_warnings(&lines).is_empty(), "{lines:#?}");
    // Outside a container the check does not run at all, wherever the directories are.
    // (And text logs written to a pipe carry no colour codes.)
    let volume = Volume::under(&std::env::temp_dir());
    let outside = [("PARLEY_IN_CONTAINER", "false"), ("PARLEY_LOG_FORMAT", "text")];
    let server = Server::start(container_env(&volume, &db, free_port(), &outside));
    let lines = server.stop();
    assert!(storage_warnings(&lines).is_empty(), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains(" INFO ") && l.contains("assistant selected")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains('\u{1b}') || l.starts_with('{')), "plain text: {lines:#?}");
}

#[test]
fn every_parley_variable_of_the_image_and_the_compose_file_is_one_parley_reads() {
    let help = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let compose = repo_file("docker-compose.yml");
    let mut names: Vec<String> = image_env().into_keys().collect();
    for line in compose.lines() {
        let line = line.trim().trim_start_matches("- ");
        if let Some((name, _)) = line.split_once('=').or_else(|| line.split_once(':'))
            && (name.starts_with("PARLEY_") || name == "DATABASE_URL")
        {
            names.push(name.to_owned());
        }
    }
    assert!(names.iter().any(|n| n == "PARLEY_BOOTSTRAP_ADMIN_TOKEN_FILE"), "{names:?}");
    for name in names.iter().filter(|n| n.starts_with("PARLEY_") || *n == "DATABASE_URL") {
        assert!(
            help.contains(&format!("env: {name}=")) || help.contains(&format!("env: {name}]")),
            "{name} is not read by parley serve"
        );
    }
    // The compose file mounts the token where it says, and keeps /data on a volume.
    assert!(compose.contains("/run/secrets/parley-admin-token") && compose.contains("parley-data:/data"));
}
