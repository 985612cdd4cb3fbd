//! `dump-restore`: a stored dump decoded straight into `pg_restore` (never a
//! plaintext file on disk), into a server of the same or a newer major: the
//! point of a logical dump. A whole database goes into an empty (or new)
//! database in one transaction; `--table` brings single tables.

use super::{read_manifest, Manifest};
use crate::codec::Codec;
use crate::config::Config;
use crate::pg::{self, tools};
use crate::store::Store;
use crate::table::names::{ident, Qualified};
use anyhow::{bail, Context, Result};
use std::time::Instant;

pub struct Options {
    pub id: String,
    /// Which database of the dump (needed when it holds several).
    pub database: Option<String>,
    pub tables: Vec<Qualified>,
    /// The server and database to restore into (the dump's database name
    /// when the string names none).
    pub into: String,
    /// Apply the roles and tablespaces first (errors such as a role that
    /// exists are counted, not fatal).
    pub globals: bool,
}

/// What a restore did, for the caller's report (drill --dump).
pub struct Restored {
    pub database: String,
    pub tables: usize,
    pub seconds: f64,
    pub target_version: String,
}

pub async fn run(
    cfg: &Config,
    store: &dyn Store,
    codec: &Codec,
    opts: Options,
) -> Result<Restored> {
    let t0 = Instant::now();
    let manifest = read_manifest(store, &opts.id).await?;
    let dumped = manifest.database(opts.database.as_deref())?;
    if manifest.encrypted {
        codec.check_key().context("the dump is encrypted")?;
    }
    let schema = one_schema(&opts.tables)?;
    let named = opts
        .into
        .parse::<tokio_postgres::Config>()
        .context("--into is not a valid connection string")?
        .get_dbname()
        .is_some();
    let mut target = pg::conn::resolve(Some(&opts.into))?;
    if !named {
        target.dbname(&dumped.database);
    }
    let db = target.get_dbname().unwrap_or_default().to_string();
    let mut maintenance = target.clone();
    maintenance.dbname("postgres");
    let admin = pg::conn::connect_config(maintenance.clone())
        .await
        .context("connecting to the target server")?;
    let row = admin
        .query_one(
            "select current_setting('server_version'), current_setting('server_version_num')::int, \
             exists (select 1 from pg_database where datname = $1)",
            &[&db],
        )
        .await?;
    let target_version: String = row.get(0);
    let target_major = pg::majors::of_version_num(row.get::<_, i32>(1) as i64);
    let exists: bool = row.get(2);
    println!(
        "dump:     {} database {} of PostgreSQL {} (pg_dump {}), taken {}",
        manifest.id,
        dumped.database,
        manifest.server_version,
        manifest.pg_dump_major,
        manifest.finished_at.to_rfc3339()
    );
    println!(
        "into:     database {db} at {}, PostgreSQL {target_version}",
        pg::conn::describe(&target)
    );
    if target_major < manifest.server_major {
        bail!(
            "the target runs PostgreSQL {target_major}, older than the dump's {}: restore into PostgreSQL {} or newer",
            manifest.server_major,
            manifest.server_major
        );
    }
    let pg_restore = tools::find(
        "pg_restore",
        manifest.pg_dump_major.max(target_major),
        &cfg.postgres,
    )?;

    if opts.globals {
        apply_globals(cfg, store, codec, &manifest, &maintenance, target_major).await?;
    }
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {}", ident(&db)))
            .await
            .with_context(|| format!("creating database {db}"))?;
        println!("created:  database {db}");
    } else if opts.tables.is_empty() {
        let client = pg::conn::connect_config(target.clone()).await?;
        let n = user_tables(&client).await?;
        if n > 0 {
            bail!("database {db} already holds {n} tables; dump-restore loads a whole database into an empty or new one (--into a new name), or single tables with --table");
        }
    }

    // pg_restore --table makes the table, not its schema.
    let mut made_schema = None;
    if let Some(s) = &schema {
        let client = pg::conn::connect_config(target.clone()).await?;
        let present = client
            .query_opt("select 1 from pg_namespace where nspname = $1", &[s])
            .await?
            .is_some();
        if !present {
            client
                .batch_execute(&format!("CREATE SCHEMA {}", ident(s)))
                .await
                .with_context(|| format!("creating schema {s}"))?;
            made_schema = Some((client, s.clone()));
        }
    }

    let t = Instant::now();
    let (conninfo, password) = pg::conn::to_libpq(&target);
    let mut cmd = pg_restore.command();
    cmd.args(["--exit-on-error", "--single-transaction", "--dbname"])
        .arg(conninfo);
    if let Some(s) = &schema {
        cmd.arg("--schema").arg(s);
    }
    for table in &opts.tables {
        cmd.arg("--table").arg(&table.name);
    }
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let (fed, stdin) = tools::Fed::spawn(cmd, "pg_restore")?;
    let fed_result = codec
        .download(store, &dumped.object.key, tools::Tolerant::new(stdin))
        .await;
    // pg_restore's own words first: a closed pipe only says it stopped reading.
    let finished = match fed_result {
        Ok(Some((_, stdin))) => {
            drop(stdin);
            fed.finish().map(|_| ())
        }
        Ok(None) => {
            let _ = fed.finish();
            bail!(
                "{} is missing from the repository",
                store.locate(&dumped.object.key)
            );
        }
        Err(e) => {
            let restore = fed.finish();
            restore.and(Err(anyhow::Error::new(e)))
        }
    };
    if finished.is_err() {
        if let Some((client, s)) = &made_schema {
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {}", ident(s)))
                .await;
        }
    }
    finished.with_context(|| {
        format!(
            "restoring {} (one transaction: nothing of it was kept)",
            dumped.object.key
        )
    })?;
    if let Some((_, s)) = &made_schema {
        println!("created:  schema {s}");
    }
    let client = pg::conn::connect_config(target.clone()).await?;
    let tables = user_tables(&client).await?;
    println!(
        "restored: {} into database {db}: {} tables now (the dump listed {}) in {:.1} s",
        if opts.tables.is_empty() {
            "everything".to_string()
        } else {
            opts.tables
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        tables,
        dumped.tables.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(Restored {
        database: db,
        tables,
        seconds: t0.elapsed().as_secs_f64(),
        target_version,
    })
}

/// pg_restore takes one `--schema` with its `--table` names.
fn one_schema(tables: &[Qualified]) -> Result<Option<String>> {
    let mut schemas: Vec<&str> = tables.iter().map(|t| t.schema.as_str()).collect();
    schemas.dedup();
    match schemas.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.to_string())),
        _ => bail!("--table: give tables of one schema per dump-restore"),
    }
}

async fn user_tables(c: &tokio_postgres::Client) -> Result<usize> {
    let row = c
        .query_one(
            "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'p') and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as usize)
}

/// The dump's roles and tablespaces through psql; statements that fail (a
/// role that exists already) are counted and shown, not fatal.
async fn apply_globals(
    cfg: &Config,
    store: &dyn Store,
    codec: &Codec,
    manifest: &Manifest,
    maintenance: &tokio_postgres::Config,
    target_major: u32,
) -> Result<()> {
    let Some(globals) = &manifest.globals else {
        bail!(
            "dump {} holds no globals (it was taken with --no-globals)",
            manifest.id
        );
    };
    let psql = tools::find("psql", target_major, &cfg.postgres)?;
    let (conninfo, password) = pg::conn::to_libpq(maintenance);
    let mut cmd = psql.command();
    cmd.args(["--no-psqlrc", "--quiet", "--dbname"])
        .arg(conninfo);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let (fed, stdin) = tools::Fed::spawn(cmd, "psql")?;
    match codec
        .download(store, &globals.key, tools::Tolerant::new(stdin))
        .await
    {
        Ok(Some((_, stdin))) => drop(stdin),
        Ok(None) => bail!(
            "{} is missing from the repository",
            store.locate(&globals.key)
        ),
        Err(e) => {
            let _ = fed.finish();
            return Err(e).context("reading the dump's globals");
        }
    }
    let (_, err) = fed.finish()?;
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR:")).collect();
    match errors.first() {
        None => println!("globals:  roles and tablespaces applied"),
        Some(first) => println!(
            "globals:  applied; {} statement(s) failed, e.g. {}",
            errors.len(),
            first.trim()
        ),
    }
    Ok(())
}
