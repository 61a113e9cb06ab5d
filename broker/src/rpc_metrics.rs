//! A tower layer over every gRPC service: counts requests and error answers by RPC and
//! status code, times `Read`, and rewrites tonic's `OUT_OF_RANGE` for an oversized message
//! to the `RESOURCE_EXHAUSTED` the API promises.
//!
//! The status is the one a response opens with: an error answered before any message
//! (trailers-only, as every unary error is) has its code in the headers; anything else
//! counts as `OK` (a stream that fails later is counted by how it opened). Labels stay
//! bounded whatever paths clients send: a path that names no method (tonic answers
//! `UNIMPLEMENTED`) is counted as `rpc="unknown"`.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tonic::codegen::http;

use crate::service::Inner;

/// The layer `server.rs` puts in front of every service.
#[derive(Clone)]
pub struct RpcLayer {
    inner: Arc<Inner>,
}

impl RpcLayer {
    pub fn new(inner: Arc<Inner>) -> RpcLayer {
        RpcLayer { inner }
    }
}

impl<S> tower::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, service: S) -> RpcService<S> {
        RpcService {
            service,
            inner: Arc::clone(&self.inner),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    service: S,
    inner: Arc<Inner>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let rpc = rpc_name(req.uri().path());
        // The services' interceptors see no path: they read the method from here.
        req.extensions_mut().insert(RpcMethod(rpc.clone()));
        let started = Instant::now();
        let answer = self.service.call(req);
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let resp = oversized_is_resource_exhausted(answer.await?);
            let code = resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0);
            let rpc = if code == tonic::Code::Unimplemented as i32 {
                "unknown".to_string()
            } else {
                rpc
            };
            inner
                .metrics
                .observe_rpc(&rpc, code_name(code), started.elapsed());
            Ok(resp)
        })
    }
}

/// The method a request calls (`Append`), as [`rpc_name`] names it.
#[derive(Clone, Debug)]
pub struct RpcMethod(pub String);

/// `/spool.v1.Broker/Append` → `Append`; another service's method keeps its service's
/// name (`grpc.health.v1.Health/Check`).
fn rpc_name(path: &str) -> String {
    let path = path.trim_start_matches('/');
    path.strip_prefix("spool.v1.Broker/")
        .unwrap_or(path)
        .to_string()
}

/// The canonical name of a gRPC status code, as the gRPC spec spells it.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// tonic answers a request over the decoding limit with `OUT_OF_RANGE`; the API promises
/// `RESOURCE_EXHAUSTED` (the gRPC convention for a message over a size limit). Rewrites the
/// status of such trailers-only answers.
fn oversized_is_resource_exhausted<B>(mut resp: http::Response<B>) -> http::Response<B> {
    let headers = resp.headers_mut();
    let oversized = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.windows(9).any(|w| w == b"too%20lar") || m.windows(9).any(|w| w == b"too large")
        });
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_grpc_spec_and_paths_name_the_method() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(16), "UNAUTHENTICATED");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
        assert_eq!(rpc_name("/spool.v1.Broker/Append"), "Append");
        assert_eq!(
            rpc_name("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
    }
}
