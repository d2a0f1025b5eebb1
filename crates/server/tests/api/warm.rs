//! The claim's preference for the replica holding a conversation's warm process
//! (`docs/architecture.md#warm-processes`), seen from a replica that does not hold it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use parley_assistant::{Assistant, AssistantError, Chunk, Demo, RunRequest};
use parley_test_support::TestDb;

use super::{TestApp, fast_demo};

/// The demo assistant, saying it keeps warm processes (it keeps none): its
/// conversations take part in the claim's preference for their holder.
struct WarmDemo(Demo);

impl Assistant for WarmDemo {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn run(&self, request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        self.0.run(request)
    }

    fn keeps_warm(&self) -> bool {
        true
    }
}

/// A conversation held by a replica that is gone is answered once the claim window has
/// passed, not a poll interval later: the worker woken for the turn looks again right
/// after the window.
#[tokio::test]
async fn a_turn_held_by_a_dead_replica_is_taken_when_the_window_has_passed() {
    let window = Duration::from_millis(300);
    let app = TestApp::spawn_as(
        TestDb::new().await,
        fast_demo(),
        parley_server::access::Access::local(),
        parley_server::Timeouts::default(),
        |config| {
            config.warm_claim_window = window;
            // Far longer than the test may take: only a retry after the window answers.
            config.idle_poll = Duration::from_secs(60);
            config.workers = 1;
        },
        |demo| Arc::new(WarmDemo(demo)),
    )
    .await;
    let conversation = app.create_conversation().await;
    let client = app.db.pool.get().await.expect("db");
    client
        .execute(
            "update conversation set warm_worker_id = 'replica-that-died' where conversation_id = $1",
            &[&conversation],
        )
        .await
        .expect("hold");

    let posted = Instant::now();
    let turn = app.send(conversation, "hello").await;
    let done = app.wait_turn(turn).await;
    let waited = posted.elapsed();
    assert_eq!(done["status"], "completed", "{done}");
    assert!(waited >= window, "the holder had its window: {waited:?}");
    assert!(waited < Duration::from_secs(30), "taken after the window, not at the next poll: {waited:?}");
    let holder: Option<String> = client
        .query_one("select warm_worker_id from conversation where conversation_id = $1", &[&conversation])
        .await
        .expect("read")
        .get(0);
    assert_ne!(holder.as_deref(), Some("replica-that-died"), "the taker holds the conversation now");
    app.stop().await;
}
