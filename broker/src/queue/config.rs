//! A queue's effective config: the proto's zeros replaced by defaults, values clamped to
//! their documented ranges (as session timeouts are), so two requests that mean the same
//! queue compare equal.

use serde::{Deserialize, Serialize};
use spool_proto::v1;

use crate::error::{Error, Result};

pub const DEFAULT_LEASE_MS: u32 = 30_000;
pub const MIN_LEASE_MS: u32 = 100;
pub const MAX_LEASE_MS: u32 = 12 * 60 * 60 * 1000;
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
pub const MAX_MAX_DELIVERIES: u32 = 1_000;
pub const DEFAULT_BACKOFF_MIN_MS: u32 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u32 = 600_000;
pub const DEFAULT_MAX_LEASED: u32 = 10_000;
/// Above this a single partition's lease table would dominate the broker's memory.
pub const MAX_MAX_LEASED: u32 = 1_000_000;

/// Whether records of one key are leased one at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ordering {
    None,
    Key,
}

/// A queue's config with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueConfig {
    pub lease_ms: u32,
    pub max_deliveries: u32,
    pub retry_backoff_min_ms: u32,
    pub retry_backoff_max_ms: u32,
    pub dead_letter_topic: String,
    pub delivery_delay_ms: u64,
    pub ordering: Ordering,
    pub max_leased: u32,
}

/// Clamps a lease duration asked for by a request or config (0 = `default`).
pub fn lease_ms(asked: u32, default: u32) -> u32 {
    if asked == 0 {
        default
    } else {
        asked.clamp(MIN_LEASE_MS, MAX_LEASE_MS)
    }
}

impl QueueConfig {
    /// The effective config of `c` for queue `queue` on `topic`.
    pub fn effective(topic: &str, queue: &str, c: Option<&v1::QueueConfig>) -> Result<QueueConfig> {
        let c = c.cloned().unwrap_or_default();
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        let min = or(c.retry_backoff_min_ms, DEFAULT_BACKOFF_MIN_MS);
        let max = or(c.retry_backoff_max_ms, DEFAULT_BACKOFF_MAX_MS);
        if c.retry_backoff_min_ms != 0 && c.retry_backoff_max_ms != 0 && min > max {
            return Err(Error::invalid(format!(
                "retry_backoff_min_ms ({min}) is greater than retry_backoff_max_ms ({max}): the first retry delay cannot exceed the longest"
            )));
        }
        let ordering = match v1::QueueOrdering::try_from(c.ordering) {
            Ok(v1::QueueOrdering::Key) => Ordering::Key,
            Ok(_) => Ordering::None,
            Err(_) => {
                return Err(Error::invalid(format!(
                    "ordering {} is not a QueueOrdering: use QUEUE_ORDERING_NONE (1) or QUEUE_ORDERING_KEY (2)",
                    c.ordering
                )));
            }
        };
        let dead_letter_topic = if c.dead_letter_topic.is_empty() {
            format!("{topic}.{queue}.dlq")
        } else {
            c.dead_letter_topic
        };
        Ok(QueueConfig {
            lease_ms: lease_ms(c.lease_ms, DEFAULT_LEASE_MS),
            max_deliveries: or(c.max_deliveries, DEFAULT_MAX_DELIVERIES).min(MAX_MAX_DELIVERIES),
            // Only one bound given: the other follows it rather than contradicting it.
            retry_backoff_min_ms: min.min(max),
            retry_backoff_max_ms: max.max(min),
            dead_letter_topic,
            delivery_delay_ms: c.delivery_delay_ms,
            ordering,
            max_leased: or(c.max_leased, DEFAULT_MAX_LEASED).min(MAX_MAX_LEASED),
        })
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt` ended unacked:
    /// `min(max, min × 2^(attempt−1))`.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let min = u64::from(self.retry_backoff_min_ms);
        let shift = attempt.saturating_sub(1).min(40);
        (min << shift).min(u64::from(self.retry_backoff_max_ms))
    }

    pub fn to_proto(&self) -> v1::QueueConfig {
        v1::QueueConfig {
            lease_ms: self.lease_ms,
            max_deliveries: self.max_deliveries,
            retry_backoff_min_ms: self.retry_backoff_min_ms,
            retry_backoff_max_ms: self.retry_backoff_max_ms,
            dead_letter_topic: self.dead_letter_topic.clone(),
            delivery_delay_ms: self.delivery_delay_ms,
            ordering: match self.ordering {
                Ordering::None => v1::QueueOrdering::None,
                Ordering::Key => v1::QueueOrdering::Key,
            } as i32,
            max_leased: self.max_leased,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_take_the_defaults_and_values_are_clamped() {
        let c = QueueConfig::effective("t", "q", None).unwrap();
        assert_eq!(c.lease_ms, DEFAULT_LEASE_MS);
        assert_eq!(c.max_deliveries, 5);
        assert_eq!(c.dead_letter_topic, "t.q.dlq");
        assert_eq!(c.ordering, Ordering::None);
        let c = QueueConfig::effective(
            "t",
            "q",
            Some(&v1::QueueConfig {
                lease_ms: 5,
                max_deliveries: 5_000,
                max_leased: u32::MAX,
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(c.lease_ms, MIN_LEASE_MS);
        assert_eq!(c.max_deliveries, MAX_MAX_DELIVERIES);
        assert_eq!(c.max_leased, MAX_MAX_LEASED);
    }

    #[test]
    fn min_above_max_is_refused_and_backoff_doubles_to_the_cap() {
        let bad = v1::QueueConfig {
            retry_backoff_min_ms: 10,
            retry_backoff_max_ms: 5,
            ..Default::default()
        };
        assert!(QueueConfig::effective("t", "q", Some(&bad)).is_err());
        let c = QueueConfig::effective(
            "t",
            "q",
            Some(&v1::QueueConfig {
                retry_backoff_min_ms: 100,
                retry_backoff_max_ms: 1_000,
                ..Default::default()
            }),
        )
        .unwrap();
        assert_eq!(
            (1..=6).map(|a| c.backoff_ms(a)).collect::<Vec<_>>(),
            vec![100, 200, 400, 800, 1_000, 1_000]
        );
    }
}
