//! One initiator session: login (operational stage only, no authentication), READ CAPACITY,
//! then a closed loop of READ(16)/WRITE(16) commands.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlaybd_target::iscsi::pdu::{
    serial, DataOut, Isid, LoginRequest, LunField, NopOut, Pdu, PduCodec, ScsiCommand, Stage,
    RESERVED_TAG,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Our MaxRecvDataSegmentLength.
const OUR_MRDSL: u32 = 262_144;

/// What one session's loop does.
#[derive(Debug, Clone, Copy)]
pub struct Pattern {
    /// Commands in flight.
    pub qd: usize,
    /// Bytes per command.
    pub bs: u32,
    /// Percentage of writes.
    pub write_pct: u8,
    /// Sequential offsets (each session in its own part of the LUN).
    pub sequential: bool,
    /// With `sequential`: stop after one pass over this session's part of the LUN.
    pub once: bool,
    /// This session's number, and how many there are.
    pub index: usize,
    /// Number of sessions.
    pub of: usize,
}

/// Results of one session (or, summed, of all).
#[derive(Debug, Default)]
pub struct Totals {
    /// Measured time.
    pub measured: Duration,
    /// Bytes per command.
    pub bs: u32,
    /// Commands completed inside the measured window.
    pub ios: u64,
    /// Commands that did not end with GOOD.
    pub errors: u64,
    /// Latency of each measured command, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Commands completed in each [`TIMELINE_STEP`] of the measured window, from its start.
    pub timeline: Vec<u64>,
    /// The measured window's start as Unix time (set on the sum only).
    pub start_unix: Duration,
}

/// The width of one [`Totals::timeline`] slot.
pub const TIMELINE_STEP: Duration = Duration::from_millis(100);

/// Negotiated values the loop needs.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    immediate_data: bool,
    first_burst: u32,
    /// The target's MaxRecvDataSegmentLength (bounds what we send per PDU).
    target_mrdsl: u32,
}

/// A logged-in session.
pub struct Session {
    io: TcpStream,
    codec: PduCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    lun: LunField,
    cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    neg: Negotiated,
    capacity: u64,
}

/// A command in flight.
#[derive(Debug, Clone, Copy)]
struct Inflight {
    sent: Instant,
    write: bool,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Splits NUL-separated `key=value` login text.
fn keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

impl Session {
    /// Connects and logs in to `target` (session number `index` picks the ISID).
    pub async fn login(
        portal: SocketAddr,
        target: &str,
        lun: u64,
        index: usize,
    ) -> io::Result<Session> {
        let io = TcpStream::connect(portal).await?;
        io.set_nodelay(true)?;
        let mut s = Session {
            io,
            codec: PduCodec::new(),
            rbuf: BytesMut::with_capacity(1 << 20),
            wbuf: BytesMut::with_capacity(1 << 16),
            lun: LunField::from_number(lun).ok_or_else(|| bad("bad LUN"))?,
            cmd_sn: 1,
            max_cmd_sn: 1,
            exp_stat_sn: 0,
            neg: Negotiated {
                immediate_data: true,
                first_burst: 65_536,
                target_mrdsl: 8192,
            },
            capacity: 0,
        };
        let text = format!(
            "InitiatorName=iqn.2026-11.io.overlaybd:loadgen\0TargetName={target}\0\
             SessionType=Normal\0HeaderDigest=None\0DataDigest=None\0\
             MaxRecvDataSegmentLength={OUR_MRDSL}\0ImmediateData=Yes\0InitialR2T=No\0\
             FirstBurstLength=262144\0MaxBurstLength=1048576\0MaxOutstandingR2T=1\0\
             ErrorRecoveryLevel=0\0DefaultTime2Wait=0\0DefaultTime2Retain=0\0\
             MaxConnections=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0"
        );
        let idx = u16::try_from(index).unwrap_or(u16::MAX).to_be_bytes();
        let mut data = Bytes::from(text.into_bytes());
        loop {
            let req = LoginRequest {
                cmd_sn: s.cmd_sn,
                exp_stat_sn: s.exp_stat_sn,
                ..LoginRequest::operational(Isid([0x80, 0x4c, 0x47, 0x00, idx[0], idx[1]]), data)
            };
            s.send(&Pdu::LoginRequest(req))?;
            s.flush().await?;
            let rsp = match s.next_pdu().await? {
                Pdu::LoginResponse(r) => r,
                other => return Err(bad(format!("opcode {:#x} during login", other.opcode()))),
            };
            if !rsp.status.is_success() {
                return Err(bad(format!("login refused: {:#06x}", rsp.status.code())));
            }
            for (k, v) in keys(&rsp.data) {
                match k.as_str() {
                    "MaxRecvDataSegmentLength" => {
                        s.neg.target_mrdsl = v.parse().map_err(|_| bad("bad MRDSL"))?
                    }
                    "ImmediateData" => s.neg.immediate_data = v == "Yes",
                    "FirstBurstLength" => {
                        s.neg.first_burst = v.parse().map_err(|_| bad("bad FirstBurst"))?
                    }
                    _ => {}
                }
            }
            s.exp_stat_sn = rsp.stat_sn.wrapping_add(1);
            s.max_cmd_sn = rsp.max_cmd_sn;
            s.cmd_sn = rsp.exp_cmd_sn;
            if rsp.transit && rsp.nsg == Stage::FullFeature {
                break;
            }
            data = Bytes::new();
        }
        s.codec.set_max_recv_data_segment_length(OUR_MRDSL);
        // The first commands may meet a unit attention (power on, reset): retry.
        let mut tries = 0;
        s.capacity = loop {
            match s.read_capacity().await {
                Ok(c) => break c,
                Err(e) if tries >= 3 => return Err(e),
                Err(_) => tries += 1,
            }
        };
        Ok(s)
    }

    /// READ CAPACITY (10): the LUN size in bytes.
    async fn read_capacity(&mut self) -> io::Result<u64> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x25;
        let cmd = self.command(0x7000_0000, false, 8, &cdb, true);
        self.send(&Pdu::ScsiCommand(cmd))?;
        self.flush().await?;
        let mut data = BytesMut::new();
        loop {
            match self.next_pdu().await? {
                Pdu::DataIn(d) => {
                    data.extend_from_slice(&d.data);
                    if let Some(status) = d.status {
                        self.note_status(d.stat_sn, d.max_cmd_sn);
                        if status != 0 {
                            return Err(bad("READ CAPACITY failed"));
                        }
                        break;
                    }
                }
                Pdu::ScsiResponse(r) => {
                    self.note_status(r.stat_sn, r.max_cmd_sn);
                    if r.status != 0 {
                        return Err(bad("READ CAPACITY failed"));
                    }
                    break;
                }
                Pdu::NopIn(n) => self.answer_nop(&n)?,
                other => return Err(bad(format!("opcode {:#x}", other.opcode()))),
            }
        }
        let b = data.get(..8).ok_or_else(|| bad("short READ CAPACITY"))?;
        let last = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let block = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        Ok((u64::from(last) + 1) * u64::from(block))
    }

    fn note_status(&mut self, stat_sn: u32, max_cmd_sn: u32) {
        self.exp_stat_sn = stat_sn.wrapping_add(1);
        if serial::sn_gt(max_cmd_sn, self.max_cmd_sn) {
            self.max_cmd_sn = max_cmd_sn;
        }
    }

    /// A SCSI Command PDU numbered with the next CmdSN.
    fn command(&mut self, itt: u32, write: bool, len: u32, cdb: &[u8], fin: bool) -> ScsiCommand {
        let cmd_sn = self.cmd_sn;
        self.cmd_sn = cmd_sn.wrapping_add(1);
        ScsiCommand {
            is_final: fin,
            read: !write && len > 0,
            write,
            itt,
            cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ..ScsiCommand::new(self.lun, cdb, len)
        }
    }

    fn send(&mut self, pdu: &Pdu) -> io::Result<()> {
        self.codec
            .encode_into(pdu, &mut self.wbuf)
            .map_err(|e| bad(e.to_string()))
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// A PDU already buffered, if any.
    fn buffered_pdu(&mut self) -> io::Result<Option<Pdu>> {
        self.codec
            .decode(&mut self.rbuf)
            .map_err(|e| bad(e.to_string()))
    }

    async fn next_pdu(&mut self) -> io::Result<Pdu> {
        loop {
            if let Some(p) = self.buffered_pdu()? {
                return Ok(p);
            }
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn answer_nop(&mut self, n: &overlaybd_target::iscsi::pdu::NopIn) -> io::Result<()> {
        if n.ttt == RESERVED_TAG {
            return Ok(());
        }
        let out = NopOut {
            immediate: true,
            lun: n.lun,
            itt: RESERVED_TAG,
            ttt: n.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: Bytes::new(),
        };
        self.send(&Pdu::NopOut(out))
    }

    /// Runs the closed loop until `end`; commands completing in `[start, end)` are measured.
    pub async fn run(mut self, p: Pattern, start: Instant, end: Instant) -> io::Result<Totals> {
        let bs = u64::from(p.bs);
        let blocks = self.capacity / bs;
        if blocks == 0 {
            return Err(bad("LUN smaller than one command"));
        }
        let payload = Bytes::from((0..p.bs).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>());
        let region = (blocks / p.of as u64).max(1);
        let mut cursor = (p.index as u64 * region) % blocks;
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15 ^ ((p.index as u64 + 1) << 17);
        let mut next_rand = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut inflight: Vec<Option<Inflight>> = vec![None; p.qd];
        let mut free: Vec<u32> = (0..p.qd as u32).rev().collect();
        let mut out = Totals::default();
        let mut outstanding = 0usize;
        // Commands left to issue in a single pass (the last session also takes the remainder).
        let mut left = if p.once && p.sequential {
            if p.index + 1 == p.of {
                blocks.saturating_sub(region * (p.of as u64 - 1))
            } else {
                region
            }
        } else {
            u64::MAX
        };
        loop {
            // Fill the queue while the window, the clock and the pass allow.
            let now = Instant::now();
            while now < end && left > 0 && serial::sn_le(self.cmd_sn, self.max_cmd_sn) {
                let Some(itt) = free.pop() else { break };
                left -= 1;
                let block = if p.sequential {
                    let b = cursor;
                    cursor = (cursor + 1) % blocks;
                    b
                } else {
                    next_rand() % blocks
                };
                let write = p.write_pct > 0 && (next_rand() % 100) < u64::from(p.write_pct);
                self.issue(itt, write, block * bs / 512, p.bs, &payload)?;
                if let Some(slot) = inflight.get_mut(itt as usize) {
                    *slot = Some(Inflight {
                        sent: Instant::now(),
                        write,
                    });
                }
                outstanding += 1;
            }
            if outstanding == 0 {
                break;
            }
            self.flush().await?;
            // Handle everything that has arrived.
            let pdu = self.next_pdu().await?;
            let mut next = Some(pdu);
            while let Some(pdu) = next.take() {
                let done = match pdu {
                    Pdu::DataIn(d) => match d.status {
                        Some(status) => {
                            self.note_status(d.stat_sn, d.max_cmd_sn);
                            Some((d.itt, status))
                        }
                        None => None,
                    },
                    Pdu::ScsiResponse(r) => {
                        self.note_status(r.stat_sn, r.max_cmd_sn);
                        Some((r.itt, if r.response == 0 { r.status } else { 0xff }))
                    }
                    Pdu::R2t(r) => {
                        let data = payload.clone();
                        self.answer_r2t(&r, &data)?;
                        None
                    }
                    Pdu::NopIn(n) => {
                        self.answer_nop(&n)?;
                        None
                    }
                    other => return Err(bad(format!("unexpected opcode {:#x}", other.opcode()))),
                };
                if let Some((itt, status)) = done {
                    let slot = inflight
                        .get_mut(itt as usize)
                        .and_then(Option::take)
                        .ok_or_else(|| bad(format!("status for unknown ITT {itt}")))?;
                    free.push(itt);
                    outstanding -= 1;
                    let now = Instant::now();
                    if now >= start && now < end {
                        out.ios += 1;
                        out.latencies_ns
                            .push(now.duration_since(slot.sent).as_nanos() as u64);
                        let step = (now.duration_since(start).as_nanos() / TIMELINE_STEP.as_nanos())
                            as usize;
                        if out.timeline.len() <= step {
                            out.timeline.resize(step + 1, 0);
                        }
                        out.timeline[step] += 1;
                    }
                    if status != 0 {
                        out.errors += 1;
                        if out.errors == 1 {
                            eprintln!(
                                "loadgen: ITT {itt} ({}) ended with status {status:#x}",
                                if slot.write { "write" } else { "read" }
                            );
                        }
                    }
                }
                next = self.buffered_pdu()?;
            }
        }
        Ok(out)
    }

    /// Sends READ(16) or WRITE(16) of `len` bytes at `lba`; a write carries what it may as
    /// immediate data and the rest follows R2Ts.
    fn issue(
        &mut self,
        itt: u32,
        write: bool,
        lba: u64,
        len: u32,
        payload: &Bytes,
    ) -> io::Result<()> {
        let mut cdb = [0u8; 16];
        cdb[0] = if write { 0x8a } else { 0x88 };
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&(len / 512).to_be_bytes());
        let mut cmd = self.command(itt, write, len, &cdb, true);
        if write && self.neg.immediate_data {
            let imm = len.min(self.neg.first_burst).min(self.neg.target_mrdsl);
            cmd.data = payload.slice(..imm as usize);
        }
        self.send(&Pdu::ScsiCommand(cmd))
    }

    /// Sends the Data-Out PDUs an R2T asks for.
    fn answer_r2t(
        &mut self,
        r: &overlaybd_target::iscsi::pdu::R2t,
        payload: &Bytes,
    ) -> io::Result<()> {
        let start = r.buffer_offset as usize;
        let end = start
            .checked_add(r.desired_length as usize)
            .filter(|&e| e <= payload.len())
            .ok_or_else(|| bad("R2T beyond the write"))?;
        let step = self.neg.target_mrdsl.max(512) as usize;
        let mut off = start;
        let mut data_sn = 0;
        while off < end {
            let n = step.min(end - off);
            let d = DataOut {
                is_final: off + n == end,
                lun: r.lun,
                itt: r.itt,
                ttt: r.ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: off as u32,
                data: payload.slice(off..off + n),
            };
            self.send(&Pdu::DataOut(d))?;
            off += n;
            data_sn += 1;
        }
        Ok(())
    }
}
