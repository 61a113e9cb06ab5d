//! Append and read activity and group lag over the last minutes, for the console's charts:
//! a sample every `console_sample_ms` (10 s by default) into a ring per topic and per
//! (group, topic) of at most [`SAMPLES`] (15 minutes at the default). Rings of topics and
//! groups that no longer exist are dropped at the next sample, so memory is bounded by what
//! the broker holds anyway, times `SAMPLES`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::service::Inner;

/// Samples kept per ring.
pub const SAMPLES: usize = 90;

/// Totals at one instant: rates are their differences over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicSample {
    pub at_ms: i64,
    /// Sum of the partitions' end offsets: records appended since the topic was created.
    pub records: u64,
    /// Payload bytes served by reads, subscriptions and groups since the broker started.
    pub read_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LagSample {
    pub at_ms: i64,
    /// Records between the group's committed offsets and the end, over all partitions.
    pub lag: u64,
}

#[derive(Default)]
pub struct History {
    rings: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    topics: BTreeMap<String, VecDeque<TopicSample>>,
    groups: BTreeMap<(String, String), VecDeque<LagSample>>,
}

fn push<T>(ring: &mut VecDeque<T>, sample: T) {
    if ring.len() == SAMPLES {
        ring.pop_front();
    }
    ring.push_back(sample);
}

impl History {
    /// Adds one sample per topic and per (group, topic) given, and drops the rings of those
    /// not given (deleted since).
    pub fn record(
        &self,
        topics: Vec<(String, TopicSample)>,
        groups: Vec<((String, String), LagSample)>,
    ) {
        let mut r = self.rings.lock();
        let live: std::collections::BTreeSet<&String> = topics.iter().map(|(t, _)| t).collect();
        r.topics.retain(|t, _| live.contains(t));
        let live: std::collections::BTreeSet<&(String, String)> =
            groups.iter().map(|(g, _)| g).collect();
        r.groups.retain(|g, _| live.contains(g));
        for (t, s) in topics {
            push(r.topics.entry(t).or_default(), s);
        }
        for (g, s) in groups {
            push(r.groups.entry(g).or_default(), s);
        }
    }

    pub fn topics(&self) -> Vec<(String, Vec<TopicSample>)> {
        let r = self.rings.lock();
        r.topics
            .iter()
            .map(|(t, ring)| (t.clone(), ring.iter().copied().collect()))
            .collect()
    }

    pub fn groups(&self) -> Vec<((String, String), Vec<LagSample>)> {
        let r = self.rings.lock();
        r.groups
            .iter()
            .map(|(g, ring)| (g.clone(), ring.iter().copied().collect()))
            .collect()
    }
}

/// Samples the broker every `console_sample_ms` until `shutdown`.
pub async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let every = Duration::from_millis(inner.config.console_sample_ms.clamp(10, 60_000));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        sample(&inner);
    }
}

/// One sample of every topic and group (in memory: end offsets, counters, commits).
fn sample(inner: &Inner) {
    let at_ms = crate::now_ms();
    let topics = inner
        .registry
        .list()
        .iter()
        .map(|t| {
            let records = t.partitions.iter().map(|p| p.log.end_offset()).sum();
            let read_bytes = inner.metrics.read_bytes_of(&t.name);
            (
                t.name.clone(),
                TopicSample {
                    at_ms,
                    records,
                    read_bytes,
                },
            )
        })
        .collect();
    let mut lags: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (group, topic, _, lag) in crate::metrics::group_lags(inner) {
        *lags.entry((group, topic)).or_default() += lag;
    }
    let groups = lags
        .into_iter()
        .map(|(g, lag)| (g, LagSample { at_ms, lag }))
        .collect();
    inner.history.record(topics, groups);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, at_ms: i64) -> (String, TopicSample) {
        (
            name.to_string(),
            TopicSample {
                at_ms,
                records: at_ms as u64,
                read_bytes: 0,
            },
        )
    }

    #[test]
    fn rings_keep_the_last_samples_and_forget_what_is_gone() {
        let h = History::default();
        for at in 0..(SAMPLES as i64 + 10) {
            h.record(vec![t("a", at), t("b", at)], vec![]);
        }
        let topics = h.topics();
        assert_eq!(topics.len(), 2);
        assert_eq!(topics[0].1.len(), SAMPLES, "bounded");
        assert_eq!(topics[0].1[0].at_ms, 10, "the oldest went first");
        h.record(vec![t("b", 1_000)], vec![]);
        let topics = h.topics();
        assert_eq!(topics.len(), 1, "a deleted topic's ring is dropped");
        assert_eq!(topics[0].0, "b");
    }
}
