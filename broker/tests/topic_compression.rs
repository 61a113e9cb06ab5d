//! Topics compressed on disk, against a real `spoold`: every read path returns the records
//! byte-identical to what was appended, before and after kill -9; the partition shrinks on
//! disk; `DescribeTopic` reports the codec; bad codecs and levels are `INVALID_ARGUMENT`
//! saying what to fix.

mod common;

use common::*;
use spool_proto::v1::*;

/// Generated JSON events: realistic, compressible, each different.
fn events(from: u32, n: u32) -> Vec<Record> {
    (from..from + n)
        .map(|i| Record {
            key: format!("user-{}", i % 50).into(),
            value: format!(
                r#"{{"event":"checkout","user":"user-{}","cart":[{{"sku":"SKU-{}","qty":{}}}],"total_cents":{},"ts":{}}}"#,
                i % 50,
                i % 300,
                1 + i % 4,
                i * 37 % 10_000,
                1_765_000_000_000u64 + u64::from(i)
            )
            .into(),
            headers: vec![Header {
                key: "trace".into(),
                value: format!("{i:032x}").into(),
            }],
            ..Record::default()
        })
        .collect()
}

fn config(compression: Compression, level: i32) -> TopicConfig {
    TopicConfig {
        fsync: FsyncPolicy::Never as i32,
        compression: compression as i32,
        compression_level: level,
        ..TopicConfig::default()
    }
}

/// Key, value and headers of each record (offsets and timestamps aside).
fn contents(records: &[Record]) -> Vec<(Vec<u8>, Vec<u8>, Vec<Header>)> {
    records
        .iter()
        .map(|r| (r.key.to_vec(), r.value.to_vec(), r.headers.clone()))
        .collect()
}

#[tokio::test]
async fn compressed_topics_read_back_byte_identical_through_kill_9() {
    let mut b = Broker::start();
    let mut c = b.client().await;
    let want = (0..20)
        .flat_map(|i| events(i * 200, 200))
        .collect::<Vec<_>>();
    for (name, codec, level) in [
        ("plain", Compression::None, 0),
        ("lz4", Compression::Lz4, 0),
        ("zstd", Compression::Zstd, 7),
    ] {
        let info = create_topic_with(&mut c, name, 1, config(codec, level)).await;
        let got = info.config.unwrap();
        assert_eq!(
            (got.compression, got.compression_level),
            (codec as i32, level)
        );
        for i in 0..20 {
            append(&mut c, name, 0, events(i * 200, 200)).await;
        }
    }
    let plain_bytes = describe(&mut c, "plain").await.partition_info[0].size_bytes;
    for name in ["lz4", "zstd"] {
        let size = describe(&mut c, name).await.partition_info[0].size_bytes;
        assert!(
            size * 3 < plain_bytes,
            "{name}: {size} bytes on disk, {plain_bytes} uncompressed"
        );
        assert_eq!(
            contents(&read_to_end(&mut c, name, 0, 0).await),
            contents(&want)
        );
        // A read from inside a batch starts exactly there.
        let r = read(&mut c, name, 0, 1_234, 3).await.unwrap();
        assert_eq!(r.records[0].offset, 1_234);
        assert_eq!(contents(&r.records), contents(&want[1_234..1_237]));
    }
    b.kill().await;
    b.restart();
    let mut c = b.client().await;
    for name in ["lz4", "zstd"] {
        assert_eq!(
            contents(&read_to_end(&mut c, name, 0, 0).await),
            contents(&want)
        );
        let mut s = subscribe(
            &mut c,
            SubscribeRequest {
                topic: name.into(),
                partitions: vec![0],
                start: start(start_position::Kind::Earliest),
                ..SubscribeRequest::default()
            },
        )
        .await
        .unwrap();
        let got: Vec<Record> = take_records(&mut s, want.len())
            .await
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        assert_eq!(contents(&got), contents(&want));
    }
    let info = describe(&mut c, "zstd").await.config.unwrap();
    assert_eq!(info.compression, Compression::Zstd as i32);
    assert_eq!(info.compression_level, 7);
}

#[tokio::test]
async fn codecs_and_levels_outside_what_exists_are_invalid_arguments() {
    let b = Broker::start();
    let mut c = b.client().await;
    for (cfg, says) in [
        (config(Compression::Lz4, 1), "lz4 has no levels"),
        (config(Compression::None, 2), "no compression has no levels"),
        (config(Compression::Zstd, 23), "outside zstd's levels"),
        (config(Compression::Zstd, -8), "outside zstd's levels"),
        (
            TopicConfig {
                compression: 9,
                ..TopicConfig::default()
            },
            "config.compression 9 is not a Compression value",
        ),
    ] {
        let s = status(
            c.create_topic(CreateTopicRequest {
                name: "bad".into(),
                partitions: 1,
                config: Some(cfg),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{}", s.message());
        assert!(s.message().contains(says), "{}", s.message());
    }
    assert!(describe_missing(&mut c, "bad").await, "nothing was created");
}

async fn describe_missing(c: &mut Client, name: &str) -> bool {
    let r = c
        .describe_topic(DescribeTopicRequest { name: name.into() })
        .await;
    code(r) == tonic::Code::NotFound
}
