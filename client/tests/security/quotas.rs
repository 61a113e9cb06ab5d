//! Quotas and their metrics.

use super::*;

// ---------------------------------------------------------------------------------------
// Quotas
// ---------------------------------------------------------------------------------------

/// Binds and frees a loopback port for the metrics endpoint, whose address TempBroker does
/// not expose.
fn free_loopback_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local address")
}

/// `GET /metrics` over HTTP/1.0 (never chunked); returns the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to /metrics");
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut text = String::new();
    within("scrape", s.read_to_string(&mut text))
        .await
        .expect("read /metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_string()
}

/// The value of the sample of `metric` whose labels include `principal="P"`.
fn sample(body: &str, metric: &str, principal: &str) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            l.contains(&format!("principal=\"{principal}\"")) && l.contains("direction=\"produce\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// At 200 kB/s with one second of burst, producing 1 MB takes at least (1 MB − 200 kB) /
/// 200 kB/s = 4 s (asserted with slack, as a lower bound only: the quota holds a tenant
/// back; how fast the rest runs is not the point). A single request needing more than
/// `quota_max_delay_ms` of waiting is RESOURCE_EXHAUSTED at once and takes nothing from the
/// bucket. Both show in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_quota_delays_then_refuses_and_is_measured() {
    const RATE: u64 = 200_000;
    const CHUNK: usize = 50_000;
    const TOTAL: usize = 1_000_000;
    let pki = Pki::new();
    let metrics = free_loopback_port();
    let broker = TempBroker::start_with(|cfg| {
        cfg.metrics_listen = metrics;
        cfg.tls = pki.server_tls(false, false);
        cfg.topic_defaults.fsync = "never".into();
        let mut acl = superuser("admin");
        acl.extend(superuser("tenant"));
        acl.extend(superuser("bursty"));
        cfg.auth = AuthConfig {
            tokens: vec![token("admin"), token("tenant"), token("bursty")],
            acl,
            mtls_identity: false,
        };
        let quota = |principal: &str| QuotaConfig {
            principal: principal.into(),
            produce_bytes_per_sec: RATE,
            consume_bytes_per_sec: 0,
        };
        cfg.quotas = vec![quota("tenant"), quota("bursty")];
        cfg.quota_max_delay_ms = 5000;
    })
    .await;
    let admin = client(&pki, &broker, Some("admin")).await;
    admin
        .create_topic("metered", 1, TopicConfig::default())
        .await
        .expect("create");
    let chunk = |n: usize| AppendRequest {
        topic: "metered".into(),
        partition: Some(0),
        records: vec![Record {
            value: Bytes::from(vec![b'q'; n]),
            ..Record::default()
        }],
        ..AppendRequest::default()
    };

    let tenant = client(&pki, &broker, Some("tenant")).await;
    let began = Instant::now();
    for _ in 0..TOTAL / CHUNK {
        tenant
            .append(chunk(CHUNK))
            .await
            .expect("delayed, not refused");
    }
    let took = began.elapsed();
    let floor = Duration::from_secs_f64((TOTAL as u64 - RATE) as f64 / RATE as f64);
    assert!(
        took >= floor.mul_f64(0.8),
        "1 MB at {RATE} B/s took {took:?}; the quota allows no less than {floor:?}"
    );

    // 1.5 MB in one request (two records: each must fit max_record_bytes) would wait
    // (1.5 MB − 200 kB) / 200 kB/s = 6.5 s > 5 s.
    let bursty = client(&pki, &broker, Some("bursty")).await;
    let mut big = chunk(750_000);
    big.records.push(big.records[0].clone());
    let began = Instant::now();
    assert_broker_error(
        "one request beyond the bound",
        bursty.append(big).await,
        Code::ResourceExhausted,
        "produce quota of 200000 bytes/s for principal bursty exceeded; slow down and retry",
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "refused without waiting out the bound"
    );
    // Nothing was taken: the full burst is still there.
    bursty
        .append(chunk(150_000))
        .await
        .expect("within the burst");

    let body = scrape(metrics).await;
    let delayed = sample(&body, "spool_quota_delay_seconds_total", "tenant")
        .unwrap_or_else(|| panic!("no delay sample for tenant:\n{body}"));
    assert!(
        delayed >= floor.as_secs_f64() * 0.8,
        "delay counted {delayed} s\n{body}"
    );
    let refused = sample(&body, "spool_quota_rejections_total", "bursty")
        .unwrap_or_else(|| panic!("no rejection sample for bursty:\n{body}"));
    assert_eq!(refused, 1.0, "{body}");
    assert_eq!(
        sample(&body, "spool_quota_rejections_total", "tenant"),
        None,
        "{body}"
    );
    broker.shutdown().await;
}
