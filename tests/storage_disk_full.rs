//! A full disk is an ordinary error: the log keeps every acknowledged
//! record, stays readable, and accepts appends again once there is room.
//! Runs on a small tmpfs, which needs root; elsewhere it says why it skips.

mod common;

use std::{path::PathBuf, process::Command};

use common::{batch_of, read_all, small_config};
use sluice::storage::{Log, LogConfig, StorageError};

/// A mounted tmpfs, unmounted on drop (before its directory is removed).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn disk_full_is_an_error_not_a_crash() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED disk_full_is_an_error_not_a_crash: {why} (needs root to mount a small tmpfs)");
            return;
        }
    };
    let dir = fs.path.join("log");
    // Leave some room, held by a file we can delete later.
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![1u8; 1024 * 1024]).expect("filler");
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        initial_preallocate_bytes: 16 * 1024,
        max_batch_bytes: 64 * 1024,
        ..small_config()
    };
    let log = Log::open(&dir, config.clone()).expect("open");
    let values = vec![vec![7u8; 4000]; 4];
    let mut acked = 0;
    let err = loop {
        match log.append(&batch_of(&values, 0)) {
            Ok(info) => acked = info.last_offset + 1,
            Err(e) => break e,
        }
        assert!(acked < 10_000, "never ran out of space");
    };
    assert!(
        matches!(err, StorageError::DiskFull { .. }),
        "expected DiskFull, got {err}"
    );
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(acked > 0);
    assert_eq!(
        log.end_offset(),
        acked,
        "a failed append must not move the end"
    );
    assert_eq!(read_all(&log).len() as i64, acked);

    // Room again: appends continue at the next offset.
    std::fs::remove_file(&filler).expect("free space");
    let info = log
        .append(&batch_of(&values, 0))
        .expect("append after freeing space");
    assert_eq!(info.base_offset, acked);
    drop(log);
    let log = Log::open(&dir, config).expect("reopen");
    assert_eq!(log.end_offset(), acked + 4);
    assert!(read_all(&log)
        .iter()
        .all(|r| r.value.as_deref() == Some(&values[0][..])));
}
