//! Start-up checks for running in a container: whether Parley runs in one, and whether
//! the directories that must outlive the container (the assistants' config directories,
//! which hold their transcripts, and the workspace root) are on a volume.
//!
//! A directory on the same file system as the container's root (`/`, the container's own
//! writable layer) is lost when the container is recreated: every stored assistant
//! session then goes stale (Parley recovers, but the assistant loses its own context) and
//! the conversations' files are gone. `parley serve` warns about each such directory.
//! The check runs only in a container: on an ordinary host the root file system is
//! where home directories belong, and a warning would be noise.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether this process runs in a container: `setting` `true`/`false` says so
/// (`--in-container`, `PARLEY_IN_CONTAINER`; the image sets `true`); `auto` looks for
/// Docker's `/.dockerenv`, Podman's `/run/.containerenv`, or a `container` environment
/// variable (systemd-nspawn, Podman, LXC).
#[must_use]
pub fn in_container(setting: &str) -> bool {
    match setting {
        "true" => true,
        "false" => false,
        _ => {
            Path::new("/.dockerenv").exists()
                || Path::new("/run/.containerenv").exists()
                || std::env::var_os("container").is_some_and(|v| !v.is_empty())
        }
    }
}

/// The device of `dir`, or of its nearest existing ancestor when it does not exist yet
/// (it will be created on that file system).
fn device(dir: &Path) -> io::Result<u64> {
    let mut at: Option<&Path> = Some(dir);
    while let Some(p) = at {
        match std::fs::metadata(p) {
            Ok(m) => return Ok(m.dev()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => at = p.parent(),
            Err(e) => return Err(e),
        }
    }
    std::fs::metadata("/").map(|m| m.dev())
}

/// True when `dir` lies on the same file system as `/`.
///
/// # Errors
/// When neither `dir` (nor an ancestor) nor `/` can be read.
pub fn on_root_filesystem(dir: &Path) -> io::Result<bool> {
    Ok(device(dir)? == std::fs::metadata("/")?.dev())
}

/// A directory that should be on a volume in a container, with what it holds and the
/// setting that moves it.
#[derive(Debug, Clone)]
pub struct Kept {
    /// What it holds, e.g. "the Claude CLI's config directory (its transcripts)".
    pub what: &'static str,
    /// The directory.
    pub dir: PathBuf,
    /// The flag and variable that choose it.
    pub setting: &'static str,
    /// What losing it means.
    pub loss: &'static str,
}

/// The warnings for the `dirs` that lie on the container's root file system.
#[must_use]
pub fn ephemeral_warnings(dirs: &[Kept]) -> Vec<String> {
    dirs.iter()
        .filter(|k| on_root_filesystem(&k.dir).unwrap_or(false))
        .map(|k| {
            format!(
                "{} {} is on the container's root file system: it is lost when the container is recreated ({}). \
                 Mount a volume there, or point {} at a directory on one",
                k.what,
                k.dir.display(),
                k.loss,
                k.setting
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_counts_where_it_would_be_created() {
        let root = std::fs::metadata("/").map(|m| m.dev()).unwrap_or_default();
        assert_eq!(device(Path::new("/surely/not/here/parley")).ok(), Some(root));
        assert!(on_root_filesystem(Path::new("/")).unwrap_or(false));
        assert!(in_container("true") && !in_container("false"));
    }
}
