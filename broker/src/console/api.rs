//! The JSON API under `/api/v1/` on the admin listener: what the web console reads and
//! what `curl` users get. Every endpoint builds the request message of a gRPC call and
//! runs the broker's own handler for it (`BrokerService`), so authentication, ACLs,
//! validation and limits are the gRPC API's, with no second implementation of any rule.
//! Bodies and answers are those messages in the proto3 JSON mapping (`json.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use spool_proto::v1::broker_server::Broker as _;
use spool_proto::v1::*;
use tonic::Status;

use super::json;
use crate::auth::{Operation as Op, Principal, Resource};
use crate::service::{BrokerService, Inner};

pub fn routes(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/api/v1/topics", get(list_topics))
        .route("/api/v1/topics/{topic}", get(describe_topic))
        .route("/api/v1/topics/{topic}/records", post(produce))
        .route(
            "/api/v1/topics/{topic}/partitions/{partition}/records",
            get(read_records),
        )
        .route("/api/v1/groups", get(list_groups))
        .route("/api/v1/groups/{group}", get(describe_group))
        .route("/api/v1/queues", get(list_queues))
        .route("/api/v1/queues/{topic}/{queue}", get(describe_queue))
        .route("/api/v1/queues/{topic}/{queue}/redrive", post(redrive))
        .route("/api/v1/history", get(history))
        .route("/api/v1/node", get(node))
        .with_state(inner)
}

type Params = Query<HashMap<String, String>>;

/// Runs `call` as the caller of this HTTP request (its `Authorization` header, as a gRPC
/// call's) and answers its response, named `answer`, as JSON.
async fn run<Req, Resp, Fut>(
    inner: &Arc<Inner>,
    headers: &HeaderMap,
    request: Req,
    answer: &str,
    call: impl FnOnce(BrokerService, tonic::Request<Req>) -> Fut,
) -> Response
where
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    Resp: prost::Message,
{
    let mut req = tonic::Request::new(request);
    match caller(inner, headers) {
        Ok(who) => req.extensions_mut().insert(who),
        Err(s) => return error(s),
    };
    match call(BrokerService::new(Arc::clone(inner)), req).await {
        Ok(resp) => (
            [(header::CONTENT_TYPE, "application/json")],
            json::to_json(answer, &resp.into_inner()),
        )
            .into_response(),
        Err(s) => error(s),
    }
}

/// Authenticates an HTTP request and checks that its caller may `op` on `resource`.
pub fn admit(
    inner: &Inner,
    headers: &HeaderMap,
    op: Op,
    resource: Resource<'_>,
) -> Result<Principal, Status> {
    let who = caller(inner, headers)?;
    inner.auth.check(&who, op, resource)?;
    Ok(who)
}

/// Who sent an HTTP request: its `Authorization` header checked as a gRPC call's would be.
fn caller(inner: &Inner, headers: &HeaderMap) -> Result<Principal, Status> {
    let mut probe = tonic::Request::new(());
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let value = auth
            .to_str()
            .ok()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Status::unauthenticated("missing or invalid credentials"))?;
        probe.metadata_mut().insert("authorization", value);
    }
    inner.auth.authenticate(&probe)
}

/// The broker's own state for the overview: its version, whether auth and console writes
/// are on, and its failed partitions (as the `spool.v1.Partitions` health service sees it).
async fn node(State(i): State<Arc<Inner>>, h: HeaderMap) -> Response {
    if let Err(s) = caller(&i, &h) {
        return error(s);
    }
    let failed: Vec<serde_json::Value> = i
        .registry
        .list()
        .iter()
        .flat_map(|t| {
            t.partitions.iter().filter_map(|p| {
                p.failure().map(
                    |f| serde_json::json!({ "topic": t.name, "partition": p.index, "failure": f }),
                )
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "health": if failed.is_empty() { "SERVING" } else { "PARTITIONS_FAILED" },
        "auth": i.auth.enabled(),
        "consoleWrites": i.auth.enabled() || i.config.console_writes,
        "failedPartitions": failed,
    }))
    .into_response()
}

/// The console's history: per topic the record and read-byte totals, per (group, topic)
/// the lag, sampled every `sampleMs`; only what the caller may describe.
async fn history(State(i): State<Arc<Inner>>, h: HeaderMap) -> Response {
    let who = match caller(&i, &h) {
        Ok(who) => who,
        Err(s) => return error(s),
    };
    let topics: Vec<serde_json::Value> = i
        .history
        .topics()
        .into_iter()
        .filter(|(t, _)| i.auth.allows(&who, Op::Describe, Resource::Topic(t)))
        .map(|(topic, samples)| {
            let samples: Vec<serde_json::Value> = samples
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "atMs": s.at_ms.to_string(),
                        "records": s.records.to_string(),
                        "readBytes": s.read_bytes.to_string(),
                    })
                })
                .collect();
            serde_json::json!({ "topic": topic, "samples": samples })
        })
        .collect();
    let groups: Vec<serde_json::Value> = i
        .history
        .groups()
        .into_iter()
        .filter(|((g, t), _)| {
            i.auth.allows(&who, Op::Describe, Resource::Group(g))
                && i.auth.allows(&who, Op::Describe, Resource::Topic(t))
        })
        .map(|((group, topic), samples)| {
            let samples: Vec<serde_json::Value> = samples
                .iter()
                .map(|s| serde_json::json!({ "atMs": s.at_ms.to_string(), "lag": s.lag.to_string() }))
                .collect();
            serde_json::json!({ "group": group, "topic": topic, "samples": samples })
        })
        .collect();
    axum::Json(serde_json::json!({
        "sampleMs": i.config.console_sample_ms.to_string(),
        "topics": topics,
        "groups": groups,
    }))
    .into_response()
}

/// A gRPC status as an HTTP answer: `{"code": "NOT_FOUND", "message": "..."}`.
pub fn error(s: Status) -> Response {
    use tonic::Code as C;
    let http = match s.code() {
        C::Ok => StatusCode::OK,
        C::InvalidArgument | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::FailedPrecondition | C::Aborted => StatusCode::CONFLICT,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({
        "code": crate::rpc_metrics::code_name(s.code() as i32),
        "message": s.message(),
    });
    (http, axum::Json(body)).into_response()
}

/// A query parameter as a number; `INVALID_ARGUMENT` naming it if it is not one.
fn number<T: std::str::FromStr>(q: &Params, name: &str) -> Result<Option<T>, Status> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            Status::invalid_argument(format!("query parameter {name}={v:?} is not a number"))
        }),
    }
}

async fn list_topics(State(i): State<Arc<Inner>>, h: HeaderMap) -> Response {
    run(
        &i,
        &h,
        ListTopicsRequest {},
        "spool.v1.ListTopicsResponse",
        |s, r| async move { s.list_topics(r).await },
    )
    .await
}

async fn describe_topic(
    State(i): State<Arc<Inner>>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let req = DescribeTopicRequest { name };
    run(
        &i,
        &h,
        req,
        "spool.v1.DescribeTopicResponse",
        |s, r| async move { s.describe_topic(r).await },
    )
    .await
}

/// `?offset=N&max_records=M&max_bytes=B`: records from `offset` (default 0), or from the
/// first at or after `timestamp_ms=T`; no long poll.
async fn read_records(
    State(i): State<Arc<Inner>>,
    h: HeaderMap,
    Path((topic, partition)): Path<(String, u32)>,
    q: Params,
) -> Response {
    let (offset, max_records, max_bytes) = match (
        number(&q, "offset"),
        number(&q, "max_records"),
        number(&q, "max_bytes"),
    ) {
        (Ok(o), Ok(m), Ok(b)) => (o.unwrap_or(0), m.unwrap_or(0), b.unwrap_or(0)),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return error(e),
    };
    let offset = match number::<i64>(&q, "timestamp_ms") {
        Ok(None) => offset,
        Ok(Some(ts)) => match offset_at(&i, &h, &topic, partition, ts).await {
            Ok(o) => o,
            Err(s) => return error(s),
        },
        Err(e) => return error(e),
    };
    let req = ReadRequest {
        topic,
        partition,
        offset,
        max_records,
        max_bytes,
        max_wait_ms: 0,
    };
    run(&i, &h, req, "spool.v1.ReadResponse", |s, r| async move {
        s.read(r).await
    })
    .await
}

/// The first offset of `partition` whose record's timestamp is at or after `ts` (the
/// lookup a `Subscribe` from `KIND_TIMESTAMP` makes), for a caller that may read the topic.
async fn offset_at(
    i: &Arc<Inner>,
    h: &HeaderMap,
    topic: &str,
    partition: u32,
    ts: i64,
) -> Result<u64, Status> {
    let who = caller(i, h)?;
    i.auth.check(&who, Op::Read, Resource::Topic(topic))?;
    let t = i.registry.get(topic)?;
    let log = Arc::clone(&t.partition(partition)?.log);
    // A time-index lookup reads the disk: not on the async runtime.
    let found = tokio::task::spawn_blocking(move || log.offset_for_timestamp(ts))
        .await
        .map_err(|e| Status::internal(format!("timestamp lookup: {e}")))?;
    Ok(found.map_err(crate::error::Error::from)?)
}

async fn list_groups(State(i): State<Arc<Inner>>, h: HeaderMap, q: Params) -> Response {
    let req = ListGroupsRequest {
        topic: q.get("topic").cloned().unwrap_or_default(),
    };
    run(
        &i,
        &h,
        req,
        "spool.v1.ListGroupsResponse",
        |s, r| async move { s.list_groups(r).await },
    )
    .await
}

async fn describe_group(
    State(i): State<Arc<Inner>>,
    h: HeaderMap,
    Path(group): Path<String>,
    q: Params,
) -> Response {
    let req = DescribeGroupRequest {
        group,
        topic: q.get("topic").cloned(),
    };
    run(
        &i,
        &h,
        req,
        "spool.v1.DescribeGroupResponse",
        |s, r| async move { s.describe_group(r).await },
    )
    .await
}

async fn list_queues(State(i): State<Arc<Inner>>, h: HeaderMap, q: Params) -> Response {
    let req = ListQueuesRequest {
        topic: q.get("topic").cloned().unwrap_or_default(),
    };
    run(
        &i,
        &h,
        req,
        "spool.v1.ListQueuesResponse",
        |s, r| async move { s.list_queues(r).await },
    )
    .await
}

async fn describe_queue(
    State(i): State<Arc<Inner>>,
    h: HeaderMap,
    Path((topic, queue)): Path<(String, String)>,
) -> Response {
    let req = DescribeQueueRequest { topic, queue };
    run(
        &i,
        &h,
        req,
        "spool.v1.DescribeQueueResponse",
        |s, r| async move { s.describe_queue(r).await },
    )
    .await
}

/// A body of `AppendRequest` in JSON (its `topic` is the path's): appends, as `Append`.
async fn produce(
    State(i): State<Arc<Inner>>,
    h: HeaderMap,
    Path(topic): Path<String>,
    body: Bytes,
) -> Response {
    let mut req: AppendRequest = match json::from_json("spool.v1.AppendRequest", &body) {
        Ok(r) => r,
        Err(e) => return error(Status::invalid_argument(e)),
    };
    req.topic = topic;
    run(&i, &h, req, "spool.v1.AppendResponse", |s, r| async move {
        s.append(r).await
    })
    .await
}

/// An optional body of `RedriveQueueRequest` fields (`maxPerSecond`): as `RedriveQueue`.
async fn redrive(
    State(i): State<Arc<Inner>>,
    h: HeaderMap,
    Path((topic, queue)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let mut req: RedriveQueueRequest = if body.is_empty() {
        RedriveQueueRequest::default()
    } else {
        match json::from_json("spool.v1.RedriveQueueRequest", &body) {
            Ok(r) => r,
            Err(e) => return error(Status::invalid_argument(e)),
        }
    };
    (req.topic, req.queue) = (topic, queue);
    run(
        &i,
        &h,
        req,
        "spool.v1.RedriveQueueResponse",
        |s, r| async move { s.redrive_queue(r).await },
    )
    .await
}
