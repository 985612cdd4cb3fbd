//! `dump-push`: each database's `pg_dump --format=custom` streamed through the
//! codec (zstd, age, sha256) into the repository, the globals beside, the
//! manifest last. A pg_dump that fails stores nothing under its key: the codec
//! hands the store an error, never a clean end.

use super::{database_key, globals_key, manifest_key, Dumped, Manifest, Object, TableEstimate};
use crate::codec::{Codec, Uploaded};
use crate::config::Config;
use crate::pg::{self, tools};
use crate::store::{Class, Mode, Store};
use anyhow::{Context, Result};
use chrono::Utc;
use std::time::Instant;

pub struct Options {
    /// The databases to dump; empty: every database that accepts connections
    /// (templates excepted).
    pub databases: Vec<String>,
    pub globals: bool,
}

pub async fn run(cfg: &Config, store: &dyn Store, codec: &Codec, opts: Options) -> Result<String> {
    let started_at = Utc::now();
    let id = format!(
        "{}{}",
        super::ID_PREFIX,
        started_at.format("%Y%m%dT%H%M%SZ")
    );
    let base = pg::conn::resolve(cfg.postgres.conninfo.as_deref())?;
    let client = pg::conn::connect_config(base.clone()).await?;
    let row = client
        .query_one(
            "select current_setting('server_version'), current_setting('server_version_num')::int, \
             (select system_identifier::text from pg_control_system())",
            &[],
        )
        .await?;
    let server_version: String = row.get(0);
    let server_major = pg::majors::of_version_num(row.get::<_, i32>(1) as i64);
    let system_identifier: String = row.get(2);
    // A repository belongs to one cluster: its dumps too.
    if let Some(repo) = crate::repo::load(store).await? {
        if repo.system_identifier != system_identifier {
            let ids = (
                repo.system_identifier.parse().unwrap_or_default(),
                system_identifier.parse().unwrap_or_default(),
            );
            return Err(crate::repo::mismatch(store, ids.0, ids.1)
                .await
                .context("refused: the server to dump is not the repository's cluster"));
        }
    }
    let mut databases = opts.databases.clone();
    if databases.is_empty() {
        databases = client
            .query(
                "select datname from pg_database where datallowconn and not datistemplate order by 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    } else {
        for db in &databases {
            let found = client
                .query_opt("select 1 from pg_database where datname = $1", &[db])
                .await?;
            if found.is_none() {
                anyhow::bail!(
                    "database {db} does not exist on the server at {}",
                    pg::conn::describe(&base)
                );
            }
        }
    }
    let pg_dump = tools::find("pg_dump", server_major, &cfg.postgres)?;
    let pg_dumpall = match opts.globals {
        true => Some(tools::find("pg_dumpall", server_major, &cfg.postgres)?),
        false => None,
    };
    tracing::info!(
        "dump {id}: {} database(s) of PostgreSQL {server_version} with pg_dump {}",
        databases.len(),
        pg_dump.major
    );

    let mut dumped = Vec::new();
    for db in &databases {
        let t = Instant::now();
        let mut cfg_db = base.clone();
        cfg_db.dbname(db);
        let tables = estimates(cfg_db.clone()).await?;
        let key = database_key(&id, db);
        let mut cmd = pg_dump.command();
        cmd.arg("--format=custom").arg("--dbname");
        let up = stream(store, codec, &key, cmd, &cfg_db, "pg_dump")
            .await
            .with_context(|| format!("dumping database {db}"))?;
        tracing::info!(
            "dumped {db}: {} tables, {} MiB, {} MiB stored, in {:.1} s",
            tables.len(),
            up.trailer.plain_len >> 20,
            up.stored_len >> 20,
            t.elapsed().as_secs_f64()
        );
        dumped.push(Dumped {
            database: db.clone(),
            object: object(key, &up),
            tables,
        });
    }
    let globals = match pg_dumpall {
        Some(tool) => {
            let key = globals_key(&id);
            let mut cmd = tool.command();
            cmd.arg("--globals-only").arg("--dbname");
            let mut cfg_db = base.clone();
            cfg_db.dbname("postgres");
            let up = stream(
                store,
                codec,
                &key,
                cmd,
                &cfg_db,
                "pg_dumpall --globals-only",
            )
            .await
            .context("dumping the roles and tablespaces")?;
            Some(object(key, &up))
        }
        None => None,
    };
    let manifest = Manifest {
        format: 1,
        id: id.clone(),
        started_at,
        finished_at: Utc::now(),
        host: crate::host::name(),
        server_version,
        server_major,
        system_identifier,
        pg_dump_major: pg_dump.major,
        encrypted: codec.encrypts(),
        databases: dumped,
        globals,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    store
        .put(&manifest_key(&id), Box::new(std::io::Cursor::new(json)))
        .await
        .context("writing the dump's manifest")?;
    tracing::info!(
        "dump {id} stored: {} MiB, {} MiB stored",
        manifest.raw_bytes() >> 20,
        manifest.stored_bytes() >> 20
    );
    Ok(id)
}

/// Runs `cmd` (its last argument to come: the connection string) and stores
/// its stdout under `key`, encoded.
async fn stream(
    store: &dyn Store,
    codec: &Codec,
    key: &str,
    mut cmd: std::process::Command,
    conn: &tokio_postgres::Config,
    what: &'static str,
) -> Result<Uploaded> {
    let (conninfo, password) = pg::conn::to_libpq(conn);
    cmd.arg(conninfo);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let (up, _) = codec
        .upload_from(store, key, Class::Standard, Mode::Create, move |w| {
            tools::copy_stdout(cmd, what, w)
        })
        .await?;
    Ok(up)
}

fn object(key: String, up: &Uploaded) -> Object {
    Object {
        key,
        raw_bytes: up.trailer.plain_len,
        stored_bytes: up.stored_len,
        sha256: hex::encode(up.trailer.plain_sha256),
        version: up.version.clone(),
    }
}

/// Every table of a database with the planner's row estimate.
async fn estimates(conn: tokio_postgres::Config) -> Result<Vec<TableEstimate>> {
    let client = pg::conn::connect_config(conn).await?;
    let rows = client
        .query(
            "select n.nspname, c.relname, case when c.reltuples < 0 then null else c.reltuples::int8 end \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'p') and n.nspname <> 'information_schema' \
               and n.nspname !~ '^pg_' order by 1, 2",
            &[],
        )
        .await
        .context("listing the tables")?;
    Ok(rows
        .iter()
        .map(|r| TableEstimate {
            schema: r.get(0),
            name: r.get(1),
            rows: r.get(2),
        })
        .collect())
}
