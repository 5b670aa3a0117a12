//! Throughput quotas, as Kafka has them: produced bytes, fetched bytes and
//! requests per second, per principal and client id. A client over its
//! quota is slowed, never refused: the listener delays its response (gRPC)
//! or stops reading its connection (Kafka, after the response says how
//! long), for the throttle time [`Quotas::record`] returns.
//!
//! Which quota applies follows Kafka's precedence, per kind of quota, the
//! first entity with a limit of that kind winning: user and client id,
//! user and default client, user, default user and client id, default
//! user and default client, default user, client id, default client. A
//! default applies to each user (or client id) on its own: two users under
//! the default each get its rate.
//!
//! Each (kind, user, client id) has a meter that allows a burst of one
//! second's worth and then the rate: a theoretical arrival time advances
//! by `amount / rate` per request, and the throttle is how far it runs
//! ahead of now by more than the burst (the generic cell rate algorithm).
//! Time is passed in, so the meters are tested without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::state::{QuotaEntity, QuotaLimits, QUOTA_DEFAULT};
use super::{Principal, View};

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// Bytes of produced records.
    Produce,
    /// Bytes of fetched records.
    Fetch,
    /// Requests.
    Request,
}

impl QuotaKind {
    fn limit(self, l: &QuotaLimits) -> Option<f64> {
        match self {
            QuotaKind::Produce => l.produce_bytes_per_sec.map(|v| v as f64),
            QuotaKind::Fetch => l.fetch_bytes_per_sec.map(|v| v as f64),
            QuotaKind::Request => l.requests_per_sec,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Produce => "produce",
            QuotaKind::Fetch => "fetch",
            QuotaKind::Request => "request",
        }
    }
}

/// The burst a meter allows: this much time's worth of the rate.
pub const BURST: Duration = Duration::from_secs(1);
/// The longest single throttle (a huge request against a tiny quota is
/// slowed by this much, not by hours).
pub const MAX_THROTTLE: Duration = Duration::from_secs(30);
/// Meters idle for this long are forgotten.
const IDLE_FORGET: Duration = Duration::from_secs(600);

/// The limit that applies to `(user, client)` for `kind`, with the meter's
/// key (the entity with defaults replaced by the caller's names).
pub fn resolve(
    view: &View,
    kind: QuotaKind,
    user: &str,
    client: &str,
) -> Option<(f64, QuotaEntity)> {
    if view.quotas.is_empty() {
        return None;
    }
    let d = QUOTA_DEFAULT;
    let levels: [(Option<&str>, Option<&str>); 8] = [
        (Some(user), Some(client)),
        (Some(user), Some(d)),
        (Some(user), None),
        (Some(d), Some(client)),
        (Some(d), Some(d)),
        (Some(d), None),
        (None, Some(client)),
        (None, Some(d)),
    ];
    for (u, c) in levels {
        let entity = QuotaEntity {
            user: u.map(str::to_string),
            client_id: c.map(str::to_string),
        };
        if let Some(rate) = view.quotas.get(&entity).and_then(|l| kind.limit(l)) {
            // The meter is the caller's own, whichever level matched.
            let key = QuotaEntity {
                user: u.map(|_| user.to_string()),
                client_id: c.map(|_| client.to_string()),
            };
            return Some((rate, key));
        }
    }
    None
}

/// A rate meter (see the module documentation).
#[derive(Debug, Clone, Copy)]
struct Meter {
    /// Theoretical arrival time of the next unit, as an offset from the
    /// meters' epoch.
    tat: Duration,
    last_used: Instant,
}

/// Every client's meters.
#[derive(Debug)]
pub struct Quotas {
    epoch: Instant,
    /// (kind, meter key) → meter. Held only to update one meter.
    meters: Mutex<HashMap<(QuotaKind, QuotaEntity), Meter>>,
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Quotas {
    /// Meters whose times count from `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            meters: Mutex::new(HashMap::new()),
        }
    }

    /// Records `amount` of `kind` for `(principal, client)` at `now`;
    /// returns how long to throttle the client (zero when within quota or
    /// without one).
    pub fn record(
        &self,
        view: &View,
        principal: &Principal,
        client: &str,
        kind: QuotaKind,
        amount: f64,
        now: Instant,
    ) -> Duration {
        let Some((rate, key)) = resolve(view, kind, principal.as_str(), client) else {
            return Duration::ZERO;
        };
        if rate <= 0.0 || !amount.is_finite() || amount <= 0.0 {
            return Duration::ZERO;
        }
        let at = now.saturating_duration_since(self.epoch);
        let cost = Duration::from_secs_f64((amount / rate).min(1e6));
        let throttle = {
            let mut meters = self.meters.lock();
            if meters.len() > 100_000 {
                meters.retain(|_, m| now.saturating_duration_since(m.last_used) < IDLE_FORGET);
            }
            let m = meters.entry((kind, key.clone())).or_insert(Meter {
                tat: at,
                last_used: now,
            });
            m.tat = m.tat.max(at) + cost;
            m.last_used = now;
            m.tat.saturating_sub(at + BURST).min(MAX_THROTTLE)
        };
        if !throttle.is_zero() {
            metrics::counter!("sluice_quota_throttle_seconds_total", "kind" => kind.as_str(), "entity" => key.to_string())
                .increment(throttle.as_secs_f64().ceil() as u64);
            metrics::counter!("sluice_quota_throttled_requests_total", "kind" => kind.as_str(), "entity" => key.to_string())
                .increment(1);
        }
        throttle
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::state::{SecurityCommand, SecurityState};
    use crate::security::{Access, SecuritySettings};

    fn view(quotas: &[(Option<&str>, Option<&str>, QuotaLimits)]) -> std::sync::Arc<View> {
        let mut s = SecurityState::default();
        for (u, c, l) in quotas {
            s.apply(&SecurityCommand::SetQuota {
                entity: QuotaEntity {
                    user: u.map(str::to_string),
                    client_id: c.map(str::to_string),
                },
                limits: l.clone(),
            })
            .unwrap();
        }
        let a = Access::new(SecuritySettings::default());
        a.update(&s);
        a.view()
    }

    fn produce(rate: u64) -> QuotaLimits {
        QuotaLimits {
            produce_bytes_per_sec: Some(rate),
            ..Default::default()
        }
    }

    #[test]
    fn precedence_follows_kafka() {
        let v = view(&[
            (Some("<default>"), None, produce(10)),
            (Some("User:a"), None, produce(20)),
            (Some("User:a"), Some("app"), produce(30)),
            (None, Some("<default>"), produce(40)),
        ]);
        let rate = |u: &str, c: &str| resolve(&v, QuotaKind::Produce, u, c).map(|r| r.0);
        assert_eq!(rate("User:a", "app"), Some(30.0));
        assert_eq!(rate("User:a", "other"), Some(20.0));
        assert_eq!(rate("User:b", "app"), Some(10.0));
        assert_eq!(resolve(&v, QuotaKind::Fetch, "User:a", "app"), None);
        // Each user under the default has a meter of its own.
        let (_, kb) = resolve(&v, QuotaKind::Produce, "User:b", "x").unwrap();
        let (_, kc) = resolve(&v, QuotaKind::Produce, "User:c", "x").unwrap();
        assert_ne!(kb, kc);
    }

    /// Over many requests the allowed rate is the quota: the sum of the
    /// throttles makes the elapsed time what the rate asks for.
    #[test]
    fn throttles_hold_a_sender_to_the_rate() {
        let v = view(&[(Some("User:p"), None, produce(100_000))]);
        let t0 = Instant::now();
        let q = Quotas::new(t0);
        let p = Principal::from_full("User:p");
        let mut now = t0;
        let mut sent = 0.0;
        // A sender that sends 10 KB, waits out its throttle, and repeats.
        for _ in 0..1000 {
            let throttle = q.record(&v, &p, "c", QuotaKind::Produce, 10_000.0, now);
            sent += 10_000.0;
            now += throttle + Duration::from_micros(100);
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        let rate = (sent - 100_000.0) / elapsed; // less the one-second burst
        assert!((rate - 100_000.0).abs() < 1_000.0, "rate {rate}");
        // A principal without a quota is never throttled.
        let other = Principal::from_full("User:free");
        assert_eq!(
            q.record(&v, &other, "c", QuotaKind::Produce, 1e9, now),
            Duration::ZERO
        );
        // One huge request is throttled at most MAX_THROTTLE.
        assert_eq!(
            q.record(&v, &p, "c", QuotaKind::Produce, 1e12, now),
            MAX_THROTTLE
        );
    }
}
