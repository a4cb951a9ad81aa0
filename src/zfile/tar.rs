//! Tar-wrapped layer blobs (image-config.md §7): a tar holding one file `overlaybd.commit`.
//! Sans-IO: finds the payload's offset and size in the first three 512-byte blocks.

use super::error::ZFileError;

/// Tar block size.
pub(crate) const BLOCK: usize = 512;
/// Bytes needed to locate any payload the reference can read (PAX header, PAX data, header).
pub(crate) const PREFIX_LEN: usize = 3 * BLOCK;

const OFF_SIZE: usize = 124;
const OFF_CHKSUM: usize = 148;
const OFF_TYPEFLAG: usize = 156;
const OFF_MAGIC: usize = 257;
const OFF_VERSION: usize = 263;

/// Where the wrapped blob lies inside the tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TarPayload {
    /// Byte offset of the payload in the tar.
    pub offset: u64,
    /// Payload length.
    pub size: u64,
}

/// Parses an octal number like C `sscanf("%o")`: leading blanks, then octal digits up to the
/// first other byte. `None` without digits or on overflow.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))?;
    let digits = field[start..]
        .iter()
        .take_while(|b| (b'0'..=b'7').contains(b));
    let mut value: u64 = 0;
    let mut any = false;
    for d in digits {
        value = value.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// True if `block` is a USTAR/PAX header with a valid checksum (§7.1).
pub(crate) fn is_tar_header(block: &[u8]) -> bool {
    let Some(block) = block.get(..BLOCK) else {
        return false;
    };
    if &block[OFF_MAGIC..OFF_MAGIC + 5] != b"ustar" || &block[OFF_VERSION..OFF_VERSION + 2] != b"00"
    {
        return false;
    }
    let Some(stored) = parse_octal(&block[OFF_CHKSUM..OFF_CHKSUM + 8]) else {
        return false;
    };
    let chksum_field = OFF_CHKSUM..OFF_CHKSUM + 8;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if chksum_field.contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    i64::try_from(stored).is_ok_and(|s| s == unsigned || s == signed)
}

/// The decimal `size` record of PAX extended-header data, if any (`"<len> key=value\n"`
/// records; the last `size` wins, as in tar).
fn pax_size(mut data: &[u8]) -> Result<Option<u64>, ZFileError> {
    let bad = |why: &str| ZFileError::Tar(format!("malformed PAX record: {why}"));
    let mut size = None;
    while !data.is_empty() {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("length is not a number"))?;
        let record = data
            .get(..len)
            .filter(|r| len > space + 1 && r.ends_with(b"\n"));
        let record = record.ok_or_else(|| bad("length does not match"))?;
        let kv = &record[space + 1..len - 1];
        if let Some(value) = kv.strip_prefix(b"size=") {
            let value = std::str::from_utf8(value)
                .ok()
                .filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
            size = Some(
                value
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("size is not a number"))?,
            );
        }
        data = &data[len..];
    }
    Ok(size)
}

/// The octal size field of a header block.
fn header_size(block: &[u8]) -> Result<u64, ZFileError> {
    parse_octal(&block[OFF_SIZE..OFF_SIZE + 12])
        .ok_or_else(|| ZFileError::Tar("unreadable size field".into()))
}

/// Checks that a header is the payload's file entry (a regular file).
fn require_regular(block: &[u8]) -> Result<(), ZFileError> {
    match block[OFF_TYPEFLAG] {
        b'0' | 0 => Ok(()),
        b'x' | b'g' | b'L' | b'K' => Err(ZFileError::Tar(
            "more than one extension header before the file (unsupported layout)".into(),
        )),
        other => Err(ZFileError::Tar(format!(
            "first entry has type {:?}, not a regular file",
            other as char
        ))),
    }
}

/// Locates the payload of a tar-wrapped blob from its first [`PREFIX_LEN`] bytes (fewer if the
/// blob is shorter). `Ok(None)`: not a tar. Layouts the reference would read at the wrong place
/// (GNU long names, PAX data over one block, several extension headers) and payloads running
/// past `blob_size` are errors.
pub(crate) fn locate_payload(
    prefix: &[u8],
    blob_size: u64,
) -> Result<Option<TarPayload>, ZFileError> {
    let Some(first) = prefix.get(..BLOCK).filter(|b| is_tar_header(b)) else {
        return Ok(None);
    };
    let truncated = || ZFileError::Tar("blob ends inside the tar headers".into());
    let (offset, size) = match first[OFF_TYPEFLAG] {
        b'x' | b'g' => {
            let pax_len = header_size(first)?;
            if pax_len == 0 || pax_len > BLOCK as u64 {
                return Err(ZFileError::Tar(format!(
                    "PAX data of {pax_len} bytes (exactly one block supported)"
                )));
            }
            let data = prefix
                .get(BLOCK..BLOCK + pax_len as usize)
                .ok_or_else(truncated)?;
            let from_pax = pax_size(data)?;
            let file = prefix.get(2 * BLOCK..3 * BLOCK).ok_or_else(truncated)?;
            if !is_tar_header(file) {
                return Err(ZFileError::Tar(
                    "no valid file header after the PAX header".into(),
                ));
            }
            require_regular(file)?;
            let size = match from_pax.filter(|&s| s > 0) {
                Some(s) => s,
                None => header_size(file)?,
            };
            (3 * BLOCK as u64, size)
        }
        _ => {
            require_regular(first)?;
            (BLOCK as u64, header_size(first)?)
        }
    };
    let end = offset
        .checked_add(size)
        .ok_or_else(|| ZFileError::Tar("payload size overflows".into()))?;
    if end > blob_size {
        return Err(ZFileError::Tar(format!(
            "payload [{offset}, {end}) runs past the blob end {blob_size}"
        )));
    }
    Ok(Some(TarPayload { offset, size }))
}

/// Builders of the two wrapper layouts of §7.3, for tests.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    fn octal_a(field: &mut [u8], v: u64) {
        field[..8].copy_from_slice(format!("{v:>6o} \0").as_bytes());
    }

    fn octal_b(field: &mut [u8], v: u64) {
        field[..12].copy_from_slice(format!("{v:>11o} ").as_bytes());
    }

    fn seal(block: &mut [u8]) {
        block[OFF_MAGIC..OFF_MAGIC + 6].copy_from_slice(b"ustar\0");
        block[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(b"00");
        block[OFF_CHKSUM..OFF_CHKSUM + 8].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        octal_a(&mut block[OFF_CHKSUM..], sum);
    }

    fn header(name: &str, typeflag: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal_b(&mut h[OFF_SIZE..], size);
        h[OFF_TYPEFLAG] = typeflag;
        h
    }

    fn tail(mut out: Vec<u8>, payload: &[u8]) -> Vec<u8> {
        out.extend_from_slice(payload);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
        out
    }

    /// Go `archive/tar` style: one USTAR header, payload at 512.
    pub(crate) fn ustar(payload: &[u8]) -> Vec<u8> {
        let mut h = header("overlaybd.commit", b'0', payload.len() as u64);
        octal_a(&mut h[100..], 0o444);
        seal(&mut h);
        tail(h, payload)
    }

    /// `overlaybd-zfile -t` style: PAX header + record + USTAR header with size 0, payload at 1536.
    pub(crate) fn pax(payload: &[u8]) -> Vec<u8> {
        let body = format!(" size={}\n", payload.len());
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        let record = format!("{len}{body}");
        let mut out = header("overlaybd.pax", b'x', record.len() as u64);
        seal(&mut out);
        let mut data = record.into_bytes();
        data.resize(BLOCK, 0);
        out.extend_from_slice(&data);
        let mut h = header("overlaybd.commit", b'0', 0);
        octal_a(&mut h[100..], 0o100644);
        octal_a(&mut h[108..], 0);
        octal_a(&mut h[116..], 0);
        octal_b(&mut h[136..], 0);
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        seal(&mut h);
        out.extend_from_slice(&h);
        tail(out, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_like_sscanf() {
        assert_eq!(parse_octal(b"  100644 \0"), Some(0o100644));
        assert_eq!(parse_octal(b"0000017\0"), Some(15));
        assert_eq!(parse_octal(b"\0\0"), None);
        assert_eq!(parse_octal(b"   9"), None);
        assert_eq!(parse_octal(b"7777777777777777777777777"), None, "overflow");
    }

    #[test]
    fn both_wrapper_layouts_are_located() {
        let payload = vec![0xA5u8; 1000];
        let go = build::ustar(&payload);
        assert_eq!(go.len(), 512 + 1024 + 1024);
        assert_eq!(
            locate_payload(&go[..PREFIX_LEN], go.len() as u64).unwrap(),
            Some(TarPayload {
                offset: 512,
                size: 1000
            })
        );
        let pax = build::pax(&payload);
        assert_eq!(pax.len(), (1536 + 1000usize).div_ceil(512) * 512 + 1024);
        assert_eq!(&pax[512..526], b"13 size=1000\n\0");
        assert_eq!(
            locate_payload(&pax[..PREFIX_LEN], pax.len() as u64).unwrap(),
            Some(TarPayload {
                offset: 1536,
                size: 1000
            })
        );
    }

    #[test]
    fn not_a_tar() {
        assert_eq!(locate_payload(&[0u8; 1536], 1536).unwrap(), None);
        assert_eq!(locate_payload(b"short", 5).unwrap(), None);
        // Old GNU magic "ustar  \0" is not recognised, like the reference.
        let mut go = build::ustar(&[1, 2, 3]);
        go[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(b" \0");
        assert_eq!(
            locate_payload(&go[..PREFIX_LEN], go.len() as u64).unwrap(),
            None
        );
        // A wrong checksum.
        let mut go = build::ustar(&[1, 2, 3]);
        go[0] ^= 1;
        assert_eq!(
            locate_payload(&go[..PREFIX_LEN], go.len() as u64).unwrap(),
            None
        );
    }

    #[test]
    fn unsupported_or_broken_layouts_are_errors() {
        let payload = vec![7u8; 100];
        // Payload past the end of the blob.
        let go = build::ustar(&payload);
        assert!(locate_payload(&go[..PREFIX_LEN], 600).is_err());
        // GNU long name first.
        let mut gnu = build::ustar(&payload);
        gnu[OFF_TYPEFLAG] = b'L';
        gnu[OFF_CHKSUM..OFF_CHKSUM + 8].fill(b' ');
        let sum: u64 = gnu[..512].iter().map(|&b| u64::from(b)).sum();
        gnu[OFF_CHKSUM..OFF_CHKSUM + 8].copy_from_slice(format!("{sum:>6o} \0").as_bytes());
        assert!(matches!(
            locate_payload(&gnu[..PREFIX_LEN], gnu.len() as u64),
            Err(ZFileError::Tar(_))
        ));
        // PAX record with a wrong length.
        let mut pax = build::pax(&payload);
        pax[512] = b'9';
        assert!(matches!(
            locate_payload(&pax[..PREFIX_LEN], pax.len() as u64),
            Err(ZFileError::Tar(_))
        ));
        // PAX header whose file header is missing.
        let pax = build::pax(&payload);
        assert!(locate_payload(&pax[..1024], pax.len() as u64).is_err());
    }
}
