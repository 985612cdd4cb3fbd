//! What WAL the repository holds: segments by name, timeline histories, and
//! how far WAL runs without a gap along a timeline's ancestry.

use super::history::{self, HistoryEntry};
use super::names::{Lsn, SegmentName, WalFile};
use crate::codec::Codec;
use crate::store::{ObjectMeta, Store};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

pub struct Inventory {
    pub seg_size: u64,
    pub segments: BTreeMap<SegmentName, ObjectMeta>,
    /// Every object under `wal/` as listed (segments, histories, .partial, .backup).
    pub objects: Vec<ObjectMeta>,
    /// Timeline → its ancestry (parent timelines with switch points).
    pub histories: BTreeMap<u32, Vec<HistoryEntry>>,
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
    pub async fn load(store: &dyn Store, codec: &Codec, seg_size: u64) -> Result<Inventory> {
        let mut segments = BTreeMap::new();
        let mut history_tlis = Vec::new();
        let objects = store.list("wal/").await?;
        for meta in &objects {
            let name = meta.key.trim_start_matches("wal/");
            match WalFile::parse(name) {
                Ok(WalFile::Segment(s)) => {
                    segments.insert(s, meta.clone());
                }
                Ok(WalFile::History(t)) => history_tlis.push(t),
                _ => {}
            }
        }
        let mut histories = BTreeMap::new();
        for tli in history_tlis {
            let key = super::key(&format!("{tli:08X}.history"));
            let text = crate::backup::read_text(store, codec, &key)
                .await?
                .with_context(|| format!("{} vanished", store.locate(&key)))?;
            histories.insert(
                tli,
                history::parse(&text).with_context(|| store.locate(&key))?,
            );
        }
        Ok(Inventory {
            seg_size,
            segments,
            objects,
            histories,
        })
    }

    /// The newest timeline the repository knows.
    pub fn latest_timeline(&self) -> u32 {
        let from_segs = self.segments.keys().map(|s| s.tli).max().unwrap_or(1);
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

    /// Segments from `start` (a segment number) along `tli`'s history.
    pub fn run_from(&self, tli: u32, start: u64) -> Run {
        let mut segno = start;
        let mut last = None;
        loop {
            let name = SegmentName::from_segno(self.timeline_of(tli, segno), segno, self.seg_size);
            if !self.segments.contains_key(&name) {
                let later = self.segments.keys().any(|s| {
                    s.segno(self.seg_size).is_ok_and(|n| n > segno)
                        && self.timeline_of(tli, s.segno(self.seg_size).unwrap_or(0)) == s.tli
                });
                return Run {
                    end_lsn: Lsn(segno * self.seg_size),
                    last_archived: last
                        .and_then(|l| self.segments.get(&l).and_then(|m| m.modified)),
                    last,
                    gap: later.then_some(name),
                };
            }
            last = Some(name);
            segno += 1;
        }
    }

    /// Whether every segment from `start` to `stop` (LSNs) on `tli` is present;
    /// the first missing one otherwise.
    pub fn missing_between(&self, tli: u32, start: Lsn, stop: Lsn) -> Option<SegmentName> {
        self.needed_between(tli, start, stop)
            .find(|s| !self.segments.contains_key(s))
    }

    /// The segments replay from `start` to `stop` (LSNs) on `tli`'s history reads.
    pub fn needed_between(
        &self,
        tli: u32,
        start: Lsn,
        stop: Lsn,
    ) -> impl Iterator<Item = SegmentName> + '_ {
        let last = Lsn(stop.0.saturating_sub(1)).segno(self.seg_size);
        (start.segno(self.seg_size)..=last)
            .map(move |n| SegmentName::from_segno(self.timeline_of(tli, n), n, self.seg_size))
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
                (
                    s,
                    ObjectMeta {
                        key: format!("wal/{n}"),
                        size: 1,
                        modified: None,
                        retain_until: None,
                        version: None,
                    },
                )
            })
            .collect();
        let histories = hist
            .iter()
            .map(|(t, text)| (*t, history::parse(text).unwrap()))
            .collect();
        Inventory {
            seg_size: MB16,
            segments,
            objects: Vec::new(),
            histories,
        }
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
        assert!(i.reaches(2, 1, Lsn(0x3000000)));
        assert!(!i.reaches(2, 1, Lsn(0x5000000)));
    }
}
