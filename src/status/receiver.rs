//! The health of `wal-receive`, as its server sees it: the slot (`receive.slot`)
//! in `pg_replication_slots` and the receiver's walsender in
//! `pg_stat_replication`. The receiver reports a position flushed only once the
//! repository holds it, so the server's flush position for it is the
//! repository's: the lag is what a failure now would lose.

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Receiver {
    pub slot: String,
    /// A walsender serves the slot: the receiver is connected.
    pub active: bool,
    /// `reserved`, `extended`, `unreserved` (about to lose WAL) or `lost`.
    pub wal_status: Option<String>,
    /// WAL the server keeps for the slot (its position minus the slot's restart_lsn).
    pub retained_bytes: Option<i64>,
    /// What the server can still write before the slot loses WAL
    /// (`max_slot_wal_keep_size`); unknown when that is unlimited.
    pub safe_wal_bytes: Option<i64>,
    /// The walsender's state (`streaming`, `catchup`) and sync state (`async`, `sync`).
    pub state: Option<String>,
    pub sync_state: Option<String>,
    /// WAL written on the server and not yet held by the repository.
    pub lag_bytes: Option<i64>,
    /// `flush_lag`: how long ago the newest WAL the repository holds was
    /// written (0 when caught up).
    pub lag_seconds: Option<f64>,
}

/// The server's WAL position: written on a primary, received (or replayed)
/// on a standby.
const POSITION: &str = "case when pg_is_in_recovery() \
     then coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
     else pg_current_wal_lsn() end";

/// The receiver's state, or `None` when the server has no slot of that name
/// (wal-receive not in use, or not yet started).
pub async fn read(client: &tokio_postgres::Client, slot: &str) -> Result<Option<Receiver>> {
    let sql = format!(
        "select s.active, s.wal_status, \
                pg_wal_lsn_diff({POSITION}, s.restart_lsn)::bigint, s.safe_wal_size, \
                r.state, r.sync_state, \
                pg_wal_lsn_diff({POSITION}, r.flush_lsn)::bigint, \
                extract(epoch from r.flush_lag)::float8 \
         from pg_replication_slots s \
         left join pg_stat_replication r on r.pid = s.active_pid \
         where s.slot_name = $1"
    );
    let Some(row) = client
        .query_opt(&sql, &[&slot])
        .await
        .context("reading pg_replication_slots and pg_stat_replication")?
    else {
        return Ok(None);
    };
    let active: bool = row.get(0);
    let retained: Option<i64> = row.get(2);
    let flushed_lag: Option<i64> = row.get(6);
    // Connected: what the receiver has not reported held. Not connected:
    // everything since the slot's position, which the next receiver resends.
    let lag_bytes = if active {
        flushed_lag.or(retained)
    } else {
        retained
    };
    let lag_seconds = match row.get::<_, Option<f64>>(7) {
        // The server clears flush_lag once the receiver has caught up.
        None if active && lag_bytes == Some(0) => Some(0.0),
        lag => lag.filter(|_| active),
    };
    Ok(Some(Receiver {
        slot: slot.to_string(),
        active,
        wal_status: row.get(1),
        retained_bytes: retained,
        safe_wal_bytes: row.get(3),
        state: row.get(4),
        sync_state: row.get(5),
        lag_bytes,
        lag_seconds,
    }))
}

/// The status report's lines about the receiver.
pub fn describe(r: &Receiver) -> Vec<String> {
    let mib = |b: i64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let mut lines = vec![format!(
        "receiver       slot {}: {}{}",
        r.slot,
        if r.active {
            format!(
                "{} ({})",
                r.state.as_deref().unwrap_or("connected"),
                r.sync_state.as_deref().unwrap_or("?")
            )
        } else {
            "NOT CONNECTED (the RPO is archive_timeout's)".to_string()
        },
        match (r.lag_bytes, r.lag_seconds) {
            (Some(b), Some(s)) => format!(", repository behind by {} ({s:.1} s)", mib(b)),
            (Some(b), None) => format!(", repository behind by {}", mib(b)),
            _ => String::new(),
        }
    )];
    if let Some(kept) = r.retained_bytes {
        lines.push(format!(
            "  slot keeps     {} of WAL on the server{}{}",
            mib(kept),
            r.safe_wal_bytes
                .map(|s| format!(", {} more before it loses WAL", mib(s)))
                .unwrap_or_else(|| ", no limit (max_slot_wal_keep_size)".into()),
            match r.wal_status.as_deref() {
                Some(w @ ("unreserved" | "lost")) => format!("; WAL {}", w.to_uppercase()),
                _ => String::new(),
            }
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receiver_down_says_so_and_what_the_slot_keeps() {
        let r = Receiver {
            slot: "walvault".into(),
            active: false,
            wal_status: Some("unreserved".into()),
            retained_bytes: Some(3 << 20),
            safe_wal_bytes: Some(1 << 20),
            lag_bytes: Some(3 << 20),
            ..Default::default()
        };
        let lines = describe(&r);
        assert!(lines[0].contains("NOT CONNECTED"), "{lines:?}");
        assert!(lines[0].contains("behind by 3.0 MiB"), "{lines:?}");
        assert!(
            lines[1].contains("1.0 MiB more before it loses WAL"),
            "{lines:?}"
        );
        assert!(lines[1].ends_with("WAL UNRESERVED"), "{lines:?}");
    }
}
