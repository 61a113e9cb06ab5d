// A queue from Node.js: CreateQueue, Receive (a long poll), Settle with ack, nack and
// reject (outcomes per settlement), the dead letter with its headers, RedriveQueue, and
// the codes of bad requests.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { grpc, brokerForThisFile, unary, failure, eventually } = require('../support');

const broker = brokerForThisFile();

const Q = { topic: 'jobs', queue: 'work' };

/** Receives until `n` deliveries came. */
async function receiveN(n) {
  const got = [];
  await eventually(`${n} deliveries`, async () => {
    const r = await unary(broker.client, 'Receive', { ...Q, max_records: n - got.length, wait_ms: 1_000, consumer: 'node' });
    got.push(...r.deliveries);
    return got.length >= n;
  });
  return got;
}

function settlement(d, action, extra = {}) {
  return { partition: d.partition, offset: d.record.offset, lease_id: d.lease_id, action, ...extra };
}

test('leases, settlements, retries, dead letters and a redrive', async () => {
  await unary(broker.client, 'CreateTopic', { name: 'jobs', partitions: 1 });
  const records = ['a', 'b', 'c'].map((v) => ({ value: Buffer.from(v) }));
  await unary(broker.client, 'Append', { topic: 'jobs', partition: 0, records });
  const created = await unary(broker.client, 'CreateQueue', {
    ...Q,
    config: { lease_ms: 60_000, max_deliveries: 3, retry_backoff_min_ms: 1, retry_backoff_max_ms: 1 },
  });
  assert.equal(created.queue.config.dead_letter_topic, 'jobs.work.dlq');

  const first = await receiveN(3);
  assert.deepEqual(first.map((d) => [d.record.value.toString(), d.attempt]), [['a', 1], ['b', 1], ['c', 1]]);
  const [a, b, cc] = first;
  const settled = await unary(broker.client, 'Settle', {
    ...Q,
    settlements: [
      settlement(a, 'SETTLE_ACTION_ACK'),
      settlement(b, 'SETTLE_ACTION_NACK', { delay_ms: 0 }),
      settlement(cc, 'SETTLE_ACTION_REJECT', { reason: 'bad input' }),
      settlement(a, 'SETTLE_ACTION_ACK'),
    ],
  });
  assert.deepEqual(
    settled.outcomes.map((o) => o.result),
    ['SETTLE_RESULT_OK', 'SETTLE_RESULT_OK', 'SETTLE_RESULT_OK', 'SETTLE_RESULT_UNKNOWN'],
    'the second ack of a finds no lease',
  );

  // b comes back as its second attempt; c is in the dead-letter topic with its history.
  const [again] = await receiveN(1);
  assert.deepEqual([again.record.value.toString(), again.attempt], ['b', 2]);
  await unary(broker.client, 'Settle', { ...Q, settlements: [settlement(again, 'SETTLE_ACTION_ACK')] });
  const info = await eventually('c dead-lettered', async () => {
    const q = (await unary(broker.client, 'DescribeQueue', Q)).queue;
    return q.dead_lettered_total === '1' && q;
  });
  assert.deepEqual([info.acked_total, info.redelivered_total], ['2', '1']);
  const letters = await unary(broker.client, 'Read', { topic: 'jobs.work.dlq', partition: 0, offset: 0 });
  assert.equal(letters.records.length, 1);
  const h = Object.fromEntries(letters.records[0].headers.map((x) => [x.key, x.value.toString()]));
  assert.equal(letters.records[0].value.toString(), 'c');
  assert.deepEqual(
    [h['spool-dead-letter-topic'], h['spool-dead-letter-offset'], h['spool-dead-letter-attempts'], h['spool-dead-letter-reason']],
    ['jobs', '2', '1', 'bad input'],
  );

  // A redrive brings c back at its offset, attempts reset; the source topic gets nothing.
  const redrive = await unary(broker.client, 'RedriveQueue', Q);
  assert.deepEqual([redrive.start_offset, redrive.end_offset], ['0', '1']);
  const [back] = await receiveN(1);
  assert.deepEqual([back.record.value.toString(), back.record.offset, back.attempt], ['c', '2', 1]);
  await unary(broker.client, 'Settle', { ...Q, settlements: [settlement(back, 'SETTLE_ACTION_ACK')] });
  const done = (await unary(broker.client, 'DescribeQueue', Q)).queue;
  assert.deepEqual([done.acked_total, done.redriven_total, done.partitions[0].ack_floor, done.partitions[0].end_offset], ['3', '1', '3', '3']);
});

test('queue requests that are wrong get the documented codes', async () => {
  const missing = await failure(broker.client, 'Receive', { topic: 'jobs', queue: 'nope', wait_ms: 0 });
  assert.equal(missing.code, grpc.status.NOT_FOUND);
  const unspecified = await failure(broker.client, 'Settle', {
    ...Q,
    settlements: [{ partition: 0, offset: 0, lease_id: 1, action: 'SETTLE_ACTION_UNSPECIFIED' }],
  });
  assert.equal(unspecified.code, grpc.status.INVALID_ARGUMENT);
  assert.match(unspecified.details, /nothing was applied/);
  const backwards = await failure(broker.client, 'CreateQueue', {
    topic: 'jobs',
    queue: 'backwards',
    config: { retry_backoff_min_ms: 10, retry_backoff_max_ms: 5 },
  });
  assert.equal(backwards.code, grpc.status.INVALID_ARGUMENT);
});
