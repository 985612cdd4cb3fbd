//! Property tests (proptest) for everything walvault parses from outside: WAL page
//! headers, segment names and LSNs, timeline history files, backup manifests,
//! recovery target times, repository URLs, stored-object envelopes and drill
//! check files. On any input they return a value or an error, never panic; and
//! what they accept round-trips where a printed form exists.

use proptest::prelude::*;
use walvault::wal::header::{LongPageHeader, LONG_HEADER_LEN};
use walvault::wal::names::{Lsn, SegmentName, WalFile};

/// 2000 cases a run; PROPTEST_CASES asks for more when hunting by hand.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Bytes shaped like a long page header: real magics and sizes mixed with noise.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0xD110u16), Just(0xD113), any::<u16>()],
        any::<u16>(),
        prop_oneof![Just(1u32), any::<u32>()],
        any::<u64>(),
        any::<u64>(),
        prop_oneof![Just(16u32 << 20), Just(1 << 20), Just(0), any::<u32>()],
        prop_oneof![Just(8192u32), any::<u32>()],
        0usize..8,
    )
        .prop_map(|(magic, info, tli, addr, sysid, seg, blck, cut)| {
            let mut b = vec![0u8; LONG_HEADER_LEN];
            b[0..2].copy_from_slice(&magic.to_le_bytes());
            b[2..4].copy_from_slice(&info.to_le_bytes());
            b[4..8].copy_from_slice(&tli.to_le_bytes());
            b[8..16].copy_from_slice(&addr.to_le_bytes());
            b[24..32].copy_from_slice(&sysid.to_le_bytes());
            b[32..36].copy_from_slice(&seg.to_le_bytes());
            b[36..40].copy_from_slice(&blck.to_le_bytes());
            // Sometimes too short.
            if cut == 0 {
                b.truncate(LONG_HEADER_LEN / 2);
            }
            b
        })
}

/// WAL file names: valid shapes with random hex, and near misses.
fn wal_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9A-F]{24}",
        "[0-9A-F]{24}\\.partial",
        "[0-9A-F]{8}\\.history",
        "[0-9A-F]{24}\\.[0-9A-F]{8}\\.backup",
        "[0-9A-Fa-fxX./]{0,40}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wal_header_parse_and_check_never_panic(b in header_bytes(), name in "[0-9A-F]{24}", len in prop_oneof![Just(16u64 << 20), any::<u64>()]) {
        if let Ok(h) = LongPageHeader::parse(&b) {
            let _ = h.pg_major();
            if let Ok(WalFile::Segment(seg)) = WalFile::parse(&name) {
                let _ = h.check(&seg, len);
            }
        }
    }

    #[test]
    fn wal_names_parse_and_round_trip(name in wal_name(), seg_size in prop_oneof![Just(16u64 << 20), Just(1u64 << 30), any::<u64>()]) {
        if let Ok(f) = WalFile::parse(&name) {
            if let Some(seg) = f.segment() {
                let _ = seg.start_lsn(seg_size);
                if let Ok(n) = seg.segno(seg_size) {
                    prop_assert_eq!(SegmentName::from_segno(seg.tli, n, seg_size), seg);
                }
            }
            if let WalFile::Segment(seg) = f {
                prop_assert_eq!(seg.to_string(), name);
            }
        }
    }

    #[test]
    fn lsn_parse_round_trips(s in prop_oneof!["[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", "[0-9A-Fa-f/ ]{0,20}", any::<String>()], seg_size in any::<u64>()) {
        if let Ok(l) = Lsn::parse(&s) {
            prop_assert_eq!(Lsn::parse(&l.to_string()).unwrap(), l);
            if walvault::wal::names::valid_segment_size(seg_size) {
                let _ = l.segno(seg_size);
            }
        }
    }

    #[test]
    fn history_parse_never_panics(lines in proptest::collection::vec(prop_oneof![
        "[0-9]{1,10}\t[0-9A-F]{1,8}/[0-9A-F]{1,8}\t[a-z ]{0,20}",
        "#.{0,20}",
        "[0-9 /A-Fa-f\t]{0,30}",
        any::<String>(),
    ], 0..8)) {
        let text = lines.join("\n");
        if let Ok(entries) = walvault::wal::history::parse(&text) {
            for w in entries.windows(2) {
                prop_assert!(w[0].parent_tli < w[1].parent_tli);
            }
        }
    }

    #[test]
    fn manifest_parse_never_panics(doc in manifest_json()) {
        if let Ok(m) = serde_json::from_str::<walvault::backup::Manifest>(&doc) {
            let _ = (m.start(), m.stop());
        }
    }

    #[test]
    fn target_time_parse_never_panics(s in prop_oneof![
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?(Z| UTC|[+-][0-9]{2}(:?[0-9]{2})?)?",
        "[0-9: T.+-Z]{0,30}",
        any::<String>(),
    ]) {
        if let Ok(t) = walvault::recover::target::parse_time(&s) {
            let printed = walvault::recover::target::pg_time(&t);
            prop_assert_eq!(walvault::recover::target::parse_time(&printed).unwrap(), t);
        }
    }

    #[test]
    fn repo_url_and_dates_never_panic(s in prop_oneof!["(s3|file|gs)://[a-z0-9./-]{0,30}", any::<String>()], d in prop_oneof!["[0-9]{4}-[0-9]{2}-[0-9]{2}", any::<String>()]) {
        let _ = walvault::store::RepoUrl::parse(&s);
        let _ = walvault::marks::parse_date(&d);
    }

    #[test]
    fn envelope_parts_never_panic(h in proptest::collection::vec(any::<u8>(), 0..64), t in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = walvault::codec::envelope::parse_header(&h);
        let _ = walvault::codec::envelope::Trailer::parse(&t);
    }

    #[test]
    fn drill_checks_parse_never_panics(lines in proptest::collection::vec(prop_oneof![
        "-- check: [a-z_ ]{0,12}",
        "select [a-z0-9 ,()*]{0,20};?",
        ".{0,30}",
    ], 0..10)) {
        let _ = walvault::drill::checks::parse(&lines.join("\n"), "fuzz.sql");
    }
}

/// JSON documents near a real manifest: fields dropped, retyped or garbled.
fn manifest_json() -> impl Strategy<Value = String> {
    let lsn = prop_oneof!["[0-9A-F]{1,8}/[0-9A-F]{1,8}", ".{0,12}"];
    let time = prop_oneof![
        Just("2026-11-22T10:00:00Z".to_string()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z",
        ".{0,10}"
    ];
    (
        lsn.clone(),
        lsn,
        time,
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        0usize..20,
    )
        .prop_map(|(start, stop, time, tli, size, enc, drop)| {
            let fields = [
                r#""format":1"#.to_string(),
                r#""id":"20261122T100000Z""#.to_string(),
                r#""label":"walvault""#.to_string(),
                r#""system_identifier":"7311""#.to_string(),
                r#""pg_version_num":150000"#.to_string(),
                format!(r#""timeline":{tli}"#),
                format!(r#""start_lsn":{}"#, serde_json::to_string(&start).unwrap()),
                format!(r#""stop_lsn":{}"#, serde_json::to_string(&stop).unwrap()),
                format!(r#""start_time":{}"#, serde_json::to_string(&time).unwrap()),
                format!(r#""stop_time":{}"#, serde_json::to_string(&time).unwrap()),
                format!(r#""wal_segment_size":{size}"#),
                r#""raw_bytes":1"#.to_string(),
                r#""stored_bytes":1"#.to_string(),
                r#""files":1"#.to_string(),
                r#""duration_seconds":1.5"#.to_string(),
                r#""parts":[]"#.to_string(),
                r#""tablespaces":[]"#.to_string(),
                format!(r#""encrypted":{enc}"#),
                r#""created_by":"walvault""#.to_string(),
            ];
            let kept: Vec<&String> = fields
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, f)| f)
                .collect();
            format!(
                "{{{}}}",
                kept.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })
}
