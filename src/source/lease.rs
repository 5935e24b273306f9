//! The `coordination.k8s.io/v1` Lease that picks which replica of a cluster publishes
//! its exports (DESIGN.md §5).
//!
//! This module owns the lease loop: a GET, then a create, a renewal, or a takeover
//! written with a PUT that carries the resourceVersion it read, so two replicas racing
//! for the same lease conflict (409) instead of both winning. It reports through a
//! watch channel whether this replica holds the lease. A holder that cannot renew
//! (the API server is away, or another replica took over) reports `false` before the
//! lease can expire for the others, so at most one replica publishes at a time; the
//! mesh's epochs make readers switch to the new publisher without the cluster ever
//! leaving the fleet view. Times written into the lease come from the injectable
//! clock; the loop's own timers are tokio's.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::LeaseConfig;

/// How long a replica shutting down tries to release its lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Lease counters and the held gauge.
#[derive(Debug, Clone, Default)]
pub struct LeaseMetrics {
    held: prometheus_client::metrics::gauge::Gauge,
    acquired: prometheus_client::metrics::counter::Counter,
    lost: prometheus_client::metrics::counter::Counter,
    errors: prometheus_client::metrics::counter::Counter,
}

impl LeaseMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "lease_held",
            "1 while this replica holds the publishing Lease, else 0",
            m.held.clone(),
        );
        registry.register(
            "lease_acquired",
            "Times this replica took the publishing Lease",
            m.acquired.clone(),
        );
        registry.register(
            "lease_lost",
            "Times this replica stopped holding the publishing Lease",
            m.lost.clone(),
        );
        registry.register(
            "lease_errors",
            "Lease reads and writes that failed (conflicts included)",
            m.errors.clone(),
        );
        m
    }
}

/// One decision of the lease loop, from what the GET returned. Pure, so the rules
/// are tested without an API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it, held by us.
    Create,
    /// Ours: write a new renew time.
    Renew,
    /// Someone else's and expired (or released): take it over.
    TakeOver,
    /// Someone else's and current: wait.
    Wait { holder: String },
}

/// What to do about `lease` (as read) for `identity` at wall-clock `now_ms`.
pub fn step(lease: Option<&Lease>, identity: &str, now_ms: i64) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(0)) * 1000;
    let renewed_ms = spec
        .renew_time
        .or(spec.acquire_time)
        .map_or(0, |t| t.0.as_millisecond());
    if holder.is_empty() || renewed_ms.saturating_add(duration_ms) < now_ms {
        Step::TakeOver
    } else {
        Step::Wait { holder }
    }
}

fn micro_time(ms: i64) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(MicroTime)
}

/// Runs the lease loop for `identity` (the node id) until cancelled; the receiver
/// says whether this replica holds the lease. The task ends after releasing a held
/// lease, so awaiting it lets a replica that shuts down hand over at once.
pub fn spawn(
    client: Client,
    config: LeaseConfig,
    identity: String,
    clock: Arc<dyn Clock>,
    metrics: LeaseMetrics,
    cancel: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let task = tokio::spawn(async move {
        // Renew three times per lease period; give up holding it after two thirds of
        // the period without a successful renewal, well before others may take over.
        let every = config.duration / 3;
        let give_up = give_up_after(config.duration);
        let mut last_renewed: Option<Instant> = None;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            match attempt(&api, &config, &identity, clock.as_ref()).await {
                Ok(true) => last_renewed = Some(Instant::now()),
                Ok(false) => last_renewed = None,
                Err(error) => {
                    metrics.errors.inc();
                    tracing::warn!(lease = %config.name, %error, "lease not renewed");
                }
            }
            let held = last_renewed.is_some_and(|t| t.elapsed() < give_up);
            if !held {
                last_renewed = None;
            }
            let was = *tx.borrow();
            if held != was {
                if held {
                    metrics.acquired.inc();
                    tracing::info!(lease = %config.name, %identity, "took the publishing lease");
                } else {
                    metrics.lost.inc();
                    tracing::warn!(lease = %config.name, %identity, "no longer holds the publishing lease");
                }
                metrics.held.set(i64::from(held));
                tx.send_replace(held);
            }
        }
        // Stepping down cleanly: release the lease so another replica takes over at
        // once instead of after the lease runs out.
        if *tx.borrow() {
            tx.send_replace(false);
            // Bounded: an API server that does not answer must not hold up shutdown;
            // the lease then simply runs out.
            match tokio::time::timeout(RELEASE_TIMEOUT, release(&api, &config, &identity)).await {
                Ok(Ok(())) => tracing::info!(lease = %config.name, "released the publishing lease"),
                Ok(Err(error)) => tracing::warn!(%error, "lease not released"),
                Err(_) => tracing::warn!("lease not released: the API server did not answer"),
            }
        }
    });
    (rx, task)
}

/// One round: returns whether this replica holds the lease after it.
async fn attempt(
    api: &Api<Lease>,
    config: &LeaseConfig,
    identity: &str,
    clock: &dyn Clock,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&config.name).await?;
    let now_ms = i64::try_from(clock.unix_millis()).unwrap_or(i64::MAX);
    let duration_secs = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    match step(current.as_ref(), identity, now_ms) {
        Step::Wait { .. } => Ok(false),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    namespace: Some(config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(identity.to_string()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: micro_time(now_ms),
                    renew_time: micro_time(now_ms),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            written(api.create(&PostParams::default(), &lease).await)
        }
        step @ (Step::Renew | Step::TakeOver) => {
            // The resourceVersion read above rides along: a concurrent writer makes
            // this a 409, and the next round reads again.
            let mut lease = current.unwrap_or_default();
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if step == Step::TakeOver {
                spec.holder_identity = Some(identity.to_string());
                spec.acquire_time = micro_time(now_ms);
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(duration_secs);
            spec.renew_time = micro_time(now_ms);
            written(
                api.replace(&config.name, &PostParams::default(), &lease)
                    .await,
            )
        }
    }
}

/// A write's outcome: held if it went through, not held on a conflict (someone else
/// wrote first), an error otherwise.
fn written(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up (empty holder) if this replica still holds it.
async fn release(
    api: &Api<Lease>,
    config: &LeaseConfig,
    identity: &str,
) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    api.replace(&config.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

/// How long a held lease may go unrenewed before its holder stops publishing.
pub fn give_up_after(duration: Duration) -> Duration {
    duration * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_ms: i64, duration_s: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
                renew_time: micro_time(renewed_ms),
                lease_duration_seconds: Some(duration_s),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_lease_is_created_renewed_waited_for_or_taken_over() {
        assert_eq!(step(None, "east/a", 0), Step::Create);
        let ours = lease("east/a", 1_000, 15);
        assert_eq!(step(Some(&ours), "east/a", 2_000), Step::Renew);
        let theirs = lease("east/b", 1_000, 15);
        assert_eq!(
            step(Some(&theirs), "east/a", 15_000),
            Step::Wait {
                holder: "east/b".into()
            }
        );
        assert_eq!(step(Some(&theirs), "east/a", 16_001), Step::TakeOver);
        let released = lease("", 1_000, 15);
        assert_eq!(step(Some(&released), "east/a", 2_000), Step::TakeOver);
    }

    #[test]
    fn a_holder_gives_up_before_others_may_take_over() {
        let d = Duration::from_secs(15);
        assert!(give_up_after(d) < d);
    }
}
