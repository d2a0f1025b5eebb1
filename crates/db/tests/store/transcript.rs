//! Kept session files: appended chunk by chunk with a compare-and-set on the stored
//! length, replaced whole, read back in order, and gone with their session or
//! conversation.

use chrono::Utc;
use parley_db::session::{self, NewSession, SessionSettings, Transition};
use parley_db::transcript::{self, Snapshot};
use parley_db::{conversation, retention};
use parley_test_support::TestDb;
use uuid::Uuid;

use super::web_conversation;

fn snapshot<'a>(session_id: Uuid, conversation_id: Uuid, bytes: i64, tail: &'a [u8]) -> Snapshot<'a> {
    Snapshot {
        session_id,
        conversation_id,
        assistant: "claude",
        assistant_session_id: "0b7f7a0e-claude",
        cwd: "/work/w",
        relative_path: "projects/-work-w/0b7f7a0e-claude.jsonl",
        bytes,
        tail_sha256: tail,
        stored_by: "replica-a",
    }
}

async fn session_of(client: &impl parley_db::GenericClient, conversation_id: Uuid) -> Uuid {
    session::start(
        client,
        &NewSession {
            conversation_id,
            assistant: "claude",
            parent_session_id: None,
            reason: Transition::FirstMessage,
            history_from_message_id: 0,
            settings: &SessionSettings::default(),
        },
    )
    .await
    .expect("session")
    .session_id
}

#[tokio::test]
async fn a_kept_file_grows_by_appends_that_check_the_stored_length() {
    let db = TestDb::new().await;
    let client = db.pool.get().await.expect("client");
    let conversation_id = web_conversation(&client, "kept").await;
    let session_id = session_of(&client, conversation_id).await;
    assert_eq!(transcript::get(&client, session_id).await.expect("get"), None);

    transcript::replace(&client, &snapshot(session_id, conversation_id, 6, b"t1"), b"line1\n").await.expect("replace");
    let appended = b"line2\n".repeat(300_000); // over one chunk row
    assert!(
        transcript::append(&client, &snapshot(session_id, conversation_id, 6 + 1_800_000, b"t2"), 6, &appended)
            .await
            .expect("append")
    );
    // A writer that read the old length stores nothing.
    assert!(
        !transcript::append(&client, &snapshot(session_id, conversation_id, 12, b"t3"), 6, b"late\n")
            .await
            .expect("late append")
    );
    let kept = transcript::get(&client, session_id).await.expect("get").expect("kept");
    assert_eq!(
        (kept.bytes, kept.tail_sha256.as_slice(), kept.stored_by.as_str()),
        (1_800_006, &b"t2"[..], "replica-a")
    );
    let chunks: i64 = client
        .query_one("select count(*) from transcript_chunk where session_id = $1", &[&session_id])
        .await
        .expect("count")
        .get(0);
    assert_eq!(chunks, 3, "the first bytes, then the append split at 1 MiB");
    let bytes = transcript::bytes(&client, session_id, kept.bytes).await.expect("bytes").expect("complete");
    assert!(bytes.starts_with(b"line1\nline2\n") && bytes.len() == 1_800_006);
    assert_eq!(transcript::bytes(&client, session_id, kept.bytes + 1).await.expect("bytes"), None, "a short copy");

    // Replaced whole: the old chunks go.
    transcript::replace(&client, &snapshot(session_id, conversation_id, 4, b"t4"), b"new\n").await.expect("replace");
    assert_eq!(transcript::bytes(&client, session_id, 4).await.expect("bytes").as_deref(), Some(&b"new\n"[..]));

    transcript::mark_restored(&client, session_id, "replica-b").await.expect("restored");
    let kept = transcript::get(&client, session_id).await.expect("get").expect("kept");
    assert_eq!((kept.restores, kept.restored_by.as_deref()), (1, Some("replica-b")));
    assert_eq!(transcript::of_sessions(&client, &[session_id, Uuid::new_v4()]).await.expect("of").len(), 1);
}

#[tokio::test]
async fn kept_files_go_with_their_session_and_their_conversation() {
    let db = TestDb::new().await;
    let mut client = db.pool.get().await.expect("client");
    let conversation_id = web_conversation(&client, "retained").await;
    let old = session_of(&client, conversation_id).await;
    transcript::replace(&client, &snapshot(old, conversation_id, 2, b"t"), b"a\n").await.expect("replace");
    session::end(&client, old, Transition::ResetRequested, None).await.expect("end");
    let newest = session_of(&client, conversation_id).await;
    transcript::replace(&client, &snapshot(newest, conversation_id, 2, b"t"), b"b\n").await.expect("replace");

    // Retention of ended sessions takes the old session's copy along.
    let tx = client.transaction().await.expect("tx");
    let deleted =
        retention::delete_ended_sessions(&tx, Utc::now() + chrono::Duration::hours(1), 10).await.expect("retention");
    tx.commit().await.expect("commit");
    assert_eq!(deleted.iter().map(|s| s.session_id).collect::<Vec<_>>(), vec![old]);
    assert_eq!(transcript::get(&client, old).await.expect("get"), None);
    assert!(transcript::get(&client, newest).await.expect("get").is_some());

    // Deleting the conversation takes the rest.
    conversation::delete(&client, conversation_id).await.expect("delete");
    let left: i64 = client
        .query_one("select (select count(*) from transcript) + (select count(*) from transcript_chunk)", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0);
}
