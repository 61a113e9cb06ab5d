"""Interop: queue workers written against plain generated Python stubs, as separate processes.

Starts the real `spoold`, fills a topic, creates a queue with short leases, and drains it
with worker processes: one nacks every first attempt, one takes leases and crashes without
settling them (its leases expire and the records come back), then a plain worker acks the
rest. Poison records are nacked by everyone until `max_deliveries` dead-letters them. In
the end every good record was acked exactly once (counted from `SETTLE_RESULT_OK` acks the
workers report) and every poison record is in the dead-letter topic; a redrive then
brings the poison records back to the queue with their attempts reset.

Needs: `pip install grpcio grpcio-tools pytest`. Uses the `spoold` named by $SPOOLD, or
target/debug/spoold (built with cargo if missing).

Run: python -m pytest -q tests/interop/python/test_queues.py
"""

import collections
import os
import subprocess
import sys
import tempfile
import time

import grpc
import pytest
from support import PATIENCE, generate_stubs, plain_broker

TOPIC = "interop-queues"
QUEUE = "jobs"
PARTITIONS = 2
GOOD = 40
POISON = 3
MAX_DELIVERIES = 3


def worker(addr, mode, stubs):
    """One worker process: `nack-first`, `crash` or `ack`. Prints `ACK <value>` for each ack
    the broker answered OK."""
    sys.path.insert(0, stubs)
    from spool.v1 import spool_pb2 as pb, spool_pb2_grpc as pb_grpc

    stub = pb_grpc.BrokerStub(grpc.insecure_channel(addr))
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < 3.0:
        got = stub.Receive(
            pb.ReceiveRequest(topic=TOPIC, queue=QUEUE, max_records=5, wait_ms=500, consumer=mode)
        ).deliveries
        if not got:
            continue
        idle_since = time.monotonic()
        if mode == "crash":
            # Dies holding its leases: they must expire and be delivered again.
            os._exit(3)
        settlements = []
        for d in got:
            value = d.record.value.decode()
            nack = value.startswith("poison") or (mode == "nack-first" and d.attempt == 1)
            action = pb.SETTLE_ACTION_NACK if nack else pb.SETTLE_ACTION_ACK
            settlements.append(
                pb.Settlement(
                    partition=d.partition,
                    offset=d.record.offset,
                    lease_id=d.lease_id,
                    action=action,
                    delay_ms=0,
                )
            )
        outcomes = stub.Settle(
            pb.SettleRequest(topic=TOPIC, queue=QUEUE, settlements=settlements)
        ).outcomes
        for d, s, o in zip(got, settlements, outcomes):
            if s.action == pb.SETTLE_ACTION_ACK and o.result == pb.SETTLE_RESULT_OK:
                print("ACK", d.record.value.decode(), flush=True)
        if mode == "nack-first" and all(d.attempt > 1 for d in got):
            return


@pytest.fixture(scope="module")
def stubs():
    out = tempfile.mkdtemp(prefix="spool-stubs-")
    pb2, pb2_grpc = generate_stubs(out)
    return out, pb2, pb2_grpc


@pytest.fixture
def broker():
    """A running spoold; yields its gRPC address."""
    yield from plain_broker()


def spawn(addr, mode, out):
    return subprocess.Popen(
        [sys.executable, __file__, "worker", addr, mode, out],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_workers_nack_crash_and_ack_every_record_exactly_once(broker, stubs):
    out, pb, pb_grpc = stubs
    stub = pb_grpc.BrokerStub(grpc.insecure_channel(broker))
    stub.CreateTopic(pb.CreateTopicRequest(name=TOPIC, partitions=PARTITIONS))
    for i in range(GOOD + POISON):
        value = f"poison-{i}" if i < POISON else f"good-{i}"
        stub.Append(
            pb.AppendRequest(
                topic=TOPIC, partition=i % PARTITIONS, records=[pb.Record(value=value.encode())]
            )
        )
    config = pb.QueueConfig(
        lease_ms=500,
        max_deliveries=MAX_DELIVERIES,
        retry_backoff_min_ms=10,
        retry_backoff_max_ms=10,
    )
    stub.CreateQueue(pb.CreateQueueRequest(topic=TOPIC, queue=QUEUE, config=config))

    crasher = spawn(broker, "crash", out)
    assert crasher.wait(timeout=PATIENCE) == 3, "the crashing worker took leases and died"
    nacker = spawn(broker, "nack-first", out)
    acker = spawn(broker, "ack", out)
    acks = collections.Counter()
    for p in (nacker, acker):
        stdout, _ = p.communicate(timeout=PATIENCE * 2)
        assert p.returncode == 0, f"worker exited {p.returncode}"
        for line in stdout.splitlines():
            if line.startswith("ACK "):
                acks[line[4:]] += 1

    assert set(acks) == {f"good-{i}" for i in range(POISON, GOOD + POISON)}
    assert all(n == 1 for n in acks.values()), f"acked twice: {[v for v, n in acks.items() if n > 1]}"

    deadline = time.monotonic() + PATIENCE
    while True:
        info = stub.DescribeQueue(pb.DescribeQueueRequest(topic=TOPIC, queue=QUEUE)).queue
        if info.dead_lettered_total == POISON or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert info.acked_total == GOOD
    assert info.dead_lettered_total == POISON
    assert info.redelivered_total > 0
    assert [p.ack_floor for p in info.partitions] == [p.end_offset for p in info.partitions]
    letters = stub.Read(
        pb.ReadRequest(topic=f"{TOPIC}.{QUEUE}.dlq", partition=0, offset=0, max_records=100)
    ).records
    assert sorted(r.value.decode() for r in letters) == [f"poison-{i}" for i in range(POISON)]
    for r in letters:
        headers = {h.key: h.value.decode() for h in r.headers}
        assert headers["spool-dead-letter-reason"] == "max deliveries"
        assert headers["spool-dead-letter-attempts"] == str(MAX_DELIVERIES)
        assert headers["spool-dead-letter-topic"] == TOPIC

    # Redrive: the poison records come back in the queue with their attempts reset; the
    # dead-letter topic keeps its copies and the topic gets nothing new.
    started = stub.RedriveQueue(pb.RedriveQueueRequest(topic=TOPIC, queue=QUEUE))
    assert (started.start_offset, started.end_offset) == (0, POISON)
    deadline = time.monotonic() + PATIENCE
    back = []
    while len(back) < POISON and time.monotonic() < deadline:
        got = stub.Receive(
            pb.ReceiveRequest(topic=TOPIC, queue=QUEUE, max_records=POISON, wait_ms=500)
        ).deliveries
        back.extend(got)
    assert sorted(d.record.value.decode() for d in back) == [f"poison-{i}" for i in range(POISON)]
    assert {d.attempt for d in back} == {1}
    settled = stub.Settle(
        pb.SettleRequest(
            topic=TOPIC,
            queue=QUEUE,
            settlements=[
                pb.Settlement(
                    partition=d.partition,
                    offset=d.record.offset,
                    lease_id=d.lease_id,
                    action=pb.SETTLE_ACTION_ACK,
                )
                for d in back
            ],
        )
    ).outcomes
    assert [o.result for o in settled] == [pb.SETTLE_RESULT_OK] * POISON
    info = stub.DescribeQueue(pb.DescribeQueueRequest(topic=TOPIC, queue=QUEUE)).queue
    assert (info.redriven_total, info.redrive_remaining) == (POISON, 0)
    assert info.acked_total == GOOD + POISON
    again = stub.Read(
        pb.ReadRequest(topic=f"{TOPIC}.{QUEUE}.dlq", partition=0, offset=0, max_records=100)
    ).records
    assert len(again) == POISON


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "worker":
    worker(sys.argv[2], sys.argv[3], sys.argv[4])
