//! The seam under the storage layer: the file-system operations whose
//! durability matters, with the real implementation ([`OsFs`]) and a
//! simulated-crash one for tests ([`CrashFs`]).
//!
//! What goes through the seam: every change to a directory's entries
//! (create, rename, unlink, mkdir) and every sync (`fdatasync` of a file,
//! `fsync` of a directory). Content changes on an open file (`pwritev`,
//! `fallocate`, `set_len`, stores through a shared mapping) do not need to:
//! their durability is decided by the next sync of that file, and
//! [`CrashFs`] reads what the file holds at each sync and at the crash. This
//! keeps the mmap read path and the `pwritev` write path real, and still
//! catches every write the log makes, including index entries stored
//! through a mapping.
//!
//! [`CrashFs`] models power loss as LazyFS and the ALICE study do: after a
//! crash a file holds what was in it at its last sync, plus any part of
//! what was written since (nothing, all of it, a prefix torn at a random
//! byte, or zeros where the new bytes were); each directory holds its
//! entries as of its last sync, plus a random subset, applied in order, of
//! the creates, renames and unlinks made since.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use parking_lot::Mutex;

/// The file-system operations the log's durability depends on.
pub trait FileSystem: Send + Sync {
    /// Creates a new file for reading and writing; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<File>;
    /// Creates a file for writing, emptying it if it exists.
    fn create(&self, path: &Path) -> io::Result<File>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes a file's data (and the size needed to read it) durable.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// Makes a directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// A shared file system handle, as storage settings carry it.
pub type Fs = Arc<dyn FileSystem>;

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFs;

/// The real file system, shared.
pub fn os_fs() -> Fs {
    Arc::new(OsFs)
}

impl FileSystem for OsFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        File::create(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// An operation [`CrashFs`] can be told to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `create_new` or `create`.
    Create,
    /// `rename` (the path is the source).
    Rename,
    /// `remove_file`.
    Remove,
    /// `sync_data` (the path is the file's current name, if it has one).
    SyncData,
    /// `sync_dir`.
    SyncDir,
}

/// Decides whether an operation fails (with "no space left on device").
pub type FaultFn = Box<dyn Fn(Op, &Path) -> bool + Send + Sync>;

/// A change to a directory's entries not yet made durable.
#[derive(Debug, Clone)]
enum NsOp {
    Link(PathBuf, u64),
    Rename(PathBuf, PathBuf, u64),
    Unlink(PathBuf, u64),
}

impl NsOp {
    /// Whether a sync of `dir` makes this change durable.
    fn in_dir(&self, dir: &Path) -> bool {
        match self {
            NsOp::Link(p, _) | NsOp::Unlink(p, _) => p.parent() == Some(dir),
            NsOp::Rename(from, to, _) => from.parent() == Some(dir) || to.parent() == Some(dir),
        }
    }

    fn apply(&self, ns: &mut BTreeMap<PathBuf, u64>) {
        match self {
            NsOp::Link(p, id) => {
                ns.insert(p.clone(), *id);
            }
            NsOp::Rename(from, to, id) => {
                if ns.get(from) == Some(id) {
                    ns.remove(from);
                    ns.insert(to.clone(), *id);
                }
            }
            NsOp::Unlink(p, id) => {
                if ns.get(p) == Some(id) {
                    ns.remove(p);
                }
            }
        }
    }
}

#[derive(Default)]
struct CrashState {
    next_id: u64,
    /// The namespace as it is now: path (relative to the root) to file id.
    live: BTreeMap<PathBuf, u64>,
    /// (device, inode) of each live file, to find it from an open handle.
    inodes: HashMap<(u64, u64), u64>,
    /// The namespace as a crash would find it before any pending change.
    durable: BTreeMap<PathBuf, u64>,
    /// Changes to directory entries since their directory's last sync.
    pending: Vec<NsOp>,
    /// Content of each file as of its last sync (absent: never synced).
    synced: HashMap<u64, Vec<u8>>,
    /// Directories created (relative to the root).
    dirs: Vec<PathBuf>,
    fault: Option<Arc<FaultFn>>,
    /// Operations counted, for tests that crash "at a random step".
    ops: u64,
}

/// A file system that performs every operation for real under `root` and
/// remembers what a power loss would keep, so a test can take the image a
/// crash at this moment could leave ([`CrashFs::crash_image`]). It can also
/// fail chosen operations ([`CrashFs::set_fault`]), as a full disk would.
///
/// For tests: it reads whole files at each sync.
pub struct CrashFs {
    root: PathBuf,
    state: Mutex<CrashState>,
}

impl std::fmt::Debug for CrashFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashFs")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// What a crash left on disk: files by path relative to the root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashImage {
    /// Directories, relative to the root.
    pub dirs: Vec<PathBuf>,
    /// File contents, relative to the root.
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

impl CrashImage {
    /// Writes the image under `root` (which should be empty or absent).
    pub fn write_to(&self, root: &Path) -> io::Result<()> {
        std::fs::create_dir_all(root)?;
        for d in &self.dirs {
            std::fs::create_dir_all(root.join(d))?;
        }
        for (p, bytes) in &self.files {
            let path = root.join(p);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, bytes)?;
        }
        Ok(())
    }
}

/// A small deterministic generator (SplitMix64), so a failing seed replays.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

fn read_whole(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match file.read_at(&mut buf[at..], at as u64)? {
            0 => {
                buf.truncate(at);
                break;
            }
            n => at += n,
        }
    }
    Ok(buf)
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC
}

impl CrashFs {
    /// Tracks `root`, creating it. Files already under it count as durable.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Arc<Self>> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let fs = Self {
            root,
            state: Mutex::new(CrashState::default()),
        };
        {
            let mut st = fs.state.lock();
            fs.adopt(&mut st, &fs.root.clone())?;
        }
        Ok(Arc::new(fs))
    }

    fn adopt(&self, st: &mut CrashState, dir: &Path) -> io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                st.dirs.push(self.rel(&path));
                self.adopt(st, &path)?;
            } else {
                let file = File::open(&path)?;
                let id = st.next_id;
                st.next_id += 1;
                let m = file.metadata()?;
                st.inodes.insert((m.dev(), m.ino()), id);
                st.synced.insert(id, read_whole(&file)?);
                let rel = self.rel(&path);
                st.live.insert(rel.clone(), id);
                st.durable.insert(rel, id);
            }
        }
        Ok(())
    }

    /// The root this file system tracks.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes chosen operations fail with "no space left on device" (until
    /// cleared with `None`).
    pub fn set_fault(&self, fault: Option<FaultFn>) {
        self.state.lock().fault = fault.map(Arc::new);
    }

    /// Operations performed so far.
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }

    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }

    fn check(&self, op: Op, path: &Path) -> io::Result<()> {
        let fault = {
            let mut st = self.state.lock();
            st.ops += 1;
            st.fault.clone()
        };
        match fault {
            Some(f) if f(op, path) => Err(no_space()),
            _ => Ok(()),
        }
    }

    fn link_new(&self, path: &Path, file: &File) -> io::Result<()> {
        let m = file.metadata()?;
        let rel = self.rel(path);
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        if let Some(old) = st.live.insert(rel.clone(), id) {
            // `create` emptied an existing file: same inode, new content.
            st.pending.push(NsOp::Unlink(rel.clone(), old));
        }
        st.inodes.insert((m.dev(), m.ino()), id);
        st.pending.push(NsOp::Link(rel, id));
        Ok(())
    }

    /// The image a power loss at this moment could leave, chosen by `seed`.
    pub fn crash_image(&self, seed: u64) -> io::Result<CrashImage> {
        let mut rng = SplitMix::new(seed);
        let st = self.state.lock();
        let mut ns = st.durable.clone();
        for op in &st.pending {
            if rng.below(2) == 0 {
                op.apply(&mut ns);
            }
        }
        let mut image = CrashImage {
            dirs: st.dirs.clone(),
            files: BTreeMap::new(),
        };
        let live_path: HashMap<u64, &PathBuf> = st.live.iter().map(|(p, &id)| (id, p)).collect();
        for (path, id) in ns {
            let synced = st.synced.get(&id).cloned().unwrap_or_default();
            let now = match live_path.get(&id) {
                Some(p) => match File::open(self.root.join(p)) {
                    Ok(f) => read_whole(&f)?,
                    Err(_) => synced.clone(),
                },
                // Unlinked since: only what was synced can come back.
                None => synced.clone(),
            };
            image.files.insert(path, torn(&synced, &now, &mut rng));
        }
        Ok(image)
    }
}

/// What a file holds after a crash, given its content at the last sync and
/// now: the synced bytes, all of the new ones, a tear at a random byte, or
/// zeros in place of the new bytes.
fn torn(synced: &[u8], now: &[u8], rng: &mut SplitMix) -> Vec<u8> {
    if synced == now {
        return now.to_vec();
    }
    let first_diff = synced
        .iter()
        .zip(now)
        .position(|(a, b)| a != b)
        .unwrap_or(synced.len().min(now.len()));
    match rng.below(4) {
        0 => synced.to_vec(),
        1 => now.to_vec(),
        2 => {
            let len = if rng.below(2) == 0 {
                synced.len()
            } else {
                now.len()
            };
            let cut =
                first_diff + rng.below((len.max(first_diff) - first_diff + 1) as u64) as usize;
            (0..len)
                .map(|i| {
                    let src = if i < cut { now } else { synced };
                    src.get(i).copied().unwrap_or(0)
                })
                .collect()
        }
        _ => (0..now.len())
            .map(|i| synced.get(i).copied().unwrap_or(0))
            .collect(),
    }
}

impl FileSystem for CrashFs {
    fn create_new(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Create, path)?;
        let file = OsFs.create_new(path)?;
        self.link_new(path, &file)?;
        Ok(file)
    }

    fn create(&self, path: &Path) -> io::Result<File> {
        self.check(Op::Create, path)?;
        let existed = path.exists();
        // Readable too, so a sync can read what it makes durable.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        if existed {
            // Same inode, emptied: the synced content no longer stands.
            let rel = self.rel(path);
            let mut st = self.state.lock();
            if let Some(&id) = st.live.get(&rel) {
                st.synced.remove(&id);
            }
            return Ok(file);
        }
        self.link_new(path, &file)?;
        Ok(file)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(Op::Rename, from)?;
        OsFs.rename(from, to)?;
        let (from, to) = (self.rel(from), self.rel(to));
        let mut st = self.state.lock();
        if let Some(id) = st.live.remove(&from) {
            if let Some(old) = st.live.insert(to.clone(), id) {
                st.inodes.retain(|_, v| *v != old);
            }
            st.pending.push(NsOp::Rename(from, to, id));
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(Op::Remove, path)?;
        OsFs.remove_file(path)?;
        let rel = self.rel(path);
        let mut st = self.state.lock();
        if let Some(id) = st.live.remove(&rel) {
            st.inodes.retain(|_, v| *v != id);
            st.pending.push(NsOp::Unlink(rel, id));
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFs.create_dir_all(dir)?;
        let rel = self.rel(dir);
        let mut st = self.state.lock();
        if !st.dirs.contains(&rel) {
            st.dirs.push(rel);
        }
        Ok(())
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        let m = file.metadata()?;
        let id = self.state.lock().inodes.get(&(m.dev(), m.ino())).copied();
        let name = id.and_then(|id| {
            let st = self.state.lock();
            st.live
                .iter()
                .find(|(_, &v)| v == id)
                .map(|(p, _)| self.root.join(p))
        });
        self.check(Op::SyncData, name.as_deref().unwrap_or(Path::new("")))?;
        OsFs.sync_data(file)?;
        if let Some(id) = id {
            let content = match (read_whole(file), &name) {
                (Ok(c), _) => c,
                // A write-only handle: read the file by its name.
                (Err(_), Some(name)) => read_whole(&File::open(name)?)?,
                (Err(e), None) => return Err(e),
            };
            self.state.lock().synced.insert(id, content);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(Op::SyncDir, dir)?;
        OsFs.sync_dir(dir)?;
        let rel = self.rel(dir);
        let mut st = self.state.lock();
        let st = &mut *st;
        st.durable.retain(|p, _| p.parent() != Some(&rel));
        for (p, &id) in &st.live {
            if p.parent() == Some(&rel) {
                st.durable.insert(p.clone(), id);
            }
        }
        // A rename out of this directory leaves nothing here to keep.
        st.pending.retain(|op| !op.in_dir(&rel));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_data_and_entries_only_as_promised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = CrashFs::new(dir.path()).expect("fs");
        let a = dir.path().join("a");
        let f = fs.create_new(&a).expect("create");
        f.write_all_at(b"durable", 0).expect("write");
        fs.sync_data(&f).expect("sync");
        fs.sync_dir(dir.path()).expect("sync dir");
        f.write_all_at(b"-and-more", 7).expect("write");
        let b = dir.path().join("b");
        let g = fs.create_new(&b).expect("create b");
        g.write_all_at(b"never synced", 0).expect("write");
        let mut saw = [false; 4];
        for seed in 0..200 {
            let image = fs.crash_image(seed).expect("image");
            let got = &image.files[Path::new("a")];
            assert!(got.starts_with(b"durable"), "synced bytes survive");
            match got.as_slice() {
                b"durable" => saw[0] = true,
                b"durable-and-more" => saw[1] = true,
                g if g.len() == 16 && g[7..].iter().all(|&x| x == 0) => saw[2] = true,
                _ => saw[3] = true,
            }
            if let Some(b) = image.files.get(Path::new("b")) {
                let ok = b
                    .iter()
                    .zip(b"never synced")
                    .all(|(x, y)| x == y || *x == 0);
                assert!(ok && b.len() <= 12, "unsynced bytes or zeros, nothing else");
            }
        }
        assert!(
            saw.iter().all(|&s| s),
            "every kind of crash happened: {saw:?}"
        );

        // Unlink without a directory sync may be undone; with one it holds.
        fs.remove_file(&a).expect("unlink");
        let kept = (0..50)
            .filter(|&s| {
                fs.crash_image(s)
                    .expect("image")
                    .files
                    .contains_key(Path::new("a"))
            })
            .count();
        assert!(
            kept > 0 && kept < 50,
            "an unsynced unlink is undone at random"
        );
        fs.sync_dir(dir.path()).expect("sync dir");
        assert!(!fs
            .crash_image(7)
            .expect("image")
            .files
            .contains_key(Path::new("a")));
    }

    #[test]
    fn faults_fail_chosen_operations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = CrashFs::new(dir.path()).expect("fs");
        fs.set_fault(Some(Box::new(|op, _| op == Op::Create)));
        let err = fs.create_new(&dir.path().join("x")).expect_err("fails");
        assert_eq!(err.raw_os_error(), Some(28));
        fs.set_fault(None);
        fs.create_new(&dir.path().join("x")).expect("works again");
    }
}
