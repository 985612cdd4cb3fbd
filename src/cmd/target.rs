//! The recovery target options, shared by `recover`, `drill` and `restore-table`.

use crate::recover::target::{self, Target};
use anyhow::Result;

/// Where recovery stops.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// Recover to this time: RFC 3339 or PostgreSQL's form, with a zone
    /// (rounded to the microsecond, as PostgreSQL reads it)
    #[arg(long, value_name = "TIME", conflicts_with_all = ["target_lsn", "target_xid", "target_name", "target"])]
    pub target_time: Option<String>,
    /// Recover to this WAL location (e.g. 0/3000A28)
    #[arg(long, value_name = "LSN", conflicts_with_all = ["target_xid", "target_name", "target"])]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id
    #[arg(long, value_name = "XID", conflicts_with_all = ["target_name", "target"])]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub target_name: Option<String>,
    /// immediate (end of the backup) or latest (end of the archive, the default)
    #[arg(long, value_name = "immediate|latest")]
    pub target: Option<String>,
    /// Timeline to follow: a number, or latest (default)
    #[arg(long, value_name = "TLI")]
    pub target_timeline: Option<String>,
}

impl TargetArgs {
    /// The target and the timeline to follow (None: the latest).
    pub fn parse(self) -> Result<(Target, Option<u32>)> {
        let asked = target::Asked {
            time: self.target_time,
            lsn: self.target_lsn,
            xid: self.target_xid,
            name: self.target_name,
            end: self.target,
        };
        Ok((
            asked.parse()?,
            target::parse_timeline(self.target_timeline.as_deref())?,
        ))
    }
}
