//! The discord webhook: verification and parsing of any request (see `parley_fuzz::webhook`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| parley_fuzz::webhook(parley_platforms::Platform::Discord, data));
