//! Framing: reading size-prefixed requests, and writing responses whose
//! record batches are sent from the log's mapped segments without being
//! copied.
//!
//! `kafka-protocol` encodes a message into a [`ByteBufMut`], writing a
//! `bytes` field (a fetch's records) with `put_slice`. [`Frame`] is such a
//! buffer that recognises the record data it was told about, by address,
//! and keeps a reference to it in place of a copy: the response goes out
//! as a list of chunks, the encoded fields between shared record slices.

use std::io::IoSlice;
use std::ops::Range;

use bytes::{buf::UninitSlice, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Below this size a record slice is copied: a chunk costs more than a
/// small copy.
const SHARE_MIN_BYTES: usize = 512;

/// A response being encoded: encoded bytes, with record data kept by
/// reference.
#[derive(Default)]
pub struct Frame {
    /// Finished chunks, in order.
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`.
    sealed: usize,
    /// The chunk being written.
    current: BytesMut,
    /// Record data to send by reference when it is written whole.
    shared: Vec<Bytes>,
}

impl Frame {
    /// An empty frame with room reserved for the size prefix.
    pub fn new() -> Self {
        let mut current = BytesMut::with_capacity(4096);
        current.put_i32(0);
        Self {
            current,
            ..Self::default()
        }
    }

    /// Marks `data` as record data to be sent without copying when the
    /// encoder writes it.
    pub fn share(&mut self, data: &Bytes) {
        if data.len() >= SHARE_MIN_BYTES {
            self.shared.push(data.clone());
        }
    }

    fn seal(&mut self) {
        if !self.current.is_empty() {
            let c = self.current.split().freeze();
            self.sealed += c.len();
            self.chunks.push(c);
        }
    }

    /// Moves every chunk back into `current` (only if an encoder seeks
    /// back past a shared slice, which message encoding never does).
    fn flatten(&mut self) {
        if self.chunks.is_empty() {
            return;
        }
        let mut all = BytesMut::with_capacity(self.sealed + self.current.len());
        for c in self.chunks.drain(..) {
            all.extend_from_slice(&c);
        }
        all.extend_from_slice(&self.current);
        self.current = all;
        self.sealed = 0;
    }

    /// The chunks to send, with the size prefix filled in.
    pub fn finish(mut self) -> Vec<Bytes> {
        let total = (self.len() - 4) as i32;
        if self.chunks.is_empty() {
            self.current[..4].copy_from_slice(&total.to_be_bytes());
            self.seal();
            return self.chunks;
        }
        self.seal();
        // The first chunk is the header up to the first shared slice:
        // small, so patching a copy of it is cheap.
        if let Some(first) = self.chunks.first_mut() {
            let mut head = BytesMut::from(&first[..]);
            head[..4].copy_from_slice(&total.to_be_bytes());
            *first = head.freeze();
        }
        self.chunks
    }

    /// Bytes of the frame so far, the size prefix included.
    pub fn len(&self) -> usize {
        self.sealed + self.current.len()
    }

    /// Never true: the size prefix is always there.
    pub fn is_empty(&self) -> bool {
        false
    }
}

// SAFETY: every method forwards to `BytesMut`'s implementation for the
// current chunk, which upholds `BufMut`'s contract; `put_slice` only adds
// whole, initialised chunks besides it.
unsafe impl BufMut for Frame {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut()`,
        // which is the current chunk's.
        unsafe { self.current.advance_mut(cnt) }
    }
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.current.chunk_mut()
    }
    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SHARE_MIN_BYTES {
            let found = self
                .shared
                .iter()
                .find(|s| s.as_ptr() == src.as_ptr() && s.len() == src.len())
                .cloned();
            if let Some(s) = found {
                self.seal();
                self.sealed += s.len();
                self.chunks.push(s);
                return;
            }
        }
        self.current.extend_from_slice(src);
    }
}

impl ByteBufMut for Frame {
    fn offset(&self) -> usize {
        self.len()
    }
    fn seek(&mut self, offset: usize) {
        if offset < self.sealed {
            self.flatten();
        }
        self.current.resize(offset - self.sealed, 0);
    }
    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        if r.start < self.sealed {
            self.flatten();
        }
        let base = self.sealed;
        &mut self.current[r.start - base..r.end - base]
    }
}

/// Writes `chunks` in order, several per system call.
pub async fn write_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &[Bytes],
) -> std::io::Result<()> {
    let mut at = 0usize; // chunk index
    let mut skip = 0usize; // bytes of chunks[at] already written
    while at < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[at..]
            .iter()
            .enumerate()
            .take(64)
            .map(|(i, c)| IoSlice::new(if i == 0 { &c[skip..] } else { &c[..] }))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while at < chunks.len() && n > 0 {
            let left = chunks[at].len() - skip;
            if n >= left {
                n -= left;
                at += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    w.flush().await
}

/// Why a connection stops reading.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between requests.
    Closed,
    /// A size prefix out of range.
    BadSize(i32),
    /// The socket failed, or closed inside a request.
    Io(std::io::Error),
}

/// Reads one size-prefixed request of at most `max` bytes.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Bytes, ReadError> {
    let mut size = [0u8; 4];
    match r.read_exact(&mut size).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ReadError::Closed),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let size = i32::from_be_bytes(size);
    // The smallest request header: key, version, correlation id, client id.
    if size < 10 || size as usize > max {
        return Err(ReadError::BadSize(size));
    }
    let mut buf = BytesMut::zeroed(size as usize);
    r.read_exact(&mut buf).await.map_err(ReadError::Io)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_slices_are_kept_by_reference_and_the_rest_encoded() {
        let records = Bytes::from(vec![7u8; 4096]);
        let mut f = Frame::new();
        f.share(&records);
        f.put_i32(42);
        f.put_slice(&records);
        f.put_i16(9);
        f.put_slice(&[1, 2, 3]);
        let chunks = f.finish();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[1].as_ptr(), records.as_ptr(), "records were copied");
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&all[..4], &((all.len() - 4) as i32).to_be_bytes());
        assert_eq!(&all[4..8], &42i32.to_be_bytes());
        assert_eq!(&all[8..8 + 4096], &records[..]);
        assert_eq!(&all[8 + 4096..], &[0, 9, 1, 2, 3]);
    }

    #[test]
    fn seeking_back_over_a_shared_slice_still_encodes_correctly() {
        let records = Bytes::from(vec![1u8; 1024]);
        let mut f = Frame::new();
        f.share(&records);
        f.put_i32(5);
        f.put_slice(&records);
        let at = f.offset();
        f.put_i32(0);
        f.range(4..8).copy_from_slice(&6i32.to_be_bytes());
        f.range(at..at + 4).copy_from_slice(&7i32.to_be_bytes());
        let all: Vec<u8> = f.finish().iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(&all[4..8], &6i32.to_be_bytes());
        assert_eq!(&all[at..at + 4], &7i32.to_be_bytes());
        assert_eq!(all.len(), 4 + 4 + 1024 + 4);
    }

    #[tokio::test]
    async fn chunks_are_written_in_order() {
        let chunks: Vec<Bytes> = (0..200u8).map(|i| Bytes::from(vec![i; 10])).collect();
        let mut out = Vec::new();
        write_chunks(&mut out, &chunks).await.expect("write");
        let want: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(out, want);
    }
}
