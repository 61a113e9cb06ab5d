//! Streams that misbehave: malformed messages mid-stream, a thousand Subscribe streams
//! never read, half-sent messages that stall; and a topic kept forever.

use super::*;

#[tokio::test]
async fn append_stream_with_a_malformed_message_ends_with_an_error() {
    let broker = Broker::start_with(&["--fsync", "never"]);
    let channel = channel(&broker).await;
    let out = raw_call(
        &channel,
        "AppendStream",
        Shape::Bidi,
        vec![Bytes::from_static(&[0x0f, 0x01])],
    )
    .await;
    match out {
        Ok(m) => panic!("a malformed AppendStream request ended the stream with OK ({m:?})"),
        Err(s) => assert!(DECODE_ERROR.contains(&s.code()), "{s}"),
    }
}

#[tokio::test]
async fn consume_with_a_malformed_message_after_the_join_ends_with_an_error() {
    let broker = Broker::start_with(&["--fsync", "never"]);
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    let channel = channel(&broker).await;
    let join = join_req(JoinGroup {
        group: "g".into(),
        topic: "t".into(),
        ..JoinGroup::default()
    });
    let messages = vec![
        Bytes::from(prost::Message::encode_to_vec(&join)),
        Bytes::from_static(&[0x0f, 0x01]),
    ];
    match raw_call(&channel, "Consume", Shape::Bidi, messages).await {
        Ok(m) => panic!(
            "a malformed request after the join ended Consume with OK after {} messages",
            m.len()
        ),
        Err(s) => assert!(DECODE_ERROR.contains(&s.code()), "{s}"),
    }
}

#[tokio::test]
async fn a_topic_with_retention_ms_u64_max_keeps_its_records() {
    let broker = Broker::start_with(&["--retention-check-ms", "100", "--fsync", "never"]);
    let mut c = broker.client().await;
    let req = CreateTopicRequest {
        name: "forever".into(),
        partitions: 1,
        config: Some(TopicConfig {
            segment_bytes: 64 * 1024,
            retention_ms: u64::MAX,
            ..TopicConfig::default()
        }),
        ..Default::default()
    };
    within("CreateTopic", c.create_topic(req))
        .await
        .expect("CreateTopic retention_ms=u64::MAX");
    fill(&mut c, "forever", 0, 400, 1000, 100).await;
    // Wait for three retention passes to have run over the filled topic.
    let runs = |b: &Broker| -> u64 {
        let body = b.metrics();
        body.lines()
            .find_map(|l| l.strip_prefix("spool_retention_runs_total "))
            .unwrap_or_else(|| panic!("no spool_retention_runs_total in\n{body}"))
            .trim()
            .parse()
            .expect("a number")
    };
    let after_fill = runs(&broker);
    within("three retention passes", async {
        while runs(&broker) < after_fill + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let p = describe(&mut c, "forever").await.partition_info[0].clone();
    assert_eq!(
        (p.start_offset, p.end_offset),
        (0, 400),
        "records retained for 2^64-1 ms were deleted"
    );
}

// ---------------------------------------------------------------------------------------
// Many streams, never read
// ---------------------------------------------------------------------------------------

/// Channels the unread streams are spread over (HTTP/2 servers cap streams per connection).
const STREAM_CHANNELS: usize = 10;

/// 1,000 Subscribe streams over a topic small enough that each stream's backlog is a
/// few responses: the broker keeps serving everyone else and its memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unread_subscribe_streams_block_no_one() {
    unread_streams(500).await;
}

/// The same with enough data that every stream's queue fills (16 responses of 1,000
/// records) and more than the client's HTTP/2 windows take in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unread_subscribe_streams_with_full_queues_hold_bounded_memory() {
    unread_streams(20_000).await;
}

/// Opens 1,000 Subscribe streams on a topic of `records` 100-byte records, never reads
/// them, and checks the witness, another client's tail, and the broker's RSS growth.
async fn unread_streams(records: u32) {
    const STREAMS: usize = 1000;
    let broker = Broker::start_with(&["--fsync", "never"]);
    let mut w = Witness::new(&broker).await;
    let mut c = broker.client().await;
    create_topic(&mut c, "flood", 1, FsyncPolicy::Never).await;
    fill(&mut c, "flood", 0, records, 100, 2000).await;
    let pid = broker.pid();
    let before = settled_rss_kib(pid, Duration::from_secs(5)).await;

    let mut streams = Vec::with_capacity(STREAMS);
    let mut clients = Vec::new();
    for _ in 0..STREAM_CHANNELS {
        clients.push(broker.client().await);
    }
    for i in 0..STREAMS {
        let client = &mut clients[i % STREAM_CHANNELS];
        let s = subscribe(
            client,
            SubscribeRequest {
                topic: "flood".into(),
                start: start(Kind::Earliest),
                ..SubscribeRequest::default()
            },
        )
        .await
        .unwrap_or_else(|s| panic!("Subscribe #{i}: {s}"));
        streams.push(s);
    }
    let open = settled_rss_kib(pid, Duration::from_secs(30)).await;
    eprintln!(
        "{STREAMS} unread Subscribe streams on {records} records: broker RSS {} MiB before, {} MiB with them open (+{} MiB)",
        before / 1024,
        open / 1024,
        open.saturating_sub(before) / 1024
    );
    w.still_serving("1,000 unread streams").await;
    // Another client appends and tails while they are open.
    let mut other = broker.client().await;
    create_topic(&mut other, "other", 1, FsyncPolicy::Never).await;
    let mut tail = subscribe(
        &mut other,
        SubscribeRequest {
            topic: "other".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .expect("Subscribe other");
    append(&mut other, "other", 0, recs("o", 0..10)).await;
    assert_eq!(
        values(
            &take_records(&mut tail, 10)
                .await
                .into_iter()
                .map(|(_, r)| r)
                .collect::<Vec<_>>()
        ),
        values(&recs("o", 0..10))
    );
    append(&mut c, "flood", 0, recs("more", 0..10)).await;
    assert_alive(&broker);
    assert!(
        open.saturating_sub(before) < 300 * 1024,
        "{STREAMS} unread streams grew the broker's RSS from {before} KiB to {open} KiB"
    );

    drop(streams);
    drop(clients);
    let after = settled_rss_kib(pid, Duration::from_secs(10)).await;
    eprintln!("after closing them: {} MiB", after / 1024);
    w.still_serving("closing 1,000 unread streams").await;
}

// ---------------------------------------------------------------------------------------
// Half-sent messages
// ---------------------------------------------------------------------------------------

/// Just enough HTTP/2 (RFC 9113) to open gRPC streams and leave them half-sent: the
/// preface, SETTINGS and PING acknowledgements, HEADERS with literal (never indexed or
/// Huffman-coded) header fields, and DATA.
mod h2 {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::OwnedWriteHalf;
    use tokio::sync::Mutex;

    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    /// A client connection that answers the server's SETTINGS and PINGs in the background.
    pub struct Conn {
        w: Arc<Mutex<OwnedWriteHalf>>,
        next_stream: u32,
        authority: String,
        reader: tokio::task::JoinHandle<bool>,
    }

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// A header field as "literal without indexing, new name" (RFC 7541 6.2.2).
    fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }

    impl Conn {
        pub async fn connect(addr: SocketAddr) -> Conn {
            let s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            let (mut r, w) = s.into_split();
            let w = Arc::new(Mutex::new(w));
            {
                let mut w = w.lock().await;
                w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    .await
                    .expect("preface");
                w.write_all(&frame(SETTINGS, 0, 0, &[]))
                    .await
                    .expect("settings");
            }
            let writer = Arc::clone(&w);
            // Returns whether the server sent GOAWAY.
            let reader = tokio::spawn(async move {
                let mut head = [0u8; 9];
                loop {
                    if r.read_exact(&mut head).await.is_err() {
                        return false;
                    }
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let (ty, flags) = (head[3], head[4]);
                    let mut payload = vec![0u8; len];
                    if r.read_exact(&mut payload).await.is_err() {
                        return false;
                    }
                    let reply = match ty {
                        SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
                        PING if flags & ACK == 0 => Some(frame(PING, ACK, 0, &payload)),
                        GOAWAY => return true,
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let _ = writer.lock().await.write_all(&reply).await;
                    }
                }
            });
            Conn {
                w,
                next_stream: 1,
                authority: addr.to_string(),
                reader,
            }
        }

        /// Opens a gRPC call of `spool.v1.Broker/{method}` and sends `body` without ending
        /// the stream; returns the stream id.
        pub async fn open(&mut self, method: &str, body: &[u8]) -> u32 {
            let id = self.next_stream;
            self.next_stream += 2;
            let mut block = Vec::new();
            literal(&mut block, ":method", "POST");
            literal(&mut block, ":scheme", "http");
            literal(&mut block, ":path", &format!("/spool.v1.Broker/{method}"));
            literal(&mut block, ":authority", &self.authority);
            literal(&mut block, "content-type", "application/grpc");
            literal(&mut block, "te", "trailers");
            let mut w = self.w.lock().await;
            w.write_all(&frame(HEADERS, END_HEADERS, id, &block))
                .await
                .expect("headers");
            if !body.is_empty() {
                w.write_all(&frame(DATA, 0, id, body)).await.expect("data");
            }
            id
        }

        /// Writes raw bytes on the connection (to leave a frame itself half-sent).
        pub async fn raw(&mut self, bytes: &[u8]) {
            self.w.lock().await.write_all(bytes).await.expect("write");
        }

        /// True if the server has sent GOAWAY or closed the connection so far.
        pub fn closed(&self) -> bool {
            self.reader.is_finished()
        }
    }

    impl Drop for Conn {
        fn drop(&mut self) {
            self.reader.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_messages_that_stall_block_no_other_client() {
    let broker = Broker::start_with(&["--fsync", "never"]);
    let mut w = Witness::new(&broker).await;
    let mut c = broker.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    // A gRPC frame that announces 1,000 bytes and carries 10.
    let mut half = vec![0u8, 0, 0, 0x03, 0xe8];
    half.extend_from_slice(b"\x0a\x01t\x10\x00\x22\x10\x12\x0e");
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut conn = h2::Conn::connect(broker.addr).await;
        for _ in 0..20 {
            for method in ["AppendStream", "Append", "Consume", "CommitOffset"] {
                conn.open(method, &half).await;
            }
        }
        conns.push(conn);
    }
    // A stream opened with headers and no body at all, and a connection that stops in the
    // middle of a frame header.
    let mut bare = h2::Conn::connect(broker.addr).await;
    bare.open("AppendStream", &[]).await;
    bare.open("Append", &[]).await;
    bare.raw(&[0, 0, 9, 0]).await;
    // And a TCP connection that sends half the HTTP/2 preface.
    let mut preface = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut preface, b"PRI * HTTP/2.0\r\n")
        .await
        .expect("half a preface");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Everyone else is served: appends (unary and streamed), reads, subscriptions, groups.
    w.still_serving("stalled half-sent messages").await;
    for p in 0..2 {
        append(&mut c, "t", p, recs("ok", 0..100)).await;
    }
    let mut stream = within(
        "AppendStream",
        c.append_stream(futures::stream::iter((0..10).map(|i| AppendRequest {
            topic: "t".into(),
            partition: Some(0),
            records: vec![rec(format!("s-{i}"))],
            request_id: i,
            ..AppendRequest::default()
        }))),
    )
    .await
    .expect("AppendStream")
    .into_inner();
    let mut answers = 0;
    while let Some(r) = within("AppendStream answer", stream.next()).await {
        r.expect("an AppendStream answer");
        answers += 1;
    }
    assert_eq!(answers, 10);
    assert_eq!(read_to_end(&mut c, "t", 0, 0).await.len(), 110);
    let mut sub = subscribe(
        &mut c,
        SubscribeRequest {
            topic: "t".into(),
            ..SubscribeRequest::default()
        },
    )
    .await
    .expect("Subscribe");
    take_records(&mut sub, 210).await;
    commit(&mut c, "g", "t", 1, 100).await;
    assert_eq!(get_offsets(&mut c, "g", "t").await[1].committed, Some(100));
    // Nothing the stalled requests carried was appended.
    let info = describe(&mut c, "t").await;
    assert_eq!(
        info.partition_info
            .iter()
            .map(|p| p.end_offset)
            .collect::<Vec<_>>(),
        [110, 100]
    );
    assert!(
        conns.iter().all(|conn| !conn.closed()),
        "a stalled client is left alone, not disconnected, while it is within its keepalive"
    );
    assert_alive(&broker);

    // When the stalled clients go away, nothing is left behind and all is still well.
    drop(conns);
    drop(bare);
    drop(preface);
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.still_serving("the stalled clients left").await;
    assert_alive(&broker);
}
