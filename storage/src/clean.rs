//! The clean-shutdown marker: the last file a graceful stop writes, once every log is
//! closed (index files whole, snapshots at the end, preallocated tails cut) and the file
//! system is synced, so the next start knows there is nothing to make durable again.
//!
//! The marker is trusted only if it is intact (magic, version and CRC), and it is removed
//! durably (unlink, then an fsync of the data directory) while the storage opens, before any
//! log can be written: a crash at any point after that start finds no marker and recovers
//! in full.

use std::fs;
use std::io;
use std::path::Path;

use crate::disk;
use crate::error::{Error, Result};
use crate::log::sync_dir;

/// The marker's file name in the data directory.
pub const FILE: &str = "clean-shutdown";
const MAGIC: &[u8; 8] = b"SPOOLCLN";
const VERSION: u32 = 1;
/// Magic, version, the time it was written (ms since the epoch), CRC of what precedes it.
const LEN: usize = 8 + 4 + 8 + 4;

/// Reads and removes the marker of `root`; true if one was there and intact.
pub(crate) fn take(root: &Path) -> Result<bool> {
    let path = root.join(FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    let intact = decode(&bytes).is_some();
    if !intact {
        tracing::warn!(path = %path.display(), "clean-shutdown marker is damaged; recovering every log in full");
    }
    disk::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
    sync_dir(root)?;
    Ok(intact)
}

/// Writes the marker of `root` durably (temporary file, fsync, rename, directory fsync).
pub(crate) fn write(root: &Path) -> Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let path = root.join(FILE);
    let tmp = root.join(format!("{FILE}.tmp"));
    let write = || -> io::Result<()> {
        let f = disk::write_file(&tmp, &encode(now_ms))?;
        disk::sync_data(&f, &tmp)?;
        disk::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io("write", &path, e))?;
    sync_dir(root)
}

fn encode(now_ms: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&now_ms.to_le_bytes());
    let crc = crc32fast::hash(&b[..20]);
    b[20..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The time the marker was written, if `b` is an intact marker of this version.
fn decode(b: &[u8]) -> Option<u64> {
    let b: &[u8; LEN] = b.try_into().ok()?;
    let crc = u32::from_le_bytes(b[20..].try_into().ok()?);
    if &b[..8] != MAGIC || b[8..12] != VERSION.to_le_bytes() || crc != crc32fast::hash(&b[..20]) {
        return None;
    }
    Some(u64::from_le_bytes(b[12..20].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_trusted_once_and_only_when_intact() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!take(dir.path()).unwrap(), "no marker");
        write(dir.path()).unwrap();
        assert!(decode(&fs::read(dir.path().join(FILE)).unwrap()).is_some_and(|t| t > 0));
        assert!(take(dir.path()).unwrap());
        assert!(!dir.path().join(FILE).exists(), "removed once read");
        assert!(!take(dir.path()).unwrap(), "trusted once");

        for flip in 0..LEN {
            write(dir.path()).unwrap();
            let path = dir.path().join(FILE);
            let mut b = fs::read(&path).unwrap();
            b[flip] ^= 0x10;
            fs::write(&path, &b).unwrap();
            assert!(!take(dir.path()).unwrap(), "byte {flip} flipped");
            assert!(!path.exists(), "a damaged marker is removed too");
        }
        fs::write(dir.path().join(FILE), &encode(42)[..LEN - 1]).unwrap();
        assert!(!take(dir.path()).unwrap(), "a short marker");
    }
}
