//! Reservations: RESERVE/RELEASE(6/10) and PERSISTENT RESERVE IN/OUT (SPC-4 5.13, 6.15, 6.16),
//! and the conflict check every command passes before it runs.
//!
//! Persist through power loss (APTPL): when the target has a [`ReservationStore`] it reports
//! PTPL_C, and a REGISTER (or REGISTER AND IGNORE EXISTING KEY) with APTPL set makes the LUN
//! save its registrations and reservation after every change ([`Reservations::snapshot`]), as a
//! small JSON document the store writes atomically, keyed by the unit's serial number. A LUN
//! created with that serial later (the next start of the process) comes back with them
//! ([`Reservations::restore`]); a REGISTER with APTPL clear drops the saved copy. Without a
//! store, or with APTPL clear, reservations live in memory only and a cold target reset clears
//! them like a power cycle.

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::service_action::{pr_in, pr_out as action};
use super::sense::{asc, Sense};
use super::unit_attention::UnitAttentions;
use super::{CommandFailure, Nexus};

/// Persistent reservation types (SPC-4 table 170).
pub mod pr_type {
    /// Write Exclusive.
    pub const WRITE_EXCLUSIVE: u8 = 1;
    /// Exclusive Access.
    pub const EXCLUSIVE_ACCESS: u8 = 3;
    /// Write Exclusive - Registrants Only.
    #[allow(dead_code)] // listed for completeness; the conflict table matches it by exclusion
    pub const WRITE_EXCLUSIVE_RO: u8 = 5;
    /// Exclusive Access - Registrants Only.
    pub const EXCLUSIVE_ACCESS_RO: u8 = 6;
    /// Write Exclusive - All Registrants.
    pub const WRITE_EXCLUSIVE_AR: u8 = 7;
    /// Exclusive Access - All Registrants.
    pub const EXCLUSIVE_ACCESS_AR: u8 = 8;
}

/// How a command touches the medium, for the conflict tables of SPC-4 5.13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed under any reservation (INQUIRY, REPORT LUNS, REQUEST SENSE, RSOC).
    Always,
    /// Allowed under persistent reservations but not under another nexus's RESERVE(6)
    /// (TEST UNIT READY, READ CAPACITY, PERSISTENT RESERVE IN/OUT).
    Status,
    /// Reads: conflicts only with exclusive-access reservations.
    Read,
    /// Writes and state changes: conflicts with every reservation type.
    Write,
    /// RELEASE(6/10): never conflicts; a non-holder's RELEASE is a no-op.
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Registrant {
    nexus: Nexus,
    key: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reservation {
    holder: Nexus,
    pr_type: u8,
}

/// Reservation state of one logical unit.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Holder of a RESERVE(6/10) reservation.
    legacy: Option<Nexus>,
    /// PRgeneration: bumped by every REGISTER, CLEAR and PREEMPT.
    generation: u32,
    registrants: Vec<Registrant>,
    reservation: Option<Reservation>,
    /// PTPL_C: the target can persist through power loss (it has a store).
    ptpl_capable: bool,
    /// PTPL_A: the last REGISTER asked for persistence through power loss.
    aptpl: bool,
    /// A saved copy exists (it must be replaced or dropped on the next change).
    saved: bool,
}

/// Where reservations with APTPL are kept across restarts of the process: one small document
/// per logical unit, named by the unit's serial number. Implementations write atomically (a
/// crash leaves the old or the new document) and durably, and may block.
pub trait ReservationStore: Send + Sync {
    /// The document saved for the unit with `serial`, if any.
    fn load(&self, serial: &str) -> std::io::Result<Option<Vec<u8>>>;
    /// Replaces the document of the unit with `serial`; `None` removes it.
    fn save(&self, serial: &str, document: Option<&[u8]>) -> std::io::Result<()>;
}

/// The saved form of a unit's persistent reservations (JSON).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    /// Format version: 1.
    version: u32,
    generation: u32,
    registrants: Vec<SavedRegistrant>,
    reservation: Option<SavedReservation>,
}

/// A registered I_T nexus and its key.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedRegistrant {
    initiator: String,
    /// The ISID, 12 hex digits.
    isid: String,
    /// The portal group (relative target port) it registered through.
    portal_group: u16,
    key: u64,
}

/// The reservation: its holder (an index into the registrants) and type.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedReservation {
    holder: usize,
    pr_type: u8,
}

/// The version of [`Saved`] this build writes and reads.
const SAVED_VERSION: u32 = 1;

fn is_all_registrants(t: u8) -> bool {
    matches!(
        t,
        pr_type::WRITE_EXCLUSIVE_AR | pr_type::EXCLUSIVE_ACCESS_AR
    )
}

fn valid_type(t: u8) -> bool {
    matches!(t, 1 | 3 | 5..=8)
}

/// Most registrations kept per logical unit.
const MAX_REGISTRANTS: usize = 64;

impl Reservations {
    fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.registrants
            .iter()
            .find(|r| &r.nexus == nexus)
            .map(|r| r.key)
    }

    /// True when `nexus` holds the persistent reservation (any registrant for all-registrants
    /// types).
    fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            Some(r) if is_all_registrants(r.pr_type) => self.key_of(nexus).is_some(),
            Some(r) => &r.holder == nexus,
            None => false,
        }
    }

    /// Whether a command of class `access` from `nexus` must get RESERVATION CONFLICT.
    pub fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        if let Some(holder) = &self.legacy {
            if holder != nexus {
                return !matches!(access, Access::Always | Access::Release);
            }
        }
        let Some(res) = &self.reservation else {
            return false;
        };
        if self.is_holder(nexus) {
            return false;
        }
        let registered = self.key_of(nexus).is_some();
        let exclusive_access = matches!(
            res.pr_type,
            pr_type::EXCLUSIVE_ACCESS | pr_type::EXCLUSIVE_ACCESS_RO | pr_type::EXCLUSIVE_ACCESS_AR
        );
        let registrants_allowed = !matches!(
            res.pr_type,
            pr_type::WRITE_EXCLUSIVE | pr_type::EXCLUSIVE_ACCESS
        );
        match access {
            Access::Always | Access::Status | Access::Release => false,
            Access::Read => exclusive_access && !(registrants_allowed && registered),
            Access::Write => !(registrants_allowed && registered),
        }
    }

    /// RESERVE(6/10).
    pub fn reserve(&mut self, nexus: &Nexus) -> Result<(), CommandFailure> {
        if !self.registrants.is_empty() || self.reservation.is_some() {
            return Err(CommandFailure::Conflict);
        }
        match &self.legacy {
            Some(holder) if holder != nexus => Err(CommandFailure::Conflict),
            _ => {
                self.legacy = Some(nexus.clone());
                Ok(())
            }
        }
    }

    /// RELEASE(6/10): releases only the caller's own reservation; anything else is a no-op.
    pub fn release(&mut self, nexus: &Nexus) {
        if self.legacy.as_ref() == Some(nexus) {
            self.legacy = None;
        }
    }

    /// Drops the RESERVE(6) reservation (LUN reset) .
    pub fn clear_legacy(&mut self) {
        self.legacy = None;
    }

    /// Drops everything a power cycle drops: RESERVE(6), and the persistent reservations unless
    /// APTPL keeps them.
    pub fn clear_all(&mut self) {
        self.legacy = None;
        if !self.aptpl {
            self.registrants.clear();
            self.reservation = None;
        }
    }

    /// Reservations of a unit whose target can save them ([`ReservationStore`]): PTPL_C.
    pub fn persistable() -> Reservations {
        Reservations {
            ptpl_capable: true,
            ..Reservations::default()
        }
    }

    /// What to save after a change: `Some(document)` while APTPL is active, `Some(None)` when
    /// the saved copy is to be dropped, `None` when there is nothing to do. Call
    /// [`Reservations::saved`] once the store has done it.
    pub fn snapshot(&self) -> Option<Option<Vec<u8>>> {
        if !self.aptpl {
            return self.saved.then_some(None);
        }
        let index = |n: &Nexus| self.registrants.iter().position(|r| &r.nexus == n);
        let saved = Saved {
            version: SAVED_VERSION,
            generation: self.generation,
            registrants: self
                .registrants
                .iter()
                .map(|r| SavedRegistrant {
                    initiator: r.nexus.initiator_name.clone(),
                    isid: hex::encode(r.nexus.isid),
                    portal_group: r.nexus.tpgt,
                    key: r.key,
                })
                .collect(),
            reservation: self.reservation.as_ref().and_then(|res| {
                Some(SavedReservation {
                    holder: index(&res.holder)?,
                    pr_type: res.pr_type,
                })
            }),
        };
        Some(Some(serde_json::to_vec_pretty(&saved).unwrap_or_default()))
    }

    /// The store holds what [`Reservations::snapshot`] last returned.
    pub fn saved(&mut self, present: bool) {
        self.saved = present;
    }

    /// The persistent reservations saved in `document`, with APTPL active; an error names what
    /// is wrong with the document.
    pub fn restore(document: &[u8]) -> Result<Reservations, String> {
        let saved: Saved = serde_json::from_slice(document).map_err(|e| e.to_string())?;
        if saved.version != SAVED_VERSION {
            return Err(format!(
                "version {} (this build reads {SAVED_VERSION})",
                saved.version
            ));
        }
        if saved.registrants.len() > MAX_REGISTRANTS {
            return Err(format!("more than {MAX_REGISTRANTS} registrants"));
        }
        let mut registrants = Vec::with_capacity(saved.registrants.len());
        for r in saved.registrants {
            let isid = hex::decode(&r.isid)
                .ok()
                .and_then(|b| <[u8; 6]>::try_from(b).ok())
                .ok_or_else(|| format!("ISID {:?} is not 12 hex digits", r.isid))?;
            if r.key == 0 {
                return Err("a registration with key 0".to_string());
            }
            registrants.push(Registrant {
                nexus: Nexus {
                    initiator_name: r.initiator,
                    isid,
                    tpgt: r.portal_group,
                },
                key: r.key,
            });
        }
        let reservation = match saved.reservation {
            None => None,
            Some(res) => {
                let holder = registrants.get(res.holder).ok_or_else(|| {
                    format!("reservation holder {} is not registered", res.holder)
                })?;
                if !valid_type(res.pr_type) {
                    return Err(format!("reservation type {}", res.pr_type));
                }
                Some(Reservation {
                    holder: holder.nexus.clone(),
                    pr_type: res.pr_type,
                })
            }
        };
        Ok(Reservations {
            legacy: None,
            generation: saved.generation,
            registrants,
            reservation,
            ptpl_capable: true,
            aptpl: true,
            saved: true,
        })
    }

    /// The session of `nexus` ended: its RESERVE(6) reservation goes; registrations persist.
    pub fn nexus_gone(&mut self, nexus: &Nexus) {
        self.release(nexus);
    }

    /// PERSISTENT RESERVE OUT. Returns the I_T nexuses whose tasks on this LUN must be
    /// aborted: those a PREEMPT AND ABORT took the registration of (SPC-4 5.13.11.2.4).
    pub fn persistent_out(
        &mut self,
        nexus: &Nexus,
        act: u8,
        scope: u8,
        kind: u8,
        params: &[u8],
        ua: &mut UnitAttentions,
    ) -> Result<Vec<Nexus>, CommandFailure> {
        if params.len() != 24 {
            return Err(Sense::parameter_list_length().into());
        }
        let key = u64::from_be_bytes(params[0..8].try_into().unwrap_or_default());
        let sa_key = u64::from_be_bytes(params[8..16].try_into().unwrap_or_default());
        let flags = params[20];
        if flags & 0x08 != 0 {
            // SPEC_I_PT: registering other initiators is not supported (SIP_C = 0).
            return Err(Sense::invalid_param_field(20, Some(3)).into());
        }
        if flags & 0x04 != 0 {
            // ALL_TG_PT: ATP_C = 0.
            return Err(Sense::invalid_param_field(20, Some(2)).into());
        }
        let aptpl = flags & 0x01 != 0;
        if aptpl && !self.ptpl_capable {
            // PTPL_C = 0: nowhere to keep reservations through power loss.
            return Err(Sense::invalid_param_field(20, Some(0)).into());
        }
        let needs_type = matches!(
            act,
            action::RESERVE | action::RELEASE | action::PREEMPT | action::PREEMPT_AND_ABORT
        );
        if needs_type {
            if scope != 0 {
                return Err(Sense::invalid_cdb_field(2, Some(7)).into());
            }
            if !valid_type(kind) {
                return Err(Sense::invalid_cdb_field(2, Some(3)).into());
            }
        }
        match act {
            action::REGISTER | action::REGISTER_AND_IGNORE => {
                self.register(nexus, key, sa_key, act == action::REGISTER_AND_IGNORE, ua)?;
                // SPC-4 5.13.6: the APTPL of the last REGISTER applies to the whole unit (the
                // other service actions ignore it).
                self.aptpl = aptpl;
                Ok(Vec::new())
            }
            action::RESERVE => {
                self.check_key(nexus, key)?;
                match &self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: nexus.clone(),
                            pr_type: kind,
                        });
                        Ok(Vec::new())
                    }
                    Some(r) if r.pr_type == kind && self.is_holder(nexus) => Ok(Vec::new()),
                    Some(_) => Err(CommandFailure::Conflict),
                }
            }
            action::RELEASE => {
                self.check_key(nexus, key)?;
                let Some(res) = &self.reservation else {
                    return Ok(Vec::new());
                };
                if !self.is_holder(nexus) {
                    return Ok(Vec::new());
                }
                if res.pr_type != kind {
                    return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PR).into());
                }
                self.drop_reservation(Some(nexus), ua);
                Ok(Vec::new())
            }
            action::CLEAR => {
                self.check_key(nexus, key)?;
                for r in &self.registrants {
                    if &r.nexus != nexus {
                        ua.raise(&r.nexus, asc::RESERVATIONS_PREEMPTED);
                    }
                }
                self.registrants.clear();
                self.reservation = None;
                self.bump();
                Ok(Vec::new())
            }
            action::PREEMPT | action::PREEMPT_AND_ABORT => {
                self.check_key(nexus, key)?;
                let victims = self.preempt(nexus, sa_key, kind, ua)?;
                Ok(if act == action::PREEMPT_AND_ABORT {
                    victims
                } else {
                    Vec::new()
                })
            }
            _ => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
    }

    /// PERSISTENT RESERVE OUT, REGISTER AND MOVE (SPC-4 5.13.7): the reservation `nexus` holds
    /// goes, with its type, to the I_T nexus the parameter list names (a TransportID with ISID
    /// and the relative target port, one of `ports`), which is registered with the service
    /// action key; with UNREG the caller's registration then goes.
    pub fn register_and_move(
        &mut self,
        nexus: &Nexus,
        params: &[u8],
        ports: &[u16],
    ) -> Result<(), CommandFailure> {
        if params.len() < 24 {
            return Err(Sense::parameter_list_length().into());
        }
        let key = u64::from_be_bytes(params[0..8].try_into().unwrap_or_default());
        let sa_key = u64::from_be_bytes(params[8..16].try_into().unwrap_or_default());
        let (unreg, aptpl) = (params[17] & 0x02 != 0, params[17] & 0x01 != 0);
        let port = u16::from_be_bytes([params[18], params[19]]);
        let tid_len = u32::from_be_bytes([params[20], params[21], params[22], params[23]]);
        if 24 + u64::from(tid_len) != params.len() as u64 {
            return Err(Sense::parameter_list_length().into());
        }
        self.check_key(nexus, key)?;
        if aptpl && !self.ptpl_capable {
            return Err(Sense::invalid_param_field(17, Some(0)).into());
        }
        if sa_key == 0 {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        if !ports.contains(&port) {
            return Err(Sense::invalid_param_field(18, None).into());
        }
        let to = parse_transport_id(&params[24..], port)?;
        if &to == nexus {
            // Moving to oneself is refused (SPC-4 6.16.4).
            return Err(Sense::invalid_param_field(24, None).into());
        }
        let kind = match &self.reservation {
            None => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
            Some(r) if is_all_registrants(r.pr_type) || &r.holder != nexus => {
                return Err(CommandFailure::Conflict)
            }
            Some(r) => r.pr_type,
        };
        let full = self.registrants.len() >= MAX_REGISTRANTS;
        match self.registrants.iter_mut().find(|r| r.nexus == to) {
            Some(r) => r.key = sa_key,
            None if full => {
                return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES).into())
            }
            None => self.registrants.push(Registrant {
                nexus: to.clone(),
                key: sa_key,
            }),
        }
        self.reservation = Some(Reservation {
            holder: to,
            pr_type: kind,
        });
        if unreg {
            self.registrants.retain(|r| &r.nexus != nexus);
        }
        self.aptpl = aptpl;
        self.bump();
        Ok(())
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Fails with RESERVATION CONFLICT unless `nexus` is registered with `key`.
    fn check_key(&self, nexus: &Nexus, key: u64) -> Result<(), CommandFailure> {
        match self.key_of(nexus) {
            Some(k) if k == key => Ok(()),
            _ => Err(CommandFailure::Conflict),
        }
    }

    /// Releases the persistent reservation; registrants other than `by` learn of it when the
    /// type was a registrants-only or all-registrants one (SPC-4 5.13.11.2).
    fn drop_reservation(&mut self, by: Option<&Nexus>, ua: &mut UnitAttentions) {
        if let Some(res) = self.reservation.take() {
            if !matches!(
                res.pr_type,
                pr_type::WRITE_EXCLUSIVE | pr_type::EXCLUSIVE_ACCESS
            ) {
                for r in &self.registrants {
                    if Some(&r.nexus) != by {
                        ua.raise(&r.nexus, asc::RESERVATIONS_RELEASED);
                    }
                }
            }
        }
    }

    fn register(
        &mut self,
        nexus: &Nexus,
        key: u64,
        sa_key: u64,
        ignore_existing: bool,
        ua: &mut UnitAttentions,
    ) -> Result<(), CommandFailure> {
        match self.key_of(nexus) {
            None => {
                if !ignore_existing && key != 0 {
                    return Err(CommandFailure::Conflict);
                }
                if sa_key != 0 {
                    if self.registrants.len() >= MAX_REGISTRANTS {
                        return Err(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES).into());
                    }
                    self.registrants.push(Registrant {
                        nexus: nexus.clone(),
                        key: sa_key,
                    });
                }
            }
            Some(current) => {
                if !ignore_existing && key != current {
                    return Err(CommandFailure::Conflict);
                }
                if sa_key == 0 {
                    self.unregister(nexus, ua);
                } else if let Some(r) = self.registrants.iter_mut().find(|r| &r.nexus == nexus) {
                    r.key = sa_key;
                }
            }
        }
        self.bump();
        Ok(())
    }

    /// Removes `nexus`'s registration, releasing a reservation that depended on it.
    fn unregister(&mut self, nexus: &Nexus, ua: &mut UnitAttentions) {
        let holder_leaves = match &self.reservation {
            Some(r) if is_all_registrants(r.pr_type) => self.registrants.len() == 1,
            Some(r) => &r.holder == nexus,
            None => false,
        };
        if holder_leaves {
            self.drop_reservation(Some(nexus), ua);
        }
        self.registrants.retain(|r| &r.nexus != nexus);
    }

    fn preempt(
        &mut self,
        nexus: &Nexus,
        sa_key: u64,
        kind: u8,
        ua: &mut UnitAttentions,
    ) -> Result<Vec<Nexus>, CommandFailure> {
        let reservation = self.reservation.clone();
        let all_registrants = reservation
            .as_ref()
            .is_some_and(|r| is_all_registrants(r.pr_type));
        let holder_key = reservation.as_ref().and_then(|r| self.key_of(&r.holder));
        if sa_key == 0 && !all_registrants {
            return Err(Sense::invalid_param_field(8, None).into());
        }
        // Registrations to remove: with an all-registrants reservation a zero key means
        // "everyone else"; otherwise those holding `sa_key`, never the caller itself.
        let victims: Vec<Nexus> = self
            .registrants
            .iter()
            .filter(|r| &r.nexus != nexus && (r.key == sa_key || (all_registrants && sa_key == 0)))
            .map(|r| r.nexus.clone())
            .collect();
        let takes_reservation = match &reservation {
            Some(_) if all_registrants => sa_key == 0,
            Some(_) => holder_key == Some(sa_key),
            None => false,
        };
        if victims.is_empty() && !takes_reservation {
            return Err(CommandFailure::Conflict);
        }
        for v in &victims {
            ua.raise(v, asc::REGISTRATIONS_PREEMPTED);
        }
        self.registrants.retain(|r| !victims.contains(&r.nexus));
        if takes_reservation {
            if let Some(old) = &reservation {
                if old.pr_type != kind {
                    // Registrants that stay learn that the reservation changed under them.
                    for r in &self.registrants {
                        if &r.nexus != nexus {
                            ua.raise(&r.nexus, asc::RESERVATIONS_RELEASED);
                        }
                    }
                }
            }
            self.reservation = Some(Reservation {
                holder: nexus.clone(),
                pr_type: kind,
            });
        }
        self.bump();
        Ok(victims)
    }

    /// PERSISTENT RESERVE IN; the full parameter data (the caller applies the allocation
    /// length).
    pub fn persistent_in(&self, act: u8) -> Result<Bytes, CommandFailure> {
        let mut out = BytesMut::new();
        match act {
            pr_in::READ_KEYS => {
                out.put_u32(self.generation);
                out.put_u32((self.registrants.len() * 8) as u32);
                for r in &self.registrants {
                    out.put_u64(r.key);
                }
            }
            pr_in::READ_RESERVATION => {
                out.put_u32(self.generation);
                match &self.reservation {
                    Some(res) => {
                        out.put_u32(16);
                        let key = if is_all_registrants(res.pr_type) {
                            0
                        } else {
                            self.key_of(&res.holder).unwrap_or(0)
                        };
                        out.put_u64(key);
                        out.put_u32(0);
                        out.put_u8(0);
                        out.put_u8(res.pr_type & 0x0f);
                        out.put_u16(0);
                    }
                    None => out.put_u32(0),
                }
            }
            pr_in::REPORT_CAPABILITIES => {
                out.put_u16(8);
                // CRH = 1: RESERVE/RELEASE follow SPC-4 5.13.3 (conflict with PRs); PTPL_C.
                out.put_u8(0x10 | u8::from(self.ptpl_capable));
                // TMV = 1, ALLOW COMMANDS = 0 (not reported); PTPL_A.
                out.put_u8(0x80 | u8::from(self.aptpl));
                // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX / EX_AC_AR.
                out.put_u8(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
                out.put_u8(0x01);
                out.put_u16(0);
            }
            pr_in::READ_FULL_STATUS => {
                out.put_u32(self.generation);
                let mut body = BytesMut::new();
                for r in &self.registrants {
                    let tid = transport_id(&r.nexus);
                    body.put_u64(r.key);
                    body.put_u32(0);
                    let holder = self.is_holder(&r.nexus);
                    body.put_u8(u8::from(holder));
                    let scope_type = match (&self.reservation, holder) {
                        (Some(res), true) => res.pr_type & 0x0f,
                        _ => 0,
                    };
                    body.put_u8(scope_type);
                    body.put_u32(0);
                    // The relative target port the registrant came through (its portal group).
                    body.put_u16(r.nexus.tpgt);
                    body.put_u32(tid.len() as u32);
                    body.put_slice(&tid);
                }
                out.put_u32(body.len() as u32);
                out.put_slice(&body);
            }
            _ => return Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        }
        Ok(out.freeze())
    }
}

/// The I_T nexus an iSCSI TransportID with ISID (format 01b) names, through target port
/// `port`; INVALID FIELD IN PARAMETER LIST (pointing into the TransportID at byte 24 of the
/// list) for any other form.
fn parse_transport_id(tid: &[u8], port: u16) -> Result<Nexus, Sense> {
    let bad = |at: u16| Sense::invalid_param_field(24 + at, None);
    // FORMAT CODE 01b, PROTOCOL IDENTIFIER 5 (iSCSI).
    if tid.len() < 4 || tid[0] != 0x45 {
        return Err(bad(0));
    }
    let len = usize::from(u16::from_be_bytes([tid[2], tid[3]]));
    let Some(text) = tid.get(4..4 + len) else {
        return Err(bad(2));
    };
    let text = &text[..text.iter().position(|&b| b == 0).ok_or(bad(4))?];
    let text = std::str::from_utf8(text).map_err(|_| bad(4))?;
    let (name, isid) = text
        .rsplit_once(",i,0x")
        .or_else(|| text.rsplit_once(",I,0X"))
        .or_else(|| text.rsplit_once(",i,0X"))
        .ok_or(bad(4))?;
    let isid = hex::decode(isid)
        .ok()
        .and_then(|b| <[u8; 6]>::try_from(b).ok())
        .ok_or(bad(4))?;
    if name.is_empty() {
        return Err(bad(4));
    }
    Ok(Nexus {
        initiator_name: name.to_string(),
        isid,
        tpgt: port,
    })
}

/// iSCSI TransportID with ISID (SPC-4 7.6.4.6): "name,i,0x<isid>", NUL-terminated, padded to
/// a multiple of four bytes.
fn transport_id(nexus: &Nexus) -> Vec<u8> {
    let mut name = format!("{},i,0x{}", nexus.initiator_name, hex::encode(nexus.isid)).into_bytes();
    name.push(0);
    while name.len() % 4 != 0 {
        name.push(0);
    }
    let mut out = Vec::with_capacity(4 + name.len());
    out.push(0x40 | 0x05);
    out.push(0);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(&name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(name: &str) -> Nexus {
        Nexus {
            initiator_name: name.to_string(),
            isid: [0x40, 0, 0, 0, 0, 1],
            tpgt: 1,
        }
    }

    fn params(key: u64, sa_key: u64) -> [u8; 24] {
        let mut p = [0u8; 24];
        p[0..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p
    }

    struct Fixture {
        res: Reservations,
        ua: UnitAttentions,
        a: Nexus,
        b: Nexus,
    }

    impl Fixture {
        fn new() -> Self {
            let (a, b) = (nexus("a"), nexus("b"));
            let mut ua = UnitAttentions::default();
            ua.note_nexus(&a);
            ua.note_nexus(&b);
            ua.take(&a);
            ua.take(&b);
            Fixture {
                res: Reservations::default(),
                ua,
                a,
                b,
            }
        }

        fn out(
            &mut self,
            who: char,
            act: u8,
            kind: u8,
            key: u64,
            sa: u64,
        ) -> Result<(), CommandFailure> {
            let n = if who == 'a' {
                self.a.clone()
            } else {
                self.b.clone()
            };
            self.res
                .persistent_out(&n, act, 0, kind, &params(key, sa), &mut self.ua)
                .map(drop)
        }
    }

    #[test]
    fn register_reserve_and_conflicts_per_type() {
        for (kind, b_reads, b_writes_registered) in [
            (pr_type::WRITE_EXCLUSIVE, true, false),
            (pr_type::EXCLUSIVE_ACCESS, false, false),
            (pr_type::WRITE_EXCLUSIVE_RO, true, true),
            (pr_type::EXCLUSIVE_ACCESS_RO, false, true),
            (pr_type::WRITE_EXCLUSIVE_AR, true, true),
            (pr_type::EXCLUSIVE_ACCESS_AR, false, true),
        ] {
            let mut f = Fixture::new();
            f.out('a', action::REGISTER, 0, 0, 0xa).unwrap();
            f.out('a', action::RESERVE, kind, 0xa, 0).unwrap();
            assert!(!f.res.conflicts(&f.a, Access::Write));
            assert_eq!(!f.res.conflicts(&f.b, Access::Read), b_reads, "type {kind}");
            assert!(f.res.conflicts(&f.b, Access::Write), "type {kind}");
            f.out('b', action::REGISTER, 0, 0, 0xb).unwrap();
            assert_eq!(
                !f.res.conflicts(&f.b, Access::Write),
                b_writes_registered,
                "type {kind}"
            );
            assert!(!f.res.conflicts(&f.b, Access::Always));
        }
    }

    #[test]
    fn wrong_key_is_a_conflict_and_bad_length_is_rejected() {
        let mut f = Fixture::new();
        f.out('a', action::REGISTER, 0, 0, 0xa).unwrap();
        assert!(matches!(
            f.out('a', action::REGISTER, 0, 0xbad, 0xc),
            Err(CommandFailure::Conflict)
        ));
        assert!(matches!(
            f.out('b', action::RESERVE, 1, 0, 0),
            Err(CommandFailure::Conflict)
        ));
        f.out('a', action::REGISTER_AND_IGNORE, 0, 0xbad, 0xc)
            .unwrap();
        let err = f
            .res
            .persistent_out(&f.a, action::REGISTER, 0, 0, &[0; 20], &mut f.ua)
            .unwrap_err();
        assert!(
            matches!(err, CommandFailure::Check(s) if s.asc == asc::PARAMETER_LIST_LENGTH_ERROR)
        );
        let keys = f.res.persistent_in(0).unwrap();
        assert_eq!(
            &keys[..],
            &[0, 0, 0, 2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0xc]
        );
    }

    #[test]
    fn release_with_wrong_type_and_registrants_only_release_ua() {
        let mut f = Fixture::new();
        f.out('a', action::REGISTER, 0, 0, 0xa).unwrap();
        f.out('b', action::REGISTER, 0, 0, 0xb).unwrap();
        f.out('a', action::RESERVE, pr_type::WRITE_EXCLUSIVE_RO, 0xa, 0)
            .unwrap();
        let err = f
            .out('a', action::RELEASE, pr_type::WRITE_EXCLUSIVE, 0xa, 0)
            .unwrap_err();
        assert!(matches!(err, CommandFailure::Check(s) if s.asc == asc::INVALID_RELEASE_OF_PR));
        // A non-holder's release is a no-op.
        f.out('b', action::RELEASE, pr_type::WRITE_EXCLUSIVE_RO, 0xb, 0)
            .unwrap();
        assert!(f.res.reservation.is_some());
        f.out('a', action::RELEASE, pr_type::WRITE_EXCLUSIVE_RO, 0xa, 0)
            .unwrap();
        assert!(f.res.reservation.is_none());
        assert_eq!(f.ua.take(&f.b), Some(asc::RESERVATIONS_RELEASED));
        assert_eq!(f.ua.take(&f.a), None);
    }

    #[test]
    fn preempt_takes_over_and_clear_drops_everything() {
        let mut f = Fixture::new();
        f.out('a', action::REGISTER, 0, 0, 0xa).unwrap();
        f.out('b', action::REGISTER, 0, 0, 0xb).unwrap();
        f.out('a', action::RESERVE, pr_type::EXCLUSIVE_ACCESS, 0xa, 0)
            .unwrap();
        assert!(matches!(
            f.out('b', action::PREEMPT, 3, 0xb, 0x99),
            Err(CommandFailure::Conflict)
        ));
        f.out('b', action::PREEMPT, pr_type::WRITE_EXCLUSIVE, 0xb, 0xa)
            .unwrap();
        assert_eq!(f.ua.take(&f.a), Some(asc::REGISTRATIONS_PREEMPTED));
        let rr = f.res.persistent_in(1).unwrap();
        assert_eq!(&rr[8..16], &0xbu64.to_be_bytes());
        assert_eq!(rr[21], pr_type::WRITE_EXCLUSIVE);
        assert!(f.res.conflicts(&f.a, Access::Write));
        f.out('b', action::CLEAR, 0, 0xb, 0).unwrap();
        assert!(f.res.registrants.is_empty());
        assert!(!f.res.conflicts(&f.a, Access::Write));
    }

    #[test]
    fn legacy_reserve_blocks_others_until_release() {
        let mut f = Fixture::new();
        f.res.reserve(&f.a).unwrap();
        assert!(f.res.conflicts(&f.b, Access::Read));
        assert!(!f.res.conflicts(&f.b, Access::Always));
        assert!(f.res.conflicts(&f.b, Access::Status));
        assert!(!f.res.conflicts(&f.b, Access::Release));
        assert!(matches!(f.res.reserve(&f.b), Err(CommandFailure::Conflict)));
        f.res.release(&f.b);
        assert!(f.res.conflicts(&f.b, Access::Read));
        f.res.release(&f.a);
        f.res.reserve(&f.b).unwrap();
        f.res.nexus_gone(&f.b);
        assert!(!f.res.conflicts(&f.a, Access::Write));
    }

    #[test]
    fn full_status_carries_transport_ids() {
        let mut f = Fixture::new();
        f.out('a', action::REGISTER, 0, 0, 0xa).unwrap();
        f.out('a', action::RESERVE, pr_type::WRITE_EXCLUSIVE, 0xa, 0)
            .unwrap();
        let data = f.res.persistent_in(3).unwrap();
        // Header, then one descriptor: key, R_HOLDER, type, port id, TransportID.
        assert_eq!(&data[8..16], &0xau64.to_be_bytes());
        assert_eq!(data[20], 1);
        assert_eq!(data[21], pr_type::WRITE_EXCLUSIVE);
        assert_eq!(&data[26..28], &[0, 1]);
        let tid_len = u32::from_be_bytes(data[28..32].try_into().unwrap()) as usize;
        assert_eq!(tid_len % 4, 0);
        assert_eq!(data[32], 0x45);
        assert!(data[36..].starts_with(b"a,i,0x400000000001\0"));
        assert_eq!(data.len(), 32 + tid_len);
    }
}
