// What the Node.js interop tests share: the spool.v1 service loaded at run time from
// proto/spool/v1/spool.proto (no generated code: the point is that any gRPC stack is a
// full client), a spoold process on ephemeral ports, and promise-shaped unary calls.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROOT = path.resolve(__dirname, '..', '..', '..');
// Milliseconds any single wait may take: generous for loaded debug builds. Nothing asserts
// on time.
const PATIENCE_MS = 60_000;

const definition = protoLoader.loadSync(path.join(ROOT, 'proto', 'spool', 'v1', 'spool.proto'), {
  includeDirs: [path.join(ROOT, 'proto')],
  keepCase: true, // field names as the proto spells them
  longs: String, // 64-bit integers as decimal strings, as proto3 JSON has them
  enums: String,
  defaults: true,
  oneofs: true, // a oneof's set field is named by its virtual field (`kind`)
});
const spool = grpc.loadPackageDefinition(definition).spool.v1;

/** The spoold binary: $SPOOL_BIN (relative to the repository root) or target/debug/spoold. */
function spooldBinary() {
  const bin = path.resolve(ROOT, process.env.SPOOL_BIN || 'target/debug/spoold');
  if (!fs.existsSync(bin)) {
    throw new Error(`no spoold at ${bin}: build it with cargo build -p spool-broker`);
  }
  return bin;
}

/**
 * Starts spoold on a fresh data directory and ephemeral ports. Resolves to
 * { address, client, log, stop } once it logs `serving`; `stop()` sends SIGTERM and
 * resolves to its exit code.
 */
function startBroker() {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-node-'));
  const child = spawn(
    spooldBinary(),
    ['--data-dir', dataDir, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0'],
    { env: { ...process.env, SPOOL_LOG: 'info' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const log = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`spoold never logged serving:\n${log.join('\n')}`));
    }, PATIENCE_MS);
    let pending = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        log.push(line);
        const m = /\bserving\b.*\bgrpc=(\S+)/.exec(line);
        if (m) {
          clearTimeout(timer);
          const address = m[1];
          const client = new spool.Broker(address, grpc.credentials.createInsecure());
          const stop = () =>
            new Promise((done) => {
              client.close();
              child.once('exit', (code) => {
                fs.rmSync(dataDir, { recursive: true, force: true });
                done(code);
              });
              child.kill('SIGTERM');
            });
          resolve({ address, client, log, stop });
        }
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`spoold exited ${code} before serving:\n${log.join('\n')}`));
    });
  });
}

/**
 * One spoold for the test file that calls this: started before its tests, stopped after
 * them (it must exit 0 on SIGTERM). Its fields (`client`, `address`, ...) are set once the
 * file's tests run.
 */
function brokerForThisFile() {
  const { before, after } = require('node:test');
  const assert = require('node:assert/strict');
  const broker = {};
  before(async () => {
    Object.assign(broker, await startBroker());
  });
  after(async () => {
    assert.equal(await broker.stop(), 0, 'spoold exits 0 on SIGTERM');
  });
  return broker;
}

/** A unary call as a promise: `unary(client, 'CreateTopic', {...})`. */
function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + PATIENCE_MS }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

/** Resolves to the error a unary call fails with (rejects if it succeeds). */
async function failure(client, method, request) {
  try {
    await unary(client, method, request);
  } catch (err) {
    return err;
  }
  throw new Error(`${method} succeeded; expected it to fail`);
}

/** The documented partitioning hash: FNV-1a, 64-bit, of the key bytes. */
function fnv1a64(bytes) {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h;
}

/** Waits for `cond()` (async) to hold, polling, failing after PATIENCE_MS. */
async function eventually(what, cond) {
  const deadline = Date.now() + PATIENCE_MS;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`never: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

module.exports = { grpc, spool, PATIENCE_MS, startBroker, brokerForThisFile, unary, failure, fnv1a64, eventually };
