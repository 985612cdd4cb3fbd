//! `repo-init`: bind the repository to a cluster.

use super::Env;
use crate::exit;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The cluster's data directory
    #[arg(long, env = "PGDATA")]
    pgdata: PathBuf,
}

impl Args {
    pub async fn run(self, env: &Env) -> Result<u8> {
        let (_, store) = env.open().await?;
        let pgdata = &self.pgdata;
        let sysid = crate::pg::control::system_identifier(pgdata)?;
        let version = std::fs::read_to_string(pgdata.join("PG_VERSION"))
            .ok()
            .and_then(|v| v.trim().parse().ok());
        let id = crate::repo::ensure(store.as_ref(), sysid, version).await?;
        println!(
            "repository {} belongs to cluster {}",
            store.locate(""),
            id.system_identifier
        );
        Ok(exit::OK)
    }
}
