//! Security end to end, against an in-process broker on an ephemeral loopback port: TLS and
//! mutual TLS with certificates made here with rcgen, bearer tokens, the permission each RPC
//! needs, health and reflection, quotas and their metrics, and the `spool` CLI over TLS.
//!
//! The certificates: one CA that the broker and the clients trust; a server certificate
//! for `localhost` and 127.0.0.1; client certificates for `alice` (valid), an expired one,
//! and one signed by a CA nobody trusts.

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

// ---------------------------------------------------------------------------------------
// The RPCs, one row each
// ---------------------------------------------------------------------------------------

/// What a permission applies to: the row's topic or its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Topic,
    Group,
}

/// Every RPC of `spool.v1.Broker`; Subscribe twice, because starting from a group's
/// committed offsets needs one more permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    CreateTopic,
    DeleteTopic,
    ListTopics,
    DescribeTopic,
    Append,
    AppendStream,
    Read,
    Subscribe,
    SubscribeFromCommitted,
    CommitOffset,
    GetOffsets,
    Consume,
    ListGroups,
    DescribeGroup,
}

const RPCS: [Rpc; 14] = [
    Rpc::CreateTopic,
    Rpc::DeleteTopic,
    Rpc::ListTopics,
    Rpc::DescribeTopic,
    Rpc::Append,
    Rpc::AppendStream,
    Rpc::Read,
    Rpc::Subscribe,
    Rpc::SubscribeFromCommitted,
    Rpc::CommitOffset,
    Rpc::GetOffsets,
    Rpc::Consume,
    Rpc::ListGroups,
    Rpc::DescribeGroup,
];

/// One record, so reads and subscriptions have something to return.
fn one_record(topic: &str) -> AppendRequest {
    AppendRequest {
        topic: topic.to_string(),
        partition: Some(0),
        records: vec![Record {
            value: Bytes::from_static(b"secret"),
            ..Record::default()
        }],
        ..AppendRequest::default()
    }
}

impl Rpc {
    /// The permissions the call needs, in the order the broker checks them. The list RPCs
    /// need none: they leave out what the principal may not describe.
    fn needs(self) -> &'static [(Operation, Kind)] {
        use Kind::*;
        use Operation::*;
        match self {
            Rpc::CreateTopic => &[(Create, Topic)],
            Rpc::DeleteTopic => &[(Delete, Topic)],
            Rpc::ListTopics | Rpc::ListGroups => &[],
            Rpc::DescribeTopic => &[(Describe, Topic)],
            Rpc::Append | Rpc::AppendStream => &[(Append, Topic)],
            Rpc::Read | Rpc::Subscribe => &[(Read, Topic)],
            Rpc::SubscribeFromCommitted => &[(Read, Topic), (Describe, Group)],
            Rpc::CommitOffset => &[(Commit, Group), (Describe, Topic)],
            Rpc::GetOffsets => &[(Describe, Group), (Describe, Topic)],
            Rpc::Consume => &[(Read, Topic), (Commit, Group)],
            Rpc::DescribeGroup => &[(Describe, Group)],
        }
    }

    /// Makes the call on `topic` and `group`, as far as its first answer; returns the
    /// names a list RPC answered with (nothing for the others).
    async fn call(
        self,
        c: &mut BrokerClient<Transport>,
        topic: &str,
        group: &str,
    ) -> Result<Vec<String>, tonic::Status> {
        let (t, g) = (topic.to_string(), group.to_string());
        let none = Vec::new();
        match self {
            Rpc::CreateTopic => {
                c.create_topic(CreateTopicRequest {
                    name: t,
                    partitions: 1,
                    config: None,
                })
                .await?;
            }
            Rpc::DeleteTopic => {
                c.delete_topic(DeleteTopicRequest { name: t }).await?;
            }
            Rpc::ListTopics => {
                let r = c.list_topics(ListTopicsRequest {}).await?.into_inner();
                return Ok(r.topics.into_iter().map(|t| t.name).collect());
            }
            Rpc::DescribeTopic => {
                c.describe_topic(DescribeTopicRequest { name: t }).await?;
            }
            Rpc::Append => {
                c.append(one_record(topic)).await?;
            }
            Rpc::AppendStream => {
                let requests = tokio_stream::iter([one_record(topic)]);
                let mut answers = c.append_stream(requests).await?.into_inner();
                answers
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::internal("AppendStream ended unanswered"))?;
            }
            Rpc::Read => {
                c.read(ReadRequest {
                    topic: t,
                    ..ReadRequest::default()
                })
                .await?;
            }
            Rpc::Subscribe | Rpc::SubscribeFromCommitted => {
                let kind = if self == Rpc::Subscribe {
                    start_position::Kind::Earliest
                } else {
                    start_position::Kind::Committed
                };
                let mut batches = c
                    .subscribe(SubscribeRequest {
                        topic: t,
                        start: Some(StartPosition {
                            kind: kind as i32,
                            ..StartPosition::default()
                        }),
                        group: g,
                        ..SubscribeRequest::default()
                    })
                    .await?
                    .into_inner();
                batches
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::internal("Subscribe ended empty"))?;
            }
            Rpc::CommitOffset => {
                c.commit_offset(CommitOffsetRequest {
                    group: g,
                    topic: t,
                    partition: 0,
                    offset: 1,
                    metadata: String::new(),
                })
                .await?;
            }
            Rpc::GetOffsets => {
                c.get_offsets(GetOffsetsRequest { group: g, topic: t })
                    .await?;
            }
            Rpc::Consume => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                let join = JoinGroup {
                    group: g,
                    topic: t,
                    session_timeout_ms: 500,
                    ..JoinGroup::default()
                };
                let kind = |k| ConsumeRequest { kind: Some(k) };
                tx.send(kind(consume_request::Kind::Join(join)))
                    .await
                    .expect("the request stream is open");
                let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
                let mut answers = c.consume(requests).await?.into_inner();
                answers
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::internal("Consume ended unanswered"))?;
                let _ = tx
                    .send(kind(consume_request::Kind::Leave(LeaveGroup {})))
                    .await;
            }
            Rpc::ListGroups => {
                let r = c
                    .list_groups(ListGroupsRequest::default())
                    .await?
                    .into_inner();
                return Ok(r.groups.into_iter().map(|g| g.group).collect());
            }
            Rpc::DescribeGroup => {
                c.describe_group(DescribeGroupRequest {
                    group: g,
                    topic: None,
                })
                .await?;
            }
        }
        Ok(none)
    }
}

/// A topic with one record and a group that committed offset 0 of it, made by `admin`
/// (the topic is left out for CreateTopic, which makes it).
async fn prepare(admin: &Client, rpc: Rpc, topic: &str, group: &str) {
    if rpc == Rpc::CreateTopic {
        return;
    }
    admin
        .create_topic(topic, 1, TopicConfig::default())
        .await
        .expect("create the row's topic");
    admin
        .append(one_record(topic))
        .await
        .expect("append the row's record");
    admin
        .commit_offset(group, topic, 0, 0)
        .await
        .expect("commit for the row's group");
}

/// After a refused call: nothing it would have changed has changed.
async fn assert_no_effect(admin: &Client, rpc: Rpc, topic: &str, group: &str) {
    let what = format!("after a refused {rpc:?}");
    match rpc {
        Rpc::CreateTopic => {
            let e = admin.describe_topic(topic).await;
            assert_eq!(
                e.err().and_then(|e| e.code()),
                Some(Code::NotFound),
                "{what}"
            );
        }
        Rpc::DeleteTopic => {
            admin.describe_topic(topic).await.expect(&what);
        }
        Rpc::Append | Rpc::AppendStream => {
            let t = admin.describe_topic(topic).await.expect(&what);
            assert_eq!(t.partition_info[0].end_offset, 1, "{what}");
        }
        Rpc::CommitOffset => {
            let offsets = admin.get_offsets(group, topic).await.expect(&what);
            assert_eq!(offsets[0].committed, Some(0), "{what}");
        }
        _ => {}
    }
}

/// What a principal of the matrix may do.
#[derive(Clone, Copy, Debug)]
enum Grant {
    All,
    /// Authenticated, but no rule names it.
    Nothing,
    /// Every permission but one: this operation on topics or on groups.
    AllBut(Operation, Kind),
}

/// A principal with every permission but one: `op` on topics or on groups.
fn lacking(op: Operation, kind: Kind) -> String {
    format!(
        "lacks-{op}-{}",
        if kind == Kind::Topic {
            "topic"
        } else {
            "group"
        }
    )
}

fn ops_but(op: Operation) -> Vec<Operation> {
    ALL_OPS.into_iter().filter(|o| *o != op).collect()
}

fn denial(principal: &str, op: Operation, kind: Kind, topic: &str, group: &str) -> String {
    let resource = match kind {
        Kind::Topic => format!("topic:{topic}"),
        Kind::Group => format!("group:{group}"),
    };
    format!("principal {principal} may not {op} {resource}")
}

/// Every RPC, as a principal with every permission, as one with none, and as each
/// principal lacking exactly one operation on topics or on groups: the call succeeds iff
/// the principal has all the permissions the RPC needs; otherwise it is PERMISSION_DENIED
/// naming the missing operation and resource, and changes nothing. The list RPCs never
/// fail: they leave out what the principal may not describe.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rpc_needs_exactly_its_permissions() {
    let pki = Pki::new();
    let mut lacking_principals = Vec::new();
    for op in ALL_OPS {
        for kind in [Kind::Topic, Kind::Group] {
            lacking_principals.push((lacking(op, kind), op, kind));
        }
    }
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        cfg.topic_defaults.fsync = "never".into();
        let mut auth = AuthConfig {
            tokens: vec![token("admin"), token("full"), token("nobody")],
            acl: superuser("admin"),
            mtls_identity: false,
        };
        auth.acl.extend(superuser("full"));
        for (name, op, kind) in &lacking_principals {
            auth.tokens.push(token(name));
            let (topic_ops, group_ops) = match kind {
                Kind::Topic => (ops_but(*op), ALL_OPS.to_vec()),
                Kind::Group => (ALL_OPS.to_vec(), ops_but(*op)),
            };
            auth.acl.push(rule(name, "topic:*", &topic_ops));
            auth.acl.push(rule(name, "group:*", &group_ops));
            auth.acl.push(rule(name, "cluster", &ALL_OPS));
        }
        cfg.auth = auth;
    })
    .await;
    let admin = client(&pki, &broker, Some("admin")).await;

    let mut principals = vec![
        ("full".to_string(), Grant::All),
        ("nobody".into(), Grant::Nothing),
    ];
    principals.extend(
        lacking_principals
            .iter()
            .map(|(name, op, kind)| (name.clone(), Grant::AllBut(*op, *kind))),
    );
    let mut cells = 0;
    for (i, rpc) in RPCS.into_iter().enumerate() {
        for (j, (principal, grant)) in principals.iter().enumerate() {
            let topic = format!("m{i}-{j}");
            let group = format!("g{i}-{j}");
            prepare(&admin, rpc, &topic, &group).await;
            let mut raw = client(&pki, &broker, Some(principal)).await.raw();
            let got = within("a matrix call", rpc.call(&mut raw, &topic, &group)).await;
            let what = format!("{rpc:?} as {principal}");
            // The permission the broker must name, if the call is to be refused.
            let refused = match *grant {
                Grant::All => None,
                Grant::Nothing => rpc.needs().first().copied(),
                Grant::AllBut(op, kind) => rpc.needs().iter().copied().find(|n| *n == (op, kind)),
            };
            match refused {
                Some((op, kind)) => {
                    let message = denial(principal, op, kind, &topic, &group);
                    assert_status(&what, got, Code::PermissionDenied, &message);
                    assert_no_effect(&admin, rpc, &topic, &group).await;
                }
                None => {
                    let names = got.unwrap_or_else(|s| panic!("{what}: refused: {s:?}"));
                    let hidden = |k: Kind| match *grant {
                        Grant::All => false,
                        Grant::Nothing => true,
                        Grant::AllBut(op, kind) => op == Operation::Describe && kind == k,
                    };
                    let expect_listed = match rpc {
                        Rpc::ListTopics => Some((&topic, !hidden(Kind::Topic))),
                        Rpc::ListGroups => Some((&group, !hidden(Kind::Group))),
                        _ => None,
                    };
                    if let Some((name, listed)) = expect_listed {
                        assert_eq!(names.contains(name), listed, "{what}: {names:?}");
                    }
                }
            }
            cells += 1;
        }
    }
    assert_eq!(cells, RPCS.len() * (2 + 2 * ALL_OPS.len()));
    broker.shutdown().await;
}

/// ListTopics and ListGroups show a principal what it may describe, by exact name and by
/// prefix, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_rpcs_show_only_what_the_principal_may_describe() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        cfg.topic_defaults.fsync = "never".into();
        let mut acl = superuser("admin");
        acl.push(rule("eu", "topic:orders.eu*", &[Operation::Describe]));
        acl.push(rule("eu", "topic:audit", &[Operation::Describe]));
        acl.push(rule("eu", "group:billing", &[Operation::Describe]));
        cfg.auth = AuthConfig {
            tokens: vec![token("admin"), token("eu")],
            acl,
            mtls_identity: false,
        };
    })
    .await;
    let admin = client(&pki, &broker, Some("admin")).await;
    for t in ["orders.eu.1", "orders.eu.2", "orders.us", "audit", "audit2"] {
        admin
            .create_topic(t, 1, TopicConfig::default())
            .await
            .expect("create");
        admin.append(one_record(t)).await.expect("append");
    }
    for (g, t) in [
        ("billing", "orders.us"),
        ("billing2", "orders.eu.1"),
        ("ops", "audit"),
    ] {
        admin.commit_offset(g, t, 0, 1).await.expect("commit");
    }
    let eu = client(&pki, &broker, Some("eu")).await;
    let topics: Vec<String> = eu
        .list_topics()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(topics, ["audit", "orders.eu.1", "orders.eu.2"]);
    let groups: Vec<String> = eu
        .list_groups(None)
        .await
        .expect("list")
        .into_iter()
        .map(|g| g.group)
        .collect();
    assert_eq!(groups, ["billing"]);
    assert_eq!(admin.list_topics().await.expect("list").len(), 5);
    assert_eq!(admin.list_groups(None).await.expect("list").len(), 3);
    broker.shutdown().await;
}

/// DescribeGroup shows a group's offsets, end offsets and lag per topic: the data
/// GetOffsets guards with `describe` on the topic. A principal that may describe the group
/// but not the topic should not learn the topic's name, existence or end offsets from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_group_hides_topics_the_principal_may_not_describe() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        cfg.topic_defaults.fsync = "never".into();
        let mut acl = superuser("admin");
        acl.push(rule("auditor", "group:shared", &[Operation::Describe]));
        cfg.auth = AuthConfig {
            tokens: vec![token("admin"), token("auditor")],
            acl,
            mtls_identity: false,
        };
    })
    .await;
    let admin = client(&pki, &broker, Some("admin")).await;
    admin
        .create_topic("payroll", 1, TopicConfig::default())
        .await
        .expect("create");
    admin.append(one_record("payroll")).await.expect("append");
    admin
        .commit_offset("shared", "payroll", 0, 1)
        .await
        .expect("commit");
    let auditor = client(&pki, &broker, Some("auditor")).await;
    assert_broker_error(
        "GetOffsets",
        auditor.get_offsets("shared", "payroll").await,
        Code::PermissionDenied,
        "principal auditor may not describe topic:payroll",
    );
    match auditor.describe_group("shared", Some("payroll")).await {
        Err(e) => assert_eq!(e.code(), Some(Code::PermissionDenied), "{e:?}"),
        Ok(r) => panic!("DescribeGroup with topic payroll answered {r:?}"),
    }
    let all = auditor
        .describe_group("shared", None)
        .await
        .expect("the group itself may be described");
    assert!(
        all.topics.iter().all(|t| t.topic != "payroll"),
        "DescribeGroup shows topic payroll: {all:?}"
    );
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------

/// A wrong token, no token, an expired token and a header that is not a bearer token are
/// all refused by every RPC with the same UNAUTHENTICATED message, which says nothing about
/// what was wrong; a token whose expiry is still ahead works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_missing_and_expired_credentials_are_one_unauthenticated() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        cfg.topic_defaults.fsync = "never".into();
        let mut acl = superuser("admin");
        acl.extend(superuser("alice"));
        cfg.auth = AuthConfig {
            tokens: vec![
                token("admin"),
                TokenConfig {
                    expires: Some("2001-01-01T00:00:00Z".into()),
                    ..token("alice")
                },
                TokenConfig {
                    principal: "alice".into(),
                    sha256: hash_token("alice-until-2999"),
                    expires: Some("2999-01-01T00:00:00Z".into()),
                },
            ],
            acl,
            mtls_identity: false,
        };
    })
    .await;
    let admin = client(&pki, &broker, Some("admin")).await;
    let endpoint = https(&broker);
    let connect = |token: Option<String>| {
        Client::connect_with(
            endpoint.clone(),
            options(Some(pki.client_tls(None)), token.as_deref()),
        )
    };

    let wrong = connect(Some("not-a-token".into())).await.expect("connect");
    let missing = connect(None).await.expect("connect");
    // alice's first token: right secret, but expired in 2001.
    let expired = connect(Some(token_of("alice"))).await.expect("connect");
    for (i, rpc) in RPCS.into_iter().enumerate() {
        let (topic, group) = (format!("u{i}"), format!("ug{i}"));
        prepare(&admin, rpc, &topic, &group).await;
        for (who, c) in [
            ("wrong", &wrong),
            ("missing", &missing),
            ("expired", &expired),
        ] {
            let got = within("a call", rpc.call(&mut c.raw(), &topic, &group)).await;
            let what = format!("{rpc:?} with a {who} token");
            assert_status(&what, got, Code::Unauthenticated, UNAUTHENTICATED);
        }
        assert_no_effect(&admin, rpc, &topic, &group).await;
    }

    // Not a bearer token at all, and "Bearer" with nothing after it.
    for header in ["Basic YWxpY2U6cHc=", "Bearer ", "bearer token-of-admin"] {
        let mut req = tonic::Request::new(ListTopicsRequest {});
        req.metadata_mut()
            .insert("authorization", header.parse().expect("ASCII"));
        let got = missing.raw().list_topics(req).await;
        assert_status(header, got, Code::Unauthenticated, UNAUTHENTICATED);
    }

    let later = connect(Some("alice-until-2999".into()))
        .await
        .expect("connect");
    later
        .create_topic("alice-was-here", 1, TopicConfig::default())
        .await
        .expect("a token that has not expired yet works");
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// TLS and mutual TLS
// ---------------------------------------------------------------------------------------

/// A broker with TLS that accepts client certificates as identities (`mtls_identity`), an
/// `admin` token with every right, and `alice` allowed to create and describe `alice-*`.
async fn mtls_broker_with_alice(pki: &Pki) -> TempBroker {
    TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(true, false);
        cfg.topic_defaults.fsync = "never".into();
        let mut acl = superuser("admin");
        acl.push(rule(
            "alice",
            "topic:alice-*",
            &[Operation::Create, Operation::Describe],
        ));
        cfg.auth = AuthConfig {
            tokens: vec![token("admin")],
            acl,
            mtls_identity: true,
        };
    })
    .await
}

/// With `mtls_identity`, a client certificate signed by the client CA authenticates as its
/// subject CN and that principal's ACL applies; without a certificate or token the call is
/// UNAUTHENTICATED; a bearer token, when sent, decides alone (even beside a valid
/// certificate); expired and untrusted certificates never get a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identity_is_the_certificate_cn_and_bad_certificates_are_refused() {
    let pki = Pki::new();
    let broker = mtls_broker_with_alice(&pki).await;
    let admin = client(&pki, &broker, Some("admin")).await;
    admin
        .create_topic("payments", 1, TopicConfig::default())
        .await
        .expect("admin creates");

    let alice = Client::connect_with(
        https(&broker),
        options(Some(pki.client_tls(Some("alice"))), None),
    )
    .await
    .expect("alice's certificate is accepted");
    alice
        .create_topic("alice-orders", 1, TopicConfig::default())
        .await
        .expect("alice may create topic:alice-*");
    assert_broker_error(
        "alice creates payments",
        alice
            .create_topic("payments2", 1, TopicConfig::default())
            .await,
        Code::PermissionDenied,
        "principal alice may not create topic:payments2",
    );
    assert_broker_error(
        "alice describes payments",
        alice.describe_topic("payments").await,
        Code::PermissionDenied,
        "principal alice may not describe topic:payments",
    );
    let visible: Vec<String> = alice
        .list_topics()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(visible, ["alice-orders"]);

    // A token beside the certificate decides alone: a wrong one is refused, the admin's
    // acts as admin.
    let wrong = connect_and_list(
        https(&broker),
        Some(pki.client_tls(Some("alice"))),
        Some("nope"),
    )
    .await;
    assert_broker_error(
        "alice's certificate with a wrong token",
        wrong,
        Code::Unauthenticated,
        UNAUTHENTICATED,
    );
    let both = connect_and_list(
        https(&broker),
        Some(pki.client_tls(Some("alice"))),
        Some(&token_of("admin")),
    )
    .await
    .expect("the admin token beside alice's certificate");
    assert_eq!(both.len(), 2);

    // TLS without a certificate (the client CA is optional here) and without a token.
    let anonymous = connect_and_list(https(&broker), Some(pki.client_tls(None)), None).await;
    assert_broker_error(
        "no certificate, no token",
        anonymous,
        Code::Unauthenticated,
        UNAUTHENTICATED,
    );

    for cert in ["expired", "rogue"] {
        let got = connect_and_list(https(&broker), Some(pki.client_tls(Some(cert))), None).await;
        assert_transport_failure(&format!("the {cert} certificate"), got);
        // A valid token does not rescue a connection with a bad certificate.
        let got = connect_and_list(
            https(&broker),
            Some(pki.client_tls(Some(cert))),
            Some(&token_of("admin")),
        )
        .await;
        assert_transport_failure(&format!("the {cert} certificate with a token"), got);
    }

    // The client refuses a broker whose certificate its CA did not sign.
    let distrust = TlsOptions {
        ca: Some(pki.path("rogue-ca.pem")),
        ..pki.client_tls(None)
    };
    let got = connect_and_list(https(&broker), Some(distrust), Some(&token_of("admin"))).await;
    assert_transport_failure("a client that trusts another CA", got);
    broker.shutdown().await;
}

/// With `require_client_cert`, a client without a certificate is refused at the handshake,
/// even with a valid token; with alice's certificate (and the token) it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_client_cert_refuses_clients_without_one() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(true, true);
        cfg.auth = AuthConfig {
            tokens: vec![token("admin")],
            acl: superuser("admin"),
            mtls_identity: false,
        };
    })
    .await;
    let admin = Some(token_of("admin"));
    let got = connect_and_list(https(&broker), Some(pki.client_tls(None)), admin.as_deref()).await;
    assert_transport_failure("no client certificate", got);
    for cert in ["expired", "rogue"] {
        let got = connect_and_list(
            https(&broker),
            Some(pki.client_tls(Some(cert))),
            admin.as_deref(),
        )
        .await;
        assert_transport_failure(&format!("the {cert} certificate"), got);
    }
    let ok = connect_and_list(
        https(&broker),
        Some(pki.client_tls(Some("alice"))),
        admin.as_deref(),
    )
    .await;
    assert!(
        ok.is_ok(),
        "alice's certificate and the admin token: {ok:?}"
    );
    broker.shutdown().await;
}

/// A plaintext (h2c) client against the TLS port gets no answer from the service: the
/// library call fails, and the CLI says so in one line and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_against_the_tls_port_fails() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        cfg.auth = AuthConfig {
            tokens: vec![token("admin")],
            acl: superuser("admin"),
            mtls_identity: false,
        };
    })
    .await;
    let plaintext = format!("http://127.0.0.1:{}", port(&broker));
    let got = connect_and_list(plaintext.clone(), None, Some(&token_of("admin"))).await;
    assert_transport_failure("a plaintext client", got);

    let run = spool(
        &plaintext,
        &["topic", "list"],
        &[("SPOOL_TOKEN", &token_of("admin"))],
    )
    .await;
    assert_ne!(run.code, 0, "stdout: {}", run.stdout);
    assert!(run.stdout.is_empty(), "nothing on stdout: {}", run.stdout);
    let line = run.stderr.trim_end();
    assert!(
        line.starts_with("spool: ") && !line.contains('\n'),
        "one `spool: ...` line: {line:?}"
    );
    broker.shutdown().await;
}

/// A handshake the broker refuses (expired, untrusted or missing client certificate) and a
/// plaintext client on the TLS port are connection failures: the library should say
/// `Unreachable` with the cause (e.g. "received fatal alert: CertificateExpired"), and the
/// CLI should exit 3 naming the address, as it does when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_are_unreachable_with_their_cause() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(true, true);
        cfg.auth = AuthConfig {
            tokens: vec![token("admin")],
            acl: superuser("admin"),
            mtls_identity: false,
        };
    })
    .await;
    let admin = token_of("admin");
    let plaintext = format!("http://127.0.0.1:{}", port(&broker));
    let cases = [
        (
            "an expired certificate",
            https(&broker),
            Some(pki.client_tls(Some("expired"))),
        ),
        (
            "an untrusted certificate",
            https(&broker),
            Some(pki.client_tls(Some("rogue"))),
        ),
        ("no certificate", https(&broker), Some(pki.client_tls(None))),
        ("plaintext", plaintext.clone(), None),
    ];
    for (what, endpoint, tls) in cases {
        let got = connect_and_list(endpoint, tls, Some(&admin)).await;
        assert!(
            matches!(got, Err(Error::Unreachable { .. })),
            "{what}: expected Unreachable, got {got:?}"
        );
    }
    let run = spool(&plaintext, &["topic", "list"], &[("SPOOL_TOKEN", &admin)]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains(&plaintext),
        "names the address: {}",
        run.stderr
    );
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// The CLI over TLS
// ---------------------------------------------------------------------------------------

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

/// `spool --ca ... --token` (or SPOOL_TOKEN) over https works; mTLS with `--cert --key`
/// works; a refusal is printed with the broker's message and exits 1; https without `--ca`
/// is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_speaks_tls_with_tokens_and_client_certificates() {
    let pki = Pki::new();
    let broker = mtls_broker_with_alice(&pki).await;
    let server = https(&broker);
    let ca = pki.path("ca.pem").display().to_string();
    let admin = token_of("admin");

    let run = spool(
        &server,
        &[
            "--ca",
            &ca,
            "--token",
            &admin,
            "topic",
            "create",
            "events",
            "--partitions",
            "1",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "create with --token: {}", run.stderr);
    let run = spool(
        &server,
        &["--ca", &ca, "topic", "list"],
        &[("SPOOL_TOKEN", &admin)],
    )
    .await;
    assert_eq!(run.code, 0, "list with SPOOL_TOKEN: {}", run.stderr);
    assert!(run.stdout.contains("events"), "{}", run.stdout);

    let cert = pki.path("alice.pem").display().to_string();
    let key = pki.path("alice.key").display().to_string();
    let mtls = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let run = spool(
        &server,
        &[
            &mtls[..],
            &["topic", "create", "alice-x", "--partitions", "1"],
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(run.code, 0, "alice creates alice-x: {}", run.stderr);
    let run = spool(
        &server,
        &[
            &mtls[..],
            &["topic", "create", "bob-x", "--partitions", "1"],
        ]
        .concat(),
        &[],
    )
    .await;
    assert_eq!(run.code, 1, "alice may not create bob-x: {}", run.stderr);
    assert!(
        run.stderr
            .contains("principal alice may not create topic:bob-x"),
        "{}",
        run.stderr
    );

    let run = spool(&server, &["--ca", &ca, "topic", "list"], &[]).await;
    assert_eq!(run.code, 1, "no credentials: {}", run.stderr);
    assert!(run.stderr.contains(UNAUTHENTICATED), "{}", run.stderr);

    let run = spool(&server, &["topic", "list"], &[("SPOOL_TOKEN", &admin)]).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--ca"),
        "https without --ca: {}",
        run.stderr
    );
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Health and reflection
// ---------------------------------------------------------------------------------------

/// The health service answers over TLS without any credentials, with auth on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_open_without_credentials() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(true, false);
        cfg.auth = AuthConfig {
            tokens: vec![token("admin")],
            acl: superuser("admin"),
            mtls_identity: true,
        };
    })
    .await;
    let mut health = HealthClient::new(tls_channel(&pki, &broker).await);
    for service in ["", "spool.v1.Broker"] {
        let r = within(
            "health",
            health.check(HealthCheckRequest {
                service: service.into(),
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"));
        assert_eq!(
            r.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    broker.shutdown().await;
}

/// Both reflection services follow the admin permission on the cluster: UNAUTHENTICATED
/// without a token, PERMISSION_DENIED naming `admin cluster` without the permission, the
/// service list with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_needs_admin_on_the_cluster() {
    use tonic_reflection::pb::{v1, v1alpha};

    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        let mut acl = superuser("admin");
        // Everything on topics and groups is not admin on the cluster.
        acl.push(rule("dev", "topic:*", &ALL_OPS));
        acl.push(rule("dev", "group:*", &ALL_OPS));
        cfg.auth = AuthConfig {
            tokens: vec![token("admin"), token("dev")],
            acl,
            mtls_identity: false,
        };
    })
    .await;
    let channel = tls_channel(&pki, &broker).await;
    let with_token = |principal: Option<&str>| {
        let header = principal.map(|p| {
            format!("Bearer {}", token_of(p))
                .parse::<tonic::metadata::MetadataValue<_>>()
                .expect("ASCII")
        });
        move |mut req: tonic::Request<()>| {
            if let Some(h) = &header {
                req.metadata_mut().insert("authorization", h.clone());
            }
            Ok(req)
        }
    };
    let list_v1 = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let list_v1alpha = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let cases = [
        (
            None,
            Some((Code::Unauthenticated, UNAUTHENTICATED.to_string())),
        ),
        (
            Some("dev"),
            Some((
                Code::PermissionDenied,
                "principal dev may not admin cluster".to_string(),
            )),
        ),
        (Some("admin"), None),
    ];
    for (principal, refusal) in cases {
        let what = format!("reflection as {principal:?}");
        let mut c1 = v1::server_reflection_client::ServerReflectionClient::with_interceptor(
            channel.clone(),
            with_token(principal),
        );
        let r1 = within(
            &what,
            c1.server_reflection_info(tokio_stream::iter([list_v1.clone()])),
        )
        .await;
        let mut c0 = v1alpha::server_reflection_client::ServerReflectionClient::with_interceptor(
            channel.clone(),
            with_token(principal),
        );
        let r0 = within(
            &what,
            c0.server_reflection_info(tokio_stream::iter([list_v1alpha.clone()])),
        )
        .await;
        match refusal {
            Some((code, message)) => {
                assert_status(&format!("{what} v1"), r1.map(|_| ()), code, &message);
                assert_status(&format!("{what} v1alpha"), r0.map(|_| ()), code, &message);
            }
            None => {
                let answer = within(&what, r1.expect("v1 answers").into_inner().message())
                    .await
                    .expect("a v1 answer")
                    .expect("not empty");
                let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
                    answer.message_response
                else {
                    panic!("{what}: unexpected answer {answer:?}");
                };
                assert!(
                    l.service.iter().any(|s| s.name == "spool.v1.Broker"),
                    "{l:?}"
                );
                r0.expect("v1alpha answers");
            }
        }
    }
    broker.shutdown().await;
}

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
