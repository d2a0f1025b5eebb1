//! The surfaces' writes besides messages, commands and settings: creating and deleting
//! conversations, deleting ended sessions, and marking an API token used.
//!
//! The rule across Parley's surfaces: they read through `parley_db` and write through
//! the [`Orchestrator`], so every change to a conversation's rows is made where turns
//! are run and cancelled.

use parley_db::api_token::{self, ApiToken};
use parley_db::conversation::{self, Conversation, NewConversation};
use parley_db::{DbError, session, turn};
use uuid::Uuid;

use crate::{Orchestrator, OrchestratorError};

/// How many times [`Orchestrator::delete_conversation`] tries the delete.
const DELETE_ATTEMPTS: u32 = 4;

impl Orchestrator {
    /// Creates a conversation as given (the caller has checked its assistant and
    /// working directory).
    ///
    /// # Errors
    /// [`OrchestratorError::Db`] when the store fails (a constraint on the row included).
    pub async fn create_conversation(&self, new: &NewConversation) -> Result<Conversation, OrchestratorError> {
        let client = self.pool().get().await.map_err(DbError::from)?;
        let created = conversation::create(&client, new).await?;
        // Before the answer, so that its first message finds the process.
        self.prewarm(&created, None).await;
        Ok(created)
    }

    /// Deletes a conversation with its messages, turns, sessions and events. Its running
    /// turn is cancelled wherever it runs (its assistant's processes are killed); whatever
    /// that turn still writes waits for the delete or finds the conversation gone.
    ///
    /// # Errors
    /// [`OrchestratorError::NotFound`] when there is no such conversation;
    /// [`OrchestratorError::Db`] when the store fails.
    pub async fn delete_conversation(&self, conversation_id: Uuid) -> Result<(), OrchestratorError> {
        let mut client = self.pool().get().await.map_err(DbError::from)?;
        if let Some(running) = turn::running(&client, conversation_id).await? {
            self.cancel(running.turn_id);
        }
        // Writers lock the conversation before its child rows, as the delete does, so no
        // deadlock is expected; should PostgreSQL still pick this transaction as a victim,
        // it is meant to be retried.
        let mut attempt = 1;
        loop {
            let deleted: Result<(), DbError> = async {
                let tx = client.transaction().await?;
                conversation::delete(&tx, conversation_id).await?;
                tx.commit().await?;
                Ok(())
            }
            .await;
            match deleted {
                Ok(()) => {
                    // Its warm process here (another replica's goes at its idle timeout).
                    self.forget_warm(conversation_id);
                    return Ok(());
                }
                Err(e @ DbError::Retryable(_)) if attempt < DELETE_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "deleting the conversation lost a race; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(25 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes an ended session. Its turns keep their messages.
    ///
    /// # Errors
    /// [`OrchestratorError::NotFound`] when there is no such session;
    /// [`OrchestratorError::Conflict`] when it is its conversation's active session
    /// (reset the conversation first); [`OrchestratorError::Db`] when the store fails.
    pub async fn delete_session(&self, session_id: Uuid) -> Result<(), OrchestratorError> {
        let client = self.pool().get().await.map_err(DbError::from)?;
        match session::delete(&client, session_id).await {
            Ok(()) => Ok(()),
            Err(DbError::ActiveSession) => Err(OrchestratorError::Conflict(
                "this is the conversation's active session; reset the conversation before deleting it".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The live API token whose SHA-256 is `token_hash`, if any, marked used (see
    /// [`api_token::authenticate`]).
    ///
    /// # Errors
    /// [`OrchestratorError::Db`] when the store fails.
    pub async fn authenticate_token(&self, token_hash: &[u8; 32]) -> Result<Option<ApiToken>, OrchestratorError> {
        let client = self.pool().get().await.map_err(DbError::from)?;
        Ok(api_token::authenticate(&client, token_hash).await?)
    }
}
