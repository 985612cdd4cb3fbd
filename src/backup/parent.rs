//! Which backup an incremental backup builds on, and its file list.
//!
//! A parent must be restorable onto the cluster's current timeline and have
//! ended before that timeline branched from its own (else its pages are not
//! this history's), be of the same major, and fit the chain policy
//! (`backup.full_every_days`, `backup.max_increments`).
//!
//! Its file list is encrypted; a database host often holds only the public
//! recipient. So `backup-push` keeps a copy of the last list it wrote in the
//! data directory (`walvault_backup_files.json`, never backed up), beside the
//! sha256 of the list it stored (`walvault_backup_files.json.stored`), used
//! only when that is the sha256 of the parent's stored list (the object's
//! trailer, readable without the key).
//!
//! The copy holds every block hash; a stored incremental list only those of
//! the blocks it changed ([`FileRecord::as_stored`]). Without the copy, the
//! parent's hashes are put back from its chain's lists ([`fold`]).

use super::blockhash;
use super::filelist::{Lookup, Records, Sorted};
use super::read::{Parent, ParentFile};
use super::{FileRecord, Listing, Manifest, Stored};
use crate::codec::Codec;
use crate::config::Backup as Policy;
use crate::store::Store;
use crate::wal::inventory::Inventory;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::io::Seek;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CACHE_FILE: &str = "walvault_backup_files.json";
/// Beside [`CACHE_FILE`]: the hex sha256 of the stored list it stands for.
pub const CACHE_STORED_FILE: &str = "walvault_backup_files.json.stored";

pub fn cache_path(pgdata: &Path) -> PathBuf {
    pgdata.join(CACHE_FILE)
}

/// Where `backup-push` writes the list it stores, renamed to [`cache_path`]
/// once the stored one is complete.
pub fn cache_tmp_path(pgdata: &Path) -> PathBuf {
    pgdata.join(format!("{CACHE_FILE}.tmp"))
}

/// Keeps the file list just written to [`cache_tmp_path`] for the next
/// incremental, as standing for the stored list of sha256 `stored`. The old
/// mark goes first: a copy is never taken for a list it does not stand for.
pub fn remember(pgdata: &Path, stored: &[u8; 32]) -> Result<()> {
    let (tmp, path) = (cache_tmp_path(pgdata), cache_path(pgdata));
    let mark = pgdata.join(CACHE_STORED_FILE);
    crate::files::remove_if_present(&mark)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    crate::files::write_atomically(&mark, hex::encode(stored).as_bytes())
}

/// Whether this host's copy stands for the stored list of sha256 `stored`.
/// A copy without its mark (an older walvault's) holds the stored bytes.
fn copy_stands_for(pgdata: &Path, f: &mut std::fs::File, stored: &[u8; 32]) -> bool {
    match std::fs::read_to_string(pgdata.join(CACHE_STORED_FILE)) {
        Ok(mark) => mark.trim() == hex::encode(stored),
        Err(_) => crate::codec::sha256_of(f).is_ok_and(|(sha, _)| &sha == stored),
    }
}

/// The newest backup this one can build on, or why a full backup is taken.
pub fn choose<'a>(
    listing: &'a Listing,
    inv: &Inventory,
    timeline: u32,
    major: u32,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<&'a Manifest, String> {
    let m = listing
        .complete
        .iter()
        .rev()
        .filter(|m| m.pg_version_num / 10000 == major)
        .find(|m| super::restorable_on(listing, inv, m, timeline))
        .ok_or_else(|| {
            format!("no complete backup of PostgreSQL {major} with its WAL lies on timeline {timeline}'s history")
        })?;
    let root_id = m.chain.first().unwrap_or(&m.id);
    let root = listing
        .complete
        .iter()
        .find(|b| &b.id == root_id)
        .ok_or_else(|| format!("the full backup {root_id} of {}'s chain is gone", m.id))?;
    if policy.full_every_days > 0
        && now - root.start_time > chrono::Duration::days(policy.full_every_days)
    {
        return Err(format!(
            "the chain's full backup {} is older than {} days (backup.full_every_days)",
            root.id, policy.full_every_days
        ));
    }
    // Increments the new backup's chain would hold, itself included.
    let increments = m.chain.len() as i64 + 1;
    if policy.max_increments > 0 && increments > policy.max_increments {
        return Err(format!(
            "the chain of {} already holds {} increment(s) (backup.max_increments {})",
            root.id,
            increments - 1,
            policy.max_increments
        ));
    }
    Ok(m)
}

/// The parent's file list (each backup's at the versions it wrote), record
/// by record in walk order, every block hash in it: this host's copy when it stands for the stored one, else the
/// stored lists of its chain (which need the key when the repository is
/// encrypted).
pub async fn load(
    store: Arc<dyn Store>,
    codec: &Codec,
    pgdata: &Path,
    m: &Manifest,
) -> Result<Lookup, String> {
    let key = format!("{}files.json", super::prefix(&m.id));
    let stored = crate::codec::read_trailer(m.pinned(store.clone()).as_ref(), &key)
        .await
        .map_err(|e| format!("the file list of {} cannot be read: {e}", m.id))?
        .ok_or_else(|| format!("backup {} has no file list", m.id))?;
    if let Ok(mut f) = std::fs::File::open(cache_path(pgdata)) {
        if copy_stands_for(pgdata, &mut f, &stored.plain_sha256) && f.rewind().is_ok() {
            return Ok(Lookup::new(Records::from_file(f)));
        }
    }
    if m.encrypted && codec.check_key().is_err() {
        return Err(format!(
            "the file list of {} is encrypted and this host keeps no copy of it (the last backup-push here was another backup); the next incremental here can build on this one",
            m.id
        ));
    }
    let chain = super::chain::load(store, codec, m)
        .await
        .map_err(|e| format!("{e:#}"))?;
    tokio::task::spawn_blocking(move || fold(&chain.lists))
        .await
        .map_err(|e| format!("file list task failed: {e}"))?
        .map(|s| s.lookup())
        .map_err(|e| format!("the file lists of {}'s chain: {e}", m.id))
}

/// The last list of `lists` (a chain's, full first) with every block hash
/// put back: where it leaves them out, they are the backup below's, with
/// the blocks it changed written over them.
pub fn fold(lists: &[Sorted]) -> std::io::Result<Sorted> {
    let Some((top, lowers)) = lists.split_last() else {
        return Sorted::from_records(std::iter::empty());
    };
    let mut lowers: Vec<Lookup> = lowers.iter().map(Sorted::lookup).collect();
    let folded = top.iter().map(move |r| {
        let mut r = r?;
        if r.block_sha.is_none() {
            r.block_sha = hashes(&r, &mut lowers)?.as_deref().map(blockhash::to_hex);
        }
        Ok(r)
    });
    Sorted::from_records(folded)
}

/// The block hashes of `r`, from the lists below it (the nearest last).
fn hashes(r: &FileRecord, lowers: &mut [Lookup]) -> std::io::Result<Option<Vec<u8>>> {
    if let Some(h) = &r.block_sha {
        return Ok(blockhash::from_hex(h));
    }
    let Some((below, rest)) = lowers.split_last_mut() else {
        return Ok(None);
    };
    let Some(b) = below.find(&r.path)? else {
        return Ok(None);
    };
    Ok(match (&r.stored, &r.block_changes) {
        (Stored::Parent, _) => hashes(&b, rest)?,
        (Stored::Blocks { .. }, Some(changes)) => {
            hashes(&b, rest)?.and_then(|h| super::apply_block_changes(h, changes, r.size))
        }
        _ => None,
    })
}

/// What the reader compares with: the parent's start (its files come one by
/// one, in walk order, through [`parent_file`]).
pub fn parent(m: &Manifest) -> Result<Parent> {
    Ok(Parent {
        id: m.id.clone(),
        start: m.start()?,
        summarized: None,
    })
}

/// A file of the parent as the reader compares with it.
pub fn parent_file(f: FileRecord) -> ParentFile {
    ParentFile {
        blocks: f.block_sha.as_deref().and_then(blockhash::from_hex),
        size: f.size,
        sha256: f.sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::blockhash::BLOCK_HASH;
    use crate::backup::page::BLCKSZ;

    fn h(c: u8) -> Vec<u8> {
        vec![c; BLOCK_HASH]
    }

    /// A record as the reader makes it: every block hash, and for a file
    /// held as blocks which ones it stored.
    fn rec(path: &str, blocks: &[u8], stored: Stored, changed: &[u32]) -> FileRecord {
        let hashes: Vec<u8> = blocks.iter().flat_map(|&c| h(c)).collect();
        let held = matches!(stored, Stored::Blocks { .. });
        FileRecord {
            path: path.into(),
            size: (blocks.len() * BLCKSZ) as u64,
            sha256: "x".into(),
            part: 0,
            block_changes: held.then(|| super::super::block_changes(changed, &hashes)),
            block_sha: Some(blockhash::to_hex(&hashes)),
            stored,
        }
    }

    fn held() -> Stored {
        Stored::Blocks {
            bytes: 1,
            sha256: "y".into(),
            blocks: 1,
        }
    }

    fn stored(list: &[FileRecord]) -> Sorted {
        Sorted::from_records(list.iter().map(|r| Ok(r.as_stored().into_owned()))).unwrap()
    }

    #[test]
    fn a_sparse_chain_folds_back_to_every_block_hash() {
        let full = vec![
            rec("base/5/1", b"abc", Stored::Whole, &[]),
            rec("base/5/2", b"pq", Stored::Whole, &[]),
            rec("base/5/3", b"mn", Stored::Whole, &[]),
            rec("global/pg_control", b"", Stored::Whole, &[]),
        ];
        // Increment 1: file 1 grows with blocks 1 and 3 changed; 2 and 3 unchanged.
        let incr1 = vec![
            rec("base/5/1", b"axcy", held(), &[1, 3]),
            rec("base/5/2", b"pq", Stored::Parent, &[]),
            rec("base/5/3", b"mn", Stored::Parent, &[]),
            rec("global/pg_control", b"", Stored::Whole, &[]),
        ];
        // Increment 2: file 1 unchanged, 2 cut to one changed block, 3 new whole, 4 new.
        let incr2 = vec![
            rec("base/5/1", b"axcy", Stored::Parent, &[]),
            rec("base/5/2", b"z", held(), &[0]),
            rec("base/5/3", b"rs", Stored::Whole, &[]),
            rec("base/5/4", b"k", Stored::Whole, &[]),
            rec("global/pg_control", b"", Stored::Whole, &[]),
        ];
        // Stored, unchanged files and changed blocks leave hashes out.
        let sparse: Vec<FileRecord> = incr2.iter().map(|r| r.as_stored().into_owned()).collect();
        assert_eq!(sparse[0].block_sha, None);
        assert_eq!(sparse[1].block_sha, None);
        assert!(sparse[1].block_changes.is_some());
        assert_eq!(sparse[2], incr2[2]);
        assert_eq!(full[0].as_stored().into_owned(), full[0]);

        let lists = vec![stored(&full), stored(&incr1), stored(&incr2)];
        let folded: Vec<FileRecord> = fold(&lists)
            .unwrap()
            .iter()
            .collect::<std::io::Result<_>>()
            .unwrap();
        let got: Vec<(String, Option<String>)> =
            folded.into_iter().map(|r| (r.path, r.block_sha)).collect();
        let want: Vec<(String, Option<String>)> = incr2
            .iter()
            .map(|r| (r.path.clone(), r.block_sha.clone()))
            .collect();
        assert_eq!(got, want);
        // A change past the file's size, or a lower list without the file: no
        // hashes (the next increment then reads the file whole).
        assert_eq!(
            crate::backup::apply_block_changes(
                h(b'a'),
                &super::super::block_changes(&[1], &[h(b'a'), h(b'b')].concat()),
                BLCKSZ as u64
            ),
            None
        );
        let orphan = vec![rec("base/5/9", b"z", held(), &[0])];
        let folded: Vec<FileRecord> = fold(&[stored(&full), stored(&orphan)])
            .unwrap()
            .iter()
            .collect::<std::io::Result<_>>()
            .unwrap();
        assert_eq!(folded[0].block_sha, None);
    }
}
