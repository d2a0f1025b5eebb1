//! A local stand-in for the Anthropic Messages API, for trying Parley with the real
//! `claude` CLI offline: `cargo run -p parley-test-support --example mock_anthropic
//! [ADDR]` (default `127.0.0.1:18080`). Point the CLI at it with
//! `ANTHROPIC_BASE_URL=http://ADDR ANTHROPIC_API_KEY=sk-test`. Each request it answers
//! is printed: how many messages it carried and the last user text, so you can see
//! whether Parley resumed a session or rebuilt the history.

use parley_test_support::mock_anthropic::{MockAnthropic, last_user_text, message_text, print_requests_until_ctrl_c};

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18080".into());
    let mock = MockAnthropic::start_on(&addr).await;
    println!("mock Anthropic Messages API on {} (ctrl-c to stop)", mock.url());
    print_requests_until_ctrl_c(
        || mock.requests(),
        |r| {
            let messages = r.body["messages"].as_array().cloned().unwrap_or_default();
            let texts: Vec<String> = messages.iter().map(message_text).collect();
            println!(
                "POST {}: {} message(s); last user text: {:?}",
                r.path,
                messages.len(),
                last_user_text(&r.body).chars().take(300).collect::<String>()
            );
            if let Some(t) = texts.iter().find(|t| t.contains("<earlier_conversation>")) {
                let from = t.find("<earlier_conversation>").unwrap_or(0);
                let shown: String = t[from..].chars().take(400).collect();
                println!("  the prompt carries Parley's rebuilt history:\n  {}", shown.replace('\n', "\n  "));
            }
        },
    )
    .await;
}
