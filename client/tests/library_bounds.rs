//! A caller cannot grow the client library's memory without limit: commits made faster
//! than the broker answers them are refused past a bound, not queued forever.

use std::time::Duration;

use spool_broker::testing::TempBroker;
use spool_client::MAX_PENDING_COMMITS;
use spool_client::{Client, Error, GroupConsumer, GroupOptions};
use spool_proto::v1::{AppendRequest, Record};
use spool_storage::faults::{self, Op};

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn commits_past_the_pending_bound_are_refused_while_the_broker_cannot_answer() {
    let broker = TempBroker::start().await;
    let client = Client::connect(broker.endpoint()).await.unwrap();
    client
        .create_topic("jobs", 1, Default::default())
        .await
        .unwrap();
    let over = 200;
    let count = MAX_PENDING_COMMITS + over;
    let records = (0..count + 1)
        .map(|i| Record {
            value: format!("job-{i}").into(),
            ..Record::default()
        })
        .collect();
    client
        .raw()
        .append(AppendRequest {
            topic: "jobs".into(),
            partition: Some(0),
            records,
            ..AppendRequest::default()
        })
        .await
        .unwrap();
    let member = GroupConsumer::new(&client, "workers", "jobs", GroupOptions::default())
        .await
        .unwrap();
    let mut state = member.assignments();
    tokio::time::timeout(PATIENCE, state.wait_for(|s| s.partitions == [0]))
        .await
        .expect("assigned in time")
        .unwrap();
    // The broker's disk stalls on the offsets log's next fsync: no commit is answered
    // meanwhile, so every commit below stays pending.
    faults::stall(
        &broker.data_dir().join("internal"),
        Op::Sync,
        1,
        Duration::from_secs(3),
    );
    let commits: Vec<_> = (1..=count as u64).map(|o| member.commit(0, o)).collect();
    let mut refused = 0;
    let mut committed = 0;
    for c in commits {
        match tokio::time::timeout(PATIENCE, c).await.expect("answered") {
            Ok(()) => committed += 1,
            Err(Error::TooManyPending { limit }) => {
                assert_eq!(limit, MAX_PENDING_COMMITS);
                refused += 1;
            }
            Err(e) => panic!("unexpected commit error: {e}"),
        }
    }
    assert!(
        refused >= over,
        "{refused} of {count} commits refused; at most {MAX_PENDING_COMMITS} may wait"
    );
    assert!(committed > 0, "commits within the bound go through");
    // Once answered, the room is back.
    member.commit(0, count as u64 + 1).await.unwrap();
}
