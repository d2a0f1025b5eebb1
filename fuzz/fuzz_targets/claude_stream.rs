//! The Claude Code stream-json parser over any output (see `parley_fuzz::claude_stream`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::claude_stream(data));
