//! A full disk is an ordinary error: the log keeps every acknowledged
//! record, stays readable, and accepts appends again once there is room;
//! the group coordinator and the work queues resume by themselves.
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

impl Tmpfs {
    /// A mounted tmpfs, or `None` after saying why the test skips.
    fn mount_or_skip(size: &str, test: &str) -> Option<Self> {
        match Self::mount(size) {
            Ok(fs) => Some(fs),
            Err(why) => {
                eprintln!("SKIPPED {test}: {why} (needs root to mount a small tmpfs)");
                None
            }
        }
    }

    /// Fills the file system but for a few KiB with a file that can be
    /// deleted to make room again; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut size = 4 * 1024 * 1024;
        while size > 4096 {
            if std::fs::write(&filler, vec![1u8; size]).is_ok() {
                break;
            }
            size -= 64 * 1024;
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn disk_full_is_an_error_not_a_crash() {
    let Some(fs) = Tmpfs::mount_or_skip("2m", "disk_full_is_an_error_not_a_crash") else {
        return;
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

#[test]
fn the_group_coordinator_resumes_once_the_disk_has_room() {
    use sluice::broker::{Broker, BrokerConfig, TopicConfig};
    use sluice::coordinator::{
        Coordinator, CoordinatorConfig, OffsetCommit, Tp, RETRY_AFTER_FAILURE,
    };
    let Some(fs) =
        Tmpfs::mount_or_skip("4m", "the_group_coordinator_resumes_once_the_disk_has_room")
    else {
        return;
    };
    let mut config = BrokerConfig::new(fs.path.join("data"));
    config.log.initial_preallocate_bytes = 16 * 1024;
    let broker = Broker::open(config.clone()).expect("broker");
    broker
        .create_topic("t", 1, TopicConfig::default())
        .expect("topic");
    let coordinator_config = CoordinatorConfig {
        offsets_partitions: 1,
        offsets_segment_bytes: 64 * 1024,
        ..CoordinatorConfig::default()
    };
    let c = Coordinator::open(broker.clone(), coordinator_config.clone()).expect("coordinator");
    let commit = |c: &Coordinator, offset: i64| {
        let offsets = vec![OffsetCommit {
            tp: Tp {
                topic: "t".into(),
                partition: 0,
            },
            offset,
            metadata: "m".repeat(500),
        }];
        c.commit("g", "", -1, offsets)
    };
    let committed = |c: &Coordinator| {
        c.fetch_offsets("g", &[])
            .expect("fetch")
            .first()
            .map(|(_, c)| c.offset)
    };
    // Fill the disk, then commit until the offsets log has no room.
    let filler = fs.fill();
    let mut last_ok = -1;
    let err = (0..100_000)
        .find_map(|i| match commit(&c, i) {
            Ok(()) => {
                last_ok = i;
                None
            }
            Err(e) => Some(e),
        })
        .expect("the disk filled up");
    assert!(last_ok >= 0, "some commits fit: {err}");
    assert!(commit(&c, last_ok + 1).is_err(), "refused while full");

    // Room again: after the retry delay the shard replays its log and
    // takes commits again, without a restart.
    std::fs::remove_file(&filler).expect("free space");
    std::thread::sleep(RETRY_AFTER_FAILURE + std::time::Duration::from_millis(100));
    assert_eq!(
        committed(&c),
        Some(last_ok),
        "memory matches the log: failed commits were not applied"
    );
    commit(&c, last_ok + 2).expect("commit after freeing space");
    assert_eq!(committed(&c), Some(last_ok + 2));
    drop(c);
    drop(broker);
    let broker = Broker::open(config).expect("reopen");
    let c = Coordinator::open(broker, coordinator_config).expect("coordinator");
    assert_eq!(committed(&c), Some(last_ok + 2), "and it is in the log");
}

#[test]
fn the_work_queues_resume_once_the_disk_has_room() {
    use std::collections::BTreeSet;

    use sluice::broker::{Acks, Broker, BrokerConfig, ProduceRequest, TopicConfig};
    use sluice::coordinator::queues::Queues;
    use sluice::coordinator::{CoordinatorError, RETRY_AFTER_FAILURE};
    let Some(fs) = Tmpfs::mount_or_skip("4m", "the_work_queues_resume_once_the_disk_has_room")
    else {
        return;
    };
    let mut config = BrokerConfig::new(fs.path.join("data"));
    config.log.initial_preallocate_bytes = 16 * 1024;
    let broker = Broker::open(config).expect("broker");
    broker
        .create_topic("jobs", 1, TopicConfig::default())
        .expect("topic");
    const JOBS: usize = 20_000;
    let records = common::job_records(JOBS);
    let appended = broker
        .append(ProduceRequest {
            topic: "jobs".into(),
            partition: Some(0),
            records,
            acks: Acks::Leader,
            producer: None,
        })
        .expect("append")
        .result();
    assert!(appended.failures.is_empty());
    let q = Queues::open(broker.clone(), sluice::storage::system_clock()).expect("queues");
    let mut member = q.join("g", "jobs", "", 500, None, false).expect("join");

    let filler = fs.fill();
    // Take and accept work until the state log has no room.
    let mut accepted = BTreeSet::new();
    let failure = loop {
        let got = match q.acquire("g", &member, 500, usize::MAX) {
            Ok(got) => got,
            Err(e) => break e,
        };
        assert!(
            !got.is_empty(),
            "the queue ran dry before the disk filled ({} accepted)",
            accepted.len()
        );
        let acks = common::accept_all(&got);
        match q.ack("g", &member, acks) {
            Ok(out) => {
                for d in &got {
                    if out.accepted.contains(&d.delivery_id) {
                        accepted.insert(d.record.offset);
                    }
                }
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(failure, CoordinatorError::Failed { .. }),
        "{failure}"
    );
    assert!(!accepted.is_empty(), "some work was accepted first");
    assert!(
        q.acquire("g", &member, 50, usize::MAX).is_err(),
        "refused while full"
    );

    // Room again: after the retry delay the queues replay their state and
    // serve again, without a restart; confirmed ACCEPTs never come back.
    std::fs::remove_file(&filler).expect("free space");
    std::thread::sleep(RETRY_AFTER_FAILURE + std::time::Duration::from_millis(100));
    member = q
        .join("g", "jobs", "", 500, None, false)
        .expect("join again");
    let mut seen = 0;
    loop {
        let got = q
            .acquire("g", &member, 500, usize::MAX)
            .expect("acquire after freeing space");
        if got.is_empty() {
            break;
        }
        for d in &got {
            assert!(
                !accepted.contains(&d.record.offset),
                "accepted record {} delivered again",
                d.record.offset
            );
        }
        seen += got.len();
        let acks = common::accept_all(&got);
        q.ack("g", &member, acks).expect("ack after freeing space");
    }
    assert_eq!(
        seen + accepted.len(),
        JOBS,
        "every other record is delivered"
    );
}
