//! A progress bar for long `spool produce` and `spool consume` runs: the count and rate on
//! stderr, only when enabled (stderr a terminal, and for consume stdout not one), and only
//! once a run turns out to be long, so short runs print nothing extra.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::output;

/// The bar appears after this many records (or a second).
const AFTER_RECORDS: u64 = 20_000;

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    /// A bar counting `what` (e.g. "records sent"); nothing at all unless `enabled`.
    pub fn new(enabled: bool, what: &str) -> Progress {
        let started = Instant::now();
        if !enabled {
            return Progress { bar: None, started };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(&format!(
            "{{spinner}} {{human_pos}} {what}  {{rate}}  {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(
                    w,
                    "{} records/s",
                    output::count(state.per_sec().round() as u64)
                );
            },
        );
        bar.set_style(style);
        Progress {
            bar: Some(bar),
            started,
        }
    }

    pub fn update(&self, done: u64) {
        let Some(bar) = &self.bar else { return };
        if bar.is_hidden()
            && (done >= AFTER_RECORDS || self.started.elapsed() >= Duration::from_secs(1))
        {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        bar.set_position(done);
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
