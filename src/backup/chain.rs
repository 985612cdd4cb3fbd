//! Restoring a backup and the backups it builds on (its chain), into an empty
//! directory or, with `delta`, over a copy of the same cluster.
//!
//! Each file of the backup is traced down the chain to the backup that holds
//! it whole; the blocks later backups changed are written over it in chain
//! order. Backups are read from the full one to the last, each one's parts in
//! parallel, and only the parts holding something still needed. Every entry
//! is checked against its recorded sha256 as it is written, and every file
//! assembled from blocks against its record at backup (its sha256 or blocks
//! digest): read whole, or, when it was assembled over the version a delta
//! restore's target held, by that version's block hashes taken when
//! planning and the blocks written over it read back.
//!
//! File lists are never held whole: each is spooled to local disk in walk
//! order and the chain's lists are read side by side ([`filelist`]); what
//! each part must write is spooled by part and read part by part.
//!
//! With `delta`, files already there with the backup's size and sha256 stay;
//! files the backup does not have are removed.

use super::blockhash::{self, BlockHash};
use super::filelist::{self, ByPart, Parts, Sorted, Spool, Spooled};
use super::restore::{self, Apply, Restored, Target};
use super::walk::EMPTY_DIRS;
use super::{FileRecord, Manifest, Stored};
use crate::codec::Codec;
use crate::progress::Progress;
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A backup's chain: its full backup first, the backup itself last, each
/// with its file list on local disk.
pub struct Chain {
    pub backups: Vec<Manifest>,
    pub lists: Vec<Sorted>,
}

/// Reads the manifests and file lists of `m`'s chain (each at the versions it wrote).
pub async fn load(store: Arc<dyn Store>, codec: &Codec, m: &Manifest) -> Result<Chain> {
    let mut backups = Vec::new();
    for id in &m.chain {
        let b = super::read_manifest(store.as_ref(), id)
            .await
            .with_context(|| format!("backup {} builds on backup {id}", m.id))?;
        backups.push(b);
    }
    backups.push(m.clone());
    let mut lists = Vec::new();
    for b in &backups {
        let list = filelist::sorted(b.pinned(store.clone()).as_ref(), codec, &b.id)
            .await
            .with_context(|| in_chain(b, m))?;
        lists.push(list);
    }
    Ok(Chain { backups, lists })
}

fn in_chain(b: &Manifest, of: &Manifest) -> String {
    if b.id == of.id {
        format!("backup {}", b.id)
    } else {
        format!("backup {}, which backup {} builds on", b.id, of.id)
    }
}

/// What a restore reads: for each backup of the chain, the records of the
/// files to write from it, by part; the files assembled from blocks (checked
/// whole at the end, against the last backup's record); counts.
struct Plan {
    wanted: Vec<Parts>,
    assembled: Spooled,
    /// For each file of `assembled`, in order: how a delta restore checks
    /// it without reading it whole again, when it can.
    based_on_target: Vec<Option<Based>>,
    files: u64,
    kept: u64,
    /// Files of a delta restore brought from an earlier backup's version to
    /// the last one's with blocks only.
    based: u64,
    bytes: u64,
}

/// What a delta restore's target holds of a file, hashed once and compared
/// with the record of each backup of the chain.
enum Local {
    Nothing,
    /// Its sha256 and size (a file that is not a relation's main fork).
    Sha(String, u64),
    /// The digest of its blocks' hashes ([`BlockHash::digest`]) and its size
    /// (a relation main-fork file); where its hashes are in the
    /// [`TargetHashes`] when it is not the last backup's file already.
    Blocks(String, u64, Option<HashesAt>),
}

/// Where a file's block hashes are in [`TargetHashes`]: offset and length.
#[derive(Clone, Copy, Debug)]
struct HashesAt(u64, u64);

/// The block hashes a delta restore took of the target's files that differ
/// from the backup, in a temporary file (a batch may hold thousands of 1 GiB
/// segments): a file then assembled over its target version is checked
/// with them and only the blocks written over it read back, not read whole
/// a second time.
struct TargetHashes {
    file: std::fs::File,
    end: std::sync::Mutex<u64>,
}

impl TargetHashes {
    fn new() -> Result<TargetHashes> {
        Ok(TargetHashes {
            file: tempfile::tempfile().context("cannot create a temporary file")?,
            end: std::sync::Mutex::new(0),
        })
    }

    fn put(&self, hashes: &[u8]) -> std::io::Result<HashesAt> {
        use std::os::unix::fs::FileExt;
        let mut end = self.end.lock().expect("hashes end");
        self.file.write_all_at(hashes, *end)?;
        let at = HashesAt(*end, hashes.len() as u64);
        *end += hashes.len() as u64;
        Ok(at)
    }

    fn get(&self, at: HashesAt) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut h = vec![0u8; at.1 as usize];
        self.file.read_exact_at(&mut h, at.0)?;
        Ok(h)
    }
}

/// A file a delta restore assembles over the target's version of it: the
/// target's block hashes and the blocks the chain writes over them.
#[derive(Debug)]
struct Based {
    hashes: HashesAt,
    /// Ascending, once each (4 bytes a block: a large increment writes millions).
    written: Vec<u32>,
}

impl Local {
    /// Whether the target's file is the one `r` records, in a backup whose
    /// blocks are hashed with `kind`.
    fn holds(&self, r: &FileRecord, kind: BlockHash) -> bool {
        match self {
            Local::Nothing => false,
            Local::Sha(sha, size) => *size == r.size && *sha == r.sha256,
            // A digest names its kind: one of another kind never matches.
            Local::Blocks(digest, size, _) => {
                *size == r.size
                    && if BlockHash::of_digest(&r.sha256).is_some() {
                        *digest == r.sha256
                    } else {
                        r.block_sha
                            .as_deref()
                            .and_then(blockhash::from_hex)
                            .is_some_and(|h| kind.digest(&h, r.size) == *digest)
                    }
            }
        }
    }
}

/// Records of the last backup's list handled at once (a delta restore
/// hashes each batch's candidates in parallel).
const BATCH: usize = 4096;

/// Traces every file of the chain's last backup to the backups holding its
/// content. `local` says, for a batch of records, what the target holds of
/// each file (a delta restore): a file that is the last backup's is read
/// from nowhere; one that is an earlier backup's of the chain only gets
/// the blocks later backups changed, written over it.
fn plan(chain: &Chain, local: &mut dyn FnMut(&[FileRecord]) -> Result<Vec<Local>>) -> Result<Plan> {
    let last = chain.backups.len() - 1;
    let mut lowers: Vec<filelist::Lookup> =
        chain.lists[..last].iter().map(Sorted::lookup).collect();
    let mut wanted = (0..=last)
        .map(|_| ByPart::new())
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut assembled = Spool::new()?;
    let mut based_on_target = Vec::new();
    let (mut files, mut kept, mut based, mut bytes) = (0, 0, 0, 0);
    let mut finals = chain.lists[last].iter();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        for r in finals.by_ref().take(BATCH) {
            batch.push(
                r.with_context(|| format!("the file list of backup {}", chain.backups[last].id))?,
            );
        }
        if batch.is_empty() {
            break;
        }
        let locals = local(&batch)?;
        for (rec, here) in batch.iter().zip(locals) {
            files += 1;
            if here.holds(rec, chain.backups[last].block_hash) {
                kept += 1;
                continue;
            }
            let mut i = last;
            let mut r = rec.clone();
            let mut in_assembled = false;
            // The blocks the chain writes over an earlier version, while known.
            let mut written = Some(Vec::new());
            loop {
                // The target holds this backup's version: only what later
                // backups changed (already wanted) goes over it.
                if i < last && !r.stored.is_parent() && here.holds(&r, chain.backups[i].block_hash)
                {
                    if in_assembled {
                        based += 1;
                        if let (Local::Blocks(_, _, Some(hashes)), Some(mut written)) =
                            (&here, written)
                        {
                            written.sort_unstable();
                            written.dedup();
                            *based_on_target.last_mut().expect("assembled") = Some(Based {
                                hashes: *hashes,
                                written,
                            });
                        }
                    } else {
                        kept += 1;
                    }
                    break;
                }
                match &r.stored {
                    Stored::Whole => {
                        bytes += r.size;
                        wanted[i].push(&r)?;
                        break;
                    }
                    Stored::Blocks { bytes: b, .. } => {
                        bytes += b;
                        wanted[i].push(&r)?;
                        // Assembled somewhere down the chain: checked at the end.
                        if !in_assembled {
                            assembled.push(rec)?;
                            based_on_target.push(None);
                            in_assembled = true;
                        }
                        written = written
                            .zip(
                                r.block_changes
                                    .as_deref()
                                    .and_then(super::changed_block_numbers),
                            )
                            .map(|(mut w, numbers)| {
                                w.extend(numbers);
                                w
                            });
                    }
                    Stored::Parent => {}
                }
                let below = match i.checked_sub(1) {
                    Some(j) => lowers[j].find(&rec.path)?.map(|b| (j, b)),
                    None => None,
                };
                let Some((j, below)) = below else {
                    bail!(
                        "backup {} takes {} from its parent, and {} does not hold it",
                        chain.backups[i].id,
                        rec.path,
                        i.checked_sub(1)
                            .map(|j| format!("backup {}", chain.backups[j].id))
                            .unwrap_or_else(|| "it has no parent: it".into())
                    );
                };
                i = j;
                r = below;
            }
        }
    }
    Ok(Plan {
        wanted: wanted
            .into_iter()
            .map(ByPart::finish)
            .collect::<std::io::Result<_>>()?,
        assembled: assembled.finish()?,
        based_on_target,
        files,
        kept,
        based,
        bytes,
    })
}

pub struct Options {
    pub concurrency: usize,
    /// Over a copy of the same cluster: keep what matches, remove what the backup lacks.
    pub delta: bool,
    pub throttle: Option<Arc<crate::throttle::Throttle>>,
}

pub async fn restore(
    store: Arc<dyn Store>,
    codec: &Codec,
    m: &Manifest,
    target: Arc<Target>,
    opts: Options,
) -> Result<Restored> {
    let chain = Arc::new(load(store.clone(), codec, m).await?);
    let last = chain.backups.len() - 1;
    let kind = chain.backups[last].block_hash;
    let target_hashes = Arc::new(TargetHashes::new()?);
    let plan = {
        let (chain, target, delta, threads, kept) = (
            chain.clone(),
            target.clone(),
            opts.delta,
            opts.concurrency,
            target_hashes.clone(),
        );
        tokio::task::spawn_blocking(move || {
            if delta {
                let list = &chain.lists[last];
                let dirs = Subdirectories::of(list)?;
                remove_strays(&target.dir, list, &dirs)?;
                for (oid, dir) in &target.tablespaces {
                    remove_tablespace_strays(oid, dir, list, &dirs)?;
                }
            }
            plan(&chain, &mut |batch| {
                if delta {
                    at_target(batch, &target, threads, kind, &kept)
                } else {
                    Ok(batch.iter().map(|_| Local::Nothing).collect())
                }
            })
        })
        .await
        .context("planning task failed")??
    };
    if opts.delta {
        tracing::info!(
            "delta restore: {} of {} files already match the backup and stay; {} get only the blocks changed since the version there",
            plan.kept,
            plan.files,
            plan.based
        );
    }
    let progress = Arc::new(Progress::new(&format!("restore {}", m.id), plan.bytes));
    let mut bytes = 0;
    let mut links = Vec::new();
    for ((i, b), wanted) in chain.backups.iter().enumerate().zip(plan.wanted) {
        let layout = i == last;
        let counts = wanted.counts();
        if let Some(n) = counts.keys().find(|n| **n as usize >= b.parts.len()) {
            let lost = wanted.records(*n)?.into_keys().next().unwrap_or_default();
            bail!("file {lost} of {} was not in any part", in_chain(b, m));
        }
        tracing::debug!(
            "restore: backup {} gives files from {} of its {} parts",
            b.id,
            counts.len(),
            b.parts.len()
        );
        let wanted = Arc::new(wanted);
        let pinned = b.pinned(store.clone());
        let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (n, part) in b.parts.iter().enumerate() {
            // The last backup's every part holds directories and links; a
            // delta restore has them already and reads only what it writes.
            let every_part = layout && !opts.delta;
            if !every_part && !counts.contains_key(&(n as u32)) {
                continue;
            }
            let apply = Apply {
                target: target.clone(),
                layout,
                throttle: opts.throttle.clone(),
            };
            let (store, codec, wanted, progress, sem, key) = (
                pinned.clone(),
                codec.clone(),
                wanted.clone(),
                progress.clone(),
                sem.clone(),
                part.key.clone(),
            );
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore");
                // Read when its turn comes: at most `concurrency` parts' records in memory.
                let records = tokio::task::spawn_blocking(move || wanted.records(n as u32))
                    .await
                    .context("file list task failed")??;
                restore::read_part(store, codec, key, records, Some(apply), progress).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            let read = r
                .context("restore task failed")?
                .with_context(|| in_chain(b, m))?;
            bytes += read.bytes;
            links.extend(read.links);
        }
    }
    progress.finish();
    for d in EMPTY_DIRS
        .iter()
        .chain(["pg_wal/archive_status", "pg_tblspc"].iter())
    {
        let p = target.dir.join(d);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
    }
    restore::make_links(&target, links)?;
    // Files assembled from blocks against the backup's record: read whole,
    // or, over a version the target held, by the hashes taken of it when
    // planning and the blocks written read back.
    let by_blocks_written = plan.based_on_target.iter().flatten().count();
    if opts.delta && !plan.based_on_target.is_empty() {
        tracing::info!(
            "delta restore: {by_blocks_written} of the {} files assembled from blocks checked by the blocks written over the version there, the others read whole",
            plan.based_on_target.len()
        );
    }
    let differ = {
        let (assembled, based, target, threads) = (
            plan.assembled,
            plan.based_on_target,
            target.clone(),
            opts.concurrency,
        );
        tokio::task::spawn_blocking(move || -> Result<Option<String>> {
            let mut batch = Vec::with_capacity(BATCH);
            let mut records = assembled.iter().zip(based);
            loop {
                batch.clear();
                for (r, based) in records.by_ref().take(BATCH) {
                    let r = r?;
                    batch.push((target.dest(&r.path)?, r, based));
                }
                if batch.is_empty() {
                    return Ok(None);
                }
                if let Some(&i) = differing(&batch, threads, kind, &target_hashes).first() {
                    return Ok(Some(batch[i].1.path.clone()));
                }
            }
        })
        .await
        .context("hashing task failed")??
    };
    if let Some(p) = differ {
        bail!(
            "{p}: assembled from the chain of backup {} ({}), it does not match the checksum recorded for the whole file",
            m.id,
            chain.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(" + ")
        );
    }
    Ok(Restored {
        files: plan.files,
        bytes,
    })
}

/// What the target holds of each file of `batch`, hashed on `threads`
/// threads: a relation's main-fork file by blocks, whatever its size (it may
/// be an earlier backup's version); another file whole when it has the
/// recorded size.
fn at_target(
    batch: &[FileRecord],
    target: &Target,
    threads: usize,
    kind: BlockHash,
    kept: &TargetHashes,
) -> Result<Vec<Local>> {
    let dests = batch
        .iter()
        .map(|r| target.dest(&r.path))
        .collect::<Result<Vec<_>>>()?;
    Ok(on_threads(batch.len(), threads, |i| {
        local(&batch[i], &dests[i], kind, kept)
    }))
}

/// `f` of `0..n` on `threads` threads, the results in that order.
fn on_threads<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(n));
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = f(i);
                done.lock().expect("results").push((i, r));
            });
        }
    });
    let mut done = done.into_inner().expect("results");
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// What `dest` holds of the file `rec` records; its blocks hashed with
/// `kind`, and kept in `kept` when they are not `rec`'s.
fn local(rec: &FileRecord, dest: &Path, kind: BlockHash, kept: &TargetHashes) -> Local {
    let Ok(meta) = std::fs::symlink_metadata(dest) else {
        return Local::Nothing;
    };
    if !meta.is_file() {
        return Local::Nothing;
    }
    let main_fork = super::walk::relation_segment(&rec.path).is_some_and(|(f, _)| f.is_empty());
    let Ok(mut f) = std::fs::File::open(dest) else {
        return Local::Nothing;
    };
    // By blocks when the record can be compared so (a list written before
    // block hashes holds only the file's sha256).
    let by_blocks = BlockHash::of_digest(&rec.sha256).is_some()
        || rec.block_sha.is_some()
        || rec.stored.is_parent();
    if main_fork && by_blocks && meta.len() % super::page::BLCKSZ as u64 == 0 {
        return match kind.of_file(&f) {
            Ok((h, size)) => {
                let here = Local::Blocks(kind.digest(&h, size), size, None);
                if here.holds(rec, kind) {
                    return here;
                }
                match (here, kept.put(&h)) {
                    (Local::Blocks(digest, size, _), Ok(at)) => {
                        Local::Blocks(digest, size, Some(at))
                    }
                    (here, _) => here,
                }
            }
            Err(_) => Local::Nothing,
        };
    }
    if meta.len() != rec.size {
        return Local::Nothing;
    }
    match crate::codec::sha256_of(&mut f) {
        Ok((sha, size)) => Local::Sha(hex::encode(sha), size),
        Err(_) => Local::Nothing,
    }
}

/// The indexes (in `files`) of the files assembled from blocks that do not
/// have their recorded content, checked on `threads` threads.
fn differing(
    files: &[(PathBuf, FileRecord, Option<Based>)],
    threads: usize,
    kind: BlockHash,
    kept: &TargetHashes,
) -> Vec<usize> {
    let same = on_threads(files.len(), threads, |i| {
        let (dest, rec, based) = &files[i];
        match based {
            Some(b) => assembled_over_target(rec, dest, b, kind, kept),
            None => rec.matches_file(dest),
        }
    });
    (0..files.len()).filter(|&i| !same[i]).collect()
}

/// Whether `dest`, the target's version of a file with the chain's blocks
/// written over it, is the file `rec` records: the target's hashes taken
/// when planning, each written block read back and hashed over them.
fn assembled_over_target(
    rec: &FileRecord,
    dest: &Path,
    b: &Based,
    kind: BlockHash,
    kept: &TargetHashes,
) -> bool {
    use super::blockhash::BLOCK_HASH;
    use super::page::BLCKSZ;
    let Ok(mut hashes) = kept.get(b.hashes) else {
        return false;
    };
    let Ok(f) = std::fs::File::open(dest) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.len() == rec.size) {
        return false;
    }
    let count = (rec.size / BLCKSZ as u64) as usize;
    hashes.resize(count * BLOCK_HASH, 0);
    let mut page = vec![0u8; BLCKSZ];
    for &n in &b.written {
        let n = n as usize;
        if n >= count
            || !blockhash::read_full_at(&f, &mut page, (n * BLCKSZ) as u64)
                .is_ok_and(|len| len == BLCKSZ)
        {
            return false;
        }
        kind.one(&page, &mut hashes[n * BLOCK_HASH..(n + 1) * BLOCK_HASH]);
    }
    Local::Blocks(kind.digest(&hashes, rec.size), rec.size, None).holds(rec, kind)
}

/// The directories a backup's list has below `base/` (its databases) and
/// below each tablespace (`pg_tblspc/<oid>/<version>/<db>`): few, held in
/// memory, gathered in one pass over the list.
struct Subdirectories(BTreeMap<String, BTreeSet<String>>);

impl Subdirectories {
    fn of(list: &Sorted) -> Result<Subdirectories> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in list.iter() {
            let r = r?;
            let parts: Vec<&str> = r.path.split('/').collect();
            match parts.as_slice() {
                ["base", db, _, ..] => {
                    out.entry("base/".into())
                        .or_default()
                        .insert(db.to_string());
                }
                ["pg_tblspc", oid, version, rest @ ..] if !rest.is_empty() => {
                    let under = format!("pg_tblspc/{oid}/");
                    out.entry(under.clone())
                        .or_default()
                        .insert(version.to_string());
                    if let [db, _, ..] = rest {
                        out.entry(format!("{under}{version}/"))
                            .or_default()
                            .insert(db.to_string());
                    }
                }
                _ => {}
            }
        }
        Ok(Subdirectories(out))
    }

    /// The names of the directories below `prefix` (ending in `/`) that hold files.
    fn below(&self, prefix: &str) -> BTreeSet<String> {
        self.0.get(prefix).cloned().unwrap_or_default()
    }
}

/// Removes below `dir` every file the backup does not have, the
/// contents of the directories a backup leaves empty (pg_wal…), and the
/// directories of databases the backup does not have. The directory is
/// walked in walk order, side by side with the backup's list.
fn remove_strays(dir: &Path, list: &Sorted, dirs: &Subdirectories) -> Result<()> {
    let databases = dirs.below("base/");
    let mut lookup = list.lookup();
    remove_below(dir, "", &mut lookup, &mut |rel, name| {
        (rel == "base" && !databases.contains(name)).then_some(true)
    })
}

/// Walks `dir` (backup path `rel`) in walk order, removing the files
/// `lookup` does not find. `drop_dir(rel, name)` says which directories go
/// whole; links stay (a log directory elsewhere, pg_stat_tmp on a tmpfs;
/// one where the backup has a link pointing elsewhere is refused by name).
fn remove_below(
    dir: &Path,
    rel: &str,
    lookup: &mut filelist::Lookup,
    drop_dir: &mut dyn FnMut(&str, &str) -> Option<bool>,
) -> Result<()> {
    let names =
        super::walk::sorted_names(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for name in names.iter() {
        let path = dir.join(&name);
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = match std::fs::symlink_metadata(&path) {
            Ok(m) => m.file_type(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
        };
        if rel.is_empty() && name == "pg_wal" && ft.is_symlink() {
            // pg_wal elsewhere: its contents go, the link stays.
            remove_below(&path, &r, lookup, drop_dir)?;
        } else if ft.is_dir() {
            if drop_dir(rel, &name) == Some(true) {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                continue;
            }
            remove_below(&path, &r, lookup, drop_dir)?;
        } else if !ft.is_symlink() && lookup.find(&r)?.is_none() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// In tablespace `oid`'s directory `dir`, below each version directory the
/// backup has there (`PG_<major>_<catalog>`): the files the backup lacks, and
/// the directories of databases it lacks. Other majors' directories stay.
fn remove_tablespace_strays(
    oid: &str,
    dir: &Path,
    list: &Sorted,
    dirs: &Subdirectories,
) -> Result<()> {
    let prefix = format!("pg_tblspc/{oid}/");
    for v in dirs.below(&prefix) {
        let dbs = dirs.below(&format!("{prefix}{v}/"));
        let root = format!("{prefix}{v}");
        let vdir = dir.join(&v);
        if !vdir.is_dir() {
            continue;
        }
        let mut lookup = list.lookup();
        remove_below(&vdir, &root, &mut lookup, &mut |rel, name| {
            (rel == root && !dbs.contains(name)).then_some(true)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str, stored: Stored) -> FileRecord {
        FileRecord {
            path: path.into(),
            size: 8192,
            sha256: "x".into(),
            part: 0,
            stored,
            block_sha: None,
            block_changes: None,
        }
    }

    fn blocks() -> Stored {
        Stored::Blocks {
            bytes: 1,
            sha256: "y".into(),
            blocks: 1,
        }
    }

    fn chain(layers: Vec<Vec<FileRecord>>) -> Chain {
        let n = layers.len();
        Chain {
            backups: (0..n)
                .map(|i| {
                    serde_json::from_value(serde_json::json!({
                        "format": 1, "id": format!("b{i}"), "label": "", "system_identifier": "1",
                        "pg_version_num": 150000, "timeline": 1, "start_lsn": "0/0", "stop_lsn": "0/0",
                        "start_time": "2026-12-01T00:00:00Z", "stop_time": "2026-12-01T00:00:00Z",
                        "wal_segment_size": 16777216, "raw_bytes": 0, "stored_bytes": 0, "files": 0,
                        "duration_seconds": 0.0, "parts": [], "tablespaces": [], "encrypted": false,
                        "created_by": "test"
                    }))
                    .unwrap()
                })
                .collect(),
            lists: layers
                .into_iter()
                .map(|l| Sorted::from_records(l.into_iter().map(Ok)).unwrap())
                .collect(),
        }
    }

    #[test]
    fn a_lists_databases_and_tablespace_directories_in_one_pass() {
        let list = Sorted::from_records(
            [
                "base/1/1259",
                "base/5/16384",
                "base/5/PG_VERSION",
                "global/pg_control",
                "pg_tblspc/16400/PG_15_202209061/5/16401",
                "pg_tblspc/16400/PG_15_202209061/5/16402",
                "pg_tblspc/16500/PG_15_202209061/7/16501",
            ]
            .into_iter()
            .map(|p| Ok(rec(p, Stored::Whole))),
        )
        .unwrap();
        let dirs = Subdirectories::of(&list).unwrap();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(dirs.below("base/"), set(&["1", "5"]));
        assert_eq!(dirs.below("pg_tblspc/16400/"), set(&["PG_15_202209061"]));
        assert_eq!(dirs.below("pg_tblspc/16400/PG_15_202209061/"), set(&["5"]));
        assert_eq!(dirs.below("pg_tblspc/16500/PG_15_202209061/"), set(&["7"]));
        assert!(dirs.below("global/").is_empty());
    }

    #[test]
    fn a_file_assembled_over_the_targets_version_is_checked_by_the_blocks_written() {
        use crate::backup::page::BLCKSZ;
        let kind = BlockHash::Blake3;
        let (_dir, path) = crate::testing::temp_path("16384");
        let old: Vec<u8> = (0..4 * BLCKSZ).map(|i| (i / 7) as u8).collect();
        let mut at_plan = Vec::new();
        kind.hash_blocks(&old, &mut at_plan);
        let kept = TargetHashes::new().unwrap();
        kept.put(&[7; 32]).unwrap(); // another file's, before it
        let at = kept.put(&at_plan).unwrap();
        // The chain writes block 1 and a new block 4: the file grows.
        let mut new = old.clone();
        new[BLCKSZ + 5] ^= 1;
        new.extend(vec![9u8; BLCKSZ]);
        let mut hashes = Vec::new();
        kind.hash_blocks(&new, &mut hashes);
        let record = FileRecord {
            size: new.len() as u64,
            sha256: kind.digest(&hashes, new.len() as u64),
            ..rec("base/5/16384", blocks())
        };
        // Whether the file at `path`, with these blocks written, passes as assembled.
        let passes = |written: &[u32]| {
            let based = Based {
                hashes: at,
                written: written.to_vec(),
            };
            assembled_over_target(&record, &path, &based, kind, &kept)
        };
        std::fs::write(&path, &new).unwrap();
        assert!(passes(&[1, 4]));
        // A block the plan did not name as written keeps the target's hash: found.
        assert!(!passes(&[4]));
        // A written block that is not the one recorded: found.
        let mut bad = new.clone();
        bad[4 * BLCKSZ + 1] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert!(!passes(&[1, 4]));
        // Not the recorded size: found.
        std::fs::write(&path, &new[..4 * BLCKSZ]).unwrap();
        assert!(!passes(&[1]));
    }

    #[test]
    fn each_file_is_traced_to_its_whole_copy_and_checked_when_assembled() {
        let c = chain(vec![
            vec![
                rec("a", Stored::Whole),
                rec("b", Stored::Whole),
                rec("c", Stored::Whole),
            ],
            vec![
                rec("a", blocks()),
                rec("b", Stored::Parent),
                rec("c", Stored::Whole),
            ],
            vec![
                rec("a", Stored::Parent),
                rec("b", blocks()),
                rec("c", Stored::Parent),
            ],
        ]);
        let none = |b: &[FileRecord]| Ok(b.iter().map(|_| Local::Nothing).collect());
        let p = plan(&c, &mut none.clone()).unwrap();
        let names = |p: &Plan, i: usize| {
            let mut v: Vec<String> = p.wanted[i].records(0).unwrap().into_keys().collect();
            v.sort();
            v
        };
        assert_eq!(names(&p, 0), vec!["a", "b"]);
        assert_eq!(names(&p, 1), vec!["a", "c"]);
        assert_eq!(names(&p, 2), vec!["b"]);
        // "a" is the middle backup's assembly, unchanged since: checked too.
        let mut assembled: Vec<String> = p.assembled.iter().map(|r| r.unwrap().path).collect();
        assembled.sort();
        assert_eq!(assembled, vec!["a", "b"]);
        assert_eq!((p.files, p.kept), (3, 0));
        // What a delta restore keeps is read from nowhere.
        let p = plan(&c, &mut |b: &[FileRecord]| {
            Ok(b.iter()
                .map(|r| match r.path.as_str() {
                    "a" => Local::Sha("x".into(), 8192),
                    _ => Local::Nothing,
                })
                .collect())
        })
        .unwrap();
        assert!((0..3).all(|i| !names(&p, i).contains(&"a".to_string())));
        assert_eq!((p.files, p.kept, p.based), (3, 1, 0));
        // A file there as an earlier backup's version gets only the blocks
        // changed since: "b" as the full's, "a" as the middle backup's.
        // Each backup's version of a file has its own sha256: "a1" is a's in b1.
        let layers: Vec<Vec<FileRecord>> = (0..3)
            .map(|i| {
                c.lists[i]
                    .iter()
                    .map(|r| {
                        let mut r = r.unwrap();
                        r.sha256 = format!("{}{i}", r.path);
                        r
                    })
                    .collect()
            })
            .collect();
        let c2 = chain(layers);
        let p = plan(&c2, &mut |b: &[FileRecord]| {
            Ok(b.iter()
                .map(|r| match r.path.as_str() {
                    "a" => Local::Sha("a1".into(), 8192),
                    "b" => Local::Sha("b0".into(), 8192),
                    _ => Local::Nothing,
                })
                .collect())
        })
        .unwrap();
        assert_eq!(names(&p, 0), Vec::<String>::new());
        assert_eq!(names(&p, 1), vec!["c"]);
        assert_eq!(names(&p, 2), vec!["b"]);
        assert_eq!((p.files, p.kept, p.based), (3, 1, 1));
        // A file the parent does not hold is named.
        let broken = chain(vec![vec![], vec![rec("a", Stored::Parent)]]);
        let e = plan(&broken, &mut none.clone()).err().unwrap().to_string();
        assert!(
            e.contains("backup b1 takes a from its parent, and backup b0 does not hold it"),
            "{e}"
        );
    }

    #[test]
    fn block_digests_match_only_hashes_of_their_own_kind() {
        let hashes = vec![7u8; 32];
        let here = Local::Blocks(BlockHash::Blake3.digest(&hashes, 16384), 16384, None);
        // A full backup's record: the file's sha256 and its block hashes.
        let mut full = rec("a", Stored::Whole);
        full.size = 16384;
        full.block_sha = Some(blockhash::to_hex(&hashes));
        assert!(here.holds(&full, BlockHash::Blake3));
        assert!(
            !here.holds(&full, BlockHash::Sha256),
            "a chain of SHA-256 hashes"
        );
        // An incremental's record: a digest naming its kind.
        let mut incr = rec("a", blocks());
        incr.size = 16384;
        incr.sha256 = BlockHash::Blake3.digest(&hashes, 16384);
        assert!(here.holds(&incr, BlockHash::Blake3));
        incr.sha256 = BlockHash::Sha256.digest(&hashes, 16384);
        assert!(!here.holds(&incr, BlockHash::Blake3));
    }
}
