//! The Codex `exec --json` parser over any output (see `parley_fuzz::codex_stream`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::codex_stream(data));
