//! PostgreSQL's WAL summaries (17+, `summarize_wal = on`): which blocks of
//! which relations WAL touched between two LSNs. With them an incremental
//! backup reads only those blocks of a relation file instead of all of it.
//!
//! Used only when summaries cover the whole range from the parent's start to
//! this backup's start on one timeline; otherwise every block is read and
//! hashed, as without them.

use super::read::Changed;
use crate::wal::names::Lsn;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// (tablespace oid, database oid, relfilenode), as the summaries name relations.
pub type Relation = (u32, u32, u32);

/// How long to wait for the summarizer to reach this backup's start.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The main-fork blocks WAL touched from `from` to `to` on timeline `tli`,
/// by relation; `Err(why)` when the summaries cannot tell.
pub async fn changed(
    client: &Client,
    tli: u32,
    from: Lsn,
    to: Lsn,
) -> Result<HashMap<Relation, Changed>, String> {
    let on: String = client
        .query_one("show summarize_wal", &[])
        .await
        .map_err(|e| format!("summarize_wal unreadable: {e}"))?
        .get(0);
    if on != "on" {
        return Err("summarize_wal is off".into());
    }
    // The summarizer trails the WAL writer: wait until it has summarized up
    // to this backup's start, as pg_basebackup --incremental does.
    let t0 = Instant::now();
    // Usually there already or within milliseconds: short polls first.
    let mut pause = Duration::from_millis(5);
    loop {
        let row = client
            .query_one(
                "select summarized_tli::int8, summarized_lsn::text from pg_get_wal_summarizer_state()",
                &[],
            )
            .await
            .map_err(|e| format!("pg_get_wal_summarizer_state failed: {e}"))?;
        let at_tli: i64 = row.get(0);
        let at = Lsn::parse(row.get::<_, &str>(1)).map_err(|e| e.to_string())?;
        if at_tli as u32 == tli && at >= to {
            break;
        }
        if t0.elapsed() > CATCH_UP {
            return Err(format!(
                "the WAL summarizer is at {at} on timeline {at_tli}, short of this backup's start {to} after {} s",
                CATCH_UP.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    let rows = client
        .query(
            "select start_lsn::text, end_lsn::text from pg_available_wal_summaries() \
             where tli = $1 order by start_lsn",
            &[&(tli as i64)],
        )
        .await
        .map_err(|e| format!("pg_available_wal_summaries failed: {e}"))?;
    let mut ranges = Vec::new();
    for r in rows {
        let a = Lsn::parse(r.get::<_, &str>(0)).map_err(|e| e.to_string())?;
        let z = Lsn::parse(r.get::<_, &str>(1)).map_err(|e| e.to_string())?;
        ranges.push((a, z));
    }
    let used = covering(&ranges, from, to).ok_or_else(|| {
        format!(
            "the WAL summaries on timeline {tli} do not cover {from} to {to} (removed after wal_summary_keep_time, or summarize_wal turned on since the parent)"
        )
    })?;
    let mut out: HashMap<Relation, Changed> = HashMap::new();
    for (a, z) in used {
        let rows = client
            .query(
                "select relfilenode, reltablespace, reldatabase, relblocknumber, is_limit_block \
                 from pg_wal_summary_contents($1, $2::text::pg_lsn, $3::text::pg_lsn) \
                 where relforknumber = 0",
                &[&(tli as i64), &a.to_string(), &z.to_string()],
            )
            .await
            .map_err(|e| format!("pg_wal_summary_contents failed: {e}"))?;
        for r in rows {
            let node: u32 = r.get(0);
            let ts: u32 = r.get(1);
            let db: u32 = r.get(2);
            let block = r.get::<_, i64>(3) as u32;
            let limit: bool = r.get(4);
            let c = out.entry((ts, db, node)).or_default();
            if limit {
                c.from = Some(c.from.map_or(block, |f| f.min(block)));
            } else {
                c.blocks.insert(block);
            }
        }
    }
    Ok(out)
}

/// The summaries (start, end) that together cover `from..to` without a hole,
/// or None.
fn covering(ranges: &[(Lsn, Lsn)], from: Lsn, to: Lsn) -> Option<Vec<(Lsn, Lsn)>> {
    let mut at = from;
    let mut used = Vec::new();
    for &(a, z) in ranges {
        if at >= to {
            break;
        }
        if z <= at {
            continue;
        }
        if a > at {
            return None;
        }
        used.push((a, z));
        at = z;
    }
    (at >= to).then_some(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_must_cover_the_range_without_a_hole() {
        let r = [
            (Lsn(0), Lsn(100)),
            (Lsn(100), Lsn(250)),
            (Lsn(250), Lsn(400)),
        ];
        assert_eq!(
            covering(&r, Lsn(120), Lsn(300)),
            Some(vec![(Lsn(100), Lsn(250)), (Lsn(250), Lsn(400))])
        );
        assert_eq!(covering(&r, Lsn(0), Lsn(500)), None);
        assert_eq!(covering(&r[1..], Lsn(50), Lsn(200)), None);
        let holed = [(Lsn(0), Lsn(100)), (Lsn(120), Lsn(400))];
        assert_eq!(covering(&holed, Lsn(10), Lsn(300)), None);
        assert_eq!(covering(&holed, Lsn(130), Lsn(300)), Some(vec![holed[1]]));
    }
}
