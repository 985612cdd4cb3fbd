//! `drill`: a restore proved in a scratch cluster, with its report.

use super::target::TargetArgs;
use super::Env;
use crate::drill::{self, Options};
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  walvault drill                                   # latest backup, end of the archive
  walvault drill --target-time '2026-11-22 03:00:00+00' --checks /etc/walvault/drill-checks.sql
  walvault drill --backup 20261122T020000Z --target immediate --no-upload

Restores the backup into a new scratch directory (drill.scratch_dir), starts PostgreSQL
there on a private socket (no TCP), waits until recovery reaches the target, then checks:
every database connects, every table reads (row counts), amcheck on indexes and tables
where the extension is installed, and each named query of the checks file (it passes
when it returns no rows, or a single true). Measures plan, restore and recovery times
(the RTO) and the RPO (age of the newest WAL in the repository), compares them with
drill.rto_target_seconds and drill.rpo_target_seconds, and writes
walvault-drill-<id>.md and .json into drill.report_dir (and the repository's drills/).
The scratch cluster is stopped and removed in every case, also on Ctrl-C.

Checks file:
  -- check: no orphaned order lines
  -- database: shop
  select l.id from order_lines l left join orders o on o.id = l.order_id where o.id is null;

Exit status: 0 every check passed and every objective was met; 1 otherwise (the
report names each failure), or when the drill could not start (bad input).")]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    /// Use this backup instead of choosing one
    #[arg(long)]
    backup: Option<String>,
    /// Drill a logical dump instead (dump-list): restored into a new cluster of
    /// the newest major installed, then checked
    #[arg(long, value_name = "ID", conflicts_with_all = ["backup", "target_time", "target_lsn", "target_xid", "target_name", "target", "target_timeline"])]
    dump: Option<String>,
    /// SQL file of named checks (overrides drill.checks_file)
    #[arg(long, value_name = "FILE")]
    checks: Option<PathBuf>,
    /// Where to make the scratch directory (overrides drill.scratch_dir)
    #[arg(long, value_name = "DIR")]
    scratch_dir: Option<PathBuf>,
    /// Where to write the reports (overrides drill.report_dir)
    #[arg(long, value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// Do not store the reports in the repository (drill.upload)
    #[arg(long)]
    no_upload: bool,
    /// Do not run amcheck (drill.amcheck)
    #[arg(long)]
    no_amcheck: bool,
    /// Who runs the drill, for the report (default: SUDO_USER, else the OS user)
    #[arg(long)]
    operator: Option<String>,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let d = &env.cfg.drill;
        let (codec, store) = env.open().await?;
        let opts = Options {
            source: env.source(self.target, self.backup)?,
            dump: self.dump,
            checks: self.checks.or_else(|| d.checks_file.clone()),
            scratch_root: self.scratch_dir.unwrap_or_else(|| d.scratch_dir.clone()),
            report_dir: self.report_dir.unwrap_or_else(|| d.report_dir.clone()),
            upload: d.upload && !self.no_upload,
            amcheck: d.amcheck && !self.no_amcheck,
            operator: self.operator,
        };
        Ok(super::passed(
            drill::run(&env.cfg, store, &codec, opts).await?,
        ))
    }
}
