//! Zig-zag variable-length integers, as Kafka's record format uses them.

/// Appends `v` as a zig-zag varint (at most 5 bytes).
pub fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_uvarint(buf, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Appends `v` as a zig-zag varlong (at most 10 bytes).
pub fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Encoded length of `v` as a zig-zag varint.
pub fn varint_len(v: i32) -> usize {
    uvarint_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

/// Encoded length of `v` as a zig-zag varlong.
pub fn varlong_len(v: i64) -> usize {
    uvarint_len(((v << 1) ^ (v >> 63)) as u64)
}

fn uvarint_len(v: u64) -> usize {
    // Each byte carries 7 bits; zero still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads an unsigned varint of at most `max_bytes` bytes from `buf[*pos..]`,
/// advancing `pos`. `None` if it is cut short or too long.
#[inline]
fn get_uvarint(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Option<u64> {
    // Most varints of a record (lengths, deltas, counts) are one byte.
    let b = *buf.get(*pos)?;
    if b < 0x80 {
        *pos += 1;
        return Some(u64::from(b));
    }
    get_uvarint_long(buf, pos, max_bytes)
}

fn get_uvarint_long(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Option<u64> {
    let mut result: u64 = 0;
    for i in 0..max_bytes {
        let b = *buf.get(*pos + i)?;
        result |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *pos += i + 1;
            return Some(result);
        }
    }
    None
}

/// Reads a zig-zag varint; `None` if malformed or out of `i32` range.
#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let u = get_uvarint(buf, pos, 5)?;
    let u = u32::try_from(u).ok()?;
    Some(((u >> 1) as i32) ^ -((u & 1) as i32))
}

/// Reads a zig-zag varlong; `None` if malformed.
#[inline]
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let u = get_uvarint(buf, pos, 10)?;
    Some(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            prop_assert_eq!(buf.len(), varint_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varint(&buf, &mut pos), Some(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&buf, &mut pos), Some(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn truncated_varints_are_rejected(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&buf[..buf.len() - 1], &mut pos), None);
        }
    }

    #[test]
    fn known_encodings() {
        // Values from Kafka's ByteUtilsTest.
        let mut buf = Vec::new();
        put_varint(&mut buf, -1);
        assert_eq!(buf, [0x01]);
        buf.clear();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xd8, 0x04]);
        let mut pos = 0;
        assert_eq!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos), None);
    }
}
