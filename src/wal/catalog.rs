//! The WAL catalogue: a small clear object (`catalog/wal.json`) summing up
//! what `wal/` held at a listing (segments as runs, the other objects, the
//! timeline histories), so that `status` and `backup-list` list only what was
//! stored after it instead of a year of history every minute.
//!
//! It is a cache, never the truth: recover, retention and the verifiers list
//! in full (and rewrite it); a catalogue is rebuilt from a full listing when
//! it is damaged, of another segment size, or its last full listing is a week
//! old, which bounds how long an object removed outside walvault, or archived
//! late behind the end, can go unseen by `status`.

use super::inventory::Inventory;
use super::segments::{SegRun, Segments};
use crate::codec::Codec;
use crate::store::{ObjectMeta, Store};
use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const KEY: &str = "catalog/wal.json";
const FORMAT: u32 = 1;
/// How often a full listing rebuilds the catalogue at the least.
const FULL_LISTING_EVERY_DAYS: i64 = 7;
/// Objects listed after the catalogue before it is rewritten: one LIST page,
/// so the listing after it stays one request (and a locked bucket keeps few
/// versions of it).
const REWRITE_AFTER: usize = 1000;
/// A hole whose successors were stored this recently may still be filled (a
/// push retried, archiving from two nodes): listing starts before it.
const HOLE_WATCH_HOURS: i64 = 24;

#[derive(Serialize, Deserialize)]
struct Catalog {
    format: u32,
    seg_size: u64,
    /// The last key under `wal/` the listings behind it saw: the next one
    /// starts after it.
    listed_through: Option<String>,
    /// When the last full listing behind it started.
    full_listing_at: DateTime<Utc>,
    written_at: DateTime<Utc>,
    runs: Vec<SegRun>,
    others: Vec<Listed>,
    /// Timeline history files' text by timeline.
    histories: BTreeMap<u32, String>,
}

#[derive(Serialize, Deserialize)]
struct Listed {
    key: String,
    size: u64,
    modified: Option<DateTime<Utc>>,
}

/// Writes the catalogue of `inv`, best effort: a host without the right to
/// write it (a read-only restore host) goes on with a full listing next time.
pub async fn save(
    store: &dyn Store,
    inv: &Inventory,
    listed_through: Option<&str>,
    full_listing_at: DateTime<Utc>,
) {
    let cat = Catalog {
        format: FORMAT,
        seg_size: inv.seg_size,
        listed_through: listed_through.map(str::to_string),
        full_listing_at,
        written_at: Utc::now(),
        runs: inv.segments.runs().cloned().collect(),
        others: inv
            .others
            .iter()
            .map(|o| Listed {
                key: o.key.clone(),
                size: o.size,
                modified: o.modified,
            })
            .collect(),
        histories: inv.history_texts.clone(),
    };
    crate::store::replace_cache(store, KEY, &cat).await;
}

/// Writes the catalogue of a full listing without the objects `removed`
/// (retention, before it removes them).
pub async fn save_without(store: &dyn Store, inv: &Inventory, removed: &[ObjectMeta]) {
    let Some(listed_at) = inv.listed_at else {
        return;
    };
    let gone: std::collections::HashSet<&str> = removed.iter().map(|o| o.key.as_str()).collect();
    let mut left = Inventory::empty(inv.seg_size);
    for o in inv
        .objects
        .iter()
        .filter(|o| !gone.contains(o.key.as_str()))
    {
        left.add(o);
    }
    for (t, text) in &inv.history_texts {
        if left.add_history(*t, text.clone()).is_err() {
            return;
        }
    }
    let through = inv.objects.last().map(|o| o.key.as_str());
    save(store, &left, through, listed_at).await;
}

/// What WAL the repository holds, from the catalogue and a listing of what
/// came after it. `window_start`: the first segment the oldest backup needs;
/// a hole after it that may still fill is listed again.
pub async fn load(
    store: &dyn Store,
    codec: &Codec,
    seg_size: u64,
    window_start: Option<u64>,
) -> Result<Inventory> {
    let now = Utc::now();
    let cat = match crate::store::get_json::<Catalog>(store, KEY, "a walvault WAL catalogue").await
    {
        Ok(c) => c,
        Err(e) if e.chain().any(|c| c.is::<serde_json::Error>()) => {
            tracing::warn!("{e:#}; listing WAL in full to rebuild it");
            None
        }
        Err(e) => return Err(e),
    };
    let fresh = |c: &Catalog| {
        c.format == FORMAT
            && c.seg_size == seg_size
            && now - c.full_listing_at < Duration::days(FULL_LISTING_EVERY_DAYS)
    };
    let Some(cat) = cat.filter(fresh) else {
        return Inventory::load(store, codec, seg_size).await;
    };
    let Some(mut inv) = from_catalog(seg_size, &cat) else {
        tracing::warn!("{} does not parse; listing WAL in full", store.locate(KEY));
        return Inventory::load(store, codec, seg_size).await;
    };

    let mut after = cat.listed_through.clone();
    if let Some(hole) = window_start.and_then(|s| watched_hole(&inv, s, now)) {
        // One character short of the hole's key: the listing includes it.
        let key = super::key(&hole);
        let before = key[..key.len() - 1].to_string();
        after = Some(after.map_or(before.clone(), |a| a.min(before)));
    }
    let listed = match &after {
        Some(a) => store.list_after("wal/", a).await?,
        None => store.list("wal/").await?,
    };
    let added = listed.iter().filter(|o| inv.add(o)).count();
    let new_histories = inv.read_histories(store, codec).await?;
    if added >= REWRITE_AFTER || new_histories {
        let through = listed.last().map(|o| o.key.clone()).max(cat.listed_through);
        save(store, &inv, through.as_deref(), cat.full_listing_at).await;
    }
    Ok(inv)
}

fn from_catalog(seg_size: u64, cat: &Catalog) -> Option<Inventory> {
    let mut inv = Inventory::empty(seg_size);
    inv.segments = Segments::from_runs(seg_size, cat.runs.iter().cloned());
    for o in &cat.others {
        inv.add(&ObjectMeta {
            key: o.key.clone(),
            size: o.size,
            modified: o.modified,
            retain_until: None,
            version: None,
        });
    }
    for (t, text) in &cat.histories {
        inv.add_history(*t, text.clone()).ok()?;
    }
    // A history the catalogue lacks is read by `load`.
    Some(inv)
}

/// The first hole on the latest timeline after `start` whose successors were
/// stored recently enough that it may still be filled.
fn watched_hole(inv: &Inventory, start: u64, now: DateTime<Utc>) -> Option<String> {
    let tli = inv.latest_timeline();
    let gap = inv.run_from(tli, start).gap?;
    let n = gap.segno(inv.seg_size).ok()?;
    let after = inv.segments.earliest_stored_after(n)?;
    (now - after < Duration::hours(HOLE_WATCH_HOURS)).then(|| gap.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FsStore;
    use crate::store::{Class, Mode};
    use crate::wal::names::SegmentName;

    const MB16: u64 = 16 << 20;

    fn key(n: u64) -> String {
        super::super::key(&SegmentName::from_segno(1, n, MB16).to_string())
    }

    async fn put(store: &FsStore, n: u64) {
        store
            .put_bytes(&key(n), vec![0u8; 10].into(), Class::Standard)
            .await
            .unwrap();
    }

    fn runs(inv: &Inventory) -> Vec<(u64, u64)> {
        inv.segments.runs().map(|r| (r.first, r.last)).collect()
    }

    #[tokio::test]
    async fn lists_only_what_came_after_and_what_may_fill_a_hole() {
        let dir = std::env::temp_dir().join(format!("walvault-catalog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FsStore::new(dir.clone());
        let codec = Codec::new(1, vec![], None);
        for n in 1..=5 {
            put(&store, n).await;
        }
        // No catalogue: a full listing, which writes one.
        let inv = load(&store, &codec, MB16, Some(1)).await.unwrap();
        assert_eq!(runs(&inv), vec![(1, 5)]);
        assert!(store.head(KEY).await.unwrap().is_some());

        // New segments are listed after it; the catalogue is not rewritten
        // for a few objects.
        for n in [6, 7, 9] {
            put(&store, n).await;
        }
        let inv = load(&store, &codec, MB16, Some(1)).await.unwrap();
        assert_eq!(runs(&inv), vec![(1, 7), (9, 9)]);
        let stored: serde_json::Value = crate::store::get_json(&store, KEY, "x")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored["listed_through"], serde_json::json!(key(5)));

        // A catalogue that already saw 9: segment 8 arrives late, behind its
        // end. The hole after the oldest backup's start is listed again...
        save(&store, &inv, Some(&key(9)), Utc::now()).await;
        put(&store, 8).await;
        let inv = load(&store, &codec, MB16, Some(1)).await.unwrap();
        assert_eq!(runs(&inv), vec![(1, 9)]);
        // ...but not when no backup needs it: the cache does not see it.
        save(
            &store,
            &{
                let mut i = Inventory::empty(MB16);
                for n in (1..=7).chain([9]) {
                    i.segments
                        .insert(SegmentName::from_segno(1, n, MB16), 10, Some(Utc::now()));
                }
                i
            },
            Some(&key(9)),
            Utc::now(),
        )
        .await;
        let inv = load(&store, &codec, MB16, None).await.unwrap();
        assert_eq!(runs(&inv), vec![(1, 7), (9, 9)]);

        // Removed outside walvault: the cache claims it until a full listing,
        // which rewrites the catalogue.
        store.delete(&key(3)).await.unwrap();
        let inv = load(&store, &codec, MB16, Some(1)).await.unwrap();
        assert!(inv.segments.contains_segno(1, 3));
        let full = Inventory::load(&store, &codec, MB16).await.unwrap();
        assert_eq!(runs(&full), vec![(1, 2), (4, 9)]);
        let inv = load(&store, &codec, MB16, Some(1)).await.unwrap();
        assert_eq!(runs(&inv), vec![(1, 2), (4, 9)]);

        // Retention's catalogue forgets what it is about to remove.
        save_without(&store, &full, &full.objects[..2]).await;
        let inv = load(&store, &codec, MB16, None).await.unwrap();
        assert_eq!(runs(&inv), vec![(4, 9)]);

        // A damaged catalogue is rebuilt from a full listing.
        store
            .write_bytes(KEY, b"{".to_vec().into(), Class::Standard, Mode::Replace)
            .await
            .unwrap();
        let inv = load(&store, &codec, MB16, Some(1)).await.unwrap();
        assert_eq!(runs(&inv), vec![(1, 2), (4, 9)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
