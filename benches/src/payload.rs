//! What the benchmark's messages hold. Throughput runs use one random-letter payload; the
//! compression runs need data that compresses as real data does, so every message differs:
//! generated JSON events or log lines, a pool of distinct messages longer than a
//! compression chunk (so no message repeats within one).

use bytes::Bytes;

/// The kind of payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    /// One block of random letters, the same in every message (the throughput runs).
    Letters,
    /// JSON events (page views and checkouts with ids, paths, amounts, timestamps).
    Json,
    /// Service log lines (timestamp, level, service, request id, path, status, duration).
    Logs,
}

/// Distinct messages in a pool: a 1 MiB compression chunk holds about 1,000 messages of
/// 1 KiB, fewer than this, so no message repeats within one.
const POOL: usize = 4096;

const WORDS: &[&str] = &[
    "order",
    "cart",
    "payment",
    "shipped",
    "refund",
    "customer",
    "retry",
    "timeout",
    "warehouse",
    "invoice",
    "session",
    "checkout",
    "inventory",
    "coupon",
    "address",
    "review",
    "latency",
    "cache",
    "miss",
    "hit",
    "upstream",
    "gateway",
    "token",
    "expired",
    "created",
];

/// Messages of exactly `size` bytes of `kind`; the caller takes message `i` as
/// `pool[i % pool.len()]`.
pub fn pool(kind: Payload, size: usize) -> Vec<Bytes> {
    match kind {
        Payload::Letters => vec![letters(size)],
        Payload::Json => (0..POOL)
            .map(|i| fit(json(i as u64), size, i as u64))
            .collect(),
        Payload::Logs => (0..POOL)
            .map(|i| fit(log_line(i as u64), size, i as u64))
            .collect(),
    }
}

/// A payload that does not compress to nothing.
fn letters(size: usize) -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x = xorshift(x);
            b'a' + (x % 26) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Deterministic pseudo-random numbers for message `i`.
fn rng(i: u64) -> impl FnMut() -> u64 {
    let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move || {
        x = xorshift(x);
        x
    }
}

fn json(i: u64) -> String {
    let mut r = rng(i);
    let kind = ["page_view", "add_to_cart", "checkout", "search"][(r() % 4) as usize];
    format!(
        r#"{{"event":"{kind}","user_id":"u-{:06}","session":"{:016x}","path":"/products/{}/{}","referrer":"https://www.example.com/search?q={}","amount_cents":{},"currency":"EUR","ts":{},"ua":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36","note":""#,
        r() % 50_000,
        r(),
        WORDS[(r() % WORDS.len() as u64) as usize],
        r() % 10_000,
        WORDS[(r() % WORDS.len() as u64) as usize],
        r() % 100_000,
        1_765_000_000_000 + i * 37,
    )
}

fn log_line(i: u64) -> String {
    let mut r = rng(i);
    let level = ["INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG"][(r() % 6) as usize];
    let service = ["checkout", "payments", "search", "gateway"][(r() % 4) as usize];
    format!(
        "2026-12-07T{:02}:{:02}:{:02}.{:03}Z {level} service={service} request_id={:016x} user=u-{:06} method=GET path=/api/v1/{}/{} status={} duration_ms={} msg=\"",
        r() % 24,
        r() % 60,
        r() % 60,
        r() % 1000,
        r(),
        r() % 50_000,
        WORDS[(r() % WORDS.len() as u64) as usize],
        r() % 100_000,
        [200, 200, 200, 201, 404, 500][(r() % 6) as usize],
        r() % 2_000,
    )
}

/// `head` padded with words (and closed: `"}` for JSON, `"` for logs) or cut, to exactly
/// `size` bytes.
fn fit(head: String, size: usize, i: u64) -> Bytes {
    let close = if head.starts_with('{') { "\"}" } else { "\"" };
    let mut r = rng(i ^ 0x5555);
    let mut s = head;
    while s.len() + close.len() < size {
        s.push_str(WORDS[(r() % WORDS.len() as u64) as usize]);
        s.push(' ');
    }
    s.truncate(size.saturating_sub(close.len()));
    s.push_str(close);
    s.truncate(size);
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_hold_distinct_messages_of_the_asked_size() {
        for kind in [Payload::Json, Payload::Logs] {
            let p = pool(kind, 1000);
            assert_eq!(p.len(), POOL);
            assert!(p.iter().all(|m| m.len() == 1000));
            let distinct: std::collections::HashSet<_> = p.iter().collect();
            assert_eq!(distinct.len(), POOL, "{kind:?}");
        }
        assert_eq!(pool(Payload::Letters, 64)[0].len(), 64);
        assert_eq!(pool(Payload::Json, 10)[0].len(), 10);
    }
}
