//! Read-only memory maps behind a small safe API. The only `unsafe` in Spool lives here.
//!
//! Soundness rests on three invariants, each named at the block that relies on it:
//!
//! 1. **The directory lock.** Only one process opens a data directory ([`crate::Storage`]
//!    holds an exclusive lock on it), so no other process of ours writes or truncates a
//!    mapped file. Outside tampering with a locked data directory is out of scope, like
//!    writing to `/proc/self/mem`.
//! 2. **Append-only below the published length.** A view is handed out only over bytes below
//!    a segment's published length; those bytes are never written again. Truncation and
//!    recovery never shrink a mapped file below a live view: they write a new file and
//!    rename it over the old one (mapped pages keep the old inode alive), or run before any
//!    map of the file exists.
//! 3. **Space before mapping.** A map never extends past the file's length at the time it is
//!    made, and every byte below that length is allocated (fallocate, not a sparse
//!    `set_len`), so touching a mapped page cannot raise SIGBUS for a missing block.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

/// A read-only map of a whole file as it was when mapped.
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps the first `len` bytes of `file` read-only. `len` must not exceed the file's
    /// current length (checked). An empty length yields an empty map.
    pub fn map(file: &File, len: u64) -> io::Result<Arc<MappedFile>> {
        let file_len = file.metadata()?.len();
        if len > file_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("map of {len} bytes past the end of a {file_len}-byte file"),
            ));
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large to map"))?;
        // SAFETY: invariant 1 (the directory lock) means no process of ours modifies this
        // file except through the append path, which writes only past the published length
        // (invariant 2); `len` is within the file's length and its blocks are allocated
        // (invariant 3), so reading any mapped byte cannot fault.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(Arc::new(MappedFile { map }))
    }

    /// Length of the mapped range.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// A zero-copy view of `start..end` that keeps the map alive. Panics-free: an out of
    /// bounds range is an error.
    pub fn view(self: &Arc<Self>, start: usize, end: usize) -> io::Result<Bytes> {
        if start > end || end > self.map.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "view {start}..{end} outside a map of {} bytes",
                    self.map.len()
                ),
            ));
        }
        Ok(Bytes::from_owner(View {
            map: Arc::clone(self),
            start,
            len: end - start,
        }))
    }

    /// Advises the kernel that the mapped range will be read sequentially soon.
    pub fn advise_sequential(&self) {
        // Advice only; failure changes nothing observable.
        let _ = self.map.advise(memmap2::Advice::Sequential);
    }
}

/// The owner behind a [`Bytes`] view: the map plus the range it may expose.
struct View {
    map: Arc<MappedFile>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `start + len <= map.len()` was checked in `MappedFile::view`, so the range
        // lies inside the live mapping, which `self.map` keeps alive for the slice's lifetime.
        // The bytes in range are below the published length when the view was made and are
        // never written again (invariant 2), so the shared slice is never aliased by a write.
        // Building the slice from the pointer, rather than slicing the whole map, means no
        // reference ever covers bytes still being appended.
        unsafe { std::slice::from_raw_parts(self.map.map.as_ptr().add(self.start), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn views_outlive_the_handle_and_reject_bad_ranges() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"hello, spool").unwrap();
        let map = MappedFile::map(&f, 12).unwrap();
        let v = map.view(7, 12).unwrap();
        drop(map);
        assert_eq!(&v[..], b"spool");
        let map = MappedFile::map(&f, 12).unwrap();
        assert!(map.view(5, 13).is_err());
        assert!(map.view(6, 5).is_err());
        assert!(MappedFile::map(&f, 13).is_err());
    }
}
