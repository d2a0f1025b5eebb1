//! Parley's turn pipeline: ingest, workers, session resolution, prompt building, stream
//! and batch reply modes, commands, and stale-session recovery.
//!
//! ```text
//! ingest ──tx──▶ conversation locked + message(user) + turn(queued) ──wake──▶ workers
//! worker: claim (queued → running, lease) ─▶ resolve session ─▶ restore its file if missing
//!         ─▶ run assistant ─▶ store what its file gained ─▶ finish tx
//! ```
//!
//! [`Orchestrator`] is the handle every surface uses: the web API and the CLI call
//! [`Orchestrator::post_message`] and [`Orchestrator::run_command`], the webhook routes
//! [`Orchestrator::ingest_webhook`], every surface follows turns with
//! [`Orchestrator::follow`], and the binary runs [`Orchestrator::run_workers`].
//!
//! Surfaces read through `parley_db` and write through the orchestrator: messages,
//! commands and settings above, and the rest (creating and deleting conversations,
//! deleting sessions, marking an API token used) in `manage`.
//!
//! Replies reach chat platforms through the [`ReplySink`]s of
//! `parley_platforms`, registered with [`Builder::platforms`]: this crate depends on
//! the platforms, never the reverse.

#![forbid(unsafe_code)]

pub mod command;
mod error;
pub mod export;
mod follow;
pub mod hub;
mod ingest;
mod manage;
pub mod metrics;
pub mod notify;
pub mod prompt;
pub mod retention;
pub mod settings;
pub mod sink;
pub mod transcript;
mod webhook;
mod worker;
pub mod workspace;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use parley_assistant::Assistant;
use parley_db::Pool;
use tokio::sync::Notify;
use uuid::Uuid;

pub use error::OrchestratorError;
pub use ingest::{IdempotencyKey, Ingested, PostMessage, validate_text};
pub use sink::{ReplySink, ReplyStatus, ReplyUpdate};
pub use webhook::WebhookIngested;

/// Settings of the turn pipeline.
#[derive(Debug, Clone)]
pub struct Config {
    /// This replica's worker id, stored on the turns it claims (e.g. `hostname-1`).
    pub worker_id: String,
    /// How many turns this replica runs at once (each in a different conversation).
    pub workers: usize,
    /// How long a claimed turn's lease lasts; extended every third of it while the turn
    /// runs.
    pub lease: Duration,
    /// Budget of the history a rebuilt prompt carries, in estimated tokens (four
    /// characters a token, [`prompt::CHARS_PER_TOKEN`]); see [`prompt::allocate`].
    pub history_budget_tokens: usize,
    /// Maximum number of messages a rebuilt prompt carries.
    pub history_max_messages: usize,
    /// How often a running turn's events are written to the database (a batch per
    /// interval, never a commit per chunk).
    pub event_flush_interval: Duration,
    /// How long an idle worker waits before polling for turns queued by another replica.
    pub idle_poll: Duration,
    /// On shutdown, how long running turns may go on before they are cancelled and
    /// requeued.
    pub shutdown_grace: Duration,
    /// The assistant of new conversations.
    pub default_assistant: String,
    /// How often this replica looks for running turns whose lease expired.
    pub sweep_interval: Duration,
    /// How many times a turn is claimed before an expired lease marks it
    /// `interrupted` instead of requeueing it.
    pub max_attempts: i32,
    /// The longest message accepted by ingest, in characters (Unicode scalar values).
    pub max_message_chars: usize,
    /// How many turns one conversation may have waiting in the queue; a message beyond
    /// that is refused with [`OrchestratorError::TooManyQueued`] (0 = no limit).
    /// Chat commands are never refused, so `/cancel` and `/skip` still work.
    pub max_queued_turns: usize,
    /// The directory every conversation's working directory lies under
    /// ([`workspace::Workspace`]); created at [`Builder::build`]. `None` (library use,
    /// tests): assistants run in the server's own directory and a conversation that
    /// names a working directory fails its turns.
    pub workspace_root: Option<PathBuf>,
    /// The permission modes a conversation may choose (each an assistant's own, see
    /// [`settings`]); default [`settings::DEFAULT_ALLOWED_PERMISSION_MODES`].
    pub allowed_permission_modes: Vec<String>,
    /// How long old rows are kept ([`retention`]).
    pub retention: retention::Retention,
    /// The largest assistant session file (Claude transcript, Codex rollout) kept in
    /// the database, in bytes ([`transcript`]); a larger one is not stored and its
    /// session recovers from history when the file is lost. 0: none is kept.
    pub transcript_max_bytes: u64,
    /// How long other replicas leave a new turn to the replica that holds its
    /// conversation's warm assistant process (`docs/architecture.md#warm-processes`);
    /// zero: no preference.
    pub warm_claim_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_id: "parley".into(),
            workers: 8,
            lease: Duration::from_secs(30),
            history_budget_tokens: 12_000,
            history_max_messages: 200,
            event_flush_interval: Duration::from_millis(100),
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            default_assistant: "demo".into(),
            sweep_interval: Duration::from_secs(5),
            max_attempts: 3,
            max_message_chars: ingest::MAX_MESSAGE_CHARS,
            max_queued_turns: 100,
            workspace_root: None,
            allowed_permission_modes: settings::DEFAULT_ALLOWED_PERMISSION_MODES.map(str::to_owned).to_vec(),
            retention: retention::Retention::default(),
            transcript_max_bytes: transcript::DEFAULT_MAX_BYTES,
            warm_claim_window: Duration::from_millis(200),
        }
    }
}

/// A turn running on this replica.
#[derive(Debug, Clone)]
struct RunningTurn {
    turn_id: Uuid,
    control: worker::TurnControl,
}

pub(crate) struct Inner {
    pool: Pool,
    coordination: Pool,
    config: Config,
    assistants: HashMap<String, Arc<dyn Assistant>>,
    sinks: HashMap<String, Arc<dyn ReplySink>>,
    hub: Arc<hub::EventHub>,
    wake: Notify,
    running: Mutex<HashMap<Uuid, RunningTurn>>,
    notifier: notify::Notifier,
    outbox: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    listen: Option<parley_db::DbConfig>,
    workspace: Option<workspace::Workspace>,
    policy: settings::Policy,
    retention_hook: Option<Arc<dyn retention::RetentionHook>>,
}

/// The pipeline handle; cheap to clone.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("config", &self.inner.config)
            .field("assistants", &self.inner.assistants.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Orchestrator`].
pub struct Builder {
    pool: Pool,
    config: Config,
    assistants: HashMap<String, Arc<dyn Assistant>>,
    sinks: HashMap<String, Arc<dyn ReplySink>>,
    listen: Option<parley_db::DbConfig>,
    coordination: Option<Pool>,
    retention_hook: Option<Arc<dyn retention::RetentionHook>>,
}

impl Builder {
    /// A pool for coordination writes whose loss in a database crash is harmless —
    /// turn claims (an unclaimed turn is simply claimed again), lease extensions and
    /// notifications — typically opened with `synchronous_commit = off`
    /// ([`parley_db::DbConfig::synchronous_commit`]) so they do not wait for a WAL
    /// flush. Conversation data (messages, replies, sessions, events) always goes
    /// through the main pool. Without it, the main pool serves both.
    #[must_use]
    pub fn coordination_pool(mut self, pool: Pool) -> Self {
        self.coordination = Some(pool);
        self
    }

    /// Listens for other replicas' notifications (wake-ups, live events, cancels) on a
    /// dedicated connection to this database while the workers run. Without it the
    /// replica works alone, polling for turns every [`Config::idle_poll`].
    #[must_use]
    pub fn listen(mut self, db: parley_db::DbConfig) -> Self {
        self.listen = Some(db);
        self
    }

    /// Registers an assistant under its [`Assistant::name`].
    #[must_use]
    pub fn assistant(mut self, assistant: Arc<dyn Assistant>) -> Self {
        self.assistants.insert(assistant.name().to_owned(), assistant);
        self
    }

    /// Registers the reply sink of a platform (`telegram`, `slack`, …).
    #[must_use]
    pub fn sink(mut self, platform: &str, sink: Arc<dyn ReplySink>) -> Self {
        self.sinks.insert(platform.to_owned(), sink);
        self
    }

    /// Runs `hook` whenever retention deletes ended sessions ([`retention::RetentionHook`]:
    /// where a store of assistant transcripts deletes its copies).
    #[must_use]
    pub fn retention_hook(mut self, hook: Arc<dyn retention::RetentionHook>) -> Self {
        self.retention_hook = Some(hook);
        self
    }

    /// Registers every reply sink of the configured chat `platforms` and logs how they
    /// are set up (never their secrets; see [`parley_platforms::Platforms::log_configuration`]).
    #[must_use]
    pub fn platforms(mut self, platforms: &parley_platforms::Platforms) -> Self {
        for (platform, sink) in platforms.sinks() {
            self = self.sink(platform.as_str(), sink);
        }
        platforms.log_configuration();
        self
    }

    /// Finishes the orchestrator.
    ///
    /// # Errors
    /// [`OrchestratorError::InvalidInput`] when the default assistant is not registered,
    /// the workspace root cannot be created, or an allowed permission mode is no
    /// registered assistant's.
    pub fn build(self) -> Result<Orchestrator, OrchestratorError> {
        if !self.assistants.contains_key(&self.config.default_assistant) {
            return Err(OrchestratorError::InvalidInput(format!(
                "the default assistant {:?} is not configured",
                self.config.default_assistant
            )));
        }
        let workspace = match &self.config.workspace_root {
            None => None,
            Some(root) => Some(workspace::Workspace::open(root).map_err(|e| {
                OrchestratorError::InvalidInput(format!("cannot create the workspace root {}: {e}", root.display()))
            })?),
        };
        let policy = settings::Policy::new(
            self.assistants.iter().map(|(name, a)| (name.clone(), a.permission_modes())).collect(),
            &self.config.allowed_permission_modes,
            workspace.clone(),
        )?;
        let (notifier, outbox) = notify::Notifier::new();
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                notifier,
                outbox: Mutex::new(Some(outbox)),
                listen: self.listen,
                workspace,
                policy,
                retention_hook: self.retention_hook,
                coordination: self.coordination.unwrap_or_else(|| self.pool.clone()),
                pool: self.pool,
                config: self.config,
                assistants: self.assistants,
                sinks: self.sinks,
                hub: Arc::new(hub::EventHub::default()),
                wake: Notify::new(),
                running: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Orchestrator {
    /// Starts building an orchestrator over a migrated database.
    #[must_use]
    pub fn builder(pool: Pool, config: Config) -> Builder {
        Builder {
            pool,
            config,
            assistants: HashMap::new(),
            sinks: HashMap::new(),
            listen: None,
            coordination: None,
            retention_hook: None,
        }
    }

    /// The connection pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The pipeline settings.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The names of the configured assistants.
    #[must_use]
    pub fn assistant_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.assistants.keys().cloned().collect();
        names.sort();
        names
    }

    /// The workspace, when [`Config::workspace_root`] is set.
    #[must_use]
    pub fn workspace(&self) -> Option<&workspace::Workspace> {
        self.inner.workspace.as_ref()
    }

    /// The directory a turn of `conversation` runs in, created when missing (see
    /// [`workspace::Workspace::prepare`]); `None` without a workspace root and without a
    /// named directory.
    ///
    /// # Errors
    /// [`workspace::CwdError`] when the directory leads out of the root, cannot be
    /// created, or is named while there is no root.
    pub async fn working_directory(
        &self,
        conversation: &parley_db::conversation::Conversation,
    ) -> Result<Option<PathBuf>, workspace::CwdError> {
        let Some(workspace) = self.inner.workspace.clone() else {
            return match conversation.cwd {
                Some(_) => Err(workspace::CwdError::NoRoot),
                None => Ok(None),
            };
        };
        let (id, cwd) = (conversation.conversation_id, conversation.cwd.clone());
        tokio::task::spawn_blocking(move || workspace.prepare(id, cwd.as_deref()))
            .await
            .unwrap_or_else(|e| {
                Err(workspace::CwdError::Io { path: PathBuf::new(), source: std::io::Error::other(e.to_string()) })
            })
            .map(Some)
    }

    /// The live event hub.
    #[must_use]
    pub fn hub(&self) -> &Arc<hub::EventHub> {
        &self.inner.hub
    }

    /// Wakes idle workers here and on the other replicas: a turn may be claimable.
    pub fn wake(&self) {
        self.wake_local();
        self.signal(notify::Signal::Wake);
    }

    /// Wakes one idle worker here (or the next to wait); a worker that claims a turn
    /// wakes another, so a burst of queued turns fans out without a thundering herd.
    fn wake_local(&self) {
        self.inner.wake.notify_one();
    }

    /// Cancels a turn wherever it runs: here at once, elsewhere through a notification
    /// (and, as a fallback, the database flag its worker checks with every lease
    /// extension).
    pub fn cancel(&self, turn_id: Uuid) {
        if !self.cancel_local(turn_id) {
            self.signal(notify::Signal::Cancel { turn_id });
        }
    }

    /// Cancels a turn running on this replica. Returns false when it does not run here.
    pub fn cancel_local(&self, turn_id: Uuid) -> bool {
        let running = self.inner.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.values().find(|r| r.turn_id == turn_id).is_some_and(|r| {
            r.control.cancel();
            true
        })
    }

    /// How many turns run on this replica now.
    #[must_use]
    pub fn running_count(&self) -> usize {
        self.inner.running.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Delays that start at `min` and double up to `max`, without a limit on the number of
/// tries: the backoff of every retry loop here (reconnecting, claiming, finishing).
pub(crate) fn doubling_backoff(min: Duration, max: Duration) -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::new().with_min_delay(min).with_factor(2.0).with_max_delay(max).without_max_times()
}
