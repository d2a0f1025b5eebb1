//! `parley health`: asks a running `parley serve` whether it is ready (`GET /readyz`:
//! the process is up and its database reachable). Exit 0 when it answers 200, 1
//! otherwise. The container image's `HEALTHCHECK` runs it, so no HTTP client needs to be
//! installed in the image.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::Args;

use crate::Failure;

/// Options of `parley health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The server's address, as given to `parley serve --bind`; a wildcard address
    /// (`0.0.0.0`, `::`) is asked on loopback.
    #[arg(long, env = "PARLEY_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 3)]
    timeout_secs: u64,
}

/// The URL of `/readyz` on a server bound to `bind`.
fn readyz_url(bind: SocketAddr) -> String {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, bind.port()))
}

/// Runs `parley health`.
///
/// # Errors
/// Exit code 1 when the server cannot be reached or is not ready.
pub async fn run(args: HealthArgs) -> Result<(), Failure> {
    let url = readyz_url(args.bind);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs.max(1)))
        .build()
        .map_err(|e| Failure::failed(format!("cannot make an HTTP client: {e}")))?;
    let response = client.get(&url).send().await.map_err(|e| Failure::failed(format!("{url}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        println!("ready: {url} answered {status}");
        Ok(())
    } else {
        let body = response.text().await.unwrap_or_default();
        Err(Failure::failed(format!("not ready: {url} answered {status} {}", body.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_asked_on_loopback() {
        let url = |s: &str| readyz_url(s.parse().unwrap_or_else(|_| panic!("{s}")));
        assert_eq!(url("0.0.0.0:8080"), "http://127.0.0.1:8080/readyz");
        assert_eq!(url("[::]:9000"), "http://[::1]:9000/readyz");
        assert_eq!(url("10.1.2.3:80"), "http://10.1.2.3:80/readyz");
    }
}
