//! Holding a claimed turn: the conversation's run lock and the turn's lease, extended
//! while the turn runs, and stopping the turn when either is lost or a cancel arrives.

use std::time::{Duration, Instant};

use parley_db::run_lock::RunLock;
use parley_db::turn::{self, LeaseState, Turn};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Orchestrator;

use super::{StopReason, TurnControl};

impl Orchestrator {
    /// Holds a claimed turn for its worker until `stop`: takes the conversation's run
    /// lock ([`RunLock`]) — waiting up to a lease for a previous run still stopping,
    /// then reporting `false` through `locked` so the turn is requeued — and extends the
    /// turn's lease every third of its length on the lock's connection. Stops the turn
    /// when a cancel was requested through the database, the lease was lost, the lease
    /// ran out before it could be extended, or the lock was lost to another run. Keeps
    /// the lock until `stop` (after the run's processes are gone), then releases it.
    pub(super) async fn keep_turn(
        self,
        t: Turn,
        mut lock: RunLock,
        control: TurnControl,
        stop: CancellationToken,
        locked: oneshot::Sender<bool>,
    ) {
        let lease = self.config().lease;
        let worker_id = self.config().worker_id.clone();
        let mut locked = Some(locked);
        let claimed_at = Instant::now();
        let mut extended_at = claimed_at;
        let mut next_extension = claimed_at + lease / 3;
        let mut extending = true;
        let mut poll = Duration::from_millis(5);
        let mut told = false;
        loop {
            if lock.is_held()
                && let Some(tx) = locked.take()
            {
                // Taken by the claim.
                let _ = tx.send(true);
            } else if !lock.is_held() && (locked.is_some() || extending) {
                match lock.try_acquire().await {
                    Ok(true) => {
                        if let Some(tx) = locked.take() {
                            let _ = tx.send(true);
                        } else {
                            info!("run lock taken again on a new connection");
                        }
                        poll = Duration::from_millis(5);
                    }
                    Ok(false) if locked.is_none() => {
                        warn!("another run of this conversation took its run lock; stopping the turn");
                        control.stop(StopReason::LeaseLost);
                        extending = false;
                    }
                    Ok(false) | Err(_) if claimed_at.elapsed() >= lease => {
                        if let Some(tx) = locked.take() {
                            let _ = tx.send(false);
                            return;
                        }
                    }
                    Ok(false) => {
                        if !told && claimed_at.elapsed() >= Duration::from_secs(1) {
                            told = true;
                            info!("waiting for a previous run of this conversation to stop");
                        }
                    }
                    Err(e) => debug!(error = %e, "taking the run lock failed; retrying"),
                }
            }
            let wake =
                if lock.is_held() || !extending { next_extension } else { next_extension.min(Instant::now() + poll) };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if !lock.is_held() {
                poll = (poll * 2).min(Duration::from_millis(250));
            }
            if !extending || Instant::now() < next_extension {
                continue;
            }
            next_extension = Instant::now() + lease / 3;
            let state = match lock.client().await {
                Ok(client) => turn::extend_lease(client, t.turn_id, &worker_id, lease).await,
                Err(e) => Err(e),
            };
            match state {
                Ok(LeaseState::Held) => extended_at = Instant::now(),
                Ok(LeaseState::CancelRequested) => {
                    extended_at = Instant::now();
                    control.stop(StopReason::Cancelled);
                }
                Ok(LeaseState::Lost) => {
                    warn!("lease lost; stopping the turn");
                    control.stop(StopReason::LeaseLost);
                    extending = false;
                }
                Err(e) => {
                    warn!(error = %e, "extending the lease failed");
                    lock.check();
                    if extended_at.elapsed() >= lease {
                        warn!("the lease ran out before it could be extended; stopping the turn");
                        control.stop(StopReason::LeaseLost);
                        extending = false;
                    }
                }
            }
        }
        if let Some(tx) = locked.take() {
            let _ = tx.send(false);
        }
        lock.release().await;
    }
}
