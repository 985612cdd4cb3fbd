//! The manifest cache (`catalog/backups.json`): every complete backup's
//! manifest with the size and time of the manifest object it was read from,
//! so that `status` and `backup-list` read only the manifests that are new
//! instead of one object per backup on every call. A cached manifest is used
//! only while the listing shows its object unchanged; recover, retention and
//! the verifiers read manifests themselves.

use super::Manifest;
use crate::store::{ObjectMeta, Store};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const KEY: &str = "catalog/backups.json";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Cache {
    format: u32,
    backups: Vec<Entry>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Entry {
    size: u64,
    modified: Option<DateTime<Utc>>,
    manifest: Manifest,
}

impl Entry {
    pub fn new(object: &ObjectMeta, manifest: Manifest) -> Entry {
        Entry {
            size: object.size,
            modified: object.modified,
            manifest,
        }
    }
}

/// Cached manifests by backup id; empty when there is no usable cache.
pub async fn read(store: &dyn Store) -> BTreeMap<String, Entry> {
    match crate::store::get_json::<Cache>(store, KEY, "a walvault manifest cache").await {
        Ok(Some(c)) if c.format == FORMAT => c
            .backups
            .into_iter()
            .map(|e| (e.manifest.id.clone(), e))
            .collect(),
        Ok(_) => BTreeMap::new(),
        Err(e) => {
            tracing::debug!("manifest cache not used: {e:#}");
            BTreeMap::new()
        }
    }
}

/// The cached manifest of `id` if its manifest object is the one listed.
pub fn lookup(cache: &BTreeMap<String, Entry>, id: &str, object: &ObjectMeta) -> Option<Manifest> {
    cache
        .get(id)
        .filter(|e| e.size == object.size && e.modified == object.modified)
        .map(|e| e.manifest.clone())
}

/// Writes the cache, best effort (a host that may not write goes on reading
/// manifests).
pub async fn write(store: &dyn Store, backups: Vec<Entry>) {
    let cache = Cache {
        format: FORMAT,
        backups,
    };
    crate::store::replace_cache(store, KEY, &cache).await;
}
