//! Memory-mapped files: the writer's growable, preallocated mappings and the
//! readers' immutable windows onto them.
//!
//! Data files are written with `pwritev` into the page cache and read
//! through the mapping (Linux keeps one page cache for both). Writing a
//! fresh page through the mapping would make the kernel zero-fill it first,
//! which profiling showed to cost four fifths of append time; a whole-page
//! `pwritev` needs no fill. Index files, a few bytes per entry, are written
//! through their mappings.
//!
//! The rules that make the `unsafe` here sound:
//! 1. Only the log's single writer (holding the log's writer lock, so it has
//!    `&mut GrowableFile`) writes to a file, and only beyond the length it has
//!    published to readers.
//! 2. A length is published with a `Release` store after the bytes are
//!    written; readers `Acquire` it and look at no byte beyond it.
//! 3. Published bytes are never changed in place and never cut off while
//!    mapped: roll trims a file to exactly its published length, truncation
//!    writes the kept prefix into a new file, retention unlinks whole files
//!    (a mapping of an unlinked file stays valid).
//! 4. A mapping stays alive while any reader holds it (`Arc`).
//! 5. Files are preallocated (`fallocate`) before they are mapped larger, so a
//!    full disk shows as an error from `fallocate`, never as SIGBUS on a write
//!    to a page the file system cannot back.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::error::{Result, StorageError};
use super::fs::FileSystem;

/// Largest single growth step of a preallocated file.
const MAX_GROWTH_STEP: u64 = 64 * 1024 * 1024;

/// An immutable window onto the first `len` bytes of a mapping: bytes that
/// the writer has published. Cheap to clone; usable as the owner of a
/// zero-copy [`Bytes`].
#[derive(Clone)]
pub(crate) struct Published {
    map: Arc<MmapRaw>,
    len: usize,
}

impl Published {
    /// A window onto `map[..len]`. Callers pass only a published length
    /// (rule 2); `None` if it would exceed the mapping.
    pub(crate) fn new(map: Arc<MmapRaw>, len: usize) -> Option<Self> {
        (len <= map.len()).then_some(Self { map, len })
    }

    /// The window as a zero-copy [`Bytes`] that keeps the mapping alive.
    pub(crate) fn into_bytes(self) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Published {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `len <= map.len()` (checked in `new`), so the range lies in
        // the mapping, which `self.map` keeps alive. The bytes were published
        // by the writer before `len` was handed out and are never written
        // again nor unmapped-by-truncation while mapped (module rules 1-4), so
        // no `&mut` access aliases this shared slice.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

/// Maps a whole existing file read-only as published bytes (a sealed segment
/// or index). Empty files give empty bytes without a mapping.
pub(crate) fn map_sealed(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| StorageError::io("opening", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io("reading metadata of", path, e))?
        .len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    let map = MmapOptions::new()
        .len(len as usize)
        .map_raw_read_only(&file)
        .map_err(|e| StorageError::io("mapping", path, e))?;
    let map = Arc::new(map);
    // A sealed file is never written again: all of it is published.
    Ok(Published::new(map, len as usize)
        .map(Published::into_bytes)
        .unwrap_or_default())
}

/// A file the writer appends to through a shared mapping, preallocated ahead
/// of the data and grown in steps.
pub(crate) struct GrowableFile {
    path: PathBuf,
    file: Arc<File>,
    map: Arc<MmapRaw>,
    capacity: u64,
    initial: u64,
    limit: u64,
}

impl GrowableFile {
    /// Creates (or empties) the file at `path`, writes `content` at its start
    /// and preallocates at least `initial` bytes, at most `limit` unless
    /// `content` is larger.
    ///
    /// An existing file is unlinked first, never truncated in place: readers
    /// may still map it (module rule 3).
    pub(crate) fn create(
        fs: &dyn FileSystem,
        path: &Path,
        content: &[u8],
        initial: u64,
        limit: u64,
    ) -> Result<Self> {
        match fs.remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("replacing", path, e)),
        }
        let file = fs
            .create_new(path)
            .map_err(|e| StorageError::io("creating", path, e))?;
        let mut g = Self::from_file(path, file, 0, initial, limit)?;
        g.ensure(content.len() as u64)?;
        g.write(0, content);
        Ok(g)
    }

    /// Opens an existing file whose first `len` bytes are valid: cuts off
    /// anything after them, then preallocates.
    pub(crate) fn open(path: &Path, len: u64, initial: u64, limit: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StorageError::io("opening", path, e))?;
        file.set_len(len)
            .map_err(|e| StorageError::io("truncating", path, e))?;
        Self::from_file(path, file, len, initial, limit)
    }

    fn from_file(path: &Path, file: File, len: u64, initial: u64, limit: u64) -> Result<Self> {
        let capacity = len.max(initial.min(limit)).max(1);
        preallocate(&file, path, len, capacity)?;
        let map = map_rw(&file, path, capacity)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Arc::new(file),
            map,
            capacity,
            initial,
            limit,
        })
    }

    /// Makes room for `needed` bytes, growing the file and remapping. Returns
    /// the new mapping when it changed. On error nothing changed.
    pub(crate) fn ensure(&mut self, needed: u64) -> Result<Option<Arc<MmapRaw>>> {
        if needed <= self.capacity {
            return Ok(None);
        }
        let step = self.capacity.clamp(self.initial.max(1), MAX_GROWTH_STEP);
        let new_cap = needed.max((self.capacity + step).min(self.limit));
        preallocate(&self.file, &self.path, self.capacity, new_cap)?;
        let map = map_rw(&self.file, &self.path, new_cap)?;
        self.map = map.clone();
        self.capacity = new_cap;
        Ok(Some(map))
    }

    /// Writes `parts`, one after the other, at `pos` with `pwritev`. The
    /// range must be within capacity (see [`GrowableFile::ensure`]) and not
    /// yet published to readers.
    pub(crate) fn write_at<const N: usize>(
        &mut self,
        mut pos: u64,
        parts: [&[u8]; N],
    ) -> Result<()> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        debug_assert!(
            pos + total <= self.capacity,
            "write past preallocated capacity"
        );
        // On the stack: this runs once per append.
        let mut slices = parts.map(std::io::IoSlice::new);
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = match rustix::io::pwritev(&*self.file, rest, pos) {
                Ok(0) => {
                    return Err(StorageError::io(
                        "writing",
                        &self.path,
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(StorageError::io("writing", &self.path, e.into())),
            };
            pos += n as u64;
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        Ok(())
    }

    /// Copies `bytes` to `pos` through the mapping. The range must be within
    /// capacity (see [`GrowableFile::ensure`]) and not yet published to
    /// readers.
    ///
    /// # Panics
    ///
    /// If the range exceeds the capacity: a bug in the caller, never input.
    pub(crate) fn write(&mut self, pos: u64, bytes: &[u8]) {
        let end = pos
            .checked_add(bytes.len() as u64)
            .expect("write range overflows");
        assert!(end <= self.capacity, "write past preallocated capacity");
        if bytes.is_empty() {
            return;
        }
        // SAFETY: `pos..end` is within the mapping (asserted above; the
        // mapping is `capacity` bytes long and the file was preallocated to
        // it). We hold `&mut self`, and the log's writer lock, so no other
        // writer exists; readers only read below the published length, which
        // is at most `pos` (module rules 1-2). `bytes` cannot overlap the
        // mapping region being written, as that region is unpublished.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(pos as usize),
                bytes.len(),
            );
        }
    }

    /// Bytes preallocated and mapped.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The current mapping (covers the whole capacity).
    pub(crate) fn map(&self) -> &Arc<MmapRaw> {
        &self.map
    }

    /// The open file, for syncing without the writer lock.
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Cuts the file to `len` bytes (its published length) when sealing.
    pub(crate) fn trim(&mut self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| StorageError::io("trimming", &self.path, e))?;
        self.capacity = self.capacity.min(len);
        Ok(())
    }
}

fn map_rw(file: &File, path: &Path, len: u64) -> Result<Arc<MmapRaw>> {
    let len = usize::try_from(len)
        .map_err(|_| StorageError::InvalidConfig(format!("mapping of {len} bytes")))?;
    MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map(Arc::new)
        .map_err(|e| StorageError::io("mapping", path, e))
}

/// Reserves disk blocks for `from..to` and extends the file to `to` bytes.
fn preallocate(file: &File, path: &Path, from: u64, to: u64) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, to - from) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
            // The file system cannot reserve blocks: write zeros instead,
            // which allocates them just the same.
            let zeros = vec![0u8; 1 << 20];
            let mut at = from;
            while at < to {
                let n = (to - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| StorageError::io("preallocating", path, e))?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(StorageError::io("preallocating", path, e.into())),
    }
}

/// Writes `content` to `path` durably and atomically: a temporary file,
/// `sync_data`, rename over the target, then sync the directory.
pub fn write_file_atomic(fs: &dyn FileSystem, path: &Path, content: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let f = fs
        .create(&tmp)
        .map_err(|e| StorageError::io("creating", &tmp, e))?;
    f.write_all_at(content, 0)
        .map_err(|e| StorageError::io("writing", &tmp, e))?;
    fs.sync_data(&f)
        .map_err(|e| StorageError::io("syncing", &tmp, e))?;
    fs.rename(&tmp, path)
        .map_err(|e| StorageError::io("renaming", &tmp, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(fs, dir)?;
    }
    Ok(())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
        .map_err(|e| StorageError::io("syncing directory", dir, e))
}
