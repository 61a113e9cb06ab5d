// A consumer-group member from Node.js: a Consume stream that joins, receives its
// assignment and batches, commits each batch, and sees its commits in GetOffsets.
'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { brokerForThisFile, unary, eventually, PATIENCE_MS } = require('../support');

const broker = brokerForThisFile();

test('a Consume member gets every record of its partitions and commits them', async () => {
  const partitions = 3;
  const perPartition = 20;
  await unary(broker.client, 'CreateTopic', { name: 'g', partitions });
  for (let p = 0; p < partitions; p++) {
    const records = [...Array(perPartition).keys()].map((i) => ({ value: Buffer.from(`p${p}-${i}`) }));
    await unary(broker.client, 'Append', { topic: 'g', partition: p, records });
  }
  const call = broker.client.Consume({ deadline: Date.now() + PATIENCE_MS });
  const seen = new Map(); // partition -> values, in order
  const committed = new Map(); // partition -> offset the broker accepted
  let assignment;
  const done = new Promise((resolve, reject) => {
    call.on('error', reject);
    call.on('data', (msg) => {
      switch (msg.kind) {
        case 'assignment':
          assignment = msg.assignment;
          break;
        case 'batch': {
          const b = msg.batch;
          assert.ok(assignment.partitions.includes(b.partition), `batch of unassigned ${b.partition}`);
          const values = seen.get(b.partition) || [];
          values.push(...b.records.map((r) => r.value.toString()));
          seen.set(b.partition, values);
          const next = BigInt(b.records[b.records.length - 1].offset) + 1n;
          call.write({ commit: { partition: b.partition, offset: next.toString() } });
          break;
        }
        case 'commit_ack': {
          const a = msg.commit_ack;
          assert.equal(a.rejected, false, a.reason);
          committed.set(a.partition, a.offset);
          if ([...committed.values()].filter((o) => o === String(perPartition)).length === partitions) {
            resolve();
          }
          break;
        }
        default:
          reject(new Error(`unexpected message ${JSON.stringify(msg)}`));
      }
    });
  });
  call.write({ join: { group: 'node-group', topic: 'g', session_timeout_ms: 10_000 } });
  await done;
  assert.deepEqual(assignment.partitions, [0, 1, 2], 'the only member owns every partition');
  for (let p = 0; p < partitions; p++) {
    assert.deepEqual(seen.get(p), [...Array(perPartition).keys()].map((i) => `p${p}-${i}`), `partition ${p} in order, once`);
  }
  const offsets = await unary(broker.client, 'GetOffsets', { group: 'node-group', topic: 'g' });
  assert.deepEqual(
    offsets.partitions.map((o) => [o.partition, o.committed, o.lag]),
    [0, 1, 2].map((p) => [p, String(perPartition), '0']),
  );
  call.write({ leave: {} });
  call.end();
  // Once it left, the group has no member.
  await eventually('the member left', async () => {
    const g = await unary(broker.client, 'DescribeGroup', { group: 'node-group', topic: 'g' });
    return g.topics.every((t) => t.members.length === 0);
  });
});
