//! MODE SENSE(6/10) and MODE SELECT(6/10) (SPC-4 6.11-6.14, 7.5; SBC-3 6.4).
//!
//! Pages: Caching (08h, only WCE is changeable), Control (0Ah, SWP and D_SENSE changeable) and
//! Informational Exceptions Control (1Ch), all without subpages.

use bytes::{BufMut, Bytes, BytesMut};

use super::lun::LogicalUnit;
use super::sense::{asc, Sense};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL_PAGES: u8 = 0x3f;
/// Control mode page byte 4: software write protect.
const SWP: u8 = 0x08;
/// Control mode page byte 2: descriptor-format sense data.
const D_SENSE: u8 = 0x04;
/// Caching mode page byte 2: write cache enable.
const WCE: u8 = 0x04;

/// Page control values of MODE SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

/// One mode page's bytes (including its 2-byte header) for `pc`.
fn page(lun: &LogicalUnit, code: u8, pc: PageControl) -> Vec<u8> {
    match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 18;
            p[2] = match pc {
                PageControl::Changeable | PageControl::Default => WCE,
                PageControl::Current if lun.write_cache_enabled() => WCE,
                PageControl::Current => 0,
            };
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 10;
            if pc == PageControl::Changeable {
                p[2] = D_SENSE;
                // SWP can be changed unless the device itself is read-only.
                if !lun.device.read_only() {
                    p[4] = SWP;
                }
            } else {
                // TST 001: a task set per I_T nexus, which is where task attributes are
                // honoured (the iSCSI session orders its own commands).
                p[2] = 0x20;
                // Queue algorithm modifier 1 (unrestricted reordering), QERR 0.
                p[3] = 0x10;
                // Busy timeout: unlimited.
                p[8] = 0xff;
                p[9] = 0xff;
            }
            if pc == PageControl::Current && lun.software_write_protected() {
                p[4] |= SWP;
            }
            if pc == PageControl::Current && lun.descriptor_sense() {
                p[2] |= D_SENSE;
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = INFO_EXCEPTIONS;
            p[1] = 10;
            if pc != PageControl::Changeable {
                // DEXCPT: informational exceptions are disabled.
                p[2] = 0x08;
            }
            p
        }
    }
}

/// MODE SENSE; returns the whole mode parameter data (the caller applies the allocation
/// length).
pub fn mode_sense(
    lun: &LogicalUnit,
    long: bool,
    dbd: bool,
    llbaa: bool,
    pc: u8,
    page_code: u8,
    subpage: u8,
) -> Result<Bytes, Sense> {
    let pc = match pc {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
    };
    let codes: &[u8] = match page_code {
        CACHING => &[CACHING],
        CONTROL => &[CONTROL],
        INFO_EXCEPTIONS => &[INFO_EXCEPTIONS],
        ALL_PAGES => &[CACHING, CONTROL, INFO_EXCEPTIONS],
        _ => return Err(Sense::invalid_cdb_field(2, Some(5))),
    };
    // We have no subpages: only subpage 0 and, for "all pages", FFh (all subpages).
    if subpage != 0 && !(page_code == ALL_PAGES && subpage == 0xff) {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let mut pages = Vec::new();
    for &code in codes {
        pages.extend_from_slice(&page(lun, code, pc));
    }
    let long_lba = long && llbaa;
    let descriptor = if dbd {
        Vec::new()
    } else {
        block_descriptor(lun, long_lba)
    };
    let mut device_specific = 0x10; // DPOFUA
    if lun.read_only() {
        device_specific |= 0x80; // WP
    }
    let mut out = BytesMut::new();
    if long {
        let len = 6 + descriptor.len() + pages.len();
        out.put_u16(len as u16);
        out.put_u8(0);
        out.put_u8(device_specific);
        out.put_u8(u8::from(long_lba));
        out.put_u8(0);
        out.put_u16(descriptor.len() as u16);
    } else {
        let len = 3 + descriptor.len() + pages.len();
        out.put_u8(len.min(255) as u8);
        out.put_u8(0);
        out.put_u8(device_specific);
        out.put_u8(descriptor.len() as u8);
    }
    out.put_slice(&descriptor);
    out.put_slice(&pages);
    Ok(out.freeze())
}

/// Short (8-byte) or long (16-byte) block descriptor.
fn block_descriptor(lun: &LogicalUnit, long_lba: bool) -> Vec<u8> {
    let blocks = lun.blocks();
    let mut d = Vec::with_capacity(16);
    if long_lba {
        d.extend_from_slice(&blocks.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&lun.block_size().to_be_bytes());
    } else {
        let short = u32::try_from(blocks).unwrap_or(u32::MAX);
        d.extend_from_slice(&short.to_be_bytes());
        d.push(0);
        d.extend_from_slice(&lun.block_size().to_be_bytes()[1..]);
    }
    d
}

/// MODE SELECT: accepts parameter data whose pages match the current values except for the
/// changeable bits (WCE, SWP, D_SENSE). Returns true when something changed.
pub fn mode_select(lun: &LogicalUnit, long: bool, pf: bool, data: &[u8]) -> Result<bool, Sense> {
    if data.is_empty() {
        return Ok(false);
    }
    let header_len = if long { 8 } else { 4 };
    if data.len() < header_len {
        return Err(Sense::parameter_list_length());
    }
    let bd_len = if long {
        usize::from(u16::from_be_bytes([data[6], data[7]]))
    } else {
        usize::from(data[3])
    };
    let long_lba = long && data[4] & 1 != 0;
    let Some(pages_at) = header_len.checked_add(bd_len).filter(|&e| e <= data.len()) else {
        return Err(Sense::parameter_list_length());
    };
    // Each block descriptor must describe our block length (we cannot reformat).
    let bd_size = if long_lba { 16 } else { 8 };
    if bd_len % bd_size != 0 {
        return Err(Sense::invalid_param_field(
            if long { 6 } else { 3 } as u16,
            None,
        ));
    }
    for start in (header_len..pages_at).step_by(bd_size) {
        let len_at = if long_lba { start + 12 } else { start + 5 };
        let field = &data[len_at..start + bd_size];
        let mut value = 0u32;
        for &b in field {
            value = (value << 8) | u32::from(b);
        }
        if value != lun.block_size() && value != 0 {
            return Err(Sense::invalid_param_field(len_at as u16, None));
        }
    }
    if pages_at < data.len() && !pf {
        return Err(Sense::invalid_cdb_field(1, Some(4)));
    }
    let mut new_wce = None;
    let mut new_swp = None;
    let mut new_d_sense = None;
    let mut at = pages_at;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < 2 {
            return Err(Sense::parameter_list_length());
        }
        if rest[0] & 0x40 != 0 {
            // SPF: subpage format, and we have no subpages.
            return Err(Sense::invalid_param_field(at as u16, Some(6)));
        }
        let code = rest[0] & 0x3f;
        if !matches!(code, CACHING | CONTROL | INFO_EXCEPTIONS) {
            return Err(Sense::invalid_param_field(at as u16, Some(5)));
        }
        let current = page(lun, code, PageControl::Current);
        let changeable = page(lun, code, PageControl::Changeable);
        if usize::from(rest[1]) + 2 != current.len() {
            return Err(Sense::invalid_param_field(at as u16 + 1, None));
        }
        let Some(given) = rest.get(..current.len()) else {
            return Err(Sense::parameter_list_length());
        };
        // Byte 0 carries PS (reserved in MODE SELECT); compare from byte 2 on.
        for i in 2..current.len() {
            let diff = (given[i] ^ current[i]) & !changeable[i];
            if diff != 0 {
                let bit = 7 - diff.leading_zeros() as u8;
                return Err(Sense::invalid_param_field((at + i) as u16, Some(bit)));
            }
        }
        match code {
            CACHING => new_wce = Some(given[2] & WCE != 0),
            CONTROL => {
                new_swp = Some(given[4] & SWP != 0);
                new_d_sense = Some(given[2] & D_SENSE != 0);
            }
            _ => {}
        }
        at += current.len();
    }
    // Nothing is applied before every page has been validated.
    let mut changed = false;
    if let Some(wce) = new_wce.filter(|&w| w != lun.write_cache_enabled()) {
        lun.set_write_cache(wce);
        changed = true;
    }
    if let Some(swp) = new_swp.filter(|&s| s != lun.software_write_protected()) {
        lun.set_software_write_protect(swp);
        changed = true;
    }
    if let Some(d_sense) = new_d_sense.filter(|&d| d != lun.descriptor_sense()) {
        lun.set_descriptor_sense(d_sense);
        changed = true;
    }
    Ok(changed)
}
