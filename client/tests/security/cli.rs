//! The `spool` CLI over TLS.

use super::*;

// ---------------------------------------------------------------------------------------
// The CLI over TLS
// ---------------------------------------------------------------------------------------

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
