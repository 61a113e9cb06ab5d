//! gRPC transport compression: gzip and zstd request bodies are accepted and answers are
//! compressed for a client that asks; a tiny body that inflates past `max_request_bytes`
//! is `RESOURCE_EXHAUSTED`, and the broker keeps serving.

mod common;

use common::*;
use spool_proto::v1::*;
use tonic::codec::CompressionEncoding;

fn compressing(c: Client, codec: CompressionEncoding) -> Client {
    c.send_compressed(codec).accept_compressed(codec)
}

#[tokio::test]
async fn compressed_requests_and_answers_round_trip_byte_identical() {
    let b = Broker::start();
    let mut plain = b.client().await;
    create_topic(&mut plain, "t", 1, FsyncPolicy::Never).await;
    let records: Vec<Record> = (0..500)
        .map(|i| {
            rec(format!(
                r#"{{"event":"click","user":{i},"page":"/products/{}"}}"#,
                i % 7
            ))
        })
        .collect();
    for (codec, name) in [
        (CompressionEncoding::Gzip, "gzip"),
        (CompressionEncoding::Zstd, "zstd"),
    ] {
        let mut c = compressing(b.client().await, codec);
        let base = within(
            "a compressed Append",
            c.append(AppendRequest {
                topic: "t".into(),
                partition: Some(0),
                records: records.clone(),
                ..AppendRequest::default()
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("{name} append: {s}"))
        .into_inner()
        .base_offset;
        let read = within(
            "a compressed Read",
            c.read(ReadRequest {
                topic: "t".into(),
                partition: 0,
                offset: base,
                max_records: 1_000,
                ..ReadRequest::default()
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("{name} read: {s}"));
        assert_eq!(
            read.metadata()
                .get("grpc-encoding")
                .map(|v| v.to_str().unwrap()),
            Some(name),
            "the answer came {name}-compressed"
        );
        let got = read.into_inner().records;
        assert_eq!(values(&got), values(&records), "{name}");
    }
    // A client that asks for nothing gets plain answers of the same records.
    let read = plain
        .read(ReadRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_records: 1_000,
            ..ReadRequest::default()
        })
        .await
        .unwrap();
    assert!(read.metadata().get("grpc-encoding").is_none());
    assert_eq!(read.into_inner().records.len(), 1_000);
}

#[tokio::test]
async fn a_small_body_that_inflates_past_the_request_limit_is_resource_exhausted() {
    let b = Broker::start_with(&["--max-request-bytes", "1048576"]);
    let mut plain = b.client().await;
    create_topic(&mut plain, "t", 1, FsyncPolicy::Never).await;
    for codec in [CompressionEncoding::Gzip, CompressionEncoding::Zstd] {
        let mut c = compressing(b.client().await, codec);
        // 8 MiB of zeros compress to a few KiB: under the limit on the wire, 8× over it
        // inflated.
        let bomb = AppendRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![rec(vec![0u8; 8 << 20])],
            ..AppendRequest::default()
        };
        let s = within("a decompression bomb", c.append(bomb))
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{codec:?}: {s}");
    }
    // Nothing was appended, and the broker still serves.
    let r = read(&mut plain, "t", 0, 0, 10).await.unwrap();
    assert!(r.records.is_empty(), "{:?}", r.records.len());
    let ok = compressing(b.client().await, CompressionEncoding::Gzip)
        .append(AppendRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![rec("small")],
            ..AppendRequest::default()
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}
