//! The recovery-point checkpoint: how much of the log is known to be on disk.
//!
//! File `recovery-point` (26 bytes, big-endian): magic `SLRP`, version (1),
//! flags (bit 0: closed cleanly), recovery point (i64), leader epoch (i32),
//! CRC-32 of the preceding bytes. It is replaced atomically (temporary file,
//! sync, rename, directory sync).
//!
//! Segments that end below the recovery point are trusted on open; from
//! the segment holding it (or ending at it) on, batches are walked, and
//! verified from the recovery point on. Flushes move it up to what they
//! synced (at most every `checkpoint_interval_ms`), so a crash verifies
//! only what was written since. After a
//! clean close the whole log is trusted, so open reads nothing but names,
//! sizes and the tail of the last index.

use std::path::Path;

use super::error::{Result, StorageError};
use super::fs::FileSystem;
use super::mmap::write_file_atomic;

/// File name of the checkpoint inside a log directory.
pub const FILE_NAME: &str = "recovery-point";
const MAGIC: &[u8; 4] = b"SLRP";
const VERSION: u8 = 1;
const LEN: usize = 4 + 1 + 1 + 8 + 4 + 4;

/// What the checkpoint records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every batch below this offset is durable, and so are the files of
    /// the segments that end below it.
    pub recovery_point: i64,
    /// The log was closed cleanly at `recovery_point` (its end): all files
    /// are synced and trimmed to their real lengths.
    pub clean: bool,
    /// Largest leader epoch the log has used; recovery rejects batches that
    /// claim a larger one.
    pub leader_epoch: i32,
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = u8::from(self.clean);
        b[6..14].copy_from_slice(&self.recovery_point.to_be_bytes());
        b[14..18].copy_from_slice(&self.leader_epoch.to_be_bytes());
        let crc = crc32fast::hash(&b[..18]);
        b[18..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || &b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let crc = u32::from_be_bytes(b[18..22].try_into().ok()?);
        if crc != crc32fast::hash(&b[..18]) {
            return None;
        }
        Some(Self {
            clean: b[5] & 1 == 1,
            recovery_point: i64::from_be_bytes(b[6..14].try_into().ok()?),
            leader_epoch: i32::from_be_bytes(b[14..18].try_into().ok()?),
        })
    }

    /// Reads the checkpoint of the log in `dir`. `Ok(None)` if there is none
    /// or it is damaged (then the whole log is verified on open).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(b) => {
                let cp = Self::decode(&b);
                if cp.is_none() {
                    tracing::warn!(path = %path.display(), "recovery-point checkpoint is damaged; verifying the whole log");
                }
                Ok(cp)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("reading", path, e)),
        }
    }

    /// Durably replaces the checkpoint of the log in `dir`.
    pub fn write(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        write_file_atomic(fs, &dir.join(FILE_NAME), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Checkpoint::read(dir.path()).expect("read"), None);
        let cp = Checkpoint {
            recovery_point: 1234,
            clean: true,
            leader_epoch: 7,
        };
        cp.write(&crate::storage::OsFs, dir.path()).expect("write");
        assert_eq!(Checkpoint::read(dir.path()).expect("read"), Some(cp));
        let mut bytes = std::fs::read(dir.path().join(FILE_NAME)).expect("bytes");
        bytes[9] ^= 1;
        std::fs::write(dir.path().join(FILE_NAME), &bytes).expect("damage");
        assert_eq!(Checkpoint::read(dir.path()).expect("read"), None);
    }
}
