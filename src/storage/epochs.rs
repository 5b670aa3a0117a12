//! The leader-epoch cache: where each leader epoch starts in the log
//! (Kafka's `leader-epoch-checkpoint`).
//!
//! Replication needs it to find where a follower's log diverges from its
//! leader's (KIP-101, KIP-279): the follower names the epoch of its last
//! batch, the leader answers with the offset where that epoch ends in its
//! own log, and the follower cuts everything from there on.
//!
//! File `leader-epochs` (big-endian): magic `SLLE`, version (1), entry count
//! (u32), per entry epoch (i32) and start offset (i64), CRC-32 of the
//! preceding bytes. It is replaced atomically (temporary file, sync, rename,
//! directory sync) before the first batch of a new epoch is appended, so the
//! file never lags the batches on disk.

use std::path::Path;

use super::error::{Result, StorageError};
use super::fs::FileSystem;
use super::mmap::write_file_atomic;

/// File name of the cache inside a log directory.
pub const FILE_NAME: &str = "leader-epochs";
const MAGIC: &[u8; 4] = b"SLLE";
const VERSION: u8 = 1;
const ENTRY_LEN: usize = 12;

/// Epochs and the offset of each one's first batch, both ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    entries: Vec<(i32, i64)>,
}

impl LeaderEpochs {
    /// The entries: (epoch, start offset), ascending.
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    /// The newest epoch, if any.
    pub fn latest(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// Records that `epoch` starts at `offset`: entries that start at or
    /// after `offset` hold no batch and are dropped. Returns whether the
    /// cache changed. An epoch below the newest one that still has batches
    /// is refused: epochs never go back within a log.
    pub fn assign(&mut self, epoch: i32, offset: i64) -> Result<bool> {
        let before = self.entries.len();
        self.entries.retain(|e| e.1 < offset);
        let dropped = self.entries.len() != before;
        match self.entries.last() {
            Some(&(e, _)) if e == epoch => Ok(dropped),
            Some(&(e, start)) if e > epoch => Err(StorageError::InvalidConfig(format!(
                "leader epoch {epoch} at offset {offset} is below epoch {e}, which starts at {start}: epochs only rise along a log"
            ))),
            _ => {
                self.entries.push((epoch, offset));
                Ok(true)
            }
        }
    }

    /// Drops the epochs that start at or after `end` (the log was cut
    /// there). Returns whether the cache changed.
    pub fn truncate_from(&mut self, end: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.1 < end);
        self.entries.len() != before
    }

    /// Kafka's `endOffsetFor`: the largest epoch at most `epoch` and the
    /// offset where it ends (where the next epoch starts, or `log_end` for
    /// the newest). `None` if every epoch in the log is newer.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let i = self.entries.partition_point(|e| e.0 <= epoch);
        if i == 0 {
            return None;
        }
        let found = self.entries[i - 1].0;
        let end = self.entries.get(i).map_or(log_end, |next| next.1);
        Some((found, end))
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(9 + self.entries.len() * ENTRY_LEN + 4);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for (epoch, start) in &self.entries {
            b.extend_from_slice(&epoch.to_be_bytes());
            b.extend_from_slice(&start.to_be_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < 13 || &b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if u32::from_be_bytes(crc.try_into().ok()?) != crc32fast::hash(body) {
            return None;
        }
        let count = u32::from_be_bytes(body[5..9].try_into().ok()?) as usize;
        let rest = &body[9..];
        if rest.len() != count.checked_mul(ENTRY_LEN)? {
            return None;
        }
        let entries: Vec<(i32, i64)> = rest
            .chunks_exact(ENTRY_LEN)
            .map(|c| {
                (
                    i32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                    i64::from_be_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]),
                )
            })
            .collect();
        let ascending = entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        ascending.then_some(Self { entries })
    }

    /// Reads the cache of the log in `dir`: `Ok(None)` if there is no file
    /// (a log from before replication: every batch then has epoch 0). A
    /// damaged file is an error: guessing could keep a diverged tail.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(b) => Self::decode(&b)
                .map(Some)
                .ok_or_else(|| StorageError::Corrupt {
                    path,
                    reason: "leader-epoch cache fails its checksum or framing".into(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("reading", path, e)),
        }
    }

    /// Durably replaces the cache of the log in `dir`.
    pub fn write(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        write_file_atomic(fs, &dir.join(FILE_NAME), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_offsets_follow_kafka() {
        let mut c = LeaderEpochs::default();
        assert_eq!(c.end_offset_for(3, 10), None);
        assert!(c.assign(1, 0).expect("assign"));
        assert!(c.assign(3, 5).expect("assign"));
        assert!(!c.assign(3, 7).expect("same epoch"));
        assert!(c.assign(6, 9).expect("assign"));
        assert_eq!(c.end_offset_for(0, 20), None);
        assert_eq!(c.end_offset_for(1, 20), Some((1, 5)));
        assert_eq!(c.end_offset_for(2, 20), Some((1, 5)));
        assert_eq!(c.end_offset_for(3, 20), Some((3, 9)));
        assert_eq!(c.end_offset_for(7, 20), Some((6, 20)));
        // An older epoch with batches after it is refused ...
        assert!(c.assign(4, 12).is_err());
        // ... but an epoch that never got a batch gives way.
        assert!(c.assign(4, 9).expect("replaces epoch 6"));
        assert_eq!(c.entries(), &[(1, 0), (3, 5), (4, 9)]);
        assert!(c.truncate_from(5));
        assert_eq!(c.entries(), &[(1, 0)]);
    }

    #[test]
    fn round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(LeaderEpochs::read(dir.path()).expect("read"), None);
        let mut c = LeaderEpochs::default();
        c.assign(2, 0).expect("assign");
        c.assign(5, 100).expect("assign");
        c.write(&crate::storage::OsFs, dir.path()).expect("write");
        assert_eq!(LeaderEpochs::read(dir.path()).expect("read"), Some(c));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("bytes");
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).expect("damage");
        assert!(LeaderEpochs::read(dir.path()).is_err());
    }
}
