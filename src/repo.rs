//! The repository identity, `walvault.json`: which cluster a repository belongs
//! to. Stored in clear (it holds no secret) so every push can check it cheaply.

use crate::store::{Class, Store};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const KEY: &str = "walvault.json";
pub const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepoIdentity {
    pub format: u32,
    /// A string: JSON numbers lose precision past 2^53.
    pub system_identifier: String,
    pub pg_version: Option<u32>,
    pub created: DateTime<Utc>,
    pub created_by: String,
    /// The repository of the cluster this one was upgraded from (repo-switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Link>,
}

/// One end of a major-version upgrade: a repository and the cluster it belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Link {
    pub repo: String,
    pub system_identifier: String,
    pub pg_version: Option<u32>,
    /// When repo-switch linked the two repositories.
    pub at: DateTime<Utc>,
}

impl Link {
    pub fn describe(&self) -> String {
        let major = self
            .pg_version
            .map(|v| format!(", PostgreSQL {v}"))
            .unwrap_or_default();
        format!(
            "{} (cluster {}{major}, since {})",
            self.repo,
            self.system_identifier,
            self.at.format("%Y-%m-%d %H:%M UTC")
        )
    }
}

/// Written into the old repository by repo-switch: where its cluster's
/// successor (after pg_upgrade, or a dump and restore) archives now.
pub const SUCCESSOR_KEY: &str = "walvault-successor.json";

pub async fn successor(store: &dyn Store) -> Result<Option<Link>> {
    crate::store::get_json::<Link>(store, SUCCESSOR_KEY, "a walvault successor link").await
}

impl RepoIdentity {
    pub fn sysid(&self) -> Result<u64> {
        self.system_identifier
            .parse()
            .with_context(|| format!("{KEY}: bad system_identifier '{}'", self.system_identifier))
    }
}

pub async fn load(store: &dyn Store) -> Result<Option<RepoIdentity>> {
    let Some(id) =
        crate::store::get_json::<RepoIdentity>(store, KEY, "a walvault repository identity")
            .await?
    else {
        return Ok(None);
    };
    if id.format > FORMAT {
        bail!(
            "repository format {} at {} is newer than this walvault understands ({FORMAT}); upgrade walvault",
            id.format,
            store.locate(KEY)
        );
    }
    Ok(Some(id))
}

/// The identity of a repository that must exist: a mistyped path, bucket or
/// prefix holds none, and every listing of it would look empty, not wrong.
pub async fn require(store: &dyn Store) -> Result<RepoIdentity> {
    load(store).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "{} holds no walvault repository (no {KEY}); check the repo setting (a mistyped path, bucket or prefix?), or archive into it first",
            store.locate("")
        )
    })
}

/// The refusal when a file belongs to another cluster than the repository;
/// when that cluster is the one the repository was switched to after an
/// upgrade, the refusal says where it archives now.
pub async fn mismatch(store: &dyn Store, repo: u64, file: u64) -> anyhow::Error {
    if let Ok(Some(next)) = successor(store).await {
        if next.system_identifier == file.to_string() {
            return anyhow::anyhow!(
                "this file belongs to cluster {file}, which archives to {} since repo-switch; the repository {} keeps cluster {repo}'s history only: set repo = \"{}\" where this walvault reads it",
                next.repo,
                store.locate(""),
                next.repo
            );
        }
    }
    anyhow::anyhow!(
        "this file belongs to the cluster with system identifier {file}, but the repository {} belongs to cluster {repo}; give each cluster its own repository (another prefix or directory; after pg_upgrade: walvault repo-switch --to NEW)",
        store.locate("")
    )
}

/// Stores `id` as the repository's identity.
pub async fn write(store: &dyn Store, id: &RepoIdentity) -> Result<()> {
    let json = serde_json::to_vec_pretty(id)?;
    // The repository's identity outlives every backup.
    store
        .put_class(KEY, Box::new(std::io::Cursor::new(json)), Class::Kept)
        .await?;
    Ok(())
}

/// Writes the identity when the repository has none; checks it when it has one.
pub async fn ensure(
    store: &dyn Store,
    sysid: u64,
    pg_version: Option<u32>,
) -> Result<RepoIdentity> {
    if let Some(id) = load(store).await? {
        if id.sysid()? != sysid {
            return Err(mismatch(store, id.sysid()?, sysid).await);
        }
        return Ok(id);
    }
    let id = RepoIdentity {
        format: FORMAT,
        system_identifier: sysid.to_string(),
        pg_version,
        created: Utc::now(),
        created_by: format!("walvault {}", env!("CARGO_PKG_VERSION")),
        previous: None,
    };
    if let Err(e) = write(store, &id).await {
        // Another push initialised it first (create-only write): check theirs.
        if crate::store::already_stored(&e) {
            if let Some(theirs) = load(store).await? {
                if theirs.sysid()? != sysid {
                    return Err(mismatch(store, theirs.sysid()?, sysid).await);
                }
                return Ok(theirs);
            }
        }
        return Err(e);
    }
    tracing::info!(
        "initialised repository {} for cluster {sysid}",
        store.locate("")
    );
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn init_then_check() {
        let d = tempfile::tempdir().unwrap();
        let s = crate::store::fs::FsStore::new(d.path().to_path_buf());
        assert!(load(&s).await.unwrap().is_none());
        let id = ensure(&s, u64::MAX - 1, Some(15)).await.unwrap();
        assert_eq!(id.sysid().unwrap(), u64::MAX - 1);
        assert_eq!(load(&s).await.unwrap().unwrap(), id);
        ensure(&s, u64::MAX - 1, Some(15)).await.unwrap();
        let e = ensure(&s, 5, Some(15)).await.unwrap_err();
        assert!(e.to_string().contains("system identifier 5"), "{e}");
    }
}
