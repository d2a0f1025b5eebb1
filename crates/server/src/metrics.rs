//! The metrics listener: `GET /metrics` in Prometheus' text format (version 0.0.4), on
//! a listener of its own (`parley serve --metrics-bind`) so that it is never exposed with
//! the API and needs no API token.
//!
//! [`install`] installs the process-wide Prometheus recorder of
//! `metrics-exporter-prometheus`; [`serve`] answers scrapes until shutdown, setting the
//! gauges read at scrape time first ([`Orchestrator::sample_metrics`]). The metrics
//! themselves are named and described in `parley_orchestrator::metrics`.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parley_orchestrator::Orchestrator;
use parley_orchestrator::metrics::{FIRST_TEXT, TURN_DURATION};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Buckets of the turn duration histogram, in seconds: a demo answer to an hour-long
/// agent run.
const TURN_DURATION_BUCKETS: [f64; 14] =
    [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];
/// Buckets of the POST → first text histogram, in seconds.
const FIRST_TEXT_BUCKETS: [f64; 13] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];
/// How often histograms' recent samples are folded in when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the whole process, with the histograms'
/// buckets; metrics recorded from now on are kept.
///
/// # Errors
/// A message when a recorder is installed already (or the buckets are refused).
pub fn install() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(TURN_DURATION.into()), &TURN_DURATION_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(FIRST_TEXT.into()), &FIRST_TEXT_BUCKETS))
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

#[derive(Clone)]
struct MetricsState {
    handle: PrometheusHandle,
    orchestrator: Orchestrator,
}

/// The metrics listener's router: `GET /metrics`, everything else 404.
pub fn router(handle: PrometheusHandle, orchestrator: Orchestrator) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(MetricsState { handle, orchestrator })
}

/// `GET /metrics`: the scrape-time gauges sampled, then every metric rendered.
async fn scrape(State(state): State<MetricsState>) -> impl IntoResponse {
    state.orchestrator.sample_metrics().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.handle.render())
}

/// Serves [`router`] on `listener` until `shutdown` fires, running the recorder's upkeep
/// (and sampling the pools, see `parley_orchestrator::metrics::run_pool_sampler`)
/// meanwhile.
///
/// # Errors
/// The listener's I/O error.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    orchestrator: Orchestrator,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Ends the helpers when the listener stops, for whatever reason.
    let helpers = shutdown.child_token();
    let upkeep = {
        let handle = handle.clone();
        let stop = helpers.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
                }
            }
        })
    };
    let sampler = tokio::spawn(parley_orchestrator::metrics::run_pool_sampler(orchestrator.clone(), helpers.clone()));
    let served = axum::serve(listener, router(handle, orchestrator))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    helpers.cancel();
    let _ = upkeep.await;
    let _ = sampler.await;
    served
}
