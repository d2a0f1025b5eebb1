//! A throwaway PostgreSQL cluster, for tests that stop and start the database server:
//! created with `initdb` (Debian's `/usr/lib/postgresql/VERSION/bin`, the newest
//! version, or the directory in `PARLEY_TEST_PG_BIN`) in a new temporary directory,
//! listening on a free loopback port with trust authentication, run as the `postgres`
//! user when the tests run as root (PostgreSQL refuses to run as root), and stopped and
//! removed when dropped — also when the test fails. The machine's own clusters are
//! never touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why a cluster could not be had.
#[derive(Debug)]
pub enum ClusterError {
    /// PostgreSQL's server binaries are not installed: the test cannot run here.
    Missing(String),
    /// They are, but creating or starting the cluster failed.
    Failed(String),
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(why) | Self::Failed(why) => f.write_str(why),
        }
    }
}

/// A running throwaway cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// `runuser -u postgres --` before every command (when running as root).
    as_postgres: bool,
}

/// The directory of `initdb` and `pg_ctl`.
fn server_bin() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PARLEY_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !dir.join("initdb").exists() {
            return Err(ClusterError::Missing(format!("no initdb in PARLEY_TEST_PG_BIN={}", dir.display())));
        }
        return Ok(dir);
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").map_err(|e| {
        ClusterError::Missing(format!("PostgreSQL's server binaries are not installed (/usr/lib/postgresql: {e})"))
    })?;
    let mut found: Vec<(u32, PathBuf)> = versions
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| ClusterError::Missing("no initdb under /usr/lib/postgresql/*/bin".into()))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `id -u NAME` / `id -g NAME`.
fn id_of(flag: &str, user: &str) -> Result<u32, ClusterError> {
    let out = Command::new("id").args([flag, user]).output().map_err(|e| ClusterError::Failed(format!("id: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| ClusterError::Failed(format!("running as root needs a `{user}` user to run PostgreSQL")))
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::Failed(e.to_string()))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| ClusterError::Failed(e.to_string()))
}

fn checked(what: &str, out: std::io::Result<Output>) -> Result<(), ClusterError> {
    let out = out.map_err(|e| ClusterError::Failed(format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ClusterError::Failed(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

impl Cluster {
    /// Creates and starts a cluster (a few seconds).
    ///
    /// # Errors
    /// [`ClusterError::Missing`] when `initdb` is not installed, [`ClusterError::Failed`]
    /// when the cluster cannot be created or started (nothing is left behind).
    pub fn start() -> Result<Self, ClusterError> {
        let bin = server_bin()?;
        let as_postgres = is_root();
        let dir =
            std::env::temp_dir().join(format!("parley-pg-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).map_err(|e| ClusterError::Failed(format!("{}: {e}", dir.display())))?;
        // Dropped (and the directory removed) should anything below fail.
        let cluster = Self { bin, dir, port: free_port()?, as_postgres };
        if as_postgres {
            let (uid, gid) = (id_of("-u", "postgres")?, id_of("-g", "postgres")?);
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .map_err(|e| ClusterError::Failed(format!("chown {}: {e}", cluster.dir.display())))?;
        }
        let data = cluster.data();
        checked(
            "initdb",
            cluster
                .command("initdb")
                .args(["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .output(),
        )?;
        cluster.start_again()?;
        Ok(cluster)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// The cluster's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` on this cluster (user `postgres`, trust authentication).
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Where its server log is.
    #[must_use]
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts the server (again) and waits until it accepts connections.
    ///
    /// # Errors
    /// [`ClusterError::Failed`] with `pg_ctl`'s output.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let log = self.log().display().to_string();
        checked(
            "pg_ctl start",
            self.command("pg_ctl")
                .args(["-D", &self.data(), "-o", &options, "-l", &log, "-w", "-t", "60", "start"])
                .output(),
        )
    }

    /// Stops the server (fast shutdown: open connections are ended) and waits for it.
    ///
    /// # Errors
    /// [`ClusterError::Failed`] with `pg_ctl`'s output.
    pub fn stop(&self) -> Result<(), ClusterError> {
        checked("pg_ctl stop", self.command("pg_ctl").args(["-D", &self.data(), "-m", "fast", "-w", "stop"]).output())
    }

    /// The cluster's directory (data, socket, log).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if Path::new(&self.data()).join("postmaster.pid").exists() {
            let _ = self.command("pg_ctl").args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).output();
        }
        if std::thread::panicking() {
            eprintln!(
                "server log of the throwaway PostgreSQL cluster:\n{}",
                std::fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
