//! `delete`: retention (the dumps' own policy in [`dumps`]). Decides which backups a policy keeps, which WAL those
//! backups need, and removes the rest (a dry run unless confirmed).
//!
//! What is kept, and why:
//! - permanent and keep-until backups (`backup-mark`), whatever the policy;
//! - the newest N restorable backups (`keep_last`) and every backup needed to
//!   recover to any time in the last D days (`keep_days`): a backup is kept when
//!   either policy keeps it;
//! - for every kept backup, the WAL from its start to its stop (so it stays
//!   restorable), and all WAL from the start of the oldest kept non-permanent
//!   backup onwards (so the recoverable window has no hole);
//! - every timeline history file: PostgreSQL finds the newest timeline by asking
//!   for history files one after another, so removing one hides the later ones.
//!
//! Object Lock: an object still under retention is skipped and reported, and a
//! backup whose manifest is locked is kept whole, with its WAL.

pub mod dumps;

use crate::backup::{Listing, Manifest};
use crate::store::{ObjectMeta, Store};
use crate::wal::inventory::Inventory;
use crate::wal::names::WalFile;
use crate::wal::stream as wal_stream;
use anyhow::{bail, Result};
use chrono::{DateTime, Duration, Utc};
use futures_util::stream::{self, StreamExt};
use std::collections::BTreeMap;

/// An incomplete backup (no manifest) younger than this may be a push still running.
pub(crate) const INCOMPLETE_GRACE_HOURS: i64 = 24;
/// Deletions in flight at once.
const DELETE_CONCURRENCY: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// Keep the newest N restorable backups; 0 = no count policy.
    pub keep_last: u32,
    /// Keep what recovery to any time in the last D days needs; 0 = no age policy.
    pub keep_days: u32,
    /// Keep the newest N full backups with every incremental built on them; 0 = none.
    pub keep_full: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub id: String,
    pub keep: bool,
    pub why: String,
    /// Kept whatever the policy (permanent, keep-until, locked).
    pub pinned: bool,
    pub restorable: bool,
}

/// The policy's verdict on every complete and incomplete backup.
pub fn plan_backups(
    listing: &Listing,
    inv: &Inventory,
    policy: Policy,
    now: DateTime<Utc>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    // Newest first: the order both policies count in.
    let mut free: Vec<(&Manifest, bool)> = Vec::new();
    // Restorable means as recover means it: onto the current timeline. A
    // backup left on a timeline that was branched away from before it ended
    // cannot recover the cluster as it now is, so it does not count.
    let tli = inv.latest_timeline();
    for m in listing.complete.iter().rev() {
        let ok = crate::backup::restorable_on(listing, inv, m, tli);
        match listing.keeps.get(&m.id).and_then(|k| k.reason(now)) {
            Some(why) => out.push(Verdict {
                id: m.id.clone(),
                keep: true,
                why,
                pinned: true,
                restorable: ok,
            }),
            None => free.push((m, ok)),
        }
    }
    let cutoff = (policy.keep_days > 0).then(|| now - Duration::days(policy.keep_days as i64));
    let mut kept: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let restorable_free: Vec<&Manifest> =
        free.iter().filter(|(_, ok)| *ok).map(|(m, _)| *m).collect();
    for m in restorable_free.iter().take(policy.keep_last as usize) {
        kept.entry(&m.id)
            .or_default()
            .push(format!("one of the newest {}", policy.keep_last));
    }
    if policy.keep_full > 0 {
        let n = policy.keep_full;
        let fulls: Vec<&str> = restorable_free
            .iter()
            .filter(|m| !m.is_incremental())
            .take(n as usize)
            .map(|m| m.id.as_str())
            .collect();
        for m in &restorable_free {
            if fulls.contains(&m.id.as_str()) {
                kept.entry(&m.id)
                    .or_default()
                    .push(format!("one of the newest {n} full backups"));
            } else if m
                .chain
                .first()
                .is_some_and(|root| fulls.contains(&root.as_str()))
            {
                kept.entry(&m.id).or_default().push(format!(
                    "an increment of the kept full backup {}",
                    m.chain[0]
                ));
            }
        }
    }
    if let Some(cutoff) = cutoff {
        let d = policy.keep_days;
        for m in restorable_free.iter().filter(|m| m.stop_time >= cutoff) {
            kept.entry(&m.id)
                .or_default()
                .push(format!("ended within {d} days"));
        }
        if let Some(m) = restorable_free.iter().find(|m| m.stop_time < cutoff) {
            kept.entry(&m.id).or_default().push(format!(
                "the newest before the {d}-day window: recovery to its start needs it"
            ));
        }
    }
    let oldest_kept = restorable_free
        .iter()
        .filter(|m| kept.contains_key(m.id.as_str()))
        .map(|m| m.stop_time)
        .min();
    for (m, ok) in free {
        let (keep, why) = if let Some(reasons) = kept.get(m.id.as_str()) {
            (true, reasons.join("; "))
        } else if oldest_kept.is_none() {
            (
                true,
                "no restorable backup would remain under the policy: nothing is removed".into(),
            )
        } else if !ok && oldest_kept.is_some_and(|t| m.stop_time > t) {
            (
                true,
                format!(
                    "NOT RESTORABLE ({}), newer than the oldest kept backup: kept for inspection",
                    why_not(inv, m, tli)
                ),
            )
        } else if !ok {
            (
                false,
                format!(
                    "not restorable ({}) and older than the kept backups",
                    why_not(inv, m, tli)
                ),
            )
        } else {
            (false, outside(policy))
        };
        out.push(Verdict {
            id: m.id.clone(),
            keep,
            why,
            pinned: false,
            restorable: ok,
        });
    }
    for id in &listing.incomplete {
        let newest = listing.objects[id].iter().filter_map(|o| o.modified).max();
        let old = newest.is_some_and(|t| now - t > Duration::hours(INCOMPLETE_GRACE_HOURS));
        out.push(Verdict {
            id: id.clone(),
            keep: !old,
            why: if old {
                format!("incomplete (no manifest: a backup-push that died), last written over {INCOMPLETE_GRACE_HOURS} h ago")
            } else {
                format!("incomplete (no manifest), written within {INCOMPLETE_GRACE_HOURS} h: may be a backup-push still running")
            },
            pinned: false,
            restorable: false,
        });
    }
    keep_chains(listing, &mut out);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Every backup a kept incremental builds on is kept with it (for its files,
/// not its WAL: it counts as pinned, keeping only its own start-to-stop WAL).
fn keep_chains(listing: &Listing, verdicts: &mut [Verdict]) {
    let needed: Vec<(String, String)> = verdicts
        .iter()
        .filter(|v| v.keep)
        .filter_map(|v| listing.complete.iter().find(|m| m.id == v.id))
        .flat_map(|m| m.chain.iter().map(|a| (a.clone(), m.id.clone())))
        .collect();
    for (ancestor, by) in needed {
        if let Some(v) = verdicts.iter_mut().find(|v| v.id == ancestor && !v.keep) {
            v.keep = true;
            v.pinned = true;
            v.why = format!("kept backup {by} builds on it (incremental chain)");
        }
    }
}

/// Why `m` cannot recover onto timeline `tli`.
fn why_not(inv: &Inventory, m: &Manifest, tli: u32) -> String {
    if crate::backup::restorable(inv, m) {
        format!(
            "it is on timeline {} past the point where the current timeline {tli} branched off",
            m.timeline
        )
    } else {
        "its WAL is missing".into()
    }
}

fn outside(p: Policy) -> String {
    clauses(p, false)
}

/// The policy's clauses joined: what each keeps, or (`keep` false) what a
/// backup it does not keep is.
fn clauses(p: Policy, keep: bool) -> String {
    let all = [
        (
            p.keep_last,
            "the newest {} restorable backups",
            "older than the newest {}",
        ),
        (
            p.keep_full,
            "the newest {} full backups with their increments",
            "not of the newest {} full backups' chains",
        ),
        (
            p.keep_days,
            "what recovery to any time in the last {} days needs",
            "not needed to recover within the last {} days",
        ),
    ];
    all.iter()
        .filter(|c| c.0 > 0)
        .map(|(n, kept, not)| (if keep { kept } else { not }).replace("{}", &n.to_string()))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// The WAL to remove, given the backups kept.
#[derive(Debug, Default)]
pub struct WalPlan {
    pub remove: Vec<ObjectMeta>,
    /// Segment number from which all WAL is kept (the oldest kept non-permanent backup's start).
    pub keep_from: Option<u64>,
    /// Inclusive segment-number ranges kept for backups older than `keep_from`.
    pub ranges: Vec<(String, u64, u64)>,
    pub kept: usize,
}

/// `kept`: the kept backups with whether each is pinned and restorable. Only a
/// restorable, unpinned backup sets the boundary of continuous WAL; the others
/// keep their own start-to-stop range.
pub fn plan_wal(
    wal: &[ObjectMeta],
    kept: &[(&Manifest, bool, bool)],
    seg_size: u64,
) -> Result<WalPlan> {
    let mut keep_from: Option<u64> = None;
    let mut ranges = Vec::new();
    for (m, pinned, restorable) in kept {
        let first = m.start()?.segno(seg_size);
        let last = crate::wal::names::Lsn(m.stop()?.0.saturating_sub(1)).segno(seg_size);
        if *pinned || !restorable {
            ranges.push((m.id.clone(), first, last));
        } else {
            keep_from = Some(keep_from.map_or(first, |k| k.min(first)));
        }
    }
    let Some(from) = keep_from else {
        // Without a kept backup that needs continuous WAL there is no safe
        // boundary: expire nothing.
        return Ok(WalPlan {
            kept: wal.len(),
            ranges,
            ..Default::default()
        });
    };
    ranges.retain(|(_, _, last)| *last < from);
    let mut plan = WalPlan {
        keep_from: Some(from),
        ranges,
        ..Default::default()
    };
    // Stream pieces (wal-receive) of a segment stored whole serve no one; the
    // others go with their segment's number, on any timeline, as WAL does (an
    // abandoned timeline's open segment included).
    let whole: std::collections::BTreeSet<&str> = wal
        .iter()
        .filter_map(|o| o.key.strip_prefix("wal/"))
        .filter(|n| matches!(WalFile::parse(n), Ok(WalFile::Segment(_))))
        .collect();
    for o in wal {
        if let Some(p) = wal_stream::parse(&o.key) {
            let seg = p.seg.to_string();
            let n = p.seg.segno(seg_size)?;
            let kept_range = plan.ranges.iter().any(|(_, a, z)| (*a..=*z).contains(&n));
            if !whole.contains(seg.as_str()) && (n >= from || kept_range) {
                plan.kept += 1;
            } else {
                plan.remove.push(o.clone());
            }
            continue;
        }
        let name = o.key.trim_start_matches("wal/");
        let segno = match WalFile::parse(name) {
            Ok(WalFile::Segment(s))
            | Ok(WalFile::Partial(s))
            | Ok(WalFile::BackupHistory(s, _)) => s.segno(seg_size).ok(),
            // History files and anything unknown stay.
            _ => None,
        };
        let needed = match segno {
            None => true,
            Some(n) => n >= from || plan.ranges.iter().any(|(_, a, z)| (*a..=*z).contains(&n)),
        };
        if needed {
            plan.kept += 1;
        } else {
            plan.remove.push(o.clone());
        }
    }
    Ok(plan)
}

pub struct Options {
    pub policy: Policy,
    /// Logical dumps' own policy (`retention.dump_keep_*`).
    pub dumps: crate::retention::dumps::Policy,
    pub confirm: bool,
}

/// Outcome counts, for the summary and the exit status.
#[derive(Default)]
pub(crate) struct Tally {
    pub removed: usize,
    pub bytes: u64,
    pub locked: Vec<(String, Option<DateTime<Utc>>)>,
    pub failed: Vec<String>,
}

pub async fn run(store: &dyn Store, codec: &crate::codec::Codec, opts: Options) -> Result<bool> {
    let p = opts.policy;
    let backups = p.keep_last > 0 || p.keep_days > 0 || p.keep_full > 0;
    if !backups && !opts.dumps.any() {
        bail!("no retention policy: set retention.keep_last, retention.keep_full or retention.keep_days in the config, or give --keep-last N / --keep-full N / --keep-days D (logical dumps: retention.dump_keep_daily, _weekly, _monthly)");
    }
    let mut clean = true;
    if backups {
        clean &= run_backups(store, codec, p, opts.confirm).await?;
    } else {
        println!(
            "retention for {}: no backup policy, every backup kept",
            store.locate("")
        );
    }
    if opts.dumps.any() {
        clean &= crate::retention::dumps::run(store, opts.dumps, opts.confirm).await?;
    }
    Ok(clean)
}

async fn run_backups(
    store: &dyn Store,
    codec: &crate::codec::Codec,
    p: Policy,
    confirm: bool,
) -> Result<bool> {
    let now = Utc::now();
    let (listing, inv) = crate::backup::list_with_wal(store, codec).await?;
    let mut verdicts = plan_backups(&listing, &inv, p, now);

    // Object Lock: a backup whose manifest is still locked stays whole.
    let locking = store.object_lock().await?;
    if locking {
        for v in verdicts.iter_mut().filter(|v| !v.keep) {
            if listing.incomplete.contains(&v.id) {
                continue;
            }
            let key = crate::backup::manifest_key(&v.id);
            if let Some(until) = locked_until(store, &key, now).await? {
                v.keep = true;
                v.pinned = true;
                v.why = format!("under Object Lock until {} ({})", until.to_rfc3339(), v.why);
            }
        }
    }

    let by_id: BTreeMap<&str, &Manifest> = listing
        .complete
        .iter()
        .map(|m| (m.id.as_str(), m))
        .collect();
    let kept: Vec<(&Manifest, bool, bool)> = verdicts
        .iter()
        .filter(|v| v.keep)
        .filter_map(|v| {
            by_id
                .get(v.id.as_str())
                .map(|m| (*m, v.pinned, v.restorable))
        })
        .collect();
    let mut wal = inv.objects.clone();
    wal.extend(store.list(wal_stream::PREFIX).await?);
    let wal_plan = plan_wal(&wal, &kept, inv.seg_size)?;

    println!("retention for {}: {}", store.locate(""), describe(p));
    for v in &verdicts {
        print_verdict("backup", 17, &v.id, v.keep, &v.why);
    }
    match wal_plan.keep_from {
        Some(from) => {
            let first = crate::wal::names::SegmentName::from_segno(
                inv.latest_timeline(),
                from,
                inv.seg_size,
            );
            println!(
                "  WAL: all kept from segment {first} on (the start of the oldest kept backup)"
            );
            for (id, a, z) in &wal_plan.ranges {
                println!("  WAL: segments {a}..={z} kept for backup {id}");
            }
        }
        None => println!("  WAL: nothing expires (no kept backup gives a safe boundary)"),
    }
    let wal_bytes: u64 = wal_plan.remove.iter().map(|o| o.size).sum();
    println!(
        "  WAL: {} objects kept, {} to remove ({} MiB); history files are always kept",
        wal_plan.kept,
        wal_plan.remove.len(),
        wal_bytes >> 20
    );
    let gone: Vec<&Verdict> = verdicts.iter().filter(|v| !v.keep).collect();
    if !confirm {
        println!(
            "dry run: nothing removed ({} backups and {} WAL objects would be); run with --confirm to remove them",
            gone.len(),
            wal_plan.remove.len()
        );
        return Ok(true);
    }

    let mut tally = Tally::default();
    for v in gone {
        let mut objects = listing.objects.get(&v.id).cloned().unwrap_or_default();
        // The manifest first: a backup half removed is never listed as complete.
        objects.sort_by_key(|o| !o.key.ends_with("/manifest.json"));
        let (first, rest) = objects.split_at(objects.len().min(1));
        remove(store, first, locking, now, &mut tally).await;
        remove(store, rest, locking, now, &mut tally).await;
    }
    // The catalogue first forgets what is going: it may then miss an object a
    // failed removal left, never claim one that is gone.
    crate::wal::catalog::save_without(store, &inv, &wal_plan.remove).await;
    remove(store, &wal_plan.remove, locking, now, &mut tally).await;
    Ok(report(&tally, store, "delete"))
}

/// Prints what a removal did; false when an object could not be removed.
pub(crate) fn report(tally: &Tally, store: &dyn Store, what: &str) -> bool {
    println!(
        "removed {} objects ({} MiB)",
        tally.removed,
        tally.bytes >> 20
    );
    if !tally.locked.is_empty() {
        let latest = tally.locked.iter().filter_map(|(_, t)| *t).max();
        println!(
            "skipped {} objects still locked against deletion (Object Lock or immutability policy, until {}), e.g. {}; they go on a later run",
            tally.locked.len(),
            latest.map(|t| t.to_rfc3339()).unwrap_or_else(|| "unknown".into()),
            store.locate(&tally.locked[0].0)
        );
    }
    for f in &tally.failed {
        eprintln!("walvault {what}: could not remove {f}");
    }
    tally.failed.is_empty()
}

/// One line of a plan: `  <what> <id> keep|REMOVE  <why>`, the id padded to `width`.
pub fn print_verdict(what: &str, width: usize, id: &str, keep: bool, why: &str) {
    let verdict = if keep { "keep" } else { "REMOVE" };
    println!("  {what} {id:<width$} {verdict:<6}  {why}");
}

fn describe(p: Policy) -> String {
    format!("keep {}", clauses(p, true))
}

/// When `key` is under Object Lock retention at `now`, its end.
pub(crate) async fn locked_until(
    store: &dyn Store,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    Ok(store
        .head(key)
        .await?
        .and_then(|m| m.retain_until)
        .filter(|t| *t > now))
}

pub(crate) async fn remove(
    store: &dyn Store,
    objects: &[ObjectMeta],
    locking: bool,
    now: DateTime<Utc>,
    tally: &mut Tally,
) {
    let results: Vec<(ObjectMeta, Result<Option<DateTime<Utc>>>)> =
        stream::iter(objects.iter().cloned())
            .map(|o| async move {
                let r = async {
                    if locking {
                        if let Some(until) = locked_until(store, &o.key, now).await? {
                            return Ok(Some(until));
                        }
                    }
                    store.delete(&o.key).await.map(|_| None)
                }
                .await;
                (o, r)
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
    for (o, r) in results {
        match r {
            Ok(None) => {
                tally.removed += 1;
                tally.bytes += o.size;
            }
            Ok(Some(until)) => tally.locked.push((o.key, Some(until))),
            Err(e) => tally
                .failed
                .push(format!("{}: {e:#}", store.locate(&o.key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marks::Keep;

    const MB16: u64 = 16 << 20;

    fn meta(key: &str, modified: DateTime<Utc>) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 100,
            modified: Some(modified),
            retain_until: None,
            version: None,
        }
    }

    /// A backup whose WAL lies in segment `seg` on timeline 1, ending at `stop`.
    fn manifest(id: &str, seg: u64, stop: DateTime<Utc>) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "label": id, "system_identifier": "1", "pg_version_num": 150000,
            "timeline": 1, "start_lsn": format!("0/{:X}", seg * MB16 + 0x28),
            "stop_lsn": format!("0/{:X}", seg * MB16 + 0x138),
            "start_time": stop, "stop_time": stop, "wal_segment_size": MB16,
            "raw_bytes": 1, "stored_bytes": 1, "files": 1, "duration_seconds": 1.0,
            "parts": [], "tablespaces": [], "encrypted": false, "created_by": "test"
        }))
        .unwrap()
    }

    struct Repo {
        listing: Listing,
        inv: Inventory,
        wal: Vec<ObjectMeta>,
    }

    fn plan(r: &Repo, keep_last: u32, keep_days: u32, now: DateTime<Utc>) -> Vec<Verdict> {
        plan_backups(
            &r.listing,
            &r.inv,
            Policy {
                keep_last,
                keep_days,
                keep_full: 0,
            },
            now,
        )
    }

    /// Backups b1..b5 one day apart at segments 2, 4, 6, 8, 10; WAL 1..=11 present.
    fn repo(now: DateTime<Utc>, missing: &[u64]) -> Repo {
        let mut complete = Vec::new();
        let mut objects = BTreeMap::new();
        for (i, seg) in [2u64, 4, 6, 8, 10].iter().enumerate() {
            let id = format!("b{}", i + 1);
            let stop = now - Duration::days(5 - i as i64) + Duration::minutes(1);
            complete.push(manifest(&id, *seg, stop));
            objects.insert(
                id.clone(),
                vec![meta(&format!("backups/{id}/manifest.json"), stop)],
            );
        }
        let mut wal = Vec::new();
        let mut segments = crate::wal::segments::Segments::new(MB16);
        for n in (1..=11u64).filter(|n| !missing.contains(n)) {
            let s = crate::wal::names::SegmentName::from_segno(1, n, MB16);
            let o = meta(&format!("wal/{s}"), now);
            segments.insert(s, o.size, o.modified);
            wal.push(o);
        }
        wal.push(meta("wal/00000002.history", now));
        wal.push(meta("wal/000000010000000000000004.00000028.backup", now));
        Repo {
            listing: Listing {
                complete,
                incomplete: vec![],
                damaged: vec![],
                keeps: BTreeMap::new(),
                objects,
            },
            inv: {
                let mut i = Inventory::empty(MB16);
                i.segments = segments;
                i.objects = wal.clone();
                i
            },
            wal,
        }
    }

    /// b1 and b4 full; b2, b3 increments of b1 (b3 on b2), b5 of b4.
    fn chains(r: &mut Repo) {
        let c = &mut r.listing.complete;
        c[1].parent = Some("b1".into());
        c[1].chain = vec!["b1".into()];
        c[2].parent = Some("b2".into());
        c[2].chain = vec!["b1".into(), "b2".into()];
        c[4].parent = Some("b4".into());
        c[4].chain = vec!["b4".into()];
    }

    #[test]
    fn chains_are_kept_whole_and_counted_by_full() {
        let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
        let mut r = repo(now, &[]);
        chains(&mut r);
        // The newest backup alone is an increment: its full backup stays with it,
        // as a pinned backup (only its own WAL).
        let v = plan(&r, 1, 0, now);
        assert_eq!(kept_ids(&v), vec!["b4", "b5"]);
        let b4 = v.iter().find(|x| x.id == "b4").unwrap();
        assert!(
            b4.pinned && b4.why.contains("kept backup b5 builds on it"),
            "{b4:?}"
        );
        // b3 kept: b1 and b2 too.
        let v = plan(&r, 3, 0, now);
        assert_eq!(kept_ids(&v), vec!["b1", "b2", "b3", "b4", "b5"]);
        // keep_full 1: the newest full and its increment; 2: both chains.
        let policy = |n| Policy {
            keep_last: 0,
            keep_days: 0,
            keep_full: n,
        };
        let v = plan_backups(&r.listing, &r.inv, policy(1), now);
        assert_eq!(kept_ids(&v), vec!["b4", "b5"]);
        assert!(
            v[4].why.contains("an increment of the kept full backup b4"),
            "{:?}",
            v[4]
        );
        let v = plan_backups(&r.listing, &r.inv, policy(2), now);
        assert_eq!(kept_ids(&v), vec!["b1", "b2", "b3", "b4", "b5"]);
        // A broken chain (b2 gone) makes b3 unrestorable.
        r.listing.complete.remove(1);
        let v = plan_backups(&r.listing, &r.inv, policy(2), now);
        let b3 = v.iter().find(|x| x.id == "b3").unwrap();
        assert!(!b3.restorable, "{b3:?}");
    }

    fn kept_ids(v: &[Verdict]) -> Vec<&str> {
        v.iter().filter(|v| v.keep).map(|v| v.id.as_str()).collect()
    }

    fn wal_after(r: &Repo, v: &[Verdict]) -> WalPlan {
        let kept: Vec<(&Manifest, bool, bool)> = r
            .listing
            .complete
            .iter()
            .filter_map(|m| {
                v.iter()
                    .find(|x| x.id == m.id && x.keep)
                    .map(|x| (m, x.pinned, x.restorable))
            })
            .collect();
        plan_wal(&r.wal, &kept, MB16).unwrap()
    }

    fn names(p: &WalPlan) -> Vec<String> {
        p.remove
            .iter()
            .map(|o| o.key.trim_start_matches("wal/").to_string())
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_and_their_wal() {
        let now = Utc::now();
        let r = repo(now, &[]);
        let v = plan(&r, 2, 0, now);
        assert_eq!(kept_ids(&v), vec!["b4", "b5"]);
        let w = wal_after(&r, &v);
        assert_eq!(w.keep_from, Some(8));
        // Segments 1..=7 and the .backup file of segment 4 go; the history file stays.
        assert_eq!(w.remove.len(), 8, "{:?}", names(&w));
        assert!(names(&w).contains(&"000000010000000000000004.00000028.backup".to_string()));
        assert!(!names(&w).iter().any(|n| n.contains("history")));
    }

    #[test]
    fn stream_pieces_go_with_their_segment_or_once_it_is_whole() {
        let now = Utc::now();
        let mut r = repo(now, &[]);
        let piece = |tli: u32, n: u64| {
            let seg = crate::wal::names::SegmentName::from_segno(tli, n, MB16);
            meta(&wal_stream::key(&seg, 0, 8192), now)
        };
        // Before the boundary (8) on an abandoned timeline; at 11, stored
        // whole; at 12, the open segment.
        r.wal.extend([piece(2, 3), piece(1, 11), piece(1, 12)]);
        let v = plan(&r, 2, 0, now);
        let w = wal_after(&r, &v);
        assert_eq!(w.keep_from, Some(8));
        let gone: Vec<&str> = w
            .remove
            .iter()
            .filter(|o| o.key.starts_with("stream/"))
            .map(|o| o.key.as_str())
            .collect();
        assert_eq!(
            gone,
            [piece(2, 3).key.as_str(), piece(1, 11).key.as_str()],
            "{gone:?}"
        );
    }

    #[test]
    fn permanent_backups_keep_their_own_wal_range() {
        let now = Utc::now();
        let mut r = repo(now, &[]);
        r.listing.keeps.insert(
            "b1".into(),
            Keep {
                permanent: true,
                keep_until: None,
                note: None,
                marked_at: now,
                marked_by: "t".into(),
            },
        );
        let v = plan(&r, 2, 0, now);
        assert_eq!(kept_ids(&v), vec!["b1", "b4", "b5"]);
        let w = wal_after(&r, &v);
        assert_eq!(w.ranges, vec![("b1".to_string(), 2, 2)]);
        let gone = names(&w);
        assert!(!gone.contains(&"000000010000000000000002".to_string()));
        assert!(gone.contains(&"000000010000000000000003".to_string()));
        assert!(gone.contains(&"000000010000000000000001".to_string()));
    }

    #[test]
    fn keep_days_keeps_the_backup_before_the_window() {
        let now = Utc::now();
        let r = repo(now, &[]);
        // Stops at 5, 4, 3, 2, 1 days (less a minute) ago: 2 days keeps b4, b5 and b3.
        let v = plan(&r, 0, 2, now);
        assert_eq!(kept_ids(&v), vec!["b3", "b4", "b5"]);
        let both = plan(&r, 4, 1, now);
        assert_eq!(kept_ids(&both), vec!["b2", "b3", "b4", "b5"]);
    }

    #[test]
    fn unrestorable_backups_do_not_count_and_nothing_goes_without_a_survivor() {
        let now = Utc::now();
        // b5's WAL (segment 10) is missing: keep 2 keeps b3 and b4, and b5 for inspection.
        let r = repo(now, &[10]);
        let v = plan(&r, 2, 0, now);
        assert_eq!(kept_ids(&v), vec!["b3", "b4", "b5"]);
        assert!(v
            .iter()
            .find(|x| x.id == "b5")
            .unwrap()
            .why
            .contains("NOT RESTORABLE"));
        // No restorable backup at all: nothing is removed, no WAL expires.
        let r = repo(now, &[2, 4, 6, 8, 10]);
        let v = plan(&r, 1, 0, now);
        assert_eq!(kept_ids(&v).len(), 5);
        assert!(wal_after(&r, &v).remove.is_empty());
    }

    #[test]
    fn backups_past_a_timeline_branch_do_not_count() {
        let now = Utc::now();
        // A PITR branched timeline 2 off timeline 1 in segment 5: after b2
        // (segment 4), before b3..b5, which cannot reach timeline 2.
        let mut r = repo(now, &[]);
        r.inv.histories.insert(
            2,
            crate::wal::history::parse("1\t0/5000100\tbefore the bad delete\n").unwrap(),
        );
        for n in 5..=7u64 {
            let s = crate::wal::names::SegmentName::from_segno(2, n, MB16);
            let o = meta(&format!("wal/{s}"), now);
            r.inv.segments.insert(s, o.size, o.modified);
            r.wal.push(o);
        }
        let v = plan(&r, 1, 0, now);
        let b2 = v.iter().find(|x| x.id == "b2").unwrap();
        assert!(b2.keep && b2.restorable, "{b2:?}");
        assert!(!v.iter().find(|x| x.id == "b1").unwrap().keep);
        for id in ["b3", "b4", "b5"] {
            let x = v.iter().find(|x| x.id == id).unwrap();
            assert!(
                !x.restorable && x.why.contains("timeline 1 past the point"),
                "{x:?}"
            );
        }
        // The WAL b2 needs to reach timeline 2 stays.
        let w = wal_after(&r, &v);
        assert_eq!(w.keep_from, Some(4));
        assert!(!names(&w).iter().any(|n| n.starts_with("00000002")));
    }

    #[test]
    fn incomplete_backups_get_a_grace_period() {
        let now = Utc::now();
        let mut r = repo(now, &[]);
        for (id, age) in [("x-old", 30), ("x-new", 1)] {
            r.listing.incomplete.push(id.into());
            r.listing.objects.insert(
                id.into(),
                vec![meta(
                    &format!("backups/{id}/part-0001.tar"),
                    now - Duration::hours(age),
                )],
            );
        }
        let v = plan(&r, 5, 0, now);
        assert!(!v.iter().find(|x| x.id == "x-old").unwrap().keep);
        assert!(v.iter().find(|x| x.id == "x-new").unwrap().keep);
    }
}
