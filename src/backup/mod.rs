//! Base backups: `push` (pg_backup_start, read PGDATA, tar parts, pg_backup_stop),
//! the `manifest`, `restore` (download and extract) and listing.
//!
//! Layout under `backups/<id>/`: `part-NNNN.tar` (encoded tar parts), `files.json`
//! (encoded: every file with size and sha256), `backup_label`, `tablespace_map`
//! (encoded), `server_config.json` (encoded: config files kept outside PGDATA),
//! and `manifest.json` (clear JSON, written last: a backup without a
//! manifest does not exist). The manifest is clear so listing and stored-byte
//! verification work on a host that holds only the public recipient.

pub mod blockhash;
pub mod catalog;
pub mod chain;
pub mod delta;
pub mod filelist;
pub mod keep;
pub mod manifests;
pub mod page;
pub mod parent;
pub mod push;
pub mod read;
pub mod restore;
pub mod resume;
pub mod server_config;
pub mod standby;
pub mod summaries;
pub mod verify;
pub mod walk;

use crate::codec::Codec;
use crate::store::{ObjectMeta, Store};
use crate::wal::names::Lsn;
use anyhow::{Context, Result};
use blockhash::BlockHash;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Full backups keep format 1 (any walvault restores them). Incremental
/// backups were format 2 (a walvault that cannot assemble chains refuses
/// them instead of restoring only what changed), then format 3: the record
/// of a relation file held in part holds a blocks digest
/// ([`BlockHash::digest`]), never computed by a walvault of format 2. They
/// are now format 4: that digest may be of BLAKE3 block hashes, which a
/// walvault of format 3 cannot check.
pub const MANIFEST_FORMAT: u32 = 1;
pub const INCREMENTAL_FORMAT: u32 = 4;

pub fn prefix(id: &str) -> String {
    format!("backups/{id}/")
}
pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}/manifest.json")
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Part {
    pub key: String,
    pub files: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    /// The version id the store gave this part (versioned buckets): `verify`
    /// tells a part replaced since from the one the backup wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Tablespace {
    pub oid: String,
    pub path: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub label: String,
    pub system_identifier: String,
    pub pg_version_num: u32,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_time: DateTime<Utc>,
    /// When pg_backup_stop returned (server clock): the earliest time this backup can recover to.
    pub stop_time: DateTime<Utc>,
    pub wal_segment_size: u64,
    pub raw_bytes: u64,
    /// The parts' stored bytes and the file list's (in manifests written
    /// before the list was counted, the parts' only).
    pub stored_bytes: u64,
    pub files: u64,
    pub duration_seconds: f64,
    pub parts: Vec<Part>,
    pub tablespaces: Vec<Tablespace>,
    pub encrypted: bool,
    pub created_by: String,
    /// Version ids of the backup's other objects (label, tablespace map, file
    /// list) on a versioned bucket, by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, String>,
    /// An incremental backup: the backup it builds on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// An incremental backup: every backup it needs, its full backup first,
    /// its parent last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// An incremental backup: how changed blocks were found ("block hashes",
    /// or "block hashes and WAL summaries").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_from: Option<String>,
    /// Pages whose checksum failed when read (data checksums on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksum_failures: Vec<ChecksumFailure>,
    /// How its relation files' blocks are hashed: its chain's kind
    /// (SHA-256 in manifests without the field).
    #[serde(default, skip_serializing_if = "BlockHash::is_sha256")]
    pub block_hash: BlockHash,
    /// Where the server's configuration was, and which of its files outside
    /// the data directory are stored beside the backup (absent in manifests
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_config: Option<server_config::ServerConfig>,
    /// Where it was taken (absent in manifests written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_on: Option<TakenOn>,
}

/// The host a backup was read on and the role its server had then.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TakenOn {
    pub host: String,
    /// "primary", or "standby" (a streaming standby: the backup's I/O stayed
    /// off the primary).
    pub role: String,
}

impl std::fmt::Display for TakenOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.host, self.role)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChecksumFailure {
    pub path: String,
    /// The relation, when the server could name it (tables of the database
    /// walvault connects to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    /// Block numbers within the file.
    pub blocks: Vec<u32>,
}

impl Manifest {
    /// `store` with this backup's objects read at the versions it wrote: what a
    /// restore reads even if a key was overwritten since.
    pub fn pinned(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        let versions = self
            .recorded_versions()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()));
        crate::store::Pinned::over(store, versions)
    }

    /// Every object of the backup whose version id the store gave, with it.
    pub fn recorded_versions(&self) -> Vec<(&str, &str)> {
        let parts = self
            .parts
            .iter()
            .filter_map(|p| Some((p.key.as_str(), p.version.as_deref()?)));
        let others = self.versions.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        parts.chain(others).collect()
    }
    pub fn is_incremental(&self) -> bool {
        self.parent.is_some()
    }
    pub fn kind(&self) -> &'static str {
        if self.is_incremental() {
            "incr"
        } else {
            "full"
        }
    }
    pub fn start(&self) -> Result<Lsn> {
        Lsn::parse(&self.start_lsn)
    }
    pub fn stop(&self) -> Result<Lsn> {
        Lsn::parse(&self.stop_lsn)
    }
}

/// One file of the backup, as read from PGDATA.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    /// Path in the tar stream: relative to PGDATA (tablespaces under pg_tblspc/<oid>/).
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub part: u32,
    /// How an incremental backup holds the file (absent: whole, in `part`).
    #[serde(default, skip_serializing_if = "Stored::is_whole")]
    pub stored: Stored,
    /// A relation file's 8 KiB blocks: the first 16 bytes of each one's
    /// hash (of the manifest's `block_hash` kind), in hex, in order. What an
    /// incremental backup compares with.
    /// A stored incremental list leaves it out where the parent's hashes
    /// serve (see [`FileRecord::as_stored`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_sha: Option<String>,
    /// For a file an incremental holds as changed blocks: those blocks'
    /// numbers and hashes ([`block_changes`]); with the parent's hashes of
    /// the others, they make `block_sha`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_changes: Option<String>,
}

/// `block_changes` of `numbers` (ascending) taken from `hashes`: for each, the
/// number (u32, little-endian) then the block's hash, all in hex.
pub fn block_changes(numbers: &[u32], hashes: &[u8]) -> String {
    use blockhash::BLOCK_HASH;
    let mut raw = Vec::with_capacity(numbers.len() * (4 + BLOCK_HASH));
    for &n in numbers {
        let at = n as usize * BLOCK_HASH;
        raw.extend_from_slice(&n.to_le_bytes());
        raw.extend_from_slice(&hashes[at..at + BLOCK_HASH]);
    }
    blockhash::to_hex(&raw)
}

/// The (number, hash) pairs of `changes` (see [`block_changes`]); None when
/// malformed.
fn block_change_pairs(changes: &str) -> Option<Vec<(u32, [u8; blockhash::BLOCK_HASH])>> {
    use blockhash::BLOCK_HASH;
    let raw = blockhash::from_hex(changes)?;
    if raw.len() % (4 + BLOCK_HASH) != 0 {
        return None;
    }
    raw.chunks_exact(4 + BLOCK_HASH)
        .map(|c| {
            Some((
                u32::from_le_bytes(c[..4].try_into().ok()?),
                c[4..].try_into().ok()?,
            ))
        })
        .collect()
}

/// The block numbers `changes` names (see [`block_changes`]); None when malformed.
pub fn changed_block_numbers(changes: &str) -> Option<Vec<u32>> {
    Some(
        block_change_pairs(changes)?
            .into_iter()
            .map(|(n, _)| n)
            .collect(),
    )
}

/// Writes `changes` (see [`block_changes`]) over `hashes`, the parent's block
/// hashes cut or extended (with zeros) to a file of `size` bytes. None when
/// the changes are malformed or name a block past that size.
pub fn apply_block_changes(mut hashes: Vec<u8>, changes: &str, size: u64) -> Option<Vec<u8>> {
    use blockhash::BLOCK_HASH;
    let count = (size / page::BLCKSZ as u64) as usize;
    hashes.resize(count * BLOCK_HASH, 0);
    for (n, hash) in block_change_pairs(changes)? {
        let n = n as usize;
        if n >= count {
            return None;
        }
        hashes[n * BLOCK_HASH..(n + 1) * BLOCK_HASH].copy_from_slice(&hash);
    }
    Some(hashes)
}

/// Where a file's content is. `size` and `sha256` of its record are always
/// those of the file as restored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stored {
    /// Whole, in the record's part.
    #[default]
    Whole,
    /// Unchanged since the parent backup: the parent's file.
    Parent,
    /// The parent's file with these blocks written over it (a `delta` entry
    /// of `bytes` bytes, sha256 `sha256`, in the record's part), cut or
    /// extended to `size`.
    Blocks {
        bytes: u64,
        sha256: String,
        blocks: u64,
    },
}

impl Stored {
    pub fn is_whole(&self) -> bool {
        *self == Stored::Whole
    }
    pub fn is_parent(&self) -> bool {
        *self == Stored::Parent
    }
}

impl FileRecord {
    /// Whether the file at `path` has this record's size and sha256 (or
    /// blocks digest); reads it whole.
    pub fn matches_file(&self, path: &std::path::Path) -> bool {
        if let Some(kind) = BlockHash::of_digest(&self.sha256) {
            return std::fs::File::open(path).is_ok_and(|f| {
                f.metadata().is_ok_and(|m| m.len() == self.size)
                    && kind
                        .of_file(&f)
                        .is_ok_and(|(h, size)| kind.digest(&h, size) == self.sha256)
            });
        }
        std::fs::File::open(path)
            .and_then(|mut f| crate::codec::sha256_of(&mut f))
            .is_ok_and(|(sha, len)| len == self.size && hex::encode(sha) == self.sha256)
    }

    /// The record as a file list stores it. The hashes of blocks an
    /// incremental takes from its parent are left out (they are the
    /// parent's): of a file held as changed blocks only theirs are kept, of
    /// a file unchanged since the parent none. Without this every increment
    /// would store 16 bytes per 8 KiB of the whole cluster, more than what
    /// changed. [`parent::load`] puts them back from the chain.
    pub fn as_stored(&self) -> std::borrow::Cow<'_, FileRecord> {
        let sparse = match self.stored {
            Stored::Parent => self.block_sha.is_some() || self.block_changes.is_some(),
            Stored::Blocks { .. } => self.block_changes.is_some() && self.block_sha.is_some(),
            Stored::Whole => self.block_changes.is_some(),
        };
        if !sparse {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut r = self.clone();
        match r.stored {
            Stored::Parent => {
                r.block_sha = None;
                r.block_changes = None;
            }
            Stored::Blocks { .. } => r.block_sha = None,
            Stored::Whole => r.block_changes = None,
        }
        std::borrow::Cow::Owned(r)
    }

    /// The size and sha256 of this file's entry in its part; None when the
    /// backup holds no entry for it (unchanged since the parent).
    pub fn entry(&self) -> Option<(u64, &str)> {
        match &self.stored {
            Stored::Whole => Some((self.size, &self.sha256)),
            Stored::Blocks { bytes, sha256, .. } => Some((*bytes, sha256)),
            Stored::Parent => None,
        }
    }
}

/// Backups in the repository: complete ones (with a manifest), the ids of
/// incomplete ones (objects but no manifest: a push that died or is running),
/// keep marks, and every object under `backups/` by backup id.
pub struct Listing {
    pub complete: Vec<Manifest>,
    pub incomplete: Vec<String>,
    /// Backups whose manifest exists but cannot be read: (id, why). Never
    /// restored, never removed by retention; the others stay usable.
    pub damaged: Vec<(String, String)>,
    pub keeps: BTreeMap<String, crate::marks::Keep>,
    pub objects: BTreeMap<String, Vec<ObjectMeta>>,
}

/// Every backup, each manifest read from the store.
pub async fn list(store: &dyn Store) -> Result<Listing> {
    list_using(store, None).await
}

/// `list` with manifests from the manifest cache where their objects are
/// unchanged (status, backup-list): the cost of new backups, not of all.
pub async fn list_cached(store: &dyn Store) -> Result<Listing> {
    let cache = manifests::read(store).await;
    list_using(store, Some(cache)).await
}

async fn list_using(
    store: &dyn Store,
    cache: Option<BTreeMap<String, manifests::Entry>>,
) -> Result<Listing> {
    let mut objects: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for meta in store.list("backups/").await? {
        let rest = meta.key.trim_start_matches("backups/");
        let Some((id, _)) = rest.split_once('/') else {
            continue;
        };
        objects.entry(id.to_string()).or_default().push(meta);
    }
    let find = |id: &str, name: &str| {
        objects[id]
            .iter()
            .find(|m| m.key.ends_with(&format!("/{name}")))
    };
    let has = |id: &str, name: &str| find(id, name).is_some();
    let mut entries = Vec::new();
    let mut read_new = false;
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    let mut damaged = Vec::new();
    let mut keeps = BTreeMap::new();
    for id in objects.keys() {
        if let Some(object) = find(id, "manifest.json") {
            let cached = cache
                .as_ref()
                .and_then(|c| manifests::lookup(c, id, object));
            let read = match cached {
                Some(m) => Ok(m),
                None => {
                    let r = read_manifest(store, id).await;
                    // A damaged manifest is not cached: no rewrite for it.
                    read_new |= r.is_ok();
                    r
                }
            };
            match read {
                Ok(m) if m.id == *id => {
                    entries.push(manifests::Entry::new(object, m.clone()));
                    complete.push(m)
                }
                Ok(m) => damaged.push((
                    id.clone(),
                    format!("its manifest names another backup, {}", m.id),
                )),
                // Unreadable content is this backup's problem; an unreachable
                // store is everyone's.
                Err(e) if e.chain().any(|c| c.is::<serde_json::Error>()) => {
                    tracing::warn!("backup {id}: {e:#}");
                    damaged.push((id.clone(), format!("{e:#}")));
                    continue;
                }
                Err(e) => return Err(e),
            }
            if has(id, "keep.json") {
                if let Some(k) = keep::read(store, id).await? {
                    keeps.insert(id.clone(), k);
                }
            }
        } else {
            incomplete.push(id.clone());
        }
    }
    if let Some(cache) = &cache {
        if read_new || cache.len() != entries.len() {
            manifests::write(store, entries).await;
        }
    }
    complete.sort_by_key(|m| m.stop_time);
    Ok(Listing {
        complete,
        incomplete,
        damaged,
        keeps,
        objects,
    })
}

/// Whether every WAL segment from the backup's start to its stop is present.
pub fn restorable(inv: &crate::wal::inventory::Inventory, m: &Manifest) -> bool {
    match (m.start(), m.stop()) {
        (Ok(a), Ok(z)) => inv.missing_between(m.timeline, a, z).is_none(),
        _ => false,
    }
}

/// Whether every backup `m` builds on (an incremental's chain) is complete.
pub fn chain_present(listing: &Listing, m: &Manifest) -> bool {
    m.chain
        .iter()
        .all(|id| listing.complete.iter().any(|b| &b.id == id))
}

/// Whether `m` can recover onto timeline `tli`: the backups it builds on are
/// there, its own WAL is all there and it ended before `tli` branched from its
/// timeline. The one rule recover, retention and the recoverable window share.
pub fn restorable_on(
    listing: &Listing,
    inv: &crate::wal::inventory::Inventory,
    m: &Manifest,
    tli: u32,
) -> bool {
    chain_present(listing, m)
        && restorable(inv, m)
        && m.stop().is_ok_and(|s| inv.reaches(tli, m.timeline, s))
}

/// `list_with_wal` from the catalogues (status, backup-list, choosing a
/// parent): what was stored since they were written is listed, not all.
pub async fn list_with_wal_cached(
    store: &dyn Store,
    codec: &Codec,
) -> Result<(Listing, crate::wal::inventory::Inventory)> {
    let listing = list_cached(store).await?;
    let seg = segment_size(&listing);
    let window_start = listing
        .complete
        .iter()
        .filter_map(|m| m.start().ok())
        .map(|l| l.segno(seg))
        .min();
    let inv = crate::wal::catalog::load(store, codec, seg, window_start).await?;
    Ok((listing, inv))
}

/// The backups and the WAL inventory together (the segment size from the backups;
/// 16 MiB when there are none).
pub async fn list_with_wal(
    store: &dyn Store,
    codec: &Codec,
) -> Result<(Listing, crate::wal::inventory::Inventory)> {
    let listing = list(store).await?;
    let seg = segment_size(&listing);
    let inv = crate::wal::inventory::Inventory::load(store, codec, seg).await?;
    Ok((listing, inv))
}

/// The WAL segment size of the backups' cluster; 16 MiB when there are none.
fn segment_size(listing: &Listing) -> u64 {
    listing
        .complete
        .first()
        .map(|m| m.wal_segment_size)
        .unwrap_or(16 << 20)
}

pub async fn read_manifest(store: &dyn Store, id: &str) -> Result<Manifest> {
    let key = manifest_key(id);
    let m: Manifest = crate::store::get_json(store, &key, "a walvault manifest")
        .await?
        .with_context(|| format!("backup '{id}' does not exist (no {})", store.locate(&key)))?;
    anyhow::ensure!(
        m.format <= INCREMENTAL_FORMAT,
        "{} has format {}, newer than this walvault",
        store.locate(&key),
        m.format
    );
    Ok(m)
}

/// The most a backup's file list may decode to (about 5 million files;
/// it is decoded to local disk, never into memory).
pub const FILES_JSON_LIMIT: u64 = 1 << 30;
