//! `delete`: retention applied to backups, their WAL and dumps.

use super::Env;
use crate::retention::{self, Options, Policy};
use anyhow::Result;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
A dry run unless --confirm: it prints every backup with keep or REMOVE and why, and what
WAL would go. Policies (config [retention] or the flags; a backup is kept when either
keeps it):
  --keep-last N   the newest N restorable backups
  --keep-days D   every backup needed to recover to any time in the last D days
Permanent and keep-until backups (backup-mark) are never removed, and keep the WAL from
their start to their stop. All WAL from the start of the oldest kept backup onwards is
kept, and every timeline history file. Objects still under S3 Object Lock are skipped
and reported; the run carries on.

Exit status: 0 done (or dry run), 1 a removal failed or the policy is missing.")]
pub struct Args {
    /// Keep the newest N restorable backups (overrides retention.keep_last)
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep what recovery within the last D days needs (overrides retention.keep_days)
    #[arg(long, value_name = "D")]
    keep_days: Option<u32>,
    /// Keep the newest N full backups with their increments (overrides retention.keep_full)
    #[arg(long, value_name = "N")]
    keep_full: Option<u32>,
    /// Remove for real (without it, only show what would be removed)
    #[arg(long)]
    confirm: bool,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let r = &env.cfg.retention;
        let (codec, store) = env.open().await?;
        let opts = Options {
            policy: Policy {
                keep_last: self.keep_last.unwrap_or(r.keep_last as u32),
                keep_days: self.keep_days.unwrap_or(r.keep_days as u32),
                keep_full: self.keep_full.unwrap_or(r.keep_full as u32),
            },
            dumps: crate::retention::dumps::Policy {
                keep_daily: r.dump_keep_daily as u32,
                keep_weekly: r.dump_keep_weekly as u32,
                keep_monthly: r.dump_keep_monthly as u32,
            },
            confirm: self.confirm,
        };
        let clean = retention::run(store.as_ref(), &codec, opts).await?;
        Ok(super::passed(clean))
    }
}
