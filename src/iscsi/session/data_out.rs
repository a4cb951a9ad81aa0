//! Collecting a write command's Data-Out bytes (RFC 7143 §4.2.5.2, §11.7, §11.8): immediate
//! data, an unsolicited burst up to FirstBurstLength, then R2T-solicited bursts of at most
//! MaxBurstLength with at most MaxOutstandingR2T open at once.
//!
//! The session negotiates DataPDUInOrder=Yes and DataSequenceInOrder=Yes, so every byte must
//! arrive at the next offset: a PDU out of place is a protocol error, not something to sort.
//! DataSN restarts at 0 for every sequence (the unsolicited one, and one per R2T).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// The Target Transfer Tag of unsolicited Data-Out PDUs.
pub const UNSOLICITED_TTT: u32 = 0xffff_ffff;

/// Negotiated session values that shape a write's data transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimits {
    /// ImmediateData=Yes: data may ride in the SCSI Command PDU.
    pub immediate_data: bool,
    /// InitialR2T=Yes: no unsolicited Data-Out PDUs.
    pub initial_r2t: bool,
    /// FirstBurstLength: the most unsolicited data (immediate plus Data-Out) per command.
    pub first_burst: u32,
    /// MaxBurstLength: the most data one R2T asks for.
    pub max_burst: u32,
    /// MaxOutstandingR2T: how many R2Ts may be unanswered at once.
    pub max_outstanding_r2t: u32,
}

/// A Data-Out PDU that does not fit the transfer; the task cannot complete normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataOutError {
    /// The command carried immediate data although ImmediateData=No.
    #[error("immediate data sent although ImmediateData=No")]
    ImmediateNotAllowed,
    /// The command announced unsolicited Data-Out (F=0) although InitialR2T=Yes.
    #[error("unsolicited data announced although InitialR2T=Yes")]
    UnsolicitedNotAllowed,
    /// An unsolicited Data-Out arrived when no unsolicited sequence was open.
    #[error("unexpected unsolicited Data-Out")]
    UnexpectedUnsolicited,
    /// The Target Transfer Tag names no open R2T of this task.
    #[error("Target Transfer Tag {0:#x} names no open R2T")]
    UnknownTtt(u32),
    /// DataSN is not the next one of its sequence.
    #[error("DataSN {got}, expected {expected}")]
    DataSn {
        /// The DataSN the sequence expects next.
        expected: u32,
        /// The DataSN received.
        got: u32,
    },
    /// Buffer Offset is not the next byte expected.
    #[error("buffer offset {got}, expected {expected}")]
    Offset {
        /// The next offset expected.
        expected: u32,
        /// The offset received.
        got: u32,
    },
    /// More data than the sequence (or the command, or FirstBurstLength) allows.
    #[error("data beyond the end of the burst or of the command")]
    TooMuch,
    /// The F bit ended a solicited sequence before all requested data arrived.
    #[error("F bit before the end of the solicited burst")]
    EarlyFinal,
}

/// An R2T to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRequest {
    /// Target Transfer Tag the Data-Out PDUs must carry.
    pub ttt: u32,
    /// R2TSN (per task, from 0).
    pub r2t_sn: u32,
    /// Buffer Offset of the requested data.
    pub offset: u32,
    /// Desired Data Transfer Length.
    pub len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sequence {
    ttt: u32,
    next_data_sn: u32,
    /// Offset one past the sequence's last byte.
    end: u32,
}

/// The Data-Out state of one write command.
#[derive(Debug)]
pub struct WriteTransfer {
    expected: u32,
    limits: WriteLimits,
    /// Received data in offset order; a single piece when it came in one PDU.
    parts: Vec<Bytes>,
    received: u32,
    unsolicited: Option<Sequence>,
    r2ts: VecDeque<Sequence>,
    /// Bytes covered by data received or already requested.
    solicited_to: u32,
    next_r2t_sn: u32,
}

impl WriteTransfer {
    /// Starts a write of `expected` bytes whose SCSI Command PDU carried `immediate` data and
    /// the F bit `command_final` (false: unsolicited Data-Out PDUs follow).
    pub fn new(
        expected: u32,
        immediate: Bytes,
        command_final: bool,
        limits: WriteLimits,
    ) -> Result<Self, DataOutError> {
        let imm_len = u32::try_from(immediate.len()).map_err(|_| DataOutError::TooMuch)?;
        if imm_len > 0 && !limits.immediate_data {
            return Err(DataOutError::ImmediateNotAllowed);
        }
        let unsolicited_end = limits.first_burst.min(expected);
        if imm_len > unsolicited_end {
            return Err(DataOutError::TooMuch);
        }
        let unsolicited = if command_final {
            None
        } else if limits.initial_r2t {
            return Err(DataOutError::UnsolicitedNotAllowed);
        } else if imm_len < unsolicited_end {
            Some(Sequence {
                ttt: UNSOLICITED_TTT,
                next_data_sn: 0,
                end: unsolicited_end,
            })
        } else {
            // F=0 but the immediate data already filled the unsolicited burst: nothing may follow.
            None
        };
        let mut parts = Vec::new();
        if imm_len > 0 {
            parts.push(immediate);
        }
        Ok(WriteTransfer {
            expected,
            limits,
            parts,
            received: imm_len,
            unsolicited,
            r2ts: VecDeque::new(),
            solicited_to: imm_len,
            next_r2t_sn: 0,
        })
    }

    /// Accepts one Data-Out PDU's fields and data.
    pub fn on_data_out(
        &mut self,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        data: Bytes,
        is_final: bool,
    ) -> Result<(), DataOutError> {
        let len = u32::try_from(data.len()).map_err(|_| DataOutError::TooMuch)?;
        let seq = if ttt == UNSOLICITED_TTT {
            self.unsolicited
                .as_mut()
                .ok_or(DataOutError::UnexpectedUnsolicited)?
        } else {
            // In-order data: only the oldest open R2T may receive bytes.
            match self.r2ts.front_mut() {
                Some(seq) if seq.ttt == ttt => seq,
                _ => return Err(DataOutError::UnknownTtt(ttt)),
            }
        };
        if data_sn != seq.next_data_sn {
            return Err(DataOutError::DataSn {
                expected: seq.next_data_sn,
                got: data_sn,
            });
        }
        if offset != self.received {
            return Err(DataOutError::Offset {
                expected: self.received,
                got: offset,
            });
        }
        let end = self
            .received
            .checked_add(len)
            .ok_or(DataOutError::TooMuch)?;
        if end > seq.end {
            return Err(DataOutError::TooMuch);
        }
        let complete = end == seq.end;
        if is_final && !complete && ttt != UNSOLICITED_TTT {
            return Err(DataOutError::EarlyFinal);
        }
        seq.next_data_sn = seq.next_data_sn.wrapping_add(1);
        if len > 0 {
            self.parts.push(data);
        }
        self.received = end;
        if complete || is_final {
            // A short unsolicited burst (F before FirstBurstLength) is allowed; the rest is
            // solicited.
            if ttt == UNSOLICITED_TTT {
                self.unsolicited = None;
            } else {
                self.r2ts.pop_front();
            }
        }
        self.solicited_to = self.solicited_to.max(self.received);
        Ok(())
    }

    /// The next R2T to send, if one is due: none while unsolicited data is still expected or
    /// MaxOutstandingR2T are open. `next_ttt` allocates a tag.
    pub fn next_r2t(&mut self, next_ttt: impl FnOnce() -> u32) -> Option<R2tRequest> {
        if self.unsolicited.is_some()
            || self.solicited_to >= self.expected
            || self.r2ts.len() >= self.limits.max_outstanding_r2t.max(1) as usize
        {
            return None;
        }
        let offset = self.solicited_to;
        let len = self.limits.max_burst.max(1).min(self.expected - offset);
        let ttt = next_ttt();
        let r2t = R2tRequest {
            ttt,
            r2t_sn: self.next_r2t_sn,
            offset,
            len,
        };
        self.r2ts.push_back(Sequence {
            ttt,
            next_data_sn: 0,
            end: offset + len,
        });
        self.next_r2t_sn = self.next_r2t_sn.wrapping_add(1);
        self.solicited_to = offset + len;
        Some(r2t)
    }

    /// Whether data remains to be solicited with R2Ts (the unsolicited part is over).
    pub fn wants_r2t(&self) -> bool {
        self.unsolicited.is_none() && self.solicited_to < self.expected
    }

    /// Whether the Target Transfer Tag belongs to an open R2T of this transfer.
    pub fn owns_ttt(&self, ttt: u32) -> bool {
        self.r2ts.iter().any(|s| s.ttt == ttt)
    }

    /// True when every expected byte has arrived.
    pub fn is_complete(&self) -> bool {
        self.received == self.expected && self.unsolicited.is_none() && self.r2ts.is_empty()
    }

    /// Bytes received so far.
    pub fn received(&self) -> u32 {
        self.received
    }

    /// The collected data (copied into one buffer only when it came in several PDUs).
    pub fn into_data(mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(self.received as usize);
                for part in &self.parts {
                    buf.extend_from_slice(part);
                }
                buf.freeze()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINUX: WriteLimits = WriteLimits {
        immediate_data: true,
        initial_r2t: true,
        first_burst: 65536,
        max_burst: 262144,
        max_outstanding_r2t: 1,
    };

    fn fill(len: usize, byte: u8) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn immediate_data_then_r2t_bursts_like_linux() {
        // 1 MiB write, 8 KiB immediate, R2Ts of 256 KiB one at a time (linux-initiator.md §6).
        let mib = 1 << 20;
        let mut w = WriteTransfer::new(mib, fill(8192, 1), true, LINUX).unwrap();
        let mut ttt = 100;
        let mut alloc = || {
            ttt += 1;
            ttt
        };
        let r0 = w.next_r2t(&mut alloc).unwrap();
        assert_eq!(
            r0,
            R2tRequest {
                ttt: 101,
                r2t_sn: 0,
                offset: 8192,
                len: 262144
            }
        );
        assert_eq!(w.next_r2t(&mut alloc), None, "MaxOutstandingR2T=1");
        let mut offset = 8192;
        let mut expected_r2ts = vec![(270336, 262144), (532480, 262144), (794624, 253952)];
        expected_r2ts.reverse();
        let mut current = r0;
        loop {
            let end = current.offset + current.len;
            let mut sn = 0;
            while offset < end {
                let n = 8192.min(end - offset);
                w.on_data_out(
                    current.ttt,
                    sn,
                    offset,
                    fill(n as usize, 2),
                    offset + n == end,
                )
                .unwrap();
                offset += n;
                sn += 1;
            }
            match w.next_r2t(&mut alloc) {
                Some(r) => {
                    assert_eq!((r.offset, r.len), expected_r2ts.pop().unwrap());
                    assert_eq!(r.r2t_sn, current.r2t_sn + 1);
                    current = r;
                }
                None => break,
            }
        }
        assert!(expected_r2ts.is_empty());
        assert!(w.is_complete());
        let data = w.into_data();
        assert_eq!(data.len(), mib as usize);
        assert_eq!(data[8191], 1);
        assert_eq!(data[8192], 2);
    }

    #[test]
    fn unsolicited_burst_then_solicited_rest() {
        let limits = WriteLimits {
            initial_r2t: false,
            first_burst: 4096,
            ..LINUX
        };
        let mut w = WriteTransfer::new(10000, fill(1024, 1), false, limits).unwrap();
        assert_eq!(w.next_r2t(|| 7), None, "unsolicited data still to come");
        w.on_data_out(UNSOLICITED_TTT, 0, 1024, fill(2048, 2), false)
            .unwrap();
        w.on_data_out(UNSOLICITED_TTT, 1, 3072, fill(1024, 3), true)
            .unwrap();
        let r = w.next_r2t(|| 7).unwrap();
        assert_eq!((r.offset, r.len, r.r2t_sn), (4096, 5904, 0));
        assert!(!w.is_complete());
        w.on_data_out(7, 0, 4096, fill(5904, 4), true).unwrap();
        assert!(w.is_complete());
        assert_eq!(w.into_data().len(), 10000);
    }

    #[test]
    fn whole_write_as_immediate_data_needs_no_r2t() {
        let mut w = WriteTransfer::new(512, fill(512, 9), true, LINUX).unwrap();
        assert!(w.is_complete());
        assert_eq!(w.next_r2t(|| 1), None);
        assert_eq!(w.into_data(), fill(512, 9));
    }

    #[test]
    fn several_outstanding_r2ts() {
        let limits = WriteLimits {
            max_burst: 1000,
            max_outstanding_r2t: 2,
            ..LINUX
        };
        let mut w = WriteTransfer::new(2500, Bytes::new(), true, limits).unwrap();
        let mut tags = 0..;
        let mut alloc = || tags.next().unwrap();
        let a = w.next_r2t(&mut alloc).unwrap();
        let b = w.next_r2t(&mut alloc).unwrap();
        assert_eq!((a.offset, b.offset, b.r2t_sn), (0, 1000, 1));
        assert_eq!(w.next_r2t(&mut alloc), None);
        assert_eq!(
            w.on_data_out(b.ttt, 0, 1000, fill(1000, 0), true),
            Err(DataOutError::UnknownTtt(b.ttt)),
            "data must arrive in order"
        );
        w.on_data_out(a.ttt, 0, 0, fill(1000, 0), true).unwrap();
        let c = w.next_r2t(&mut alloc).unwrap();
        assert_eq!((c.offset, c.len), (2000, 500));
        w.on_data_out(b.ttt, 0, 1000, fill(1000, 0), true).unwrap();
        w.on_data_out(c.ttt, 0, 2000, fill(500, 0), true).unwrap();
        assert!(w.is_complete());
    }

    #[test]
    fn protocol_errors_are_named() {
        let no_imm = WriteLimits {
            immediate_data: false,
            ..LINUX
        };
        assert_eq!(
            WriteTransfer::new(512, fill(512, 0), true, no_imm).unwrap_err(),
            DataOutError::ImmediateNotAllowed
        );
        assert_eq!(
            WriteTransfer::new(512, Bytes::new(), false, LINUX).unwrap_err(),
            DataOutError::UnsolicitedNotAllowed
        );
        assert_eq!(
            WriteTransfer::new(100_000, fill(65537, 0), true, LINUX).unwrap_err(),
            DataOutError::TooMuch,
            "immediate data beyond FirstBurstLength"
        );

        let mut w = WriteTransfer::new(1024, Bytes::new(), true, LINUX).unwrap();
        assert_eq!(
            w.on_data_out(UNSOLICITED_TTT, 0, 0, fill(512, 0), false),
            Err(DataOutError::UnexpectedUnsolicited)
        );
        let r = w.next_r2t(|| 5).unwrap();
        assert_eq!(
            w.on_data_out(5, 1, 0, fill(512, 0), false),
            Err(DataOutError::DataSn {
                expected: 0,
                got: 1
            })
        );
        assert_eq!(
            w.on_data_out(5, 0, 512, fill(512, 0), false),
            Err(DataOutError::Offset {
                expected: 0,
                got: 512
            })
        );
        assert_eq!(
            w.on_data_out(5, 0, 0, fill(2048, 0), true),
            Err(DataOutError::TooMuch)
        );
        assert_eq!(
            w.on_data_out(5, 0, 0, fill(512, 0), true),
            Err(DataOutError::EarlyFinal)
        );
        w.on_data_out(r.ttt, 0, 0, fill(512, 0), false).unwrap();
        assert!(w.owns_ttt(5));
        w.on_data_out(r.ttt, 1, 512, fill(512, 0), true).unwrap();
        assert!(w.is_complete() && !w.owns_ttt(5));
    }
}
