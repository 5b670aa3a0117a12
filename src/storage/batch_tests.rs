//! Batch format tests: layout, checksums, cuts and structural damage.

use super::*;

#[test]
fn the_checksum_is_kafkas_crc32c() {
    // The CRC-32C check value (RFC 3720, Kafka's Crc32C tests).
    assert_eq!(checksum(b"123456789"), 0xE306_9283);
    let b = sample();
    let v = BatchView::parse(b.as_bytes()).expect("parse");
    assert_eq!(v.crc(), crc32c::crc32c(&b.as_bytes()[CRC_START..]));
}

fn sample() -> RecordBatch {
    let mut b = BatchBuilder::default();
    b.push(
        1_000,
        Some(b"k1"),
        Some(b"v1"),
        &[HeaderRef {
            key: b"h",
            value: Some(b"x"),
        }],
    )
    .expect("push");
    b.push(999, None, Some(b""), &[]).expect("push");
    b.push(
        1_005,
        Some(b""),
        None,
        &[HeaderRef {
            key: b"n",
            value: None,
        }],
    )
    .expect("push");
    b.build().expect("three records")
}

#[test]
fn built_batches_validate_and_decode() {
    let batch = sample();
    let v = batch.view();
    v.validate().expect("valid");
    assert_eq!(v.record_count(), 3);
    assert_eq!(v.max_timestamp(), 1_005);
    assert_eq!(v.first_timestamp(), 1_000);
    let recs: Vec<_> = v.records().collect::<Result<_, _>>().expect("decodes");
    assert_eq!(recs[0].key, Some(&b"k1"[..]));
    assert_eq!(
        recs[0].headers().collect::<Vec<_>>(),
        [HeaderRef {
            key: b"h",
            value: Some(b"x")
        }]
    );
    assert_eq!(recs[1].timestamp, 999);
    assert_eq!((recs[1].key, recs[1].value), (None, Some(&b""[..])));
    assert_eq!(recs[2].value, None);
    assert_eq!(
        recs[2].headers().next(),
        Some(HeaderRef {
            key: b"n",
            value: None
        })
    );
    assert_eq!(recs[2].offset, 2);
}

#[test]
fn record_size_predicts_push() {
    let mut b = BatchBuilder::default();
    for i in 0..50i64 {
        let value = vec![7u8; (i * 13) as usize];
        let headers = [HeaderRef {
            key: b"trace",
            value: Some(&value[..i as usize % 5]),
        }];
        let before = b.size_bytes();
        let predicted = b.record_size(i * 1000 - 7, Some(b"key"), Some(&value), &headers);
        b.push(i * 1000 - 7, Some(b"key"), Some(&value), &headers)
            .expect("push");
        assert_eq!(b.size_bytes() - before, predicted);
    }
}

#[test]
fn stamping_keeps_the_checksum_valid() {
    let mut bytes = sample().into_bytes();
    stamp_header(&mut bytes, 42, 7);
    let b = RecordBatch::from_bytes(bytes).expect("still valid");
    assert_eq!(
        (
            b.view().base_offset(),
            b.view().leader_epoch(),
            b.view().last_offset()
        ),
        (42, 7, 44)
    );
}

#[test]
fn every_damaged_byte_is_rejected() {
    let good = sample().into_bytes();
    // Bytes 0..17 (offset, length, epoch, magic) are outside the checksum;
    // length and magic are still checked, offset and epoch by the log.
    for pos in BATCH_LENGTH..good.len() {
        if (LEADER_EPOCH..MAGIC_AT).contains(&pos) {
            continue;
        }
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        assert!(
            RecordBatch::from_bytes(bad).is_err(),
            "flip at {pos} accepted"
        );
    }
    for len in 0..good.len() {
        assert!(
            RecordBatch::from_bytes(good[..len].to_vec()).is_err(),
            "cut at {len} accepted"
        );
    }
}

#[test]
fn rejects_structurally_bad_batches_with_valid_checksums() {
    let reseal = |mut b: Vec<u8>| {
        let crc = checksum(&b[CRC_START..]);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        b
    };
    let mut b = sample().into_bytes();
    b[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&5i32.to_be_bytes());
    assert!(matches!(
        RecordBatch::from_bytes(reseal(b)),
        Err(BatchError::CountMismatch { .. })
    ));
    let mut b = sample().into_bytes();
    b[ATTRIBUTES + 1] = 1;
    assert_eq!(
        RecordBatch::from_bytes(reseal(b)),
        Err(BatchError::UnsupportedCompression(1))
    );
    let mut b = sample().into_bytes();
    b[MAX_TIMESTAMP + 7] ^= 1;
    assert!(matches!(
        RecordBatch::from_bytes(reseal(b)),
        Err(BatchError::MaxTimestampMismatch { .. })
    ));
    assert!(BatchBuilder::default().build().is_none());
}
