//! Asymmetric logical unit access (SPC-4 5.15), implicit: each portal group of the target is
//! a SCSI target port (its relative target port identifier is the portal group tag) and a
//! target port group of its own (with the same number), so a multipath host sees one path per
//! portal and asks REPORT TARGET PORT GROUPS which to use. Every group is active/optimized
//! unless the configuration gives it another state (`--alua TAG=STATE`): active/non-optimized
//! serves everything but tells hosts to prefer the others; standby and unavailable answer
//! NOT READY (LOGICAL UNIT NOT ACCESSIBLE) to all but the commands that describe the unit and
//! its paths (SPC-4 5.15.2.4), so a host's path checker sees the path as passive.

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::Command;
use super::sense::{key, Asc, Sense};

/// A target port group's asymmetric access state (SPC-4 5.15.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessState {
    /// Active/optimized: every command, the preferred path.
    #[default]
    ActiveOptimized,
    /// Active/non-optimized: every command, but hosts should prefer optimized paths.
    ActiveNonOptimized,
    /// Standby: only commands that describe the unit, its paths and reservations.
    Standby,
    /// Unavailable: only commands that describe the unit and its paths.
    Unavailable,
}

impl AccessState {
    /// Every state, for messages that list the choices.
    pub const NAMES: &'static str = "active-optimized, active-non-optimized, standby, unavailable";

    /// The state named `text` (as [`AccessState::name`] gives it; `optimized` and
    /// `non-optimized` also do).
    pub fn parse(text: &str) -> Option<AccessState> {
        Some(match text {
            "active-optimized" | "optimized" => AccessState::ActiveOptimized,
            "active-non-optimized" | "non-optimized" => AccessState::ActiveNonOptimized,
            "standby" => AccessState::Standby,
            "unavailable" => AccessState::Unavailable,
            _ => return None,
        })
    }

    /// The state's name in configuration and logs.
    pub fn name(self) -> &'static str {
        match self {
            AccessState::ActiveOptimized => "active-optimized",
            AccessState::ActiveNonOptimized => "active-non-optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
        }
    }

    /// True when the state serves reads and writes.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized
        )
    }

    /// The ASYMMETRIC ACCESS STATE code.
    fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
        }
    }
}

/// NOT READY for `cmd` received through a port group in `state` when the state does not
/// serve it.
pub fn check_access(state: AccessState, cmd: &Command) -> Result<(), Sense> {
    let describes = cmd.describes_unit();
    let standby_also = matches!(
        cmd,
        Command::ModeSense { .. }
            | Command::ModeSelect { .. }
            | Command::PersistentReserveIn { .. }
            | Command::PersistentReserveOut { .. }
    );
    let code = match state {
        AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return Ok(()),
        AccessState::Standby if describes || standby_also => return Ok(()),
        AccessState::Unavailable if describes => return Ok(()),
        // LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY / UNAVAILABLE STATE.
        AccessState::Standby => Asc(0x04, 0x0b),
        AccessState::Unavailable => Asc(0x04, 0x0c),
    };
    Err(Sense::new(key::NOT_READY, code))
}

/// The supported-states byte of a group descriptor: U_SUP, S_SUP, AN_SUP, AO_SUP.
const SUPPORTED_STATES: u8 = 0x0f;
/// IMPLICIT TRANSITION TIME in the extended header (seconds): there are no transitions.
const IMPLICIT_TRANSITION_SECS: u8 = 0;

/// REPORT TARGET PORT GROUPS (SPC-4 6.36) for a target whose ports (and groups) are `ports`,
/// each in its state; `extended` selects the extended header (PARAMETER DATA FORMAT 001b).
pub fn report_target_port_groups(ports: &[(u16, AccessState)], extended: bool) -> Bytes {
    let mut body = BytesMut::new();
    for &(port, state) in ports {
        body.put_u8(state.code()); // PREF 0
        body.put_u8(SUPPORTED_STATES);
        body.put_u16(port); // the target port group identifier
        body.put_u8(0);
        body.put_u8(0); // STATUS CODE: no transition
        body.put_u8(0);
        body.put_u8(1); // TARGET PORT COUNT
        body.put_u16(0);
        body.put_u16(port); // RELATIVE TARGET PORT IDENTIFIER
    }
    let mut out = BytesMut::with_capacity(8 + body.len());
    if extended {
        out.put_u32(body.len() as u32 + 4);
        out.put_u8(0x10); // FORMAT TYPE 001b
        out.put_u8(IMPLICIT_TRANSITION_SECS);
        out.put_u16(0);
    } else {
        out.put_u32(body.len() as u32);
    }
    out.put_slice(&body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_per_port_in_its_state() {
        let ports = [(1, AccessState::ActiveOptimized), (2, AccessState::Standby)];
        let data = report_target_port_groups(&ports, false);
        assert_eq!(
            &data[..],
            &[
                0, 0, 0, 24, // RETURN DATA LENGTH
                0x00, 0x0f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, // group 1: port 1, active/optimized
                0x02, 0x0f, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, // group 2: port 2, standby
            ]
        );
        let extended = report_target_port_groups(&[(7, AccessState::ActiveNonOptimized)], true);
        assert_eq!(
            &extended[..8],
            &[0, 0, 0, 16, 0x10, IMPLICIT_TRANSITION_SECS, 0, 0]
        );
        assert_eq!(&extended[8..12], &[0x01, 0x0f, 0, 7]);
        assert_eq!(extended.len(), 8 + 12);
    }

    #[test]
    fn passive_states_serve_only_what_describes_the_unit() {
        let tur = Command::TestUnitReady;
        let inquiry = Command::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 36,
        };
        let pr_in = Command::PersistentReserveIn {
            action: 0,
            alloc_len: 8,
        };
        for state in [
            AccessState::ActiveOptimized,
            AccessState::ActiveNonOptimized,
        ] {
            assert!(check_access(state, &tur).is_ok());
        }
        let standby = check_access(AccessState::Standby, &tur).unwrap_err();
        assert_eq!(
            (standby.key, standby.asc),
            (key::NOT_READY, Asc(0x04, 0x0b))
        );
        assert!(check_access(AccessState::Standby, &pr_in).is_ok());
        let unavailable = check_access(AccessState::Unavailable, &pr_in).unwrap_err();
        assert_eq!(unavailable.asc, Asc(0x04, 0x0c));
        for state in [AccessState::Standby, AccessState::Unavailable] {
            assert!(check_access(state, &inquiry).is_ok());
        }
        for name in AccessState::NAMES.split(", ") {
            assert_eq!(AccessState::parse(name).map(AccessState::name), Some(name));
        }
        assert_eq!(AccessState::parse("active"), None);
    }
}
