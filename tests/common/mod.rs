//! A small iSCSI initiator over the crate's own PDU codec, and helpers to run the real server
//! in-process on 127.0.0.1 with a free port. It builds on `support` (login text, test data),
//! which every test crate with `mod common` also declares.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use overlaybd_target::config::{Config, LunSpec, TargetConfig, Tuning};
use overlaybd_target::daemon::{Daemon, DaemonOptions};
use overlaybd_target::iscsi::pdu::{
    DataOut, Isid, LoginRequest, LoginResponse, LogoutReason, LogoutRequest, LogoutResponseCode,
    LunField, Pdu, PduCodec, R2t, ScsiCommand, TaskMgmtRequest, TmfFunction, TmfResponseCode,
    RESERVED_TAG,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The target name the tests serve.
pub const IQN: &str = "iqn.2026-11.io.overlaybd:test";
/// How long the initiator waits for any one PDU.
pub const PDU_WAIT: Duration = Duration::from_secs(10);

/// One target [`IQN`] serving `luns` (backing strings) with `tuning`, on a free loopback port.
pub fn config(luns: &[&str], tuning: Tuning) -> Config {
    let luns = luns.iter().map(|l| LunSpec::parse(l).unwrap()).collect();
    Config {
        tuning,
        ..Config::single(
            vec!["127.0.0.1:0".parse().unwrap()],
            TargetConfig::open(IQN, luns),
        )
    }
}

/// A running in-process server.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Every portal, in portal group order (`addr` is the first).
    pub addrs: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl TestServer {
    /// Serves `luns` (backing strings) as target [`IQN`] with `tuning`.
    pub async fn start(luns: &[&str], tuning: Tuning) -> TestServer {
        TestServer::start_config(config(luns, tuning)).await
    }

    /// Serves `config` (its portals are replaced by one free loopback port).
    pub async fn start_config(config: Config) -> TestServer {
        TestServer::start_portals(config, 1).await
    }

    /// Serves `config` on `portals` free loopback ports, portal groups 1 to `portals`.
    pub async fn start_portals(config: Config, portals: usize) -> TestServer {
        TestServer::start_with(config, portals, DaemonOptions::default()).await
    }

    /// Serves `config` on `portals` free loopback ports with daemon `options` (a state file).
    pub async fn start_with(
        mut config: Config,
        portals: usize,
        options: DaemonOptions,
    ) -> TestServer {
        config.portals = vec!["127.0.0.1:0".parse().unwrap(); portals];
        config.validate().unwrap();
        let daemon = Daemon::start(config, options).await.unwrap();
        let addrs = daemon.local_addrs();
        let addr = addrs[0];
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon.run(async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            addrs,
            stop: Some(stop),
            task,
        }
    }

    /// Triggers the graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Login keys a test may override.
pub struct LoginKeys {
    pub initiator: String,
    pub isid: [u8; 6],
    pub max_recv_data_segment_length: u32,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    /// Offer only CRC32C header and data digests.
    pub crc32c: bool,
    /// TSIH of the Login Request (0: a new session).
    pub tsih: u16,
}

impl Default for LoginKeys {
    fn default() -> Self {
        LoginKeys {
            initiator: "iqn.2026-11.io.overlaybd:test-initiator".into(),
            isid: [0x00, 0x02, 0x3d, 0, 0, 1],
            max_recv_data_segment_length: 4096,
            initial_r2t: true,
            first_burst: 8192,
            max_burst: 65536,
            crc32c: false,
            tsih: 0,
        }
    }
}

/// One connection's initiator side.
pub struct Initiator {
    stream: TcpStream,
    codec: PduCodec,
    buf: BytesMut,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    next_itt: u32,
    pub tsih: u16,
    /// Negotiated values as the target answered them.
    pub keys: Vec<(String, String)>,
}

fn text(pairs: &[(&str, String)]) -> Bytes {
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    crate::support::raw_initiator::text(&pairs).into()
}

fn parse_text(data: &[u8]) -> Vec<(String, String)> {
    data.split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let s = String::from_utf8_lossy(kv);
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

impl Initiator {
    pub async fn connect(addr: SocketAddr) -> Initiator {
        Self::over(TcpStream::connect(addr).await.unwrap())
    }

    /// Connects to `addr` and logs in to [`IQN`] with `keys`, as [`Initiator::login_normal`].
    pub async fn logged_in(addr: SocketAddr, keys: &LoginKeys) -> Initiator {
        let mut ini = Self::connect(addr).await;
        ini.login_normal(IQN, keys).await;
        ini
    }

    /// Connects to `addr` from the loopback address `local` (e.g. 127.0.0.2), so the target
    /// sees a source address other than the one attack connections come from.
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Initiator {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        Self::over(socket.connect(addr).await.unwrap())
    }

    fn over(stream: TcpStream) -> Initiator {
        stream.set_nodelay(true).unwrap();
        Initiator {
            stream,
            codec: PduCodec::new(),
            buf: BytesMut::new(),
            cmd_sn: 0,
            exp_stat_sn: 0,
            next_itt: 1,
            tsih: 0,
            keys: vec![],
        }
    }

    /// Encodes `pdu` with the connection's digests, lets `tamper` change the wire bytes, and
    /// sends them.
    pub async fn send_tampered(&mut self, pdu: &Pdu, tamper: impl FnOnce(&mut [u8])) {
        let mut out = BytesMut::new();
        self.codec.encode_into(pdu, &mut out).unwrap();
        tamper(&mut out);
        self.stream.write_all(&out).await.unwrap();
    }

    pub async fn send(&mut self, pdu: &Pdu) {
        let mut out = BytesMut::new();
        self.codec.encode_into(pdu, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next PDU, or `None` when the target closed the connection.
    pub async fn recv(&mut self) -> Option<Pdu> {
        self.recv_within(PDU_WAIT)
            .await
            .expect("no PDU from the target in time")
    }

    /// Like [`Initiator::recv`], but `Err` on timeout.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Pdu>, ()> {
        let fut = async {
            loop {
                if let Some(pdu) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(pdu);
                }
                let n = self.stream.read_buf(&mut self.buf).await.unwrap_or(0);
                if n == 0 {
                    return None;
                }
            }
        };
        tokio::time::timeout(wait, fut).await.map_err(|_| ())
    }

    pub fn itt(&mut self) -> u32 {
        self.next_itt += 1;
        self.next_itt
    }

    /// A one-round-trip login (operational stage straight to full feature, like open-iscsi
    /// without CHAP). `target` None logs in to a discovery session.
    pub async fn login(&mut self, target: Option<&str>, keys: &LoginKeys) -> LoginResponse {
        let digest = if keys.crc32c { "CRC32C" } else { "None" };
        let mut pairs = vec![("InitiatorName", keys.initiator.clone())];
        match target {
            Some(t) => {
                pairs.push(("TargetName", t.to_string()));
                pairs.push(("SessionType", "Normal".into()));
            }
            None => pairs.push(("SessionType", "Discovery".into())),
        }
        pairs.extend([
            ("HeaderDigest", digest.into()),
            ("DataDigest", digest.into()),
            ("ErrorRecoveryLevel", "0".into()),
            (
                "MaxRecvDataSegmentLength",
                keys.max_recv_data_segment_length.to_string(),
            ),
        ]);
        if target.is_some() {
            pairs.extend([
                (
                    "InitialR2T",
                    if keys.initial_r2t { "Yes" } else { "No" }.into(),
                ),
                ("ImmediateData", "Yes".into()),
                ("FirstBurstLength", keys.first_burst.to_string()),
                ("MaxBurstLength", keys.max_burst.to_string()),
                ("MaxOutstandingR2T", "1".into()),
                ("MaxConnections", "1".into()),
            ]);
        }
        let req = LoginRequest {
            tsih: keys.tsih,
            cmd_sn: self.cmd_sn,
            ..LoginRequest::operational(Isid(keys.isid), text(&pairs))
        };
        self.send(&Pdu::LoginRequest(req)).await;
        match self.recv().await {
            Some(Pdu::LoginResponse(rsp)) => {
                self.exp_stat_sn = rsp.stat_sn.wrapping_add(1);
                self.tsih = rsp.tsih;
                self.keys = parse_text(&rsp.data);
                if rsp.status == overlaybd_target::iscsi::pdu::LoginStatus::SUCCESS {
                    // Digests apply from the first PDU after the final Login Response.
                    self.codec
                        .set_digests(overlaybd_target::iscsi::pdu::Digests {
                            header: self.key("HeaderDigest") == Some("CRC32C"),
                            data: self.key("DataDigest") == Some("CRC32C"),
                        });
                }
                rsp
            }
            other => panic!("expected a Login Response, got {other:?}"),
        }
    }

    /// Logs in to `target` and consumes the power-on UNIT ATTENTION with TEST UNIT READY, as
    /// a real initiator's scan does.
    pub async fn login_normal(&mut self, target: &str, keys: &LoginKeys) -> LoginResponse {
        let rsp = self.login(Some(target), keys).await;
        assert_eq!(
            rsp.status,
            overlaybd_target::iscsi::pdu::LoginStatus::SUCCESS
        );
        self.clear_unit_attention(0).await;
        rsp
    }

    /// Sends TEST UNIT READY to `lun`, accepting the one power-on UNIT ATTENTION.
    pub async fn clear_unit_attention(&mut self, lun: u64) {
        let itt = self
            .command(lun, &[0; 6], false, false, 0, Bytes::new(), true)
            .await;
        let (status, _, sense) = self.finish_read(itt).await;
        if status != 0 {
            let sense = sense.expect("CHECK CONDITION carries sense");
            assert_eq!(
                (status, sense[2] & 0x0f, sense[12]),
                (2, 6, 0x29),
                "expected a power-on UA"
            );
        }
    }

    /// The value the target answered for `key`.
    pub fn key(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Logs out (close session) and returns the response code.
    pub async fn logout(&mut self) -> LogoutResponseCode {
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CLOSE_SESSION,
            itt: self.itt(),
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send(&Pdu::LogoutRequest(req)).await;
        match self.recv().await {
            Some(Pdu::LogoutResponse(rsp)) => rsp.response,
            other => panic!("expected a Logout Response, got {other:?}"),
        }
    }

    /// Sends a SCSI command; `data` is immediate data.
    // Mirrors the SCSI Command PDU's fields (too_many_arguments is allowed in Cargo.toml).
    pub async fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        read: bool,
        write: bool,
        edtl: u32,
        data: Bytes,
        fin: bool,
    ) -> u32 {
        let itt = self.itt();
        let cmd = ScsiCommand {
            is_final: fin,
            read,
            write,
            itt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
            ..ScsiCommand::new(LunField::from_number(lun).unwrap(), cdb, edtl)
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&Pdu::ScsiCommand(cmd)).await;
        itt
    }

    /// Collects Data-In until the status; returns (status, data, sense).
    pub async fn finish_read(&mut self, itt: u32) -> (u8, Bytes, Option<Bytes>) {
        let mut data = BytesMut::new();
        let mut next_sn = 0;
        loop {
            match self.recv().await {
                Some(Pdu::DataIn(d)) => {
                    assert_eq!(d.itt, itt);
                    assert_eq!(d.data_sn, next_sn, "DataSN in order");
                    assert_eq!(d.buffer_offset as usize, data.len(), "offsets contiguous");
                    next_sn += 1;
                    data.extend_from_slice(&d.data);
                    if let Some(status) = d.status {
                        self.exp_stat_sn = d.stat_sn.wrapping_add(1);
                        return (status, data.freeze(), None);
                    }
                }
                Some(Pdu::ScsiResponse(r)) => {
                    assert_eq!(r.itt, itt);
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    return (r.status, data.freeze(), r.sense());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends READ(10) of `blocks` 512-byte blocks at `lba` and returns its ITT; the answer is
    /// for [`Initiator::finish_read`].
    pub async fn start_read10(&mut self, lun: u64, lba: u32, blocks: u16) -> u32 {
        let cdb = crate::support::raw_initiator::read10(lba, blocks);
        self.command(
            lun,
            &cdb,
            true,
            false,
            u32::from(blocks) * 512,
            Bytes::new(),
            true,
        )
        .await
    }

    pub async fn read10(&mut self, lun: u64, lba: u32, blocks: u16) -> Bytes {
        let itt = self.start_read10(lun, lba, blocks).await;
        let (status, data, sense) = self.finish_read(itt).await;
        assert_eq!(status, 0, "READ(10) failed: {sense:?}");
        data
    }

    /// WRITE(10) of `data`, sending `immediate` bytes in the command, answering R2Ts with
    /// Data-Out PDUs of `segment` bytes. Returns (status, sense).
    pub async fn write10(
        &mut self,
        lun: u64,
        lba: u32,
        data: &Bytes,
        immediate: usize,
        segment: usize,
    ) -> (u8, Option<Bytes>) {
        let blocks = (data.len() / 512) as u16;
        let cdb = crate::support::raw_initiator::write10(lba, blocks);
        self.write_command(lun, &cdb, data, immediate, segment)
            .await
    }

    /// Any command with Data-Out `data`, sent like [`Initiator::write10`]. Returns (status, sense).
    pub async fn write_command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data: &Bytes,
        immediate: usize,
        segment: usize,
    ) -> (u8, Option<Bytes>) {
        let imm = data.slice(..immediate.min(data.len()));
        let itt = self
            .command(lun, cdb, false, true, data.len() as u32, imm, true)
            .await;
        loop {
            match self.recv().await {
                Some(Pdu::R2t(r2t)) => {
                    assert_eq!(r2t.itt, itt);
                    let end = (r2t.buffer_offset + r2t.desired_length) as usize;
                    let mut offset = r2t.buffer_offset as usize;
                    let mut sn = 0;
                    while offset < end {
                        let n = segment.min(end - offset);
                        let out = DataOut {
                            is_final: offset + n == end,
                            lun: LunField::from_number(lun).unwrap(),
                            itt,
                            ttt: r2t.ttt,
                            exp_stat_sn: self.exp_stat_sn,
                            data_sn: sn,
                            buffer_offset: offset as u32,
                            data: data.slice(offset..offset + n),
                        };
                        self.send(&Pdu::DataOut(out)).await;
                        offset += n;
                        sn += 1;
                    }
                }
                Some(Pdu::ScsiResponse(r)) => {
                    assert_eq!(r.itt, itt);
                    self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                    return (r.status, r.sense());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Sends a task management request (immediate, LUN 0) and returns the response code.
    pub async fn task_management(&mut self, function: TmfFunction) -> TmfResponseCode {
        let req = TaskMgmtRequest {
            immediate: true,
            function,
            lun: LunField::from_number(0).unwrap(),
            itt: self.itt(),
            referenced_task_tag: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        };
        self.send(&Pdu::TaskMgmtRequest(req)).await;
        match self.recv().await {
            Some(Pdu::TaskMgmtResponse(rsp)) => rsp.response,
            other => panic!("expected a TMF response, got {other:?}"),
        }
    }

    /// Starts a WRITE(10) on LUN 0 without immediate data and returns its ITT and first R2T.
    pub async fn start_write(&mut self, lba: u32, blocks: u16) -> (u32, R2t) {
        let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let len = u32::from(blocks) * 512;
        let itt = self
            .command(0, &cdb, false, true, len, Bytes::new(), true)
            .await;
        match self.recv().await {
            Some(Pdu::R2t(r2t)) => (itt, r2t),
            other => panic!("expected an R2T, got {other:?}"),
        }
    }

    /// The single Data-Out PDU answering `r2t` with `data` (LUN 0).
    pub fn answer(&self, r2t: &R2t, data: Bytes) -> Pdu {
        Pdu::DataOut(DataOut {
            is_final: true,
            lun: LunField::from_number(0).unwrap(),
            itt: r2t.itt,
            ttt: r2t.ttt,
            exp_stat_sn: self.exp_stat_sn,
            data_sn: 0,
            buffer_offset: r2t.buffer_offset,
            data,
        })
    }

    /// Sends unsolicited Data-Out for `itt` (TTT reserved).
    pub async fn unsolicited(
        &mut self,
        itt: u32,
        data_sn: u32,
        offset: u32,
        data: Bytes,
        fin: bool,
    ) {
        let out = DataOut {
            is_final: fin,
            lun: LunField::from_number(0).unwrap(),
            itt,
            ttt: RESERVED_TAG,
            exp_stat_sn: self.exp_stat_sn,
            data_sn,
            buffer_offset: offset,
            data,
        };
        self.send(&Pdu::DataOut(out)).await;
    }
}

/// Deterministic pseudo-random bytes (the same generator the blob servers use).
pub fn pattern(len: usize, seed: u32) -> Bytes {
    crate::support::http_server::make_blob(len, seed).into()
}
