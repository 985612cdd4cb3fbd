//! Reading PGDATA's files into a backup's tar parts: whole, hashed, every
//! relation page's checksum verified and each 8 KiB block's hash recorded
//! ([`super::blockhash`]);
//! or, against the parent of an incremental backup, only what changed.
//!
//! A block is the parent's when its hash is the one the parent recorded for
//! it: content, not page LSNs, decides. An LSN misses changes made without
//! WAL (hint bits, which would make the restored file differ from the one
//! recorded) and pages whose LSN was set back; a hash misses neither.
//!
//! With WAL summaries (PostgreSQL 17+) covering the range since the parent's
//! start, only the blocks they name (and blocks past the parent's end) are
//! read; the others are the parent's, as PostgreSQL's own incremental backup
//! takes them. Such a file's record holds the digest of its blocks' hashes
//! ([`BlockHash::digest`]) instead of the sha256 of a content never read
//! whole.

use super::blockhash::{self, BlockHash, BLOCK_HASH};
use super::page::{self, BLCKSZ, RELSEG_BLOCKS};
use super::walk::{self, Entry};
use super::{delta, FileRecord, Stored};
use crate::progress::Progress;
use crate::wal::names::Lsn;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// One file of the parent as restored.
pub struct ParentFile {
    pub size: u64,
    pub sha256: String,
    /// Its blocks' hashes (16 bytes each), for a relation file.
    pub blocks: Option<Vec<u8>>,
}

/// What an incremental backup builds on.
pub struct Parent {
    pub id: String,
    pub start: Lsn,
    /// Blocks changed since the parent's start by PostgreSQL's WAL summaries
    /// (17+), by relation; None when they do not cover the whole range.
    pub summarized: Option<HashMap<super::summaries::Relation, Changed>>,
}

/// Blocks of one relation (numbered across its segment files) that WAL
/// summaries say changed.
#[derive(Default, Debug)]
pub struct Changed {
    pub blocks: BTreeSet<u32>,
    /// The relation was cut to this block at some point: every block from it on is new.
    pub from: Option<u32>,
}

impl Changed {
    fn has(&self, blk: u32) -> bool {
        self.from.is_some_and(|f| blk >= f) || self.blocks.contains(&blk)
    }
}

pub struct Reader {
    pub parent: Option<Parent>,
    /// Data checksums are on: every relation page read is verified.
    pub checksums: bool,
    /// This backup's start: a page at or past it is being changed, and WAL
    /// replay from the start rewrites it, so a torn read of it is no failure.
    pub start: Lsn,
    /// `backup.max_rate_mb`: bytes read from the data directory.
    pub throttle: Option<std::sync::Arc<crate::throttle::Throttle>>,
    /// How blocks are hashed: the chain's kind.
    pub block_hash: BlockHash,
    failures: Mutex<BTreeMap<String, Vec<u32>>>,
}

/// Large enough that splitting its block hashing across threads pays.
const CHUNK: usize = 4 << 20;
/// Changed blocks are gathered in memory up to this, then in a temporary file.
const SPOOL_MEMORY: usize = 16 << 20;

impl Reader {
    pub fn new(
        parent: Option<Parent>,
        checksums: bool,
        start: Lsn,
        throttle: Option<std::sync::Arc<crate::throttle::Throttle>>,
        block_hash: BlockHash,
    ) -> Self {
        Reader {
            parent,
            checksums,
            start,
            throttle,
            block_hash,
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// Pages whose checksum failed, by path: block numbers within the file.
    pub fn failures(&self) -> BTreeMap<String, Vec<u32>> {
        let mut all = self.failures.lock().expect("failures").clone();
        // A file read twice (hashed against its parent, then stored) reports once.
        for blocks in all.values_mut() {
            blocks.sort_unstable();
            blocks.dedup();
        }
        all
    }

    /// Appends file `e` to the tar stream as this backup stores it; None when
    /// it was dropped since the walk (its absence is in the WAL).
    pub fn append<W: Write>(
        &self,
        b: &mut tar::Builder<W>,
        e: &Entry,
        in_parent: Option<&ParentFile>,
        part: u32,
        progress: &Progress,
    ) -> io::Result<Option<FileRecord>> {
        let f = match File::open(&e.source) {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot read {}: {err}", e.source.display()),
                ))
            }
        };
        let size = f.metadata()?.len();
        let main_fork = walk::relation_segment(&e.path).is_some_and(|(fork, _)| fork.is_empty())
            && size % BLCKSZ as u64 == 0;
        let record = |sha256: String, stored: Stored, blocks: Option<Vec<u8>>| FileRecord {
            path: e.path.clone(),
            size,
            sha256,
            part,
            stored,
            block_sha: blocks.as_deref().map(blockhash::to_hex),
            block_changes: None,
        };
        // A file held as changed blocks also records which, for its stored list.
        let with_changes = |(sha, stored, blocks, changed): BlocksRead| {
            let changes = matches!(stored, Stored::Blocks { .. })
                .then(|| super::block_changes(&changed, &blocks));
            let mut r = record(sha, stored, Some(blocks));
            r.block_changes = changes;
            r
        };
        let in_parent = self.parent.as_ref().zip(in_parent);
        let mut counted = false;
        if let Some((parent, pf)) = in_parent {
            let summarized = parent.summarized.as_ref().zip(walk::relation_key(&e.path));
            if let (true, Some(theirs), Some((summary, (ts, db, node, seg)))) =
                (main_fork, pf.blocks.as_deref(), summarized)
            {
                let changed = summary.get(&(ts, db, node));
                let file = AgainstParent {
                    e,
                    f: &f,
                    size,
                    pf,
                    progress,
                };
                return self
                    .summarized_blocks(b, &file, theirs, changed, seg)
                    .map(|r| Some(with_changes(r)));
            }
            if main_fork && pf.blocks.is_some() {
                let file = AgainstParent {
                    e,
                    f: &f,
                    size,
                    pf,
                    progress,
                };
                return self.changed_blocks(b, &file).map(|r| Some(with_changes(r)));
            }
            if pf.size == size {
                let mut scan = self.scan(e, &f, size, progress, main_fork);
                io::copy(&mut scan, &mut io::sink())?;
                let (sha, blocks) = scan.finish();
                if sha == pf.sha256 {
                    return Ok(Some(record(sha, Stored::Parent, blocks)));
                }
                counted = true;
            }
        }
        // Whole (changed since the parent: read again from the start).
        (&f).rewind()?;
        let hidden = Progress::hidden();
        let mut scan = self.scan(
            e,
            &f,
            size,
            if counted { &hidden } else { progress },
            main_fork,
        );
        b.append_data(&mut tar_header(e.mode, size), &e.path, &mut scan)?;
        let (sha, blocks) = scan.finish();
        Ok(Some(record(sha, Stored::Whole, blocks)))
    }

    fn scan<'a>(
        &'a self,
        e: &'a Entry,
        f: &'a File,
        size: u64,
        progress: &'a Progress,
        block_hashes: bool,
    ) -> Scan<'a> {
        let first_block = self.first_checked_block(e);
        // A small file's buffer is its size: most files are a few KiB.
        let buf_len = CHUNK.min((size as usize).next_multiple_of(BLCKSZ).max(BLCKSZ));
        Scan {
            // Read up to the size it had when opened, padded with zeros if it
            // shrinks meanwhile: replay from the backup's start repairs it.
            src: Box::new(f.take(size).chain(io::repeat(0).take(size)).take(size)),
            file: f,
            path: &e.path,
            buf: vec![0; buf_len],
            pos: 0,
            len: 0,
            offset: 0,
            hash: Sha256::new(),
            progress,
            first_block,
            reader: self,
            blocks: block_hashes.then(Vec::new),
        }
    }

    /// A relation file against its parent's copy, every block read: the
    /// blocks whose hash is not the parent's, or none at all when the file is
    /// the parent's. A large file is read in ranges, one per core
    /// ([`blockhash::ranges`]): reading and hashing are all of an
    /// incremental's work, and one thread copying a 1 GiB segment leaves the
    /// others waiting.
    fn changed_blocks<W: Write>(
        &self,
        b: &mut tar::Builder<W>,
        file: &AgainstParent,
    ) -> io::Result<BlocksRead> {
        let AgainstParent {
            e,
            f,
            size,
            pf,
            progress,
        } = *file;
        let theirs = pf.blocks.as_deref().unwrap_or_default();
        let first_block = self.first_checked_block(e);
        let bounds = blockhash::ranges(size);
        let spool_memory = SPOOL_MEMORY / bounds.len();
        let range = |from: u64, to: u64| -> io::Result<ChangedRange> {
            let mut buf = vec![0u8; blockhash::READ_BUF.min((to - from) as usize)];
            let mut out = ChangedRange {
                hashes: Vec::with_capacity((to - from) as usize / BLCKSZ * BLOCK_HASH),
                changed: Vec::new(),
                pages: tempfile::spooled_tempfile(spool_memory),
            };
            let mut at = from;
            while at < to {
                let want = buf.len().min((to - at) as usize);
                let got = blockhash::read_full_at(f, &mut buf[..want], at)?;
                // Cut since the walk: zeros, as a whole read pads them;
                // replay from the backup's start repairs it.
                buf[got..want].fill(0);
                let chunk = &buf[..want];
                crate::throttle::take(&self.throttle, want as u64);
                progress.add(want as u64);
                self.check_pages(&e.path, f, at, chunk, first_block);
                let blk0 = (at / BLCKSZ as u64) as usize;
                let mine0 = out.hashes.len();
                self.block_hash.hash_blocks(chunk, &mut out.hashes);
                for (i, p) in chunk.chunks_exact(BLCKSZ).enumerate() {
                    let mine = &out.hashes[mine0 + i * BLOCK_HASH..mine0 + (i + 1) * BLOCK_HASH];
                    let blk = blk0 + i;
                    if theirs.get(blk * BLOCK_HASH..(blk + 1) * BLOCK_HASH) != Some(mine) {
                        out.changed.push(blk as u32);
                        out.pages.write_all(p)?;
                    }
                }
                at += want as u64;
            }
            Ok(out)
        };
        let mut blocks = Vec::with_capacity(size as usize / BLCKSZ * BLOCK_HASH);
        let mut changed: Vec<u32> = Vec::new();
        let mut pages = Vec::new();
        for r in blockhash::in_parallel(&bounds, range) {
            let r = r?;
            blocks.extend(r.hashes);
            changed.extend(r.changed);
            pages.push(r.pages);
        }
        // Every block the parent's: the same content (the parent's record
        // holds its sha256 or its blocks digest).
        if size == pf.size && changed.is_empty() {
            return Ok((pf.sha256.clone(), Stored::Parent, blocks, changed));
        }
        let stored = blocks_entry(b, e, size, &changed, pages)?;
        Ok((
            self.block_hash.digest(&blocks, size),
            stored,
            blocks,
            changed,
        ))
    }

    /// A relation file against its parent's copy with WAL summaries: only the
    /// blocks they name, and those past the parent's end, are read; the
    /// others are the parent's.
    fn summarized_blocks<W: Write>(
        &self,
        b: &mut tar::Builder<W>,
        file: &AgainstParent,
        theirs: &[u8],
        changed: Option<&Changed>,
        seg: u32,
    ) -> io::Result<BlocksRead> {
        let (e, f, size, pf) = (file.e, file.f, file.size, file.pf);
        let count = (size / BLCKSZ as u64) as usize;
        let their_count = theirs.len() / BLOCK_HASH;
        let first = seg as u64 * RELSEG_BLOCKS;
        let mut hashes = theirs[..their_count.min(count) * BLOCK_HASH].to_vec();
        hashes.resize(count * BLOCK_HASH, 0);
        let mut spool = tempfile::spooled_tempfile(SPOOL_MEMORY);
        let mut differ: Vec<u32> = Vec::new();
        let mut page = vec![0u8; BLCKSZ];
        for blk in 0..count {
            let named = changed.is_some_and(|c| c.has((first + blk as u64) as u32));
            if blk < their_count && !named {
                continue;
            }
            let at = (blk * BLCKSZ) as u64;
            // Cut since the walk: zeros, as a whole read pads them; replay repairs it.
            page.fill(0);
            blockhash::read_full_at(f, &mut page, at)?;
            crate::throttle::take(&self.throttle, BLCKSZ as u64);
            if self.checksums {
                self.check_page(&e.path, f, at, &page, first + blk as u64);
            }
            let mine = &mut hashes[blk * BLOCK_HASH..(blk + 1) * BLOCK_HASH];
            self.block_hash.one(&page, mine);
            if theirs.get(blk * BLOCK_HASH..(blk + 1) * BLOCK_HASH) != Some(mine) {
                differ.push(blk as u32);
                spool.write_all(&page)?;
            }
        }
        file.progress.add(size);
        if size == pf.size && differ.is_empty() {
            return Ok((pf.sha256.clone(), Stored::Parent, hashes, differ));
        }
        let stored = blocks_entry(b, e, size, &differ, vec![spool])?;
        Ok((
            self.block_hash.digest(&hashes, size),
            stored,
            hashes,
            differ,
        ))
    }

    /// The relation block number of `e`'s first page, when its pages are
    /// verified: data checksums are on and it is a relation file.
    fn first_checked_block(&self, e: &Entry) -> Option<u64> {
        walk::relation_segment(&e.path)
            .filter(|_| self.checksums)
            .map(|(_, seg)| seg as u64 * RELSEG_BLOCKS)
    }

    /// Verifies the pages of `chunk`, read at `offset` of a file whose first
    /// page is relation block `first_block` (None: not verified).
    fn check_pages(
        &self,
        path: &str,
        f: &File,
        offset: u64,
        chunk: &[u8],
        first_block: Option<u64>,
    ) {
        let Some(first) = first_block else { return };
        for (i, p) in chunk.chunks_exact(BLCKSZ).enumerate() {
            let at = offset + (i * BLCKSZ) as u64;
            self.check_page(path, f, at, p, first + at / BLCKSZ as u64);
        }
    }

    /// A page whose checksum failed is read again once (it may have been
    /// caught half written); a second failure is recorded.
    fn check_page(&self, path: &str, f: &File, offset: u64, p: &[u8], blkno: u64) {
        if page::verify(p, blkno as u32, self.start) != page::Verdict::Bad {
            return;
        }
        let mut again = vec![0u8; BLCKSZ];
        if f.read_exact_at(&mut again, offset).is_ok()
            && page::verify(&again, blkno as u32, self.start) != page::Verdict::Bad
        {
            return;
        }
        let in_file = (offset / BLCKSZ as u64) as u32;
        tracing::error!("page checksum failure in {path}, block {in_file}");
        self.failures
            .lock()
            .expect("failures")
            .entry(path.to_string())
            .or_default()
            .push(in_file);
    }
}

/// Appends the delta entry of `changed` blocks (their pages in `spools`, in
/// order) of a file cut or extended to `size`.
fn blocks_entry<W: Write>(
    b: &mut tar::Builder<W>,
    e: &Entry,
    size: u64,
    changed: &[u32],
    spools: Vec<tempfile::SpooledTempFile>,
) -> io::Result<Stored> {
    let mut inner: Box<dyn Read> = Box::new(io::Cursor::new(delta::header(size, changed)));
    for mut spool in spools {
        spool.rewind()?;
        inner = Box::new(inner.chain(spool));
    }
    let bytes = delta::entry_len(changed.len() as u64);
    let mut entry = Hashed {
        inner,
        hash: Sha256::new(),
    };
    b.append_data(&mut tar_header(e.mode, bytes), &e.path, &mut entry)?;
    Ok(Stored::Blocks {
        bytes,
        sha256: hex::encode(entry.hash.finalize()),
        blocks: changed.len() as u64,
    })
}

pub fn tar_header(mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h
}

/// A file read in chunks: hashed, counted and, for relation files of a
/// cluster with data checksums, every page verified.
struct Scan<'a> {
    src: Box<dyn Read + 'a>,
    file: &'a File,
    path: &'a str,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// File offset of `buf`'s first byte.
    offset: u64,
    hash: Sha256,
    progress: &'a Progress,
    /// The relation block number of the file's first page, when pages are verified.
    first_block: Option<u64>,
    reader: &'a Reader,
    /// Each whole block's hash, when asked for.
    blocks: Option<Vec<u8>>,
}

impl Scan<'_> {
    /// The file's sha256 and its blocks' hashes.
    fn finish(&mut self) -> (String, Option<Vec<u8>>) {
        (hex::encode(self.hash.finalize_reset()), self.blocks.take())
    }

    /// Reads the next chunk into `buf`; false at the end.
    fn next_chunk(&mut self) -> io::Result<bool> {
        self.offset += self.len as u64;
        let mut len = 0;
        while len < self.buf.len() {
            match self.src.read(&mut self.buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.len = len;
        self.pos = 0;
        if len == 0 {
            return Ok(false);
        }
        crate::throttle::take(&self.reader.throttle, len as u64);
        let chunk = &self.buf[..len];
        self.hash.update(chunk);
        if let Some(blocks) = &mut self.blocks {
            self.reader.block_hash.append(chunk, blocks);
        }
        self.progress.add(len as u64);
        self.reader
            .check_pages(self.path, self.file, self.offset, chunk, self.first_block);
        Ok(true)
    }
}

impl Read for Scan<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len && !self.next_chunk()? {
            return Ok(0);
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A relation file being read against its parent's copy.
#[derive(Clone, Copy)]
struct AgainstParent<'a> {
    e: &'a Entry,
    f: &'a File,
    size: u64,
    pf: &'a ParentFile,
    progress: &'a Progress,
}

/// A file read against its parent's copy: the blocks digest (the parent's
/// sha256 when nothing changed), how it is stored, its block hashes and the
/// numbers of the blocks stored.
type BlocksRead = (String, Stored, Vec<u8>, Vec<u32>);

/// What one range of [`Reader::changed_blocks`] found: its blocks' hashes,
/// the numbers of those not the parent's and their pages.
struct ChangedRange {
    hashes: Vec<u8>,
    changed: Vec<u32>,
    pages: tempfile::SpooledTempFile,
}

struct Hashed<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::walk::Kind;

    #[test]
    fn a_file_read_in_ranges_stores_exactly_its_changed_blocks() {
        // 40 MiB: read in two ranges or more on a machine of two cores.
        let count = 40 * 128;
        let size = (count * BLCKSZ) as u64;
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            assert!(blockhash::ranges(size).len() > 1, "a file in ranges");
        }
        let old: Vec<u8> = (0..count * BLCKSZ)
            .map(|i| ((i / BLCKSZ) * 31 + i % 251) as u8)
            .collect();
        let kind = BlockHash::Blake3;
        let mut theirs = Vec::new();
        kind.hash_blocks(&old, &mut theirs);
        // The first block, both sides of the boundary between two ranges, the last.
        let half = blockhash::ranges(size)[0].1 as usize / BLCKSZ;
        let mut changed = vec![0, 7, half - 1, half, count as u32 as usize - 1];
        changed.dedup();
        let mut new = old.clone();
        for &blk in &changed {
            new[blk * BLCKSZ + 100] ^= 0xff;
        }
        let (dir, source) = crate::testing::temp_path("16384");
        std::fs::write(&source, &new).unwrap();
        let e = Entry {
            path: "base/5/16384".into(),
            source: source.clone(),
            kind: Kind::File,
            size,
            mode: 0o600,
        };
        let pf = ParentFile {
            size,
            sha256: "the parent's".into(),
            blocks: Some(theirs),
        };
        let reader = Reader::new(None, false, Lsn(0), None, kind);
        let f = File::open(&source).unwrap();
        let progress = Progress::hidden();
        let read = |pf: &ParentFile| {
            let mut b = tar::Builder::new(Vec::new());
            let file = AgainstParent {
                e: &e,
                f: &f,
                size,
                pf,
                progress: &progress,
            };
            let r = reader.changed_blocks(&mut b, &file).unwrap();
            (r, b.into_inner().unwrap())
        };
        let ((digest, stored, hashes, numbers), tar) = read(&pf);
        let expected: Vec<u32> = changed.iter().map(|&n| n as u32).collect();
        assert_eq!(numbers, expected);
        let mut whole = Vec::new();
        kind.hash_blocks(&new, &mut whole);
        assert!(hashes == whole, "every block's hash, in order");
        assert_eq!(digest, kind.digest(&whole, size));
        assert!(matches!(stored, Stored::Blocks { blocks: 5, .. }));
        // The entry written over the parent's file gives the file read.
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let target = dir.path().join("restored");
        std::fs::write(&target, &old).unwrap();
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        delta::apply(&mut entry, &out, "base/5/16384").unwrap();
        assert!(std::fs::read(&target).unwrap() == new);

        // Unchanged: the parent's record, nothing stored.
        let pf = ParentFile {
            blocks: Some(whole),
            ..pf
        };
        let ((sha, stored, _, numbers), _) = read(&pf);
        assert_eq!(sha, "the parent's");
        assert!(matches!(stored, Stored::Parent) && numbers.is_empty());
    }
}
