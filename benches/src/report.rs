//! Latency histograms, the progress line and the final summary (text or JSON).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Largest latency recorded exactly: one hour in microseconds (larger values saturate).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Records `n` samples of `latency_ns`, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, latency_ns: u64, n: u64) {
    let us = (latency_ns / 1000).clamp(1, MAX_LATENCY_US);
    h.saturating_record_n(us, n);
}

/// What one run measured.
pub struct Summary {
    pub target: &'static str,
    pub mode: &'static str,
    pub messages: u64,
    pub message_size: usize,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Summary {
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10^6 bytes) per second; keys, headers and framing not counted.
    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.message_size as f64 / 1e6
    }

    fn percentiles(&self) -> [(&'static str, u64); 5] {
        let h = &self.latency;
        [
            ("p50", h.value_at_quantile(0.50)),
            ("p90", h.value_at_quantile(0.90)),
            ("p99", h.value_at_quantile(0.99)),
            ("p999", h.value_at_quantile(0.999)),
            ("max", h.max()),
        ]
    }

    /// The one JSON object `--json` prints.
    pub fn json(&self) -> serde_json::Value {
        let lat: serde_json::Map<String, serde_json::Value> = self
            .percentiles()
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        serde_json::json!({
            "target": self.target,
            "mode": self.mode,
            "messages": self.messages,
            "message_size": self.message_size,
            "elapsed_s": round3(self.elapsed.as_secs_f64()),
            "msgs_per_sec": round3(self.msgs_per_sec()),
            "mb_per_sec": round3(self.mb_per_sec()),
            "latency_us": lat,
        })
    }

    /// The latency distribution as `[[percentile, microseconds], ...]`, for CDF plots.
    pub fn cdf(&self) -> serde_json::Value {
        let h = &self.latency;
        let mut points = Vec::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(2) {
                points.push(serde_json::json!([
                    round3(v.quantile_iterated_to() * 100.0),
                    v.value_iterated_to()
                ]));
            }
        }
        serde_json::Value::Array(points)
    }

    pub fn text(&self) -> String {
        let p = self.percentiles();
        format!(
            "{} {}: {} msgs x {} B in {:.3} s = {:.0} msgs/s, {:.1} MB/s\n\
             latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.target,
            self.mode,
            self.messages,
            self.message_size,
            self.elapsed.as_secs_f64(),
            self.msgs_per_sec(),
            self.mb_per_sec(),
            p[0].1,
            p[1].1,
            p[2].1,
            p[3].1,
            p[4].1,
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints a progress line on stderr about once a second until finished or dropped.
pub struct Progress {
    tty: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// `counter` is read once a second; `label` names the phase ("spool produce", ...).
    pub fn start(label: String, counter: Arc<AtomicU64>) -> Progress {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = counter.load(Ordering::Relaxed);
                let line = format!(
                    "{label}: {:>6.1} s  {n:>10} msgs  {:>9} msgs/s (last second)",
                    start.elapsed().as_secs_f64(),
                    n - last
                );
                last = n;
                let mut err = std::io::stderr().lock();
                // A terminal gets one line rewritten in place; a log gets one line a second.
                let _ = if tty {
                    write!(err, "\r{line}")
                } else {
                    writeln!(err, "{line}")
                };
            }
        });
        Progress {
            tty,
            task: Some(task),
        }
    }

    pub async fn finish(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        if self.tty {
            eprintln!();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
