//! The `claude` assistant: runs the Claude Code CLI once per turn.
//!
//! Command line (observed with claude-code 2.1.329 and 2.0.77):
//! `claude -p --output-format stream-json --verbose [--include-partial-messages]
//! [--model M] [--permission-mode P] [--allowedTools T…] [--max-turns N]
//! [--append-system-prompt=TEXT] [--resume ID | --session-id UUID]`,
//! with the prompt on stdin, in the conversation's `cwd`, under [`ProcessLimits`], with
//! an explicit environment (see [`crate::process::cli_env`]): `CLAUDE_CONFIG_DIR`,
//! `ANTHROPIC_*` and `CLAUDE_CODE_*` pass, platform secrets do not.
//!
//! Session IDs: a fresh session gets an ID that Parley generates (a UUID v4) and passes
//! with `--session-id` ([`ClaudeConfig::assign_session_id`]; claude-code 2.1.329 then
//! reports that ID in `system/init`, see `tests/fixtures/claude-session-id-new.jsonl`).
//! The run announces it as its first [`Chunk::SessionStarted`] once the CLI has started,
//! before any output, so the orchestrator stores it before the CLI writes its transcript
//! and a Parley crash mid-turn still knows what to resume. When `system/init` reports
//! another ID, a second `SessionStarted` carries the reported one, which wins. A resumed
//! run reports the ID `system/init` gives (emitted as soon as init arrives). An error
//! result after a failed `--resume` echoes the dead ID; it is never reported. Parsing and
//! outcome rules are in [`stream`].
//!
//! A conversation's own settings ([`crate::RunSettings`]) replace the configured
//! `--model` and `--permission-mode` and add `--append-system-prompt`. Values are passed
//! as `--flag=value`, so one starting with `-` cannot be read as another option. The CLI
//! records the system prompt once per session and reuses it on every resume
//! (`--system-prompt-snapshot`, on by default in 2.1.329), so a changed prompt reaches
//! the model only in a fresh session; Parley starts one when it changes.

pub mod stream;
pub mod warm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use futures::stream::BoxStream;
use tracing::warn;
use uuid::Uuid;

use crate::process::{CliProcess, Output, ProcessLimits, ProcessSpec, cli_env};
pub use crate::warm::WarmConfig;
use crate::warm::{WarmPool, WarmProcesses};
use crate::{Assistant, AssistantError, Chunk, Prewarm, RunRequest, RunSettings, Secret, SessionFile, WarmKey};
use std::sync::Arc;
pub use stream::ClaudeStream;
use warm::WarmProcess;

/// Environment name prefixes the Claude CLI inherits from Parley's environment.
pub const CLAUDE_ENV_PREFIXES: &[&str] = &["ANTHROPIC_", "CLAUDE_CODE_", "CLAUDE_CONFIG_DIR"];
/// Single environment names the Claude CLI inherits (besides the base set).
pub const CLAUDE_ENV_NAMES: &[&str] = &["DISABLE_AUTOUPDATER", "DISABLE_TELEMETRY", "DISABLE_ERROR_REPORTING"];

/// The `--permission-mode` choices of claude-code 2.1.329 (`claude --help`), most
/// restrictive first.
pub const CLAUDE_PERMISSION_MODES: &[&str] = &["plan", "dontAsk", "manual", "acceptEdits", "auto", "bypassPermissions"];

/// Settings of the `claude` assistant.
#[derive(Debug, Clone)]
pub struct ClaudeConfig {
    /// The `claude` executable (default: `claude`, looked up on `PATH`).
    pub binary: PathBuf,
    /// `CLAUDE_CONFIG_DIR` for the CLI: where it keeps transcripts. Keep it stable (a
    /// volume) so sessions survive restarts. `None`: inherited, else `~/.claude`.
    pub config_dir: Option<PathBuf>,
    /// `--model`.
    pub model: Option<String>,
    /// `--permission-mode`, one of [`CLAUDE_PERMISSION_MODES`].
    pub permission_mode: Option<String>,
    /// `--allowedTools`, e.g. `Bash(git *)`, `Read`.
    pub allowed_tools: Vec<String>,
    /// `--max-turns`.
    pub max_turns: Option<u32>,
    /// Token streaming: `--include-partial-messages`, text arrives as deltas.
    pub partial_messages: bool,
    /// `ANTHROPIC_API_KEY` for the CLI; `None`: inherited from Parley's environment.
    pub api_key: Option<Secret>,
    /// `ANTHROPIC_BASE_URL` for the CLI; `None`: inherited.
    pub base_url: Option<String>,
    /// More environment variable names the CLI may inherit.
    pub pass_env: Vec<String>,
    /// More arguments, placed before `--resume` / `--session-id`.
    pub extra_args: Vec<String>,
    /// Start fresh sessions with `--session-id <UUID v4>` that Parley generates and
    /// announces before the CLI prints anything (default `true`); `false` leaves the ID
    /// to the CLI and reports it from `system/init` only.
    pub assign_session_id: bool,
    /// Process limits.
    pub limits: ProcessLimits,
    /// Warm processes: one live CLI per active conversation
    /// (`docs/architecture.md#warm-processes`).
    pub warm: WarmConfig,
}

impl Default for ClaudeConfig {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("claude"),
            config_dir: None,
            model: None,
            permission_mode: None,
            allowed_tools: Vec::new(),
            max_turns: None,
            partial_messages: true,
            api_key: None,
            base_url: None,
            pass_env: Vec::new(),
            extra_args: Vec::new(),
            assign_session_id: true,
            limits: ProcessLimits::default(),
            warm: WarmConfig::default(),
        }
    }
}

impl ClaudeConfig {
    /// The CLI arguments for a run with a conversation's `settings` that resumes
    /// `resume`, or starts a fresh session named `session_id` (`--session-id`, a UUID), or
    /// lets the CLI pick one.
    #[must_use]
    pub fn args(&self, settings: &RunSettings, resume: Option<&str>, session_id: Option<&str>) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            ["-p", "--output-format", "stream-json", "--verbose"].iter().map(OsString::from).collect();
        if self.partial_messages {
            args.push("--include-partial-messages".into());
        }
        if let Some(m) = &settings.model {
            args.push(format!("--model={m}").into());
        } else if let Some(m) = &self.model {
            args.extend(["--model".into(), m.into()]);
        }
        if let Some(p) = &settings.permission_mode {
            args.push(format!("--permission-mode={p}").into());
        } else if let Some(p) = &self.permission_mode {
            args.extend(["--permission-mode".into(), p.into()]);
        }
        if !self.allowed_tools.is_empty() {
            args.push("--allowedTools".into());
            args.extend(self.allowed_tools.iter().map(OsString::from));
        }
        if let Some(n) = self.max_turns {
            args.extend(["--max-turns".into(), n.to_string().into()]);
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        if let Some(prompt) = &settings.append_system_prompt {
            args.push(format!("--append-system-prompt={prompt}").into());
        }
        if let Some(id) = resume {
            args.extend(["--resume".into(), id.into()]);
        } else if let Some(id) = session_id {
            args.extend(["--session-id".into(), id.into()]);
        }
        args
    }

    /// The CLI's complete environment, from `vars` (Parley's environment).
    #[must_use]
    pub fn env(&self, vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
        let mut names: Vec<String> = CLAUDE_ENV_NAMES.iter().map(|s| (*s).to_owned()).collect();
        names.extend(self.pass_env.iter().cloned());
        let mut explicit = Vec::new();
        if let Some(dir) = &self.config_dir {
            explicit.push(("CLAUDE_CONFIG_DIR".to_owned(), dir.display().to_string()));
        }
        if let Some(key) = &self.api_key {
            explicit.push(("ANTHROPIC_API_KEY".to_owned(), key.expose().to_owned()));
        }
        if let Some(url) = &self.base_url {
            explicit.push(("ANTHROPIC_BASE_URL".to_owned(), url.clone()));
        }
        cli_env(vars, &names, CLAUDE_ENV_PREFIXES, &explicit)
    }
}

/// The longest project directory name claude-code 2.1.329 uses as is; longer names are
/// cut to this many characters and given a hash suffix ([`project_dir_name`]).
pub const PROJECT_DIR_NAME_MAX: usize = 200;

/// The name of the directory under `$CLAUDE_CONFIG_DIR/projects` where claude-code
/// 2.1.329 keeps the transcripts of sessions run in `cwd` (an absolute path): every
/// UTF-16 code unit of `cwd` that is not an ASCII letter or digit becomes `-`; a name
/// longer than [`PROJECT_DIR_NAME_MAX`] is cut to that length and followed by `-` and
/// the base-36 absolute value of the 32-bit string hash `h = h * 31 + unit` of `cwd`.
/// (From the CLI's bundled JavaScript: `replace(/[^a-zA-Z0-9]/g, "-")`, `slice(0, 200)`,
/// `Math.abs(hash).toString(36)`.)
#[must_use]
pub fn project_dir_name(cwd: &str) -> String {
    let name: String = cwd
        .encode_utf16()
        .map(|u| if u < 128 && (u as u8).is_ascii_alphanumeric() { u as u8 as char } else { '-' })
        .collect();
    if name.len() <= PROJECT_DIR_NAME_MAX {
        return name;
    }
    let hash = cwd.encode_utf16().fold(0_i32, |h, u| h.wrapping_shl(5).wrapping_sub(h).wrapping_add(i32::from(u)));
    format!("{}-{}", &name[..PROJECT_DIR_NAME_MAX], base36(i64::from(hash).unsigned_abs()))
}

/// Where claude-code 2.1.329 keeps the transcript of `assistant_session_id` under its
/// configuration directory when it runs in `cwd` (`None`: Parley's own directory):
/// `projects/<project dir>/<session ID>.jsonl`. The project directory is
/// [`project_dir_name`] of the canonical `cwd` (the CLI names it after its `getcwd`,
/// where links are resolved), or `override_name` (`CLAUDE_CODE_PROJECT_DIR_NAME`, which
/// the CLI obeys only with a configuration directory set) when valid. `None` for a
/// session ID that is not a plain name or a `cwd` that is not UTF-8.
pub(crate) fn transcript_relative(
    assistant_session_id: &str,
    cwd: Option<&Path>,
    override_name: Option<&str>,
) -> Option<PathBuf> {
    if assistant_session_id.is_empty()
        || !assistant_session_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let cwd = match cwd {
        Some(cwd) => cwd.to_path_buf(),
        None => std::env::current_dir().ok()?,
    };
    let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    let dir = match project_dir_override(override_name) {
        Some(name) => name.to_owned(),
        None => project_dir_name(cwd.to_str()?),
    };
    Some(Path::new("projects").join(dir).join(format!("{assistant_session_id}.jsonl")))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[usize::try_from(n % 36).unwrap_or(0)]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The value of `CLAUDE_CODE_PROJECT_DIR_NAME` that claude-code 2.1.329 obeys (only
/// with `CLAUDE_CONFIG_DIR` set): 1 to 64 of `[A-Za-z0-9_-]`, not a reserved Windows
/// device name.
fn project_dir_override(value: Option<&str>) -> Option<&str> {
    let v = value?;
    let valid = (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let lower = v.to_ascii_lowercase();
    let reserved = ["con", "prn", "aux", "nul"].contains(&lower.as_str())
        || ((lower.starts_with("com") || lower.starts_with("lpt"))
            && lower.len() == 4
            && lower.as_bytes()[3].is_ascii_digit());
    (valid && !reserved).then_some(v)
}

/// The `claude` assistant.
#[derive(Debug, Clone, Default)]
pub struct Claude {
    config: ClaudeConfig,
    /// Its warm processes; `None` when [`WarmConfig::max_processes`] is 0.
    warm: Option<Arc<WarmPool<WarmProcess>>>,
}

impl Claude {
    /// A Claude Code assistant with these settings.
    #[must_use]
    pub fn new(config: ClaudeConfig) -> Self {
        let warm = (config.warm.max_processes > 0).then(|| WarmPool::new("claude", config.warm.clone()));
        Self { config, warm }
    }

    /// A run on the conversation's warm process: the idle one when it still fits, else a
    /// new one (a cold start, resuming the session with `--resume`) that is kept after
    /// the turn.
    fn run_warm(
        &self,
        pool: Arc<WarmPool<WarmProcess>>,
        key: WarmKey,
        request: RunRequest,
    ) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        let config = self.config.clone();
        let fingerprint = warm::Fingerprint::of(&config, &request.settings, request.cwd.as_deref());
        let resume = request.resume.clone();
        let unfit = move |p: &mut WarmProcess| p.unfit(&key, &fingerprint, resume.as_deref());
        let assigned = (config.assign_session_id && request.resume.is_none()).then(|| Uuid::new_v4().to_string());
        let (settings, cwd, resume) = (request.settings, request.cwd, request.resume);
        let start = async move { WarmProcess::start(&config, &settings, cwd, resume, assigned).await };
        let (prompt, cancel, run_id) = (request.prompt, request.cancel, request.run_id);
        let turn = move |pool, process| warm::turn(pool, key.conversation_id, process, prompt, cancel, run_id);
        crate::warm::run(pool, key, run_id, unfit, start, turn)
    }

    /// Its settings.
    #[must_use]
    pub fn config(&self) -> &ClaudeConfig {
        &self.config
    }
}

impl Assistant for Claude {
    fn name(&self) -> &str {
        "claude"
    }

    fn permission_modes(&self) -> &'static [&'static str] {
        CLAUDE_PERMISSION_MODES
    }

    /// `CLAUDE_CONFIG_DIR` as the CLI gets it ([`ClaudeConfig::config_dir`], else
    /// Parley's environment), else `$HOME/.claude` (claude-code 2.1.329).
    fn session_home(&self) -> Option<PathBuf> {
        crate::cli_home(self.config.config_dir.as_deref(), "CLAUDE_CONFIG_DIR", ".claude")
    }

    /// `projects/<project dir name>/<session ID>.jsonl` under [`Self::session_home`]: the
    /// project directory is [`project_dir_name`] of the canonical `cwd` (the CLI names it
    /// after its `getcwd`, where links are resolved), or `CLAUDE_CODE_PROJECT_DIR_NAME`
    /// when that is set together with a configuration directory.
    fn session_file(&self, assistant_session_id: &str, cwd: Option<&Path>) -> Option<SessionFile> {
        let configured_dir = self.config.config_dir.is_some() || std::env::var_os("CLAUDE_CONFIG_DIR").is_some();
        let override_name = std::env::var("CLAUDE_CODE_PROJECT_DIR_NAME").ok().filter(|_| configured_dir);
        let relative = transcript_relative(assistant_session_id, cwd, override_name.as_deref())?;
        Some(SessionFile { home: self.session_home()?, relative })
    }

    fn warm(&self) -> Option<Arc<dyn WarmProcesses>> {
        self.warm.clone().map(|pool| pool as Arc<dyn WarmProcesses>)
    }

    fn prewarm(&self, prewarm: Prewarm) -> futures::future::BoxFuture<'static, ()> {
        let Some(pool) = self.warm.clone() else { return Box::pin(std::future::ready(())) };
        let config = self.config.clone();
        let conversation_id = prewarm.conversation_id;
        let assigned = (config.assign_session_id && prewarm.resume.is_none()).then(|| Uuid::new_v4().to_string());
        let start =
            async move { WarmProcess::start(&config, &prewarm.settings, prewarm.cwd, prewarm.resume, assigned).await };
        Box::pin(pool.prewarm(conversation_id, start))
    }

    fn run(&self, mut request: RunRequest) -> BoxStream<'static, Result<Chunk, AssistantError>> {
        if let (Some(pool), Some(key)) = (self.warm.clone(), request.warm.take()) {
            return self.run_warm(pool, key, request);
        }
        let assigned = (self.config.assign_session_id && request.resume.is_none()).then(|| Uuid::new_v4().to_string());
        let spec = ProcessSpec {
            program: self.config.binary.clone(),
            args: self.config.args(&request.settings, request.resume.as_deref(), assigned.as_deref()),
            cwd: request.cwd.clone(),
            env: self.config.env(std::env::vars_os()),
            stdin: request.prompt,
            limits: self.config.limits.clone(),
            assistant: "claude",
            run_id: request.run_id,
        };
        let resume = request.resume;
        let cancel = request.cancel;
        async_stream::stream! {
            if let Some(cwd) = &spec.cwd
                && let Err(e) = tokio::fs::create_dir_all(cwd).await {
                    warn!(cwd = %cwd.display(), error = %e, "cannot create the conversation's working directory");
                }
            let mut process = match CliProcess::spawn(spec).await {
                Ok(p) => p,
                Err(e) => { yield Err(e); return; }
            };
            let mut parser = match assigned {
                Some(id) => {
                    yield Ok(Chunk::SessionStarted { id: id.clone() });
                    ClaudeStream::with_session_id(id)
                }
                None => ClaudeStream::new(resume),
            };
            loop {
                match process.next(&cancel).await {
                    Ok(Output::Line(line)) => {
                        for chunk in parser.line(&line) {
                            yield Ok(chunk);
                        }
                        if parser.has_result() {
                            break;
                        }
                    }
                    Ok(Output::Oversized { bytes }) => warn!(bytes, "skipped an over-long claude output line"),
                    Ok(Output::Eof) => break,
                    Err(e) => { yield Err(e); return; }
                }
            }
            let exit = process.finish().await;
            yield parser.finish(exit.code, &exit.stderr);
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_conversations_settings_replace_the_configured_ones_as_single_arguments() {
        let config = ClaudeConfig {
            model: Some("sonnet".into()),
            permission_mode: Some("acceptEdits".into()),
            ..ClaudeConfig::default()
        };
        let configured = strings(&config.args(&RunSettings::default(), Some("abc"), None));
        assert!(configured.windows(2).any(|w| w == ["--model", "sonnet"]), "{configured:?}");
        assert!(configured.windows(2).any(|w| w == ["--permission-mode", "acceptEdits"]), "{configured:?}");
        assert!(!configured.iter().any(|a| a.starts_with("--append-system-prompt")), "{configured:?}");

        let settings = RunSettings {
            model: Some("opus".into()),
            append_system_prompt: Some("-p Answer in French.\nAlways.".into()),
            permission_mode: Some("plan".into()),
        };
        let args = strings(&config.args(&settings, Some("abc"), None));
        assert!(args.contains(&"--model=opus".to_owned()), "{args:?}");
        assert!(args.contains(&"--permission-mode=plan".to_owned()), "{args:?}");
        assert!(args.contains(&"--append-system-prompt=-p Answer in French.\nAlways.".to_owned()), "{args:?}");
        assert!(!args.contains(&"sonnet".to_owned()) && !args.contains(&"acceptEdits".to_owned()), "{args:?}");
        assert_eq!(args[args.len() - 2..], ["--resume", "abc"]);
    }

    #[test]
    fn project_directory_names_follow_claude_code() {
        assert_eq!(project_dir_name("/tmp/parley-e2e/work_1.x"), "-tmp-parley-e2e-work-1-x");
        // A character outside the BMP is two UTF-16 units, so two dashes.
        assert_eq!(project_dir_name("/a/\u{1F600}b"), "-a---b");
        assert_eq!(project_dir_name("/a/é"), "-a--");
        // Cut at 200 with the JavaScript string hash, in base 36 (value computed with
        // node: Math.abs(h).toString(36) for h = (h << 5) - h + charCode | 0).
        let long = format!("/{}", "x".repeat(250));
        let name = project_dir_name(&long);
        assert_eq!(name.len(), 200 + 1 + name[201..].len());
        assert!(name.starts_with(&format!("-{}", "x".repeat(199))), "{name}");
        assert_eq!(&name[200..201], "-");
        assert_eq!(&name[201..], JS_HASH_OF_LONG);
    }

    /// `node -e 'let e=0,t="/"+"x".repeat(250);for(let n=0;n<t.length;n++)e=(e<<5)-e+t.charCodeAt(n)|0;console.log(Math.abs(e).toString(36))'`
    const JS_HASH_OF_LONG: &str = "v734pd";

    #[test]
    fn the_project_directory_override_is_checked_like_claude_code_checks_it() {
        assert_eq!(project_dir_override(Some("my-project_1")), Some("my-project_1"));
        assert_eq!(project_dir_override(Some("a/b")), None);
        assert_eq!(project_dir_override(Some("")), None);
        assert_eq!(project_dir_override(Some("COM1")), None);
        assert_eq!(project_dir_override(Some(&"a".repeat(65))), None);
        assert_eq!(project_dir_override(None), None);
    }
}
