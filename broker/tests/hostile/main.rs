//! Hostile input against a running `spoold`: malformed protobuf and gRPC frames on every
//! RPC, oversized requests, absurd limits, bad names, offsets outside the log, unknown
//! topics, partitions and groups, a Consume stream that does not start with a join, a
//! thousand Subscribe streams that are never read, and half-sent messages that stall.
//!
//! Each case checks the status code `proto/spool/v1/spool.proto` documents, then a
//! well-behaved client (the [`Witness`]) appends and reads back a record on its own
//! connection, so a case that wedges or kills the broker fails right where it happened.
//!
//! Malformed bytes go through two raw paths, since the generated client only sends valid
//! messages: [`RawCodec`] lets tonic frame arbitrary payloads, and [`frame_call`] sends an
//! arbitrary HTTP body (so the gRPC length prefix and compressed flag can lie). The
//! half-sent message needs a request that never finishes, so [`h2`] speaks just enough
//! HTTP/2 over a bare TCP socket to open streams and leave them hanging.
//!
//! Modules: `raw` (malformed protobuf and frames), `limits` (sizes, limits, topic
//! configs), `names` (names, offsets, unknown topics and groups, Consume without a join),
//! `streams` (streams that misbehave or are never read, half-sent messages).

#[path = "../common/mod.rs"]
mod common;
mod limits;
mod names;
mod raw;
mod streams;

use limits::{absurd_limits, absurd_topic_configs, oversized_requests};
use names::{
    consume_streams_that_do_not_start_with_a_join, hostile_names, offsets_outside_the_log,
    unknown_topics_partitions_and_groups,
};
use raw::{malformed_grpc_frames, malformed_protobuf_on_every_rpc};

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use common::*;
use futures::StreamExt;
use spool_proto::v1::consume_request::Kind as Req;
use spool_proto::v1::consume_response::Kind as Resp;
use spool_proto::v1::start_position::Kind;
use spool_proto::v1::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The request limit the matrix broker runs with, so "oversized" stays cheap.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Codes tonic may answer an undecodable request with. tonic says `INTERNAL` (the gRPC
/// convention for an unparseable message); `INVALID_ARGUMENT` would be as acceptable.
const DECODE_ERROR: &[Code] = &[Code::Internal, Code::InvalidArgument];

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A well-behaved client on its own connection: appends one record and reads it back.
struct Witness {
    client: Client,
    checks: u32,
}

impl Witness {
    async fn new(broker: &Broker) -> Witness {
        let mut client = broker.client().await;
        create_topic(&mut client, "witness", 1, FsyncPolicy::Unspecified).await;
        Witness { client, checks: 0 }
    }

    /// Fails the test unless the broker still appends and reads for a well-behaved client.
    async fn still_serving(&mut self, after: &str) {
        self.checks += 1;
        let v = format!("check-{}", self.checks);
        let req = AppendRequest {
            topic: "witness".into(),
            partition: Some(0),
            records: vec![rec(v.clone())],
            ..AppendRequest::default()
        };
        let appended = within(after, self.client.append(req))
            .await
            .unwrap_or_else(|s| panic!("after {after}: the witness's append failed: {s}"))
            .into_inner();
        let got = read(&mut self.client, "witness", 0, appended.base_offset, 1)
            .await
            .unwrap_or_else(|s| panic!("after {after}: the witness's read failed: {s}"));
        assert_eq!(values(&got.records), [v], "after {after}");
    }
}

/// Passes bytes through unchanged in both directions, so a test can put anything on the
/// wire inside a well-formed gRPC frame.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// How an RPC streams, which decides how a raw call is made.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Unary,
    ServerStream,
    Bidi,
}

/// Every RPC of `spool.v1.Broker`.
const RPCS: &[(&str, Shape)] = &[
    ("CreateTopic", Shape::Unary),
    ("DeleteTopic", Shape::Unary),
    ("ListTopics", Shape::Unary),
    ("DescribeTopic", Shape::Unary),
    ("Append", Shape::Unary),
    ("AppendStream", Shape::Bidi),
    ("Read", Shape::Unary),
    ("Subscribe", Shape::ServerStream),
    ("CommitOffset", Shape::Unary),
    ("GetOffsets", Shape::Unary),
    ("Consume", Shape::Bidi),
    ("ListGroups", Shape::Unary),
    ("DescribeGroup", Shape::Unary),
];

/// Payloads no protobuf decoder accepts, whatever the message type: each breaks the wire
/// format at its first byte, before any field's meaning matters.
const GARBAGE: &[(&str, &[u8])] = &[
    ("a varint that never ends", &[0xff; 11]),
    ("wire type 7", &[0x0f, 0x01]),
    ("field number 0", &[0x00, 0x01]),
    ("a length past the end", &[0x0a, 0x7f, 0x61]),
    ("a lone end-group tag", &[0x0c]),
    ("a truncated varint", &[0x08, 0x80]),
];

/// How a raw call ended: the messages received before a clean end, or the error status.
type Outcome = Result<Vec<Bytes>, Status>;

/// Calls `spool.v1.Broker/{method}` with `messages` as raw payloads, tonic framing them.
/// Collects at most a few response messages (a Subscribe that works never ends).
async fn raw_call(channel: &Channel, method: &str, shape: Shape, messages: Vec<Bytes>) -> Outcome {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .unwrap_or_else(|e| panic!("channel not ready: {e}"));
    let path: http::uri::PathAndQuery = format!("/spool.v1.Broker/{method}")
        .parse()
        .expect("a valid path");
    let mut stream = match shape {
        Shape::Unary => {
            let one = messages.into_iter().next().unwrap_or_default();
            let r = grpc.unary(tonic::Request::new(one), path, RawCodec).await?;
            return Ok(vec![r.into_inner()]);
        }
        Shape::ServerStream => {
            let one = messages.into_iter().next().unwrap_or_default();
            grpc.server_streaming(tonic::Request::new(one), path, RawCodec)
                .await?
                .into_inner()
        }
        Shape::Bidi => {
            let requests = futures::stream::iter(messages);
            grpc.streaming(tonic::Request::new(requests), path, RawCodec)
                .await?
                .into_inner()
        }
    };
    let mut got = Vec::new();
    while got.len() < 4 {
        match stream.message().await? {
            Some(m) => got.push(m),
            None => break,
        }
    }
    Ok(got)
}

/// Sends `body` as the whole HTTP/2 request body of `spool.v1.Broker/{method}`: the gRPC
/// framing (compressed flag, length prefix) is whatever `body` says. Returns the status.
///
/// The body is a `String` because that is the one ready-made `http_body::Body` at hand
/// without another dependency, so `body` must be valid UTF-8 (every byte below 0x80).
async fn frame_call(channel: &Channel, method: &str, body: &[u8]) -> Status {
    use tower::ServiceExt;
    let body = String::from_utf8(body.to_vec()).expect("an ASCII body");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/spool.v1.Broker/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .expect("a valid request");
    let resp = channel
        .clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| panic!("{method}: transport error {e}"));
    if let Some(s) = Status::from_header_map(resp.headers())
        && s.code() != Code::Ok
    {
        return s;
    }
    let status = resp.status();
    let mut stream = tonic::Streaming::new_response(RawCodec, resp.into_body(), status, None, None);
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Status::ok(""),
            Err(s) => return s,
        }
    }
}

/// Awaits a call and asserts it failed with one of `want`; returns the status.
async fn expect<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, Status>>,
    want: &[Code],
) -> Status {
    let s = match within(what, call).await {
        Ok(v) => panic!("{what}: expected {want:?}, got OK: {v:?}"),
        Err(s) => s,
    };
    assert!(
        want.contains(&s.code()),
        "{what}: expected {want:?}, got {:?}: {}",
        s.code(),
        s.message()
    );
    s
}

/// A raw connection to the broker, for calls the generated client cannot make.
async fn channel(broker: &Broker) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{}", broker.addr)).expect("a valid URI");
    within("connect", endpoint.connect())
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", broker.addr))
}

/// The broker's resident set size, from `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Samples the broker's RSS until it stops growing (two samples 1 MiB apart at most), or
/// for at most `limit`; returns the last sample in KiB.
async fn settled_rss_kib(pid: u32, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = rss_kib(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) <= 1024 || tokio::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// Asserts the broker process is alive and never logged a panic.
fn assert_alive(broker: &Broker) {
    let pid = broker.pid();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "spoold died\n{}",
        broker.log()
    );
    let log = broker.log();
    assert!(!log.contains("panicked"), "spoold panicked:\n{log}");
}

fn join_req(join: JoinGroup) -> ConsumeRequest {
    ConsumeRequest {
        kind: Some(Req::Join(join)),
    }
}

/// Opens a Consume stream whose requests come from the returned sender.
async fn consume(
    c: &mut Client,
    first: Vec<ConsumeRequest>,
) -> (
    tokio::sync::mpsc::Sender<ConsumeRequest>,
    Result<tonic::Streaming<ConsumeResponse>, Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for r in first {
        tx.send(r).await.expect("queue a request");
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let res = within("Consume", c.consume(stream))
        .await
        .map(|r| r.into_inner());
    (tx, res)
}

/// Appends `n` records of `size` bytes to a partition, in requests of at most `per`.
async fn fill(c: &mut Client, topic: &str, partition: u32, n: u32, size: usize, per: u32) {
    let mut i = 0;
    while i < n {
        let k = per.min(n - i);
        let records = (i..i + k)
            .map(|j| {
                let mut v = format!("{j:08}-").into_bytes();
                v.resize(size, b'x');
                rec(v)
            })
            .collect();
        append(c, topic, partition, records).await;
        i += k;
    }
}

// ---------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------

/// One broker, every hostile case in turn, the witness in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_its_documented_status_and_the_broker_keeps_serving() {
    let broker = Broker::start_with(&[
        "--max-request-bytes",
        &MAX_REQUEST_BYTES.to_string(),
        "--retention-check-ms",
        "100",
        "--fsync",
        "never",
    ]);
    let mut w = Witness::new(&broker).await;
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 3, FsyncPolicy::Unspecified).await;
    for p in 0..3 {
        fill(&mut c, "t", p, 50, 16, 50).await;
    }
    let rss_before = rss_kib(broker.pid());
    w.still_serving("setup").await;

    malformed_protobuf_on_every_rpc(&broker, &mut w).await;
    malformed_grpc_frames(&broker, &mut w).await;
    oversized_requests(&mut c, &mut w).await;
    absurd_limits(&mut c, &mut w).await;
    absurd_topic_configs(&mut c, &mut w).await;
    hostile_names(&mut c, &mut w).await;
    offsets_outside_the_log(&mut c, &mut w).await;
    unknown_topics_partitions_and_groups(&mut c, &mut w).await;
    consume_streams_that_do_not_start_with_a_join(&mut c, &mut w).await;

    assert_alive(&broker);
    let rss_after = rss_kib(broker.pid());
    eprintln!(
        "hostile matrix: broker RSS {} MiB before, {} MiB after ({} witness checks)",
        rss_before / 1024,
        rss_after / 1024,
        w.checks
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 300 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
