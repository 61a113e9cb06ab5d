"""Interop: plain generated Python stubs against spoold over TLS with a bearer token.

Makes a throwaway CA and a server certificate for `localhost` (and 127.0.0.1) with the
`cryptography` package, hashes a token with `spoold hash-token`, and starts the real
`spoold` with --tls-cert/--tls-key and a --config TOML holding that token and one ACL rule
(create, describe, append and read on `topic:py-*`). Then, through
`grpc.ssl_channel_credentials` and `authorization: Bearer ...` metadata:

- the authorized principal creates a topic, appends and reads the records back;
- no token, or a wrong one, is UNAUTHENTICATED with the one message the broker gives;
- a topic outside the rule is PERMISSION_DENIED, naming the operation and resource;
- a plaintext channel to the TLS port gets nowhere.

Needs: `pip install -r requirements.txt`. Uses the `spoold` named by $SPOOLD, or
target/debug/spoold (built with cargo if missing).

Run: python -m pytest -q tests/interop/python/test_tls.py
"""

import datetime
import ipaddress
import re
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support import PATIENCE, Spoold, generate_stubs, spoold_binary

TOKEN = "py-interop-token-3f9c2a"  # what the client sends; the broker only has its hash
PRINCIPAL = "py"
UNAUTHENTICATED = "missing or invalid credentials"


@pytest.fixture(scope="module")
def pb():
    """The generated modules: (spool_pb2, spool_pb2_grpc)."""
    return generate_stubs()


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(out):
    """Writes ca.pem, server.pem and server.key into `out`: a CA and a server certificate
    for localhost and 127.0.0.1 signed by it (ECDSA P-256, valid from yesterday for a day)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=1)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Spool interop CA"))
        .issuer_name(_name("Spool interop CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(server.public_bytes(pem))
    (out / "server.key").write_bytes(
        key.private_bytes(
            pem,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def hash_token(spoold, token):
    """`spoold hash-token`: the token on stdin, its SHA-256 (hex) on stdout."""
    done = subprocess.run(
        [spoold, "hash-token"],
        input=token,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=True,
    )
    digest = done.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", digest), f"not a SHA-256: {digest!r}"
    return digest


@pytest.fixture(scope="module")
def broker():
    """A spoold with TLS, one token and one ACL rule; yields (port, ca.pem bytes)."""
    spoold = spoold_binary()
    work = tempfile.TemporaryDirectory(prefix="spool-py-tls-")
    base = Path(work.name)
    make_pki(base)
    config = base / "spool.toml"
    config.write_text(
        f"""
[[auth.tokens]]
principal = "{PRINCIPAL}"
sha256 = "{hash_token(spoold, TOKEN)}"

[[auth.acl]]
principal = "{PRINCIPAL}"
resource = "topic:py-*"
operations = ["create", "describe", "append", "read"]
"""
    )
    server = Spoold(
        [
            "--config",
            str(config),
            "--data-dir",
            str(base / "data"),
            "--tls-cert",
            str(base / "server.pem"),
            "--tls-key",
            str(base / "server.key"),
        ]
    )
    try:
        addr = server.start()
        yield int(addr.rsplit(":", 1)[1]), (base / "ca.pem").read_bytes()
    finally:
        server.close()
        work.cleanup()


@pytest.fixture
def stub(pb, broker):
    """A Broker stub on a TLS channel to localhost that trusts the test CA."""
    port, ca = broker
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    channel = grpc.secure_channel(f"localhost:{port}", creds)
    grpc.channel_ready_future(channel).result(timeout=PATIENCE)
    yield pb[1].BrokerStub(channel)
    channel.close()


def bearer(token=TOKEN):
    return [("authorization", f"Bearer {token}")]


def test_authorized_principal_appends_and_reads_over_tls(pb, stub):
    spool_pb2, _ = pb
    created = stub.CreateTopic(
        spool_pb2.CreateTopicRequest(name="py-events", partitions=1),
        metadata=bearer(),
        timeout=PATIENCE,
    )
    assert created.topic.name == "py-events"
    values = [f"record {i}".encode() for i in range(5)]
    appended = stub.Append(
        spool_pb2.AppendRequest(
            topic="py-events",
            partition=0,
            records=[spool_pb2.Record(key=b"k", value=v) for v in values],
        ),
        metadata=bearer(),
        timeout=PATIENCE,
    )
    assert (appended.base_offset, appended.record_count) == (0, len(values))
    read = stub.Read(
        spool_pb2.ReadRequest(topic="py-events", partition=0, offset=0),
        metadata=bearer(),
        timeout=PATIENCE,
    )
    assert [r.value for r in read.records] == values
    assert [r.offset for r in read.records] == list(range(len(values)))


@pytest.mark.parametrize("metadata", [None, bearer("not-the-token"), [("authorization", TOKEN)]])
def test_missing_or_wrong_token_is_unauthenticated(pb, stub, metadata):
    spool_pb2, _ = pb
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListTopics(spool_pb2.ListTopicsRequest(), metadata=metadata, timeout=PATIENCE)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused.value.details() == UNAUTHENTICATED


def test_topic_outside_the_acl_is_permission_denied(pb, stub):
    spool_pb2, _ = pb
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateTopic(
            spool_pb2.CreateTopicRequest(name="payroll", partitions=1),
            metadata=bearer(),
            timeout=PATIENCE,
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == f"principal {PRINCIPAL} may not create topic:payroll"

    # An operation the rule leaves out, on a topic it covers.
    stub.CreateTopic(
        spool_pb2.CreateTopicRequest(name="py-keep", partitions=1),
        metadata=bearer(),
        timeout=PATIENCE,
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.DeleteTopic(
            spool_pb2.DeleteTopicRequest(name="py-keep"), metadata=bearer(), timeout=PATIENCE
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details() == f"principal {PRINCIPAL} may not delete topic:py-keep"

    # ListTopics leaves out what the principal may not describe; nothing is refused.
    names = [t.name for t in stub.ListTopics(
        spool_pb2.ListTopicsRequest(), metadata=bearer(), timeout=PATIENCE
    ).topics]
    assert "payroll" not in names and "py-keep" in names


def test_plaintext_channel_to_the_tls_port_fails(pb, broker):
    spool_pb2, spool_pb2_grpc = pb
    port, _ = broker
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = spool_pb2_grpc.BrokerStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ListTopics(spool_pb2.ListTopicsRequest(), metadata=bearer(), timeout=10)
    assert failed.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ), failed.value
