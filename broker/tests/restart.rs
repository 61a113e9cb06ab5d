//! Restarts of the real `spoold`: a graceful stop leaves the clean-shutdown marker and the
//! next start trusts it; a kill -9 right after that start finds no marker and recovers every
//! partition (in parallel) with nothing acknowledged lost.

mod common;

use common::*;
use spool_proto::v1::*;

/// Whether the last start logged that it followed a clean shutdown.
fn last_start_was_clean(broker: &Broker) -> bool {
    let log = broker.log();
    let line = log
        .lines()
        .rfind(|l| l.contains("recovered"))
        .expect("a recovered line");
    match (
        line.contains("clean_start=true"),
        line.contains("clean_start=false"),
    ) {
        (true, false) => true,
        (false, true) => false,
        _ => panic!("the recovered line says nothing of a clean start: {line}"),
    }
}

#[tokio::test]
async fn a_kill_right_after_a_clean_restart_loses_nothing() {
    const PARTITIONS: u32 = 40;
    let mut broker = Broker::start();
    let mut c = broker.client().await;
    create_topic(&mut c, "t", PARTITIONS, FsyncPolicy::Never).await;
    for p in 0..PARTITIONS {
        append(&mut c, "t", p, recs(&format!("a{p}-"), 0..5)).await;
    }
    assert!(
        !last_start_was_clean(&broker),
        "a first start has nothing to trust"
    );
    broker.stop().await;
    assert!(
        broker.data_dir().join("clean-shutdown").exists(),
        "a graceful stop leaves the marker"
    );

    broker.restart();
    assert!(last_start_was_clean(&broker));
    assert!(
        !broker.data_dir().join("clean-shutdown").exists(),
        "the marker is removed before the broker serves"
    );
    let mut c = broker.client().await;
    for p in 0..PARTITIONS {
        append(&mut c, "t", p, recs(&format!("b{p}-"), 5..8)).await;
    }
    broker.kill().await;

    broker.restart();
    assert!(!last_start_was_clean(&broker), "a kill leaves no marker");
    let mut c = broker.client().await;
    for p in 0..PARTITIONS {
        let want = [recs(&format!("a{p}-"), 0..5), recs(&format!("b{p}-"), 5..8)].concat();
        assert_eq!(
            values(&read_to_end(&mut c, "t", p, 0).await),
            values(&want),
            "partition {p}"
        );
    }
}
