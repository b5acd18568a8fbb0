//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica watches and compiles; only the leader writes status (and
//! provisions). The handover rules live in [`Elector`], a pure state
//! machine fed with the Lease as read and a monotonic clock, so they are
//! tested without a cluster; [`run`] is the thin loop that reads and writes
//! the Lease.
//!
//! Rules (those of client-go's leader election):
//! - Expiry is measured on *our* clock from the moment we saw the Lease
//!   record change, never by comparing `renewTime` with our wall clock, so
//!   clock skew between nodes cannot make two leaders.
//! - A Lease whose holder is empty was released: take it at once.
//! - The leader renews every [`LeaderConfig::retry_period`]; if it has not
//!   renewed successfully within [`LeaderConfig::renew_deadline`] it stops
//!   acting as leader before its Lease can expire for the others
//!   (`renew_deadline < lease_duration`).
//! - Writes are optimistic (`resourceVersion`): of two replicas taking over
//!   at once, one gets a conflict and stays a follower.
//! - On shutdown the leader releases the Lease, so the next one takes over
//!   without waiting for the expiry.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Timings of the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// Unique per replica (pod name, plus something unique per process).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: String, lease_name: String, identity: String) -> LeaderConfig {
        LeaderConfig {
            namespace,
            lease_name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The fields of a Lease the election reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseRecord {
    /// Empty or `None`: released.
    pub holder: Option<String>,
    pub duration_seconds: i32,
    pub transitions: i32,
    /// As written (RFC 3339); compared for change detection only.
    pub renew_time: Option<String>,
}

impl LeaseRecord {
    pub fn from_lease(lease: &Lease) -> LeaseRecord {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
            transitions: spec.lease_transitions.unwrap_or(0),
            renew_time: spec.renew_time.map(|t| t.0.to_string()),
        }
    }
}

/// What to do with the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, held by us.
    Create,
    /// Expired or released: take it over (transitions + 1).
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Held by someone else and still valid.
    Follow { leader: String },
}

/// The election state of one replica. Times are monotonic durations since
/// any fixed origin (the caller's `Instant`).
#[derive(Debug, Clone)]
pub struct Elector {
    identity: String,
    renew_deadline: Duration,
    /// The last Lease record seen and when we first saw it.
    observed: Option<(LeaseRecord, Duration)>,
    /// When we last wrote the Lease successfully as its holder.
    last_renewed: Option<Duration>,
}

impl Elector {
    pub fn new(identity: impl Into<String>, renew_deadline: Duration) -> Elector {
        Elector {
            identity: identity.into(),
            renew_deadline,
            observed: None,
            last_renewed: None,
        }
    }

    /// Decides from the Lease as just read (`None`: it does not exist).
    pub fn decide(&mut self, current: Option<&LeaseRecord>, now: Duration) -> Decision {
        let Some(record) = current else {
            return Decision::Create;
        };
        let seen_at = match &self.observed {
            Some((old, at)) if old == record => *at,
            _ => {
                self.observed = Some((record.clone(), now));
                now
            }
        };
        match &record.holder {
            Some(holder) if *holder == self.identity => Decision::Renew,
            None => Decision::Acquire,
            Some(holder) => {
                let duration =
                    Duration::from_secs(u64::try_from(record.duration_seconds).unwrap_or(0));
                if now >= seen_at + duration {
                    Decision::Acquire
                } else {
                    self.last_renewed = None;
                    Decision::Follow {
                        leader: holder.clone(),
                    }
                }
            }
        }
    }

    /// The Lease to write for a decision (`None` for [`Decision::Follow`]).
    pub fn record_for(
        &self,
        decision: &Decision,
        current: Option<&LeaseRecord>,
        lease_duration: Duration,
        now_text: &str,
    ) -> Option<LeaseRecord> {
        let transitions = current.map_or(0, |c| c.transitions);
        let duration_seconds = i32::try_from(lease_duration.as_secs()).unwrap_or(i32::MAX);
        let holder = Some(self.identity.clone());
        let renew_time = Some(now_text.to_string());
        match decision {
            Decision::Create => Some(LeaseRecord {
                holder,
                duration_seconds,
                transitions: 0,
                renew_time,
            }),
            Decision::Acquire => Some(LeaseRecord {
                holder,
                duration_seconds,
                transitions: transitions.saturating_add(1),
                renew_time,
            }),
            Decision::Renew => Some(LeaseRecord {
                holder,
                duration_seconds,
                transitions,
                renew_time,
            }),
            Decision::Follow { .. } => None,
        }
    }

    /// Our write of the Lease (create, acquire or renew) succeeded.
    pub fn written(&mut self, record: LeaseRecord, now: Duration) {
        self.observed = Some((record, now));
        self.last_renewed = Some(now);
    }

    /// A write failed (conflict, API server unreachable). We stay leader
    /// only until the renew deadline since the last successful renewal.
    pub fn write_failed(&mut self, now: Duration) {
        if self
            .last_renewed
            .is_some_and(|at| now >= at + self.renew_deadline)
        {
            self.last_renewed = None;
        }
    }

    /// Whether this replica may act as leader at `now`.
    pub fn is_leader(&self, now: Duration) -> bool {
        self.last_renewed
            .is_some_and(|at| now < at + self.renew_deadline)
    }

    /// The record that releases the Lease, if we hold it.
    pub fn release_record(&self, current: &LeaseRecord) -> Option<LeaseRecord> {
        (current.holder.as_deref() == Some(self.identity.as_str())).then(|| LeaseRecord {
            holder: None,
            duration_seconds: 1,
            transitions: current.transitions,
            renew_time: current.renew_time.clone(),
        })
    }
}

/// Builds the Lease object to write.
pub fn lease_object(
    config: &LeaderConfig,
    record: &LeaseRecord,
    previous: Option<&Lease>,
) -> Lease {
    let time = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map(MicroTime)
    };
    let mut lease = previous.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(config.lease_name.clone()),
            namespace: Some(config.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let old = lease.spec.clone().unwrap_or_default();
    let taking_over = old.holder_identity.as_deref() != record.holder.as_deref();
    lease.metadata.managed_fields = None;
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(record.holder.clone().unwrap_or_default()),
        lease_duration_seconds: Some(record.duration_seconds),
        lease_transitions: Some(record.transitions),
        renew_time: time(&record.renew_time),
        acquire_time: if taking_over && record.holder.is_some() {
            time(&record.renew_time)
        } else {
            old.acquire_time
        },
        ..old
    });
    lease
}

/// Runs the election until `shutdown` turns true, publishing leadership on
/// `leading`; releases the Lease on the way out if we hold it.
pub async fn run(
    client: kube::Client,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let origin = tokio::time::Instant::now();
    let mut elector = Elector::new(config.identity.clone(), config.renew_deadline);
    let mut last_error_logged: Option<tokio::time::Instant> = None;
    loop {
        let now = origin.elapsed();
        match step(&api, &config, &mut elector, now).await {
            Ok(()) => last_error_logged = None,
            Err(e) => {
                elector.write_failed(origin.elapsed());
                // Log the first error, then at most every 30 s.
                let quiet =
                    last_error_logged.is_some_and(|t| t.elapsed() < Duration::from_secs(30));
                if !quiet {
                    tracing::warn!(lease = %config.lease_name, error = %e, "leader election: cannot read or write the Lease; retrying");
                    last_error_logged = Some(tokio::time::Instant::now());
                }
            }
        }
        let is_leader = elector.is_leader(origin.elapsed());
        if *leading.borrow() != is_leader {
            tracing::info!(identity = %config.identity, leader = is_leader, "leadership changed");
            let _ = leading.send(is_leader);
        }
        tokio::select! {
            _ = tokio::time::sleep(config.retry_period) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    let _ = leading.send(false);
    release(&api, &config, &elector).await;
}

async fn step(
    api: &Api<Lease>,
    config: &LeaderConfig,
    elector: &mut Elector,
    now: Duration,
) -> Result<(), kube::Error> {
    let current = api.get_opt(&config.lease_name).await?;
    let record = current.as_ref().map(LeaseRecord::from_lease);
    let decision = elector.decide(record.as_ref(), now);
    let now_text = super::status_patch::format_time(std::time::SystemTime::now());
    let Some(new_record) =
        elector.record_for(&decision, record.as_ref(), config.lease_duration, &now_text)
    else {
        return Ok(());
    };
    let lease = lease_object(config, &new_record, current.as_ref());
    match decision {
        Decision::Create => {
            api.create(&PostParams::default(), &lease).await?;
        }
        _ => {
            // `lease` carries the resourceVersion we read: a concurrent
            // writer makes this fail with a conflict.
            api.replace(&config.lease_name, &PostParams::default(), &lease)
                .await?;
        }
    }
    if decision == Decision::Acquire || decision == Decision::Create {
        tracing::info!(identity = %config.identity, lease = %config.lease_name, "acquired the leader Lease");
    }
    elector.written(new_record, now);
    Ok(())
}

async fn release(api: &Api<Lease>, config: &LeaderConfig, elector: &Elector) {
    let Ok(Some(current)) = api.get_opt(&config.lease_name).await else {
        return;
    };
    let record = LeaseRecord::from_lease(&current);
    if let Some(released) = elector.release_record(&record) {
        let lease = lease_object(config, &released, Some(&current));
        match api
            .replace(&config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %config.lease_name, "released the leader Lease"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the leader Lease; it expires by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);
    const LEASE: Duration = Duration::from_secs(15);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn held_by(holder: &str, renew: &str) -> LeaseRecord {
        LeaseRecord {
            holder: Some(holder.into()),
            duration_seconds: 15,
            transitions: 3,
            renew_time: Some(renew.into()),
        }
    }

    #[test]
    fn no_lease_creates_one_and_leads() {
        let mut a = Elector::new("a", DEADLINE);
        assert_eq!(a.decide(None, s(0)), Decision::Create);
        let record = a
            .record_for(&Decision::Create, None, LEASE, "t0")
            .expect("a record");
        assert_eq!(record.holder.as_deref(), Some("a"));
        assert_eq!(record.transitions, 0);
        assert!(!a.is_leader(s(0)));
        a.written(record, s(0));
        assert!(a.is_leader(s(1)));
    }

    #[test]
    fn a_follower_waits_while_the_leader_renews() {
        let mut b = Elector::new("b", DEADLINE);
        assert_eq!(
            b.decide(Some(&held_by("a", "t0")), s(0)),
            Decision::Follow { leader: "a".into() }
        );
        // Renewed every few seconds: each new record restarts the clock.
        assert_eq!(
            b.decide(Some(&held_by("a", "t1")), s(14)),
            Decision::Follow { leader: "a".into() }
        );
        assert_eq!(
            b.decide(Some(&held_by("a", "t2")), s(28)),
            Decision::Follow { leader: "a".into() }
        );
        assert!(!b.is_leader(s(28)));
    }

    #[test]
    fn a_follower_takes_over_once_the_lease_expired_on_its_own_clock() {
        let mut b = Elector::new("b", DEADLINE);
        let stale = held_by("a", "t0");
        assert!(matches!(
            b.decide(Some(&stale), s(100)),
            Decision::Follow { .. }
        ));
        // 14 s after first seeing that record: still valid, whatever
        // renewTime says.
        assert!(matches!(
            b.decide(Some(&stale), s(114)),
            Decision::Follow { .. }
        ));
        assert_eq!(b.decide(Some(&stale), s(115)), Decision::Acquire);
        let record = b
            .record_for(&Decision::Acquire, Some(&stale), LEASE, "t9")
            .expect("a record");
        assert_eq!(record.holder.as_deref(), Some("b"));
        assert_eq!(record.transitions, 4);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let a = Elector::new("a", DEADLINE);
        let released = a.release_record(&held_by("a", "t0")).expect("a holds it");
        assert_eq!(released.holder, None);
        assert_eq!(released.transitions, 3);
        let mut b = Elector::new("b", DEADLINE);
        assert_eq!(b.decide(Some(&released), s(0)), Decision::Acquire);
    }

    #[test]
    fn only_the_holder_releases() {
        let b = Elector::new("b", DEADLINE);
        assert_eq!(b.release_record(&held_by("a", "t0")), None);
    }

    #[test]
    fn the_holder_renews_and_keeps_the_transition_count() {
        let mut a = Elector::new("a", DEADLINE);
        let current = held_by("a", "t0");
        assert_eq!(a.decide(Some(&current), s(0)), Decision::Renew);
        let record = a
            .record_for(&Decision::Renew, Some(&current), LEASE, "t1")
            .expect("a record");
        assert_eq!(record.transitions, 3);
        assert_eq!(record.renew_time.as_deref(), Some("t1"));
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_before_the_lease_expires() {
        let mut a = Elector::new("a", DEADLINE);
        a.written(held_by("a", "t0"), s(0));
        a.write_failed(s(2));
        assert!(a.is_leader(s(2)));
        a.write_failed(s(9));
        assert!(a.is_leader(s(9)));
        // Past the renew deadline (10 s) and well before the others may
        // take over (15 s after they last saw a renewal).
        assert!(!a.is_leader(s(10)));
        a.write_failed(s(10));
        assert!(!a.is_leader(s(11)));
    }

    #[test]
    fn a_leader_that_sees_another_holder_steps_down() {
        let mut a = Elector::new("a", DEADLINE);
        a.written(held_by("a", "t0"), s(0));
        assert!(matches!(
            a.decide(Some(&held_by("b", "t5")), s(5)),
            Decision::Follow { .. }
        ));
        assert!(!a.is_leader(s(5)));
    }

    #[test]
    fn two_replicas_hand_over_through_expiry() {
        let mut a = Elector::new("a", DEADLINE);
        let mut b = Elector::new("b", DEADLINE);
        assert_eq!(a.decide(None, s(0)), Decision::Create);
        let lease = a
            .record_for(&Decision::Create, None, LEASE, "t0")
            .expect("record");
        a.written(lease.clone(), s(0));
        assert!(matches!(
            b.decide(Some(&lease), s(1)),
            Decision::Follow { .. }
        ));
        // a dies without releasing; b takes over 15 s after it last saw a
        // change.
        assert!(matches!(
            b.decide(Some(&lease), s(15)),
            Decision::Follow { .. }
        ));
        assert_eq!(b.decide(Some(&lease), s(16)), Decision::Acquire);
        let taken = b
            .record_for(&Decision::Acquire, Some(&lease), LEASE, "t16")
            .expect("record");
        b.written(taken.clone(), s(16));
        assert!(b.is_leader(s(16)));
        assert!(!a.is_leader(s(16)));
        // a comes back: it follows b.
        assert!(matches!(
            a.decide(Some(&taken), s(17)),
            Decision::Follow { .. }
        ));
    }

    #[test]
    fn lease_object_sets_acquire_time_only_on_takeover() {
        let config = LeaderConfig::new("ns".into(), "portcullis".into(), "a".into());
        let record = held_by("a", "2026-01-01T00:00:00Z");
        let created = lease_object(&config, &record, None);
        assert_eq!(created.metadata.name.as_deref(), Some("portcullis"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
        let spec = created.spec.clone().expect("spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(3));
        assert!(spec.acquire_time.is_some());
        let renewed = lease_object(
            &config,
            &held_by("a", "2026-01-01T00:00:02Z"),
            Some(&created),
        );
        let renewed_spec = renewed.spec.expect("spec");
        assert_eq!(renewed_spec.acquire_time, spec.acquire_time);
        assert_ne!(renewed_spec.renew_time, spec.renew_time);
    }
}
