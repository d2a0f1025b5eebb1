//! The real `parley` binary: `serve --auth off` refuses a non-loopback address, `serve`
//! refuses a chat platform without an allow-list (and says so when one admits
//! everyone), and `parley tokens create|list|revoke` manage tokens that the server then
//! accepts or refuses; the reserved principal names are refused.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use parley_test_support::TestDb;
use parley_test_support::process::Parley;

const BIN: &str = env!("CARGO_BIN_EXE_parley");

fn parley(database_url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run parley")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn serve_with_auth_off_refuses_a_non_loopback_address() {
    // No database is needed: the refusal comes first.
    let out = parley("postgres://postgres@127.0.0.1:1/unused", &["serve", "--auth", "off", "--bind", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("refusing to serve on 0.0.0.0:0 with --auth off"), "{stderr}");
    assert!(stderr.contains("parley tokens create"), "the message says what to do instead: {stderr}");
    let out = Command::new(BIN)
        .args(["serve", "--bind", "0.0.0.0:0"])
        .env("PARLEY_AUTH", "off")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/unused")
        .output()
        .expect("run parley");
    assert_eq!(out.status.code(), Some(1), "PARLEY_AUTH=off is refused the same way");
}

#[tokio::test]
async fn tokens_created_with_the_cli_authenticate_until_revoked() {
    let db = TestDb::new().await;
    let url = db.url();

    let bad = parley(&url, &["tokens", "create", "--principal", "two words"]);
    assert_eq!(bad.status.code(), Some(2), "an invalid principal is a usage error");

    let created = parley(&url, &["tokens", "create", "--principal", "alice"]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_owned();
    assert!(token.starts_with("parley_") && token.len() == 50, "one token alone on stdout: {token:?}");
    let admin = parley(&url, &["tokens", "create", "--principal", "root", "--admin"]);
    let admin_token = text(&admin.stdout).trim().to_owned();

    let list = parley(&url, &["tokens", "list"]);
    assert!(list.status.success());
    let listed = text(&list.stdout);
    assert!(!listed.contains(&token) && !listed.contains(&admin_token), "list never shows a token: {listed}");
    let alice_row = listed.lines().find(|l| l.contains(" alice ")).expect("alice is listed");
    assert!(alice_row.contains(" no "), "alice is not admin: {alice_row}");
    let id = alice_row.split_whitespace().next().expect("id").to_owned();
    let stored: Vec<u8> = db
        .pool
        .get()
        .await
        .expect("client")
        .query_one("select token_hash from api_token where api_token_id = $1::text::uuid", &[&id])
        .await
        .expect("row")
        .get(0);
    assert_eq!(stored, parley_db::api_token::hash(&token), "only the SHA-256 is stored");

    let server = Parley::start(BIN, &url, "auth-cli", &["--auth", "on"]);
    let get = |token: &str| {
        let req = server.http.get(server.url("/api/conversations")).bearer_auth(token.to_owned());
        async move { req.send().await.expect("get").status().as_u16() }
    };
    assert_eq!(get(&token).await, 200, "--auth on after --auth off: the last one wins");
    assert_eq!(get("parley_wrong").await, 401);

    let revoked = parley(&url, &["tokens", "revoke", &id]);
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    let missing = parley(&url, &["tokens", "revoke", "00000000-0000-0000-0000-000000000000"]);
    assert_eq!(missing.status.code(), Some(3), "an unknown token is 'not found'");
    let listed = text(&parley(&url, &["tokens", "list"]).stdout);
    let alice_row = listed.lines().find(|l| l.contains(" alice ")).expect("alice is listed");
    assert!(!alice_row.trim_end().ends_with('-'), "revoked time shown: {alice_row}");

    // The server's token cache lasts 5 s: the revoked token stops working within that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(&token).await != 401 {
        assert!(tokio::time::Instant::now() < deadline, "the revoked token still works");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&admin_token).await, 200);
    let (status, _) = server.terminate(Duration::from_secs(20));
    assert!(status.success());
}

#[test]
fn serve_refuses_to_start_with_a_platform_and_no_allow_list() {
    // No database is needed: the refusal comes first.
    let out = Command::new(BIN)
        .args(["serve", "--auth", "off"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/unused")
        .env("PARLEY_TELEGRAM_SECRET_TOKEN", "tg-secret")
        .env("PARLEY_SLACK_SIGNING_SECRET", "slack-secret")
        .env("PARLEY_GENERIC_SECRET", "generic-secret")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run parley");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("refusing to start: telegram and slack are configured without an allow-list"), "{stderr}");
    for flag in [
        "--telegram-allowed-users (PARLEY_TELEGRAM_ALLOWED_USERS)",
        "--telegram-allowed-chats",
        "--telegram-allow-everyone (PARLEY_TELEGRAM_ALLOW_EVERYONE=true)",
        "--slack-allowed-teams",
        "--slack-allowed-channels",
        "--slack-allowed-users",
        "--slack-allow-everyone",
    ] {
        assert!(stderr.contains(flag), "the message names {flag}: {stderr}");
    }
    assert!(!stderr.contains("generic"), "the generic webhook trusts its secret: {stderr}");
    assert!(!stderr.contains("tg-secret") && !stderr.contains("slack-secret"), "no secret printed");

    // An allow-list given as a flag or a variable satisfies it; both an allow-list and
    // allow-everyone is refused.
    let out = Command::new(BIN)
        .args(["serve", "--auth", "off", "--telegram-allowed-users", "42", "--github-allow-everyone"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/unused")
        .env("PARLEY_TELEGRAM_SECRET_TOKEN", "tg-secret")
        .env("PARLEY_GITHUB_WEBHOOK_SECRET", "gh-secret")
        .env("PARLEY_GITHUB_ALLOWED_REPOS", "acme/widgets")
        .output()
        .expect("run parley");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("github has both an allow-list and --github-allow-everyone"), "{stderr}");
    assert!(!stderr.contains("telegram"), "telegram's allow-list was accepted: {stderr}");
}

#[tokio::test]
async fn serve_with_allow_everyone_starts_and_says_so_in_the_log() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::new().await;
    let data = std::env::temp_dir().join(format!("parley-allow-test-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(BIN)
        .args(["serve", "--auth", "off", "--bind", "127.0.0.1:0", "--telegram-allow-everyone"])
        .env("DATABASE_URL", db.url())
        .env("PARLEY_DATA_DIR", &data)
        .env("PARLEY_TELEGRAM_SECRET_TOKEN", "tg-secret")
        .env("PARLEY_SLACK_SIGNING_SECRET", "slack-secret")
        .env("PARLEY_SLACK_ALLOWED_USERS", "U0ME")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start parley");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log.iter().any(|l: &String| l.contains("Parley is listening")) {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(remaining) {
            Ok(line) => log.push(line),
            Err(_) => panic!("parley did not start: {log:#?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = strip_ansi(&log.join("\n"));
    assert!(
        log.contains(
            "allow-list: everyone (--telegram-allow-everyone): anyone who can message the bot drives the assistant"
        ),
        "{log}"
    );
    assert!(log.contains("allowed=slack-allowed-users: U0ME"), "{log}");
    assert!(log.contains(&format!("root={}", data.join("workspaces").display())), "{log}");
    assert!(data.join("workspaces").is_dir(), "the workspace root is made under the data directory");
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn tokens_create_refuses_the_reserved_principal_names() {
    // Refused while parsing the command line, before the database.
    for name in ["telegram", "slack", "discord", "github", "generic", "local", "GitHub"] {
        let out = parley("postgres://postgres@127.0.0.1:1/unused", &["tokens", "create", "--principal", name]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(text(&out.stderr).contains("is reserved"), "{name}: {}", text(&out.stderr));
    }
}

/// `text` without ANSI colour sequences (`ESC [ … m`), as the log has them on a pipe.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
