//! `spoold verify`: checks every batch of every log in a data directory (CRC, lengths,
//! offsets) and the topic metadata, and lists what is damaged. Opening a log recovers it as
//! a start of the broker would (a torn tail is cut and reported).

use std::path::{Path, PathBuf};

use spool_storage::{LogConfig, Storage, StorageConfig};

use crate::error::{Error, Result};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub path: PathBuf,
    pub what: String,
}

/// Verifies `data_dir`; the broker must not be running on it (the directory lock says so).
pub fn verify(data_dir: &Path) -> Result<(Vec<Finding>, usize)> {
    if !data_dir.is_dir() {
        return Err(Error::io(
            "open",
            data_dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
        ));
    }
    let storage = Storage::open(data_dir, StorageConfig::default())?;
    let mut findings = Vec::new();
    let mut logs = Vec::new();
    let topics = data_dir.join("topics");
    if let Ok(entries) = std::fs::read_dir(&topics) {
        for topic in entries {
            let topic = topic.map_err(|e| Error::io("list", &topics, e))?;
            let meta = topic.path().join("topic.json");
            if !meta.exists() {
                findings.push(Finding {
                    path: meta.clone(),
                    what: "missing topic metadata; the broker removes this directory on start"
                        .into(),
                });
            } else if let Err(e) = crate::registry::check_metadata(&meta) {
                findings.push(Finding {
                    path: meta.clone(),
                    what: format!("unusable topic metadata: {e}"),
                });
            }
            let dir = topic.path();
            for part in std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))? {
                let part = part.map_err(|e| Error::io("list", &dir, e))?;
                if part.path().is_dir() {
                    logs.push(format!(
                        "topics/{}/{}",
                        topic.file_name().to_string_lossy(),
                        part.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    if data_dir.join("internal/offsets").is_dir() {
        logs.push("internal/offsets".to_string());
    }
    logs.sort();
    for name in &logs {
        let log = match storage.open_log(name, LogConfig::default()) {
            Ok(log) => log,
            Err(e) => {
                findings.push(Finding {
                    path: data_dir.join(name),
                    what: format!("cannot open: {e}"),
                });
                continue;
            }
        };
        let report = log.open_report();
        if report.dropped_bytes > 0 {
            findings.push(Finding {
                path: data_dir.join(name),
                what: format!(
                    "torn tail: {} bytes after offset {} were cut by recovery",
                    report.dropped_bytes, report.end_offset
                ),
            });
        }
        for d in log.verify()? {
            findings.push(Finding {
                path: d.segment.clone(),
                what: format!(
                    "bytes {}..{} damaged, offsets {}..{} lost: {}",
                    d.positions.start, d.positions.end, d.offsets.start, d.offsets.end, d.reason
                ),
            });
        }
    }
    Ok((findings, logs.len()))
}
