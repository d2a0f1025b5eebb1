//! Chaos run for crash recovery and replicas: `scripts/chaos [ITERATIONS]`.
//!
//! The demo assistant streams each reply in six chunks 60 ms apart, so a kill usually
//! lands in the middle of running turns.
//!
//! Two `parley serve` replicas share one fresh database. Each iteration sends messages
//! to four conversations through both replicas (a client that cannot reach one replica
//! sends to the other, as a load balancer would), kills one replica with SIGKILL at a
//! random moment, restarts it, and waits until every accepted message is answered. It
//! then counts, over the whole database: messages sent and accepted, answered (exactly
//! one reply), lost (accepted but never answered), duplicated (answered more than once),
//! and the longest time from a kill until everything accepted was answered.
//!
//! Needs the release binary (`cargo build --release`) and PostgreSQL as for the tests.

use std::time::{Duration, Instant};

use parley_test_support::TestDb;
use parley_test_support::process::Parley;
use uuid::Uuid;

const CONVERSATIONS: usize = 4;
const MESSAGES_PER_ITERATION: usize = 16;

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn start(bin: &str, db: &TestDb, name: &str) -> Parley {
    Parley::start(
        bin,
        &db.url(),
        name,
        &["--demo-chunk-delay-ms", "60", "--sweep-interval-secs", "1", "--lease-secs", "5"],
    )
}

#[tokio::main]
async fn main() {
    let iterations: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let bin = std::env::var("PARLEY_BIN").unwrap_or_else(|_| "target/release/parley".into());
    let db = TestDb::new().await;
    let names = ["chaos-a", "chaos-b"];
    let mut replicas = [Some(start(&bin, &db, names[0])), Some(start(&bin, &db, names[1]))];
    let mut rng = Rng(u64::from(std::process::id()) | 1 << 40 | Instant::now().elapsed().subsec_nanos() as u64);
    let (mut sent, mut accepted) = (0usize, 0usize);
    let mut max_recovery = Duration::ZERO;
    let mut accepted_turns: Vec<Uuid> = Vec::new();

    for iteration in 1..=iterations {
        let convs: Vec<Uuid> = {
            let r = replicas[0].as_ref().or(replicas[1].as_ref()).expect("a replica");
            futures::future::join_all((0..CONVERSATIONS).map(|_| r.create_conversation())).await
        };
        let victim = rng.next(2) as usize;
        let kill_at = rng.next(MESSAGES_PER_ITERATION as u64) as usize;
        let mut killed_at = None;
        for i in 0..MESSAGES_PER_ITERATION {
            if i == kill_at {
                if let Some(p) = replicas[victim].take() {
                    p.kill9();
                }
                killed_at = Some(Instant::now());
            }
            let conv = convs[i % CONVERSATIONS];
            let text = format!("iteration {iteration} message {i}");
            sent += 1;
            let first = (i + iteration) % 2;
            for target in [first, 1 - first] {
                if let Some(r) = &replicas[target] {
                    let (status, body) = r.post(conv, &text).await;
                    if status == 202 {
                        accepted += 1;
                        accepted_turns.push(body["turn_id"].as_str().and_then(|t| t.parse().ok()).expect("turn id"));
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.next(40))).await;
        }
        let sent_after = killed_at.map(|k| k.elapsed()).unwrap_or_default();
        // The killed replica comes back, as a supervisor would restart it.
        replicas[victim] = Some(start(&bin, &db, names[victim]));
        let restarted_after = killed_at.map(|k| k.elapsed()).unwrap_or_default();
        // Recovered when every accepted turn has finished.
        let client = db.pool.get().await.expect("db");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let open: i64 = client
                .query_one("select count(*) from turn where status in ('queued', 'running')", &[])
                .await
                .expect("count")
                .get(0);
            if open == 0 {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("iteration {iteration}: {open} turns still open after 120 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let recovery = killed_at.map(|k| k.elapsed()).unwrap_or_default();
        max_recovery = max_recovery.max(recovery);
        println!(
            "iteration {iteration}: killed {}; sends done {:.2} s, restarted {:.2} s, all answered {:.2} s after the kill",
            names[victim],
            sent_after.as_secs_f64(),
            restarted_after.as_secs_f64(),
            recovery.as_secs_f64()
        );
    }

    let client = db.pool.get().await.expect("db");
    let mut answered = 0usize;
    let mut lost = 0usize;
    let mut duplicated = 0usize;
    for turn in &accepted_turns {
        let row = client
            .query_one(
                "select (select count(*) from message where turn_id = $1 and role = 'user'), \
                        (select count(*) from message where turn_id = $1 and role = 'assistant' \
                            and not coalesce((metadata->>'incomplete')::bool, false))",
                &[turn],
            )
            .await
            .expect("counts");
        let (users, answers): (i64, i64) = (row.get(0), row.get(1));
        match (users, answers) {
            (1, 1) => answered += 1,
            (_, 0) | (0, _) => lost += 1,
            _ => duplicated += 1,
        }
    }
    println!();
    println!("iterations:     {iterations}");
    println!("messages sent:  {sent}");
    println!("accepted:       {accepted}");
    println!("answered:       {answered}");
    println!("lost:           {lost}");
    println!("duplicated:     {duplicated}");
    println!("max recovery:   {:.2} s", max_recovery.as_secs_f64());
    drop(replicas);
    if lost > 0 || duplicated > 0 || answered != accepted {
        std::process::exit(1);
    }
}
