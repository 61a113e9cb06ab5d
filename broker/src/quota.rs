//! Per-principal produce and consume byte rates: token buckets that delay a request (the
//! backpressure a well-behaved client feels as latency) up to a bound, and refuse it with
//! `RESOURCE_EXHAUSTED` beyond that.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::auth::Principal;
use crate::error::{Error, Result};

/// One principal's limits (`[[quotas]]` in the config file); 0 = unlimited.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub principal: String,
    #[serde(default)]
    pub produce_bytes_per_sec: u64,
    #[serde(default)]
    pub consume_bytes_per_sec: u64,
}

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Produce,
    Consume,
}

struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

/// Every principal's buckets.
pub struct Quotas {
    limits: HashMap<String, (u64, u64)>,
    buckets: Mutex<HashMap<(String, Direction), Bucket>>,
    max_delay: Duration,
}

impl Quotas {
    pub fn new(configs: &[QuotaConfig], max_delay: Duration) -> Quotas {
        Quotas {
            limits: configs
                .iter()
                .map(|q| {
                    (
                        q.principal.clone(),
                        (q.produce_bytes_per_sec, q.consume_bytes_per_sec),
                    )
                })
                .collect(),
            buckets: Mutex::new(HashMap::new()),
            max_delay,
        }
    }

    /// How long `who` must wait before moving `bytes`, taking them from its bucket; an
    /// error when the wait would exceed the bound (nothing is taken then).
    pub fn reserve(&self, who: &Principal, dir: Direction, bytes: u64) -> Result<Duration> {
        let Some(&(produce, consume)) = self.limits.get(who.name()) else {
            return Ok(Duration::ZERO);
        };
        let rate = match dir {
            Direction::Produce => produce,
            Direction::Consume => consume,
        };
        if rate == 0 || bytes == 0 {
            return Ok(Duration::ZERO);
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let b = buckets
            .entry((who.name().to_string(), dir))
            .or_insert_with(|| Bucket {
                rate: rate as f64,
                tokens: rate as f64,
                last: now,
            });
        // Refill, with at most one second of burst.
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate).min(b.rate);
        b.last = now;
        let after = b.tokens - bytes as f64;
        let wait = if after >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-after / b.rate)
        };
        if wait > self.max_delay {
            let what = match dir {
                Direction::Produce => "produce",
                Direction::Consume => "consume",
            };
            return Err(Error::ResourceExhausted(format!(
                "{what} quota of {rate} bytes/s for principal {who} exceeded; slow down and retry"
            )));
        }
        b.tokens = after;
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn buckets_delay_then_refuse() {
        let q = Quotas::new(
            &[QuotaConfig {
                principal: "p".into(),
                produce_bytes_per_sec: 1000,
                consume_bytes_per_sec: 0,
            }],
            Duration::from_secs(2),
        );
        let p = Principal(Arc::from("p"));
        assert_eq!(
            q.reserve(&p, Direction::Produce, 1000).unwrap(),
            Duration::ZERO
        );
        let wait = q.reserve(&p, Direction::Produce, 1000).unwrap();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_millis(1000));
        assert!(
            q.reserve(&p, Direction::Produce, 5000).is_err(),
            "beyond the bound"
        );
        assert_eq!(
            q.reserve(&p, Direction::Consume, 1 << 30).unwrap(),
            Duration::ZERO
        );
        let other = Principal(Arc::from("other"));
        assert_eq!(
            q.reserve(&other, Direction::Produce, 1 << 30).unwrap(),
            Duration::ZERO
        );
    }
}
