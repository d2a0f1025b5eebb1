//! Where assistants run: every conversation in a directory of its own under one
//! workspace root (`parley serve --workspace-root`).
//!
//! A conversation's directory is `<root>/<conversation id>` unless the client that
//! created it named a subdirectory (`conversation.cwd`), which must be a relative path
//! of plain names: no absolute path, no `..`, and no symbolic link on the way that leads
//! out of the root ([`Workspace::check_request`], answered `400 invalid_cwd`). The same
//! check runs again before every turn ([`Workspace::prepare`]), because a link can
//! appear later (an assistant can make one) and rows written before the root existed may
//! hold absolute paths: a directory that resolves outside the root fails the turn before
//! any assistant process starts. Missing directories are created one level at a time,
//! each checked before the next is made inside it.
//!
//! This confines where a turn starts; it is not a sandbox. An assistant that runs tools
//! can still reach the rest of the file system unless the assistant itself restricts
//! them (Claude `--permission-mode`, `--allowedTools`; Codex `--sandbox`).

use std::io;
use std::path::{Component, Path, PathBuf};

use uuid::Uuid;

/// Longest `cwd` a client may name, in bytes.
pub const MAX_CWD_BYTES: usize = 1024;

/// Why a working directory is refused.
#[derive(Debug, thiserror::Error)]
pub enum CwdError {
    /// Not a relative path of plain names (absolute, `..`, `.`, empty, NUL, too long).
    #[error("{0}")]
    Invalid(String),
    /// The path leads out of the workspace root (through a symbolic link, or an absolute
    /// path stored before the root was enforced).
    #[error("the working directory {} leads out of the workspace root", path.display())]
    Escapes {
        /// The directory as named (relative to the root, or a stored absolute path).
        path: PathBuf,
    },
    /// The server has no workspace root, so it cannot place a named directory.
    #[error("this server has no workspace root, so a conversation cannot name a working directory")]
    NoRoot,
    /// The directory could not be created or read.
    #[error("cannot prepare the working directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The workspace root, canonical (symbolic links resolved), and the directories under it.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// Opens the workspace at `root`, creating it (mode 0700 on Unix) when missing.
    ///
    /// # Errors
    /// The I/O error when it cannot be created or resolved.
    pub fn open(root: &Path) -> io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(root)?;
        Ok(Self { root: root.canonicalize()? })
    }

    /// The root, canonical.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks a working directory named by a client: a relative path of plain names, at
    /// most [`MAX_CWD_BYTES`], whose existing part stays under the root.
    ///
    /// # Errors
    /// [`CwdError::Invalid`] or [`CwdError::Escapes`]; [`CwdError::Io`] when an existing
    /// part cannot be read.
    pub fn check_request(&self, cwd: &str) -> Result<(), CwdError> {
        let relative = relative(cwd)?;
        self.walk(relative, false).map(|_| ())
    }

    /// The directory a turn of conversation `conversation_id` runs in, created when
    /// missing: `<root>/<cwd>`, or `<root>/<conversation id>` without one. An absolute
    /// `cwd` (from before the root was enforced) is accepted only when it lies under the
    /// root. Blocking file system calls: run it off the async threads.
    ///
    /// # Errors
    /// [`CwdError`] when it is not a plain relative path, leads out of the root, or
    /// cannot be created.
    pub fn prepare(&self, conversation_id: Uuid, cwd: Option<&str>) -> Result<PathBuf, CwdError> {
        let id = conversation_id.to_string();
        let relative = match cwd {
            None => Path::new(&id),
            Some(c) if Path::new(c).is_absolute() => {
                Path::new(c).strip_prefix(&self.root).map_err(|_| CwdError::Escapes { path: PathBuf::from(c) })?
            }
            Some(c) => relative(c)?,
        };
        if relative.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(CwdError::Invalid(format!(
                "the working directory {} must be made of plain names (no `..`)",
                relative.display()
            )));
        }
        self.walk(relative, true)
    }

    /// Follows `relative` from the root one name at a time, resolving each existing
    /// part and checking it stays under the root; with `create`, makes missing ones.
    /// Returns the directory (as resolved).
    fn walk(&self, relative: &Path, create: bool) -> Result<PathBuf, CwdError> {
        let mut current = self.root.clone();
        for component in relative.components() {
            current.push(component);
            let io = |source| CwdError::Io { path: current.clone(), source };
            match std::fs::symlink_metadata(&current) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => match std::fs::create_dir(&current) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(e)),
                },
                // Nothing exists from here on, so nothing here can lead elsewhere.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
                Err(e) => return Err(io(e)),
            }
            let resolved = current.canonicalize().map_err(io)?;
            if !resolved.starts_with(&self.root) {
                return Err(CwdError::Escapes { path: relative.to_path_buf() });
            }
            current = resolved;
        }
        if create && !current.is_dir() {
            return Err(CwdError::Invalid(format!("the working directory {} is not a directory", current.display())));
        }
        Ok(current)
    }
}

/// `cwd` as a relative path of plain names.
fn relative(cwd: &str) -> Result<&Path, CwdError> {
    if cwd.trim().is_empty() {
        return Err(CwdError::Invalid("the working directory must not be empty".into()));
    }
    if cwd.len() > MAX_CWD_BYTES {
        return Err(CwdError::Invalid(format!("the working directory must be at most {MAX_CWD_BYTES} bytes")));
    }
    if cwd.contains('\0') {
        return Err(CwdError::Invalid("the working directory must not contain NUL characters".into()));
    }
    let path = Path::new(cwd);
    if path.is_absolute() {
        return Err(CwdError::Invalid(format!(
            "the working directory must be relative to the workspace root, not the absolute path {cwd:?}"
        )));
    }
    if let Some(bad) = path.components().find(|c| !matches!(c, Component::Normal(_))) {
        return Err(CwdError::Invalid(format!(
            "the working directory {cwd:?} must be made of plain names; {:?} is not allowed",
            bad.as_os_str()
        )));
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> Scratch {
        let dir = std::env::temp_dir().join(format!("parley-workspace-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn plain_relative_names_only() {
        let s = scratch();
        let w = Workspace::open(&s.0.join("root")).unwrap();
        assert!(w.check_request("project/sub").is_ok());
        for bad in ["/etc", "/root/../etc", "..", "a/../../b", "./a", "", "  ", "a\0b"] {
            assert!(matches!(w.check_request(bad), Err(CwdError::Invalid(_))), "{bad:?}");
        }
        assert!(matches!(w.check_request(&"a".repeat(MAX_CWD_BYTES + 1)), Err(CwdError::Invalid(_))));
    }

    #[test]
    fn a_symbolic_link_out_of_the_root_is_refused_now_and_later() {
        let s = scratch();
        let w = Workspace::open(&s.0.join("root")).unwrap();
        let outside = s.0.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, w.root().join("out")).unwrap();
        assert!(matches!(w.check_request("out"), Err(CwdError::Escapes { .. })));
        assert!(matches!(w.check_request("out/deeper"), Err(CwdError::Escapes { .. })));
        // Accepted while harmless, refused at run time once the link appears.
        assert!(w.check_request("later").is_ok());
        std::os::unix::fs::symlink(&outside, w.root().join("later")).unwrap();
        assert!(matches!(w.prepare(Uuid::new_v4(), Some("later")), Err(CwdError::Escapes { .. })));
        assert!(!outside.join("deeper").exists(), "nothing was created outside");
        // A link that stays inside is fine.
        std::fs::create_dir_all(w.root().join("real")).unwrap();
        std::os::unix::fs::symlink(w.root().join("real"), w.root().join("alias")).unwrap();
        assert_eq!(w.prepare(Uuid::new_v4(), Some("alias/x")).unwrap(), w.root().join("real/x"));
    }

    #[test]
    fn each_conversation_gets_its_own_directory_and_old_absolute_paths_must_lie_inside() {
        let s = scratch();
        let w = Workspace::open(&s.0.join("root")).unwrap();
        let id = Uuid::new_v4();
        let dir = w.prepare(id, None).unwrap();
        assert_eq!(dir, w.root().join(id.to_string()));
        assert!(dir.is_dir());
        let inside = w.root().join("kept");
        assert_eq!(w.prepare(id, Some(inside.to_str().unwrap())).unwrap(), inside);
        assert!(matches!(w.prepare(id, Some("/etc")), Err(CwdError::Escapes { .. })));
        let sneaky = format!("{}/../escape", w.root().display());
        assert!(w.prepare(id, Some(&sneaky)).is_err());
        assert!(!s.0.join("escape").exists());
    }
}
