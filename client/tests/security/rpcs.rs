//! The permission each RPC needs, one row each, with auth on.

use super::*;

// ---------------------------------------------------------------------------------------
// The RPCs, one row each
// ---------------------------------------------------------------------------------------

/// What a permission applies to: the row's topic, its group, or its queue (named like
/// the group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Topic,
    Group,
    Queue,
}

const KINDS: [Kind; 3] = [Kind::Topic, Kind::Group, Kind::Queue];

/// Every RPC of `spool.v1.Broker`; Subscribe twice, because starting from a group's
/// committed offsets needs one more permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rpc {
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
    CreateQueue,
    DeleteQueue,
    ListQueues,
    DescribeQueue,
    Receive,
    Settle,
    Work,
}

pub(super) const RPCS: [Rpc; 21] = [
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
    Rpc::CreateQueue,
    Rpc::DeleteQueue,
    Rpc::ListQueues,
    Rpc::DescribeQueue,
    Rpc::Receive,
    Rpc::Settle,
    Rpc::Work,
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
            Rpc::ListTopics | Rpc::ListGroups | Rpc::ListQueues => &[],
            Rpc::DescribeTopic => &[(Describe, Topic)],
            Rpc::Append | Rpc::AppendStream => &[(Append, Topic)],
            Rpc::Read | Rpc::Subscribe => &[(Read, Topic)],
            Rpc::SubscribeFromCommitted => &[(Read, Topic), (Describe, Group)],
            Rpc::CommitOffset => &[(Commit, Group), (Describe, Topic)],
            Rpc::GetOffsets => &[(Describe, Group), (Describe, Topic)],
            Rpc::Consume => &[(Read, Topic), (Commit, Group)],
            Rpc::DescribeGroup => &[(Describe, Group)],
            Rpc::CreateQueue => &[(Create, Queue)],
            Rpc::DeleteQueue => &[(Delete, Queue)],
            Rpc::DescribeQueue => &[(Describe, Queue)],
            Rpc::Receive | Rpc::Settle | Rpc::Work => &[(Read, Topic), (Commit, Queue)],
        }
    }

    /// Makes the call on `topic` and `group`, as far as its first answer; returns the
    /// names a list RPC answered with (nothing for the others).
    pub(super) async fn call(
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
                    ..Default::default()
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
            Rpc::CreateQueue => {
                c.create_queue(CreateQueueRequest {
                    topic: t,
                    queue: g,
                    config: None,
                    start: None,
                })
                .await?;
            }
            Rpc::DeleteQueue => {
                c.delete_queue(DeleteQueueRequest { topic: t, queue: g })
                    .await?;
            }
            Rpc::ListQueues => {
                let r = c
                    .list_queues(ListQueuesRequest::default())
                    .await?
                    .into_inner();
                return Ok(r.queues.into_iter().map(|q| q.queue).collect());
            }
            Rpc::DescribeQueue => {
                c.describe_queue(DescribeQueueRequest { topic: t, queue: g })
                    .await?;
            }
            Rpc::Receive => {
                c.receive(ReceiveRequest {
                    topic: t,
                    queue: g,
                    ..ReceiveRequest::default()
                })
                .await?;
            }
            Rpc::Settle => {
                let unknown = Settlement {
                    partition: 0,
                    offset: 0,
                    lease_id: 1,
                    action: SettleAction::Ack as i32,
                    ..Settlement::default()
                };
                c.settle(SettleRequest {
                    topic: t,
                    queue: g,
                    settlements: vec![unknown],
                })
                .await?;
            }
            Rpc::Work => {
                let start = WorkRequest {
                    kind: Some(work_request::Kind::Start(WorkStart {
                        topic: t,
                        queue: g,
                        ..WorkStart::default()
                    })),
                };
                let mut answers = c.work(tokio_stream::iter([start])).await?.into_inner();
                answers
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::internal("Work ended unanswered"))?;
            }
        }
        Ok(none)
    }
}

/// A topic with one record and a group that committed offset 0 of it, made by `admin`
/// (the topic is left out for CreateTopic, which makes it).
pub(super) async fn prepare(admin: &Client, rpc: Rpc, topic: &str, group: &str) {
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
    if matches!(
        rpc,
        Rpc::DeleteQueue
            | Rpc::ListQueues
            | Rpc::DescribeQueue
            | Rpc::Receive
            | Rpc::Settle
            | Rpc::Work
    ) {
        admin
            .create_queue(topic, group, QueueConfig::default(), None)
            .await
            .expect("create the row's queue");
    }
}

/// After a refused call: nothing it would have changed has changed.
pub(super) async fn assert_no_effect(admin: &Client, rpc: Rpc, topic: &str, group: &str) {
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
        Rpc::CreateQueue => {
            let e = admin.describe_queue(topic, group).await;
            assert_eq!(
                e.err().and_then(|e| e.code()),
                Some(Code::NotFound),
                "{what}"
            );
        }
        Rpc::DeleteQueue => {
            admin.describe_queue(topic, group).await.expect(&what);
        }
        Rpc::Receive | Rpc::Work => {
            let q = admin.describe_queue(topic, group).await.expect(&what);
            assert_eq!(q.leased, 0, "{what}: a refused call leased nothing");
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
    /// Every permission but one: this operation on topics, groups or queues.
    AllBut(Operation, Kind),
}

/// A principal with every permission but one: `op` on topics, groups or queues.
fn lacking(op: Operation, kind: Kind) -> String {
    let kind = match kind {
        Kind::Topic => "topic",
        Kind::Group => "group",
        Kind::Queue => "queue",
    };
    format!("lacks-{op}-{kind}")
}

fn ops_but(op: Operation) -> Vec<Operation> {
    ALL_OPS.into_iter().filter(|o| *o != op).collect()
}

fn denial(principal: &str, op: Operation, kind: Kind, topic: &str, group: &str) -> String {
    let resource = match kind {
        Kind::Topic => format!("topic:{topic}"),
        Kind::Group => format!("group:{group}"),
        Kind::Queue => format!("queue:{group}"),
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
        for kind in KINDS {
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
            let ops = |k: Kind| {
                if k == *kind {
                    ops_but(*op)
                } else {
                    ALL_OPS.to_vec()
                }
            };
            auth.acl.push(rule(name, "topic:*", &ops(Kind::Topic)));
            auth.acl.push(rule(name, "group:*", &ops(Kind::Group)));
            auth.acl.push(rule(name, "queue:*", &ops(Kind::Queue)));
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
                        Rpc::ListQueues => Some((&group, !hidden(Kind::Queue))),
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
    assert_eq!(cells, RPCS.len() * (2 + KINDS.len() * ALL_OPS.len()));
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
