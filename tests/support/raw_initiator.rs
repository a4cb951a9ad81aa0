//! A raw-socket iSCSI initiator for attacks: blocking std sockets, the crate's own PDU codec,
//! and nothing that a well-behaved initiator would insist on. It queues any PDU it is given,
//! sends a batch in one write, reads only when told to, and never answers the target unless the
//! test does. Each connection logs in with its own ISID, so many can be open at once.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlaybd_target::iscsi::pdu::{
    Isid, LoginRequest, LoginResponse, LoginStatus, LunField, NopOut, Pdu, PduCodec, Reject,
    ScsiCommand, RESERVED_TAG,
};

/// The initiator name every raw connection logs in with.
pub const INITIATOR: &str = "iqn.2026-11.io.overlaybd:hostile";
/// The data segment the raw initiator declares it accepts (and that it sends at most).
pub const SEGMENT: u32 = 256 * 1024;
/// The largest login PDU data segment a target must accept before MaxRecvDataSegmentLength is
/// negotiated (RFC 7143 §13.12: 8192 during login).
pub const LOGIN_SEGMENT: usize = 8192;

/// Keys of a login that asks for everything an attacker wants: immediate data, bursts and
/// segments of [`SEGMENT`], R2Ts for the rest.
pub const GREEDY_KEYS: &[(&str, &str)] = &[
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("ErrorRecoveryLevel", "0"),
    ("MaxConnections", "1"),
    ("InitialR2T", "Yes"),
    ("ImmediateData", "Yes"),
    ("FirstBurstLength", "262144"),
    ("MaxBurstLength", "1048576"),
    ("MaxOutstandingR2T", "1"),
    ("MaxRecvDataSegmentLength", "262144"),
];

/// ISIDs handed out so far: every connection is a distinct session (a repeated ISID would
/// reinstate, that is end, the earlier one).
static NEXT_ISID: AtomicU32 = AtomicU32::new(1);

/// Data direction of a SCSI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// No data.
    None,
    /// Data-In (R bit).
    Read,
    /// Data-Out (W bit).
    Write,
}

/// How a SCSI command ended, as [`RawConn::outcome`] collected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status.
    pub status: u8,
    /// Data-In received, in order.
    pub data: Vec<u8>,
    /// The O bit (residual overflow).
    pub overflow: bool,
    /// The residual count.
    pub residual: u32,
    /// The sense data of a CHECK CONDITION (from the SCSI Response's data segment).
    pub sense: Option<Vec<u8>>,
}

/// One raw connection.
pub struct RawConn {
    stream: TcpStream,
    codec: PduCodec,
    rx: BytesMut,
    out: BytesMut,
    /// CmdSN of the next non-immediate command (tests may move it to open a gap).
    pub cmd_sn: u32,
    /// ExpStatSN to put in outgoing PDUs.
    pub exp_stat_sn: u32,
    /// MaxCmdSN as the final Login Response announced it (the window's last CmdSN).
    pub max_cmd_sn: u32,
    next_itt: u32,
}

/// The NUL-terminated `key=value` text of `pairs`.
pub fn text(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// READ(16) of `blocks` blocks from `lba`.
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// READ(10) of `blocks` blocks from `lba`.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let (l, b) = (lba.to_be_bytes(), blocks.to_be_bytes());
    [0x28, 0, l[0], l[1], l[2], l[3], 0, b[0], b[1], 0]
}

/// WRITE(10) of `blocks` blocks at `lba`.
pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = read10(lba, blocks);
    cdb[0] = 0x2a;
    cdb
}

/// The ITT of the command a Reject returns (bytes 16..20 of the echoed header).
pub fn rejected_itt(reject: &Reject) -> Option<u32> {
    let itt = reject.data.get(16..20)?;
    Some(u32::from_be_bytes(itt.try_into().ok()?))
}

impl RawConn {
    /// Connects to `addr` (loopback) with Nagle off.
    pub fn connect(addr: SocketAddr) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            codec: PduCodec::new(),
            rx: BytesMut::new(),
            out: BytesMut::new(),
            cmd_sn: 0,
            exp_stat_sn: 0,
            max_cmd_sn: 0,
            next_itt: 0,
        })
    }

    /// A second handle on the same connection, for another thread: its own batch and receive
    /// buffer, ITTs counting up from `itt_base`, the same CmdSN and ExpStatSN.
    pub fn try_clone(&self, itt_base: u32) -> RawConn {
        RawConn {
            stream: self.stream.try_clone().unwrap(),
            codec: self.codec.clone(),
            rx: BytesMut::new(),
            out: BytesMut::new(),
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            max_cmd_sn: self.max_cmd_sn,
            next_itt: itt_base,
        }
    }

    /// The local (initiator-side) port of the connection.
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// Shuts the connection down both ways (unblocks a thread writing on a clone).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Connects and logs in to `target` in one round trip with [`GREEDY_KEYS`], `overrides`
    /// replacing keys of the same name. Panics unless the login succeeds.
    pub fn login_to(addr: SocketAddr, target: &str, overrides: &[(&str, &str)]) -> RawConn {
        let mut conn = RawConn::connect(addr).expect("connect");
        let mut pairs: Vec<(&str, &str)> = vec![
            ("InitiatorName", INITIATOR),
            ("TargetName", target),
            ("SessionType", "Normal"),
        ];
        for (k, v) in GREEDY_KEYS {
            let v = overrides
                .iter()
                .find(|(o, _)| o == k)
                .map_or(*v, |(_, o)| *o);
            pairs.push((k, v));
        }
        let rsp = conn
            .login_pdus(&[Bytes::from(text(&pairs))])
            .expect("login answered");
        assert_eq!(rsp.status, LoginStatus::SUCCESS, "login refused: {rsp:?}");
        assert!(
            rsp.transit,
            "login did not reach full feature phase: {rsp:?}"
        );
        conn.codec.set_max_recv_data_segment_length(SEGMENT);
        conn.max_cmd_sn = rsp.max_cmd_sn;
        conn
    }

    /// Sends a login (operational stage to full feature) whose text is `chunks`, one Login
    /// Request each with the C bit on all but the last, reading the target's answer after each.
    /// Returns the answer to the last chunk, or the first failure answer; `Err` when the target
    /// closed the connection or stayed silent for 10 s.
    pub fn login_pdus(&mut self, chunks: &[Bytes]) -> io::Result<LoginResponse> {
        let isid = NEXT_ISID.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            // A random-type ISID (0x80) whose qualifier counts connections.
            let isid = Isid([0x80, 0, isid[0], isid[1], isid[2], isid[3]]);
            let req = LoginRequest {
                transit: last,
                continues: !last,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                ..LoginRequest::operational(isid, chunk.clone())
            };
            self.queue(&Pdu::LoginRequest(req));
            self.flush()?;
            match self.recv(Duration::from_secs(10))? {
                Some(Pdu::LoginResponse(rsp)) => {
                    self.exp_stat_sn = rsp.stat_sn.wrapping_add(1);
                    if last || rsp.status != LoginStatus::SUCCESS {
                        return Ok(rsp);
                    }
                }
                Some(other) => {
                    return Err(io::Error::other(format!(
                        "expected a Login Response, got {other:?}"
                    )))
                }
                None => return Err(io::ErrorKind::UnexpectedEof.into()),
            }
        }
        Err(io::Error::other("no login text"))
    }

    /// A fresh Initiator Task Tag.
    pub fn itt(&mut self) -> u32 {
        self.next_itt += 1;
        self.next_itt
    }

    /// Encodes `pdu` into the pending batch (sent by [`RawConn::flush`]).
    pub fn queue(&mut self, pdu: &Pdu) {
        self.codec.encode_into(pdu, &mut self.out).unwrap();
    }

    /// Bytes waiting in the batch.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Queues a SCSI command on LUN 0 with `data` as immediate data and returns its ITT. A
    /// non-immediate command takes the next CmdSN; an immediate one carries it without
    /// advancing it (RFC 7143 §4.2.2.1).
    pub fn queue_command(
        &mut self,
        cdb: &[u8],
        dir: Dir,
        edtl: u32,
        data: Bytes,
        immediate: bool,
    ) -> u32 {
        self.queue_command_to(0, cdb, dir, edtl, data, immediate)
    }

    /// Like [`RawConn::queue_command`], addressed to LUN `lun`.
    pub fn queue_command_to(
        &mut self,
        lun: u64,
        cdb: &[u8],
        dir: Dir,
        edtl: u32,
        data: Bytes,
        immediate: bool,
    ) -> u32 {
        let itt = self.itt();
        let cmd = ScsiCommand {
            immediate,
            read: dir == Dir::Read,
            write: dir == Dir::Write,
            itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
            ..ScsiCommand::new(LunField::from_number(lun).unwrap(), cdb, edtl)
        };
        if !immediate {
            self.cmd_sn = self.cmd_sn.wrapping_add(1);
        }
        self.queue(&Pdu::ScsiCommand(cmd));
        itt
    }

    /// Queues an immediate NOP-Out ping carrying `data`, which the target echoes in its
    /// NOP-In; returns its ITT.
    pub fn queue_ping(&mut self, data: Bytes) -> u32 {
        let itt = self.itt();
        let nop = NopOut {
            immediate: true,
            lun: LunField::default(),
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        };
        self.queue(&Pdu::NopOut(nop));
        itt
    }

    /// Sends the batch. With a write timeout set, a target that stops reading makes this
    /// fail with `WouldBlock`/`TimedOut` (part of the batch may have gone out).
    pub fn flush(&mut self) -> io::Result<()> {
        let out = self.out.split();
        self.stream.write_all(&out)
    }

    /// Gives up writes that make no progress for `wait` (`None`: block forever).
    pub fn set_write_timeout(&self, wait: Option<Duration>) {
        self.stream.set_write_timeout(wait).unwrap();
    }

    /// The next PDU within `wait`: `Ok(None)` when the target closed the connection,
    /// `Err(TimedOut)` when nothing came, other errors as the socket reports them (a reset).
    pub fn recv(&mut self, wait: Duration) -> io::Result<Option<Pdu>> {
        let deadline = Instant::now() + wait;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if let Some(pdu) = self
                .codec
                .decode(&mut self.rx)
                .map_err(|e| io::Error::other(format!("undecodable PDU: {e}")))?
            {
                if let Some(sn) = status_sn(&pdu) {
                    self.exp_stat_sn = sn.wrapping_add(1);
                }
                return Ok(Some(pdu));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::ErrorKind::TimedOut.into())
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Collects the Data-In and status of command `itt`, waiting at most 10 s for each PDU.
    /// Panics on anything else.
    pub fn outcome(&mut self, itt: u32) -> Outcome {
        self.outcomes(&[itt]).remove(&itt).unwrap()
    }

    /// Collects the Data-In and status of every command of `itts`, whose PDUs may interleave,
    /// waiting at most 10 s for each PDU. Panics on a PDU of any other task.
    pub fn outcomes(&mut self, itts: &[u32]) -> HashMap<u32, Outcome> {
        let mut data: HashMap<u32, Vec<u8>> = itts.iter().map(|&itt| (itt, Vec::new())).collect();
        let mut done = HashMap::new();
        while done.len() < itts.len() {
            let pdu = self.recv(Duration::from_secs(10)).expect("a PDU in time");
            let (itt, outcome) = match pdu {
                Some(Pdu::DataIn(d)) if data.contains_key(&d.itt) => {
                    let buffer = data.get_mut(&d.itt).unwrap();
                    buffer.extend_from_slice(&d.data);
                    let Some(status) = d.status else { continue };
                    let outcome = Outcome {
                        status,
                        data: std::mem::take(buffer),
                        overflow: d.overflow,
                        residual: d.residual_count,
                        sense: None,
                    };
                    (d.itt, outcome)
                }
                Some(Pdu::ScsiResponse(r)) if data.contains_key(&r.itt) => {
                    let outcome = Outcome {
                        status: r.status,
                        data: std::mem::take(data.get_mut(&r.itt).unwrap()),
                        overflow: r.overflow,
                        residual: r.residual_count,
                        sense: r.sense().map(|s| s.to_vec()),
                    };
                    (r.itt, outcome)
                }
                other => panic!("expected Data-In or a SCSI Response for {itts:?}, got {other:?}"),
            };
            assert!(
                done.insert(itt, outcome).is_none(),
                "a second status for {itt}"
            );
        }
        done
    }

    /// Sends TEST UNIT READY and waits for its answer, which takes the power-on UNIT
    /// ATTENTION every new session starts with.
    pub fn clear_unit_attention(&mut self) {
        let itt = self.queue_command(&[0; 6], Dir::None, 0, Bytes::new(), false);
        self.flush().unwrap();
        self.outcome(itt);
    }

    /// Reads and discards everything until the target closes the connection (`true`) or
    /// `wait` passes (`false`). A reset counts as closed.
    pub fn drain_until_closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
    }
}

/// The StatSN a PDU acknowledges, for ExpStatSN (status-bearing PDUs only).
fn status_sn(pdu: &Pdu) -> Option<u32> {
    match pdu {
        Pdu::ScsiResponse(r) => Some(r.stat_sn),
        Pdu::DataIn(d) if d.status.is_some() => Some(d.stat_sn),
        Pdu::NopIn(n) if n.itt != RESERVED_TAG => Some(n.stat_sn),
        Pdu::Reject(r) => Some(r.stat_sn),
        Pdu::TaskMgmtResponse(r) => Some(r.stat_sn),
        Pdu::LogoutResponse(r) => Some(r.stat_sn),
        Pdu::TextResponse(r) => Some(r.stat_sn),
        _ => None,
    }
}
