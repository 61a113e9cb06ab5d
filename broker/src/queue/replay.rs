//! Queue state to and from the queue log: applying replayed events on start, and a
//! queue's state as checkpoint events (`store.rs` writes both; docs/format.md).

use std::sync::Arc;

use roaring::RoaringTreemap;

use super::leasing::{Queue, QueueState};
use super::state::{Entry, Partition, State};
use super::store::{Counters, Event, Grant, SnapEntry};

impl QueueState {
    fn replay_lease(
        &mut self,
        p: u32,
        Grant(o, attempt, key): Grant,
        expires_ms: i64,
        lease_ms: u32,
    ) {
        let Some(part) = self.partitions.get_mut(p as usize) else {
            return;
        };
        let before = part.entry(o).map_or(0, |e| e.attempt);
        part.restore(
            o,
            Entry {
                attempt,
                state: State::Leased {
                    expires_ms,
                    lease_ms,
                    consumer: Arc::from(""),
                },
                key,
                life: 0,
            },
        );
        if attempt > 1 && attempt > before {
            self.redelivered_total += 1;
        }
    }

    fn replay_ack(&mut self, p: u32, o: u64) {
        if let Some(part) = self.partitions.get_mut(p as usize)
            && part.settle(o)
        {
            self.acked_total += 1;
        }
    }
}

impl Queue {
    /// Applies one replayed event of this queue.
    pub(super) fn replay(&self, e: &Event) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if let Some(p) = e.highest_partition() {
            // A partition AlterTopic added after the queue's creation.
            st.grow_to(p as usize + 1);
        }
        match e {
            Event::Lease {
                p,
                o,
                attempt,
                expires_ms,
                lease_ms,
                key,
                ..
            } => st.replay_lease(*p, Grant(*o, *attempt, *key), *expires_ms, *lease_ms),
            Event::Leases {
                p,
                expires_ms,
                lease_ms,
                grants,
                ..
            } => {
                for g in grants {
                    st.replay_lease(*p, *g, *expires_ms, *lease_ms);
                }
            }
            Event::Ack { p, o, .. } => st.replay_ack(*p, *o),
            Event::Acks { p, o, .. } => {
                for o in o {
                    st.replay_ack(*p, *o);
                }
            }
            Event::Nack { p, o, at_ms, .. } => {
                if let Some(part) = st.partitions.get_mut(*p as usize) {
                    part.set_state(*o, State::Waiting { at_ms: *at_ms });
                }
            }
            Event::Extend {
                p, o, expires_ms, ..
            } => {
                if let Some(part) = st.partitions.get_mut(*p as usize)
                    && let Some(State::Leased {
                        lease_ms, consumer, ..
                    }) = part.entry(*o).map(|e| e.state.clone())
                {
                    part.set_state(
                        *o,
                        State::Leased {
                            expires_ms: *expires_ms,
                            lease_ms,
                            consumer,
                        },
                    );
                }
            }
            Event::DeadLetter {
                p,
                o,
                reason,
                dlq_from,
                ..
            } => {
                if let Some(part) = st.partitions.get_mut(*p as usize) {
                    part.set_state(
                        *o,
                        State::DeadLettering {
                            reason: reason.clone(),
                            dlq_from: *dlq_from,
                        },
                    );
                }
            }
            Event::DeadLettered { p, o, .. } => {
                if let Some(part) = st.partitions.get_mut(*p as usize)
                    && part.settle(*o)
                {
                    st.dead_lettered_total += 1;
                }
            }
            Event::Snapshot {
                p,
                reset,
                floor,
                settled,
                entries,
                counters,
                ..
            } => {
                if let Some(c) = counters {
                    st.acked_total = c.acked;
                    st.dead_lettered_total = c.dead_lettered;
                    st.redelivered_total = c.redelivered;
                    st.retention_dropped_total = c.retention_dropped;
                    st.redriven_total = c.redriven;
                }
                if let Some(part) = st.partitions.get_mut(*p as usize) {
                    if *reset {
                        *part = Partition::new(*floor);
                    }
                    for (start, end) in settled {
                        part.restore_settled(*start, *end);
                    }
                    for e in entries {
                        part.restore(e.o, snap_entry(e));
                    }
                }
            }
            Event::Deferred { p, ranges, .. } => {
                if let Some(part) = st.partitions.get_mut(*p as usize) {
                    for o in ranges.iter().flat_map(|(s, e)| *s..*e) {
                        if part.is_fresh(o) {
                            part.defer(o);
                        }
                    }
                }
            }
            Event::SnapshotDeferred { p, bits, .. } => {
                if let Some(part) = st.partitions.get_mut(*p as usize) {
                    match decode_deferred(bits) {
                        Ok(set) => part.restore_deferred(set),
                        Err(e) => {
                            tracing::error!(queue = %self.name, topic = %self.topic, error = %e, "a checkpoint's deferred set does not decode: its records are lost to the queue")
                        }
                    }
                }
            }
            Event::Redrive {
                until, per_second, ..
            } => st.redrive.ask(*until, *per_second),
            Event::Redriven {
                next,
                at_ms,
                records,
                ..
            } => st.apply_redriven(*next, *at_ms, records),
            Event::Create { .. } | Event::Delete { .. } => {}
        }
    }

    /// This queue as checkpoint events: its `Create` (with today's floors) and its state,
    /// and the delay buckets the checkpoint makes unneeded (to delete once it is durable).
    pub(super) fn checkpoint(&self) -> (Vec<Event>, Vec<std::path::PathBuf>) {
        let mut st = self.state.lock();
        let loaded = st.delays.take_loaded();
        let mut events = vec![Event::Create {
            id: self.id,
            topic: self.topic.clone(),
            queue: self.name.clone(),
            config: self.config.clone(),
            start: self.start.clone(),
            floors: st.partitions.iter().map(Partition::floor).collect(),
            redrive_next: st.redrive.next,
        }];
        if st.redrive.remaining() > 0 {
            events.push(Event::Redrive {
                id: self.id,
                until: st.redrive.until,
                per_second: st.redrive.per_second,
            });
        }
        for (p, part) in st.partitions.iter().enumerate() {
            let settled: Vec<(u64, u64)> = part.settled_ranges().collect();
            // Blocked records are written too: a scan after the restart would find fresh
            // ones again, but not those a redrive brought back below it.
            let entries: Vec<SnapEntry> = part
                .entries()
                .map(|(o, e)| {
                    let (state, at_ms, lease_ms, reason, dlq_from) = match &e.state {
                        State::Waiting { at_ms } => ("waiting", *at_ms, 0, String::new(), 0),
                        State::Leased {
                            expires_ms,
                            lease_ms,
                            ..
                        } => ("leased", *expires_ms, *lease_ms, String::new(), 0),
                        State::DeadLettering { reason, dlq_from } => {
                            ("dead_lettering", 0, 0, reason.clone(), *dlq_from)
                        }
                        State::Blocked { at_ms } => ("blocked", *at_ms, 0, String::new(), 0),
                    };
                    SnapEntry {
                        o,
                        life: e.life,
                        attempt: e.attempt,
                        state: state.to_string(),
                        at_ms,
                        lease_ms,
                        reason,
                        dlq_from,
                        key: e.key,
                    }
                })
                .collect();
            let parts = (settled.len().div_ceil(SNAP_RANGES))
                .max(entries.len().div_ceil(SNAP_ENTRIES))
                .max(1);
            for i in 0..parts {
                events.push(Event::Snapshot {
                    id: self.id,
                    p: p as u32,
                    reset: i == 0,
                    floor: part.floor(),
                    settled: part_of(&settled, i, SNAP_RANGES),
                    entries: part_of(&entries, i, SNAP_ENTRIES),
                    counters: (p == 0 && i == 0).then_some(Counters {
                        acked: st.acked_total,
                        dead_lettered: st.dead_lettered_total,
                        redelivered: st.redelivered_total,
                        retention_dropped: st.retention_dropped_total,
                        redriven: st.redriven_total,
                    }),
                });
            }
            for bits in deferred_parts(part) {
                events.push(Event::SnapshotDeferred {
                    id: self.id,
                    p: p as u32,
                    bits,
                });
            }
        }
        (events, loaded)
    }
}

/// Serialized size a part of a checkpoint's deferred set reaches before the next begins:
/// one more 64 Ki-offset container (8 KiB at most) keeps it, in base64, under the queue
/// log's 64 KiB record limit.
const SNAP_DEFERRED_BYTES: usize = 24 * 1024;

/// A partition's deferred set as base64 parts, each a roaring bitmap of its own.
fn deferred_parts(part: &Partition) -> Vec<String> {
    use base64::Engine;
    let encode = |set: &RoaringTreemap| {
        let mut bytes = Vec::with_capacity(set.serialized_size());
        set.serialize_into(&mut bytes)
            .expect("writing to a Vec cannot fail");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let mut parts = Vec::new();
    let mut current = RoaringTreemap::new();
    for o in part.deferred_offsets() {
        if (o.is_multiple_of(1 << 16) || current.len().is_multiple_of(1 << 12))
            && current.serialized_size() >= SNAP_DEFERRED_BYTES
        {
            parts.push(encode(&current));
            current.clear();
        }
        current.try_push(o).expect("deferred offsets come in order");
    }
    if !current.is_empty() {
        parts.push(encode(&current));
    }
    parts
}

fn decode_deferred(bits: &str) -> std::io::Result<RoaringTreemap> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(bits)
        .map_err(std::io::Error::other)?;
    RoaringTreemap::deserialize_from(&bytes[..])
}

/// Checkpoint parts stay well under the queue log's 64 KiB record limit.
const SNAP_ENTRIES: usize = 300;
const SNAP_RANGES: usize = 1_000;

/// The `i`-th run of `n` items of `all`.
fn part_of<T: Clone>(all: &[T], i: usize, n: usize) -> Vec<T> {
    all.iter().skip(i * n).take(n).cloned().collect()
}

fn snap_entry(e: &SnapEntry) -> Entry {
    let state = match e.state.as_str() {
        "leased" => State::Leased {
            expires_ms: e.at_ms,
            lease_ms: e.lease_ms,
            consumer: Arc::from(""),
        },
        "dead_lettering" => State::DeadLettering {
            reason: e.reason.clone(),
            dlq_from: e.dlq_from,
        },
        "blocked" => State::Blocked { at_ms: e.at_ms },
        _ => State::Waiting { at_ms: e.at_ms },
    };
    Entry {
        attempt: e.attempt,
        state,
        key: e.key,
        life: e.life,
    }
}
