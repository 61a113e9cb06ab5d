//! The JSON API under `/api/v1/` on the admin listener, against a real `spoold`: it answers
//! what the gRPC API does (the same handlers), in the proto3 JSON mapping; it refuses
//! unknown `Host`s, state changes that are not JSON or not enabled; and with auth on it
//! applies the caller's token and ACLs.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::Value;
use spool_proto::v1::*;

/// A GET of `path` with `headers`: the head (lowercased) and the body, as text.
fn raw_get(b: &Broker, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut s = TcpStream::connect(b.metrics_addr).unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n", b.metrics_addr);
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_ascii_lowercase(), body.to_string())
}

/// One HTTP/1.0 request to the admin listener; the status and the JSON body.
fn http(
    b: &Broker,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect(b.metrics_addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {}\r\n", b.metrics_addr));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body:?}"));
    (status, json)
}

/// `GET /api/v1/topics` naming `host` in its `Host` header.
fn topics_as_host(b: &Broker, host: &str) -> (u16, Value) {
    http(b, "GET", "/api/v1/topics", &[("Host", host)], "")
}

fn get(b: &Broker, path: &str) -> (u16, Value) {
    http(b, "GET", path, &[], "")
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A call with `token` (if any) as its bearer token, JSON-typed when it is a POST.
fn as_(b: &Broker, token: Option<&str>, method: &str, path: &str, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    if method == "POST" {
        headers.push(JSON);
    }
    http(b, method, path, &headers, body)
}

/// An answer's HTTP status and error code.
fn outcome(r: &(u16, Value)) -> (u16, Option<&str>) {
    (r.0, r.1["code"].as_str())
}

#[tokio::test]
async fn the_json_api_answers_what_the_grpc_api_does() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "t", 2, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("r", 0..3)).await;
    commit(&mut c, "billing", "t", 0, 1).await;
    c.create_queue(CreateQueueRequest {
        topic: "t".into(),
        queue: "q".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let (s, topics) = get(&b, "/api/v1/topics");
    assert_eq!(s, 200, "{topics}");
    assert_eq!(topics["topics"][0]["name"], "t");
    assert_eq!(topics["topics"][0]["partitions"], 2);
    assert_eq!(
        topics["topics"][0]["partitionInfo"][0]["endOffset"], "3",
        "64-bit as strings"
    );
    let (s, read) = get(
        &b,
        "/api/v1/topics/t/partitions/0/records?offset=1&max_records=5",
    );
    assert_eq!(s, 200, "{read}");
    let offsets: Vec<&Value> = read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["offset"])
        .collect();
    assert_eq!(offsets, ["1", "2"]);
    assert_eq!(read["records"][0]["value"], "ci0x", "bytes as base64 (r-1)");
    // From a timestamp: the first record at or after it (all were appended just now).
    let (s, early) = get(&b, "/api/v1/topics/t/partitions/0/records?timestamp_ms=0");
    assert_eq!(
        (s, early["records"][0]["offset"].as_str()),
        (200, Some("0")),
        "{early}"
    );
    let (s, late) = get(
        &b,
        "/api/v1/topics/t/partitions/0/records?timestamp_ms=4102444800000",
    );
    assert_eq!(
        (s, late["records"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{late}"
    );
    let (s, node) = get(&b, "/api/v1/node");
    assert_eq!(
        (s, node["health"].as_str(), node["auth"].as_bool()),
        (200, Some("SERVING"), Some(false))
    );
    assert!(
        node["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{node}"
    );
    let (s, group) = get(&b, "/api/v1/groups/billing?topic=t");
    assert_eq!(s, 200, "{group}");
    assert_eq!(group["topics"][0]["partitions"][0]["committed"], "1");
    assert_eq!(group["topics"][0]["partitions"][0]["lag"], "2");
    let (s, groups) = get(&b, "/api/v1/groups");
    assert_eq!(s, 200);
    assert_eq!(groups["groups"][0]["group"], "billing", "{groups}");
    let (s, queue) = get(&b, "/api/v1/queues/t/q");
    assert_eq!(s, 200, "{queue}");
    assert_eq!(queue["queue"]["ready"], "3");
    let (s, queues) = get(&b, "/api/v1/queues?topic=t");
    assert_eq!((s, queues["queues"].as_array().unwrap().len()), (200, 1));

    // Errors: the gRPC status, as HTTP, with the broker's message.
    let (s, e) = get(&b, "/api/v1/topics/nope");
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("nope"), "{e}");
    let (s, e) = get(&b, "/api/v1/topics/t/partitions/0/records?offset=x");
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{e}"
    );
    let (s, e) = get(&b, "/api/v1/topics/t/partitions/9/records");
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "as Read says: {e}"
    );
    let (s, e) = get(&b, "/api/v1/topics/t/partitions/0/records?offset=99");
    assert_eq!((s, e["code"].as_str()), (400, Some("OUT_OF_RANGE")), "{e}");
}

#[tokio::test]
async fn unknown_hosts_and_state_changes_without_json_or_consent_are_refused() {
    let b = Broker::start();
    let mut c = b.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    let (s, e) = topics_as_host(&b, "evil.example:7451");
    assert_eq!(s, 403, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("--console-host"),
        "{e}"
    );
    let body = r#"{"records":[{"value":"aGk="}]}"#;
    let (s, e) = http(&b, "POST", "/api/v1/topics/t/records", &[JSON], body);
    assert_eq!(s, 403, "writes are off by default: {e}");
    assert!(
        e["message"].as_str().unwrap().contains("--console-writes"),
        "{e}"
    );
    assert!(
        read(&mut c, "t", 0, 0, 10)
            .await
            .unwrap()
            .records
            .is_empty()
    );

    let b = Broker::start_with(&["--console-writes", "--console-host", "spool.example"]);
    let mut c = b.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    let (s, _) = topics_as_host(&b, "spool.example:7451");
    assert_eq!(s, 200);
    let (s, e) = http(
        &b,
        "POST",
        "/api/v1/topics/t/records",
        &[("Content-Type", "text/plain")],
        body,
    );
    assert_eq!(s, 415, "{e}");
    let (s, e) = http(
        &b,
        "POST",
        "/api/v1/topics/t/records",
        &[JSON],
        r#"{"recrds":[]}"#,
    );
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{e}"
    );
    let (s, appended) = http(&b, "POST", "/api/v1/topics/t/records", &[JSON], body);
    assert_eq!(s, 200, "{appended}");
    assert_eq!(appended["baseOffset"], "0");
    let got = read(&mut c, "t", 0, 0, 10).await.unwrap().records;
    assert_eq!(values(&got), ["hi"], "readable through the gRPC Read");
    // A redrive from the console: the queue's dead-letter range (empty here).
    c.create_queue(CreateQueueRequest {
        topic: "t".into(),
        queue: "q".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (s, r) = http(&b, "POST", "/api/v1/queues/t/q/redrive", &[JSON], "");
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["startOffset"].as_str(), r["endOffset"].as_str()),
        (Some("0"), Some("0"))
    );
}

#[tokio::test]
async fn metrics_can_require_a_token_with_describe_on_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = auth_config(
        dir.path(),
        &[("scraper", "scrape-token"), ("app", "app-token")],
        &[
            ("scraper", "cluster", "\"describe\""),
            ("app", "topic:*", "\"describe\""),
        ],
    );
    let b = Broker::start_with(&["--config", config.to_str().unwrap(), "--metrics-auth"]);
    let status = |head: &str| head.split(' ').nth(1).unwrap_or("").to_string();
    let (head, _) = raw_get(&b, "/metrics", &[]);
    assert_eq!(status(&head), "401", "{head}");
    let (head, _) = raw_get(&b, "/metrics", &[("Authorization", "Bearer app-token")]);
    assert_eq!(status(&head), "403", "{head}");
    let (head, body) = raw_get(&b, "/metrics", &[("Authorization", "Bearer scrape-token")]);
    assert_eq!(status(&head), "200", "{head}");
    assert!(
        body.contains("# TYPE spool_appended_records counter"),
        "{body}"
    );
}

#[tokio::test]
async fn with_auth_on_the_api_applies_the_callers_token_and_acls() {
    let dir = tempfile::tempdir().unwrap();
    let config = auth_config(
        dir.path(),
        &[("admin", "admin-token"), ("viewer", "viewer-token")],
        &[
            (
                "admin",
                "topic:*",
                "\"create\", \"describe\", \"append\", \"read\"",
            ),
            ("viewer", "topic:t", "\"describe\""),
        ],
    );
    let b = Broker::start_with(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        outcome(&as_(&b, None, "GET", "/api/v1/topics/t", "")),
        (401, Some("UNAUTHENTICATED"))
    );
    assert_eq!(as_(&b, Some("wrong"), "GET", "/api/v1/topics", "").0, 401);
    // The admin creates the topic over gRPC, and appends through the API (writes are on
    // with auth: tokens and ACLs decide).
    let mut c = b.client().await;
    let mut req = tonic::Request::new(CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: None,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer admin-token".parse().unwrap());
    c.create_topic(req).await.unwrap();
    let body = r#"{"records":[{"value":"aGk="}]}"#;
    let produce = "/api/v1/topics/t/records";
    let records = "/api/v1/topics/t/partitions/0/records";
    assert_eq!(as_(&b, Some("admin-token"), "POST", produce, body).0, 200);
    // The viewer may describe, not read or append.
    let (s, t) = as_(&b, Some("viewer-token"), "GET", "/api/v1/topics/t", "");
    assert_eq!((s, t["topic"]["name"].as_str()), (200, Some("t")), "{t}");
    for (method, path, body) in [("GET", records, ""), ("POST", produce, body)] {
        assert_eq!(
            outcome(&as_(&b, Some("viewer-token"), method, path, body)),
            (403, Some("PERMISSION_DENIED")),
            "{method} {path}"
        );
    }
    let (s, r) = as_(&b, Some("admin-token"), "GET", records, "");
    assert_eq!(
        (s, r["records"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{r}"
    );
}

#[tokio::test]
async fn the_pages_are_served_with_a_script_src_self_policy() {
    let b = Broker::start();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
    ] {
        let (head, _) = raw_get(&b, path, &[]);
        assert!(head.starts_with("http/1.0 200"), "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'self'; script-src 'self';"),
            "{path}: {head}"
        );
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
    }
}

#[tokio::test]
async fn the_history_samples_totals_and_lag_into_bounded_rings() {
    let b = Broker::start_with(&["--console-sample-ms", "20"]);
    let mut c = b.client().await;
    create_topic(&mut c, "t", 1, FsyncPolicy::Never).await;
    append(&mut c, "t", 0, recs("r", 0..3)).await;
    commit(&mut c, "g", "t", 0, 1).await;
    let sampled = |h: &Value, records: &str, lag: &str| {
        let topic = h["topics"].as_array()?.iter().find(|t| t["topic"] == "t")?;
        let group = h["groups"].as_array()?.iter().find(|g| g["group"] == "g")?;
        let last = |s: &Value, k: &str| {
            s["samples"].as_array()?.last()?[k]
                .as_str()
                .map(str::to_string)
        };
        (last(topic, "records")? == records && last(group, "lag")? == lag).then_some(())
    };
    within("a sample of t and g", async {
        while sampled(&get(&b, "/api/v1/history").1, "3", "2").is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    append(&mut c, "t", 0, recs("more", 0..2)).await;
    within("a later sample", async {
        while sampled(&get(&b, "/api/v1/history").1, "5", "4").is_none() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // After more than 90 samples the ring holds 90, oldest first.
    let full = within("a full ring", async {
        loop {
            let h = get(&b, "/api/v1/history").1;
            let n = h["topics"][0]["samples"].as_array().map_or(0, Vec::len);
            assert!(n <= 90, "{n} samples");
            if n == 90 {
                return h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let at: Vec<i64> = full["topics"][0]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["atMs"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "in time order");
    assert_eq!(full["sampleMs"], "20");
}
