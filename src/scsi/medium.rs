//! A removable medium (LUN option `removable`): PREVENT ALLOW MEDIUM REMOVAL (SPC-4 6.13)
//! and the load/eject half of START STOP UNIT (SBC-3 5.25).
//!
//! Removal is prevented while any I_T nexus holds a prevent; each nexus's prevent ends with
//! that nexus (logout, connection loss), with a LUN reset and with a target reset, so a
//! crashed host never leaves a medium locked in (libiscsi's PreventAllow suite checks each).
//! An ejected medium is not present: media commands get NOT READY, MEDIUM NOT PRESENT until a
//! START STOP UNIT loads it again. Loading or ejecting while removal is prevented is refused
//! with MEDIUM REMOVAL PREVENTED. The data stays where it is: ejecting is a state of the unit,
//! not of its backing, and a restarted target starts with the medium loaded.

use std::collections::HashSet;

use super::sense::{asc, key, Sense};
use super::Nexus;

/// Load state and prevents of one removable logical unit.
#[derive(Debug, Default)]
pub struct Medium {
    /// The medium has been ejected (START STOP UNIT LOEJ=1 START=0).
    ejected: bool,
    /// Nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT=1 and not since 0.
    preventing: HashSet<Nexus>,
}

impl Medium {
    /// NOT READY, MEDIUM NOT PRESENT when the medium is ejected.
    pub fn check_present(&self) -> Result<(), Sense> {
        if self.ejected {
            Err(Sense::new(key::NOT_READY, asc::MEDIUM_NOT_PRESENT))
        } else {
            Ok(())
        }
    }

    /// PREVENT ALLOW MEDIUM REMOVAL from `nexus`: 0 allows, 1 prevents; 2 and 3 belong to
    /// media changers and are refused.
    pub fn prevent_allow(&mut self, nexus: &Nexus, prevent: u8) -> Result<(), Sense> {
        match prevent {
            0 => {
                self.preventing.remove(nexus);
                Ok(())
            }
            1 => {
                self.preventing.insert(nexus.clone());
                Ok(())
            }
            _ => Err(Sense::invalid_cdb_field(4, Some(1))),
        }
    }

    /// START STOP UNIT with LOEJ: loads (`load`) or ejects the medium. Returns true when a
    /// medium was loaded that was not present before (the other nexuses are told the medium
    /// may have changed).
    pub fn load_eject(&mut self, load: bool) -> Result<bool, Sense> {
        if !self.preventing.is_empty() {
            return Err(Sense::illegal(asc::MEDIUM_REMOVAL_PREVENTED));
        }
        let loaded = load && self.ejected;
        self.ejected = !load;
        Ok(loaded)
    }

    /// The nexus has ended: its prevent ends with it.
    pub fn nexus_gone(&mut self, nexus: &Nexus) {
        self.preventing.remove(nexus);
    }

    /// A LUN or target reset: every prevent ends (the medium stays as it is).
    pub fn reset(&mut self) {
        self.preventing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(name: &str) -> Nexus {
        Nexus::for_test(name)
    }

    #[test]
    fn any_nexus_prevent_blocks_both_eject_and_load_until_it_ends() {
        let (a, b) = (nexus("a"), nexus("b"));
        let mut m = Medium::default();
        m.prevent_allow(&a, 1).unwrap();
        m.prevent_allow(&b, 1).unwrap();
        let refused = m.load_eject(false).unwrap_err();
        assert_eq!(refused.asc, asc::MEDIUM_REMOVAL_PREVENTED);
        assert!(m.check_present().is_ok());
        // One allow is not enough while the other nexus still prevents.
        m.prevent_allow(&a, 0).unwrap();
        assert!(m.load_eject(false).is_err());
        m.nexus_gone(&b);
        assert_eq!(m.load_eject(false), Ok(false));
        assert_eq!(m.check_present().unwrap_err().asc, asc::MEDIUM_NOT_PRESENT);
        // Ejecting an ejected medium is fine; loading it while prevented is not.
        assert_eq!(m.load_eject(false), Ok(false));
        m.prevent_allow(&a, 1).unwrap();
        assert!(m.load_eject(true).is_err());
        m.reset();
        assert_eq!(m.load_eject(true), Ok(true));
        assert!(m.check_present().is_ok());
        assert_eq!(m.load_eject(true), Ok(false));
    }

    #[test]
    fn media_changer_prevent_values_are_refused() {
        let mut m = Medium::default();
        for value in [2, 3] {
            let e = m.prevent_allow(&nexus("a"), value).unwrap_err();
            assert_eq!(e.asc, asc::INVALID_FIELD_IN_CDB);
        }
        assert_eq!(m.load_eject(false), Ok(false));
    }
}
