//! The segments a repository holds, as contiguous runs per timeline: a year of
//! WAL at a segment a minute is a handful of runs, not half a million entries,
//! so every question about it costs the number of runs, not of segments.

use super::names::SegmentName;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Segments `first..=last` of timeline `tli`, all present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegRun {
    pub tli: u32,
    pub first: u64,
    pub last: u64,
    /// Stored bytes of the run's segments.
    pub bytes: u64,
    /// The earliest time one of them was stored.
    pub min_stored: Option<DateTime<Utc>>,
    /// When the run's last segment was stored.
    pub last_stored: Option<DateTime<Utc>>,
}

impl SegRun {
    pub fn count(&self) -> u64 {
        self.last - self.first + 1
    }
}

#[derive(Clone, Debug, Default)]
pub struct Segments {
    seg_size: u64,
    /// By (timeline, first segment number); runs never overlap or touch.
    runs: BTreeMap<(u32, u64), SegRun>,
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl Segments {
    pub fn new(seg_size: u64) -> Segments {
        Segments {
            seg_size,
            runs: BTreeMap::new(),
        }
    }

    /// Runs as a catalogue recorded them; overlapping ones are merged.
    pub fn from_runs(seg_size: u64, runs: impl IntoIterator<Item = SegRun>) -> Segments {
        let mut s = Segments::new(seg_size);
        for r in runs {
            s.add_run(r);
        }
        s
    }

    pub fn runs(&self) -> impl DoubleEndedIterator<Item = &SegRun> {
        self.runs.values()
    }

    /// The run of timeline `tli` holding segment number `segno`.
    pub fn run_at(&self, tli: u32, segno: u64) -> Option<&SegRun> {
        self.runs
            .range(..=(tli, segno))
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.tli == tli && r.last >= segno)
    }

    pub fn contains_segno(&self, tli: u32, segno: u64) -> bool {
        self.run_at(tli, segno).is_some()
    }

    pub fn contains(&self, s: &SegmentName) -> bool {
        s.segno(self.seg_size)
            .is_ok_and(|n| self.contains_segno(s.tli, n))
    }

    /// Adds one listed segment; false when it was already there. Names that
    /// are impossible at this segment size are not segments of this cluster.
    pub fn insert(&mut self, s: SegmentName, size: u64, modified: Option<DateTime<Utc>>) -> bool {
        let Ok(n) = s.segno(self.seg_size) else {
            return false;
        };
        if self.contains_segno(s.tli, n) {
            return false;
        }
        self.add_run(SegRun {
            tli: s.tli,
            first: n,
            last: n,
            bytes: size,
            min_stored: modified,
            last_stored: modified,
        });
        true
    }

    /// Adds a run, merging it with the runs it overlaps or touches.
    fn add_run(&mut self, mut r: SegRun) {
        // A run that starts before r and reaches it.
        if let Some((&k, prev)) = self.runs.range(..=(r.tli, r.first)).next_back() {
            if prev.tli == r.tli && prev.last + 1 >= r.first {
                let prev = self.runs.remove(&k).expect("just seen");
                r = join(prev, r);
            }
        }
        // Runs that start inside r or right after it.
        while let Some((&k, next)) = self.runs.range((r.tli, r.first)..).next() {
            if next.tli != r.tli || next.first > r.last + 1 {
                break;
            }
            let next = self.runs.remove(&k).expect("just seen");
            r = join(r, next);
        }
        self.runs.insert((r.tli, r.first), r);
    }

    /// How many segments there are.
    pub fn len(&self) -> u64 {
        self.runs.values().map(SegRun::count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.runs.values().map(|r| r.bytes).sum()
    }

    /// Timelines with segments, ascending.
    pub fn timelines(&self) -> Vec<u32> {
        let mut t: Vec<u32> = self.runs.values().map(|r| r.tli).collect();
        t.dedup();
        t
    }

    /// The segment furthest along (highest number; on a tie the newest
    /// timeline) and when it was stored.
    pub fn newest(&self) -> Option<(SegmentName, Option<DateTime<Utc>>)> {
        self.runs.values().max_by_key(|r| (r.last, r.tli)).map(|r| {
            (
                SegmentName::from_segno(r.tli, r.last, self.seg_size),
                r.last_stored,
            )
        })
    }

    /// When segment `segno` of `tli` was stored: exact for the last of a run
    /// (where a contiguous run of WAL ends); inside a run, the run's end, an
    /// upper bound since a timeline's segments are archived in order.
    pub fn stored_at(&self, tli: u32, segno: u64) -> Option<DateTime<Utc>> {
        self.run_at(tli, segno).and_then(|r| r.last_stored)
    }

    /// The earliest store time of any segment numbered above `segno`.
    pub fn earliest_stored_after(&self, segno: u64) -> Option<DateTime<Utc>> {
        self.runs
            .values()
            .filter(|r| r.last > segno)
            .fold(None, |acc, r| earliest(acc, r.min_stored))
    }
}

fn join(a: SegRun, b: SegRun) -> SegRun {
    let (lo, hi) = if a.first <= b.first { (a, b) } else { (b, a) };
    let overlap = (lo.last + 1).saturating_sub(hi.first).min(hi.count());
    // An overlap is counted once, at the later run's average size.
    let hi_bytes = hi.bytes - hi.bytes / hi.count() * overlap;
    let last_stored = if hi.last >= lo.last {
        hi.last_stored
    } else {
        lo.last_stored
    };
    SegRun {
        tli: lo.tli,
        first: lo.first,
        last: lo.last.max(hi.last),
        bytes: lo.bytes + hi_bytes,
        min_stored: earliest(lo.min_stored, hi.min_stored),
        last_stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn seg(tli: u32, n: u64) -> SegmentName {
        SegmentName::from_segno(tli, n, MB16)
    }

    fn at(minute: i64) -> Option<DateTime<Utc>> {
        Some(DateTime::<Utc>::from_timestamp(1_800_000_000 + minute * 60, 0).unwrap())
    }

    #[test]
    fn single_segments_merge_into_runs_in_any_order() {
        let mut s = Segments::new(MB16);
        for n in [5u64, 3, 4, 9, 7, 8] {
            assert!(s.insert(seg(1, n), 10, at(n as i64)));
        }
        assert!(!s.insert(seg(1, 4), 10, at(99)), "already there");
        let runs: Vec<(u64, u64)> = s.runs().map(|r| (r.first, r.last)).collect();
        assert_eq!(runs, vec![(3, 5), (7, 9)]);
        assert_eq!(s.len(), 6);
        assert_eq!(s.bytes(), 60);
        assert!(s.contains(&seg(1, 8)) && !s.contains(&seg(1, 6)) && !s.contains(&seg(2, 8)));
        // Filling the hole joins the two runs.
        s.insert(seg(1, 6), 10, at(6));
        let r: Vec<&SegRun> = s.runs().collect();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].first, r[0].last, r[0].bytes), (3, 9, 70));
        assert_eq!(r[0].min_stored, at(3));
        assert_eq!(r[0].last_stored, at(9));
        assert_eq!(s.newest(), Some((seg(1, 9), at(9))));
    }

    #[test]
    fn timelines_stay_apart() {
        let mut s = Segments::new(MB16);
        for n in 1..=10u64 {
            s.insert(seg(1, n), 4, at(n as i64));
        }
        for n in 6..=12u64 {
            s.insert(seg(2, n), 4, at(20 + n as i64));
        }
        assert_eq!(s.timelines(), vec![1, 2]);
        assert_eq!(s.newest().unwrap().0, seg(2, 12));
        assert_eq!(s.earliest_stored_after(10), at(26));
        assert_eq!(s.len(), 10 + 7);
        assert_eq!(s.bytes(), 68);
        // Runs read back from a catalogue merge like single inserts.
        let again = Segments::from_runs(MB16, s.runs().cloned().rev());
        assert_eq!(
            again.runs().collect::<Vec<_>>(),
            s.runs().collect::<Vec<_>>()
        );
    }
}
