//! Queues over a topic compressed on disk: each delivery is the record as appended, and a
//! nacked record comes back identical (leasing reads one record at a time from inside
//! compressed batches).

use std::collections::BTreeMap;

use spool_proto::v1::*;

use crate::common::*;
use crate::*;

#[tokio::test]
async fn a_queue_over_a_compressed_topic_delivers_records_as_appended() {
    let b = Broker::start();
    let mut c = b.client().await;
    let config = TopicConfig {
        compression: Compression::Zstd as i32,
        ..TopicConfig::default()
    };
    create_topic_with(&mut c, "jobs", 2, config).await;
    let mut want = BTreeMap::new();
    for p in 0..2 {
        let records: Vec<Record> = (0..300)
            .map(|i| {
                rec(format!(
                    r#"{{"job":"resize","image":"img-{p}-{i}.png","w":640}}"#
                ))
            })
            .collect();
        let base = append(&mut c, "jobs", p, records.clone()).await.base_offset;
        for (i, r) in records.into_iter().enumerate() {
            want.insert((p, base + i as u64), r.value);
        }
    }
    create_queue(&mut c, "jobs", "q", fast(30_000, 5)).await;
    let first = receive_n(&mut c, "jobs", "q", 600).await;
    let check = |ds: &[Delivery]| {
        for d in ds {
            let r = d.record.as_ref().unwrap();
            assert_eq!(
                want[&(d.partition, r.offset)],
                r.value,
                "{}@{}",
                d.partition,
                r.offset
            );
        }
    };
    check(&first);
    let (nacked, acked): (Vec<Delivery>, Vec<Delivery>) =
        first.into_iter().partition(|d| offset(d) % 7 == 3);
    ack_all(&mut c, "jobs", "q", &acked).await;
    let nacks = nacked
        .iter()
        .map(|d| settlement(d, SettleAction::Nack, Some(0)))
        .collect();
    let r = settle(&mut c, "jobs", "q", nacks).await;
    assert!(r.iter().all(|r| *r == SettleResult::Ok), "{r:?}");
    let again = receive_n(&mut c, "jobs", "q", nacked.len()).await;
    assert!(again.iter().all(|d| d.attempt == 2));
    check(&again);
}
