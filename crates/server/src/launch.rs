//! One start-up path for a whole Parley replica: [`launch`] takes parsed [`Settings`], a
//! bound listener and a shutdown future, and wires the database pools, migrations, the
//! orchestrator (assistants, platform reply sinks, the notification listener), its
//! workers (with the lease sweeper and retention) and the HTTP server with its timeouts.
//!
//! `parley serve` and every test harness start Parley through it, so they run the same
//! wiring; what a test needs differently (its own assistant, a fake platform clock,
//! short timeouts) is a field of [`Settings`]. Command-line parsing and process-level
//! concerns (logging, exit codes, the container check, the watchdog) stay in the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parley_assistant::Assistant;
use parley_db::{DbConfig, DbError, api_token};
use parley_orchestrator::{Config, Orchestrator, OrchestratorError};
use parley_platforms::{Platforms, PlatformsConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::{Access, AuthMode};
use crate::{AppState, Timeouts};

/// Everything a replica needs, parsed and checked. [`Settings::new`] gives the defaults
/// around a database and the pipeline's [`Config`]; set the other fields directly.
///
/// A new setting of `parley serve` (for example another listener, such as one for
/// metrics) becomes a field here, read in [`launch`].
pub struct Settings {
    /// The database (created when missing). Its `pool_size` is the main pool's size; the
    /// coordination pool gets `orchestrator.workers + 2` connections of its own.
    pub db: DbConfig,
    /// Apply pending migrations before anything else uses the database.
    pub migrate: bool,
    /// The turn pipeline: worker id, workers, lease, limits, workspace root, retention.
    pub orchestrator: Config,
    /// The assistants conversations may use; `orchestrator.default_assistant` must be one
    /// of them.
    pub assistants: Vec<Arc<dyn Assistant>>,
    /// The chat platforms whose webhooks are served and whose reply sinks send
    /// replies (allow-lists already checked); `None`: every webhook answers 404.
    pub platforms: Option<PlatformsConfig>,
    /// The platforms' clock (Unix seconds), against which signed requests' timestamps
    /// are checked; `None`: the system clock.
    pub platform_clock: Option<parley_platforms::Clock>,
    /// Authentication, per-principal limits and CORS of the web API.
    pub access: Access,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Header and body read timeouts.
    pub timeouts: Timeouts,
    /// How long open requests may take to finish once shutdown begins.
    pub drain: Duration,
    /// An admin token stored at start when no admin token exists (see
    /// [`api_token::bootstrap_admin`]).
    pub bootstrap_admin: Option<BootstrapAdmin>,
    /// A bound listener for `GET /metrics` (Prometheus text format, see
    /// [`crate::metrics`]); `None`: no metrics listener and no metrics kept. The
    /// process-wide recorder is installed when it is set, so one process launches at most
    /// one replica with metrics.
    pub metrics: Option<TcpListener>,
}

impl Settings {
    /// Defaults around `db` and `orchestrator`: migrations applied, no assistant, no
    /// platform, [`Access::local`], [`crate::DEFAULT_BODY_LIMIT`], default timeouts, a
    /// five-second drain, no bootstrap token.
    #[must_use]
    pub fn new(db: DbConfig, orchestrator: Config) -> Self {
        Self {
            db,
            migrate: true,
            orchestrator,
            assistants: Vec::new(),
            platforms: None,
            platform_clock: None,
            access: Access::local(),
            body_limit: crate::DEFAULT_BODY_LIMIT,
            timeouts: Timeouts::default(),
            drain: Duration::from_secs(5),
            bootstrap_admin: None,
            metrics: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("migrate", &self.migrate)
            .field("orchestrator", &self.orchestrator)
            .field("assistants", &self.assistants.iter().map(|a| a.name().to_owned()).collect::<Vec<_>>())
            .field("platforms", &self.platforms.is_some())
            .field("access", &self.access)
            .field("body_limit", &self.body_limit)
            .field("timeouts", &self.timeouts)
            .field("drain", &self.drain)
            .field("metrics", &self.metrics.as_ref().and_then(|l| l.local_addr().ok()))
            .finish_non_exhaustive()
    }
}

/// The first admin token, for a server that must start with authentication on and no
/// shell (a container). Checked by the caller; stored hashed, once.
#[derive(Debug)]
pub struct BootstrapAdmin {
    /// The token's principal.
    pub principal: String,
    /// The token.
    pub token: api_token::TokenSecret,
}

/// Why a replica could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// PostgreSQL could not be reached (or the database created).
    #[error("cannot reach PostgreSQL ({0}); is it running? see README")]
    Unreachable(#[source] DbError),
    /// Migrating, connecting or storing the bootstrap token failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The orchestrator's settings are inconsistent (an unknown default assistant, a
    /// workspace root that cannot be created, …).
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    /// The HTTP server failed.
    #[error("server error: {0}")]
    Serve(#[source] std::io::Error),
    /// The HTTP server's task panicked or was cancelled.
    #[error("server task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The metrics recorder could not be installed (one is installed already).
    #[error("{0}")]
    Metrics(String),
}

/// A started replica: its workers run and `listener` is served until the shutdown
/// future given to [`launch`] completes.
#[derive(Debug)]
pub struct Launched {
    orchestrator: Orchestrator,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    running: JoinHandle<Result<(), LaunchError>>,
}

impl Launched {
    /// The replica's turn pipeline (tests drive it directly).
    #[must_use]
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.orchestrator
    }

    /// The address the HTTP server listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address `GET /metrics` is served on, when [`Settings::metrics`] was set.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Waits until the replica has stopped: after the shutdown future completed, the
    /// server stopped accepting, open requests drained (up to [`Settings::drain`]) and
    /// the workers finished or requeued their turns.
    ///
    /// # Errors
    /// [`LaunchError::Serve`] or [`LaunchError::Task`] when the HTTP server failed.
    pub async fn stopped(self) -> Result<(), LaunchError> {
        self.running.await.map_err(LaunchError::Task)?
    }
}

/// Starts a replica on `listener`: creates the database when missing, applies
/// migrations (unless [`Settings::migrate`] is false), opens the main and coordination
/// pools, stores the bootstrap admin token, builds the orchestrator, then runs its
/// workers and the HTTP server in the background until `shutdown` completes. Returns
/// once everything runs; [`Launched::stopped`] waits for the end.
///
/// # Errors
/// [`LaunchError::Unreachable`] when PostgreSQL cannot be reached,
/// [`LaunchError::Db`] when migrating or connecting fails,
/// [`LaunchError::Orchestrator`] for inconsistent orchestrator settings.
pub async fn launch(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Launched, LaunchError> {
    let Settings {
        db,
        migrate,
        orchestrator: config,
        assistants,
        platforms,
        platform_clock,
        access,
        body_limit,
        timeouts,
        drain,
        bootstrap_admin,
        metrics,
    } = settings;
    let local_addr = listener.local_addr().map_err(LaunchError::Serve)?;
    parley_db::ensure_database(&db).await.map_err(LaunchError::Unreachable)?;
    if migrate {
        let report = parley_db::migrate::run(&db).await?;
        if !report.applied.is_empty() {
            info!(applied = ?report.applied, "migrations applied");
        }
    }
    let pool = parley_db::connect(&db).await?;
    if let Some(bootstrap) = bootstrap_admin {
        store_bootstrap_admin(&pool, &bootstrap).await?;
    }
    // Claims, lease extensions and notifications: losing one in a database crash is
    // harmless (the turn is claimed again), so they do not wait for a WAL flush. Each
    // running turn holds one of its connections for its run lock; the server ends a
    // connection idle for three leases, and its locks with it.
    let coordination = parley_db::connect(&DbConfig {
        pool_size: config.workers + 2,
        synchronous_commit: false,
        idle_session_timeout: Some(config.lease.max(Duration::from_secs(1)) * 3),
        ..db.clone()
    })
    .await?;
    if access.config().auth == AuthMode::On {
        let client = pool.get().await.map_err(DbError::from)?;
        if api_token::live_count(&client).await? == 0 {
            warn!(
                "authentication is on and no API token exists: every /api request will answer 401; create one with `parley tokens create --principal NAME`"
            );
        }
    } else {
        info!("authentication is off (--auth off): every request acts as the admin principal `local`");
    }
    let platforms = platforms.map(|config| {
        Arc::new(match platform_clock {
            Some(clock) => Platforms::with_clock(config, clock),
            None => Platforms::new(config),
        })
    });
    let mut builder = Orchestrator::builder(pool, config).listen(db).coordination_pool(coordination);
    if let Some(platforms) = &platforms {
        builder = builder.platforms(platforms);
    }
    for assistant in assistants {
        builder = builder.assistant(assistant);
    }
    let orchestrator = builder.build()?;
    if let Some(workspace) = orchestrator.workspace() {
        info!(root = %workspace.root().display(), "each conversation runs in its own directory under the workspace root");
    }

    let stop = CancellationToken::new();
    // Before the workers start, so that no turn goes uncounted.
    let (metrics_addr, metrics) = match metrics {
        Some(listener) => {
            let addr = listener.local_addr().map_err(LaunchError::Serve)?;
            let task = start_metrics(listener, &orchestrator, platforms.as_deref(), stop.clone())?;
            info!("Prometheus metrics on http://{addr}/metrics");
            (Some(addr), Some(task))
        }
        None => (None, None),
    };
    let workers = {
        let orchestrator = orchestrator.clone();
        let stop = stop.clone();
        tokio::spawn(async move { orchestrator.run_workers(stop).await })
    };
    let state = AppState {
        orchestrator: orchestrator.clone(),
        shutdown: stop.clone(),
        body_limit,
        platforms,
        access,
        timeouts,
    };
    let server = tokio::spawn(crate::serve(listener, state, drain));
    info!("Parley is listening on http://{local_addr}");
    let running = tokio::spawn(async move {
        shutdown.await;
        info!("shutting down");
        stop.cancel();
        let served = server.await;
        let _ = workers.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LaunchError::Serve(e)),
            Err(e) => Err(LaunchError::Task(e)),
        }
    });
    Ok(Launched { orchestrator, local_addr, metrics_addr, running })
}

/// Installs the metrics recorder, describes every metric (with the labels known at
/// start: the assistants and the configured platforms) and serves `GET /metrics` on
/// `listener` until `stop`.
fn start_metrics(
    listener: TcpListener,
    orchestrator: &Orchestrator,
    platforms: Option<&Platforms>,
    stop: CancellationToken,
) -> Result<JoinHandle<std::io::Result<()>>, LaunchError> {
    let handle = crate::metrics::install().map_err(LaunchError::Metrics)?;
    let assistants = orchestrator.assistant_names();
    let assistants: Vec<&str> = assistants.iter().map(String::as_str).collect();
    let configured: Vec<&'static str> = parley_platforms::Platform::ALL
        .into_iter()
        .filter(|p| platforms.is_some_and(|all| all.is_configured(*p)))
        .map(parley_platforms::Platform::as_str)
        .collect();
    parley_orchestrator::metrics::describe(&assistants, &configured);
    Ok(tokio::spawn(crate::metrics::serve(listener, handle, orchestrator.clone(), stop)))
}

/// Stores the bootstrap admin token when no admin token exists, and says what it did.
async fn store_bootstrap_admin(pool: &parley_db::Pool, bootstrap: &BootstrapAdmin) -> Result<(), DbError> {
    let mut client = pool.get().await.map_err(DbError::from)?;
    match api_token::bootstrap_admin(&mut client, &bootstrap.principal, &bootstrap.token).await? {
        api_token::Bootstrap::Created(t) => {
            info!(principal = %t.principal, api_token_id = %t.api_token_id, "stored the bootstrap admin token");
        }
        api_token::Bootstrap::AdminExists => {
            info!("an admin token exists; the bootstrap admin token was not stored (remove it from the configuration)");
        }
        api_token::Bootstrap::AlreadyStored => {
            warn!(
                "the bootstrap admin token was stored before and no live admin token exists: it was revoked, so it \
                   is not stored again; create an admin token with `parley tokens create --admin`"
            );
        }
    }
    Ok(())
}
