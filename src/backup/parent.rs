//! Which backup an incremental backup builds on, and its file list.
//!
//! A parent must be restorable onto the cluster's current timeline and have
//! ended before that timeline branched from its own (else its pages are not
//! this history's), be of the same major, and fit the chain policy
//! (`backup.full_every_days`, `backup.max_increments`).
//!
//! Its file list is encrypted; a database host often holds only the public
//! recipient. So `backup-push` keeps a copy of the last list it wrote in the
//! data directory (`walvault_backup_files.json`, never backed up), used only
//! when its sha256 is that of the parent's stored list (the object's trailer,
//! readable without the key).

use super::filelist::Records;
use super::read::{Parent, ParentFile};
use super::{FileRecord, Listing, Manifest};
use crate::codec::Codec;
use crate::config::Backup as Policy;
use crate::store::Store;
use crate::wal::inventory::Inventory;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::io::Seek;
use std::path::{Path, PathBuf};

pub const CACHE_FILE: &str = "walvault_backup_files.json";

pub fn cache_path(pgdata: &Path) -> PathBuf {
    pgdata.join(CACHE_FILE)
}

/// Where `backup-push` writes the list it stores, renamed to [`cache_path`]
/// once the stored one is complete.
pub fn cache_tmp_path(pgdata: &Path) -> PathBuf {
    pgdata.join(format!("{CACHE_FILE}.tmp"))
}

/// Keeps the file list just stored (written to [`cache_tmp_path`] with the
/// exact bytes stored) for the next incremental.
pub fn remember(pgdata: &Path) -> Result<()> {
    let (tmp, path) = (cache_tmp_path(pgdata), cache_path(pgdata));
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))
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

/// The parent's file list, record by record: this host's copy when it is
/// the stored one, else the stored list (which needs the key when the
/// repository is encrypted).
pub async fn load(
    store: &dyn Store,
    codec: &Codec,
    pgdata: &Path,
    m: &Manifest,
) -> Result<Records, String> {
    let key = format!("{}files.json", super::prefix(&m.id));
    let stored = crate::codec::read_trailer(store, &key)
        .await
        .map_err(|e| format!("the file list of {} cannot be read: {e}", m.id))?
        .ok_or_else(|| format!("backup {} has no file list", m.id))?;
    if let Ok(mut f) = std::fs::File::open(cache_path(pgdata)) {
        let same = crate::codec::sha256_of(&mut f).is_ok_and(|(sha, _)| sha == stored.plain_sha256)
            && f.rewind().is_ok();
        if same {
            return Ok(Records::from_file(f));
        }
    }
    if m.encrypted && codec.check_key().is_err() {
        return Err(format!(
            "the file list of {} is encrypted and this host keeps no copy of it (the last backup-push here was another backup); the next incremental here can build on this one",
            m.id
        ));
    }
    super::filelist::read(store, codec, &m.id)
        .await
        .map_err(|e| format!("{e:#}"))
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
        blocks: f.block_sha.as_deref().and_then(|h| hex::decode(h).ok()),
        size: f.size,
        sha256: f.sha256,
    }
}
