//! PostgreSQL's 8 KiB data pages as a backup sees them: the page LSN (what an
//! incremental backup compares with its parent's start), whether a page is new
//! or its header sane, and the page checksum (FNV-1a based, over 32 lanes).

use crate::wal::names::Lsn;

pub const BLCKSZ: usize = 8192;
/// Blocks in one relation segment file (1 GiB of 8 KiB blocks, PostgreSQL's default).
pub const RELSEG_BLOCKS: u64 = 131_072;

fn u16_at(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}
fn u32_at(page: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(page[at..at + 4].try_into().expect("4 bytes"))
}

/// `pd_lsn`: the WAL position just after the last change written to the page.
pub fn lsn(page: &[u8]) -> Lsn {
    Lsn(((u32_at(page, 0) as u64) << 32) | u32_at(page, 4) as u64)
}

pub fn stored_checksum(page: &[u8]) -> u16 {
    u16_at(page, 8)
}

/// A page never initialised: PostgreSQL extends relations with zeroed pages.
pub fn is_zero(page: &[u8]) -> bool {
    page.iter().all(|&b| b == 0)
}

/// The header checks PostgreSQL makes before it trusts a page (bufpage.c's
/// PageIsVerified): flags, and lower ≤ upper ≤ special ≤ block size, aligned.
pub fn header_sane(page: &[u8]) -> bool {
    let (flags, lower, upper, special) = (
        u16_at(page, 10),
        u16_at(page, 12) as usize,
        u16_at(page, 14) as usize,
        u16_at(page, 16) as usize,
    );
    upper != 0
        && flags & !0x0007 == 0
        && lower <= upper
        && upper <= special
        && special <= BLCKSZ
        && special % 8 == 0
}

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
/// The initial state of each of the 32 lanes (part of the algorithm's definition).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for this page at block
/// `blkno` of its relation (segment files counted: segment × 131072 + block).
pub fn checksum(page: &[u8], blkno: u32) -> u16 {
    debug_assert_eq!(page.len(), BLCKSZ);
    let mut sums = BASE_OFFSETS;
    for row in page.chunks_exact(4 * N_SUMS) {
        for (j, sum) in sums.iter_mut().enumerate() {
            let mut v = u32::from_le_bytes(row[4 * j..4 * j + 4].try_into().expect("4 bytes"));
            // The stored checksum is not part of what it sums: bytes 8-9 count as zero.
            if std::ptr::eq(row.as_ptr(), page.as_ptr()) && j == 2 {
                v &= 0xFFFF_0000;
            }
            *sum = mix(*sum, v);
        }
    }
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |a, s| a ^ s) ^ blkno;
    ((folded % 65535) + 1) as u16
}

/// What reading one page found, for a cluster with data checksums.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Good,
    /// Changed since `since` (the backup's start): whatever was read is
    /// replaced by WAL replay, so a torn read is not a failure.
    Changing,
    Bad,
}

pub fn verify(page: &[u8], blkno: u32, since: Lsn) -> Verdict {
    if is_zero(page) {
        return Verdict::Good;
    }
    if header_sane(page) && lsn(page) >= since {
        return Verdict::Changing;
    }
    if header_sane(page) && checksum(page, blkno) == stored_checksum(page) {
        Verdict::Good
    } else {
        Verdict::Bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page_with(lsn: u64, lower: u16, upper: u16) -> Vec<u8> {
        let mut p = vec![0u8; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[12..14].copy_from_slice(&lower.to_le_bytes());
        p[14..16].copy_from_slice(&upper.to_le_bytes());
        p[16..18].copy_from_slice(&(BLCKSZ as u16).to_le_bytes());
        p[18..20].copy_from_slice(&(0x2000u16 | 4).to_le_bytes());
        p
    }

    #[test]
    fn header_and_lsn() {
        let p = page_with(0x1_0000_0028, 40, 8000);
        assert_eq!(lsn(&p), Lsn(0x1_0000_0028));
        assert!(header_sane(&p));
        assert!(!header_sane(&page_with(1, 9000, 8000)));
        assert!(!header_sane(&vec![0u8; BLCKSZ]));
        assert!(is_zero(&vec![0u8; BLCKSZ]));
    }

    #[test]
    fn checksum_ignores_its_own_field_and_depends_on_the_block() {
        let mut p = page_with(0x28, 40, 8000);
        p[5000] = 7;
        let c = checksum(&p, 3);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        assert_eq!(checksum(&p, 3), c);
        assert_eq!(verify(&p, 3, Lsn(0x1000)), Verdict::Good);
        assert_eq!(verify(&p, 4, Lsn(0x1000)), Verdict::Bad);
        p[6000] = 1;
        assert_eq!(verify(&p, 3, Lsn(0x1000)), Verdict::Bad);
        // Written after the backup started: replay replaces it.
        assert_eq!(verify(&p, 3, Lsn(0x10)), Verdict::Changing);
        assert_ne!(c, 0);
    }
}
