//! Operational parameters (RFC 7143 §13) and the rule that answers each key the initiator
//! offers: list keys pick from the offer, numbers take the minimum or maximum, booleans OR or
//! AND, declarations are recorded.

use super::config::{DigestPolicy, LoginSettings};
use super::keys::{format_bool, list_items, parse_bool, parse_number};
use crate::iscsi::pdu::Digests;

/// Smallest and largest data segment / burst lengths (RFC 7143 §13.12-13.14).
const MIN_LENGTH: u64 = 512;
const MAX_LENGTH: u64 = 0x00ff_ffff;

/// The negotiated parameters of a session and connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// HeaderDigest=CRC32C in force after login.
    pub header_digest: bool,
    /// DataDigest=CRC32C in force after login.
    pub data_digest: bool,
    /// Largest data segment we accept: what we declared, or 8192 if we never got to declare it.
    pub max_recv_data_segment_length: u32,
    /// Largest data segment we may send: the initiator's MaxRecvDataSegmentLength (default 8192).
    pub max_send_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength (never above MaxBurstLength).
    pub first_burst_length: u32,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait (seconds).
    pub default_time2wait: u32,
    /// DefaultTime2Retain (seconds).
    pub default_time2retain: u32,
    /// ErrorRecoveryLevel (always 0: we support no more).
    pub error_recovery_level: u32,
    /// MaxConnections (always 1).
    pub max_connections: u32,
}

impl Default for SessionParams {
    /// The RFC 7143 defaults, in force for every key not negotiated.
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: 8192,
            max_send_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            max_outstanding_r2t: 1,
            initial_r2t: true,
            immediate_data: true,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

impl SessionParams {
    /// The digest settings for the PDU codec once login has completed.
    pub fn digests(&self) -> Digests {
        Digests {
            header: self.header_digest,
            data: self.data_digest,
        }
    }
}

/// How a key offered by the initiator is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Reply `key=value`.
    Value(String),
    /// A declaration that needs no reply.
    Silent,
    /// Not an operational key: the caller handles it.
    NotOperational,
}

/// Keys that are meaningless in a discovery session (RFC 7143 §13: "Irrelevant when:
/// SessionType=Discovery").
const IRRELEVANT_IN_DISCOVERY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

fn reject() -> Answer {
    Answer::Value("Reject".into())
}

fn irrelevant() -> Answer {
    Answer::Value("Irrelevant".into())
}

/// Picks the first of our preferred digest values that the initiator offered.
fn negotiate_digest(offer: &str, policy: DigestPolicy, out: &mut bool) -> Answer {
    let offered: Vec<&str> = list_items(offer).collect();
    if offered.iter().any(|v| v.is_empty()) {
        return reject();
    }
    match policy.preference().iter().find(|p| offered.contains(p)) {
        Some(&choice) => {
            *out = choice == "CRC32C";
            Answer::Value(choice.into())
        }
        // Nothing acceptable was offered: answering a value outside the offer is forbidden.
        None => reject(),
    }
}

/// Parses a number within `[min, max]`.
fn number_in(value: &str, min: u64, max: u64) -> Option<u32> {
    parse_number(value)
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| u32::try_from(n).ok())
}

/// Answers one operational key and records the result in `params`.
pub(crate) fn answer(
    key: &str,
    value: &str,
    discovery: bool,
    settings: &LoginSettings,
    params: &mut SessionParams,
) -> Answer {
    if discovery && IRRELEVANT_IN_DISCOVERY.contains(&key) {
        return irrelevant();
    }
    let numeric =
        |min: u64, max: u64, ours: u32, pick: fn(u32, u32) -> u32, slot: &mut u32| match number_in(
            value, min, max,
        ) {
            Some(v) => {
                *slot = pick(v, ours);
                Answer::Value(slot.to_string())
            }
            None => reject(),
        };
    let boolean = |ours: bool, or: bool, slot: &mut bool| match parse_bool(value) {
        Some(v) => {
            *slot = if or { v || ours } else { v && ours };
            Answer::Value(format_bool(*slot).into())
        }
        None => reject(),
    };
    match key {
        "HeaderDigest" => {
            negotiate_digest(value, settings.header_digest, &mut params.header_digest)
        }
        "DataDigest" => negotiate_digest(value, settings.data_digest, &mut params.data_digest),
        "MaxRecvDataSegmentLength" => match number_in(value, MIN_LENGTH, MAX_LENGTH) {
            Some(v) => {
                params.max_send_data_segment_length = v;
                Answer::Silent
            }
            None => reject(),
        },
        "MaxBurstLength" => numeric(
            MIN_LENGTH,
            MAX_LENGTH,
            settings.max_burst_length,
            u32::min,
            &mut params.max_burst_length,
        ),
        "FirstBurstLength" => numeric(
            MIN_LENGTH,
            MAX_LENGTH,
            settings.first_burst_length,
            u32::min,
            &mut params.first_burst_length,
        ),
        "MaxOutstandingR2T" => numeric(
            1,
            65535,
            settings.max_outstanding_r2t,
            u32::min,
            &mut params.max_outstanding_r2t,
        ),
        "DefaultTime2Wait" => numeric(
            0,
            3600,
            settings.default_time2wait,
            u32::max,
            &mut params.default_time2wait,
        ),
        "DefaultTime2Retain" => numeric(
            0,
            3600,
            settings.default_time2retain,
            u32::min,
            &mut params.default_time2retain,
        ),
        "ErrorRecoveryLevel" => numeric(0, 2, 0, u32::min, &mut params.error_recovery_level),
        "MaxConnections" => numeric(1, 65535, 1, u32::min, &mut params.max_connections),
        "InitialR2T" => boolean(settings.initial_r2t, true, &mut params.initial_r2t),
        "ImmediateData" => boolean(settings.immediate_data, false, &mut params.immediate_data),
        // We need both in order; with OR our "Yes" always wins.
        "DataPDUInOrder" => boolean(true, true, &mut params.data_pdu_in_order),
        "DataSequenceInOrder" => boolean(true, true, &mut params.data_sequence_in_order),
        // Markers are obsolete (RFC 7143 §13.25); "No" is the answer every initiator accepts.
        "IFMarker" | "OFMarker" => match parse_bool(value) {
            Some(_) => Answer::Value("No".into()),
            None => reject(),
        },
        "IFMarkInt" | "OFMarkInt" => reject(),
        // iSER is not offered, so its keys are answered as such.
        "RDMAExtensions" => match parse_bool(value) {
            Some(_) => Answer::Value("No".into()),
            None => reject(),
        },
        "InitiatorRecvDataSegmentLength" | "TargetRecvDataSegmentLength" => irrelevant(),
        "TaskReporting" => {
            if list_items(value).any(|v| v == "RFC3720") {
                Answer::Value("RFC3720".into())
            } else {
                reject()
            }
        }
        "iSCSIProtocolLevel" => match number_in(value, 0, 31) {
            // Level 1 is RFC 7143 itself; we claim nothing beyond it.
            Some(v) => Answer::Value(v.min(1).to_string()),
            None => reject(),
        },
        _ => Answer::NotOperational,
    }
}

/// Enforces relations between results after a round of answers.
pub(crate) fn settle(params: &mut SessionParams) {
    params.first_burst_length = params.first_burst_length.min(params.max_burst_length);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(key: &str, value: &str, settings: &LoginSettings) -> (Answer, SessionParams) {
        let mut p = SessionParams::default();
        let a = answer(key, value, false, settings, &mut p);
        (a, p)
    }

    fn val(s: &str) -> Answer {
        Answer::Value(s.into())
    }

    #[test]
    fn digests_pick_only_offered_values_by_our_preference() {
        let mut s = LoginSettings::default();
        assert_eq!(run("HeaderDigest", "CRC32C,None", &s).0, val("None"));
        let (a, p) = run("HeaderDigest", "CRC32C", &s);
        assert_eq!((a, p.header_digest), (val("CRC32C"), true));
        s.data_digest = DigestPolicy::PreferCrc32c;
        let (a, p) = run("DataDigest", "None,CRC32C", &s);
        assert_eq!((a, p.data_digest), (val("CRC32C"), true));
        s.header_digest = DigestPolicy::NoneOnly;
        assert_eq!(run("HeaderDigest", "CRC32C", &s).0, val("Reject"));
        s.header_digest = DigestPolicy::Crc32cOnly;
        assert_eq!(run("HeaderDigest", "None", &s).0, val("Reject"));
        assert_eq!(run("HeaderDigest", "MD5,CRC32C", &s).0, val("CRC32C"));
        assert_eq!(run("HeaderDigest", "", &s).0, val("Reject"));
    }

    #[test]
    fn numeric_minimum_and_maximum() {
        let s = LoginSettings::default();
        let (a, p) = run("MaxBurstLength", "16776192", &s);
        assert_eq!((a, p.max_burst_length), (val("1048576"), 1 << 20));
        assert_eq!(run("MaxBurstLength", "65536", &s).0, val("65536"));
        assert_eq!(run("FirstBurstLength", "262144", &s).0, val("262144"));
        assert_eq!(run("FirstBurstLength", "1048576", &s).0, val("262144"));
        assert_eq!(run("MaxOutstandingR2T", "8", &s).0, val("1"));
        assert_eq!(run("DefaultTime2Wait", "0", &s).0, val("2"), "maximum");
        assert_eq!(run("DefaultTime2Wait", "5", &s).0, val("5"));
        assert_eq!(run("DefaultTime2Retain", "20", &s).0, val("0"), "minimum");
        assert_eq!(run("ErrorRecoveryLevel", "2", &s).0, val("0"));
        assert_eq!(run("MaxConnections", "4", &s).0, val("1"));
        assert_eq!(run("MaxBurstLength", "0x100000", &s).0, val("1048576"));
    }

    #[test]
    fn out_of_range_and_malformed_numbers_are_rejected() {
        let s = LoginSettings::default();
        for (k, v) in [
            ("MaxBurstLength", "511"),
            ("MaxBurstLength", "16777216"),
            ("FirstBurstLength", "abc"),
            ("MaxOutstandingR2T", "0"),
            ("DefaultTime2Wait", "3601"),
            ("ErrorRecoveryLevel", "3"),
            ("MaxConnections", "0"),
            ("MaxRecvDataSegmentLength", "100"),
        ] {
            let (a, p) = run(k, v, &s);
            assert_eq!(a, val("Reject"), "{k}={v}");
            assert_eq!(
                p,
                SessionParams::default(),
                "{k}={v} must leave the default"
            );
        }
    }

    #[test]
    fn mrdsl_is_a_declaration() {
        let s = LoginSettings::default();
        let (a, p) = run("MaxRecvDataSegmentLength", "32768", &s);
        assert_eq!((a, p.max_send_data_segment_length), (Answer::Silent, 32768));
    }

    #[test]
    fn boolean_or_and_and() {
        let mut s = LoginSettings::default();
        assert_eq!(run("InitialR2T", "No", &s).0, val("Yes"), "OR with our Yes");
        s.initial_r2t = false;
        let (a, p) = run("InitialR2T", "No", &s);
        assert_eq!((a, p.initial_r2t), (val("No"), false));
        assert_eq!(run("InitialR2T", "Yes", &s).0, val("Yes"));
        assert_eq!(run("ImmediateData", "Yes", &s).0, val("Yes"));
        assert_eq!(run("ImmediateData", "No", &s).0, val("No"), "AND");
        s.immediate_data = false;
        assert_eq!(run("ImmediateData", "Yes", &s).0, val("No"));
        assert_eq!(run("DataPDUInOrder", "No", &s).0, val("Yes"));
        assert_eq!(run("DataSequenceInOrder", "No", &s).0, val("Yes"));
        assert_eq!(run("ImmediateData", "yes", &s).0, val("Reject"));
    }

    #[test]
    fn obsolete_and_foreign_keys() {
        let s = LoginSettings::default();
        assert_eq!(run("IFMarker", "Yes", &s).0, val("No"));
        assert_eq!(run("OFMarker", "No", &s).0, val("No"));
        assert_eq!(run("OFMarkInt", "2048~8192", &s).0, val("Reject"));
        assert_eq!(run("RDMAExtensions", "Yes", &s).0, val("No"));
        assert_eq!(
            run("TargetRecvDataSegmentLength", "8192", &s).0,
            val("Irrelevant")
        );
        assert_eq!(
            run("TaskReporting", "ResponseFence,RFC3720", &s).0,
            val("RFC3720")
        );
        assert_eq!(run("iSCSIProtocolLevel", "2", &s).0, val("1"));
        assert_eq!(run("X-com.example.Foo", "1", &s).0, Answer::NotOperational);
    }

    #[test]
    fn discovery_makes_session_keys_irrelevant() {
        let s = LoginSettings::default();
        let mut p = SessionParams::default();
        assert_eq!(
            answer("MaxBurstLength", "65536", true, &s, &mut p),
            val("Irrelevant")
        );
        assert_eq!(
            answer("HeaderDigest", "None", true, &s, &mut p),
            val("None")
        );
        assert_eq!(
            p.max_burst_length,
            SessionParams::default().max_burst_length
        );
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut p = SessionParams {
            max_burst_length: 4096,
            first_burst_length: 65536,
            ..SessionParams::default()
        };
        settle(&mut p);
        assert_eq!(p.first_burst_length, 4096);
    }
}
