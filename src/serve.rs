//! `parley serve`: database, migrations, workers and the HTTP server, with graceful
//! shutdown on SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use parley_assistant::{
    Claude, ClaudeConfig, Codex, CodexConfig, Demo, DemoConfig, OpenAi, OpenAiChat, OpenAiChatConfig, OpenAiConfig,
    ProcessLimits, Secret, WarmConfig,
};
use parley_db::api_token;
use parley_orchestrator::Config;
use parley_platforms::{AllowList, Association, Field, Platform};
use parley_server::access::{Access, AccessConfig, AuthMode};
use parley_server::launch::{BootstrapAdmin, Settings};
use tracing::{info, warn};

use crate::Failure;

/// The history budget in tokens: `--history-budget-tokens`, else the deprecated
/// `--history-budget-chars` divided by [`parley_orchestrator::prompt::CHARS_PER_TOKEN`]
/// (with a warning), else the default.
fn history_budget_tokens(tokens: Option<usize>, chars: Option<usize>) -> usize {
    match (tokens, chars) {
        (Some(tokens), Some(_)) => {
            warn!(
                "--history-budget-chars (PARLEY_HISTORY_BUDGET_CHARS) is deprecated and ignored: \
                 --history-budget-tokens is set"
            );
            tokens
        }
        (Some(tokens), None) => tokens,
        (None, Some(chars)) => {
            let tokens = chars.div_ceil(parley_orchestrator::prompt::CHARS_PER_TOKEN);
            warn!(
                "--history-budget-chars (PARLEY_HISTORY_BUDGET_CHARS) is deprecated: set --history-budget-tokens \
                 (PARLEY_HISTORY_BUDGET_TOKENS) instead; {chars} characters are read as {tokens} tokens"
            );
            tokens
        }
        (None, None) => Config::default().history_budget_tokens,
    }
}

/// Options of `parley serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. With `--auth off` it must be a loopback address.
    #[arg(long, env = "PARLEY_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Address of the Prometheus metrics listener (`GET /metrics`, no API token), e.g.
    /// 127.0.0.1:9464. Off by default: no listener and no metrics kept. Anyone who can
    /// reach it reads the counters, so bind it where only the scraper can.
    #[arg(long, env = "PARLEY_METRICS_BIND")]
    metrics_bind: Option<SocketAddr>,
    /// `on`: every /api request needs an API token (`parley tokens create`); `off`: no
    /// tokens, every request acts as the admin principal `local` (loopback only).
    #[arg(long, env = "PARLEY_AUTH", default_value = "on", value_parser = ["on", "off"], overrides_with = "auth")]
    auth: String,
    /// A browser origin allowed to call the API (CORS), e.g. https://chat.example.com;
    /// repeat it for several. None by default: no CORS headers.
    #[arg(long = "cors-origin", env = "PARLEY_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Longest message accepted, in characters.
    #[arg(long, env = "PARLEY_MAX_MESSAGE_CHARS", default_value_t = Config::default().max_message_chars)]
    max_message_chars: usize,
    /// Messages one principal may post per minute on this replica (0 = no limit).
    #[arg(long, env = "PARLEY_RATE_LIMIT_PER_MINUTE", default_value_t = 60)]
    rate_limit_per_minute: u32,
    /// Messages one principal may post in a burst before the per-minute rate applies.
    #[arg(long, env = "PARLEY_RATE_LIMIT_BURST", default_value_t = 20)]
    rate_limit_burst: u32,
    /// Turns one conversation may have waiting before new messages are refused (0 = no limit).
    #[arg(long, env = "PARLEY_MAX_QUEUED_TURNS", default_value_t = 100)]
    max_queued_turns: usize,
    /// The largest assistant session file (Claude transcript, Codex rollout) kept in the
    /// database so another replica can restore it, in bytes (0 = keep none).
    #[arg(long, env = "PARLEY_TRANSCRIPT_MAX_BYTES", default_value_t = Config::default().transcript_max_bytes)]
    transcript_max_bytes: u64,
    /// Milliseconds other replicas leave a new turn to the replica that holds its
    /// conversation's warm assistant process (0: no preference).
    #[arg(long, env = "PARLEY_WARM_CLAIM_WINDOW_MS", default_value_t = 200)]
    warm_claim_window_ms: u64,
    /// Event streams (SSE) one principal may hold open on this replica (0 = no limit).
    #[arg(long, env = "PARLEY_MAX_EVENT_STREAMS", default_value_t = 16)]
    max_event_streams: usize,
    /// The assistant of new conversations: claude, codex, openai, openai-chat or demo.
    /// Default: claude when the `claude` CLI is found, else demo.
    #[arg(long, env = "PARLEY_ASSISTANT", value_parser = ASSISTANTS)]
    assistant: Option<String>,
    #[command(flatten)]
    assistants: Box<AssistantArgs>,
    /// Turns run at once by this replica.
    #[arg(long, env = "PARLEY_WORKERS", default_value_t = 8)]
    workers: usize,
    /// Database connections in the pool.
    #[arg(long, env = "PARLEY_DB_POOL_SIZE", default_value_t = 16)]
    pool_size: usize,
    /// This replica's stable name, stored on the turns it runs; defaults to HOST:PORT.
    #[arg(long, env = "PARLEY_WORKER_ID")]
    worker_id: Option<String>,
    /// Seconds running turns may take to finish at shutdown before being requeued.
    #[arg(long, env = "PARLEY_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
    /// Budget of the history carried into a fresh assistant session, in estimated tokens
    /// (four characters a token). Default 12000.
    #[arg(long, env = "PARLEY_HISTORY_BUDGET_TOKENS")]
    history_budget_tokens: Option<usize>,
    /// Deprecated alias of --history-budget-tokens, in characters (read as a quarter as
    /// many tokens); ignored when --history-budget-tokens is set.
    #[arg(long, env = "PARLEY_HISTORY_BUDGET_CHARS")]
    history_budget_chars: Option<usize>,
    /// Largest request body, in bytes.
    #[arg(long, env = "PARLEY_BODY_LIMIT", default_value_t = parley_server::DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// Demo assistant: milliseconds between streamed chunks (0 = instant).
    #[arg(long, env = "PARLEY_DEMO_CHUNK_DELAY_MS", default_value_t = 80)]
    demo_chunk_delay_ms: u64,
    /// Seconds a running turn's lease lasts; a replica that stops extending it (crash,
    /// lost database) has its turn re-run elsewhere after this long.
    #[arg(long, env = "PARLEY_LEASE_SECS", default_value_t = 30)]
    lease_secs: u64,
    /// Seconds between looks for expired leases.
    #[arg(long, env = "PARLEY_SWEEP_INTERVAL_SECS", default_value_t = 5)]
    sweep_interval_secs: u64,
    /// Claims of one turn before an expired lease marks it interrupted instead of
    /// requeueing it.
    #[arg(long, env = "PARLEY_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: i32,
    /// Do not apply migrations at start.
    #[arg(long, env = "PARLEY_NO_MIGRATE")]
    no_migrate: bool,
    /// Parley's own data directory (the default workspace root lives in it).
    /// Default: $XDG_DATA_HOME/parley, else ~/.local/share/parley.
    #[arg(long, env = "PARLEY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The directory every conversation's working directory lies under (created when
    /// missing): <root>/<conversation id> by default, or the relative directory a client
    /// names. Default: DATA_DIR/workspaces.
    #[arg(long, env = "PARLEY_WORKSPACE_ROOT")]
    workspace_root: Option<PathBuf>,
    /// Seconds a client may take to send a request's headers (also how long an idle
    /// keep-alive connection is kept); slower connections are closed.
    #[arg(long, env = "PARLEY_HEADER_READ_TIMEOUT_SECS", default_value_t = 30)]
    header_read_timeout_secs: u64,
    /// Seconds a request body may pause before the request answers 408.
    #[arg(long, env = "PARLEY_BODY_READ_TIMEOUT_SECS", default_value_t = 30)]
    body_read_timeout_secs: u64,
    #[command(flatten)]
    allow: Box<AllowArgs>,
    /// The permission modes a conversation may choose (PATCH /api/conversations/{id},
    /// `/settings permission_mode`), comma-separated: Claude's `--permission-mode` values
    /// (plan, dontAsk, manual, acceptEdits, auto, bypassPermissions) and Codex's
    /// `--sandbox` values (read-only, workspace-write, danger-full-access). Empty: none.
    #[arg(long, env = "PARLEY_ALLOWED_PERMISSION_MODES", value_delimiter = ',',
          default_values_t = parley_orchestrator::settings::DEFAULT_ALLOWED_PERMISSION_MODES.map(str::to_owned))]
    allowed_permission_modes: Vec<String>,
    #[command(flatten)]
    retention: RetentionArgs,
    #[command(flatten)]
    bootstrap: BootstrapArgs,
    /// Whether Parley runs in a container (auto, true, false). In a container, a start-up
    /// warning names each directory that would be lost with it (the assistants' config
    /// directories, the workspace root). `auto` looks for /.dockerenv, /run/.containerenv
    /// or a `container` variable.
    #[arg(long, env = "PARLEY_IN_CONTAINER", default_value = "auto", value_parser = ["auto", "true", "false"])]
    in_container: String,
}

/// How long old rows are kept (0 = forever); see the README's "Retention".
#[derive(Debug, Args)]
struct RetentionArgs {
    /// Days events (the SSE replay log) are kept; the newest turn's events of each
    /// conversation are always kept.
    #[arg(long, env = "PARLEY_RETAIN_EVENTS_DAYS", default_value_t = 30)]
    retain_events_days: u32,
    /// Days webhook delivery ids and Idempotency-Keys are remembered.
    #[arg(long, env = "PARLEY_RETAIN_DELIVERIES_DAYS", default_value_t = 7)]
    retain_deliveries_days: u32,
    /// Days ended assistant sessions are kept after they ended (each conversation's
    /// newest session is always kept).
    #[arg(long, env = "PARLEY_RETAIN_ENDED_SESSIONS_DAYS", default_value_t = 90)]
    retain_ended_sessions_days: u32,
    /// Seconds between retention passes.
    #[arg(long, env = "PARLEY_RETENTION_INTERVAL_SECS", default_value_t = 600)]
    retention_interval_secs: u64,
}

impl RetentionArgs {
    fn retention(&self) -> parley_orchestrator::retention::Retention {
        use parley_orchestrator::retention::Retention;
        Retention {
            events: Retention::days(self.retain_events_days),
            deliveries: Retention::days(self.retain_deliveries_days),
            ended_sessions: Retention::days(self.retain_ended_sessions_days),
            interval: Duration::from_secs(self.retention_interval_secs.max(1)),
            ..Retention::default()
        }
    }
}

/// The first admin token, for a server that must start with `--auth on` and no shell
/// (a container). Stored (hashed) only while no admin token exists, once: restarts and
/// other replicas store nothing, and a revoked bootstrap token is never stored again.
#[derive(Debug, Args)]
struct BootstrapArgs {
    /// A file holding the token (a Docker or Kubernetes secret); surrounding whitespace
    /// is ignored. At least 32 characters, e.g. `openssl rand -hex 32`.
    #[arg(long, env = "PARLEY_BOOTSTRAP_ADMIN_TOKEN_FILE", conflicts_with = "bootstrap_admin_token")]
    bootstrap_admin_token_file: Option<PathBuf>,
    /// The token itself (prefer the file: a variable shows in `docker inspect`).
    #[arg(long, env = "PARLEY_BOOTSTRAP_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    bootstrap_admin_token: Option<Secret>,
    /// The principal of the bootstrap token.
    #[arg(long, env = "PARLEY_BOOTSTRAP_ADMIN_PRINCIPAL", default_value = "admin")]
    bootstrap_admin_principal: String,
}

/// Shortest bootstrap token accepted, in characters.
const MIN_BOOTSTRAP_TOKEN_CHARS: usize = 32;

impl BootstrapArgs {
    /// The configured token, checked; `None` when none is configured.
    fn token(&self) -> Result<Option<api_token::TokenSecret>, Failure> {
        let (raw, source) = match (&self.bootstrap_admin_token_file, &self.bootstrap_admin_token) {
            (Some(file), _) => (
                std::fs::read_to_string(file).map_err(|e| {
                    Failure::failed(format!("cannot read the bootstrap admin token file {}: {e}", file.display()))
                })?,
                format!("the file {}", file.display()),
            ),
            (None, Some(token)) => (token.expose().to_owned(), "PARLEY_BOOTSTRAP_ADMIN_TOKEN".to_owned()),
            (None, None) => return Ok(None),
        };
        let token = raw.trim();
        if token.chars().count() < MIN_BOOTSTRAP_TOKEN_CHARS || !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(Failure::failed(format!(
                "the bootstrap admin token in {source} must be at least {MIN_BOOTSTRAP_TOKEN_CHARS} printable ASCII \
                 characters without spaces (e.g. `openssl rand -hex 32`)"
            )));
        }
        Ok(Some(api_token::TokenSecret::new(token)))
    }
}

/// The bootstrap admin token and its principal, checked; `None` when none is configured.
fn bootstrap_admin(args: &BootstrapArgs) -> Result<Option<BootstrapAdmin>, Failure> {
    let Some(token) = args.token()? else { return Ok(None) };
    let principal = crate::tokens::parse_principal(&args.bootstrap_admin_principal)
        .map_err(|e| Failure::failed(format!("--bootstrap-admin-principal: {e}")))?;
    Ok(Some(BootstrapAdmin { principal, token }))
}

/// Warns about each directory that would be lost with the container (see [`crate::container`]).
fn check_container_storage(args: &ServeArgs, workspace_root: &Path) {
    const STALE: &str = "every stored session goes stale; Parley answers on from its own history, but the \
                         assistant loses its transcript";
    if !crate::container::in_container(&args.in_container) {
        return;
    }
    let a = &args.assistants;
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut kept = Vec::new();
    if on_path(&a.claude_bin) {
        kept.push(crate::container::Kept {
            what: "the Claude CLI's config directory (its transcripts)",
            dir: a
                .claude_config_dir
                .clone()
                .or_else(|| from_env("CLAUDE_CONFIG_DIR"))
                .unwrap_or_else(|| home.join(".claude")),
            setting: "--claude-config-dir (PARLEY_CLAUDE_CONFIG_DIR)",
            loss: STALE,
        });
    }
    if on_path(&a.codex_bin) {
        kept.push(crate::container::Kept {
            what: "the Codex CLI's home (its rollouts)",
            dir: a.codex_home.clone().or_else(|| from_env("CODEX_HOME")).unwrap_or_else(|| home.join(".codex")),
            setting: "--codex-home (PARLEY_CODEX_HOME)",
            loss: STALE,
        });
    }
    kept.push(crate::container::Kept {
        what: "the workspace root (the conversations' files)",
        dir: workspace_root.to_path_buf(),
        setting: "--workspace-root (PARLEY_WORKSPACE_ROOT) or --data-dir (PARLEY_DATA_DIR)",
        loss: "the files the assistants wrote in the conversations' directories are gone",
    });
    for warning in crate::container::ephemeral_warnings(&kept) {
        warn!("{warning}");
    }
}

/// Who may talk to the bot on each chat platform (see docs/platforms.md). A platform
/// configured without an allow-list makes `parley serve` refuse to start unless its
/// `--<platform>-allow-everyone` is given. Lists are comma-separated; every list that is
/// set must match a message for it to be accepted.
#[derive(Debug, Args)]
struct AllowArgs {
    /// Telegram user IDs allowed to talk to the bot (`message.from.id`).
    #[arg(long, env = "PARLEY_TELEGRAM_ALLOWED_USERS", value_delimiter = ',')]
    telegram_allowed_users: Vec<String>,
    /// Telegram chat IDs the bot answers in (`message.chat.id`; a private chat's ID is its
    /// user's ID; groups are negative).
    #[arg(long, env = "PARLEY_TELEGRAM_ALLOWED_CHATS", value_delimiter = ',', allow_hyphen_values = true)]
    telegram_allowed_chats: Vec<String>,
    /// Answer every Telegram user in every chat.
    #[arg(long, env = "PARLEY_TELEGRAM_ALLOW_EVERYONE")]
    telegram_allow_everyone: bool,
    /// Slack team (workspace) IDs (`T…`); a user of another team in a shared channel is refused.
    #[arg(long, env = "PARLEY_SLACK_ALLOWED_TEAMS", value_delimiter = ',')]
    slack_allowed_teams: Vec<String>,
    /// Slack channel IDs (`C…`, `G…`, `D…`) the bot answers in.
    #[arg(long, env = "PARLEY_SLACK_ALLOWED_CHANNELS", value_delimiter = ',')]
    slack_allowed_channels: Vec<String>,
    /// Slack user IDs (`U…`, `W…`) allowed to talk to the bot.
    #[arg(long, env = "PARLEY_SLACK_ALLOWED_USERS", value_delimiter = ',')]
    slack_allowed_users: Vec<String>,
    /// Answer every Slack user.
    #[arg(long, env = "PARLEY_SLACK_ALLOW_EVERYONE")]
    slack_allow_everyone: bool,
    /// Discord server (guild) IDs; direct messages have none and are refused when this is set.
    #[arg(long, env = "PARLEY_DISCORD_ALLOWED_GUILDS", value_delimiter = ',')]
    discord_allowed_guilds: Vec<String>,
    /// Discord channel IDs the bot answers in.
    #[arg(long, env = "PARLEY_DISCORD_ALLOWED_CHANNELS", value_delimiter = ',')]
    discord_allowed_channels: Vec<String>,
    /// Discord user IDs allowed to talk to the bot.
    #[arg(long, env = "PARLEY_DISCORD_ALLOWED_USERS", value_delimiter = ',')]
    discord_allowed_users: Vec<String>,
    /// Answer every Discord user.
    #[arg(long, env = "PARLEY_DISCORD_ALLOW_EVERYONE")]
    discord_allow_everyone: bool,
    /// GitHub repositories (`owner/name`) the bot answers in.
    #[arg(long, env = "PARLEY_GITHUB_ALLOWED_REPOS", value_delimiter = ',')]
    github_allowed_repos: Vec<String>,
    /// GitHub logins allowed to talk to the bot.
    #[arg(long, env = "PARLEY_GITHUB_ALLOWED_SENDERS", value_delimiter = ',')]
    github_allowed_senders: Vec<String>,
    /// The least trusted GitHub `author_association` answered, in GitHub's order: OWNER,
    /// MEMBER, COLLABORATOR, CONTRIBUTOR, FIRST_TIME_CONTRIBUTOR, FIRST_TIMER, NONE.
    #[arg(long, env = "PARLEY_GITHUB_MIN_ASSOCIATION", value_parser = parse_association)]
    github_min_association: Option<Association>,
    /// Answer every GitHub user on every repository that sends the webhook.
    #[arg(long, env = "PARLEY_GITHUB_ALLOW_EVERYONE")]
    github_allow_everyone: bool,
}

fn parse_association(s: &str) -> Result<Association, String> {
    Association::parse(s)
        .ok_or_else(|| format!("must be one of {}", Association::ALL.map(Association::as_str).join(", ")))
}

impl AllowArgs {
    /// Each platform's allow-list as the flags (or their variables) say.
    fn lists(&self) -> [(Platform, AllowList); 4] {
        let list = |everyone: bool, fields: &[(Field, &Vec<String>)]| {
            let mut list = AllowList { everyone, ..AllowList::default() };
            for (field, values) in fields {
                list = list.allow(*field, values.iter());
            }
            list
        };
        [
            (
                Platform::Telegram,
                list(
                    self.telegram_allow_everyone,
                    &[
                        (Field::TelegramUser, &self.telegram_allowed_users),
                        (Field::TelegramChat, &self.telegram_allowed_chats),
                    ],
                ),
            ),
            (
                Platform::Slack,
                list(
                    self.slack_allow_everyone,
                    &[
                        (Field::SlackTeam, &self.slack_allowed_teams),
                        (Field::SlackChannel, &self.slack_allowed_channels),
                        (Field::SlackUser, &self.slack_allowed_users),
                    ],
                ),
            ),
            (
                Platform::Discord,
                list(
                    self.discord_allow_everyone,
                    &[
                        (Field::DiscordGuild, &self.discord_allowed_guilds),
                        (Field::DiscordChannel, &self.discord_allowed_channels),
                        (Field::DiscordUser, &self.discord_allowed_users),
                    ],
                ),
            ),
            (
                Platform::Github,
                list(
                    self.github_allow_everyone,
                    &[
                        (Field::GithubRepository, &self.github_allowed_repos),
                        (Field::GithubSender, &self.github_allowed_senders),
                    ],
                )
                .min_association(self.github_min_association),
            ),
        ]
    }
}

/// Parley's data directory: the flag, else `$XDG_DATA_HOME/parley` (`~/.local/share/parley`).
fn data_dir(chosen: Option<&Path>) -> Result<PathBuf, Failure> {
    chosen.map(Path::to_path_buf).or_else(|| dirs::data_dir().map(|d| d.join("parley"))).ok_or_else(|| {
        Failure::failed("cannot tell where to keep Parley's data (no HOME nor XDG_DATA_HOME): set --data-dir")
    })
}

/// The assistants `--assistant` accepts.
const ASSISTANTS: [&str; 5] = ["claude", "codex", "openai", "openai-chat", "demo"];

/// Assistant adapters' settings. Every adapter is registered, so conversations that
/// started with another assistant keep working; `--assistant` picks the default.
#[derive(Debug, Args)]
struct AssistantArgs {
    /// The Claude Code CLI.
    #[arg(long, env = "PARLEY_CLAUDE_BIN", default_value = "claude")]
    claude_bin: PathBuf,
    /// CLAUDE_CONFIG_DIR for the Claude CLI (its transcripts); keep it on a volume.
    /// Default: CLAUDE_CONFIG_DIR as inherited, else ~/.claude.
    #[arg(long, env = "PARLEY_CLAUDE_CONFIG_DIR")]
    claude_config_dir: Option<PathBuf>,
    /// Claude `--model`.
    #[arg(long, env = "PARLEY_CLAUDE_MODEL")]
    claude_model: Option<String>,
    /// Claude `--permission-mode` of conversations that choose none (plan, dontAsk,
    /// manual, acceptEdits, auto, bypassPermissions in claude-code 2.1.329).
    #[arg(long, env = "PARLEY_CLAUDE_PERMISSION_MODE")]
    claude_permission_mode: Option<String>,
    /// Claude `--allowedTools`, comma-separated (e.g. `Read,Bash(git *)`).
    #[arg(long, env = "PARLEY_CLAUDE_ALLOWED_TOOLS", value_delimiter = ',')]
    claude_allowed_tools: Vec<String>,
    /// Claude `--max-turns`.
    #[arg(long, env = "PARLEY_CLAUDE_MAX_TURNS")]
    claude_max_turns: Option<u32>,
    /// Stream Claude's reply token by token (`--include-partial-messages`).
    #[arg(long, env = "PARLEY_CLAUDE_PARTIAL_MESSAGES", default_value_t = true, action = clap::ArgAction::Set)]
    claude_partial_messages: bool,
    /// Most warm Claude processes, idle or answering (one live CLI per active
    /// conversation, reused for its next message); the least recently used idle one is
    /// killed first. 0 turns warm processes off: every turn starts its own CLI.
    #[arg(long, env = "PARLEY_CLAUDE_WARM_PROCESSES", default_value_t = 32)]
    claude_warm_processes: usize,
    /// Seconds a warm Claude process may wait for its conversation's next message.
    #[arg(long, env = "PARLEY_CLAUDE_WARM_IDLE_SECS", default_value_t = 600)]
    claude_warm_idle_secs: u64,
    /// Most resident memory of all warm Claude processes together, in MiB (from /proc);
    /// over it the least recently used idle ones are killed. 0: no ceiling.
    #[arg(long, env = "PARLEY_CLAUDE_WARM_MAX_RSS_MB", default_value_t = 8192)]
    claude_warm_max_rss_mb: u64,
    /// Most warm Codex processes, idle or answering (one live `codex app-server` per
    /// active conversation, reused for its next message); the least recently used idle
    /// one is killed first. 0 turns warm processes off: every turn runs `codex exec`.
    #[arg(long, env = "PARLEY_CODEX_WARM_PROCESSES", default_value_t = 32)]
    codex_warm_processes: usize,
    /// Seconds a warm Codex process may wait for its conversation's next message.
    #[arg(long, env = "PARLEY_CODEX_WARM_IDLE_SECS", default_value_t = 600)]
    codex_warm_idle_secs: u64,
    /// Most resident memory of all warm Codex processes together, in MiB (from /proc);
    /// over it the least recently used idle ones are killed. 0: no ceiling.
    #[arg(long, env = "PARLEY_CODEX_WARM_MAX_RSS_MB", default_value_t = 8192)]
    codex_warm_max_rss_mb: u64,
    /// The Codex CLI.
    #[arg(long, env = "PARLEY_CODEX_BIN", default_value = "codex")]
    codex_bin: PathBuf,
    /// CODEX_HOME for the Codex CLI (config and rollouts); keep it on a volume.
    /// Default: CODEX_HOME as inherited, else ~/.codex.
    #[arg(long, env = "PARLEY_CODEX_HOME")]
    codex_home: Option<PathBuf>,
    /// Codex `--model`.
    #[arg(long, env = "PARLEY_CODEX_MODEL")]
    codex_model: Option<String>,
    /// Codex `--sandbox` (read-only, workspace-write, danger-full-access).
    #[arg(long, env = "PARLEY_CODEX_SANDBOX")]
    codex_sandbox: Option<String>,
    /// OpenAI Responses API base URL (up to /v1).
    #[arg(long, env = "PARLEY_OPENAI_BASE_URL", default_value = "https://api.openai.com/v1")]
    openai_base_url: String,
    /// OpenAI API key (never logged).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    openai_api_key: Option<Secret>,
    /// OpenAI model.
    #[arg(long, env = "PARLEY_OPENAI_MODEL", default_value = "gpt-5")]
    openai_model: String,
    /// Chat Completions base URL (up to /v1): Ollama, vLLM, llama.cpp…
    #[arg(long, env = "PARLEY_OPENAI_CHAT_BASE_URL", default_value = "http://127.0.0.1:11434/v1")]
    openai_chat_base_url: String,
    /// Chat Completions API key (never logged).
    #[arg(long, env = "PARLEY_OPENAI_CHAT_API_KEY", hide_env_values = true, value_parser = parse_secret)]
    openai_chat_api_key: Option<Secret>,
    /// Chat Completions model.
    #[arg(long, env = "PARLEY_OPENAI_CHAT_MODEL", default_value = "llama3.2")]
    openai_chat_model: String,
    /// Seconds an assistant may stay silent before its turn fails.
    #[arg(long, env = "PARLEY_ASSISTANT_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    assistant_idle_timeout_secs: u64,
    /// Seconds an assistant turn may take in total.
    #[arg(long, env = "PARLEY_ASSISTANT_TIMEOUT_SECS", default_value_t = 3600)]
    assistant_timeout_secs: u64,
}

#[allow(clippy::unnecessary_wraps)]
fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

impl AssistantArgs {
    fn idle(&self) -> Duration {
        Duration::from_secs(self.assistant_idle_timeout_secs)
    }

    fn total(&self) -> Duration {
        Duration::from_secs(self.assistant_timeout_secs)
    }

    fn limits(&self) -> ProcessLimits {
        ProcessLimits { idle_timeout: self.idle(), total_timeout: self.total(), ..ProcessLimits::default() }
    }

    fn claude(&self) -> ClaudeConfig {
        ClaudeConfig {
            binary: self.claude_bin.clone(),
            config_dir: self.claude_config_dir.clone(),
            model: self.claude_model.clone(),
            permission_mode: self.claude_permission_mode.clone(),
            allowed_tools: self.claude_allowed_tools.clone(),
            max_turns: self.claude_max_turns,
            partial_messages: self.claude_partial_messages,
            limits: self.limits(),
            warm: warm(self.claude_warm_processes, self.claude_warm_idle_secs, self.claude_warm_max_rss_mb),
            ..ClaudeConfig::default()
        }
    }

    fn codex(&self) -> CodexConfig {
        CodexConfig {
            binary: self.codex_bin.clone(),
            home: self.codex_home.clone(),
            model: self.codex_model.clone(),
            sandbox: self.codex_sandbox.clone(),
            limits: self.limits(),
            warm: warm(self.codex_warm_processes, self.codex_warm_idle_secs, self.codex_warm_max_rss_mb),
            ..CodexConfig::default()
        }
    }

    fn openai(&self) -> OpenAiConfig {
        OpenAiConfig {
            base_url: self.openai_base_url.clone(),
            api_key: self.openai_api_key.clone(),
            model: self.openai_model.clone(),
            idle_timeout: self.idle(),
            total_timeout: self.total(),
            ..OpenAiConfig::default()
        }
    }

    fn openai_chat(&self) -> OpenAiChatConfig {
        OpenAiChatConfig {
            base_url: self.openai_chat_base_url.clone(),
            api_key: self.openai_chat_api_key.clone(),
            model: self.openai_chat_model.clone(),
            idle_timeout: self.idle(),
            total_timeout: self.total(),
            ..OpenAiChatConfig::default()
        }
    }
}

/// Warm-process limits from the flags: a process count, idle seconds (at least 1) and a
/// memory ceiling in MiB.
fn warm(max_processes: usize, idle_secs: u64, max_rss_mb: u64) -> WarmConfig {
    WarmConfig {
        max_processes,
        idle_timeout: Duration::from_secs(idle_secs.max(1)),
        max_rss_bytes: max_rss_mb.saturating_mul(1024 * 1024),
        ..WarmConfig::default()
    }
}

/// True when `program` names an executable file (a path, or a name on `PATH`).
fn on_path(program: &Path) -> bool {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program);
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// The default assistant and why it was chosen.
fn select_assistant(chosen: Option<&str>, claude_bin: &Path) -> (String, String) {
    match chosen {
        Some(name) => (name.to_owned(), "chosen with --assistant / PARLEY_ASSISTANT".into()),
        None if on_path(claude_bin) => ("claude".into(), format!("`{}` was found", claude_bin.display())),
        None => ("demo".into(), format!("`{}` was not found on PATH", claude_bin.display())),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only ctrl-c stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Runs the server until a shutdown signal.
pub async fn run(mut db: parley_db::DbConfig, args: ServeArgs) -> Result<(), Failure> {
    let auth = if args.auth == "off" { AuthMode::Off } else { AuthMode::On };
    if auth == AuthMode::Off && !args.bind.ip().is_loopback() {
        return Err(Failure::failed(format!(
            "refusing to serve on {} with --auth off: anyone who can reach it could read and drive every \
             conversation. Bind a loopback address (127.0.0.1) or use --auth on with API tokens \
             (`parley tokens create --principal NAME`)",
            args.bind
        )));
    }
    let access = Access::new(AccessConfig {
        auth,
        messages_per_minute: args.rate_limit_per_minute,
        message_burst: args.rate_limit_burst,
        max_event_streams: args.max_event_streams,
        cors_origins: args.cors_origins.clone(),
        ..AccessConfig::default()
    })
    .map_err(|e| Failure::failed(e.to_string()))?;
    // Who may talk to each platform's bot is settled before anything starts.
    let mut platforms_config = parley_platforms::PlatformsConfig::from_env()
        .map_err(|e| Failure::failed(format!("invalid platform configuration: {e}")))?;
    for (platform, list) in args.allow.lists() {
        platforms_config.set_allow_list(platform, list);
    }
    platforms_config.check_allow_lists().map_err(|e| Failure::failed(e.to_string()))?;
    let data_dir = data_dir(args.data_dir.as_deref())?;
    let workspace_root = args.workspace_root.clone().unwrap_or_else(|| data_dir.join("workspaces"));
    let bootstrap = bootstrap_admin(&args.bootstrap)?;
    check_container_storage(&args, &workspace_root);
    db.pool_size = args.pool_size;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| Failure::failed(format!("cannot listen on {}: {e}", args.bind)))?;
    let local = listener.local_addr().map_err(|e| Failure::failed(e.to_string()))?;
    let metrics = match args.metrics_bind {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::failed(format!("cannot listen for metrics on {addr}: {e}")))?,
        ),
        None => None,
    };
    let (assistant, why) = select_assistant(args.assistant.as_deref(), &args.assistants.claude_bin);
    let config = Config {
        worker_id: args.worker_id.unwrap_or_else(|| format!("{}:{}", hostname(), local.port())),
        workers: args.workers,
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        history_budget_tokens: history_budget_tokens(args.history_budget_tokens, args.history_budget_chars),
        default_assistant: assistant.clone(),
        lease: Duration::from_secs(args.lease_secs.max(1)),
        sweep_interval: Duration::from_secs(args.sweep_interval_secs.max(1)),
        max_attempts: args.max_attempts.max(1),
        max_message_chars: args.max_message_chars.max(1),
        max_queued_turns: args.max_queued_turns,
        transcript_max_bytes: args.transcript_max_bytes,
        warm_claim_window: Duration::from_millis(args.warm_claim_window_ms),
        workspace_root: Some(workspace_root),
        allowed_permission_modes: args.allowed_permission_modes.iter().filter(|m| !m.is_empty()).cloned().collect(),
        retention: args.retention.retention(),
        ..Config::default()
    };
    info!(assistant = %assistant, %why, worker_id = %config.worker_id, "assistant selected");
    let demo =
        Demo::new(DemoConfig { chunk_delay: Duration::from_millis(args.demo_chunk_delay_ms), ..DemoConfig::default() });
    let a = &args.assistants;
    let settings = Settings {
        migrate: !args.no_migrate,
        assistants: vec![
            Arc::new(demo),
            Arc::new(Claude::new(a.claude())),
            Arc::new(Codex::new(a.codex())),
            Arc::new(OpenAi::new(a.openai())),
            Arc::new(OpenAiChat::new(a.openai_chat())),
        ],
        platforms: Some(platforms_config),
        access,
        body_limit: args.body_limit,
        timeouts: parley_server::Timeouts {
            header_read: Duration::from_secs(args.header_read_timeout_secs.max(1)),
            body_read: Duration::from_secs(args.body_read_timeout_secs.max(1)),
        },
        bootstrap_admin: bootstrap,
        metrics,
        ..Settings::new(db, config)
    };

    // Held until this function returns; the process's end closes it whatever the cause.
    let _watchdog = crate::watchdog::start();
    let launched = parley_server::launch(settings, listener, shutdown_signal()).await?;
    if let Some(addr) = launched.metrics_addr() {
        println!("Parley serves metrics on http://{addr}/metrics");
    }
    println!("Parley is listening on http://{local}  (stop with ctrl-c)");
    Ok(launched.stopped().await?)
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, FromArgMatches as _};

    use super::*;

    /// The allow-list flags are spelled once here and once in `parley_platforms::allow`
    /// (which names them in its refusal message): they must agree.
    #[test]
    fn allow_list_flags_and_variables_match_the_platforms_crate() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let arg = |flag: &str| {
            command.get_arguments().find(|a| a.get_long() == Some(flag)).unwrap_or_else(|| panic!("no --{flag}"))
        };
        let env = |flag: &str| arg(flag).get_env().map(|e| e.to_string_lossy().into_owned());
        for field in Field::ALL {
            assert_eq!(env(field.flag()).as_deref(), Some(field.env()), "--{}", field.flag());
        }
        for platform in [Platform::Telegram, Platform::Slack, Platform::Discord, Platform::Github] {
            let flag = parley_platforms::allow::allow_everyone_flag(platform).unwrap_or_default();
            assert_eq!(env(flag).as_deref(), parley_platforms::allow::allow_everyone_env(platform), "--{flag}");
        }
        assert_eq!(
            env(parley_platforms::allow::GITHUB_MIN_ASSOCIATION_FLAG).as_deref(),
            Some(parley_platforms::allow::GITHUB_MIN_ASSOCIATION_ENV)
        );
    }

    #[test]
    fn the_history_budget_in_characters_is_a_deprecated_alias_of_the_one_in_tokens() {
        assert_eq!(history_budget_tokens(None, None), 12_000);
        assert_eq!(history_budget_tokens(Some(3_000), None), 3_000);
        assert_eq!(
            history_budget_tokens(None, Some(48_001)),
            12_001,
            "characters are read as a quarter as many tokens"
        );
        assert_eq!(history_budget_tokens(Some(3_000), Some(48_000)), 3_000, "the new flag wins");
        let parsed = |argv: &[&str]| {
            let command = ServeArgs::augment_args(clap::Command::new("serve").no_binary_name(true));
            let matches = command.try_get_matches_from(argv).expect("parsed");
            ServeArgs::from_arg_matches(&matches).expect("args")
        };
        let old = parsed(&["--history-budget-chars", "8000"]);
        assert_eq!(history_budget_tokens(old.history_budget_tokens, old.history_budget_chars), 2_000);
        let new = parsed(&["--history-budget-tokens", "500"]);
        assert_eq!(history_budget_tokens(new.history_budget_tokens, new.history_budget_chars), 500);
    }
}
