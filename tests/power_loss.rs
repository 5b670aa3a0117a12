//! Power loss: random workloads on a partition log over the simulated-crash
//! file system, a crash at a random step (unsynced bytes dropped, torn or
//! zeroed; unsynced creates, renames and unlinks undone at random), then
//! recovery and the invariants a user relies on:
//!
//! - every record below the flushed offset at the crash (everything acked
//!   with acks=ALL, and whatever background flushes covered) that was not
//!   deleted by retention is there, at its offset, with its bytes;
//! - no record is ever garbage: whatever survives matches what was written;
//! - the readable log has no offset gaps, and appends go on at its end;
//! - an idempotent retry answered as a duplicate points at that very
//!   batch's records; no sequence is ever in the log twice.
//!
//! `PROPTEST_CASES=100000 cargo test --release --test storage_power_loss`
//! runs a longer campaign.

mod common;

use std::{collections::HashMap, path::Path, sync::Arc};

use common::{read_all, small_config};
use proptest::prelude::*;
use sluice::storage::{
    BatchBuilder, CrashFs, FlushPolicy, Log, LogConfig, ProducerFields, RecordBatch, StorageError,
};

#[derive(Debug, Clone)]
enum Op {
    /// A plain batch of `n` records of `size` bytes; acks=ALL flushes it.
    Append { n: usize, size: usize, all: bool },
    /// The idempotent producer's next batch.
    Idempotent { n: usize, all: bool },
    /// The idempotent producer resends one of its recent batches.
    Retry(usize),
    /// A background flush.
    Flush,
    /// Retention down to this many bytes.
    Retain(u64),
    /// Compaction by snapshot: drop whole segments below a point.
    DeleteBefore(f64),
    /// Close cleanly and reopen.
    Reopen,
    /// Power loss, then recovery.
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, 1usize..200, any::<bool>()).prop_map(|(n, size, all)| Op::Append { n, size, all }),
        5 => (1usize..5, any::<bool>()).prop_map(|(n, all)| Op::Idempotent { n, all }),
        2 => (0usize..10).prop_map(Op::Retry),
        2 => Just(Op::Flush),
        1 => (3000u64..20_000).prop_map(Op::Retain),
        1 => (0.0..1.0f64).prop_map(Op::DeleteBefore),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(Op::Crash),
    ]
}

const PID: i64 = 7;

/// A sent idempotent batch: its sequence, values, and where it landed.
#[derive(Debug, Clone)]
struct Sent {
    seq: i32,
    values: Vec<Vec<u8>>,
}

fn plain(values: &[Vec<u8>]) -> RecordBatch {
    let mut b = BatchBuilder::default();
    for v in values {
        b.push(1_000, None, Some(v), &[]).expect("push");
    }
    b.build().expect("non-empty")
}

fn idempotent(sent: &Sent) -> RecordBatch {
    let mut b = BatchBuilder::default().producer(ProducerFields {
        producer_id: PID,
        producer_epoch: 0,
        base_sequence: sent.seq,
    });
    for v in &sent.values {
        b.push(1_000, None, Some(v), &[]).expect("push");
    }
    b.build().expect("non-empty")
}

struct World {
    root: tempfile::TempDir,
    generation: u32,
    fs: Arc<CrashFs>,
    log: Log,
    config: LogConfig,
    /// What was written at each offset (offsets are never reused here).
    written: Vec<Vec<u8>>,
    sent: Vec<Sent>,
    next_seq: i32,
    next_value: u64,
}

impl World {
    fn new(flush: FlushPolicy) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("g0");
        let fs = CrashFs::new(&dir).expect("fs");
        let config = LogConfig {
            flush,
            fs: fs.clone(),
            segment_bytes: 2048,
            max_batch_bytes: 2048,
            ..small_config()
        };
        let log = Log::open(dir.join("log"), config.clone()).expect("open");
        Self {
            root,
            generation: 0,
            fs,
            log,
            config,
            written: Vec::new(),
            sent: Vec::new(),
            next_seq: 0,
            next_value: 0,
        }
    }

    fn values(&mut self, n: usize, size: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|_| {
                self.next_value += 1;
                let mut v = format!("v{}-", self.next_value).into_bytes();
                v.resize(size.max(v.len()), b'0' + (self.next_value % 10) as u8);
                v
            })
            .collect()
    }

    fn record_append(&mut self, base: i64, values: &[Vec<u8>]) {
        assert_eq!(
            base,
            self.written.len() as i64,
            "appends continue at the end"
        );
        self.written.extend(values.iter().cloned());
    }

    fn flush_if(&self, all: bool, end: i64) {
        if all {
            self.log.flush_until(end).expect("flush");
        }
    }

    /// Appends an idempotent batch (new or a retry) and checks the answer.
    fn send(&mut self, sent: Sent, all: bool) {
        match self.log.append(&idempotent(&sent)) {
            Ok(info) if info.duplicate => {
                // Defect 2: a duplicate must point at records that exist.
                assert!(
                    info.last_offset < self.log.end_offset(),
                    "duplicate of seq {} points past the log end: {info:?}",
                    sent.seq
                );
                for (i, v) in sent.values.iter().enumerate() {
                    let o = info.base_offset + i as i64;
                    assert_eq!(
                        self.written.get(o as usize),
                        Some(v),
                        "duplicate of seq {} points at other records (offset {o})",
                        sent.seq
                    );
                }
                self.flush_if(all, info.last_offset + 1);
            }
            Ok(info) => {
                self.record_append(info.base_offset, &sent.values);
                self.flush_if(all, info.last_offset + 1);
            }
            Err(StorageError::DuplicateSequence { .. }) => {}
            Err(e) => panic!("idempotent append of seq {} failed: {e}", sent.seq),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { n, size, all } => {
                let values = self.values(*n, *size);
                let info = self.log.append(&plain(&values)).expect("append");
                self.record_append(info.base_offset, &values);
                self.flush_if(*all, info.last_offset + 1);
            }
            Op::Idempotent { n, all } => {
                let values = self.values(*n, 30);
                let sent = Sent {
                    seq: self.next_seq,
                    values,
                };
                self.next_seq += *n as i32;
                self.sent.push(sent.clone());
                self.send(sent, *all);
            }
            Op::Retry(back) => {
                if let Some(sent) = self.sent.iter().rev().nth(*back).cloned() {
                    self.send(sent, false);
                }
            }
            Op::Flush => self.log.flush().expect("flush"),
            Op::Retain(bytes) => {
                let log = self.reopen_with(Some(*bytes));
                drop(std::mem::replace(&mut self.log, log));
            }
            Op::DeleteBefore(f) => {
                let (start, end) = (self.log.start_offset(), self.log.end_offset());
                let at = start + ((end - start) as f64 * f) as i64;
                self.log.delete_before(at).expect("delete before");
            }
            Op::Reopen => {
                let log = self.reopen_with(None);
                drop(std::mem::replace(&mut self.log, log));
            }
            Op::Crash(seed) => self.crash(*seed),
        }
    }

    /// Closes the log and opens it again, optionally applying retention.
    fn reopen_with(&self, retention_bytes: Option<u64>) -> Log {
        self.log.close().expect("close");
        let log = Log::open(self.log.dir(), self.config.clone()).expect("reopen");
        if let Some(b) = retention_bytes {
            let config = LogConfig {
                retention_bytes: Some(b),
                ..self.config.clone()
            };
            drop(log);
            let log = Log::open(self.log.dir(), config).expect("reopen with retention");
            log.apply_retention().expect("retention");
            return log;
        }
        log
    }

    fn crash(&mut self, seed: u64) {
        let flushed = self.log.flushed_offset();
        let start = self.log.start_offset();
        let image = self.fs.crash_image(seed).expect("crash image");
        self.generation += 1;
        let dir = self.root.path().join(format!("g{}", self.generation));
        image.write_to(&dir).expect("write image");
        let fs = CrashFs::new(&dir).expect("fs");
        self.config.fs = fs.clone();
        let log = Log::open(dir.join("log"), self.config.clone())
            .unwrap_or_else(|e| panic!("recovery failed (seed {seed}): {e}"));
        // The old log's files are no longer this world's: let it go without
        // touching the image.
        let old = std::mem::replace(&mut self.log, log);
        self.fs = fs;
        drop(old);

        let recs = read_all(&self.log);
        let (rstart, rend) = (self.log.start_offset(), self.log.end_offset());
        assert!(
            rstart <= start,
            "log start moved forward: {rstart} > {start}"
        );
        assert!(
            rend >= flushed,
            "flushed records lost: end {rend} < flushed {flushed} (seed {seed})"
        );
        let mut expect = rstart;
        for r in &recs {
            assert_eq!(r.offset, expect, "offset gap after recovery (seed {seed})");
            expect += 1;
            assert_eq!(
                r.value.as_ref(),
                self.written.get(r.offset as usize),
                "record {} differs from what was written (seed {seed})",
                r.offset
            );
        }
        if expect != rend {
            let mut files: Vec<_> = std::fs::read_dir(self.log.dir())
                .expect("list")
                .map(|e| {
                    let e = e.expect("entry");
                    (e.file_name(), e.metadata().expect("meta").len())
                })
                .collect();
            files.sort();
            eprintln!(
                "bases {:?} report {:?} files {files:?} read at {expect}: {:?}",
                self.log.segment_bases(),
                self.log.recovery_report(),
                self.log.read(expect, 1 << 20).map(|r| r.data.len())
            );
        }
        assert_eq!(expect, rend, "records end before the log end");
        // Idempotent records appear once each.
        let mut seen = HashMap::new();
        for r in &recs {
            if let Some(v) = &r.value {
                assert!(
                    seen.insert(v.clone(), r.offset).is_none(),
                    "a record is in the log twice"
                );
            }
        }
        self.written.truncate(rend as usize);
        // The producer resends everything the log may have lost, in order:
        // what survived is a duplicate, what was lost is appended again.
        for sent in self.sent.clone() {
            self.send(sent, false);
        }
        // Appends go on at the recovered end.
        let values = self.values(1, 10);
        let info = self
            .log
            .append(&plain(&values))
            .expect("append after recovery");
        self.record_append(info.base_offset, &values);
    }
}

fn run(ops: &[Op], flush: FlushPolicy) {
    let mut world = World::new(flush);
    for op in ops {
        world.apply(op);
    }
    world.crash(0x5eed);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn power_loss_keeps_what_was_promised(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, FlushPolicy::Manual);
    }

    #[test]
    fn power_loss_with_flush_every_few_records(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops, FlushPolicy::EveryRecords(7));
    }
}

#[test]
fn the_image_is_a_real_directory() {
    let world = World::new(FlushPolicy::EveryAppend);
    assert!(Path::new(world.log.dir()).exists());
}

mod coordinator {
    //! The group coordinator's state in `__consumer_offsets` through power
    //! loss: compaction by snapshot may only purge history once the
    //! snapshot that replaces it is durable.

    use std::{path::Path, sync::Arc};

    use sluice::broker::{Broker, BrokerConfig, TopicConfig};
    use sluice::coordinator::{Coordinator, CoordinatorConfig, OffsetCommit, Tp};
    use sluice::storage::{CrashFs, FlushPolicy};

    fn open(dir: &Path) -> (Arc<CrashFs>, Arc<Broker>, Arc<Coordinator>) {
        let fs = CrashFs::new(dir).expect("fs");
        let mut config = BrokerConfig::new(dir);
        config.log.fs = fs.clone();
        config.log.flush = FlushPolicy::Manual;
        let broker = Broker::open(config).expect("broker");
        let coordinator = Coordinator::open(
            broker.clone(),
            CoordinatorConfig {
                offsets_partitions: 1,
                offsets_segment_bytes: 4096,
                snapshot_min_records: 50,
                ..CoordinatorConfig::default()
            },
        )
        .expect("coordinator");
        (fs, broker, coordinator)
    }

    fn commit(c: &Coordinator, group: &str, partition: i32, offset: i64) {
        let tp = Tp {
            topic: "t".into(),
            partition,
        };
        let offsets = vec![OffsetCommit {
            tp,
            offset,
            metadata: String::new(),
        }];
        c.commit(group, "", -1, offsets).expect("commit");
    }

    fn committed(c: &Coordinator, group: &str) -> Option<i64> {
        c.fetch_offsets(group, &[])
            .expect("fetch offsets")
            .first()
            .map(|(_, c)| c.offset)
    }

    #[test]
    fn a_durable_commit_survives_snapshots_and_purges_of_its_shard() {
        let root = tempfile::tempdir().expect("tempdir");
        let (fs, broker, c) = open(&root.path().join("live"));
        broker
            .create_topic("t", 2, TopicConfig::default())
            .expect("topic");
        commit(&c, "idle", 0, 42);
        broker.flush_all().expect("flush");
        // Another group's commits make the shard snapshot and purge the
        // segment that held the idle group's commit.
        for i in 0..600 {
            commit(&c, "busy", 1, i);
        }
        for seed in 0..24 {
            let dir = root.path().join(format!("crash-{seed}"));
            fs.crash_image(seed)
                .expect("image")
                .write_to(&dir)
                .expect("write");
            let (_fs, _broker, c) = open(&dir);
            assert_eq!(
                committed(&c, "idle"),
                Some(42),
                "seed {seed}: a commit acknowledged and flushed was lost"
            );
            let busy = committed(&c, "busy").expect("busy group survives");
            assert!((0..600).contains(&busy));
        }
    }
}

mod queues {
    //! Work-queue state in `__share_group_state` through power loss: an
    //! ACCEPT confirmed before a flush never comes back.

    use std::{collections::BTreeSet, path::Path, sync::Arc};

    use sluice::broker::{Acks, Broker, BrokerConfig, ProduceRequest, TopicConfig};
    use sluice::coordinator::queues::Queues;
    use sluice::storage::{system_clock, CrashFs, FlushPolicy};

    const JOBS: usize = 400;

    fn open(dir: &Path) -> (Arc<CrashFs>, Arc<Broker>, Arc<Queues>) {
        let fs = CrashFs::new(dir).expect("fs");
        let mut config = BrokerConfig::new(dir);
        config.log.fs = fs.clone();
        config.log.flush = FlushPolicy::Manual;
        let broker = Broker::open(config).expect("broker");
        let queues = Queues::open(broker.clone(), system_clock()).expect("queues");
        (fs, broker, queues)
    }

    /// Takes up to `n` tasks and accepts them; returns their offsets.
    fn accept(q: &Queues, member: &Arc<str>, n: u32) -> Vec<i64> {
        let got = q.acquire("g", member, n, usize::MAX).expect("acquire");
        let acks = crate::common::accept_all(&got);
        let out = q.ack("g", member, acks).expect("ack");
        assert_eq!(out.accepted.len(), got.len(), "{:?}", out.refused);
        got.iter().map(|d| d.record.offset).collect()
    }

    #[test]
    fn an_accept_confirmed_before_a_flush_never_comes_back() {
        let root = tempfile::tempdir().expect("tempdir");
        let (fs, broker, q) = open(&root.path().join("live"));
        broker
            .create_topic("jobs", 1, TopicConfig::default())
            .expect("topic");
        let records = crate::common::job_records(JOBS);
        let appended = broker
            .append(ProduceRequest {
                topic: "jobs".into(),
                partition: Some(0),
                records,
                acks: Acks::All,
                producer: None,
            })
            .expect("append")
            .durable_blocking();
        assert!(appended.failures.is_empty());
        let member = q.join("g", "jobs", "", 1000, None, false).expect("join");
        let durable: BTreeSet<i64> = accept(&q, &member, 150).into_iter().collect();
        broker.flush_all().expect("flush");
        // More work that no flush covers: it may or may not survive.
        accept(&q, &member, 100);
        q.acquire("g", &member, 50, usize::MAX)
            .expect("locked, never acked");
        for seed in 0..16 {
            let dir = root.path().join(format!("crash-{seed}"));
            fs.crash_image(seed)
                .expect("image")
                .write_to(&dir)
                .expect("write");
            let (_fs, _broker, q) = open(&dir);
            let member = q.join("g", "jobs", "", 1000, None, false).expect("join");
            let mut seen = BTreeSet::new();
            loop {
                let got = accept(&q, &member, 1000);
                if got.is_empty() {
                    break;
                }
                seen.extend(got);
            }
            assert!(
                seen.is_disjoint(&durable),
                "seed {seed}: flushed ACCEPTs came back: {:?}",
                seen.intersection(&durable).take(5).collect::<Vec<_>>()
            );
            // And nothing is lost: what was not accepted durably comes back.
            let missing = (0..JOBS as i64)
                .filter(|o| !durable.contains(o) && !seen.contains(o))
                .count();
            assert!(missing <= 100, "seed {seed}: {missing} tasks lost");
        }
    }
}
