//! Idle SSE connections: many raw HTTP/1.1 `GET …/events` streams held open without
//! reading, to measure the server's memory per idle follower. A raw socket per stream
//! (no HTTP client state, no task) keeps the bench's own memory and CPU small.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::server::Target;

/// Opens one stream and waits for its `200` response head.
async fn open(target: &Target, conversation: Uuid) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(target.authority()).await.context("connect")?;
    let auth = target.token.as_ref().map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!(
        "GET /api/conversations/{conversation}/events HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n{auth}\r\n",
        target.authority()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n =
            tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await.context("head timeout")??;
        if n == 0 {
            bail!("closed before the response head");
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("SSE answered {}", String::from_utf8_lossy(&head).lines().next().unwrap_or_default());
    }
    Ok(stream)
}

/// Opens one stream per conversation, `parallel` at a time, and returns them.
///
/// # Errors
/// The first stream that cannot be opened.
pub async fn open_many(target: &Target, conversations: &[Uuid], parallel: usize) -> Result<Vec<TcpStream>> {
    futures::stream::iter(conversations.iter().copied())
        .map(|c| open(target, c))
        .buffer_unordered(parallel.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// How many of `streams` the server closed (a zero-byte read).
pub async fn closed_count(streams: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    let mut buf = [0u8; 256];
    for s in streams {
        // Drain what is there without waiting; a 0-byte read means end of stream.
        loop {
            match s.try_read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    closed
}
