//! The database floor: the least a turn must make durable, run by the same number of
//! concurrent clients straight over tokio-postgres, on Parley's own schema in a scratch
//! database, with `synchronous_commit = on`. Two transactions per turn:
//!
//! 1. insert the user message and its turn, already `running`;
//! 2. insert the assistant message, store the assistant session ID on the session,
//!    and mark the turn `completed`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use tokio::sync::watch;
use uuid::Uuid;

use crate::load::MESSAGE;
use crate::server::connect;

/// The reply the floor stores: as long as a demo reply.
const REPLY: &str =
    "Demo reply to «Benchmark message: please answer briefly.». Demo session 0f3a9c1e has now answered 12 message(s).";

/// The floor's clients.
#[derive(Debug)]
pub struct Floor {
    gate: watch::Sender<bool>,
    /// Turns completed since the start.
    done: Arc<AtomicU64>,
    /// Turns under way now.
    running: Arc<AtomicU64>,
}

const INSERT_MESSAGE: &str = "insert into message (conversation_id, turn_id, role, content, metadata) \
                              values ($1, $2, $3, $4, '{}'::jsonb) returning message_id";
const INSERT_TURN: &str = "insert into turn (turn_id, conversation_id, session_id, user_message_id, status, attempt, \
                           started_at) values ($1, $2, $3, $4, 'running', 1, now())";
const SET_SESSION: &str = "update session set assistant_session_id = $2 where session_id = $1";
const FINISH_TURN: &str = "update turn set status = 'completed', finished_at = now(), lease_until = null \
                           where turn_id = $1 and status = 'running'";

impl Floor {
    /// Creates `clients` conversations with an active session each in the database at
    /// `url`, and one connection per client waiting for the gate.
    ///
    /// # Errors
    /// When the database cannot be reached or set up.
    pub async fn start(url: &str, clients: usize) -> Result<Self> {
        let (gate, _) = watch::channel(false);
        let floor = Self { gate, done: Arc::new(AtomicU64::new(0)), running: Arc::new(AtomicU64::new(0)) };
        for _ in 0..clients {
            let mut client = connect(url).await?;
            client.batch_execute("set synchronous_commit = on").await?;
            let conversation = Uuid::new_v4();
            let session = Uuid::new_v4();
            client
                .execute(
                    "insert into conversation (conversation_id, platform, external_id, assistant) \
                     values ($1, 'web', $2, 'demo')",
                    &[&conversation, &conversation.to_string()],
                )
                .await?;
            client
                .execute(
                    "insert into session (session_id, conversation_id, assistant, transition_reason, owner) \
                     select $1, conversation_id, 'demo', 'first-message', owner from conversation \
                     where conversation_id = $2",
                    &[&session, &conversation],
                )
                .await?;
            let stmts = Stmts {
                insert_message: client.prepare(INSERT_MESSAGE).await?,
                insert_turn: client.prepare(INSERT_TURN).await?,
                set_session: client.prepare(SET_SESSION).await?,
                finish_turn: client.prepare(FINISH_TURN).await?,
            };
            let mut gate = floor.gate.subscribe();
            let done = Arc::clone(&floor.done);
            let running = Arc::clone(&floor.running);
            tokio::spawn(async move {
                loop {
                    if gate.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    running.fetch_add(1, Ordering::SeqCst);
                    let turn = one_turn(&mut client, &stmts, conversation, session).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    match turn {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("floor turn failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        Ok(floor)
    }

    /// Runs the clients for `duration`; returns the turns completed and the exact
    /// window (start, end) over which they completed.
    pub async fn phase(&self, duration: std::time::Duration) -> (u64, Instant, Instant) {
        let before = self.done.load(Ordering::SeqCst);
        let start = Instant::now();
        self.gate.send_replace(true);
        tokio::time::sleep(duration).await;
        let turns = self.done.load(Ordering::SeqCst) - before;
        let end = Instant::now();
        self.gate.send_replace(false);
        while self.running.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        (turns, start, end)
    }

    /// Turns completed so far.
    #[must_use]
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }
}

/// One client's prepared statements.
struct Stmts {
    insert_message: tokio_postgres::Statement,
    insert_turn: tokio_postgres::Statement,
    set_session: tokio_postgres::Statement,
    finish_turn: tokio_postgres::Statement,
}

async fn one_turn(client: &mut tokio_postgres::Client, s: &Stmts, conversation: Uuid, session: Uuid) -> Result<()> {
    let turn = Uuid::new_v4();
    let tx = client.transaction().await?;
    let row = tx.query_one(&s.insert_message, &[&conversation, &Some(turn), &"user", &MESSAGE]).await?;
    let user_message_id: i64 = row.try_get(0)?;
    tx.execute(&s.insert_turn, &[&turn, &conversation, &session, &user_message_id]).await?;
    tx.commit().await?;

    let tx = client.transaction().await?;
    tx.query_one(&s.insert_message, &[&conversation, &Some(turn), &"assistant", &REPLY]).await?;
    tx.execute(&s.set_session, &[&session, &"0f3a9c1e-bench-session"]).await?;
    tx.execute(&s.finish_turn, &[&turn]).await?;
    tx.commit().await?;
    Ok(())
}
