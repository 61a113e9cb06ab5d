//! Every file system call of the engine that changes what is on disk: creating, writing,
//! resizing, syncing, renaming and removing files and directories. Nothing else in the
//! crate makes these calls (reads and maps use `std::fs` and `mmap` directly), so one place
//! sees all of them: with the `fault-injection` feature a test can record every change
//! under a directory ([`journal`]) and rebuild the disk a power cut could leave
//! (`storage/tests/power_loss/`). Without the feature each function is the plain call.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub mod journal;

use journal::{Change, observe};

/// Creates `dir` and its missing parents, then fsyncs the parent of each one created, so
/// a new directory's name is as durable as the files later synced inside it.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.try_exists()? {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        let made = observe(
            d,
            || match fs::create_dir(d) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            },
            |made| made.then(|| Change::CreateDir(d.into())),
        )?;
        if made && let Some(parent) = d.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Opens `path` for reading and writing; `create` makes it if missing, `truncate` empties it.
pub(crate) fn open(path: &Path, create: bool, truncate: bool) -> io::Result<File> {
    observe(
        path,
        || {
            // Only a recording needs to know whether this creates the file.
            let existed = !create || !journal::recording(path) || path.try_exists()?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(truncate)
                .open(path)?;
            Ok((file, existed))
        },
        |(_, existed)| match (existed, truncate) {
            (false, _) => Some(Change::Create(path.into())),
            (true, true) => Some(Change::SetLen(path.into(), 0)),
            (true, false) => None,
        },
    )
    .map(|(file, _)| file)
}

/// Writes `buf` at `offset` of `file` (at `path`).
pub(crate) fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
    observe(
        path,
        || file.write_all_at(buf, offset),
        |()| Some(Change::Write(path.into(), offset, buf.to_vec())),
    )
}

/// Creates or empties `path` and writes `bytes` into it (not synced); returns the file.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let f = open(path, true, true)?;
    write_at(&f, path, bytes, 0)?;
    Ok(f)
}

/// Sets the length of `file` (at `path`).
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> io::Result<()> {
    observe(
        path,
        || file.set_len(len),
        |()| Some(Change::SetLen(path.into(), len)),
    )
}

/// Allocates blocks for `offset..offset+len` of `file` and extends it over them. Falls back
/// to writing zeros where the file system has no fallocate.
pub(crate) fn allocate(file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    observe(
        path,
        || match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), offset, len) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let zeros = vec![0u8; 1 << 20];
                let mut at = offset;
                while at < offset + len {
                    let n = (offset + len - at).min(zeros.len() as u64) as usize;
                    file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        },
        |()| Some(Change::Extend(path.into(), offset + len)),
    )
}

/// `fdatasync`s `file` (at `path`): its data and size are durable.
pub(crate) fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    observe(
        path,
        || file.sync_data(),
        |()| Some(Change::Sync(path.into())),
    )
}

/// fsyncs the directory `dir`: the names created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    observe(
        dir,
        || File::open(dir).and_then(|d| d.sync_all()),
        |()| Some(Change::SyncDir(dir.into())),
    )
}

/// Renames `from` to `to` (in the same directory), replacing `to`.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    observe(
        to,
        || fs::rename(from, to),
        |()| Some(Change::Rename(from.into(), to.into())),
    )
}

/// Removes the file `path`.
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    crate::faults::check(crate::faults::Op::Remove, path)?;
    observe(
        path,
        || fs::remove_file(path),
        |()| Some(Change::Remove(path.into())),
    )
}

/// Removes the directory `dir` and everything in it.
pub(crate) fn remove_dir_all(dir: &Path) -> io::Result<()> {
    observe(
        dir,
        || fs::remove_dir_all(dir),
        |()| Some(Change::Remove(dir.into())),
    )
}

/// Syncs the whole file system holding `file` (`syncfs`).
pub(crate) fn sync_fs(file: &File, path: &Path) -> io::Result<()> {
    observe(
        path,
        || rustix::fs::syncfs(file).map_err(io::Error::from),
        |()| Some(Change::SyncAll),
    )
}
