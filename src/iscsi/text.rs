//! Text Requests in full feature phase (RFC 7143 §11.10-11.11): SendTargets discovery
//! (Appendix C), answers to other keys, and responses or requests spread over several PDUs.
//!
//! [`TextExchange::handle`] turns one Text Request into one Text Response; the session fills
//! in StatSN, ExpCmdSN and MaxCmdSN before sending it.

use std::net::SocketAddr;

use bytes::Bytes;

use super::login::keys::{self, TextAssembler, TextSplitter, TextWriter};
use super::login::{SessionType, TargetDirectory};
use super::pdu::{TextRequest, TextResponse, RESERVED_TAG};

/// Smallest and largest MaxRecvDataSegmentLength an initiator may declare.
const MRDSL_RANGE: std::ops::RangeInclusive<u64> = 512..=0x00ff_ffff;

/// Keys that are only valid during login; a Text Request carrying one is answered `Reject`.
const LOGIN_ONLY_KEYS: &[&str] = &[
    "AuthMethod",
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "InitiatorName",
    "TargetName",
    "InitiatorAlias",
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "SessionType",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "IFMarker",
    "OFMarker",
    "IFMarkInt",
    "OFMarkInt",
    "TaskReporting",
    "iSCSIProtocolLevel",
    "RDMAExtensions",
];

/// What the connection knows that a Text Request may ask about.
#[derive(Clone, Copy)]
pub struct TextContext<'a> {
    /// The targets served.
    pub directory: &'a dyn TargetDirectory,
    /// Discovery or normal session.
    pub session_type: SessionType,
    /// The initiator of this session (SendTargets only lists targets it may log in to).
    pub initiator_name: &'a str,
    /// The target of a normal session (answers `SendTargets=` with an empty value).
    pub target_name: Option<&'a str>,
    /// Portals to report in TargetAddress, each with its target portal group tag: the one the
    /// connection came in on first, then the target's other portal groups.
    pub portals: &'a [(SocketAddr, u16)],
    /// The initiator's MaxRecvDataSegmentLength: longest data segment we may send.
    pub max_send_data_segment_length: u32,
}

/// Why a Text Request cannot be answered; the session answers with a Reject
/// (reason "protocol error" or "invalid PDU field").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The TTT matches no response we are sending, or the ITT changed mid-exchange.
    #[error("text request continues an exchange that does not exist")]
    UnknownTransfer,
    /// Data was sent while only an empty continuation request was allowed.
    #[error("text request carries data while the target is sending a continued response")]
    UnexpectedData,
    /// The text is malformed, repeats a key or exceeds the limits.
    #[error("malformed text: {0}")]
    Malformed(#[from] keys::KeyError),
}

/// The answer to one Text Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextReply {
    /// The Text Response (StatSN, ExpCmdSN and MaxCmdSN left 0 for the session to fill).
    pub response: TextResponse,
    /// The initiator declared a new MaxRecvDataSegmentLength: our new send limit.
    pub max_send_data_segment_length: Option<u32>,
}

/// A response still being sent in pieces.
#[derive(Debug)]
struct Pending {
    itt: u32,
    ttt: u32,
    text: TextSplitter,
}

/// Text Request state of one connection.
#[derive(Debug, Default)]
pub struct TextExchange {
    rx: TextAssembler,
    /// ITT and TTT of a request whose text is still arriving (C bit).
    receiving: Option<(u32, u32)>,
    pending: Option<Pending>,
    last_ttt: u32,
}

impl TextExchange {
    /// No exchange in progress.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_ttt(&mut self) -> u32 {
        self.last_ttt = self.last_ttt.wrapping_add(1);
        if self.last_ttt == RESERVED_TAG {
            self.last_ttt = 1;
        }
        self.last_ttt
    }

    /// Handles one Text Request.
    pub fn handle(
        &mut self,
        ctx: &TextContext<'_>,
        req: &TextRequest,
    ) -> Result<TextReply, TextError> {
        let limit = usize::try_from(ctx.max_send_data_segment_length)
            .unwrap_or(usize::MAX)
            .max(1);
        if req.ttt == RESERVED_TAG {
            // A fresh request abandons whatever was in progress (RFC 7143 §11.10.4); an
            // initiator continuing its own request without echoing our tag is tolerated.
            if !matches!(self.receiving, Some((itt, _)) if itt == req.itt) {
                self.pending = None;
                self.receiving = None;
                self.rx = TextAssembler::new();
            }
        } else if let Some(p) = &mut self.pending {
            if p.ttt != req.ttt || p.itt != req.itt {
                return Err(TextError::UnknownTransfer);
            }
            if !req.data.is_empty() {
                return Err(TextError::UnexpectedData);
            }
            let (chunk, more) = p.text.next_chunk(limit);
            let ttt = if more { p.ttt } else { RESERVED_TAG };
            if !more {
                self.pending = None;
            }
            return Ok(reply(req, !more, more, ttt, chunk, None));
        } else if self.receiving != Some((req.itt, req.ttt)) {
            return Err(TextError::UnknownTransfer);
        }

        let text = match self.rx.push(&req.data, req.continues) {
            Err(e) => {
                self.receiving = None;
                return Err(e.into());
            }
            Ok(None) => {
                // Ask for the rest of the request with an empty response and a transfer tag.
                let ttt = match self.receiving {
                    Some((_, ttt)) => ttt,
                    None => self.next_ttt(),
                };
                self.receiving = Some((req.itt, ttt));
                return Ok(reply(req, false, false, ttt, Bytes::new(), None));
            }
            Ok(Some(text)) => text,
        };
        self.receiving = None;
        let pairs = keys::parse(&text)?;
        let mut out = TextWriter::new();
        let mut new_limit = None;
        for (key, value) in &pairs {
            match key.as_str() {
                "SendTargets" => send_targets(ctx, value, &mut out),
                "MaxRecvDataSegmentLength" => {
                    // Declarative and allowed in full feature phase: no answer, new send limit.
                    match keys::parse_number(value).filter(|v| MRDSL_RANGE.contains(v)) {
                        Some(v) => new_limit = u32::try_from(v).ok(),
                        None => out.push(key, "Reject"),
                    }
                }
                k if LOGIN_ONLY_KEYS.contains(&k)
                    || k == "AuthMethod"
                    || k.starts_with("CHAP_") =>
                {
                    out.push(k, "Reject")
                }
                k => out.push(k, "NotUnderstood"),
            }
        }
        let limit = new_limit.map_or(limit, |l| l as usize);
        let mut text = TextSplitter::new(out.finish());
        let (chunk, more) = text.next_chunk(limit);
        if !more {
            return Ok(reply(req, true, false, RESERVED_TAG, chunk, new_limit));
        }
        let ttt = self.next_ttt();
        self.pending = Some(Pending {
            itt: req.itt,
            ttt,
            text,
        });
        Ok(reply(req, false, true, ttt, chunk, new_limit))
    }
}

fn reply(
    req: &TextRequest,
    is_final: bool,
    continues: bool,
    ttt: u32,
    data: Bytes,
    limit: Option<u32>,
) -> TextReply {
    TextReply {
        response: TextResponse {
            is_final,
            continues,
            lun: req.lun,
            itt: req.itt,
            ttt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data,
        },
        max_send_data_segment_length: limit,
    }
}

/// Formats a portal as `ip:port,tpgt`, with IPv6 in brackets and IPv4-mapped IPv6 addresses of
/// dual-stack sockets shown as plain IPv4.
pub fn target_address(addr: SocketAddr, tpgt: u16) -> String {
    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    format!("{addr},{tpgt}")
}

/// Answers `SendTargets=All`, `SendTargets=<name>` or (normal sessions) `SendTargets=`.
fn send_targets(ctx: &TextContext<'_>, value: &str, out: &mut TextWriter) {
    let visible: Vec<_> = match value {
        "All" => ctx.directory.targets(),
        "" => match (ctx.session_type, ctx.target_name) {
            (SessionType::Normal, Some(name)) => ctx.directory.target(name).into_iter().collect(),
            _ => return out.push("SendTargets", "Reject"),
        },
        name if name.starts_with("iqn.")
            || name.starts_with("eui.")
            || name.starts_with("naa.") =>
        {
            ctx.directory.target(name).into_iter().collect()
        }
        _ => return out.push("SendTargets", "Reject"),
    };
    for target in visible.into_iter().filter(|t| t.allows(ctx.initiator_name)) {
        out.push("TargetName", &target.name);
        for &(portal, tpgt) in ctx.portals {
            out.push("TargetAddress", &target_address(portal, tpgt));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::login::{LoginSettings, LoginTarget, StaticDirectory};
    use crate::iscsi::pdu::LunField;

    const INITIATOR: &str = "iqn.2026-11.test.vm-initiator:guest";

    fn dir() -> StaticDirectory {
        let mut private = LoginTarget::open("iqn.2026-11.test:private");
        private.allowed_initiators = vec!["iqn.2026-11.test:other".into()];
        StaticDirectory::new(
            LoginSettings::default(),
            [
                LoginTarget::open("iqn.2026-11.test:vm"),
                LoginTarget::open("iqn.2026-11.test:db"),
                private,
            ],
        )
    }

    fn ctx<'a>(d: &'a StaticDirectory, portals: &'a [(SocketAddr, u16)]) -> TextContext<'a> {
        TextContext {
            directory: d,
            session_type: SessionType::Discovery,
            initiator_name: INITIATOR,
            target_name: None,
            portals,
            max_send_data_segment_length: 8192,
        }
    }

    fn req(itt: u32, ttt: u32, data: &[u8]) -> TextRequest {
        TextRequest {
            immediate: true,
            is_final: true,
            continues: false,
            lun: LunField::default(),
            itt,
            ttt,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::copy_from_slice(data),
        }
    }

    /// 40 open targets, whose SendTargets=All answer takes several 512-byte PDUs.
    fn forty_targets() -> StaticDirectory {
        let targets: Vec<LoginTarget> = (0..40)
            .map(|i| LoginTarget::open(format!("iqn.2026-11.test:disk-{i:03}")))
            .collect();
        StaticDirectory::new(LoginSettings::default(), targets)
    }

    /// A new exchange that was sent SendTargets=All (ITT 9) in `c`, and the first PDU of its
    /// answer.
    fn send_targets_all(c: &TextContext<'_>) -> (TextExchange, TextResponse) {
        let mut ex = TextExchange::new();
        let first = ex
            .handle(c, &req(9, RESERVED_TAG, b"SendTargets=All\0"))
            .expect("ok")
            .response;
        (ex, first)
    }

    fn portal() -> Vec<(SocketAddr, u16)> {
        vec![("127.0.0.1:13260".parse().expect("addr"), 1)]
    }

    #[test]
    fn send_targets_all_as_linux_sees_it() {
        let d = dir();
        let p = portal();
        let r = TextExchange::new()
            .handle(&ctx(&d, &p), &req(1, RESERVED_TAG, b"SendTargets=All\0"))
            .expect("ok");
        let rsp = r.response;
        assert!(rsp.is_final && !rsp.continues);
        assert_eq!((rsp.itt, rsp.ttt), (1, RESERVED_TAG));
        assert_eq!(
            &rsp.data[..],
            &b"TargetName=iqn.2026-11.test:db\0TargetAddress=127.0.0.1:13260,1\0\
               TargetName=iqn.2026-11.test:vm\0TargetAddress=127.0.0.1:13260,1\0"[..]
        );
        assert_eq!(r.max_send_data_segment_length, None);
    }

    #[test]
    fn send_targets_by_name_and_for_the_current_target() {
        let d = dir();
        let p: Vec<(SocketAddr, u16)> = vec![
            ("[fe80::1]:3260".parse().expect("v6"), 1),
            ("[::ffff:10.0.0.2]:3260".parse().expect("mapped"), 2),
        ];
        let mut ex = TextExchange::new();
        let r = ex
            .handle(
                &ctx(&d, &p),
                &req(2, RESERVED_TAG, b"SendTargets=iqn.2026-11.test:vm\0"),
            )
            .expect("ok");
        assert_eq!(
            &r.response.data[..],
            &b"TargetName=iqn.2026-11.test:vm\0TargetAddress=[fe80::1]:3260,1\0TargetAddress=10.0.0.2:3260,2\0"[..]
        );
        // A target the initiator may not see, or that does not exist, yields nothing.
        for name in ["iqn.2026-11.test:private", "iqn.2026-11.test:nope"] {
            let r = ex
                .handle(
                    &ctx(&d, &p),
                    &req(3, RESERVED_TAG, format!("SendTargets={name}\0").as_bytes()),
                )
                .expect("ok");
            assert!(r.response.data.is_empty(), "{name}");
        }
        let mut c = ctx(&d, &p);
        c.session_type = SessionType::Normal;
        c.target_name = Some("iqn.2026-11.test:db");
        let r = ex
            .handle(&c, &req(4, RESERVED_TAG, b"SendTargets=\0"))
            .expect("ok");
        assert!(r
            .response
            .data
            .starts_with(b"TargetName=iqn.2026-11.test:db\0"));
    }

    #[test]
    fn invalid_send_targets_requests_get_no_target_list() {
        // The cases libiscsi's SendTargets test sends: wrong key, wrong values, wrong case.
        let d = dir();
        let p = portal();
        let mut ex = TextExchange::new();
        for (text, expect) in [
            (
                &b"SendTargetsPlease=All\0"[..],
                &b"SendTargetsPlease=NotUnderstood\0"[..],
            ),
            (b"SendTargets=Alle\0", b"SendTargets=Reject\0"),
            (b"SendTargets=A\0", b"SendTargets=Reject\0"),
            (b"sENDtARGETS=aLL\0", b"sENDtARGETS=NotUnderstood\0"),
            (b"SendTargets=\0", b"SendTargets=Reject\0"),
        ] {
            let r = ex
                .handle(&ctx(&d, &p), &req(5, RESERVED_TAG, text))
                .expect("answered");
            assert_eq!(&r.response.data[..], expect);
        }
    }

    #[test]
    fn other_keys_in_full_feature_phase() {
        let d = dir();
        let p = portal();
        let mut ex = TextExchange::new();
        let r = ex
            .handle(&ctx(&d, &p), &req(6, RESERVED_TAG, b"MaxBurstLength=4096\0X-com.example.a=1\0CHAP_A=5\0MaxRecvDataSegmentLength=65536\0"))
            .expect("ok");
        assert_eq!(
            &r.response.data[..],
            &b"MaxBurstLength=Reject\0X-com.example.a=NotUnderstood\0CHAP_A=Reject\0"[..]
        );
        assert_eq!(r.max_send_data_segment_length, Some(65536));
        let r = ex
            .handle(
                &ctx(&d, &p),
                &req(7, RESERVED_TAG, b"MaxRecvDataSegmentLength=1\0"),
            )
            .expect("ok");
        assert_eq!(
            &r.response.data[..],
            &b"MaxRecvDataSegmentLength=Reject\0"[..]
        );
        assert_eq!(r.max_send_data_segment_length, None);
        assert!(matches!(
            ex.handle(&ctx(&d, &p), &req(8, RESERVED_TAG, b"A=1\0A=2\0")),
            Err(TextError::Malformed(keys::KeyError::DuplicateKey(_)))
        ));
    }

    #[test]
    fn long_response_continues_with_a_transfer_tag() {
        let d = forty_targets();
        let p = portal();
        let mut c = ctx(&d, &p);
        c.max_send_data_segment_length = 512;
        let (mut ex, first) = send_targets_all(&c);
        assert!(!first.is_final && first.continues);
        assert_ne!(first.ttt, RESERVED_TAG);
        assert_eq!(first.data.len(), 512);
        let mut all = first.data.to_vec();
        let mut ttt = first.ttt;
        loop {
            let r = ex
                .handle(&c, &req(9, ttt, b""))
                .expect("continuation")
                .response;
            assert!(r.data.len() <= 512);
            all.extend_from_slice(&r.data);
            if r.is_final {
                assert!(!r.continues);
                assert_eq!(r.ttt, RESERVED_TAG);
                break;
            }
            assert_eq!(r.ttt, ttt, "same tag throughout");
            ttt = r.ttt;
        }
        let kv = keys::parse_entries(&all).expect("parses");
        assert_eq!(kv.iter().filter(|(k, _)| k == "TargetName").count(), 40);
        // Continuing a finished exchange is a protocol error.
        assert_eq!(
            ex.handle(&c, &req(9, ttt, b"")),
            Err(TextError::UnknownTransfer)
        );
    }

    #[test]
    fn continuation_errors_and_reset() {
        let d = forty_targets();
        let p = portal();
        let mut c = ctx(&d, &p);
        c.max_send_data_segment_length = 512;
        let (mut ex, first) = send_targets_all(&c);
        assert_eq!(
            ex.handle(&c, &req(9, first.ttt.wrapping_add(1), b"")),
            Err(TextError::UnknownTransfer)
        );
        assert_eq!(
            ex.handle(&c, &req(10, first.ttt, b"")),
            Err(TextError::UnknownTransfer)
        );
        assert_eq!(
            ex.handle(&c, &req(9, first.ttt, b"A=1\0")),
            Err(TextError::UnexpectedData)
        );
        // A new request (reserved TTT) abandons the old exchange.
        let r = ex
            .handle(&c, &req(11, RESERVED_TAG, b"X-a=1\0"))
            .expect("fresh")
            .response;
        assert!(r.is_final);
        assert_eq!(
            ex.handle(&c, &req(9, first.ttt, b"")),
            Err(TextError::UnknownTransfer)
        );
    }

    #[test]
    fn request_spread_over_pdus() {
        let d = dir();
        let p = portal();
        let mut ex = TextExchange::new();
        let mut part = req(12, RESERVED_TAG, b"SendTar");
        part.continues = true;
        part.is_final = false;
        let ack = ex.handle(&ctx(&d, &p), &part).expect("ack").response;
        assert!(!ack.is_final && !ack.continues && ack.data.is_empty());
        assert_ne!(ack.ttt, RESERVED_TAG);
        let rest = ex
            .handle(
                &ctx(&d, &p),
                &req(12, ack.ttt, b"gets=iqn.2026-11.test:vm\0"),
            )
            .expect("answer")
            .response;
        assert!(rest.is_final);
        assert!(rest.data.starts_with(b"TargetName=iqn.2026-11.test:vm\0"));
        // Continuing with a tag we never handed out fails.
        assert_eq!(
            ex.handle(&ctx(&d, &p), &req(12, 0x1234, b"x")),
            Err(TextError::UnknownTransfer)
        );
    }

    #[test]
    fn address_formatting() {
        assert_eq!(
            target_address("192.168.1.5:3260".parse().expect("v4"), 1),
            "192.168.1.5:3260,1"
        );
        assert_eq!(
            target_address("[2001:db8::7]:860".parse().expect("v6"), 3),
            "[2001:db8::7]:860,3"
        );
        assert_eq!(
            target_address("[::ffff:127.0.0.1]:3260".parse().expect("mapped"), 1),
            "127.0.0.1:3260,1"
        );
    }
}
