"""Interop: two consumer-group members written against plain generated Python stubs.

Generates the `spool.v1` stubs from proto/spool/v1/spool.proto with grpcio-tools into a
temporary directory, starts the real `spoold` on a temporary data directory and ephemeral
ports, and runs two `Consume` members in one group on one topic. Between them they consume
every record, each committing what it processed, and `DescribeGroup` shows both.

Needs: `pip install grpcio grpcio-tools pytest`. Uses the `spoold` named by $SPOOLD, or
target/debug/spoold (built with cargo if missing).

Run: python -m pytest -q tests/interop/python/test_groups.py
"""

import queue
import threading
import time

import grpc
import pytest
from support import PATIENCE, generate_stubs, plain_broker

TOPIC = "interop-groups"
GROUP = "py-group"
PARTITIONS = 4
BEFORE = 50  # records per partition appended before the members join
AFTER = 50  # and after both hold their share


@pytest.fixture(scope="module")
def pb():
    """The generated modules: (spool_pb2, spool_pb2_grpc)."""
    return generate_stubs()


@pytest.fixture
def broker():
    """A running spoold; yields its gRPC address."""
    yield from plain_broker()


class Member:
    """One group member: a Consume stream driven by a thread, committing each batch."""

    def __init__(self, pb, stub, name):
        self.pb, self.name = pb, name
        self.requests = queue.Queue()
        self.lock = threading.Lock()
        self.member_id = None
        self.generation = 0
        self.partitions = []
        self.values = []  # (partition, offset, value) of every delivered record
        self.error = None
        self.requests.put(
            pb.ConsumeRequest(join=pb.JoinGroup(group=GROUP, topic=TOPIC, session_timeout_ms=30_000))
        )
        self.call = stub.Consume(iter(self.requests.get, None))
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        pb = self.pb
        try:
            for msg in self.call:
                kind = msg.WhichOneof("kind")
                if kind == "assignment":
                    with self.lock:
                        self.member_id = msg.assignment.member_id
                        self.generation = msg.assignment.generation
                        self.partitions = list(msg.assignment.partitions)
                elif kind == "batch":
                    b = msg.batch
                    with self.lock:
                        assert b.partition in self.partitions, (self.name, b.partition)
                        for r in b.records:
                            self.values.append((b.partition, r.offset, r.value.decode()))
                    end = b.records[-1].offset + 1
                    self.requests.put(
                        pb.ConsumeRequest(commit=pb.CommitRequest(partition=b.partition, offset=end))
                    )
                elif kind == "commit_ack":
                    assert not msg.commit_ack.rejected, msg.commit_ack
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                self.error = e
        except AssertionError as e:
            self.error = e

    def snapshot(self):
        with self.lock:
            return self.member_id, self.generation, list(self.partitions), list(self.values)

    def close(self):
        self.requests.put(None)
        self.call.cancel()
        self.thread.join(timeout=PATIENCE)


def wait_for(what, cond):
    deadline = time.monotonic() + PATIENCE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def append(pb, stub, start, end):
    for p in range(PARTITIONS):
        records = [pb.Record(value=f"p{p}-{i}".encode()) for i in range(start, end)]
        stub.Append(
            pb.AppendRequest(topic=TOPIC, partition=p, records=records), timeout=PATIENCE
        )


def test_two_generated_stub_members_share_a_topic_and_consume_everything(pb, broker):
    spool_pb2, spool_pb2_grpc = pb
    channel = grpc.insecure_channel(broker)
    grpc.channel_ready_future(channel).result(timeout=PATIENCE)
    stub = spool_pb2_grpc.BrokerStub(channel)
    stub.CreateTopic(
        spool_pb2.CreateTopicRequest(name=TOPIC, partitions=PARTITIONS), timeout=PATIENCE
    )
    append(spool_pb2, stub, 0, BEFORE)

    a = Member(spool_pb2, stub, "a")
    wait_for("a's assignment", lambda: a.snapshot()[0] is not None)
    b = Member(spool_pb2, stub, "b")
    members = [a, b]
    try:
        # Both hold their share under the same generation.
        def balanced():
            sa, sb = a.snapshot(), b.snapshot()
            return (
                sa[1] == sb[1]
                and sa[1] > 0
                and len(sa[2]) == 2
                and len(sb[2]) == 2
            )

        wait_for("an even split", balanced)
        append(spool_pb2, stub, BEFORE, AFTER + BEFORE)

        def all_committed():
            assert a.error is None and b.error is None, (a.error, b.error)
            offsets = stub.GetOffsets(
                spool_pb2.GetOffsetsRequest(group=GROUP, topic=TOPIC), timeout=PATIENCE
            ).partitions
            return all(
                p.HasField("committed") and p.committed == p.end_offset for p in offsets
            )

        wait_for("every partition committed", all_committed)

        # Between them they got every record (at least once), each of its own partitions.
        ida, _, parts_a, got_a = a.snapshot()
        idb, _, parts_b, got_b = b.snapshot()
        expected = {
            (p, i, f"p{p}-{i}") for p in range(PARTITIONS) for i in range(BEFORE + AFTER)
        }
        assert set(got_a) | set(got_b) == expected
        assert sorted(parts_a + parts_b) == list(range(PARTITIONS))
        for parts, got in ((parts_a, got_a), (parts_b, got_b)):
            later = {(p, i) for (p, i, _) in got if i >= BEFORE}
            assert later == {(p, i) for p in parts for i in range(BEFORE, BEFORE + AFTER)}

        described = stub.DescribeGroup(
            spool_pb2.DescribeGroupRequest(group=GROUP, topic=TOPIC), timeout=PATIENCE
        )
        assert described.group == GROUP
        (t,) = described.topics
        assert t.topic == TOPIC
        assert sorted(m.member_id for m in t.members) == sorted([ida, idb])
        assert all(m.connected for m in t.members)
        assert sorted(p for m in t.members for p in m.partitions) == list(range(PARTITIONS))
        assert all(p.lag == 0 for p in t.partitions)

        listed = stub.ListGroups(spool_pb2.ListGroupsRequest(), timeout=PATIENCE)
        assert [(g.group, list(g.topics)) for g in listed.groups] == [(GROUP, [TOPIC])]
    finally:
        for m in members:
            m.close()
        channel.close()
    assert a.error is None and b.error is None, (a.error, b.error)
