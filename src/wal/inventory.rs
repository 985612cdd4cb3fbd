//! What WAL the repository holds: segments as runs, timeline histories, and
//! how far WAL runs without a gap along a timeline's ancestry.

use super::history::{self, HistoryEntry};
use super::names::{Lsn, SegmentName, WalFile};
use super::segments::Segments;
use crate::codec::Codec;
use crate::store::{ObjectMeta, Store};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

pub struct Inventory {
    pub seg_size: u64,
    pub segments: Segments,
    /// Every object under `wal/` as listed, in key order: only after a full
    /// listing ([`Inventory::load`]); empty when read from the catalogue.
    pub objects: Vec<ObjectMeta>,
    /// The objects under `wal/` that are not segments (histories, .partial,
    /// .backup), in key order.
    pub others: Vec<ObjectMeta>,
    /// Timeline → its ancestry (parent timelines with switch points).
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
    /// The text of each history file, as read (kept by the catalogue).
    pub history_texts: BTreeMap<u32, String>,
    /// When the full listing behind `objects` started (None from the catalogue).
    pub listed_at: Option<DateTime<Utc>>,
}

/// How far WAL runs from a start point.
#[derive(Debug, Clone)]
pub struct Run {
    /// The last segment present without a gap.
    pub last: Option<SegmentName>,
    /// Where replay would stop: the end of `last`.
    pub end_lsn: Lsn,
    /// When `last` was stored (an upper bound of the commits it holds).
    pub last_archived: Option<DateTime<Utc>>,
    /// The first missing segment when later segments exist: a gap, not the live end.
    pub gap: Option<SegmentName>,
}

impl Inventory {
    pub fn empty(seg_size: u64) -> Inventory {
        Inventory {
            seg_size,
            segments: Segments::new(seg_size),
            objects: Vec::new(),
            others: Vec::new(),
            histories: BTreeMap::new(),
            history_texts: BTreeMap::new(),
            listed_at: None,
        }
    }

    /// Every object under `wal/`, listed in full: the truth recover, retention
    /// and the verifiers act on. It also refreshes the catalogue that `status`
    /// and `backup-list` start from.
    pub async fn load(store: &dyn Store, codec: &Codec, seg_size: u64) -> Result<Inventory> {
        let started = Utc::now();
        let objects = store.list("wal/").await?;
        let mut inv = Inventory::empty(seg_size);
        for meta in &objects {
            inv.add(meta);
        }
        inv.objects = objects;
        inv.listed_at = Some(started);
        inv.read_histories(store, codec).await?;
        let through = inv.objects.last().map(|o| o.key.as_str());
        super::catalog::save(store, &inv, through, started).await;
        Ok(inv)
    }

    /// Adds one listed object; false when it was known already.
    pub fn add(&mut self, meta: &ObjectMeta) -> bool {
        let name = meta.key.trim_start_matches("wal/");
        if let Ok(WalFile::Segment(s)) = WalFile::parse(name) {
            return self.segments.insert(s, meta.size, meta.modified);
        }
        match self.others.binary_search_by(|o| o.key.cmp(&meta.key)) {
            Ok(_) => false,
            Err(i) => {
                self.others.insert(i, meta.clone());
                true
            }
        }
    }

    /// Reads the history files not read yet; true when there were any.
    pub async fn read_histories(&mut self, store: &dyn Store, codec: &Codec) -> Result<bool> {
        let tlis: Vec<u32> = self
            .others
            .iter()
            .filter_map(|o| match WalFile::parse(o.key.trim_start_matches("wal/")) {
                Ok(WalFile::History(t)) if !self.histories.contains_key(&t) => Some(t),
                _ => None,
            })
            .collect();
        for &tli in &tlis {
            let key = super::key(&format!("{tli:08X}.history"));
            let text = codec
                .read_text(store, &key)
                .await?
                .with_context(|| format!("{} vanished", store.locate(&key)))?;
            self.add_history(tli, text)
                .with_context(|| store.locate(&key))?;
        }
        Ok(!tlis.is_empty())
    }

    pub fn add_history(&mut self, tli: u32, text: String) -> Result<()> {
        self.histories.insert(tli, history::parse(&text)?);
        self.history_texts.insert(tli, text);
        Ok(())
    }

    /// A listed object by key (full listings only).
    pub fn object(&self, key: &str) -> Option<&ObjectMeta> {
        self.objects
            .binary_search_by(|o| o.key.as_str().cmp(key))
            .ok()
            .map(|i| &self.objects[i])
    }

    /// What WAL stores in all.
    pub fn bytes(&self) -> u64 {
        self.segments.bytes() + self.others.iter().map(|o| o.size).sum::<u64>()
    }

    /// The newest timeline the repository knows.
    pub fn latest_timeline(&self) -> u32 {
        let from_segs = self.segments.timelines().last().copied().unwrap_or(1);
        let from_hist = self.histories.keys().copied().max().unwrap_or(1);
        from_segs.max(from_hist)
    }

    /// Whether WAL written on timeline `from` up to `lsn` is part of `tli`'s history.
    pub fn reaches(&self, tli: u32, from: u32, lsn: Lsn) -> bool {
        if from == tli {
            return true;
        }
        match self.histories.get(&tli) {
            Some(h) => h
                .iter()
                .any(|e| e.parent_tli == from && lsn <= e.switch_lsn),
            None => false,
        }
    }

    /// The timeline whose copy of segment `segno` lies on `tli`'s history: the
    /// segment holding a switch point belongs to the child timeline.
    pub fn timeline_of(&self, tli: u32, segno: u64) -> u32 {
        if let Some(h) = self.histories.get(&tli) {
            for e in h {
                if segno < e.switch_lsn.segno(self.seg_size) {
                    return e.parent_tli;
                }
            }
        }
        tli
    }

    /// The segment numbers `[from, to)` for which `tli`'s history reads
    /// timeline `t`'s copy (as [`Inventory::timeline_of`] decides).
    fn span_of(&self, tli: u32, t: u32) -> Option<(u64, u64)> {
        let mut lo = 0;
        if let Some(h) = self.histories.get(&tli) {
            for e in h {
                let switch = e.switch_lsn.segno(self.seg_size);
                if e.parent_tli == t {
                    return Some((lo, switch));
                }
                lo = lo.max(switch);
            }
        }
        (t == tli).then_some((lo, u64::MAX))
    }

    fn name(&self, tli: u32, segno: u64) -> SegmentName {
        SegmentName::from_segno(self.timeline_of(tli, segno), segno, self.seg_size)
    }

    /// The segment numbers of `tli`'s history present from `segno` on without
    /// a break: the end of that stretch (exclusive), `segno` itself when absent.
    fn present_to(&self, tli: u32, segno: u64) -> u64 {
        let mut n = segno;
        loop {
            let t = self.timeline_of(tli, n);
            let Some(r) = self.segments.run_at(t, n) else {
                return n;
            };
            let (_, hi) = self.span_of(tli, t).unwrap_or((0, u64::MAX));
            n = r.last.min(hi.saturating_sub(1)) + 1;
        }
    }

    /// The highest segment number with a copy on `tli`'s history.
    pub fn last_on(&self, tli: u32) -> Option<u64> {
        self.segments
            .runs()
            .filter_map(|r| {
                let (lo, hi) = self.span_of(tli, r.tli)?;
                (r.last >= lo && r.first < hi).then(|| r.last.min(hi - 1))
            })
            .max()
    }

    /// Segments from `start` (a segment number) along `tli`'s history.
    pub fn run_from(&self, tli: u32, start: u64) -> Run {
        let end = self.present_to(tli, start);
        let last = (end > start).then(|| self.name(tli, end - 1));
        Run {
            end_lsn: Lsn(end * self.seg_size),
            last_archived: last.and_then(|l| self.segments.stored_at(l.tli, end - 1)),
            last,
            gap: self
                .last_on(tli)
                .is_some_and(|z| z > end)
                .then(|| self.name(tli, end)),
        }
    }

    /// The missing stretches of segment numbers from `first` to `last`
    /// (inclusive) along `tli`'s history.
    pub fn missing(&self, tli: u32, first: u64, last: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut n = first;
        while n <= last {
            let present = self.present_to(tli, n);
            if present > n {
                n = present;
                continue;
            }
            // Absent from n up to the next copy on n's timeline or the end of
            // the span that timeline has on tli's history.
            let t = self.timeline_of(tli, n);
            let (_, hi) = self.span_of(tli, t).unwrap_or((0, u64::MAX));
            let next = self
                .segments
                .runs()
                .filter(|r| r.tli == t && r.first > n)
                .map(|r| r.first)
                .min()
                .unwrap_or(u64::MAX);
            let z = next.min(hi).saturating_sub(1).min(last);
            match out.last_mut() {
                Some((_, e)) if *e + 1 == n => *e = z,
                _ => out.push((n, z)),
            }
            n = z + 1;
        }
        out
    }

    /// Whether every segment from `start` to `stop` (LSNs) on `tli` is present;
    /// the first missing one otherwise.
    pub fn missing_between(&self, tli: u32, start: Lsn, stop: Lsn) -> Option<SegmentName> {
        let last = Lsn(stop.0.saturating_sub(1)).segno(self.seg_size);
        self.missing(tli, start.segno(self.seg_size), last)
            .first()
            .map(|(a, _)| self.name(tli, *a))
    }

    /// The segments replay from `start` to `stop` (LSNs) on `tli`'s history reads.
    pub fn needed_between(
        &self,
        tli: u32,
        start: Lsn,
        stop: Lsn,
    ) -> impl Iterator<Item = SegmentName> + '_ {
        let last = Lsn(stop.0.saturating_sub(1)).segno(self.seg_size);
        (start.segno(self.seg_size)..=last).map(move |n| self.name(tli, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn inv(names: &[&str], hist: &[(u32, &str)]) -> Inventory {
        let segments = names
            .iter()
            .map(|n| {
                let WalFile::Segment(s) = WalFile::parse(n).unwrap() else {
                    panic!()
                };
                s
            })
            .collect::<Vec<_>>();
        let mut i = Inventory::empty(MB16);
        for s in segments {
            i.segments.insert(s, 1, None);
        }
        for (t, text) in hist {
            i.add_history(*t, text.to_string()).unwrap();
        }
        i
    }

    #[test]
    fn runs_and_gaps_on_one_timeline() {
        let i = inv(
            &[
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000005",
            ],
            &[],
        );
        let r = i.run_from(1, 2);
        assert_eq!(r.last.unwrap().to_string(), "000000010000000000000003");
        assert_eq!(r.end_lsn, Lsn(4 * MB16));
        assert_eq!(r.gap.unwrap().to_string(), "000000010000000000000004");
        let r = i.run_from(1, 5);
        assert!(r.gap.is_none());
        assert_eq!(
            i.missing_between(1, Lsn(2 * MB16 + 40), Lsn(3 * MB16 + 100)),
            None
        );
        assert_eq!(
            i.missing_between(1, Lsn(2 * MB16), Lsn(4 * MB16 + 1))
                .unwrap()
                .to_string(),
            "000000010000000000000004"
        );
        // A stop exactly at a segment boundary does not need the next segment.
        assert_eq!(i.missing_between(1, Lsn(2 * MB16), Lsn(4 * MB16)), None);
    }

    #[test]
    fn follows_timeline_switches() {
        // Timeline 2 branched from 1 inside segment 4.
        let i = inv(
            &[
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000005",
                "000000020000000000000004",
                "000000020000000000000005",
            ],
            &[(2, "1\t0/4000100\tno recovery target specified\n")],
        );
        assert_eq!(i.latest_timeline(), 2);
        assert_eq!(i.timeline_of(2, 3), 1);
        assert_eq!(i.timeline_of(2, 4), 2);
        let r = i.run_from(2, 3);
        assert_eq!(r.last.unwrap().to_string(), "000000020000000000000005");
        assert!(r.gap.is_none());
        assert_eq!(i.missing(2, 1, 7), vec![(1, 2), (6, 7)]);
        assert_eq!(i.missing(1, 3, 5), vec![]);
        assert_eq!(i.last_on(2), Some(5));
        // Timeline 1's segment 5 is not on timeline 2's history.
        let mut j = inv(
            &["000000010000000000000003", "000000010000000000000005"],
            &[(2, "1\t0/4000100\tx\n")],
        );
        assert_eq!(j.last_on(2), Some(3));
        assert!(j.run_from(2, 3).gap.is_none());
        j.segments.insert(
            WalFile::parse("000000020000000000000006")
                .unwrap()
                .segment()
                .unwrap(),
            1,
            None,
        );
        assert_eq!(
            j.run_from(2, 3).gap.unwrap().to_string(),
            "000000020000000000000004"
        );
        assert!(i.reaches(2, 1, Lsn(0x3000000)));
        assert!(!i.reaches(2, 1, Lsn(0x5000000)));
    }
}
