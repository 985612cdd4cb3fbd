//! The configuration files a server reads from outside its data directory
//! (Debian keeps postgresql.conf, pg_hba.conf and pg_ident.conf in
//! /etc/postgresql/<major>/<name>/; Patroni and hand-made setups name files
//! anywhere). A base backup of PGDATA does not hold them, so backup-push
//! stores them beside it, encoded like every other part, as
//! `backups/<id>/server_config.json`; recover places them in the copy.

use crate::codec::Codec;
use crate::pg::conf;
use crate::store::Store;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const NAME: &str = "server_config.json";

pub fn key(id: &str) -> String {
    format!("{}{NAME}", super::prefix(id))
}

/// Where the server's configuration was when the backup started (the
/// manifest's record; the files' texts are in the stored object).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerConfig {
    pub data_directory: String,
    /// None when the backup's role could not read the setting (superusers
    /// and pg_read_all_settings can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hba_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ident_file: Option<String>,
    /// Files outside the data directory stored in the object, by absolute path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<String>,
    /// Directories named by include_dir outside the data directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<String>,
    /// Files outside the data directory walvault could not read (and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// The stored texts, by absolute path.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    pub files: BTreeMap<PathBuf, String>,
}

impl conf::Source for Stored {
    fn read(&self, path: &Path) -> Option<String> {
        self.files.get(path).cloned()
    }
    fn list(&self, dir: &Path) -> Option<Vec<PathBuf>> {
        Some(
            self.files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect(),
        )
    }
}

/// Reads the server's config locations and the files among them (and their
/// includes) that lie outside `data_directory`.
pub async fn collect(
    client: &tokio_postgres::Client,
    data_directory: &str,
) -> Result<(ServerConfig, Stored)> {
    let rows = client
        .query(
            "select name, setting from pg_settings where name in ('config_file', 'hba_file', 'ident_file')",
            &[],
        )
        .await
        .context("reading config_file, hba_file and ident_file")?;
    let mut sc = ServerConfig {
        data_directory: data_directory.to_string(),
        ..Default::default()
    };
    for r in rows {
        let (name, value): (String, Option<String>) = (r.get(0), r.get(1));
        match name.as_str() {
            "config_file" => sc.config_file = value,
            "hba_file" => sc.hba_file = value,
            "ident_file" => sc.ident_file = value,
            _ => {}
        }
    }
    let stored = gather(&mut sc)?;
    Ok((sc, stored))
}

/// The files of `sc` outside its data directory, read from this host.
fn gather(sc: &mut ServerConfig) -> Result<Stored> {
    let dd = Path::new(&sc.data_directory).to_path_buf();
    let outside = |p: &Path| !p.starts_with(&dd);
    let mut stored = Stored::default();
    let mut wanted: Vec<PathBuf> = Vec::new();
    if let Some(cf) = &sc.config_file {
        let cf = PathBuf::from(cf);
        let loaded = conf::load(&conf::Disk, &cf)?;
        wanted.push(cf);
        for inc in &loaded.includes {
            if inc.kind == "include_dir" {
                if outside(&inc.path) {
                    sc.dirs.push(inc.path.display().to_string());
                }
                wanted.extend(conf::dir_files(&conf::Disk, &inc.path));
            } else if inc.kind == "include" || inc.path.exists() {
                wanted.push(inc.path.clone());
            }
        }
    }
    wanted.extend(sc.hba_file.iter().map(PathBuf::from));
    wanted.extend(sc.ident_file.iter().map(PathBuf::from));
    for p in wanted {
        if !outside(&p) || stored.files.contains_key(&p) {
            continue;
        }
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                sc.stored.push(p.display().to_string());
                stored.files.insert(p, text);
            }
            Err(e) => {
                tracing::warn!(
                    "{} is outside the data directory and cannot be read ({e}): the backup holds no copy of it",
                    p.display()
                );
                sc.unreadable.push(format!("{} ({e})", p.display()));
            }
        }
    }
    Ok(stored)
}

/// Stores `stored` as the backup's object; returns its version id.
pub async fn put(
    store: &dyn Store,
    codec: &Codec,
    id: &str,
    stored: &Stored,
) -> Result<Option<String>> {
    let body = serde_json::to_vec(stored)?;
    let up = codec
        .upload(store, &key(id), std::io::Cursor::new(body))
        .await
        .context("storing the server's configuration files")?;
    Ok(up.version)
}

/// The stored files of backup `id` (empty when it stored none).
pub async fn get(store: &dyn Store, codec: &Codec, id: &str, sc: &ServerConfig) -> Result<Stored> {
    if sc.stored.is_empty() {
        return Ok(Stored::default());
    }
    let text = codec.read_text(store, &key(id)).await?.with_context(|| {
        format!(
            "backup {id} lists configuration files but {} is missing",
            store.locate(&key(id))
        )
    })?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not walvault's server configuration",
            store.locate(&key(id))
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_what_lies_outside_the_data_directory() {
        let (d, etc) = crate::testing::temp_path("etc");
        let data = d.path().join("data");
        std::fs::create_dir_all(etc.join("conf.d")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            etc.join("postgresql.conf"),
            format!(
                "data_directory = '{}'\ninclude_dir = 'conf.d'\ninclude_if_exists 'absent.conf'\ninclude '{}'\n",
                data.display(),
                data.join("inside.conf").display()
            ),
        )
        .unwrap();
        std::fs::write(etc.join("conf.d/a.conf"), "work_mem = 1MB\n").unwrap();
        std::fs::write(etc.join("pg_hba.conf"), "local all all peer\n").unwrap();
        std::fs::write(data.join("inside.conf"), "").unwrap();
        let mut sc = ServerConfig {
            data_directory: data.display().to_string(),
            config_file: Some(etc.join("postgresql.conf").display().to_string()),
            hba_file: Some(etc.join("pg_hba.conf").display().to_string()),
            ident_file: Some(etc.join("pg_ident.conf").display().to_string()),
            ..Default::default()
        };
        let stored = gather(&mut sc).unwrap();
        let names: Vec<_> = stored
            .files
            .keys()
            .map(|p| p.strip_prefix(&etc).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["conf.d/a.conf", "pg_hba.conf", "postgresql.conf"]);
        assert_eq!(sc.dirs, [etc.join("conf.d").display().to_string()]);
        // The ident file is missing: recorded, not fatal.
        assert_eq!(sc.unreadable.len(), 1, "{:?}", sc.unreadable);
        assert!(sc.unreadable[0].contains("pg_ident.conf"));
    }
}
