//! `sluice bench soak`: an application's view of a cluster under faults.
//! One idempotent acks=ALL producer sends numbered records at a steady
//! rate while one consumer-group member reads them and commits after every
//! poll, until stopped (SIGTERM, Ctrl-C or `--duration`). Then it stops
//! producing, reads until every acknowledged record has arrived, and
//! checks that each arrived exactly once and that the client library
//! surfaced no error to the application. The report is one JSON object;
//! the exit status is non-zero when a check fails.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::Args;
use serde_json::json;

use super::Conn;
use crate::client::{pb, Client, ClientError, ConsumerConfig, OffsetReset, ProducerConfig};

/// Settings of `bench soak`.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Topic (created with `--partitions` and `--replication-factor` if
    /// missing).
    pub topic: String,
    /// Consumer group.
    #[arg(long, default_value = "soak")]
    pub group: String,
    /// Records per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Bytes of each record's value (at least the number it carries).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Stop by itself after this many seconds (0: at SIGTERM or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// How long to wait, once stopped, for the last records to arrive.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout: u64,
    /// Partitions of a topic this creates.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Replication factor of a topic this creates.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: i32,
    #[command(flatten)]
    pub conn: Conn,
}

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    /// Deliveries per record number.
    counts: HashMap<u64, u32>,
    /// Errors `poll` or `commit` returned to the application.
    errors: Vec<String>,
}

impl Seen {
    fn distinct(&self) -> u64 {
        self.counts.len() as u64
    }

    /// Records an error the application saw, and says so at once on stderr
    /// so that a run's log places it in time.
    fn error(&mut self, e: String) {
        eprintln!("soak: error: {e}");
        self.errors.push(e);
    }
}

/// The record number a value carries (`<n> <padding>`).
fn number(value: &[u8]) -> Option<u64> {
    let end = value.iter().position(|b| *b == b' ').unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()?.parse().ok()
}

async fn ensure_topic(client: &Client, a: &SoakArgs) -> Result<(), ClientError> {
    match client.partition_count(&a.topic).await {
        Ok(_) => Ok(()),
        Err(ClientError::Status(s)) if s.code() == tonic::Code::NotFound => {
            match client
                .create_replicated_topic(
                    &a.topic,
                    a.partitions,
                    Some(a.replication_factor),
                    Default::default(),
                )
                .await
            {
                Ok(_) => Ok(()),
                Err(ClientError::Status(s)) if s.code() == tonic::Code::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Resolves at SIGTERM or Ctrl-C, or after `duration` if set.
async fn stop_signal(duration: Option<Duration>) {
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = timer => {}
                }
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = timer => {}
        }
    }
    #[cfg(not(unix))]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = timer => {}
    }
}

/// Runs the soak and prints its report.
pub async fn soak(a: SoakArgs) -> Result<(), ClientError> {
    if a.rate == 0 {
        return Err(ClientError::Status(tonic::Status::invalid_argument(
            "--rate must be at least 1 record per second",
        )));
    }
    let client = a.conn.connect().await?;
    ensure_topic(&client, &a).await?;
    let started = Instant::now();

    // The consumer: commit after every poll, so a member that keeps its
    // partitions never reads a record twice.
    let mut config = ConsumerConfig::new(&a.group, [a.topic.clone()]);
    config.auto_offset_reset = OffsetReset::Earliest;
    config.auto_commit_interval = None;
    let mut consumer = client.consumer(config);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(None::<u64>);
    let drain = Duration::from_secs(a.drain_timeout);
    let reader = tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut drain_deadline: Option<Instant> = None;
        let mut last_report = Instant::now();
        loop {
            let target = *stop_rx.borrow_and_update();
            if let Some(target) = target {
                let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + drain);
                if seen.distinct() >= target || Instant::now() >= deadline {
                    break;
                }
            }
            match consumer.poll(Duration::from_millis(500)).await {
                Ok(records) => {
                    for r in &records {
                        let value = r.record.value.as_deref().unwrap_or_default();
                        match number(value) {
                            Some(n) => *seen.counts.entry(n).or_default() += 1,
                            None => seen.error(format!(
                                "a record at {}/{} offset {} carries no number",
                                r.topic, r.partition, r.record.offset
                            )),
                        }
                    }
                    if !records.is_empty() {
                        if let Err(e) = consumer.commit().await {
                            seen.error(format!("commit: {e}"));
                        }
                    }
                }
                Err(e) => {
                    seen.error(format!("poll: {e}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                eprintln!(
                    "soak: consumed {} distinct records, {} errors",
                    seen.distinct(),
                    seen.errors.len()
                );
            }
        }
        if let Err(e) = consumer.close().await {
            seen.error(format!("close: {e}"));
        }
        seen
    });

    // The producer: numbered records at a steady rate.
    let producer = client.producer(
        &a.topic,
        ProducerConfig {
            acks: pb::Acks::All,
            idempotent: true,
            ..Default::default()
        },
    );
    let stop = stop_signal((a.duration > 0).then(|| Duration::from_secs(a.duration)));
    tokio::pin!(stop);
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    let mut ticker = tokio::time::interval(interval.max(Duration::from_micros(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_tick = ((a.rate as f64 * ticker.period().as_secs_f64()).round() as u64).max(1);
    let mut sent: u64 = 0;
    let mut send_errors = Vec::new();
    'produce: loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                for _ in 0..per_tick {
                    let mut value = format!("{sent} ");
                    if value.len() < a.record_size {
                        value.extend(std::iter::repeat_n('x', a.record_size - value.len()));
                    }
                    let key = format!("k{}", sent % 64);
                    let record = pb::ProduceRecord {
                        key: Some(Bytes::from(key)),
                        value: Some(Bytes::from(value)),
                        ..Default::default()
                    };
                    if let Err(e) = producer.send(record).await {
                        send_errors.push(format!("send: {e}"));
                        break 'produce;
                    }
                    sent += 1;
                }
            }
        }
    }
    let stopped_at = started.elapsed();
    eprintln!("soak: stopping after {sent} records; waiting for acknowledgements");
    let stats = producer.close().await;
    let (acked, failed, retries, duplicates, first_error) = match &stats {
        Ok(s) => (
            s.acked,
            s.failed,
            s.retries,
            s.duplicates,
            s.first_error.clone(),
        ),
        Err(e) => (0, sent, 0, 0, Some(e.to_string())),
    };
    // Only records the producer confirmed are owed; with no failures
    // that is every record sent.
    let _ = stop_tx.send(Some(acked));
    let seen = reader
        .await
        .map_err(|e| ClientError::Closed(format!("consumer task failed: {e}")))?;
    let owed = if failed == 0 { sent } else { acked };
    let missing: Vec<u64> = (0..owed).filter(|n| !seen.counts.contains_key(n)).collect();
    let duplicated: Vec<(u64, u32)> = {
        let mut d: Vec<(u64, u32)> = seen
            .counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(n, c)| (*n, *c))
            .collect();
        d.sort();
        d
    };
    let unexpected = seen.counts.keys().filter(|n| **n >= sent).count();
    let mut errors: Vec<String> = send_errors;
    if let Some(e) = first_error.filter(|_| failed > 0) {
        errors.push(format!("{failed} records not acknowledged: {e}"));
    }
    errors.extend(seen.errors.iter().cloned());
    let ok = missing.is_empty()
        && duplicated.is_empty()
        && unexpected == 0
        && errors.is_empty()
        && failed == 0
        && acked == sent;
    let report = json!({
        "ok": ok,
        "seconds": stopped_at.as_secs_f64(),
        "sent": sent,
        "acknowledged": acked,
        "failed": failed,
        "producer_retries": retries,
        "producer_duplicates_suppressed": duplicates,
        "consumed_distinct": seen.distinct(),
        "consumed_total": seen.counts.values().map(|c| u64::from(*c)).sum::<u64>(),
        "missing": missing.len(),
        "missing_first": missing.iter().take(10).collect::<Vec<_>>(),
        "duplicated": duplicated.len(),
        "duplicated_first": duplicated.iter().take(10).collect::<Vec<_>>(),
        "unexpected": unexpected,
        "errors": errors.len(),
        "errors_first": errors.iter().take(10).collect::<Vec<_>>(),
    });
    println!("{report}");
    if ok {
        Ok(())
    } else {
        Err(ClientError::Status(tonic::Status::data_loss(format!(
            "soak check failed: {} missing, {} duplicated, {} errors surfaced",
            missing.len(),
            duplicated.len(),
            errors.len()
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn a_value_carries_its_number_before_the_padding() {
        assert_eq!(number(b"42 xxxx"), Some(42));
        assert_eq!(number(b"7"), Some(7));
        assert_eq!(number(b"x 1"), None);
    }
}
