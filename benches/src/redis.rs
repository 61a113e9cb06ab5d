//! Redis Streams as a target (redis-rs): one stream key per partition, pipelined `XADD`s
//! (one pipeline per batch, 5 pipelines in flight per producer) and `XREAD` to read.
//!
//! Redis acknowledges an `XADD` after appending it to the AOF buffer; with
//! `appendfsync always` the AOF is written and fsync'd before the replies of that event
//! loop iteration go out, with `everysec` a background thread fsyncs once a second.
//! `--fsync` sets `appendfsync` with `CONFIG SET` for the run: always, everysec (interval),
//! no (never).

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::Semaphore;

use crate::Fsync;
use crate::workload::{AckFuture, Sender, Source, Target, Workload};

/// Where `benches/peers/redis.sh start` listens.
pub const DEFAULT_SERVER: &str = "redis://127.0.0.1:16379";

/// Pipelines (batches) awaiting their replies, per producer: like Spool's producer, which
/// keeps up to 5 batches per partition in flight.
const PIPELINES_IN_FLIGHT: usize = 5;

pub struct Redis {
    client: redis::Client,
    keys: Vec<String>,
    batch_size: usize,
}

async fn connect(client: &redis::Client) -> anyhow::Result<MultiplexedConnection> {
    // No response timeout: a pipeline of 1000 XADDs under `appendfsync always` on a busy
    // disk can take longer than the client's default 500 ms.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| {
            format!(
                "connecting to redis at {} (start one with benches/peers/redis.sh start)",
                client.get_connection_info().addr()
            )
        })
}

impl Redis {
    pub async fn setup(
        server: &str,
        run_id: &str,
        w: &Workload,
        fsync: Fsync,
    ) -> anyhow::Result<Redis> {
        let client = redis::Client::open(server).with_context(|| format!("redis URL {server}"))?;
        let mut conn = connect(&client).await?;
        let appendfsync = match fsync {
            Fsync::Always => "always",
            Fsync::Interval => "everysec",
            Fsync::Never => "no",
        };
        let _: Value = redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg(appendfsync)
            .query_async(&mut conn)
            .await
            .context("CONFIG SET appendfsync")?;
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await
            .context("CONFIG GET appendonly")?;
        if aof.get(1).map(String::as_str) != Some("yes") {
            eprintln!(
                "warning: redis runs with appendonly={aof:?}: nothing is persisted per write"
            );
        }
        let keys: Vec<String> = (0..w.partitions)
            .map(|p| format!("bench:{run_id}:{p}"))
            .collect();
        Ok(Redis {
            client,
            keys,
            batch_size: w.batch_size,
        })
    }

    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let mut conn = connect(&self.client).await?;
        let _: Value = redis::cmd("DEL")
            .arg(&self.keys)
            .query_async(&mut conn)
            .await
            .context("DEL")?;
        Ok(())
    }
}

pub struct RedisSender {
    conn: MultiplexedConnection,
    keys: Vec<String>,
    window: Arc<Semaphore>,
}

impl Sender for RedisSender {
    async fn send(&mut self, partition: u32, values: Vec<Bytes>) -> anyhow::Result<AckFuture> {
        let permit = Arc::clone(&self.window)
            .acquire_owned()
            .await
            .context("pipeline window closed")?;
        let key = &self.keys[partition as usize];
        let mut pipe = redis::pipe();
        for v in &values {
            pipe.cmd("XADD").arg(key).arg("*").arg("v").arg(&v[..]);
        }
        let mut conn = self.conn.clone();
        // Spawned so the pipeline is written now, not when the ack future is first polled.
        let reply = tokio::spawn(async move {
            let r: redis::RedisResult<Value> = pipe.query_async(&mut conn).await;
            drop(permit);
            r
        });
        Ok(Box::pin(async move {
            reply
                .await
                .context("pipeline task")?
                .context("XADD pipeline")?;
            Ok(())
        }))
    }
}

pub struct RedisSource {
    conn: MultiplexedConnection,
    keys: Vec<String>,
    last_ids: Vec<String>,
    count: usize,
}

impl Source for RedisSource {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(self.count)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(&self.keys)
                .arg(&self.last_ids);
            let reply: Value = cmd.query_async(&mut self.conn).await.context("XREAD")?;
            let before = out.len();
            parse_xread(reply, &self.keys, &mut self.last_ids, out)?;
            if out.len() > before {
                return Ok(());
            }
        }
    }
}

/// `XREAD` reply (RESP2): nil on timeout, else `[[key, [[id, [field, value, ...]], ...]], ...]`.
fn parse_xread(
    reply: Value,
    keys: &[String],
    last_ids: &mut [String],
    out: &mut Vec<Bytes>,
) -> anyhow::Result<()> {
    let streams = match reply {
        Value::Nil => return Ok(()),
        Value::Array(s) => s,
        other => bail!("unexpected XREAD reply: {other:?}"),
    };
    for s in streams {
        let Value::Array(mut kv) = s else {
            bail!("unexpected XREAD stream entry")
        };
        if kv.len() != 2 {
            bail!("unexpected XREAD stream entry of {} items", kv.len());
        }
        let entries = kv.pop().expect("2 items");
        let key = match kv.pop().expect("2 items") {
            Value::BulkString(k) => k,
            other => bail!("unexpected XREAD key: {other:?}"),
        };
        let slot = keys
            .iter()
            .position(|k| k.as_bytes() == key.as_slice())
            .context("XREAD returned a key it was not asked for")?;
        let Value::Array(entries) = entries else {
            bail!("unexpected XREAD entries")
        };
        for e in entries {
            let Value::Array(mut idf) = e else {
                bail!("unexpected XREAD entry")
            };
            if idf.len() != 2 {
                bail!("unexpected XREAD entry of {} items", idf.len());
            }
            let fields = idf.pop().expect("2 items");
            if let Value::BulkString(id) = idf.pop().expect("2 items") {
                last_ids[slot] = String::from_utf8(id).context("stream id")?;
            }
            let Value::Array(mut fields) = fields else {
                bail!("unexpected XREAD fields")
            };
            // One field, "v": [field, value].
            match fields.pop() {
                Some(Value::BulkString(v)) => out.push(Bytes::from(v)),
                other => bail!("unexpected XREAD value: {other:?}"),
            }
        }
    }
    Ok(())
}

impl Target for Redis {
    type Sender = RedisSender;
    type Source = RedisSource;

    fn name(&self) -> &'static str {
        "redis"
    }

    async fn sender(&self, _producer: usize) -> anyhow::Result<RedisSender> {
        Ok(RedisSender {
            conn: connect(&self.client).await?,
            keys: self.keys.clone(),
            window: Arc::new(Semaphore::new(PIPELINES_IN_FLIGHT)),
        })
    }

    async fn source(&self, partitions: Vec<u32>) -> anyhow::Result<RedisSource> {
        let keys: Vec<String> = partitions
            .iter()
            .map(|p| self.keys[*p as usize].clone())
            .collect();
        Ok(RedisSource {
            // Its own connection: a blocking XREAD holds the connection it runs on.
            conn: connect(&self.client).await?,
            last_ids: vec!["0-0".to_string(); keys.len()],
            keys,
            count: self.batch_size.max(1),
        })
    }
}
