//! Security end to end, against an in-process broker on an ephemeral loopback port: TLS and
//! mutual TLS with certificates made here with rcgen, bearer tokens, the permission each RPC
//! needs, health and reflection, quotas and their metrics, and the `spool` CLI over TLS.
//!
//! The certificates: one CA that the broker and the clients trust; a server certificate
//! for `localhost` and 127.0.0.1; client certificates for `alice` (valid), an expired one,
//! and one signed by a CA nobody trusts.
//!
//! Modules: `rpcs` (the permission each RPC needs, one row each), `tls` (authentication,
//! TLS and mutual TLS), `cli` (the CLI over TLS), `health` (health and reflection),
//! `quotas`; certificates, brokers and clients are made here.

mod cli;
mod health;
mod quotas;
mod rpcs;
mod tls;

use rpcs::{RPCS, assert_no_effect, prepare};
use tls::mtls_broker_with_alice;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use spool_broker::auth::{AclRule, AuthConfig, Operation, TokenConfig, hash_token};
use spool_broker::config::TlsConfig;
use spool_broker::quota::QuotaConfig;
use spool_broker::testing::TempBroker;
use spool_client::v1::broker_client::BrokerClient;
use spool_client::v1::*;
use spool_client::{Client, ClientOptions, Error, TlsOptions, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig};

const SPOOL: &str = env!("CARGO_BIN_EXE_spool");

/// Longest any single step may take before the test calls it hung (debug builds, loaded CI).
const PATIENCE: Duration = Duration::from_secs(30);

/// What the broker answers for every wrong, missing or expired credential.
const UNAUTHENTICATED: &str = "missing or invalid credentials";

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// PEM files of a throwaway PKI in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

fn ca(cn: &str) -> (Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    (cert, key)
}

/// Validity of a leaf certificate: rcgen's default (1975..4096), or long gone.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Validity {
    Current,
    Expired,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_cert, ca_key) = ca("Spool test CA");
        let (rogue_ca, rogue_key) = ca("Rogue CA");
        let pki = Pki { dir };
        pki.write("ca.pem", &ca_cert.pem());
        pki.write("rogue-ca.pem", &rogue_ca.pem());
        let server = ["localhost".to_string(), "127.0.0.1".to_string()];
        let issuer = (&ca_cert, &ca_key);
        pki.leaf("server", &server, "localhost", issuer, Validity::Current);
        pki.leaf("alice", &[], "alice", issuer, Validity::Current);
        pki.leaf("expired", &[], "alice", issuer, Validity::Expired);
        let rogue = (&rogue_ca, &rogue_key);
        pki.leaf("rogue", &[], "alice", rogue, Validity::Current);
        pki
    }

    /// Writes `NAME.pem` and `NAME.key`: a certificate for `cn` (and `sans`) signed by
    /// `issuer`, for servers when it has SANs and for clients otherwise.
    fn leaf(
        &self,
        name: &str,
        sans: &[String],
        cn: &str,
        issuer: (&Certificate, &KeyPair),
        validity: Validity,
    ) {
        let mut params = CertificateParams::new(sans.to_vec()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if sans.is_empty() {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, issuer.0, issuer.1)
            .expect("signed leaf");
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}.key"), &key.serialize_pem());
    }

    fn write(&self, file: &str, pem: &str) {
        std::fs::write(self.path(file), pem).expect("write PEM");
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).expect("read PEM")
    }

    /// The broker side: the server certificate, and the client CA if asked.
    fn server_tls(&self, client_ca: bool, require_client_cert: bool) -> TlsConfig {
        TlsConfig {
            cert: Some(self.path("server.pem")),
            key: Some(self.path("server.key")),
            client_ca: client_ca.then(|| self.path("ca.pem")),
            require_client_cert,
        }
    }

    /// The client side: trusts our CA, and presents `NAME.pem` if given.
    fn client_tls(&self, client_cert: Option<&str>) -> TlsOptions {
        TlsOptions {
            ca: Some(self.path("ca.pem")),
            cert: client_cert.map(|n| self.path(&format!("{n}.pem"))),
            key: client_cert.map(|n| self.path(&format!("{n}.key"))),
            domain: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Brokers and clients
// ---------------------------------------------------------------------------------------

fn port(broker: &TempBroker) -> u16 {
    broker
        .endpoint()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the endpoint ends with a port")
}

/// The TLS endpoint: the server certificate names `localhost`.
fn https(broker: &TempBroker) -> String {
    format!("https://localhost:{}", port(broker))
}

fn token_of(principal: &str) -> String {
    format!("token-of-{principal}")
}

fn token(principal: &str) -> TokenConfig {
    TokenConfig {
        principal: principal.into(),
        sha256: hash_token(&token_of(principal)),
        expires: None,
    }
}

fn rule(principal: &str, resource: &str, operations: &[Operation]) -> AclRule {
    AclRule {
        principal: principal.into(),
        resource: resource.into(),
        operations: operations.to_vec(),
    }
}

const ALL_OPS: [Operation; 7] = [
    Operation::Create,
    Operation::Delete,
    Operation::Describe,
    Operation::Append,
    Operation::Read,
    Operation::Commit,
    Operation::Admin,
];

/// Every permission on every topic, group and the cluster.
fn superuser(principal: &str) -> Vec<AclRule> {
    vec![
        rule(principal, "topic:*", &ALL_OPS),
        rule(principal, "group:*", &ALL_OPS),
        rule(principal, "queue:*", &ALL_OPS),
        rule(principal, "cluster", &ALL_OPS),
    ]
}

/// Options that fail fast: no retries, so a refusal surfaces at once.
fn options(tls: Option<TlsOptions>, token: Option<&str>) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(10),
        request_timeout: PATIENCE,
        max_retries: 0,
        tls,
        token: token.map(str::to_string),
        ..ClientOptions::default()
    }
}

/// A TLS client that trusts our CA, with the token of `principal` if given.
async fn client(pki: &Pki, broker: &TempBroker, principal: Option<&str>) -> Client {
    let token = principal.map(token_of);
    Client::connect_with(
        https(broker),
        options(Some(pki.client_tls(None)), token.as_deref()),
    )
    .await
    .expect("connect over TLS")
}

/// A plain tonic channel over TLS, for the health and reflection services.
async fn tls_channel(pki: &Pki, broker: &TempBroker) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pki.read("ca.pem")));
    Channel::from_shared(https(broker))
        .expect("valid URL")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connect over TLS")
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// Connects with `tls` and makes one call: the outcome of the whole attempt.
async fn connect_and_list(
    endpoint: String,
    tls: Option<TlsOptions>,
    token: Option<&str>,
) -> Result<Vec<TopicInfo>, Error> {
    within("connect and list", async {
        let client = Client::connect_with(endpoint, options(tls, token)).await?;
        client.list_topics().await
    })
    .await
}

/// A refused handshake is a transport failure, never an answer from the broker's
/// service: no status the service could have chosen, such as a permission error. Which
/// code tonic reports depends on the moment the client notices (rustls alert, broken pipe,
/// closed connection); `transport_failures_are_unreachable_with_their_cause` wants one
/// variant for all of them.
#[track_caller]
fn assert_transport_failure(what: &str, result: Result<Vec<TopicInfo>, Error>) {
    match result {
        Err(Error::Unreachable { .. }) => {}
        Err(Error::Broker {
            code: Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled,
            ..
        }) => {}
        other => panic!("{what}: expected the connection to be refused, got {other:?}"),
    }
}

#[track_caller]
fn assert_status(
    what: &str,
    result: Result<impl std::fmt::Debug, tonic::Status>,
    code: Code,
    message: &str,
) {
    match result {
        Err(s) => assert!(
            s.code() == code && s.message() == message,
            "{what}: expected {code:?} {message:?}, got {:?} {:?}",
            s.code(),
            s.message()
        ),
        Ok(v) => panic!("{what}: expected {code:?} {message:?}, got Ok({v:?})"),
    }
}

#[track_caller]
fn assert_broker_error(
    what: &str,
    result: Result<impl std::fmt::Debug, Error>,
    code: Code,
    message: &str,
) {
    match result {
        Err(Error::Broker {
            code: c,
            message: m,
        }) => assert!(
            c == code && m == message,
            "{what}: expected {code:?} {message:?}, got {c:?} {m:?}"
        ),
        other => panic!("{what}: expected {code:?} {message:?}, got {other:?}"),
    }
}

/// A finished `spool` run.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `spool --server <server> args...` off the async threads (the broker runs on them),
/// with only the `SPOOL_*` variables given.
async fn spool(server: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(SPOOL);
    cmd.arg("--server").arg(server).args(args);
    for var in [
        "SPOOL_SERVER",
        "SPOOL_CA",
        "SPOOL_CERT",
        "SPOOL_KEY",
        "SPOOL_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = within(
        "spool",
        tokio::task::spawn_blocking(move || cmd.output().expect("run spool")),
    )
    .await
    .expect("the spool runner does not panic");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
