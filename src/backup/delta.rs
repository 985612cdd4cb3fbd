//! The entry an incremental backup stores for a relation file it holds in
//! part: the blocks changed since the parent, written over the parent's file.
//!
//! `WVDELTA1 | file size u64 | block count u64 | block numbers u32… | pages`
//! (little-endian; numbers ascending; one 8 KiB page per number).

use super::page::BLCKSZ;
use anyhow::{bail, ensure, Context, Result};
use std::io::Read;
use std::os::unix::fs::FileExt;

const MAGIC: &[u8; 8] = b"WVDELTA1";
const HEAD: u64 = 24;

/// The entry's bytes before its pages.
pub fn header(file_size: u64, blocks: &[u32]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEAD as usize + 4 * blocks.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&file_size.to_le_bytes());
    h.extend_from_slice(&(blocks.len() as u64).to_le_bytes());
    for b in blocks {
        h.extend_from_slice(&b.to_le_bytes());
    }
    h
}

/// The length of an entry holding `count` blocks.
pub fn entry_len(count: u64) -> u64 {
    HEAD + count * (4 + BLCKSZ as u64)
}

/// Writes the entry read from `r` over `file` (the parent's version of the
/// file, already in place) and cuts or extends it to the recorded size.
/// Returns the blocks written.
pub fn apply(r: &mut dyn Read, file: &std::fs::File, path: &str) -> Result<u64> {
    let mut head = [0u8; HEAD as usize];
    r.read_exact(&mut head)
        .with_context(|| format!("{path}: block entry too short"))?;
    ensure!(&head[..8] == MAGIC, "{path}: not a walvault block entry");
    let size = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let count = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    let max_blocks = size.div_ceil(BLCKSZ as u64);
    ensure!(
        count <= max_blocks,
        "{path}: block entry lists {count} blocks for a file of {size} bytes"
    );
    let mut numbers = vec![0u8; 4 * count as usize];
    r.read_exact(&mut numbers)
        .with_context(|| format!("{path}: block entry too short"))?;
    let mut page = vec![0u8; BLCKSZ];
    let mut last: Option<u32> = None;
    for n in numbers.chunks_exact(4) {
        let blk = u32::from_le_bytes(n.try_into().expect("4 bytes"));
        if last.is_some_and(|l| blk <= l) || blk as u64 >= max_blocks {
            bail!("{path}: block entry lists block {blk} out of order or past the file's end");
        }
        last = Some(blk);
        r.read_exact(&mut page)
            .with_context(|| format!("{path}: block entry too short"))?;
        file.write_all_at(&page, blk as u64 * BLCKSZ as u64)
            .with_context(|| format!("cannot write {path}"))?;
    }
    file.set_len(size)
        .with_context(|| format!("cannot size {path}"))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_over_the_parent_then_cut_to_size() {
        let (_dir, p) = crate::testing::temp_path("f");
        std::fs::write(&p, vec![1u8; 4 * BLCKSZ]).unwrap();
        let mut entry = header(3 * BLCKSZ as u64, &[0, 2]);
        entry.extend(vec![7u8; BLCKSZ]);
        entry.extend(vec![9u8; BLCKSZ]);
        assert_eq!(entry.len() as u64, entry_len(2));
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        assert_eq!(apply(&mut entry.as_slice(), &f, "f").unwrap(), 2);
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 3 * BLCKSZ);
        assert!(got[..BLCKSZ].iter().all(|&b| b == 7));
        assert!(got[BLCKSZ..2 * BLCKSZ].iter().all(|&b| b == 1));
        assert!(got[2 * BLCKSZ..].iter().all(|&b| b == 9));
        // Blocks past the end, out of order or a short entry are refused.
        for bad in [
            header(BLCKSZ as u64, &[1]),
            header(9 * BLCKSZ as u64, &[3, 1]),
        ] {
            let mut e = bad;
            e.extend(vec![0u8; 2 * BLCKSZ]);
            assert!(apply(&mut e.as_slice(), &f, "f").is_err());
        }
        let short = header(2 * BLCKSZ as u64, &[0]);
        assert!(apply(&mut short.as_slice(), &f, "f").is_err());
    }
}
