//! Rebuilds the server when a file of the web UI is added, removed or changed: the
//! files are embedded by `rust-embed` (`src/routes/ui.rs`), which Cargo does not see.

fn main() {
    println!("cargo:rerun-if-changed=../../web/index.html");
    println!("cargo:rerun-if-changed=../../web/assets");
}
