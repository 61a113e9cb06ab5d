//! What `DescribeQueue` and `ListQueues` report of a queue: its config, counts and
//! partitions, and why it cannot deliver, if it cannot.

use spool_proto::v1;

use super::leasing::{Queue, QueueState};
use super::state::{AfterLease, State, after_lease};
use crate::registry::Topic;

/// Why a queue cannot deliver right now, if it cannot.
fn pause_reason(q: &Queue, st: &QueueState) -> String {
    let parts = &st.partitions;
    let max = q.config.max_leased as usize;
    let full: Vec<String> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.leased() >= max)
        .map(|(i, _)| i.to_string())
        .collect();
    if !full.is_empty() {
        return format!(
            "partitions {} have max_leased ({max}) records leased: settle some, or raise max_leased",
            full.join(", ")
        );
    }
    let waiting: Vec<String> = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| p.tracked() >= 2 * max)
        .map(|(i, _)| i.to_string())
        .collect();
    if !waiting.is_empty() {
        let delays = if st.delays.budget_full() {
            " (the broker's delay store is at its memory bound, queue_delay_memory_bytes, so records due far ahead wait in memory too)"
        } else {
            ""
        };
        return format!(
            "partitions {} track 2 × max_leased ({}) unsettled records waiting for a retry or a delivery time{delays}: new records wait until some are retried",
            waiting.join(", "),
            2 * max
        );
    }
    String::new()
}

impl Queue {
    /// The queue's config, start, counts and partitions, for `DescribeQueue`.
    /// Blocking: reads the first never-touched record of each partition (its age counts in
    /// `oldest_ready_age_ms`).
    pub fn info(&self, topic: Option<&Topic>, now: i64) -> v1::QueueInfo {
        let st = self.state.lock();
        let mut info = v1::QueueInfo {
            topic: self.topic.clone(),
            queue: self.name.clone(),
            config: Some(self.config.to_proto()),
            start: Some(v1::StartPosition {
                kind: self.start.kind,
                offset: self.start.offset,
                timestamp_ms: self.start.timestamp_ms,
            }),
            acked_total: st.acked_total,
            dead_lettered_total: st.dead_lettered_total,
            redelivered_total: st.redelivered_total,
            retention_dropped_total: st.retention_dropped_total,
            redrive_remaining: st.redrive.remaining(),
            redriven_total: st.redriven_total,
            paused: pause_reason(self, &st),
            ..v1::QueueInfo::default()
        };
        let mut oldest_ready: Option<i64> = None;
        for (i, part) in st.partitions.iter().enumerate() {
            let end = topic
                .and_then(|t| t.partitions.get(i))
                .map_or(part.floor(), |p| p.log.end_offset());
            let mut leased = 0;
            let mut tracked = 0u64;
            for (_, e) in part.entries() {
                tracked += 1;
                match &e.state {
                    State::Waiting { at_ms } if *at_ms <= now => {
                        info.ready += 1;
                        oldest_ready = Some(oldest_ready.map_or(*at_ms, |o| o.min(*at_ms)));
                    }
                    State::Waiting { .. } => info.delayed += 1,
                    State::Leased { expires_ms, .. } if *expires_ms > now => leased += 1,
                    State::Leased { expires_ms, .. } => {
                        let at = match after_lease(
                            e.attempt,
                            *expires_ms,
                            self.config.max_deliveries,
                            self.config.backoff_ms(e.attempt),
                        ) {
                            AfterLease::RetryAt(at) => at,
                            AfterLease::DeadLetter => continue,
                        };
                        if at <= now {
                            info.ready += 1;
                        } else {
                            info.delayed += 1;
                        }
                    }
                    State::DeadLettering { .. } | State::Blocked { .. } => {}
                }
            }
            info.blocked_keys += part.blocked_keys() as u64;
            info.delayed += part.deferred();
            // Records never touched: available (a delivery time not yet seen counts as
            // ready until a scan reads it).
            let untouched = (end.saturating_sub(part.floor()))
                .saturating_sub(part.settled_below(end))
                .saturating_sub(tracked);
            info.ready += untouched;
            // The oldest of those has waited since its timestamp (or its delivery time).
            if untouched > 0
                && let Some(log) = topic.and_then(|t| t.partitions.get(i)).map(|p| &p.log)
                && let Some(o) = part.first_fresh(end)
                && let Ok(Some(r)) = super::leasing::read_one(log, o)
            {
                let r = crate::service::convert::to_proto(r);
                let at = r.deliver_at_ms.max(
                    r.timestamp_ms
                        .saturating_add(self.config.delivery_delay_ms as i64),
                );
                if at <= now {
                    oldest_ready = Some(oldest_ready.map_or(at, |t| t.min(at)));
                }
            }
            info.leased += leased;
            info.partitions.push(v1::QueuePartition {
                partition: i as u32,
                ack_floor: part.ack_floor(),
                end_offset: end,
                leased,
            });
        }
        if let Some(t) = oldest_ready {
            info.oldest_ready_age_ms = (now - t).max(0) as u64;
        }
        let window = i64::from(self.config.lease_ms);
        let mut consumers: Vec<v1::QueueConsumerInfo> = st
            .consumers
            .iter()
            .filter(|(_, seen)| now - **seen <= window)
            .map(|(c, seen)| v1::QueueConsumerInfo {
                consumer: c.to_string(),
                leased: st
                    .partitions
                    .iter()
                    .flat_map(|p| p.entries())
                    .filter(|(_, e)| matches!(&e.state, State::Leased { consumer, expires_ms, .. } if consumer == c && *expires_ms > now))
                    .count() as u64,
                last_seen_ms: *seen,
            })
            .collect();
        consumers.sort_by(|a, b| a.consumer.cmp(&b.consumer));
        info.consumers = consumers;
        info
    }
}
