//! A queue over a compacted topic: it delivers the records compaction kept, each at its
//! offset, and once they are acked its floor moves past the offsets compaction emptied.

use std::collections::BTreeMap;

use spool_proto::v1::*;

use crate::common::*;
use crate::*;

#[tokio::test]
async fn a_queue_over_a_compacted_topic_delivers_what_is_kept_and_acks_past_the_gaps() {
    let b = Broker::start_with(&QUICK_COMPACTION);
    let mut c = b.client().await;
    let config = TopicConfig {
        cleanup_policy: CleanupPolicy::Compact as i32,
        segment_bytes: 64 * 1024,
        segment_ms: 500,
        fsync: FsyncPolicy::Never as i32,
        ..TopicConfig::default()
    };
    create_topic_with(&mut c, "jobs", 1, config).await;
    for round in 0..40 {
        let records = (0..50)
            .map(|k| Record {
                key: format!("job-{k}").into(),
                value: format!("job-{k} v{round} {}", "x".repeat(100)).into(),
                ..Record::default()
            })
            .collect();
        append(&mut c, "jobs", 0, records).await;
    }
    let end = describe(&mut c, "jobs").await.partition_info[0].end_offset;
    let kept = within("compaction", async {
        loop {
            let kept = read_to_end(&mut c, "jobs", 0, 0).await;
            if kept.len() <= 100 {
                return kept;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let want: BTreeMap<u64, Vec<u8>> = kept.iter().map(|r| (r.offset, r.value.to_vec())).collect();
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let got = receive_n(&mut c, "jobs", "q", want.len()).await;
    let delivered: BTreeMap<u64, Vec<u8>> = got
        .iter()
        .map(|d| (offset(d), d.record.as_ref().unwrap().value.to_vec()))
        .collect();
    assert_eq!(delivered, want, "each kept record once, at its offset");
    ack_all(&mut c, "jobs", "q", &got).await;
    let q = wait_queue(&mut c, "jobs", "q", "the floor past the gaps", |q| {
        q.partitions[0].ack_floor == end
    })
    .await;
    assert_eq!(q.partitions[0].ack_floor, end, "{q:?}");
}
