//! Health and reflection with auth on.

use super::*;

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

/// `DescribeCluster` needs `describe` on the cluster: every right on topics, groups and
/// queues is not enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_cluster_needs_describe_on_the_cluster() {
    let pki = Pki::new();
    let broker = TempBroker::start_with(|cfg| {
        cfg.tls = pki.server_tls(false, false);
        let mut acl = superuser("admin");
        for resource in ["topic:*", "group:*", "queue:*"] {
            acl.push(rule("dev", resource, &ALL_OPS));
        }
        acl.push(rule("ops", "cluster", &[Operation::Describe]));
        cfg.auth = AuthConfig {
            tokens: vec![token("admin"), token("dev"), token("ops")],
            acl,
            mtls_identity: false,
        };
    })
    .await;
    let dev = client(&pki, &broker, Some("dev")).await;
    let e = within("DescribeCluster as dev", dev.describe_cluster())
        .await
        .expect_err("dev may not describe the cluster");
    assert!(
        e.to_string()
            .contains("principal dev may not describe cluster"),
        "{e}"
    );
    for who in ["ops", "admin"] {
        let c = client(&pki, &broker, Some(who)).await;
        let r = within("DescribeCluster", c.describe_cluster())
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(r.nodes.len(), 1, "{who}");
    }
    broker.shutdown().await;
}
