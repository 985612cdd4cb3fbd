//! `backup-push` on a streaming standby: the backup's reads stay off the
//! primary. PostgreSQL's non-exclusive backup runs on the standby itself; the
//! standby must stream (a standby fed only by the archive can lag without
//! bound) and replay close enough behind its primary (`backup.standby_max_lag_mb`).
//! A standby cannot switch WAL segments: the backup's last segment reaches the
//! repository when the primary leaves it (its `archive_timeout`, or a switch).

use anyhow::{bail, Context, Result};

/// What the standby said of its primary when the backup started.
pub struct Upstream {
    /// host:port the WAL receiver streams from (as the standby shows it).
    pub primary: String,
    /// Bytes of WAL the primary has reported that the standby has not replayed.
    pub lag_bytes: i64,
}

/// Checks that the standby streams and lags at most `max_lag_mb` MiB of
/// replay behind its primary; refuses with the figures otherwise.
pub async fn check(client: &tokio_postgres::Client, max_lag_mb: i64) -> Result<Upstream> {
    let row = client
        .query_opt(
            "select status, \
             coalesce(sender_host, '') || coalesce(':' || sender_port::text, ''), \
             pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_replay_lsn())::bigint, \
             pg_wal_lsn_diff(latest_end_lsn, pg_last_wal_receive_lsn())::bigint, \
             coalesce(extract(epoch from clock_timestamp() - last_msg_receipt_time)::bigint, -1) \
             from pg_stat_wal_receiver",
            &[],
        )
        .await
        .context("reading pg_stat_wal_receiver on the standby")?;
    let Some(row) = row else {
        bail!("the server is a standby that does not stream (no WAL receiver in pg_stat_wal_receiver: it follows only the archive, or cannot reach its primary); a backup from it could be arbitrarily old: fix its primary_conninfo, or run backup-push on the primary");
    };
    let (status, primary): (Option<String>, String) = (row.get(0), row.get(1));
    let Some(status) = status else {
        bail!("cannot read pg_stat_wal_receiver on the standby: the role walvault connects as needs pg_read_all_stats (or superuser) to back up a standby");
    };
    if status != "streaming" {
        bail!("the standby's WAL receiver is '{status}', not streaming from {primary}; a backup from it could be arbitrarily old: wait until it streams, or run backup-push on the primary");
    }
    let (lag, unreceived, silent): (Option<i64>, Option<i64>, i64) =
        (row.get(2), row.get(3), row.get(4));
    let lag = lag.unwrap_or(0).max(0);
    if lag > max_lag_mb << 20 {
        bail!(
            "the standby replays {} MiB behind its primary {primary} ({} MiB of it not yet received, last message {silent} s ago); backup.standby_max_lag_mb is {max_lag_mb}: wait for it to catch up (is replay paused?), or run backup-push on the primary",
            lag >> 20,
            unreceived.unwrap_or(0).max(0) >> 20
        );
    }
    Ok(Upstream {
        primary,
        lag_bytes: lag,
    })
}

/// Why a standby's backup did not get its WAL: who was to archive it.
pub fn archiving_report(archive_mode: &str, primary: &str) -> String {
    if archive_mode == "always" {
        format!("the standby archives too (archive_mode = always), and so must its primary {primary}: check both servers' pg_stat_archiver; the last segment is archived only once the primary leaves it (archive_timeout there, or select pg_switch_wal() on the primary)")
    } else {
        format!("the standby does not archive (archive_mode = {archive_mode}): its primary {primary} must archive into this repository, and leaves the backup's last segment only at its archive_timeout or a switch (select pg_switch_wal() on the primary); its pg_stat_archiver says why it does not archive")
    }
}
