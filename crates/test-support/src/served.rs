//! [`Served`]: an axum app serving on a local port until dropped (the mock vendor APIs).

use std::net::SocketAddr;

/// An axum app running on a loopback port; dropping it stops the server.
#[derive(Debug)]
pub(crate) struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// Serves `app` on `addr` (port 0 picks a free one).
    ///
    /// # Panics
    /// When it cannot listen there; `what` names the server in the message.
    pub(crate) async fn start(addr: &str, app: axum::Router, what: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {what}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, task }
    }

    /// `http://ADDR`, no trailing slash.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}
