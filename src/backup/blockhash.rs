//! The hash of each 8 KiB block of a relation file: what an incremental
//! backup compares with its parent's to find what changed, and what a file
//! assembled from blocks is checked by.
//!
//! Backups before incremental format 4 hash blocks with SHA-256; newer ones
//! with BLAKE3, about twice as fast on this work (an incremental reads and
//! hashes the whole cluster) for the same 128-bit hash kept. A chain keeps
//! the algorithm of its full backup (the manifest says which), so increments
//! always compare like with like.

use super::page::BLCKSZ;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io;
use std::os::unix::fs::FileExt;

/// The bytes of a block's hash kept.
pub const BLOCK_HASH: usize = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockHash {
    /// Manifests without the field: written before BLAKE3.
    #[default]
    Sha256,
    Blake3,
}

impl BlockHash {
    /// What a new full backup uses.
    pub const NEW: BlockHash = BlockHash::Blake3;

    pub fn is_sha256(&self) -> bool {
        *self == BlockHash::Sha256
    }

    /// The prefix of a record's `sha256` that holds a blocks digest of this kind.
    fn prefix(self) -> &'static str {
        match self {
            BlockHash::Sha256 => "blocks:",
            BlockHash::Blake3 => "blocks-blake3:",
        }
    }

    /// The kind of blocks digest `sha256` (a record's) is; None for a sha256.
    pub fn of_digest(sha256: &str) -> Option<BlockHash> {
        [BlockHash::Sha256, BlockHash::Blake3]
            .into_iter()
            .find(|h| sha256.starts_with(h.prefix()))
    }

    /// One block's hash into `out` (BLOCK_HASH bytes).
    pub fn one(self, block: &[u8], out: &mut [u8]) {
        match self {
            BlockHash::Sha256 => out.copy_from_slice(&Sha256::digest(block)[..BLOCK_HASH]),
            BlockHash::Blake3 => out.copy_from_slice(&blake3::hash(block).as_bytes()[..BLOCK_HASH]),
        }
    }

    /// What the record of a relation file read only in part holds instead of
    /// its sha256: the sha256 of its blocks' hashes (in order) and its size,
    /// prefixed with the kind of hashes.
    pub fn digest(self, hashes: &[u8], size: u64) -> String {
        let mut h = Sha256::new();
        h.update(hashes);
        h.update(size.to_le_bytes());
        format!("{}{}", self.prefix(), hex::encode(h.finalize()))
    }

    /// Appends the hash of each block of `chunk` to `out` (a short last block
    /// is hashed as it is), on this thread.
    pub fn hash_blocks(self, chunk: &[u8], out: &mut Vec<u8>) {
        let first = out.len();
        out.resize(first + chunk.len().div_ceil(BLCKSZ) * BLOCK_HASH, 0);
        for (p, h) in chunk
            .chunks(BLCKSZ)
            .zip(out[first..].chunks_exact_mut(BLOCK_HASH))
        {
            self.one(p, h);
        }
    }

    /// As [`Self::hash_blocks`], a large chunk split across the cores: a
    /// whole file read by one caller would otherwise keep one core busy
    /// while the other waits.
    pub fn append(self, chunk: &[u8], out: &mut Vec<u8>) {
        let blocks = chunk.len().div_ceil(BLCKSZ);
        // Below this a thread costs more than it saves.
        const SPLIT_MIN_BLOCKS: usize = 64;
        let pieces = threads().min(blocks / SPLIT_MIN_BLOCKS);
        if pieces < 2 {
            return self.hash_blocks(chunk, out);
        }
        let per = (blocks.div_ceil(pieces) * BLCKSZ) as u64;
        let bounds: Vec<(u64, u64)> = (0..chunk.len() as u64)
            .step_by(per as usize)
            .map(|a| (a, (a + per).min(chunk.len() as u64)))
            .collect();
        for hashes in in_parallel(&bounds, |a, b| {
            let mut h = Vec::new();
            self.hash_blocks(&chunk[a as usize..b as usize], &mut h);
            h
        }) {
            out.extend(hashes);
        }
    }

    /// The hashes of a file's blocks and its size, read and hashed in
    /// [`ranges`]: a delta restore hashes its target, then checks what it
    /// assembled, and a 1 GiB segment read on one thread is a quarter of a
    /// second of copying alone.
    pub fn of_file(self, f: &std::fs::File) -> io::Result<(Vec<u8>, u64)> {
        let size = f.metadata()?.len();
        let range = |from: u64, to: u64| -> io::Result<Vec<u8>> {
            let mut buf = vec![0u8; READ_BUF.min((to - from) as usize)];
            let mut hashes =
                Vec::with_capacity((to - from).div_ceil(BLCKSZ as u64) as usize * BLOCK_HASH);
            let mut at = from;
            while at < to {
                let want = buf.len().min((to - at) as usize);
                let len = read_full_at(f, &mut buf[..want], at)?;
                if len < want {
                    return Err(io::Error::other("the file shrank while it was read"));
                }
                self.hash_blocks(&buf[..len], &mut hashes);
                at += len as u64;
            }
            Ok(hashes)
        };
        let mut all = Vec::with_capacity(size.div_ceil(BLCKSZ as u64) as usize * BLOCK_HASH);
        for hashes in in_parallel(&ranges(size), range) {
            all.extend(hashes?);
        }
        Ok((all, size))
    }
}

/// Block hashes as a file list holds them: hex. A list holds one per block
/// of the cluster (6 MB of text at 100 GB), written and read by every
/// incremental backup: with the `hex` crate's char-by-char code, decoding
/// the parent's alone was a sixth of a summarized incremental's CPU.
pub fn to_hex(bytes: &[u8]) -> String {
    faster_hex::hex_string(bytes)
}

/// The bytes of hex text `s`; None when it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0u8; s.len() / 2];
    faster_hex::hex_decode(s.as_bytes(), &mut out).ok()?;
    Some(out)
}

/// The buffer a range is read through.
pub const READ_BUF: usize = 1 << 20;

/// A file of `size` bytes cut into ranges of whole blocks, one per core, to
/// be read and hashed beside each other; one range when small.
pub fn ranges(size: u64) -> Vec<(u64, u64)> {
    // Below this a thread costs more than it saves.
    const RANGE_MIN: u64 = 16 << 20;
    if size == 0 {
        return vec![(0, 0)];
    }
    let n = (size / RANGE_MIN).clamp(1, threads() as u64);
    let per = (size / n).div_ceil(BLCKSZ as u64) * BLCKSZ as u64;
    (0..n)
        .map(|i| ((i * per).min(size), ((i + 1) * per).min(size)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// `each` of every range (start, end), in order: beside each other, or on
/// this thread when there is one.
pub fn in_parallel<T: Send>(bounds: &[(u64, u64)], each: impl Fn(u64, u64) -> T + Sync) -> Vec<T> {
    if let [(a, b)] = bounds {
        return vec![each(*a, *b)];
    }
    let each = &each;
    std::thread::scope(|s| {
        let handles: Vec<_> = bounds
            .iter()
            .map(|&(a, b)| s.spawn(move || each(a, b)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread"))
            .collect()
    })
}

/// Reads into `buf` from `at` until it is full or the file ends: the bytes read.
pub fn read_full_at(f: &std::fs::File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match f.read_at(&mut buf[len..], at + len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// The cores used to hash one file or chunk (at most 8).
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_hashing_gives_each_block_its_own_hash_in_order() {
        // 300 blocks and a short one: split across threads, and not.
        let data: Vec<u8> = (0..300 * BLCKSZ + 100).map(|i| (i * 7 / 5) as u8).collect();
        for kind in [BlockHash::Sha256, BlockHash::Blake3] {
            let mut all = Vec::new();
            kind.append(&data, &mut all);
            let mut one_by_one = Vec::new();
            for p in data.chunks(BLCKSZ) {
                let mut h = [0u8; BLOCK_HASH];
                kind.one(p, &mut h);
                one_by_one.extend_from_slice(&h);
            }
            assert_eq!(all.len(), 301 * BLOCK_HASH);
            assert_eq!(all, one_by_one);
        }
        let (mut a, mut b) = ([0u8; BLOCK_HASH], [0u8; BLOCK_HASH]);
        BlockHash::Sha256.one(&data[..BLCKSZ], &mut a);
        BlockHash::Blake3.one(&data[..BLCKSZ], &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn a_file_hashed_in_ranges_gives_the_hashes_of_its_blocks_in_order() {
        // 150 MiB and a short block: two ranges or more on a machine of two cores.
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..150 * (1 << 20) + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        std::io::Write::write_all(&mut f, &data).unwrap();
        for kind in [BlockHash::Sha256, BlockHash::Blake3] {
            let (hashes, size) = kind.of_file(&f).unwrap();
            let mut whole = Vec::new();
            kind.append(&data, &mut whole);
            assert_eq!(size, data.len() as u64);
            assert_eq!(hashes, whole);
        }
    }

    #[test]
    fn hashes_as_text_are_the_lowercase_hex_older_lists_hold() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = to_hex(&bytes);
        assert_eq!(text, hex::encode(&bytes), "lists written before read alike");
        assert_eq!(from_hex(&text), Some(bytes));
        assert_eq!(from_hex("0a1"), None);
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex(""), Some(Vec::new()));
    }

    #[test]
    fn a_digest_names_its_kind() {
        let d = BlockHash::Blake3.digest(&[1; 32], 16384);
        assert_eq!(BlockHash::of_digest(&d), Some(BlockHash::Blake3));
        let s = BlockHash::Sha256.digest(&[1; 32], 16384);
        assert_eq!(BlockHash::of_digest(&s), Some(BlockHash::Sha256));
        assert!(s.starts_with("blocks:"), "older lists' digests still read");
        assert_eq!(BlockHash::of_digest(&"ab".repeat(32)), None);
    }
}
