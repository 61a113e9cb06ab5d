//! NATS JetStream as a target (async-nats): one file-storage stream per partition,
//! asynchronous publishes with many acknowledgements in flight, and a pull consumer
//! (no acks) per stream to read.
//!
//! nats-server 2.9 acknowledges a publish once the message is in its file store's write
//! path (page cache) and syncs its files in the background on a timer; 2.9 has no
//! per-write sync setting, so `--fsync` does not change what it does.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};

use crate::workload::{AckFuture, Sender, Source, Target, Workload};

/// Where `benches/peers/nats.sh start` listens.
pub const DEFAULT_SERVER: &str = "nats://127.0.0.1:14222";

pub struct Nats {
    server: String,
    run_id: String,
    partitions: u32,
    /// Publishes awaiting their ack, per producer: as many as Spool's producer has in
    /// flight (5 batches of --batch-size per partition).
    max_ack_inflight: usize,
    batch_size: usize,
}

fn stream_name(run_id: &str, p: u32) -> String {
    format!("BENCH_{run_id}_{p}")
}

fn subject(run_id: &str, p: u32) -> String {
    format!("bench.{run_id}.{p}")
}

async fn connect(server: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(server)
        .await
        .with_context(|| {
            format!("connecting to nats at {server} (start one with benches/peers/nats.sh start)")
        })
}

impl Nats {
    pub async fn setup(server: &str, run_id: &str, w: &Workload) -> anyhow::Result<Nats> {
        let js = jetstream::new(connect(server).await?);
        for p in 0..w.partitions {
            js.create_stream(stream::Config {
                name: stream_name(run_id, p),
                subjects: vec![subject(run_id, p)],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating stream {}", stream_name(run_id, p)))?;
        }
        Ok(Nats {
            server: server.to_string(),
            run_id: run_id.to_string(),
            partitions: w.partitions,
            max_ack_inflight: (5 * w.batch_size).max(256),
            batch_size: w.batch_size,
        })
    }

    pub async fn cleanup(&self) -> anyhow::Result<()> {
        let js = jetstream::new(connect(&self.server).await?);
        for p in 0..self.partitions {
            js.delete_stream(stream_name(&self.run_id, p))
                .await
                .with_context(|| format!("deleting stream {}", stream_name(&self.run_id, p)))?;
        }
        Ok(())
    }
}

pub struct NatsSender {
    js: jetstream::Context,
    subjects: Vec<async_nats::Subject>,
}

impl Sender for NatsSender {
    async fn send(&mut self, partition: u32, values: Vec<Bytes>) -> anyhow::Result<AckFuture> {
        let subject = &self.subjects[partition as usize];
        let mut acks = Vec::with_capacity(values.len());
        for v in values {
            // Returns once the message is written to the connection (waiting while
            // max_ack_inflight acks are outstanding); the ack comes later.
            acks.push(self.js.publish(subject.clone(), v).await?);
        }
        Ok(Box::pin(async move {
            for a in acks {
                a.await?;
            }
            Ok(())
        }))
    }
}

type MessageStream = futures::stream::SelectAll<consumer::pull::Stream>;

pub struct NatsSource {
    messages: MessageStream,
    batch: usize,
    _client: async_nats::Client,
}

impl Source for NatsSource {
    async fn next(&mut self, out: &mut Vec<Bytes>) -> anyhow::Result<()> {
        let first = self
            .messages
            .next()
            .await
            .context("the consumer stream ended")??;
        out.push(first.message.payload);
        // Take what is already here, without waiting.
        while out.len() < self.batch {
            match self.messages.next().now_or_never() {
                Some(Some(m)) => out.push(m?.message.payload),
                _ => break,
            }
        }
        Ok(())
    }
}

impl Target for Nats {
    type Sender = NatsSender;
    type Source = NatsSource;

    fn name(&self) -> &'static str {
        "nats"
    }

    async fn sender(&self, _producer: usize) -> anyhow::Result<NatsSender> {
        let client = connect(&self.server).await?;
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(self.max_ack_inflight)
            .backpressure_on_inflight(true)
            .timeout(Duration::from_secs(30))
            .build(client);
        Ok(NatsSender {
            js,
            subjects: (0..self.partitions)
                .map(|p| subject(&self.run_id, p).into())
                .collect(),
        })
    }

    async fn source(&self, partitions: Vec<u32>) -> anyhow::Result<NatsSource> {
        let client = connect(&self.server).await?;
        let js = jetstream::new(client.clone());
        let mut streams = Vec::new();
        for p in partitions {
            let s = js.get_stream(stream_name(&self.run_id, p)).await?;
            let c = s
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::All,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .context("creating a pull consumer")?;
            streams.push(
                c.stream()
                    .max_messages_per_batch(self.batch_size.max(1))
                    .messages()
                    .await
                    .context("starting to pull")?,
            );
        }
        Ok(NatsSource {
            messages: futures::stream::select_all(streams),
            batch: self.batch_size.max(1),
            _client: client,
        })
    }
}
