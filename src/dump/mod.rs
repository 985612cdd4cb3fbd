//! Logical dumps: `pg_dump` custom-format archives of each database (and
//! `pg_dumpall --globals-only`), streamed through the codec into
//! `dumps/<id>/`, with a clear manifest written last. Any later PostgreSQL
//! reads them, which a physical backup cannot promise for a 7-year keep.

pub mod keep;
pub mod push;
pub mod restore;
pub mod verify;

use crate::store::Store;
use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Dump ids start with this, so that they never meet a backup's id.
pub const ID_PREFIX: &str = "dump-";

pub fn prefix(id: &str) -> String {
    format!("dumps/{id}/")
}

pub fn manifest_key(id: &str) -> String {
    format!("{}manifest.json", prefix(id))
}

/// The object of database `db`: its name kept readable, any byte outside
/// `[A-Za-z0-9_.-]` written as `%XX` (a database may be called anything).
pub fn database_key(id: &str, db: &str) -> String {
    let mut name = String::new();
    for b in db.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !name.is_empty()) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{}{name}.dump", prefix(id))
}

pub fn globals_key(id: &str) -> String {
    format!("{}globals.sql", prefix(id))
}

/// `dumps/<id>/manifest.json`: clear JSON, written last.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub host: String,
    /// The server's version (`server_version`), e.g. "15.18".
    pub server_version: String,
    pub server_major: u32,
    pub system_identifier: String,
    /// The pg_dump that wrote the archives (a pg_restore at least as new reads them).
    pub pg_dump_major: u32,
    pub encrypted: bool,
    pub databases: Vec<Dumped>,
    pub globals: Option<Object>,
}

/// One stored object: its key, sizes, the plaintext's sha256 and the version
/// id a versioned bucket gave it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Object {
    pub key: String,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dumped {
    pub database: String,
    #[serde(flatten)]
    pub object: Object,
    /// Every table with the planner's row estimate at dump time (`None`:
    /// never analyzed).
    pub tables: Vec<TableEstimate>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableEstimate {
    pub schema: String,
    pub name: String,
    pub rows: Option<i64>,
}

impl Manifest {
    pub fn raw_bytes(&self) -> u64 {
        self.objects().map(|o| o.raw_bytes).sum()
    }

    pub fn stored_bytes(&self) -> u64 {
        self.objects().map(|o| o.stored_bytes).sum()
    }

    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.databases
            .iter()
            .map(|d| &d.object)
            .chain(self.globals.iter())
    }

    pub fn database(&self, name: Option<&str>) -> Result<&Dumped> {
        match name {
            Some(n) => self
                .databases
                .iter()
                .find(|d| d.database == n)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "dump {} holds no database {n} (it holds {})",
                        self.id,
                        self.names()
                    )
                }),
            None if self.databases.len() == 1 => Ok(&self.databases[0]),
            None => bail!(
                "dump {} holds {} databases ({}); choose one with --database",
                self.id,
                self.databases.len(),
                self.names()
            ),
        }
    }

    fn names(&self) -> String {
        self.databases
            .iter()
            .map(|d| d.database.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The dumps in the repository: complete ones (with their manifest), newest
/// last, and the ids of those a push left without one.
pub struct Listing {
    pub dumps: Vec<Manifest>,
    pub incomplete: Vec<String>,
}

pub async fn list(store: &dyn Store) -> Result<Listing> {
    let mut ids: BTreeMap<String, bool> = BTreeMap::new();
    for meta in store.list("dumps/").await? {
        let rest = meta.key.trim_start_matches("dumps/");
        if let Some((id, name)) = rest.split_once('/') {
            *ids.entry(id.to_string()).or_default() |= name == "manifest.json";
        }
    }
    let mut listing = Listing {
        dumps: Vec::new(),
        incomplete: Vec::new(),
    };
    for (id, complete) in ids {
        if !complete {
            listing.incomplete.push(id);
            continue;
        }
        listing.dumps.push(read_manifest(store, &id).await?);
    }
    listing.dumps.sort_by_key(|m| m.finished_at);
    Ok(listing)
}

pub async fn read_manifest(store: &dyn Store, id: &str) -> Result<Manifest> {
    if !id.starts_with(ID_PREFIX) || id.contains('/') {
        bail!("'{id}' is not a dump id (they look like {ID_PREFIX}20261203T020000Z; dump-list shows them)");
    }
    crate::store::get_json(store, &manifest_key(id), "a walvault dump manifest")
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no dump {id} in {} (dump-list shows them)",
                store.locate("dumps/")
            )
        })
}

/// `dump-list`: the dumps, oldest first, as a table or JSON.
pub async fn run_list(store: &dyn Store, json: bool) -> Result<()> {
    let listing = list(store).await?;
    if json {
        let v = serde_json::json!({
            "dumps": listing.dumps,
            "incomplete": listing.incomplete,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if listing.dumps.is_empty() {
        println!("no dumps in {}", store.locate("dumps/"));
    } else {
        println!(
            "{:<22} {:<20} {:<9} {:>10} {:>10}  DATABASES",
            "ID", "FINISHED (UTC)", "POSTGRES", "RAW MiB", "STORED MiB"
        );
    }
    for m in &listing.dumps {
        println!(
            "{:<22} {:<20} {:<9} {:>10} {:>10}  {}{}",
            m.id,
            m.finished_at.format("%Y-%m-%d %H:%M:%S"),
            m.server_version,
            m.raw_bytes() >> 20,
            m.stored_bytes() >> 20,
            m.names(),
            if m.globals.is_some() {
                " + globals"
            } else {
                ""
            }
        );
    }
    for id in &listing.incomplete {
        println!("{id:<22} incomplete: no manifest (a dump-push that did not finish)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_keys_stay_inside_their_dump() {
        assert_eq!(database_key("dump-1", "shop"), "dumps/dump-1/shop.dump");
        assert_eq!(
            database_key("dump-1", "../x y"),
            "dumps/dump-1/%2E.%2Fx%20y.dump"
        );
        assert_eq!(database_key("dump-1", "Å"), "dumps/dump-1/%C3%85.dump");
    }
}
