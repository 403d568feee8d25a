//! Delivers every queued alert at least once to each of its sinks. The queue
//! is the store's outbox, so retries and their back-off survive restarts; a
//! delivery that keeps failing keeps its row and last error. Deliveries are
//! claimed for a lease (`alerts.delivery_lease`): one whose dispatcher dies
//! before it records the outcome is delivered again once the lease ends.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::sinks::{DeliveryError, Sinks};
use super::AlertsConfig;
use crate::clock::quantize;
use crate::model::Due;
use crate::store::Store;

/// Deliveries fetched per round.
const BATCH: i64 = 32;
/// Longest sleep when nothing is due.
const IDLE_POLL: i64 = 30;

/// The back-off before attempt `attempts + 1`: doubling from `initial`, capped at `max`.
pub fn backoff(attempts: i64, initial: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.clamp(0, 30) as u32);
    initial.saturating_mul(factor).min(max)
}

fn record_metric(sink: &str, result: &Result<(), DeliveryError>) {
    use crate::metrics::{AlertSink, DeliveryOutcome};
    let sink = match sink {
        super::SINK_WEBHOOK => AlertSink::Webhook,
        super::SINK_LOG => AlertSink::Log,
        _ => AlertSink::Smtp,
    };
    let outcome = match result {
        Ok(()) => DeliveryOutcome::Delivered,
        Err(DeliveryError::Transient(_)) => DeliveryOutcome::Retry,
        Err(DeliveryError::Permanent(_)) => DeliveryOutcome::Abandoned,
    };
    crate::metrics::alert_delivery(sink, outcome);
}

pub struct Dispatcher {
    pub store: Store,
    pub sinks: Arc<Sinks>,
    pub cfg: Arc<AlertsConfig>,
    pub wake: Arc<Notify>,
    pub clock: fn() -> i64,
    /// Delivery times are floored to this many seconds before they are stored.
    pub granularity: u64,
}

impl Dispatcher {
    /// Runs until `stop` turns true (or the task is dropped). On a stop, the
    /// deliveries in flight are abandoned and their claims given back, due at
    /// once, so that the next start delivers them without waiting for the
    /// lease.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let now = (self.clock)();
            let lease = self.cfg.delivery_lease.as_secs().max(1) as i64;
            let due = match self.store.claim_due(now, lease, BATCH).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "alert dispatcher cannot read the outbox");
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            if due.is_empty() {
                let next = self.store.next_due().await.ok().flatten();
                let wait = next
                    .map(|t| (t - now).clamp(1, IDLE_POLL))
                    .unwrap_or(IDLE_POLL);
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(wait as u64)) => {}
                }
                continue;
            }
            let mut claimed: HashSet<(i64, String)> =
                due.iter().map(|d| (d.alert.id, d.sink.clone())).collect();
            let mut set = JoinSet::new();
            for d in due {
                let sinks = self.sinks.clone();
                set.spawn(async move {
                    let result = sinks.deliver(&d.sink, &d.alert).await;
                    (d, result)
                });
            }
            loop {
                let joined = tokio::select! {
                    _ = stop.changed() => break,
                    joined = set.join_next() => joined,
                };
                let Some(joined) = joined else { break };
                // Every outcome already in is recorded with this one, in one
                // transaction.
                let mut outcomes: Vec<_> = std::iter::once(joined)
                    .chain(std::iter::from_fn(|| set.try_join_next()))
                    .filter_map(Result::ok)
                    .collect();
                for (d, _) in &outcomes {
                    claimed.remove(&(d.alert.id, d.sink.clone()));
                }
                self.record(&mut outcomes).await;
            }
            if *stop.borrow() {
                // Deliveries done before the stop are recorded, not sent
                // again; the others' claims are given back.
                let mut done: Vec<_> = std::iter::from_fn(|| set.try_join_next())
                    .filter_map(Result::ok)
                    .collect();
                for (d, _) in &done {
                    claimed.remove(&(d.alert.id, d.sink.clone()));
                }
                self.record(&mut done).await;
                set.abort_all();
                self.release(claimed).await;
            }
        }
        tracing::debug!("alert dispatcher stopped");
    }

    /// Stores the outcomes of deliveries: the successes in one write.
    async fn record(&self, outcomes: &mut Vec<(Due, Result<(), DeliveryError>)>) {
        let now = (self.clock)();
        let mut delivered = Vec::new();
        for (d, result) in outcomes.drain(..) {
            let (id, sink) = (d.alert.id, d.sink.clone());
            record_metric(&sink, &result);
            let e = match result {
                Ok(()) => {
                    tracing::debug!(alert_id = id, sink = %sink, "alert delivered");
                    delivered.push((id, sink));
                    continue;
                }
                Err(e) => e,
            };
            let next = match &e {
                DeliveryError::Transient(_) => Some(
                    now + backoff(d.attempts, self.cfg.retry_initial, self.cfg.retry_max)
                        .as_secs()
                        .max(1) as i64,
                ),
                DeliveryError::Permanent(_) => None,
            };
            // The error may quote a recipient address: debug only.
            tracing::warn!(sink = %sink, attempt = d.attempts + 1, will_retry = next.is_some(), "alert delivery failed");
            tracing::debug!(alert_id = id, error = %e, "alert delivery error");
            let write = self.store.mark_failed(id, sink, e.to_string(), next).await;
            self.write_failed(write).await;
        }
        if !delivered.is_empty() {
            let write = self
                .store
                .mark_delivered(delivered, quantize(now, self.granularity))
                .await;
            self.write_failed(write).await;
        }
    }

    async fn write_failed(&self, write: Result<(), crate::store::StoreError>) {
        if let Err(e) = write {
            tracing::warn!(error = %e, "cannot record an alert delivery; it will be retried");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Gives back claims whose outcome is unknown, due at once.
    async fn release(&self, claimed: HashSet<(i64, String)>) {
        let now = (self.clock)();
        for (id, sink) in claimed {
            if let Err(e) = self.store.release(id, sink, now).await {
                tracing::warn!(error = %e, "cannot give back an alert delivery; it is retried after its lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (i, m) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(backoff(0, i, m), Duration::from_secs(5));
        assert_eq!(backoff(1, i, m), Duration::from_secs(10));
        assert_eq!(backoff(4, i, m), Duration::from_secs(80));
        assert_eq!(backoff(20, i, m), m);
        assert_eq!(backoff(1000, i, m), m);
    }
}
