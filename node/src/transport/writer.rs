//! The buffered writer both transports' sinks are built on: bytes are queued in one buffer and
//! written with one syscall per batch (or earlier, past a high-water mark).

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// An output buffer this small is always kept between batches. A larger one (grown by a burst)
/// is kept only while batches stay large: it is released after a batch of at most this much
/// (traffic is light again, the buffer is not earning its keep), or when it has grown past twice
/// the high-water mark. So a connection under load does not reallocate per batch, and one that
/// has quietened down holds little.
const KEEP: usize = 2 * 1024;

/// A buffer that outgrows its first frame grows to this at once, so a burst does not reallocate
/// and copy it at every doubling from one frame's size (it is released again after a small
/// batch, see [`KEEP`]).
const START: usize = 8 * 1024;

/// The writing half of a connection and its output buffer.
pub struct Writer<W> {
    io: W,
    out: BytesMut,
    /// Queued bytes past which [`Writer::queue`] asks for a flush before the batch's end.
    high_water: usize,
    /// A write that makes no progress for this long fails (`write-timeout`).
    timeout: Option<Duration>,
}

impl<W: AsyncWrite + Unpin + Send> Writer<W> {
    pub fn new(io: W, high_water: usize) -> Writer<W> {
        Writer { io, out: BytesMut::new(), high_water, timeout: None }
    }

    /// Fails a flush whose socket takes no byte for `timeout` (a peer that stopped reading).
    pub fn with_write_timeout(mut self, timeout: Option<Duration>) -> Writer<W> {
        self.timeout = timeout;
        self
    }

    /// The output buffer, for small additions (heart-beats, control frames) written at the next
    /// flush.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Queues `parts` back to back (a frame). True once the queue has reached the high-water
    /// mark: the caller flushes before queueing more.
    pub fn queue(&mut self, parts: [&[u8]; 3]) -> bool {
        let needed = self.out.len() + parts.iter().map(|part| part.len()).sum::<usize>();
        if needed > self.out.capacity() {
            // A second frame in the batch: go straight to `START` rather than double from one
            // frame's size.
            let target = if self.out.is_empty() { needed } else { needed.max(START) };
            self.out.reserve(target - self.out.len());
        }
        for part in parts {
            self.out.extend_from_slice(part);
        }
        self.out.len() >= self.high_water
    }

    /// Makes room for `bytes` more (at most up to the high-water mark, where a flush comes).
    pub fn reserve(&mut self, bytes: usize) {
        let room = bytes.min(self.high_water.saturating_sub(self.out.len()));
        self.out.reserve(room);
    }

    /// Writes everything queued. Cancellation-safe: bytes leave the buffer as they are written,
    /// so a flush interrupted (a slow consumer cut off mid-write) never writes the same bytes
    /// twice, and the next flush goes on where it stopped.
    pub async fn flush(&mut self) -> io::Result<()> {
        let mut written = 0;
        while !self.out.is_empty() {
            let write = self.io.write(&self.out);
            let n = match self.timeout {
                None => write.await?,
                Some(limit) => tokio::time::timeout(limit, write).await.map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer took no byte for {limit:?} (write-timeout)"),
                    )
                })??,
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out.advance(n);
            written += n;
        }
        // The buffer is empty: `try_reclaim(n)` tells whether its allocation holds n bytes.
        let oversized = 2 * self.high_water + 1;
        if self.out.try_reclaim(KEEP + 1) && (written <= KEEP || self.out.try_reclaim(oversized)) {
            self.out = BytesMut::new();
        }
        self.io.flush().await
    }

    /// Flushes, then shuts the writing direction down.
    pub async fn close(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the (empty) buffer's allocation holds `n` bytes.
    fn holds<W>(writer: &mut Writer<W>, n: usize) -> bool {
        writer.out.try_reclaim(n)
    }

    #[tokio::test]
    async fn a_burst_buffer_is_kept_while_batches_are_large_then_released() {
        let mut writer = Writer::new(Vec::new(), 64 * 1024);
        writer.queue([b"", &[b'a'; 100], b""]);
        writer.flush().await.unwrap();
        assert!(holds(&mut writer, 100), "a small buffer is kept");
        writer.queue([&[b'b'; 5_000], b"", &[b'c'; 5_000]]);
        assert_eq!(writer.io.len(), 100, "below the high-water mark nothing is written yet");
        writer.flush().await.unwrap();
        assert_eq!(writer.io.len(), 10_100);
        assert!(holds(&mut writer, 10_000), "kept after a large batch");
        writer.queue([&[b'd'; 8_000], b"", b""]);
        writer.flush().await.unwrap();
        assert!(holds(&mut writer, 10_000), "kept while batches are large");
        writer.queue([b"small", b"", b""]);
        writer.flush().await.unwrap();
        assert!(!holds(&mut writer, KEEP + 1), "released after a small batch");
        assert_eq!(writer.io.len(), 18_105);
    }

    #[tokio::test]
    async fn a_buffer_that_outgrows_one_frame_goes_straight_to_its_start_size() {
        let mut writer = Writer::new(Vec::new(), 64 * 1024);
        writer.queue([&[b'a'; 300], b"", b""]);
        assert!(writer.out.capacity() < 1024, "one frame: allocated for that frame");
        writer.queue([&[b'b'; 300], b"", b""]);
        assert!(writer.out.capacity() >= START, "a second frame: {} bytes", writer.out.capacity());
    }

    #[tokio::test]
    async fn a_buffer_past_twice_the_high_water_mark_is_released() {
        let mut writer = Writer::new(Vec::new(), 4096);
        writer.buffer().extend_from_slice(&[b'a'; 10_000]);
        writer.flush().await.unwrap();
        assert!(!holds(&mut writer, KEEP + 1));
    }

    #[tokio::test]
    async fn past_the_high_water_mark_queue_asks_for_a_flush() {
        let mut writer = Writer::new(Vec::new(), 1000);
        assert!(!writer.queue([b"a", &[b'b'; 997], b"c"]));
        assert!(writer.queue([b"", b"d", b""]), "1,000 bytes queued: flush");
        assert!(writer.io.is_empty(), "queueing never writes");
        writer.flush().await.unwrap();
        assert_eq!(writer.io.len(), 1000);
        assert!(writer.out.is_empty());
    }

    #[test]
    fn a_batch_is_reserved_up_to_the_high_water_mark() {
        let mut writer = Writer::new(Vec::new(), 64 * 1024);
        writer.reserve(20_000);
        assert!(writer.out.capacity() >= 20_000);
        let allocated = writer.out.capacity();
        for _ in 0..50 {
            writer.queue([&[b'x'; 400], b"", b""]);
        }
        assert_eq!(writer.out.capacity(), allocated, "50 frames of 400 bytes fit without growing");
        let mut writer = Writer::new(Vec::new(), 4096);
        writer.reserve(1 << 20);
        assert!(writer.out.capacity() < 8192, "no more than the high-water mark: {}", writer.out.capacity());
    }
}
