//! PostgreSQL restarted under load: 503s while it is down, full recovery after, no turn
//! lost or duplicated. The server stopped and started is a throwaway cluster the test
//! creates itself ([`Cluster`]: `initdb` in a temporary directory, on a free port,
//! removed afterwards), never the machine's own. Without PostgreSQL's server binaries
//! the test is skipped, or fails under `CI=true`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parley_test_support::cluster::{Cluster, ClusterError};
use parley_test_support::process::Parley;
use parley_test_support::skip_missing;
use serde_json::Value;
use tokio::sync::Mutex;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_parley");

#[tokio::test]
async fn postgres_restart_mid_load_loses_and_duplicates_nothing() {
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(ClusterError::Missing(why)) if skip_missing(&why) => return,
        Err(e) => panic!("cannot start a throwaway PostgreSQL cluster: {e}"),
    };
    // Parley creates and migrates its database there.
    let url = cluster.url("parley");
    let parley =
        Arc::new(Parley::start(BIN, &url, "outage", &["--demo-chunk-delay-ms", "20", "--sweep-interval-secs", "1"]));
    let convs: Vec<Uuid> = futures::future::join_all((0..5).map(|_| parley.create_conversation())).await;

    // Load: messages to the five conversations, one every 50 ms, for the whole test.
    let accepted: Arc<Mutex<HashMap<Uuid, Vec<String>>>> = Arc::default();
    let unavailable = Arc::new(Mutex::new(0usize));
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (parley, accepted, unavailable, stop, convs) =
            (parley.clone(), accepted.clone(), unavailable.clone(), stop.clone(), convs.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.is_cancelled() {
                let conv = convs[n % convs.len()];
                let text = format!("load message {n}");
                let (status, body) = parley.post(conv, &text).await;
                match status {
                    202 => accepted.lock().await.entry(conv).or_default().push(text),
                    503 => {
                        assert_eq!(body["error"]["code"], "unavailable", "{body}");
                        *unavailable.lock().await += 1;
                    }
                    other => panic!("unexpected status {other}: {body}"),
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.stop().expect("stop the throwaway cluster");
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ready, _) = parley.get("/readyz").await;
    let (_, health) = parley.get("/healthz").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_again().expect("start the throwaway cluster again");
    let outage = down.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    load.await.expect("load task");

    assert_eq!(ready, 503, "/readyz reports unready while the database is down");
    assert_eq!(health["status"], "ok", "/healthz still answers");
    assert!(*unavailable.lock().await > 0, "some posts were refused with 503 during the {outage:?} outage");
    let (ready, _) = parley.get("/readyz").await;
    assert_eq!(ready, 200, "ready again");

    // Every accepted message is answered exactly once, in order; nothing else was stored.
    let deadline = Instant::now() + Duration::from_secs(60);
    let accepted = accepted.lock().await.clone();
    for conv in &convs {
        let want = accepted.get(conv).cloned().unwrap_or_default();
        loop {
            let messages = parley.messages(*conv).await;
            let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
            let answers: Vec<&Value> = messages.iter().filter(|m| m["role"] == "assistant").collect();
            let texts: Vec<&str> = users.iter().filter_map(|m| m["content"].as_str()).collect();
            assert_eq!(texts, want, "stored exactly the accepted messages, in order");
            if answers.len() == users.len() {
                for (u, a) in users.iter().zip(&answers) {
                    assert_eq!(a["turn_id"], u["turn_id"], "one answer per message, in order");
                }
                break;
            }
            assert!(answers.len() < users.len(), "duplicated answers");
            assert!(Instant::now() < deadline, "not all answered: {} of {}", answers.len(), users.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let pool = parley_db::connect(&parley_db::DbConfig::new(url)).await.expect("pool");
    let client = pool.get().await.expect("db");
    let open: i64 =
        client.query_one("select count(*) from turn where status <> 'completed'", &[]).await.expect("count").get(0);
    assert_eq!(open, 0, "every turn completed");
    drop(client);
    pool.close();
    // Parley goes before its database.
    drop(parley);
}
