//! PDU framing: BHS, AHS, optional CRC32C header digest, data segment padded to 4 bytes,
//! optional CRC32C data digest (RFC 7143 §11.2 and §12.1).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::bhs::{Bhs, Invalid, BHS_LEN};
use super::{Pdu, PduError, UnknownPdu, MAX_CDB_LEN};

/// The RFC 7143 default MaxRecvDataSegmentLength, in force during login.
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// Largest value the 24-bit DataSegmentLength field can hold.
const MAX_DATA_SEGMENT_FIELD: u32 = 0x00ff_ffff;
/// Largest TotalAHSLength in bytes (the field counts words in one byte).
const MAX_AHS_LEN: usize = 255 * 4;
const DIGEST_LEN: usize = 4;

/// Which CRC32C digests are in force on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    /// HeaderDigest=CRC32C: a digest after the BHS and AHS.
    pub header: bool,
    /// DataDigest=CRC32C: a digest after every non-empty data segment.
    pub data: bool,
}

/// The framing codec of one connection.
///
/// It keeps no state between PDUs besides its settings, so [`PduCodec::set_digests`] and
/// [`PduCodec::set_max_recv_data_segment_length`] apply cleanly from the next PDU on.
#[derive(Debug, Clone)]
pub struct PduCodec {
    digests: Digests,
    max_recv_data_segment_length: u32,
}

impl Default for PduCodec {
    fn default() -> Self {
        Self::new()
    }
}

/// CRC32C as iSCSI puts it on the wire: the register value in little-endian byte order
/// (RFC 7143 Appendix B.4 gives 32 zero bytes -> `aa 36 91 8a`).
pub(crate) fn digest(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Padding and data digest that follow a data segment (at most 3 + 4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    buf: [u8; 8],
    len: u8,
}

impl Trailer {
    /// The trailer bytes (possibly empty).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// A PDU ready for a vectored write: `header`, then `data`, then `trailer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPdu {
    /// BHS, AHS and header digest.
    pub header: Bytes,
    /// The data segment, shared with the PDU (not copied).
    pub data: Bytes,
    /// Padding of the data segment and its digest.
    pub trailer: Trailer,
}

impl EncodedPdu {
    /// The three parts in wire order, for `write_vectored`-style APIs.
    pub fn chunks(&self) -> [&[u8]; 3] {
        [&self.header, &self.data, self.trailer.as_bytes()]
    }

    /// Total length on the wire.
    pub fn len(&self) -> usize {
        self.header.len() + self.data.len() + self.trailer.as_bytes().len()
    }

    /// Whether the encoding is empty (never true: a PDU has at least its BHS).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PduCodec {
    /// A codec for the login phase: no digests, the RFC default receive limit of 8192 bytes.
    pub fn new() -> Self {
        PduCodec {
            digests: Digests::default(),
            max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
        }
    }

    /// The digests in force.
    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// Switches digests on or off for the following PDUs (both directions).
    pub fn set_digests(&mut self, digests: Digests) {
        self.digests = digests;
    }

    /// The largest data segment [`PduCodec::decode`] accepts.
    pub fn max_recv_data_segment_length(&self) -> u32 {
        self.max_recv_data_segment_length
    }

    /// Sets the largest data segment accepted from the peer (our declared
    /// MaxRecvDataSegmentLength); values above the 24-bit field maximum are clamped.
    pub fn set_max_recv_data_segment_length(&mut self, limit: u32) {
        self.max_recv_data_segment_length = limit.min(MAX_DATA_SEGMENT_FIELD);
    }

    /// Takes one PDU off the front of `buf` if it is complete; `Ok(None)` means more bytes are
    /// needed (nothing is consumed, and capacity for the rest is reserved).
    ///
    /// Limits are enforced as soon as the header is in: a DataSegmentLength above the receive
    /// limit fails before any data is buffered.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Pdu>, PduError> {
        let Some(head) = buf.get(..BHS_LEN) else {
            buf.reserve(BHS_LEN - buf.len());
            return Ok(None);
        };
        let mut raw = [0u8; BHS_LEN];
        raw.copy_from_slice(head);
        let bhs = Bhs(raw);
        let ahs_len = bhs.total_ahs_len();
        let header_len = BHS_LEN + ahs_len;
        let header_end = header_len + if self.digests.header { DIGEST_LEN } else { 0 };
        if buf.len() < header_end {
            buf.reserve(header_end - buf.len());
            return Ok(None);
        }
        if self.digests.header {
            let computed = digest(&[&buf[..header_len]]);
            let received = u32::from_le_bytes([
                buf[header_len],
                buf[header_len + 1],
                buf[header_len + 2],
                buf[header_len + 3],
            ]);
            if received != computed {
                return Err(PduError::HeaderDigest { received, computed });
            }
        }
        let data_len = bhs.data_segment_len();
        if data_len > self.max_recv_data_segment_length {
            return Err(PduError::SegmentTooLong {
                len: u64::from(data_len),
                limit: u64::from(self.max_recv_data_segment_length),
            });
        }
        // Bounded by 2^24 + small constants: no overflow on any platform we build for.
        let data_len = data_len as usize;
        let padded = data_len + padding(data_len);
        let data_digest = self.digests.data && data_len > 0;
        let total = header_end + padded + if data_digest { DIGEST_LEN } else { 0 };
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }

        let mut frame = buf.split_to(total);
        let ahs = frame
            .split_to(header_end)
            .freeze()
            .slice(BHS_LEN..header_len);
        let mut data = frame.freeze();
        if data_digest {
            let received = (&data[padded..]).get_u32_le();
            let computed = digest(&[&data[..padded]]);
            if received != computed {
                return Err(PduError::DataDigest {
                    bhs: Box::new(bhs.0),
                    received,
                    computed,
                });
            }
        }
        data.truncate(data_len);

        match Pdu::from_wire(&bhs, &ahs, data.clone()) {
            Some(Ok(pdu)) => Ok(Some(pdu)),
            Some(Err(Invalid::Ahs(reason))) => Err(PduError::BadAhs {
                bhs: Box::new(bhs.0),
                reason,
            }),
            Some(Err(Invalid::Field(reason))) => Err(PduError::InvalidField {
                bhs: Box::new(bhs.0),
                reason,
            }),
            None => Ok(Some(Pdu::Unknown(UnknownPdu {
                bhs: bhs.0,
                ahs,
                data,
            }))),
        }
    }

    /// Encodes `pdu` for a vectored write; the data segment is shared, not copied.
    ///
    /// Fails only when the data segment exceeds the 24-bit length field or a CDB exceeds
    /// [`MAX_CDB_LEN`]; keeping segments within the peer's MaxRecvDataSegmentLength is the
    /// caller's job.
    pub fn encode(&self, pdu: &Pdu) -> Result<EncodedPdu, PduError> {
        if let Pdu::ScsiCommand(cmd) = pdu {
            if cmd.cdb.len() > MAX_CDB_LEN {
                return Err(PduError::CdbTooLong {
                    len: cmd.cdb.len(),
                    max: MAX_CDB_LEN,
                });
            }
        }
        let (mut bhs, mut ahs, data) = pdu.to_wire();
        let data_len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l <= MAX_DATA_SEGMENT_FIELD)
            .ok_or(PduError::SegmentTooLong {
                len: data.len() as u64,
                limit: u64::from(MAX_DATA_SEGMENT_FIELD),
            })?;
        ahs.resize(ahs.len() + padding(ahs.len()), 0);
        let ahs_words = u8::try_from(ahs.len() / 4)
            .ok()
            .filter(|_| ahs.len() <= MAX_AHS_LEN)
            .ok_or(PduError::SegmentTooLong {
                len: ahs.len() as u64,
                limit: MAX_AHS_LEN as u64,
            })?;
        bhs.set_lengths(ahs_words, data_len);

        let mut header = BytesMut::with_capacity(BHS_LEN + ahs.len() + DIGEST_LEN);
        header.put_slice(&bhs.0);
        header.put_slice(&ahs);
        if self.digests.header {
            header.put_u32_le(digest(&[&header]));
        }

        let mut trailer = Trailer::default();
        let pad = padding(data.len());
        trailer.len = pad as u8;
        if self.digests.data && !data.is_empty() {
            let d = digest(&[&data, &trailer.buf[..pad]]);
            trailer.buf[pad..pad + DIGEST_LEN].copy_from_slice(&d.to_le_bytes());
            trailer.len += DIGEST_LEN as u8;
        }
        Ok(EncodedPdu {
            header: header.freeze(),
            data,
            trailer,
        })
    }

    /// Encodes `pdu` and appends all of its bytes to `dst` (copies the data segment).
    pub fn encode_into(&self, pdu: &Pdu, dst: &mut BytesMut) -> Result<(), PduError> {
        let enc = self.encode(pdu)?;
        dst.reserve(enc.len());
        for chunk in enc.chunks() {
            dst.put_slice(chunk);
        }
        Ok(())
    }
}
