//! A local stand-in for the OpenAI Responses and Chat Completions APIs, for trying
//! Parley with the real `codex` CLI (or the `openai` adapters) offline: `cargo run -p
//! parley-test-support --example mock_openai [ADDR]` (default `127.0.0.1:18081`). Point
//! codex at it with a `$CODEX_HOME/config.toml` model provider whose `base_url` is
//! `http://ADDR/v1` and `wire_api = "responses"` (the README shows one). Each
//! request it answers is printed: its path, how many input items it carried and the last
//! user text.

use parley_test_support::mock_anthropic::print_requests_until_ctrl_c;
use parley_test_support::mock_openai::{MockOpenAi, last_user_text};

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    let mock = MockOpenAi::start_on(&addr).await;
    println!("mock OpenAI API on {} (ctrl-c to stop)", mock.url());
    print_requests_until_ctrl_c(
        || mock.requests(),
        |r| {
            let items = r.body["input"].as_array().or_else(|| r.body["messages"].as_array()).map_or(0, Vec::len);
            println!(
                "POST {}: {items} input item(s); last user text: {:?}",
                r.path,
                last_user_text(&r.body).chars().take(300).collect::<String>()
            );
        },
    )
    .await;
}
