//! Guards the public `spool.v1` contract: the RPC names and streaming shapes
//! in the descriptor set served by reflection, and the field names of the
//! generated Rust types (a rename fails to compile here).

use prost::Message as _;
use prost_types::FileDescriptorSet;
use spool_proto::v1::{self, consume_request, consume_response, start_position};
use spool_proto::{BROKER_SERVICE_NAME, Bytes, FILE_DESCRIPTOR_SET};

#[test]
fn descriptor_set_declares_every_broker_rpc_with_its_streaming_shape() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let file = fds
        .file
        .iter()
        .find(|f| f.name() == "spool/v1/spool.proto")
        .expect("spool.proto in the descriptor set");
    assert_eq!(file.package(), "spool.v1");
    assert_eq!(file.syntax(), "proto3");
    assert_eq!(
        format!("{}.{}", file.package(), file.service[0].name()),
        BROKER_SERVICE_NAME
    );
    assert!(
        file.source_code_info.is_some(),
        "comments are kept for reflection"
    );

    // (name, input, output, client streaming, server streaming)
    let expected = [
        (
            "CreateTopic",
            "CreateTopicRequest",
            "CreateTopicResponse",
            false,
            false,
        ),
        (
            "DeleteTopic",
            "DeleteTopicRequest",
            "DeleteTopicResponse",
            false,
            false,
        ),
        (
            "AlterTopic",
            "AlterTopicRequest",
            "AlterTopicResponse",
            false,
            false,
        ),
        (
            "ListTopics",
            "ListTopicsRequest",
            "ListTopicsResponse",
            false,
            false,
        ),
        (
            "DescribeTopic",
            "DescribeTopicRequest",
            "DescribeTopicResponse",
            false,
            false,
        ),
        ("Append", "AppendRequest", "AppendResponse", false, false),
        (
            "AppendStream",
            "AppendRequest",
            "AppendResponse",
            true,
            true,
        ),
        ("Read", "ReadRequest", "ReadResponse", false, false),
        (
            "Subscribe",
            "SubscribeRequest",
            "SubscribeResponse",
            false,
            true,
        ),
        (
            "CommitOffset",
            "CommitOffsetRequest",
            "CommitOffsetResponse",
            false,
            false,
        ),
        (
            "GetOffsets",
            "GetOffsetsRequest",
            "GetOffsetsResponse",
            false,
            false,
        ),
        ("Consume", "ConsumeRequest", "ConsumeResponse", true, true),
        (
            "ListGroups",
            "ListGroupsRequest",
            "ListGroupsResponse",
            false,
            false,
        ),
        (
            "DescribeGroup",
            "DescribeGroupRequest",
            "DescribeGroupResponse",
            false,
            false,
        ),
        (
            "CreateQueue",
            "CreateQueueRequest",
            "CreateQueueResponse",
            false,
            false,
        ),
        (
            "DeleteQueue",
            "DeleteQueueRequest",
            "DeleteQueueResponse",
            false,
            false,
        ),
        (
            "ListQueues",
            "ListQueuesRequest",
            "ListQueuesResponse",
            false,
            false,
        ),
        (
            "DescribeQueue",
            "DescribeQueueRequest",
            "DescribeQueueResponse",
            false,
            false,
        ),
        (
            "RedriveQueue",
            "RedriveQueueRequest",
            "RedriveQueueResponse",
            false,
            false,
        ),
        ("Receive", "ReceiveRequest", "ReceiveResponse", false, false),
        ("Settle", "SettleRequest", "SettleResponse", false, false),
        ("Work", "WorkRequest", "WorkResponse", true, true),
        (
            "DescribeCluster",
            "DescribeClusterRequest",
            "DescribeClusterResponse",
            false,
            false,
        ),
    ];
    let service = &file.service[0];
    assert_eq!(service.name(), "Broker");
    assert_eq!(service.method.len(), expected.len());
    for (method, (name, input, output, client_streaming, server_streaming)) in
        service.method.iter().zip(expected)
    {
        assert_eq!(method.name(), name);
        assert_eq!(method.input_type(), format!(".spool.v1.{input}"), "{name}");
        assert_eq!(
            method.output_type(),
            format!(".spool.v1.{output}"),
            "{name}"
        );
        assert_eq!(method.client_streaming(), client_streaming, "{name}");
        assert_eq!(method.server_streaming(), server_streaming, "{name}");
    }
}

#[test]
fn descriptor_set_keeps_enum_value_names() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let file = &fds.file[0];
    let values = |name: &str| -> Vec<String> {
        file.enum_type
            .iter()
            .find(|e| e.name() == name)
            .map(|e| e.value.iter().map(|v| v.name().to_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        values("FsyncPolicy"),
        [
            "FSYNC_POLICY_UNSPECIFIED",
            "FSYNC_POLICY_ALWAYS",
            "FSYNC_POLICY_INTERVAL",
            "FSYNC_POLICY_NEVER"
        ]
    );
    assert_eq!(
        values("Compression"),
        [
            "COMPRESSION_UNSPECIFIED",
            "COMPRESSION_NONE",
            "COMPRESSION_LZ4",
            "COMPRESSION_ZSTD"
        ]
    );
    assert_eq!(
        values("CleanupPolicy"),
        [
            "CLEANUP_POLICY_UNSPECIFIED",
            "CLEANUP_POLICY_DELETE",
            "CLEANUP_POLICY_COMPACT",
            "CLEANUP_POLICY_COMPACT_DELETE"
        ]
    );
    assert_eq!(
        values("Durability"),
        [
            "DURABILITY_UNSPECIFIED",
            "DURABILITY_WRITTEN",
            "DURABILITY_FSYNCED",
            "DURABILITY_REPLICATED"
        ]
    );
    assert_eq!(
        values("NodeState"),
        ["NODE_STATE_UNSPECIFIED", "NODE_STATE_UP", "NODE_STATE_DOWN"]
    );
    assert_eq!(
        start_position::Kind::Committed.as_str_name(),
        "KIND_COMMITTED"
    );
    assert_eq!(
        start_position::Kind::from_str_name("KIND_TIMESTAMP"),
        Some(start_position::Kind::Timestamp)
    );
}

#[test]
fn generated_types_have_the_contract_field_names() {
    let record = v1::Record {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        headers: vec![v1::Header {
            key: "h".into(),
            value: Bytes::new(),
        }],
        timestamp_ms: 0,
        offset: 0,
        deliver_at_ms: 0,
    };
    let config = v1::TopicConfig {
        retention_bytes: 0,
        retention_ms: 0,
        segment_bytes: 0,
        fsync: v1::FsyncPolicy::Always.into(),
        fsync_interval_ms: 0,
        max_record_bytes: 0,
        producer_id_expiration_ms: 0,
        compression: v1::Compression::Zstd.into(),
        compression_level: -3,
        cleanup_policy: v1::CleanupPolicy::CompactDelete.into(),
        delete_retention_ms: 0,
        segment_ms: 0,
    };
    let _ = v1::CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        config: Some(config),
        replication_factor: 3,
    };
    let _ = v1::TopicInfo {
        name: "t".into(),
        partitions: 1,
        config: Some(config),
        partition_info: vec![v1::PartitionInfo {
            partition: 0,
            start_offset: 0,
            end_offset: 0,
            size_bytes: 0,
            state: v1::PartitionState::Ok as i32,
            failure: String::new(),
            dirty_ratio: 0.0,
            leader: 0,
            replicas: vec![1, 2, 3],
            in_sync: vec![1],
        }],
        replication_factor: 3,
    };
    let _ = v1::DescribeClusterResponse {
        nodes: vec![v1::NodeInfo {
            node_id: 1,
            address: "127.0.0.1:7450".into(),
            state: v1::NodeState::Down.into(),
            leading: 0,
            following: 0,
        }],
        metadata_leader: 0,
    };
    let _ = v1::DescribeClusterRequest {};
    let append = v1::AppendRequest {
        topic: "t".into(),
        partition: None,
        partition_key: Bytes::from_static(b"order-42"),
        records: vec![record.clone()],
        producer_id: 0,
        sequence: 0,
        request_id: 7,
    };
    let _ = v1::AppendResponse {
        request_id: 7,
        partition: 0,
        base_offset: 0,
        record_count: 1,
        duplicate: false,
        durability: v1::Durability::Fsynced.into(),
    };
    let _ = v1::ReadRequest {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        max_records: 0,
        max_bytes: 0,
        max_wait_ms: 0,
    };
    let _ = v1::ReadResponse {
        records: vec![record.clone()],
        start_offset: 0,
        end_offset: 1,
    };
    let _ = v1::SubscribeRequest {
        topic: "t".into(),
        partitions: vec![],
        start: Some(v1::StartPosition {
            kind: start_position::Kind::Committed.into(),
            offset: 0,
            timestamp_ms: 0,
        }),
        group: "g".into(),
        max_batch_records: 0,
    };
    let _ = v1::SubscribeResponse {
        partition: 0,
        records: vec![],
        end_offset: 0,
    };
    let _ = v1::CommitOffsetRequest {
        group: "g".into(),
        topic: "t".into(),
        partition: 0,
        offset: 1,
        metadata: String::new(),
    };
    let _ = v1::GetOffsetsRequest {
        group: "g".into(),
        topic: "t".into(),
    };
    let _ = v1::PartitionOffsets {
        partition: 0,
        committed: None,
        start_offset: 0,
        end_offset: 0,
        lag: 0,
    };
    let _ = v1::ConsumeRequest {
        kind: Some(consume_request::Kind::Join(v1::JoinGroup {
            group: "g".into(),
            topic: "t".into(),
            member_id: String::new(),
            session_timeout_ms: 0,
            max_in_flight_records: 0,
            max_in_flight_bytes: 0,
            auto_commit: false,
        })),
    };
    let _ = consume_request::Kind::Commit(v1::CommitRequest {
        partition: 0,
        offset: 1,
    });
    let _ = v1::ConsumeResponse {
        kind: Some(consume_response::Kind::Assignment(v1::Assignment {
            member_id: "m".into(),
            generation: 1,
            partitions: vec![0],
        })),
    };
    let _ = consume_response::Kind::Batch(v1::RecordBatch {
        partition: 0,
        generation: 1,
        records: vec![record],
        end_offset: 1,
    });
    let _ = consume_response::Kind::CommitAck(v1::CommitAck {
        partition: 0,
        offset: 1,
        rejected: false,
        reason: String::new(),
    });
    let _ = v1::DescribeGroupRequest {
        group: "g".into(),
        topic: None,
    };

    // Bytes fields round-trip through the wire format.
    let decoded = v1::AppendRequest::decode(append.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, append);
}

/// Naming the generated server and client is the check: a moved module or
/// type fails to compile.
fn _generated_server_and_client_paths<T: v1::broker_server::Broker>(
    broker: T,
    channel: tonic::transport::Channel,
) -> (
    v1::broker_server::BrokerServer<T>,
    v1::broker_client::BrokerClient<tonic::transport::Channel>,
) {
    (
        v1::broker_server::BrokerServer::new(broker),
        v1::broker_client::BrokerClient::new(channel),
    )
}

#[test]
fn generated_server_name_matches_the_service_name_constant() {
    assert_eq!(v1::broker_server::SERVICE_NAME, BROKER_SERVICE_NAME);
}

#[test]
fn topic_config_numbers_the_fields_other_issues_reserved() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let config = fds
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .find(|m| m.name() == "TopicConfig")
        .expect("TopicConfig");
    let number = |name: &str| {
        config
            .field
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.number())
    };
    assert_eq!(number("producer_id_expiration_ms"), Some(11));
    assert_eq!(number("max_record_bytes"), Some(6));
    assert_eq!(number("compression"), Some(7));
    assert_eq!(number("compression_level"), Some(8));
}

#[test]
fn queue_messages_number_their_fields_as_the_queue_issue_gave_them() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let messages: Vec<_> = fds.file.iter().flat_map(|f| &f.message_type).collect();
    let fields = |message: &str| -> Vec<(String, i32)> {
        let m = messages
            .iter()
            .find(|m| m.name() == message)
            .unwrap_or_else(|| panic!("{message}"));
        m.field
            .iter()
            .map(|f| (f.name().to_string(), f.number()))
            .collect()
    };
    let named = |pairs: &[(&str, i32)]| -> Vec<(String, i32)> {
        pairs.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    };
    assert!(fields("Record").contains(&("deliver_at_ms".to_string(), 6)));
    assert_eq!(
        fields("AlterTopicRequest"),
        named(&[("name", 1), ("partitions", 2), ("config", 3), ("reset", 4)])
    );
    assert_eq!(fields("AlterTopicResponse"), named(&[("topic", 1)]));
    assert_eq!(
        fields("QueueConfig"),
        named(&[
            ("lease_ms", 1),
            ("max_deliveries", 2),
            ("retry_backoff_min_ms", 3),
            ("retry_backoff_max_ms", 4),
            ("dead_letter_topic", 5),
            ("delivery_delay_ms", 6),
            ("ordering", 7),
            ("max_leased", 8),
        ])
    );
    assert_eq!(
        fields("ReceiveRequest"),
        named(&[
            ("topic", 1),
            ("queue", 2),
            ("max_records", 3),
            ("wait_ms", 4),
            ("lease_ms", 5),
            ("consumer", 6),
        ])
    );
    assert_eq!(
        fields("Delivery"),
        named(&[
            ("record", 1),
            ("partition", 2),
            ("attempt", 3),
            ("lease_id", 4),
            ("lease_expires_ms", 5),
        ])
    );
    assert_eq!(
        fields("Settlement"),
        named(&[
            ("partition", 1),
            ("offset", 2),
            ("lease_id", 3),
            ("action", 4),
            ("delay_ms", 5),
            ("reason", 6),
        ])
    );
    assert_eq!(
        fields("SettleOutcome"),
        named(&[("result", 1), ("lease_expires_ms", 2)])
    );
    assert_eq!(
        fields("CreateQueueRequest"),
        named(&[("topic", 1), ("queue", 2), ("config", 3), ("start", 4)])
    );
    assert_eq!(
        fields("WorkStart"),
        named(&[
            ("topic", 1),
            ("queue", 2),
            ("consumer", 3),
            ("max_outstanding", 4),
            ("lease_ms", 5),
        ])
    );
    assert_eq!(
        v1::SettleResult::LeaseExpired.as_str_name(),
        "SETTLE_RESULT_LEASE_EXPIRED"
    );
    assert_eq!(v1::SettleAction::Reject as i32, 4);
    assert_eq!(v1::QueueOrdering::Key.as_str_name(), "QUEUE_ORDERING_KEY");
}

#[test]
fn cluster_messages_number_their_fields_as_the_cluster_issue_gave_them() {
    let fds = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let messages: Vec<_> = fds.file.iter().flat_map(|f| &f.message_type).collect();
    let number = |message: &str, field: &str| {
        messages
            .iter()
            .find(|m| m.name() == message)
            .and_then(|m| m.field.iter().find(|f| f.name() == field))
            .map(|f| f.number())
    };
    assert_eq!(number("CreateTopicRequest", "replication_factor"), Some(4));
    assert_eq!(number("PartitionInfo", "leader"), Some(5));
    assert_eq!(number("PartitionInfo", "replicas"), Some(6));
    assert_eq!(number("PartitionInfo", "in_sync"), Some(7));
    assert_eq!(number("DescribeClusterResponse", "nodes"), Some(1));
    assert_eq!(
        number("DescribeClusterResponse", "metadata_leader"),
        Some(2)
    );
    for (i, f) in ["node_id", "address", "state", "leading", "following"]
        .iter()
        .enumerate()
    {
        assert_eq!(number("NodeInfo", f), Some(i as i32 + 1), "{f}");
    }
    assert_eq!(v1::Durability::Replicated as i32, 3);
}
