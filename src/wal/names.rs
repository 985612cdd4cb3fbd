//! WAL file names and LSN arithmetic.
//!
//! A segment name is `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then the segment
//! number split as `segno / segments_per_xlogid` and `segno % segments_per_xlogid`,
//! where `segments_per_xlogid = 2^32 / segment_size`.

use anyhow::{bail, Result};
use std::fmt;

/// A WAL location (log sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `X/Y` form.
    pub fn parse(s: &str) -> Result<Lsn> {
        let Some((hi, lo)) = s.trim().split_once('/') else {
            bail!("'{s}' is not an LSN (expected the form 16/B374D848)");
        };
        let parse = |p: &str| {
            // from_str_radix alone would also take a leading '+'.
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(p, 16).ok()
            }
        };
        match (parse(hi), parse(lo)) {
            (Some(h), Some(l)) => Ok(Lsn(((h as u64) << 32) | l as u64)),
            _ => bail!("'{s}' is not an LSN (expected the form 16/B374D848)"),
        }
    }

    pub fn segno(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A segment: timeline and the two name halves (independent of segment size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub tli: u32,
    pub log: u32,
    pub seg: u32,
}

impl SegmentName {
    pub fn from_segno(tli: u32, segno: u64, seg_size: u64) -> SegmentName {
        let per = segments_per_xlogid(seg_size);
        SegmentName {
            tli,
            log: (segno / per) as u32,
            seg: (segno % per) as u32,
        }
    }

    /// The segment number, or an error when the low half is out of range for this size.
    pub fn segno(&self, seg_size: u64) -> Result<u64> {
        let per = segments_per_xlogid(seg_size);
        if self.seg as u64 >= per {
            bail!(
                "segment name {self} is impossible with {} MiB segments",
                seg_size >> 20
            );
        }
        Ok(self.log as u64 * per + self.seg as u64)
    }

    /// The LSN where this segment starts.
    pub fn start_lsn(&self, seg_size: u64) -> Result<Lsn> {
        Ok(Lsn(self.segno(seg_size)? * seg_size))
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.tli, self.log, self.seg)
    }
}

pub fn segments_per_xlogid(seg_size: u64) -> u64 {
    0x1_0000_0000 / seg_size
}

/// Segment sizes initdb accepts: powers of two from 1 MiB to 1 GiB.
pub fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// The kinds of file PostgreSQL archives and asks back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFile {
    /// A full segment.
    Segment(SegmentName),
    /// The last, incomplete segment of a timeline left behind at promotion.
    Partial(SegmentName),
    /// `TTTTTTTT.history`: the timeline's ancestry.
    History(u32),
    /// `<segment>.XXXXXXXX.backup`: the backup history file written at pg_backup_stop.
    BackupHistory(SegmentName, u32),
}

fn hex8(s: &str) -> Option<u32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(s, 16).ok())
        .flatten()
}

fn segment(s: &str) -> Option<SegmentName> {
    // Bytes checked first: slicing a string with multi-byte characters at 8 and
    // 16 would panic (found by tests/parsers_fuzz.rs).
    if s.len() != 24 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(SegmentName {
        tli: hex8(&s[..8])?,
        log: hex8(&s[8..16])?,
        seg: hex8(&s[16..])?,
    })
}

impl WalFile {
    pub fn parse(name: &str) -> Result<WalFile> {
        let bad = || {
            anyhow::anyhow!(
                "'{name}' is not a WAL file name (expected a 24-hex-digit segment, TTTTTTTT.history, <segment>.partial or <segment>.XXXXXXXX.backup)"
            )
        };
        if let Some(s) = segment(name) {
            if s.tli == 0 {
                bail!("'{name}': timeline 0 does not exist");
            }
            return Ok(WalFile::Segment(s));
        }
        if let Some(base) = name.strip_suffix(".partial") {
            return segment(base).map(WalFile::Partial).ok_or_else(bad);
        }
        if let Some(base) = name.strip_suffix(".history") {
            return hex8(base)
                .filter(|t| *t > 0)
                .map(WalFile::History)
                .ok_or_else(bad);
        }
        if let Some(base) = name.strip_suffix(".backup") {
            let (seg, off) = base.split_once('.').ok_or_else(bad)?;
            return Ok(WalFile::BackupHistory(
                segment(seg).ok_or_else(bad)?,
                hex8(off).ok_or_else(bad)?,
            ));
        }
        Err(bad())
    }

    /// The segment whose long page header this file starts with, if any.
    pub fn segment(&self) -> Option<SegmentName> {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) => Some(*s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    #[test]
    fn lsn_parse_and_format() {
        assert_eq!(Lsn::parse("0/3000028").unwrap(), Lsn(0x3000028));
        assert_eq!(Lsn::parse("16/B374D848").unwrap(), Lsn(0x16_B374D848));
        assert_eq!(Lsn(0x16_B374D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        for bad in ["", "0", "x/1", "1/", "/1", "123456789/0", "0/-1", "+1/+2"] {
            assert!(Lsn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_with_multibyte_characters_are_refused_not_a_panic() {
        for bad in [
            " \u{104D8}\u{1EE5D}®\u{1D53B}a0A\u{11300}A0",
            "00000001000000000000000é",
        ] {
            assert!(WalFile::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_math_16mb() {
        assert_eq!(segments_per_xlogid(MB16), 256);
        let s = SegmentName::from_segno(1, 0x1_05, MB16);
        assert_eq!(s.to_string(), "000000010000000100000005");
        assert_eq!(s.segno(MB16).unwrap(), 0x105);
        assert_eq!(s.start_lsn(MB16).unwrap(), Lsn(0x1_05000000));
        assert_eq!(Lsn(0x1_05FFFFFF).segno(MB16), 0x105);
        let bad = SegmentName {
            tli: 1,
            log: 0,
            seg: 0x100,
        };
        assert!(bad.segno(MB16).is_err());
    }

    #[test]
    fn segment_math_other_sizes() {
        let mb1 = 1 << 20;
        assert_eq!(segments_per_xlogid(mb1), 4096);
        let s = SegmentName::from_segno(3, 4097, mb1);
        assert_eq!(s.to_string(), "000000030000000100000001");
        let gb1 = 1 << 30;
        assert_eq!(
            SegmentName::from_segno(1, 5, gb1).to_string(),
            "000000010000000100000001"
        );
        assert!(valid_segment_size(MB16) && valid_segment_size(1 << 30));
        assert!(!valid_segment_size(3 << 20) && !valid_segment_size(1 << 19));
    }

    #[test]
    fn file_kinds() {
        let s = SegmentName {
            tli: 2,
            log: 0,
            seg: 0x1A,
        };
        assert_eq!(
            WalFile::parse("00000002000000000000001A").unwrap(),
            WalFile::Segment(s)
        );
        assert_eq!(
            WalFile::parse("00000002000000000000001a").unwrap(),
            WalFile::Segment(s)
        );
        assert_eq!(
            WalFile::parse("00000002000000000000001A.partial").unwrap(),
            WalFile::Partial(s)
        );
        assert_eq!(
            WalFile::parse("00000002.history").unwrap(),
            WalFile::History(2)
        );
        assert_eq!(
            WalFile::parse("00000002000000000000001A.00000028.backup").unwrap(),
            WalFile::BackupHistory(s, 0x28)
        );
        for bad in [
            "",
            "RECOVERYXLOG",
            "00000000000000000000001A",
            "0000000200000000000001A",
            "00000002000000000000001G",
            "00000000.history",
            "0000002.history",
            "00000002000000000000001A.backup",
            "00000002000000000000001A.partialx",
            "../../etc/passwd",
        ] {
            assert!(WalFile::parse(bad).is_err(), "{bad}");
        }
    }
}
