//! Tests of Parley's assistant adapters: parsers over every captured fixture in
//! `tests/fixtures/` (copied from the real-CLI captures; see its README.md and
//! CAPTURES.tsv), the CLI adapters against fake CLIs, and the HTTP adapters against the
//! mock vendor servers of `parley-test-support`.

#![allow(clippy::unwrap_used)]

mod claude;
mod cli;
mod codex;
mod hostile;
mod openai;

use std::path::{Path, PathBuf};

/// The directory holding the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fixture's text.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// A captured run: stdout, stderr and exit code.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Standard output.
    pub stdout: String,
    /// Standard error, trimmed.
    pub stderr: String,
    /// The exit code.
    pub exit_code: Option<i32>,
}

/// Loads `<name>.jsonl` (+ `<name>.stderr.txt` when present), whose exit code comes from
/// CAPTURES.tsv, or a `.txt` capture with its `# ---- stdout/stderr ----` sections.
pub fn capture(file: &str) -> Capture {
    let exit_code = captured_exit_code(file);
    if file.ends_with(".txt") {
        let text = fixture(file);
        let mut stdout = String::new();
        let mut stderr = String::new();
        let mut section = 0;
        let mut code = exit_code;
        for line in text.lines() {
            if let Some(c) = line.strip_prefix("# exit code: ") {
                code = c.trim().parse().ok();
            } else if line.starts_with("# ---- stdout") {
                section = 1;
            } else if line.starts_with("# ---- stderr") {
                section = 2;
            } else if section == 1 && !line.starts_with("# ") {
                stdout.push_str(line);
                stdout.push('\n');
            } else if section == 2 {
                stderr.push_str(line);
                stderr.push('\n');
            }
        }
        return Capture { stdout, stderr: stderr.trim().to_owned(), exit_code: code };
    }
    let base = file.rsplit_once('.').map_or(file, |(b, _)| b);
    let stderr = std::fs::read_to_string(fixtures_dir().join(format!("{base}.stderr.txt"))).unwrap_or_default();
    Capture { stdout: fixture(file), stderr: stderr.trim().to_owned(), exit_code }
}

/// The exit code CAPTURES.tsv lists for a fixture.
pub fn captured_exit_code(file: &str) -> Option<i32> {
    fixture("CAPTURES.tsv")
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            Some((cols.next()?, cols.nth(1)?))
        })
        .find(|(name, _)| *name == file)
        .and_then(|(_, code)| code.parse().ok())
}

/// Every fixture file whose name starts with `prefix` and is a capture (not stderr).
pub fn fixtures_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix) && !n.ends_with(".stderr.txt") && !n.ends_with(".stdin.jsonl"))
        .collect();
    names.sort();
    names
}
