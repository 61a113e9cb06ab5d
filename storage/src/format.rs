//! The data directory's format version (`format`): the newest on-disk format any build
//! has written into the directory, so a build that does not know it refuses to open the
//! directory instead of misreading, or cutting as a torn tail, data it cannot decode.
//!
//! Version 1 is a directory without the file (builds before compressed batches); version 2
//! may hold compressed batches (batch format version 3). A start stamps the directory
//! with this build's version when it holds an older one, before any log is opened.

use std::fs;
use std::io;
use std::path::Path;

use crate::disk;
use crate::error::{Error, Result};
use crate::log::sync_dir;

/// The file's name in the data directory.
pub const FILE: &str = "format";
/// The directory format this build writes and the newest it reads.
pub const VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"SPOOLFMT";
/// Magic, version, CRC of what precedes it.
const LEN: usize = 8 + 4 + 4;

/// Refuses `root` if a newer build wrote it; stamps it with [`VERSION`] otherwise.
pub(crate) fn check_and_stamp(root: &Path) -> Result<()> {
    let path = root.join(FILE);
    let found = match fs::read(&path) {
        Ok(b) => decode(&b).ok_or_else(|| Error::Corrupt {
            path: path.clone(),
            position: 0,
            offsets: None,
            reason: format!(
                "the data directory's format file is damaged; if this directory was last run by this build, remove {FILE} and start again"
            ),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
        Err(e) => return Err(Error::io("read", &path, e)),
    };
    if found > VERSION {
        return Err(Error::NewerFormat {
            path: root.to_path_buf(),
            version: found,
            known: VERSION,
        });
    }
    if found < VERSION {
        let tmp = root.join(format!("{FILE}.tmp"));
        let write = || -> io::Result<()> {
            let f = disk::write_file(&tmp, &encode(VERSION))?;
            disk::sync_data(&f, &tmp)?;
            disk::rename(&tmp, &path)
        };
        write().map_err(|e| Error::io("write", &path, e))?;
        sync_dir(root)?;
    }
    Ok(())
}

fn encode(version: u32) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&b[..12]);
    b[12..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<u32> {
    let b: &[u8; LEN] = b.try_into().ok()?;
    let crc = u32::from_le_bytes(b[12..].try_into().ok()?);
    if &b[..8] != MAGIC || crc != crc32fast::hash(&b[..12]) {
        return None;
    }
    Some(u32::from_le_bytes(b[8..12].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_stamped_once_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        check_and_stamp(dir.path()).unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(decode(&fs::read(&path).unwrap()), Some(VERSION));
        check_and_stamp(dir.path()).unwrap();

        fs::write(&path, encode(VERSION + 1)).unwrap();
        let e = check_and_stamp(dir.path()).unwrap_err();
        assert!(
            matches!(e, Error::NewerFormat { version, .. } if version == VERSION + 1),
            "{e}"
        );
        assert_eq!(
            decode(&fs::read(&path).unwrap()),
            Some(VERSION + 1),
            "left alone"
        );

        let mut b = encode(VERSION).to_vec();
        b[9] ^= 1;
        fs::write(&path, &b).unwrap();
        assert!(matches!(
            check_and_stamp(dir.path()),
            Err(Error::Corrupt { .. })
        ));
    }
}
