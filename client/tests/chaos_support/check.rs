//! The checks run after every restart: the log read back from the earliest offset against
//! the producer's acknowledgements, and the group's committed offsets against the previous
//! cycle and the acknowledged commits.

use std::collections::BTreeMap;

use spool_client::Client;
use spool_client::v1::ReadRequest;

use super::ledger::Ledger;
use super::value;

/// What the read-back found.
pub struct LogState {
    /// Records stored, all partitions.
    pub records: u64,
    /// Per partition: the end offset read up to.
    pub ends: Vec<u64>,
    /// Records the producer reported failed that are stored nonetheless.
    pub failed_but_stored: usize,
}

/// Reads every partition from offset 0 to (at least) its end offset at the start of the
/// read, and checks: offsets are dense from 0; every value is intact (its checksum holds)
/// and was handed to the producer; no value is stored twice; every record acknowledged
/// before the read is stored once, at the partition and offset of its acknowledgement.
/// With `exact`, also that every record handed to the producer is stored, except records
/// the producer reported failed, which may be stored once or not at all.
pub async fn log(
    client: &Client,
    topic: &str,
    partitions: u32,
    ledger: &Ledger,
    exact: bool,
) -> Result<LogState, Vec<String>> {
    // Acknowledgements first: each of them is then below the end offsets read next.
    let acked = ledger.lock().acked.clone();
    let mut problems = Vec::new();
    let mut found: Vec<Option<(u32, u64)>> = Vec::new();
    let mut ends = Vec::new();
    let mut records = 0u64;
    for p in 0..partitions {
        let mut next = 0u64;
        let mut end = None;
        loop {
            let r = client
                .read(ReadRequest {
                    topic: topic.to_string(),
                    partition: p,
                    offset: next,
                    ..ReadRequest::default()
                })
                .await
                .map_err(|e| vec![format!("Read {topic}/{p} at {next}: {e}")])?;
            if r.start_offset != 0 {
                problems.push(format!("partition {p} starts at {}, not 0", r.start_offset));
            }
            let end = *end.get_or_insert(r.end_offset);
            if r.records.is_empty() {
                if next < end {
                    problems.push(format!(
                        "partition {p}: Read at {next} returned nothing below the end {end}"
                    ));
                }
                break;
            }
            for rec in &r.records {
                if rec.offset != next {
                    problems.push(format!(
                        "partition {p}: offset {} follows {} (offsets not dense)",
                        rec.offset,
                        next.wrapping_sub(1)
                    ));
                }
                next = rec.offset + 1;
                records += 1;
                let at = (p, rec.offset);
                match value::decode(&rec.value) {
                    Err(e) => problems.push(format!("corrupt record at {at:?}: {e}")),
                    Ok(id) => {
                        let i = id as usize;
                        if found.len() <= i {
                            found.resize(i + 1, None);
                        }
                        if let Some(first) = found[i] {
                            problems.push(format!(
                                "DUPLICATE: record {id} stored at {first:?} and at {at:?}"
                            ));
                        } else {
                            found[i] = Some(at);
                        }
                    }
                }
            }
            if next >= end {
                break;
            }
        }
        ends.push(next);
    }
    let enqueued = ledger.lock().enqueued;
    if found.len() as u64 > enqueued {
        for (id, at) in found.iter().enumerate().skip(enqueued as usize) {
            if let Some(at) = at {
                problems.push(format!("record {id} at {at:?} was never produced"));
            }
        }
    }
    for (id, want) in acked.iter().enumerate() {
        let Some(want) = want else { continue };
        match found.get(id).copied().flatten() {
            None => problems.push(format!(
                "LOSS: acknowledged record {id} (partition {}, offset {}) is not stored",
                want.0, want.1
            )),
            Some(got) if got != *want => problems.push(format!(
                "record {id} acknowledged at {want:?} is stored at {got:?}"
            )),
            Some(_) => {}
        }
    }
    if exact {
        let s = ledger.lock();
        let missing: Vec<u64> = (0..enqueued)
            .filter(|&id| found.get(id as usize).copied().flatten().is_none() && !s.failed(id))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} records handed to the producer are not stored, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
    }
    let failed_but_stored = ledger
        .lock()
        .producer_failed
        .iter()
        .filter(|&&(id, _)| found.get(id as usize).copied().flatten().is_some())
        .count();
    if problems.is_empty() {
        Ok(LogState {
            records,
            ends,
            failed_but_stored,
        })
    } else {
        Err(problems)
    }
}

/// A group's committed offset per partition (`None` = never committed).
pub type Committed = Vec<Option<u64>>;

/// Fetches the group's committed offsets and checks that none moved backwards since
/// `previous`, none is below a commit the broker acknowledged, none is past the end.
pub async fn offsets(
    client: &Client,
    group: &str,
    topic: &str,
    previous: &Committed,
    ledger: &Ledger,
) -> Result<Committed, Vec<String>> {
    // Acknowledged commits first, so each is already applied when GetOffsets runs.
    let acked: BTreeMap<u32, u64> = ledger.lock().acked_commits.clone();
    let parts = client
        .get_offsets(group, topic)
        .await
        .map_err(|e| vec![format!("GetOffsets {group} {topic}: {e}")])?;
    let mut problems = Vec::new();
    let mut now = vec![None; previous.len()];
    for po in parts {
        let p = po.partition;
        now[p as usize] = po.committed;
        let c = po.committed;
        if let Some(before) = previous[p as usize]
            && c.is_none_or(|c| c < before)
        {
            problems.push(format!(
                "BACKWARDS: partition {p}'s committed offset went from {before} to {c:?}"
            ));
        }
        if let Some(&best) = acked.get(&p)
            && c.is_none_or(|c| c < best)
        {
            problems.push(format!(
                "partition {p}: a commit of {best} was acknowledged, but the committed offset is {c:?}"
            ));
        }
        if let Some(c) = c
            && c > po.end_offset
        {
            problems.push(format!(
                "partition {p}: committed {c} is past the end offset {}",
                po.end_offset
            ));
        }
    }
    if problems.is_empty() {
        Ok(now)
    } else {
        Err(problems)
    }
}
