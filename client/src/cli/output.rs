//! Output helpers: aligned tables, human sizes and rates, and the JSON form of a record.

use std::fmt::Write as _;

use spool_client::Message;
use spool_client::v1::{CleanupPolicy, Compression, FsyncPolicy};

/// A table of plain columns aligned with spaces, a header row in capitals first.
/// Numeric-looking columns are right-aligned so digits line up.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column headings. `right` marks columns aligned to the right.
    pub fn new(columns: &[(&str, bool)]) -> Table {
        Table {
            header: columns.iter().map(|(c, _)| c.to_string()).collect(),
            right: columns.iter().map(|(_, r)| *r).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `1536` → `1.5 KiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A topic's fsync policy in words, e.g. `always` or `interval (1000 ms)`.
pub fn fsync(policy: i32, interval_ms: u64) -> String {
    match FsyncPolicy::try_from(policy) {
        Ok(FsyncPolicy::Always) => "always".into(),
        Ok(FsyncPolicy::Interval) => format!("interval ({interval_ms} ms)"),
        Ok(FsyncPolicy::Never) => "never".into(),
        Ok(FsyncPolicy::Unspecified) => "broker default".into(),
        Err(_) => format!("unknown ({policy})"),
    }
}

/// A topic's cleanup policy.
/// A node id; 0 is "none" (no leader right now).
pub fn node(id: u32) -> String {
    if id == 0 {
        "none".to_string()
    } else {
        id.to_string()
    }
}

/// Node ids, comma-separated; "-" for none.
pub fn nodes(ids: &[u32]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

pub fn cleanup(policy: i32) -> String {
    match CleanupPolicy::try_from(policy) {
        Ok(CleanupPolicy::Delete) => "delete".into(),
        Ok(CleanupPolicy::Compact) => "compact".into(),
        Ok(CleanupPolicy::CompactDelete) => "compact,delete".into(),
        Ok(CleanupPolicy::Unspecified) => "broker default".into(),
        Err(_) => format!("unknown ({policy})"),
    }
}

/// A topic's codec, with its level when one is set.
pub fn compression(codec: i32, level: i32) -> String {
    let name = match Compression::try_from(codec) {
        Ok(Compression::None) => "none".to_string(),
        Ok(Compression::Lz4) => "lz4".to_string(),
        Ok(Compression::Zstd) => "zstd".to_string(),
        Ok(Compression::Unspecified) => "broker default".to_string(),
        Err(_) => format!("unknown ({codec})"),
    };
    if level == 0 {
        name
    } else {
        format!("{name} (level {level})")
    }
}

/// A limit where 0 means "none".
pub fn limit(n: u64, render: impl Fn(u64) -> String) -> String {
    if n == 0 {
        "unlimited".into()
    } else {
        render(n)
    }
}

/// One JSON line for a record. Keys, values and header values are strings when they are
/// UTF-8; otherwise they are base64 (standard alphabet, padded) and flagged with a
/// `key_base64`/`value_base64` field set to `true`.
pub fn json_line(m: &Message) -> String {
    // Built by hand so the fields keep this order (serde_json's map would sort them).
    let mut out = format!(
        "{{\"partition\":{},\"offset\":{},\"timestamp_ms\":{},",
        m.partition, m.offset, m.timestamp_ms
    );
    push_bytes(&mut out, "key", &m.key);
    out.push(',');
    push_bytes(&mut out, "value", &m.value);
    out.push_str(",\"headers\":[");
    for (i, h) in m.headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"key\":");
        out.push_str(&serde_json::Value::from(h.key.as_str()).to_string());
        out.push(',');
        push_bytes(&mut out, "value", &h.value);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `"name":"text"`, or `"name":"base64","name_base64":true` for bytes that are not UTF-8.
fn push_bytes(out: &mut String, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => {
            let _ = write!(out, "\"{name}\":{}", serde_json::Value::from(s));
        }
        Err(_) => {
            let _ = write!(out, "\"{name}\":\"{}\",\"{name}_base64\":true", base64(b));
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `records/s` for a count over a duration, e.g. `81,234 records/s`.
pub fn rate(n: u64, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    let mut s = String::new();
    let _ = write!(s, "{} records/s", count((n as f64 / secs).round() as u64));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[("NAME", false), ("N", true)]);
        t.row(vec!["a".into(), "100".into()]);
        t.row(vec!["long-name".into(), "2".into()]);
        assert_eq!(
            t.render(),
            "NAME         N\na          100\nlong-name    2\n"
        );
    }

    #[test]
    fn json_lines_keep_field_order_and_flag_base64() {
        let m = Message {
            partition: 1,
            offset: 7,
            timestamp_ms: 5,
            key: bytes::Bytes::from_static(b"k\"1"),
            value: bytes::Bytes::from_static(&[0xff, 0x00]),
            headers: vec![spool_client::v1::Header {
                key: "h".into(),
                value: bytes::Bytes::from_static(b"v"),
            }],
        };
        let line = json_line(&m);
        assert_eq!(
            line,
            r#"{"partition":1,"offset":7,"timestamp_ms":5,"key":"k\"1","value":"/wA=","value_base64":true,"headers":[{"key":"h","value":"v"}]}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["offset"], 7);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10), "10 B");
    }
}
