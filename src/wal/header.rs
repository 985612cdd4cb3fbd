//! The long page header at the start of every WAL segment
//! (XLogLongPageHeaderData in PostgreSQL's access/xlog_internal.h):
//!
//! ```text
//! 0  u16 xlp_magic      WAL format version of the server major
//! 2  u16 xlp_info       flags; XLP_LONG_HEADER (0x0002) on a segment's first page
//! 4  u32 xlp_tli        timeline of the page
//! 8  u64 xlp_pageaddr   LSN of the page: the segment's start
//! 16 u32 xlp_rem_len
//! 24 u64 xlp_sysid      system identifier of the cluster
//! 32 u32 xlp_seg_size
//! 36 u32 xlp_xlog_blcksz
//! ```
//! Little-endian: walvault runs on the same machine as the server.

use super::names::{valid_segment_size, Lsn, SegmentName};
use anyhow::{bail, Result};

pub const LONG_HEADER_LEN: usize = 40;
const XLP_LONG_HEADER: u16 = 0x0002;

/// WAL page magic (XLOG_PAGE_MAGIC) of each supported major version.
pub const MAGICS: &[(u16, u32)] = &[
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// Magics of majors walvault does not support, so a refusal can name them.
const OLDER_MAGICS: &[(u16, u32)] = &[(0xD093, 9), (0xD097, 10), (0xD098, 11), (0xD101, 12)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub pageaddr: Lsn,
    pub sysid: u64,
    pub seg_size: u32,
    pub blcksz: u32,
}

impl LongPageHeader {
    pub fn parse(b: &[u8]) -> Result<LongPageHeader> {
        if b.len() < LONG_HEADER_LEN {
            bail!(
                "file is {} bytes, too short to hold a WAL page header",
                b.len()
            );
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        Ok(LongPageHeader {
            magic: u16_at(0),
            info: u16_at(2),
            tli: u32_at(4),
            pageaddr: Lsn(u64_at(8)),
            sysid: u64_at(24),
            seg_size: u32_at(32),
            blcksz: u32_at(36),
        })
    }

    /// The PostgreSQL major version this magic belongs to.
    pub fn pg_major(&self) -> Option<u32> {
        MAGICS
            .iter()
            .find(|(m, _)| *m == self.magic)
            .map(|(_, v)| *v)
    }

    /// The refusal of a magic no supported major writes, naming the major
    /// where it can: an older one by its magic, a newer one as "newer than".
    fn unsupported(&self) -> anyhow::Error {
        let magic = format!("page magic {:#06X}", self.magic);
        let newest = MAGICS[MAGICS.len() - 1].0;
        if let Some((_, major)) = OLDER_MAGICS.iter().find(|(m, _)| *m == self.magic) {
            crate::pg::majors::refusal(*major, &format!("WAL {magic}"))
        } else if self.magic > newest && self.magic >> 8 == newest >> 8 {
            anyhow::anyhow!(
                "a WAL segment of a PostgreSQL newer than {} ({magic}) is not supported: walvault {} supports PostgreSQL {}; a newer walvault may support it",
                crate::pg::majors::NEWEST,
                env!("CARGO_PKG_VERSION"),
                crate::pg::majors::known()
            )
        } else {
            anyhow::anyhow!(
                "not a WAL segment of PostgreSQL {} ({magic})",
                crate::pg::majors::known()
            )
        }
    }

    /// Checks that this is the first page of segment `name`, `file_len` bytes long.
    pub fn check(&self, name: &SegmentName, file_len: u64) -> Result<()> {
        if self.pg_major().is_none() {
            return Err(self.unsupported());
        }
        if self.info & XLP_LONG_HEADER == 0 {
            bail!("first page lacks the long header flag: not the start of a WAL segment");
        }
        let seg_size = self.seg_size as u64;
        if !valid_segment_size(seg_size) {
            bail!("header names an impossible segment size of {seg_size} bytes");
        }
        if file_len != seg_size {
            bail!("file is {file_len} bytes but its header says segments are {seg_size} bytes");
        }
        if !(1024..=32768).contains(&self.blcksz) || !self.blcksz.is_power_of_two() {
            bail!(
                "header names an impossible WAL block size of {}",
                self.blcksz
            );
        }
        let expected = name.start_lsn(seg_size)?;
        if self.pageaddr != expected {
            bail!(
                "page address {} does not match the file name {name} (expected {expected}): the file was renamed or is stale",
                self.pageaddr
            );
        }
        // After a timeline switch the new timeline's first segment starts with a copy
        // of the old timeline's pages, so the page's timeline may be older than the name's.
        if self.tli == 0 || self.tli > name.tli {
            bail!(
                "page timeline {} does not fit file name timeline {}",
                self.tli,
                name.tli
            );
        }
        Ok(())
    }
}

/// Checks that the file at `path` is segment `name` of the cluster `sysid`
/// (when known): what `wal-fetch` and the prefetch spool hand to PostgreSQL,
/// which would take a wrong page address for the end of WAL and stop early.
/// The error names the segment the file really holds.
pub fn check_segment_file(
    path: &std::path::Path,
    name: &SegmentName,
    sysid: Option<u64>,
) -> Result<()> {
    use std::io::Read;
    let mut b = [0u8; LONG_HEADER_LEN];
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.read_exact(&mut b)
        .map_err(|_| anyhow::anyhow!("{len} bytes: too short to be WAL segment {name}"))?;
    let h = LongPageHeader::parse(&b)?;
    let held = || {
        let seg = h.seg_size as u64;
        if valid_segment_size(seg) && h.tli > 0 {
            SegmentName::from_segno(h.tli, h.pageaddr.segno(seg), seg).to_string()
        } else {
            format!("page address {}", h.pageaddr)
        }
    };
    h.check(name, len)
        .map_err(|e| anyhow::anyhow!("it holds {} instead of {name}: {e}", held()))?;
    if let Some(want) = sysid {
        if h.sysid != want {
            bail!(
                "it is {} of another cluster (system identifier {}, {want} expected)",
                held(),
                h.sysid
            );
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn fake_header(
    magic: u16,
    tli: u32,
    pageaddr: u64,
    sysid: u64,
    seg_size: u32,
) -> Vec<u8> {
    let mut b = vec![0u8; LONG_HEADER_LEN];
    b[0..2].copy_from_slice(&magic.to_le_bytes());
    b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
    b[4..8].copy_from_slice(&tli.to_le_bytes());
    b[8..16].copy_from_slice(&pageaddr.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&seg_size.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u32 = 16 << 20;

    #[test]
    fn accepts_a_matching_header() {
        let name = SegmentName {
            tli: 1,
            log: 0,
            seg: 3,
        };
        let h = LongPageHeader::parse(&fake_header(0xD110, 1, 0x3000000, 42, MB16)).unwrap();
        assert_eq!(h.sysid, 42);
        assert_eq!(h.pg_major(), Some(15));
        h.check(&name, MB16 as u64).unwrap();
        // First segment of timeline 2 may carry timeline 1 pages.
        let name2 = SegmentName { tli: 2, ..name };
        h.check(&name2, MB16 as u64).unwrap();
    }

    #[test]
    fn refuses_what_does_not_match() {
        let name = SegmentName {
            tli: 1,
            log: 0,
            seg: 3,
        };
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (
                fake_header(0x1234, 1, 0x3000000, 1, MB16),
                MB16 as u64,
                "page magic",
            ),
            (
                fake_header(0xD110, 1, 0x4000000, 1, MB16),
                MB16 as u64,
                "page address",
            ),
            (
                fake_header(0xD110, 2, 0x3000000, 1, MB16),
                MB16 as u64,
                "timeline",
            ),
            (fake_header(0xD110, 1, 0x3000000, 1, MB16), 1000, "bytes"),
            (
                fake_header(0xD110, 1, 0x3000000, 1, 3 << 20),
                3 << 20,
                "segment size",
            ),
        ];
        for (bytes, len, want) in cases {
            let e = LongPageHeader::parse(&bytes)
                .unwrap()
                .check(&name, len)
                .unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let mut no_long = fake_header(0xD110, 1, 0x3000000, 1, MB16);
        no_long[2] = 0;
        let e = LongPageHeader::parse(&no_long)
            .unwrap()
            .check(&name, MB16 as u64)
            .unwrap_err();
        assert!(e.to_string().contains("long header"), "{e}");
        assert!(LongPageHeader::parse(b"short").is_err());
    }

    #[test]
    fn knows_every_supported_major_and_names_the_others() {
        let name = SegmentName {
            tli: 1,
            log: 0,
            seg: 3,
        };
        let check = |magic: u16| {
            LongPageHeader::parse(&fake_header(magic, 1, 0x3000000, 1, MB16))
                .unwrap()
                .check(&name, MB16 as u64)
        };
        for (magic, major) in MAGICS {
            assert!(crate::pg::majors::supported(*major));
            check(*magic).unwrap();
        }
        let majors: Vec<u32> = MAGICS.iter().map(|(_, v)| *v).collect();
        assert_eq!(majors, (13..=18).collect::<Vec<_>>());
        let e = check(0xD101).unwrap_err().to_string();
        assert!(e.contains("PostgreSQL 12 (WAL page magic 0xD101)"), "{e}");
        assert!(e.contains("supports PostgreSQL 13 to 18"), "{e}");
        let e = check(0xD11B).unwrap_err().to_string();
        assert!(e.contains("newer than 18 (page magic 0xD11B)"), "{e}");
        let e = check(0x1234).unwrap_err().to_string();
        assert!(
            e.contains("not a WAL segment of PostgreSQL 13 to 18"),
            "{e}"
        );
    }
}
