//! Base backups: `push` (pg_backup_start, read PGDATA, tar parts, pg_backup_stop),
//! the `manifest`, `restore` (download and extract) and listing.
//!
//! Layout under `backups/<id>/`: `part-NNNN.tar` (encoded tar parts), `files.json`
//! (encoded: every file with size and sha256), `backup_label`, `tablespace_map`
//! (encoded), and `manifest.json` (clear JSON, written last: a backup without a
//! manifest does not exist). The manifest is clear so listing and stored-byte
//! verification work on a host that holds only the public recipient.

pub mod catalog;
pub mod keep;
pub mod push;
pub mod restore;
pub mod verify;
pub mod walk;

use crate::codec::Codec;
use crate::store::{ObjectMeta, Store};
use crate::wal::names::Lsn;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const MANIFEST_FORMAT: u32 = 1;

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
    pub keeps: BTreeMap<String, keep::Keep>,
    pub objects: BTreeMap<String, Vec<ObjectMeta>>,
}

pub async fn list(store: &dyn Store) -> Result<Listing> {
    let mut objects: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    for meta in store.list("backups/").await? {
        let rest = meta.key.trim_start_matches("backups/");
        let Some((id, _)) = rest.split_once('/') else {
            continue;
        };
        objects.entry(id.to_string()).or_default().push(meta);
    }
    let has = |id: &str, name: &str| {
        objects[id]
            .iter()
            .any(|m| m.key.ends_with(&format!("/{name}")))
    };
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    let mut damaged = Vec::new();
    let mut keeps = BTreeMap::new();
    for id in objects.keys() {
        if has(id, "manifest.json") {
            match read_manifest(store, id).await {
                Ok(m) if m.id == *id => complete.push(m),
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

/// Whether `m` can recover onto timeline `tli`: its own WAL is all there and it
/// ended before `tli` branched from its timeline. The one rule recover,
/// retention and the recoverable window share.
pub fn restorable_on(inv: &crate::wal::inventory::Inventory, m: &Manifest, tli: u32) -> bool {
    restorable(inv, m) && m.stop().is_ok_and(|s| inv.reaches(tli, m.timeline, s))
}

/// The backups and the WAL inventory together (the segment size from the backups;
/// 16 MiB when there are none).
pub async fn list_with_wal(
    store: &dyn Store,
    codec: &Codec,
) -> Result<(Listing, crate::wal::inventory::Inventory)> {
    let listing = list(store).await?;
    let seg = listing
        .complete
        .first()
        .map(|m| m.wal_segment_size)
        .unwrap_or(16 << 20);
    let inv = crate::wal::inventory::Inventory::load(store, codec, seg).await?;
    Ok((listing, inv))
}

pub async fn read_manifest(store: &dyn Store, id: &str) -> Result<Manifest> {
    let key = manifest_key(id);
    let m: Manifest = crate::store::get_json(store, &key, "a walvault manifest")
        .await?
        .with_context(|| format!("backup '{id}' does not exist (no {})", store.locate(&key)))?;
    anyhow::ensure!(
        m.format <= MANIFEST_FORMAT,
        "{} has format {}, newer than this walvault",
        store.locate(&key),
        m.format
    );
    Ok(m)
}

/// The most a backup's file list may decode to (about 5 million files).
pub const FILES_JSON_LIMIT: u64 = 1 << 30;
/// The most a text object (label, tablespace map, timeline history) may decode to.
pub const TEXT_LIMIT: u64 = 16 << 20;

pub async fn read_files(store: &dyn Store, codec: &Codec, id: &str) -> Result<Vec<FileRecord>> {
    let key = format!("{}files.json", prefix(id));
    let bytes = codec
        .download_small(store, &key, FILES_JSON_LIMIT)
        .await?
        .with_context(|| format!("{} is missing", store.locate(&key)))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", store.locate(&key)))
}

/// Reads a small encoded text object.
pub async fn read_text(store: &dyn Store, codec: &Codec, key: &str) -> Result<Option<String>> {
    codec
        .download_small(store, key, TEXT_LIMIT)
        .await?
        .map(|b| String::from_utf8(b).with_context(|| format!("{} is not text", store.locate(key))))
        .transpose()
}
