//! Moving PDUs over a TCP stream: a reader that frames incoming bytes with the codec, and a
//! writer task that sends header, data and trailer of each PDU with vectored writes, batching
//! whatever is queued.

use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::iscsi::pdu::{EncodedPdu, Pdu, PduCodec, PduError, BHS_LEN};

/// What the reader produced.
#[derive(Debug)]
pub enum Incoming {
    /// A decoded PDU.
    Pdu(Pdu),
    /// A PDU the codec consumed but could not decode (answer with a Reject).
    Bad(PduError),
    /// A data segment above our MaxRecvDataSegmentLength, with the header that announced it;
    /// the stream cannot be trusted afterwards.
    TooLong([u8; BHS_LEN]),
    /// The stream is unusable (closed, I/O error, header digest error).
    Closed(Option<PduError>),
}

/// Reads PDUs from `R` with a codec whose settings can change between PDUs (login).
#[derive(Debug)]
pub struct PduReader<R> {
    io: R,
    buf: BytesMut,
    /// The framing settings (digests, receive limit).
    pub codec: PduCodec,
}

impl<R: AsyncRead + Unpin> PduReader<R> {
    /// A reader with login-phase codec settings.
    pub fn new(io: R) -> Self {
        PduReader {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            codec: PduCodec::new(),
        }
    }

    /// The next PDU or the reason there is none. Cancel safe (nothing is lost when the future
    /// is dropped before completion), so it can sit in a `select!`.
    pub async fn next(&mut self) -> Incoming {
        loop {
            if let Some(item) = self.buffered() {
                return item;
            }
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Incoming::Closed(None),
                Ok(_) => {}
                Err(e) => return Incoming::Closed(Some(PduError::Io(e))),
            }
        }
    }

    /// The next PDU if it is already buffered (no I/O); `None` when more bytes are needed.
    pub fn buffered(&mut self) -> Option<Incoming> {
        match self.codec.decode(&mut self.buf) {
            Ok(Some(pdu)) => Some(Incoming::Pdu(pdu)),
            Ok(None) => None,
            Err(e) => Some(self.decode_error(e)),
        }
    }

    fn decode_error(&self, e: PduError) -> Incoming {
        match e {
            PduError::SegmentTooLong { .. } => {
                let mut bhs = [0u8; BHS_LEN];
                if let Some(head) = self.buf.get(..BHS_LEN) {
                    bhs.copy_from_slice(head);
                }
                Incoming::TooLong(bhs)
            }
            e if e.is_recoverable() => Incoming::Bad(e),
            e => Incoming::Closed(Some(e)),
        }
    }
}

/// Most PDUs gathered into one `writev`.
const BATCH: usize = 64;

/// Writes encoded PDUs from `rx` to `io` until the channel closes, then shuts the write side
/// down (TCP FIN), counting the bytes written in `written`. Returns the first I/O error.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    mut rx: mpsc::Receiver<EncodedPdu>,
    written: Arc<AtomicU64>,
) -> io::Result<()> {
    let mut batch: Vec<EncodedPdu> = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(pdu) => batch.push(pdu),
                Err(_) => break,
            }
        }
        write_all_vectored(&mut io, &batch, &written).await?;
        // The PDUs (and the Data-In memory holds attached to them) go as soon as written.
        batch.clear();
    }
    io.flush().await?;
    io.shutdown().await
}

/// Writes every chunk of `pdus`, resuming after partial writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    pdus: &[EncodedPdu],
    progress: &AtomicU64,
) -> io::Result<()> {
    let mut chunks: Vec<&[u8]> = pdus
        .iter()
        .flat_map(|p| p.chunks())
        .filter(|c| !c.is_empty())
        .collect();
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[first..].iter().map(|c| IoSlice::new(c)).collect();
        let mut written = io.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        progress.fetch_add(written as u64, Ordering::Release);
        while written > 0 {
            let Some(chunk) = chunks.get_mut(first) else {
                break;
            };
            if written >= chunk.len() {
                written -= chunk.len();
                first += 1;
            } else {
                *chunk = &chunk[written..];
                written = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::{LunField, NopIn, RESERVED_TAG};
    use bytes::Bytes;

    fn nop_in(n: u32, data: &'static [u8]) -> Pdu {
        Pdu::NopIn(NopIn {
            lun: LunField::default(),
            itt: n,
            ttt: RESERVED_TAG,
            stat_sn: n,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            data: Bytes::from_static(data),
        })
    }

    #[tokio::test]
    async fn writer_and_reader_round_trip_through_a_small_pipe() {
        // A 7-byte pipe forces partial vectored writes.
        let (a, b) = tokio::io::duplex(7);
        let (tx, rx) = mpsc::channel(8);
        let written = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_loop(a, rx, written.clone()));
        let codec = PduCodec::new();
        let pdus = vec![
            nop_in(1, b"hello"),
            nop_in(2, b""),
            nop_in(3, b"abcdefghij"),
        ];
        for p in &pdus {
            tx.send(codec.encode(p).unwrap()).await.unwrap();
        }
        drop(tx);
        let mut reader = PduReader::new(b);
        for p in &pdus {
            match reader.next().await {
                Incoming::Pdu(got) => assert_eq!(&got, p),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(reader.next().await, Incoming::Closed(None)));
        writer.await.unwrap().unwrap();
        let total: usize = pdus.iter().map(|p| codec.encode(p).unwrap().len()).sum();
        assert_eq!(written.load(Ordering::Acquire), total as u64);
    }

    #[tokio::test]
    async fn too_long_segment_reports_its_header() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = 0x40; // NOP-Out
        bhs[5..8].copy_from_slice(&[0x01, 0, 0]); // 64 KiB data segment
        a.write_all(&bhs).await.unwrap();
        let mut reader = PduReader::new(b);
        reader.codec.set_max_recv_data_segment_length(8192);
        match reader.next().await {
            Incoming::TooLong(h) => assert_eq!(h, bhs),
            other => panic!("{other:?}"),
        }
    }
}
