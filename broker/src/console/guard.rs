//! What stands between a browser and the JSON API: a `Host` that is not one of this
//! listener's names is refused (a DNS-rebinding page would send its own), and a call that
//! changes state must be a `POST` of `application/json` (a cross-site form cannot send
//! one without a CORS preflight, which is never granted) and is allowed only with auth on
//! (then the caller's token and ACLs decide) or with `--console-writes`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The names a request's `Host` may carry, and whether writes are on.
pub struct Guard {
    hosts: Vec<String>,
    writes: bool,
}

impl Guard {
    /// Loopback names, the listener's own address (unless it is a wildcard), and the
    /// operator's `--console-host` names.
    pub fn new(listen: std::net::SocketAddr, extra: &[String], writes: bool) -> Guard {
        let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .map(|h| h.to_string())
            .collect();
        if !listen.ip().is_unspecified() {
            hosts.push(match listen {
                std::net::SocketAddr::V4(a) => a.ip().to_string(),
                std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
            });
        }
        hosts.extend(extra.iter().map(|h| h.to_ascii_lowercase()));
        Guard { hosts, writes }
    }

    fn allows_host(&self, host: &str) -> bool {
        let name = if host.starts_with('[') {
            host.split_inclusive(']').next().unwrap_or(host)
        } else {
            host.split(':').next().unwrap_or(host)
        };
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "code": code, "message": message })),
    )
        .into_response()
}

pub async fn check(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if !g.allows_host(&host) {
        return refuse(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!(
                "Host {host:?} is not a name of this listener (a guard against DNS rebinding): use 127.0.0.1 or localhost, or start spoold with --console-host {}",
                host.split(':').next().unwrap_or("NAME")
            ),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if !g.writes {
            return refuse(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "calls that change state are off on this listener: turn auth on (then tokens and ACLs decide), or start spoold with --console-writes".into(),
            );
        }
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
        if !json {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "INVALID_ARGUMENT",
                "a call that changes state must be a POST with Content-Type: application/json"
                    .into(),
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_matched_by_name_whatever_the_port() {
        let g = Guard::new(
            "127.0.0.1:7451".parse().unwrap(),
            &["Spool.Example".into()],
            false,
        );
        for ok in [
            "127.0.0.1:7451",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7451",
            "spool.example:7451",
        ] {
            assert!(g.allows_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "127.0.0.2:7451",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!g.allows_host(bad), "{bad}");
        }
        let any = Guard::new("0.0.0.0:7451".parse().unwrap(), &[], false);
        assert!(
            !any.allows_host("0.0.0.0:7451"),
            "a wildcard address names no host"
        );
    }
}
