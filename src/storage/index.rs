//! Sparse offset and time indexes of a segment.
//!
//! Offset index entry (8 bytes, big-endian): offset relative to the segment's
//! base (u32), byte position of that batch in the data file (u32).
//!
//! Time index entry (12 bytes): timestamp (i64), relative offset (u32). An
//! entry `(t, r)` promises that every record before relative offset `r` has a
//! timestamp of at most `t`; entries rise strictly in both fields. The last
//! entry of a sealed segment covers the whole segment, so its timestamp is
//! the segment's largest.
//!
//! Entries are added every `index_interval_bytes` of data, always for a batch
//! after the first (position > 0, relative offset > 0); a zero entry
//! therefore marks the end of the entries in a preallocated file.

/// Bytes of one offset index entry.
pub const OFFSET_ENTRY_LEN: usize = 8;
/// Bytes of one time index entry.
pub const TIME_ENTRY_LEN: usize = 12;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Encodes an offset index entry.
pub fn offset_entry(rel_offset: u32, position: u32) -> [u8; OFFSET_ENTRY_LEN] {
    let mut e = [0u8; OFFSET_ENTRY_LEN];
    e[..4].copy_from_slice(&rel_offset.to_be_bytes());
    e[4..].copy_from_slice(&position.to_be_bytes());
    e
}

/// Encodes a time index entry.
pub fn time_entry(timestamp: i64, rel_offset: u32) -> [u8; TIME_ENTRY_LEN] {
    let mut e = [0u8; TIME_ENTRY_LEN];
    e[..8].copy_from_slice(&timestamp.to_be_bytes());
    e[8..].copy_from_slice(&rel_offset.to_be_bytes());
    e
}

/// The `i`th offset index entry: (relative offset, position).
pub fn offset_entry_at(index: &[u8], i: usize) -> (u32, u32) {
    let at = i * OFFSET_ENTRY_LEN;
    (u32_at(index, at), u32_at(index, at + 4))
}

/// The `i`th time index entry: (timestamp, relative offset).
pub fn time_entry_at(index: &[u8], i: usize) -> (i64, u32) {
    let at = i * TIME_ENTRY_LEN;
    (i64_at(index, at), u32_at(index, at + 8))
}

/// Position of the last indexed batch at or before `rel_offset`; 0 (the
/// segment start) when no entry is that low.
pub fn lookup_position(index: &[u8], rel_offset: u32) -> u32 {
    let n = index.len() / OFFSET_ENTRY_LEN;
    // First entry with a relative offset above the target.
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if offset_entry_at(index, mid).0 <= rel_offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        0
    } else {
        offset_entry_at(index, lo - 1).1
    }
}

/// Relative offset from which to scan for the first record with a timestamp
/// of at least `timestamp`: every record before it is older. 0 when no entry
/// says so.
pub fn lookup_time(index: &[u8], timestamp: i64) -> u32 {
    let n = index.len() / TIME_ENTRY_LEN;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if time_entry_at(index, mid).0 < timestamp {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        0
    } else {
        time_entry_at(index, lo - 1).1
    }
}

/// Checks a segment's indexes against its data: whole entries that rise
/// strictly, point inside the data (`data_len` bytes) and below `span`
/// offsets (`None`: not known yet). Returns the last time entry.
fn entries_sane(
    offsets: &[u8],
    times: &[u8],
    data_len: u64,
    span: Option<u64>,
) -> Option<Option<(i64, u32)>> {
    if !offsets.len().is_multiple_of(OFFSET_ENTRY_LEN)
        || !times.len().is_multiple_of(TIME_ENTRY_LEN)
    {
        return None;
    }
    let below_span = |r: u32, inclusive: bool| {
        span.is_none_or(|s| {
            if inclusive {
                u64::from(r) <= s
            } else {
                u64::from(r) < s
            }
        })
    };
    let mut prev = (0u32, 0u32);
    for i in 0..offsets.len() / OFFSET_ENTRY_LEN {
        let (r, p) = offset_entry_at(offsets, i);
        if r <= prev.0 || p <= prev.1 || u64::from(p) >= data_len || !below_span(r, false) {
            return None;
        }
        prev = (r, p);
    }
    let mut prev: Option<(i64, u32)> = None;
    for i in 0..times.len() / TIME_ENTRY_LEN {
        let (t, r) = time_entry_at(times, i);
        if r == 0 || !below_span(r, true) || prev.is_some_and(|(pt, pr)| t <= pt || r <= pr) {
            return None;
        }
        prev = Some((t, r));
    }
    Some(prev)
}

/// Checks an active (or cleanly closed) segment's indexes: entries rise
/// strictly and point inside its `data_len` bytes of data.
pub fn indexes_sane(offsets: &[u8], times: &[u8], data_len: u64) -> bool {
    entries_sane(offsets, times, data_len, None).is_some()
}

/// Checks a sealed segment's indexes against the segment: entries rise
/// strictly and point inside it. `data_len` is the data file's length and
/// `span` the segment's number of offsets.
pub fn indexes_consistent(offsets: &[u8], times: &[u8], data_len: u64, span: u64) -> bool {
    match entries_sane(offsets, times, data_len, Some(span)) {
        // A non-empty sealed segment ends with an entry covering all of it.
        Some(last) => span == 0 || last.is_some_and(|(_, r)| u64::from(r) == span),
        None => false,
    }
}

/// Decides where index entries go. One instance follows a segment's batches
/// in order, whether they are being appended or rescanned in recovery, so
/// both paths build identical indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexBuilder {
    interval: u64,
    /// Data bytes since the last offset index entry (or the segment start).
    bytes_since_entry: u64,
    /// Largest timestamp of the batches seen so far.
    max_timestamp: Option<i64>,
    /// Timestamp of the last time index entry.
    last_time_entry: Option<i64>,
}

/// Entries to add for one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlannedEntries {
    /// Offset index entry, if due.
    pub offset: Option<[u8; OFFSET_ENTRY_LEN]>,
    /// Time index entry, if due.
    pub time: Option<[u8; TIME_ENTRY_LEN]>,
}

impl IndexBuilder {
    /// A builder for an empty segment.
    pub fn new(interval: u64) -> Self {
        Self {
            interval,
            bytes_since_entry: 0,
            max_timestamp: None,
            last_time_entry: None,
        }
    }

    /// The builder state after a segment of `data_len` bytes whose last
    /// offset entry is at `last_entry_pos` and whose last time entry (which,
    /// in a sealed or cleanly closed segment, covers the whole segment) has
    /// timestamp `last_time`.
    pub fn resume(
        interval: u64,
        data_len: u64,
        last_entry_pos: Option<u32>,
        last_time: Option<i64>,
    ) -> Self {
        Self {
            interval,
            bytes_since_entry: data_len - last_entry_pos.map_or(0, u64::from),
            max_timestamp: last_time,
            last_time_entry: last_time,
        }
    }

    /// Largest timestamp seen so far.
    pub fn max_timestamp(&self) -> Option<i64> {
        self.max_timestamp
    }

    /// Entries due for a batch at `position` with relative offset
    /// `rel_offset`. Call [`IndexBuilder::commit`] once they are written.
    pub fn plan(&self, position: u32, rel_offset: u32) -> PlannedEntries {
        if position == 0 || self.bytes_since_entry < self.interval {
            return PlannedEntries::default();
        }
        let time = match (self.max_timestamp, self.last_time_entry) {
            (Some(max), last) if last.is_none_or(|l| max > l) => Some(time_entry(max, rel_offset)),
            _ => None,
        };
        PlannedEntries {
            offset: Some(offset_entry(rel_offset, position)),
            time,
        }
    }

    /// Records a batch of `len` bytes with max timestamp `max_timestamp`,
    /// after the entries `plan` returned for it were written.
    pub fn commit(&mut self, planned: &PlannedEntries, len: u64, max_timestamp: i64) {
        if planned.offset.is_some() {
            self.bytes_since_entry = 0;
        }
        if let Some(t) = planned.time {
            self.last_time_entry = Some(time_entry_at(&t, 0).0);
        }
        self.bytes_since_entry += len;
        self.max_timestamp = Some(
            self.max_timestamp
                .map_or(max_timestamp, |m| m.max(max_timestamp)),
        );
    }

    /// The entry that seals a segment of `span` offsets: it covers the whole
    /// segment, so its timestamp is the segment's largest. `None` when the
    /// last entry already says as much, or the segment is empty.
    pub fn final_time_entry(&self, span: u32) -> Option<[u8; TIME_ENTRY_LEN]> {
        match (self.max_timestamp, self.last_time_entry) {
            (Some(max), last) if span > 0 && last.is_none_or(|l| max > l) => {
                Some(time_entry(max, span))
            }
            _ => None,
        }
    }

    /// Records that the sealing entry was written.
    pub fn commit_final(&mut self, entry: &[u8; TIME_ENTRY_LEN]) {
        self.last_time_entry = Some(time_entry_at(entry, 0).0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(entries: &[(u32, u32)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(r, p)| offset_entry(r, p))
            .collect()
    }

    #[test]
    fn position_lookup_finds_the_last_entry_at_or_below() {
        let idx = offsets(&[(10, 100), (20, 200), (30, 300)]);
        assert_eq!(lookup_position(&idx, 0), 0);
        assert_eq!(lookup_position(&idx, 9), 0);
        assert_eq!(lookup_position(&idx, 10), 100);
        assert_eq!(lookup_position(&idx, 29), 200);
        assert_eq!(lookup_position(&idx, u32::MAX), 300);
        assert_eq!(lookup_position(&[], 5), 0);
    }

    #[test]
    fn time_lookup_skips_only_older_records() {
        let idx: Vec<u8> = [(100i64, 5u32), (200, 9), (300, 14)]
            .iter()
            .flat_map(|&(t, r)| time_entry(t, r))
            .collect();
        assert_eq!(lookup_time(&idx, 50), 0);
        assert_eq!(lookup_time(&idx, 100), 0);
        assert_eq!(lookup_time(&idx, 101), 5);
        assert_eq!(lookup_time(&idx, 300), 9);
        assert_eq!(lookup_time(&idx, 301), 14);
    }

    #[test]
    fn builder_indexes_every_interval_and_seals() {
        let mut b = IndexBuilder::new(100);
        let mut got = Vec::new();
        let mut pos = 0u32;
        for (i, ts) in [5i64, 3, 9, 9, 12].into_iter().enumerate() {
            let p = b.plan(pos, i as u32);
            got.push(p);
            b.commit(&p, 60, ts);
            pos += 60;
        }
        assert_eq!(got[0], PlannedEntries::default());
        assert_eq!(got[1], PlannedEntries::default());
        assert_eq!(got[2].offset, Some(offset_entry(2, 120)));
        assert_eq!(got[2].time, Some(time_entry(5, 2)));
        assert_eq!(got[4].offset, Some(offset_entry(4, 240)));
        assert_eq!(got[4].time, Some(time_entry(9, 4)));
        assert_eq!(b.final_time_entry(5), Some(time_entry(12, 5)));
        let resumed = IndexBuilder::resume(100, 300, Some(240), Some(9));
        assert_eq!(resumed.bytes_since_entry, b.bytes_since_entry);
    }

    #[test]
    fn consistency_check_catches_damage() {
        let offs = offsets(&[(3, 100), (7, 250)]);
        let times: Vec<u8> = [(10i64, 3u32), (20, 9)]
            .iter()
            .flat_map(|&(t, r)| time_entry(t, r))
            .collect();
        assert!(indexes_consistent(&offs, &times, 400, 9));
        assert!(
            !indexes_consistent(&offs, &times, 200, 9),
            "position past data"
        );
        assert!(
            !indexes_consistent(&offsets(&[(7, 250), (3, 100)]), &times, 400, 9),
            "not rising"
        );
        assert!(
            !indexes_consistent(&offs, &times[..12], 400, 9),
            "no sealing entry"
        );
        assert!(
            !indexes_consistent(&offs[..5], &times, 400, 9),
            "torn entry"
        );
    }
}
