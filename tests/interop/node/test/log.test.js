// The log from Node.js: topics, partition-key routing against the documented FNV-1a 64
// vectors, appends with headers, reads from inside a batch, a live subscription,
// idempotent retries, and error codes.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { grpc, brokerForThisFile, unary, failure, fnv1a64 } = require('../support');

const broker = brokerForThisFile();

test('partition keys route by the documented FNV-1a 64 hash', async () => {
  // The test vectors of docs/api.md.
  assert.equal(fnv1a64(Buffer.from('')), 0xcbf29ce484222325n);
  assert.equal(fnv1a64(Buffer.from('a')), 0xaf63dc4c8601ec8cn);
  assert.equal(fnv1a64(Buffer.from('foobar')), 0x85944171f73967e8n);
  assert.equal(fnv1a64(Buffer.from('order-42')), 0x7d1deb86a05662d4n);
  assert.equal(fnv1a64(Buffer.from('order-42')) % 12n, 8n);
  await unary(broker.client, 'CreateTopic', { name: 'keyed', partitions: 12, config: { fsync: 'FSYNC_POLICY_NEVER' } });
  const keys = ['order-42', 'a', 'foobar', 'user-1234', 'ключ'].map((k) => Buffer.from(k));
  keys.push(Buffer.from([...Array(256).keys()]));
  for (const key of keys) {
    const r = await unary(broker.client, 'Append', { topic: 'keyed', partition_key: key, records: [{ value: key }] });
    assert.equal(BigInt(r.partition), fnv1a64(key) % 12n, `key ${key.toString('hex')}`);
  }
});

test('append, read from inside a batch, and subscribe live', async () => {
  await unary(broker.client, 'CreateTopic', { name: 'events', partitions: 4 });
  const headers = [
    { key: 'trace', value: Buffer.from('abc') },
    { key: 'trace', value: Buffer.from('def') },
    { key: 'empty', value: Buffer.alloc(0) },
  ];
  const records = [0, 1, 2, 3, 4].map((i) => ({
    key: Buffer.from(`k${i}`),
    value: Buffer.from(`value-${i}`),
    headers: i === 0 ? headers : [],
  }));
  const first = await unary(broker.client, 'Append', { topic: 'events', partition_key: Buffer.from('order-42'), records, request_id: 9 });
  const p = Number(fnv1a64(Buffer.from('order-42')) % 4n);
  assert.equal(first.partition, p);
  assert.deepEqual([first.base_offset, first.record_count, first.request_id], ['0', 5, '9']);
  assert.equal(first.duplicate, false);
  assert.equal(first.durability, 'DURABILITY_FSYNCED');
  const second = await unary(broker.client, 'Append', {
    topic: 'events',
    partition: p,
    records: [0, 1, 2].map((i) => ({ value: Buffer.from(`more-${i}`) })),
  });
  assert.equal(second.base_offset, '5');

  const r = await unary(broker.client, 'Read', { topic: 'events', partition: p, offset: 3 });
  assert.deepEqual(r.records.map((x) => x.offset), ['3', '4', '5', '6', '7']);
  assert.deepEqual(r.records.map((x) => x.value.toString()), ['value-3', 'value-4', 'more-0', 'more-1', 'more-2']);
  assert.deepEqual([r.start_offset, r.end_offset], ['0', '8']);
  const head = await unary(broker.client, 'Read', { topic: 'events', partition: p, offset: 0, max_records: 1 });
  assert.deepEqual(
    head.records[0].headers.map((h) => [h.key, h.value.toString()]),
    [['trace', 'abc'], ['trace', 'def'], ['empty', '']],
    'header order and repeats kept',
  );

  // A subscription from the end sees a record appended after it started.
  const call = broker.client.Subscribe({ topic: 'events', partitions: [p], start: { kind: 'KIND_OFFSET', offset: 8 } });
  const live = new Promise((resolve, reject) => {
    call.on('data', (msg) => resolve(msg));
    call.on('error', reject);
  });
  await unary(broker.client, 'Append', { topic: 'events', partition: p, records: [{ value: Buffer.from('live') }] });
  const msg = await live;
  assert.deepEqual(msg.records.map((x) => [x.offset, x.value.toString()]), [['8', 'live']]);
  const ended = new Promise((resolve) => call.on('error', resolve));
  call.cancel();
  assert.equal((await ended).code, grpc.status.CANCELLED);
});

test('an idempotent producer retries without duplicates and a gap is refused', async () => {
  await unary(broker.client, 'CreateTopic', { name: 'idem', partitions: 1 });
  const req = (sequence, v) => ({ topic: 'idem', partition: 0, producer_id: 4242, sequence, records: [{ value: Buffer.from(v) }] });
  const a = await unary(broker.client, 'Append', req(0, 'i0'));
  assert.equal(a.duplicate, false);
  const again = await unary(broker.client, 'Append', req(0, 'i0'));
  assert.equal(again.duplicate, true);
  assert.equal(again.base_offset, a.base_offset);
  const gap = await failure(broker.client, 'Append', req(2, 'i2'));
  assert.equal(gap.code, grpc.status.FAILED_PRECONDITION, gap.details);
  const r = await unary(broker.client, 'Read', { topic: 'idem', partition: 0, offset: 0 });
  assert.equal(r.records.length, 1, 'the retry appended nothing');
});

test('bad requests get the documented codes', async () => {
  const missing = await failure(broker.client, 'Append', { topic: 'missing', records: [{ value: Buffer.from('v') }] });
  assert.equal(missing.code, grpc.status.NOT_FOUND);
  const bad = await failure(broker.client, 'CreateTopic', { name: 'a/b', partitions: 1 });
  assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);
  const exists = await failure(broker.client, 'CreateTopic', { name: 'events', partitions: 1 });
  assert.equal(exists.code, grpc.status.ALREADY_EXISTS);
  const range = await failure(broker.client, 'Read', { topic: 'idem', partition: 0, offset: 5 });
  assert.equal(range.code, grpc.status.OUT_OF_RANGE);
  assert.match(range.details, /0\.\.1/);
});
