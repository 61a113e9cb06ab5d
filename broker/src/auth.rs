//! Authentication (bearer tokens, mTLS certificate subjects) and authorization (ACL rules
//! per principal: topic and group patterns × operations).
//!
//! Tokens are configured by their SHA-256 digest, never in plain text
//! (`spoold hash-token` prints one). A request is authenticated once, by an interceptor
//! that puts its [`Principal`] into the request's extensions; each handler then checks the
//! operations it performs. With no tokens, no client CA and no rules configured, auth is
//! off and every request runs as the anonymous principal with every permission.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// Who is making a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal(pub Arc<str>);

impl Principal {
    pub fn anonymous() -> Principal {
        Principal(Arc::from("anonymous"))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a request does to a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Create,
    Delete,
    /// Change a topic's settings or partition count (`AlterTopic`).
    Alter,
    Describe,
    Append,
    Read,
    Commit,
    Admin,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Operation::Create => "create",
            Operation::Delete => "delete",
            Operation::Alter => "alter",
            Operation::Describe => "describe",
            Operation::Append => "append",
            Operation::Read => "read",
            Operation::Commit => "commit",
            Operation::Admin => "admin",
        };
        f.write_str(s)
    }
}

/// What an operation applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    /// A queue, by name (the same name on two topics is one resource, like groups).
    Queue(&'a str),
    /// The broker itself (reflection, and anything not tied to a topic or group).
    Cluster,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(t) => write!(f, "topic:{t}"),
            Resource::Group(g) => write!(f, "group:{g}"),
            Resource::Queue(q) => write!(f, "queue:{q}"),
            Resource::Cluster => f.write_str("cluster"),
        }
    }
}

/// A bearer token, by digest.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub principal: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// RFC 3339 time after which the token is refused.
    #[serde(default)]
    pub expires: Option<String>,
}

/// One ACL rule: `principal` (a name or `*` for any authenticated principal) may perform
/// `operations` on resources matching `resource`: `topic:NAME`, `topic:PREFIX*`,
/// `group:NAME`, `group:PREFIX*`, `queue:NAME`, `queue:PREFIX*`, or `cluster`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub principal: String,
    pub resource: String,
    pub operations: Vec<Operation>,
}

/// Authentication and authorization settings (`[auth]` in the config file).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    pub acl: Vec<AclRule>,
    /// Accept a verified client certificate's subject common name as the principal.
    pub mtls_identity: bool,
}

struct Token {
    principal: Principal,
    digest: [u8; 32],
    expires: Option<SystemTime>,
}

enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        match s.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(s.to_string()),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == name,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

enum ResourcePattern {
    Topic(Pattern),
    Group(Pattern),
    Queue(Pattern),
    Cluster,
}

struct Rule {
    principal: Option<String>,
    resource: ResourcePattern,
    operations: Vec<Operation>,
}

/// The broker's authenticator and authorizer.
pub struct Auth {
    enabled: bool,
    mtls_identity: bool,
    tokens: Vec<Token>,
    rules: Vec<Rule>,
}

/// SHA-256 of a token, in hex: what the config stores.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// Compares two digests in time independent of where they differ.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// Builds the checker; `client_ca` says whether TLS verifies client certificates.
    pub fn new(config: &AuthConfig, client_ca: bool) -> std::result::Result<Auth, String> {
        let mut tokens = Vec::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let digest = parse_hex32(&t.sha256).ok_or_else(|| {
                format!(
                    "auth.tokens[{i}].sha256 must be 64 hex digits (the SHA-256 of the token; `spoold hash-token` prints it)"
                )
            })?;
            let expires = match &t.expires {
                Some(s) => Some(humantime::parse_rfc3339(s).map_err(|e| {
                    format!("auth.tokens[{i}].expires {s:?} is not an RFC 3339 time: {e}")
                })?),
                None => None,
            };
            if t.principal.is_empty() {
                return Err(format!("auth.tokens[{i}].principal is empty"));
            }
            tokens.push(Token {
                principal: Principal(Arc::from(t.principal.as_str())),
                digest,
                expires,
            });
        }
        let mut rules = Vec::new();
        for (i, r) in config.acl.iter().enumerate() {
            let resource = if r.resource == "cluster" {
                ResourcePattern::Cluster
            } else if let Some(t) = r.resource.strip_prefix("topic:") {
                ResourcePattern::Topic(Pattern::parse(t))
            } else if let Some(g) = r.resource.strip_prefix("group:") {
                ResourcePattern::Group(Pattern::parse(g))
            } else if let Some(q) = r.resource.strip_prefix("queue:") {
                ResourcePattern::Queue(Pattern::parse(q))
            } else {
                return Err(format!(
                    "auth.acl[{i}].resource {:?} must be topic:NAME, topic:PREFIX*, group:NAME, group:PREFIX*, queue:NAME, queue:PREFIX* or cluster",
                    r.resource
                ));
            };
            rules.push(Rule {
                principal: (r.principal != "*").then(|| r.principal.clone()),
                resource,
                operations: r.operations.clone(),
            });
        }
        if config.mtls_identity && !client_ca {
            return Err(
                "auth.mtls_identity needs tls.client_ca, to verify client certificates".into(),
            );
        }
        Ok(Auth {
            enabled: !tokens.is_empty() || config.mtls_identity || !rules.is_empty(),
            mtls_identity: config.mtls_identity,
            tokens,
            rules,
        })
    }

    /// Whether requests must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who sent `req`. Wrong, missing or expired credentials are all the same
    /// `UNAUTHENTICATED`, so a caller learns nothing about which part was wrong.
    pub fn authenticate<T>(&self, req: &Request<T>) -> std::result::Result<Principal, Status> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        let refused = || Status::unauthenticated("missing or invalid credentials");
        if let Some(value) = req.metadata().get("authorization") {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .ok_or_else(refused)?;
            let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
            let now = SystemTime::now();
            let mut found = None;
            for t in &self.tokens {
                if same_digest(&t.digest, &digest) && t.expires.is_none_or(|e| now < e) {
                    found = Some(t.principal.clone());
                }
            }
            return found.ok_or_else(refused);
        }
        if self.mtls_identity
            && let Some(certs) = req.peer_certs()
            && let Some(leaf) = certs.first()
            && let Some(cn) = common_name(leaf.as_ref())
        {
            return Ok(Principal(Arc::from(cn.as_str())));
        }
        Err(refused())
    }

    /// Whether `who` may perform `op` on `resource`.
    pub fn allows(&self, who: &Principal, op: Operation, resource: Resource<'_>) -> bool {
        if !self.enabled {
            return true;
        }
        self.rules.iter().any(|r| {
            r.principal.as_deref().is_none_or(|p| p == who.name())
                && r.operations.contains(&op)
                && match (&r.resource, resource) {
                    (ResourcePattern::Topic(p), Resource::Topic(t)) => p.matches(t),
                    (ResourcePattern::Group(p), Resource::Group(g)) => p.matches(g),
                    (ResourcePattern::Queue(p), Resource::Queue(q)) => p.matches(q),
                    (ResourcePattern::Cluster, Resource::Cluster) => true,
                    _ => false,
                }
        })
    }

    /// [`Auth::allows`], as a `PERMISSION_DENIED` error naming the operation and resource.
    pub fn check(&self, who: &Principal, op: Operation, resource: Resource<'_>) -> Result<()> {
        if self.allows(who, op, resource) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "principal {who} may not {op} {resource}"
            )))
        }
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The principal an interceptor stored in the request (anonymous if none).
pub fn principal_of<T>(req: &Request<T>) -> Principal {
    req.extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(
            &AuthConfig {
                tokens: vec![
                    TokenConfig {
                        principal: "alice".into(),
                        sha256: hash_token("s3cret"),
                        expires: None,
                    },
                    TokenConfig {
                        principal: "old".into(),
                        sha256: hash_token("expired"),
                        expires: Some("2001-01-01T00:00:00Z".into()),
                    },
                ],
                acl: vec![
                    AclRule {
                        principal: "alice".into(),
                        resource: "topic:orders.*".into(),
                        operations: vec![Operation::Append, Operation::Read],
                    },
                    AclRule {
                        principal: "*".into(),
                        resource: "group:shared".into(),
                        operations: vec![Operation::Commit],
                    },
                ],
                mtls_identity: false,
            },
            false,
        )
        .unwrap()
    }

    fn with_token(token: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    #[test]
    fn tokens_authenticate_by_digest_and_expire() {
        let a = auth();
        assert_eq!(
            a.authenticate(&with_token("s3cret")).unwrap().name(),
            "alice"
        );
        for bad in ["wrong", "expired", ""] {
            let e = a.authenticate(&with_token(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert_eq!(e.message(), "missing or invalid credentials");
        }
        assert!(a.authenticate(&Request::new(())).is_err());
    }

    #[test]
    fn acl_rules_match_exact_and_prefix_and_default_deny() {
        let a = auth();
        let alice = Principal(Arc::from("alice"));
        let bob = Principal(Arc::from("bob"));
        assert!(a.allows(&alice, Operation::Append, Resource::Topic("orders.eu")));
        assert!(!a.allows(&alice, Operation::Delete, Resource::Topic("orders.eu")));
        assert!(!a.allows(&alice, Operation::Read, Resource::Topic("payments")));
        assert!(a.allows(&bob, Operation::Commit, Resource::Group("shared")));
        assert!(!a.allows(&bob, Operation::Commit, Resource::Group("shared2")));
        assert!(!a.allows(&bob, Operation::Admin, Resource::Cluster));
        let e = a
            .check(&bob, Operation::Read, Resource::Topic("orders.eu"))
            .unwrap_err();
        assert_eq!(e.to_string(), "principal bob may not read topic:orders.eu");
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = AuthConfig {
            tokens: vec![TokenConfig {
                principal: "x".into(),
                sha256: "plaintext".into(),
                expires: None,
            }],
            ..AuthConfig::default()
        };
        assert!(
            Auth::new(&bad, false)
                .err()
                .unwrap()
                .contains("auth.tokens[0].sha256")
        );
        assert!(!Auth::new(&AuthConfig::default(), false).unwrap().enabled());
    }
}
