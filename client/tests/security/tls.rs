//! Authentication (tokens), TLS and mutual TLS.

use super::*;

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
pub(super) async fn mtls_broker_with_alice(pki: &Pki) -> TempBroker {
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
