//! Timeline switches as the repository records them (a failover, a promoted
//! recovery): where each timeline branched, how its parent's last WAL before
//! the switch was archived, and what the parent wrote past it (an old primary
//! that kept writing after its standby was promoted).

use super::inventory::Inventory;
use super::names::SegmentName;
use serde::Serialize;

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Switch {
    pub timeline: u32,
    pub parent: u32,
    pub at_lsn: String,
    /// PostgreSQL's reason line in the history file.
    pub reason: String,
    /// The parent's segment holding the switch point.
    pub parent_segment: String,
    /// How that segment is stored: "partial" (the promoted standby's copy, as
    /// PostgreSQL archives it), "whole" (the old primary's: it filled the
    /// segment, so it wrote past the switch), "whole and partial", or
    /// "absent". Recovery along the new timeline reads the new timeline's copy
    /// instead; recovery that stays on the parent needs this one.
    pub parent_segment_stored: &'static str,
    /// Segments of the parent right before the switch that were never
    /// archived (first, last, count): the old primary died with them queued.
    pub never_archived: Option<(String, String, u64)>,
    /// Segments of the parent stored past the switch: written by the old
    /// primary after the promotion, on no path but the parent's own.
    pub parent_after: u64,
}

/// Every switch the repository's history files record, by child timeline.
pub fn of(inv: &Inventory) -> Vec<Switch> {
    let seg = inv.seg_size;
    let mut out = Vec::new();
    for (&tli, history) in &inv.histories {
        // The last entry is the direct parent.
        let Some(e) = history.last() else { continue };
        let parent = e.parent_tli;
        let at = e.switch_lsn.segno(seg);
        let name = SegmentName::from_segno(parent, at, seg);
        let partial = format!("{name}.partial");
        let whole = inv.segments.contains_segno(parent, at);
        let partial = inv
            .others
            .iter()
            .any(|o| o.key.rsplit('/').next() == Some(partial.as_str()));
        let stored = match (whole, partial) {
            (true, true) => "whole and partial",
            (true, false) => "whole",
            (false, true) => "partial",
            (false, false) => "absent",
        };
        // The parent's newest segment below the switch segment: what follows
        // it up to the switch was never archived.
        let newest_below = inv
            .segments
            .runs()
            .filter(|r| r.tli == parent && r.first < at)
            .map(|r| r.last.min(at - 1))
            .max();
        let never_archived = newest_below.filter(|&n| n + 1 < at).map(|n| {
            (
                SegmentName::from_segno(parent, n + 1, seg).to_string(),
                SegmentName::from_segno(parent, at - 1, seg).to_string(),
                at - 1 - n,
            )
        });
        let parent_after = inv
            .segments
            .runs()
            .filter(|r| r.tli == parent && r.last > at)
            .map(|r| r.last - r.first.max(at + 1) + 1)
            .sum();
        out.push(Switch {
            timeline: tli,
            parent,
            at_lsn: e.switch_lsn.to_string(),
            reason: e.reason.clone(),
            parent_segment: name.to_string(),
            parent_segment_stored: stored,
            never_archived,
            parent_after,
        });
    }
    out
}

/// One line for a DBA.
pub fn describe(s: &Switch) -> String {
    let mut line = format!(
        "timeline {} branched from timeline {} at {}{}; {}",
        s.timeline,
        s.parent,
        s.at_lsn,
        if s.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.reason)
        },
        match s.parent_segment_stored {
            "whole" => format!(
                "{} stored whole (the old primary's copy, with its WAL past the switch)",
                s.parent_segment
            ),
            "partial" => format!(
                "{}.partial stored (the promoted server's copy)",
                s.parent_segment
            ),
            "whole and partial" => format!(
                "{}.partial stored (the promoted server's copy), and the old primary's whole {} with its WAL past the switch",
                s.parent_segment, s.parent_segment
            ),
            _ => format!(
                "{} not archived (recovery staying on timeline {} ends before the switch)",
                s.parent_segment, s.parent
            ),
        }
    );
    if let Some((first, last, n)) = &s.never_archived {
        line.push_str(&format!(
            "; timeline {} NEVER ARCHIVED {first}{} before the switch: recovery cannot pass them",
            s.parent,
            if *n > 1 {
                format!(" .. {last} ({n} segments)")
            } else {
                String::new()
            }
        ));
    }
    if s.parent_after > 0 {
        line.push_str(&format!(
            "; {} segment(s) of timeline {} stored past the switch (its old primary wrote on after the promotion: not on timeline {}'s path)",
            s.parent_after, s.parent, s.timeline
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjectMeta;

    const MB16: u64 = 16 << 20;

    fn meta(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: format!("wal/{key}"),
            size: 1,
            modified: None,
            retain_until: None,
            version: None,
        }
    }

    #[test]
    fn a_failover_with_a_partial_an_unarchived_tail_and_a_primary_that_wrote_on() {
        let mut inv = Inventory::empty(MB16);
        // Timeline 1 archived 1..=3, never 4 and 5; the switch in 6; the old
        // primary then archived 7 and 8 of timeline 1. Timeline 2 from 6.
        for n in [1, 2, 3, 7, 8] {
            inv.add(&meta(&SegmentName::from_segno(1, n, MB16).to_string()));
        }
        inv.add(&meta("000000010000000000000006.partial"));
        for n in [6, 7] {
            inv.add(&meta(&SegmentName::from_segno(2, n, MB16).to_string()));
        }
        inv.add_history(2, "1\t0/6180C30\tno recovery target specified\n".into())
            .unwrap();
        let s = of(&inv);
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(
            (s.timeline, s.parent, s.at_lsn.as_str()),
            (2, 1, "0/6180C30")
        );
        assert_eq!(s.parent_segment_stored, "partial");
        assert_eq!(
            s.never_archived,
            Some((
                "000000010000000000000004".into(),
                "000000010000000000000005".into(),
                2
            ))
        );
        assert_eq!(s.parent_after, 2);
        let line = describe(s);
        assert!(
            line.contains(
                "NEVER ARCHIVED 000000010000000000000004 .. 000000010000000000000005 (2 segments)"
            ),
            "{line}"
        );
        assert!(line.contains(".partial stored"), "{line}");

        // The old primary filled the switch segment too: both copies named.
        inv.add(&meta(&SegmentName::from_segno(1, 6, MB16).to_string()));
        let s = &of(&inv)[0];
        assert_eq!(s.parent_segment_stored, "whole and partial");
        assert!(describe(s).contains("000000010000000000000006.partial stored"));

        // Archived up to the switch, the switch segment whole, nothing after.
        let mut inv = Inventory::empty(MB16);
        for n in 1..=6 {
            inv.add(&meta(&SegmentName::from_segno(1, n, MB16).to_string()));
        }
        inv.add_history(2, "1\t0/6180C30\tbefore 2026-12-03 10:00:00+00\n".into())
            .unwrap();
        let s = &of(&inv)[0];
        assert_eq!(
            (s.parent_segment_stored, &s.never_archived, s.parent_after),
            ("whole", &None, 0)
        );
    }
}
