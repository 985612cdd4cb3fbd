//! `restore-table`: one table (or several, or a schema) back as it was at any
//! point in time, without rolling the cluster back. The backup is restored into
//! a scratch cluster (the drill's: private socket, nothing acting outward,
//! removed on any exit), recovered to the target and promoted; the tables are
//! renamed there when they go beside the live ones, dumped by pg_dump with their
//! indexes, constraints, sequences' values and grants, and loaded by psql into
//! the destination in one transaction (with the DROP of the live tables, for
//! `--replace`), or written as a custom-format dump file.
//!
//! Everything that can be refused is refused before production is written:
//! names taken, a table to replace that others depend on, a table that did not
//! exist at the target, a target outside the window.

pub mod names;
pub mod objects;

use crate::codec::Codec;
use crate::config::Config;
use crate::pg::{self, tools};
use crate::recover::{self, target::Target};
use crate::scratch::{self, Scratch, Source};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use names::{ident, Qualified};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to bring back.
#[derive(Clone, Debug)]
pub enum Selection {
    Tables(Vec<Qualified>),
    Schema(String),
}

/// Where it goes.
#[derive(Clone, Debug)]
pub enum Destination {
    /// Beside the live objects, under a new name (`--as`, else a stamped one).
    Beside {
        into: Option<String>,
        rename: Option<String>,
    },
    /// In place of the live tables, in one transaction.
    Replace { into: Option<String>, cascade: bool },
    /// A custom-format dump file (pg_restore reads it).
    File(PathBuf),
}

pub struct Options {
    pub selection: Selection,
    pub database: String,
    pub destination: Destination,
    pub source: Source,
    pub exclusive: bool,
    pub scratch_root: PathBuf,
}

/// A table as restored: its name at the target, its name in the destination
/// (or the file), its rows.
struct Restored {
    at_target: Qualified,
    loaded_as: Qualified,
    rows: i64,
    /// Its oid in the scratch cluster.
    oid: u32,
    /// A partition brought with the partitioned table at this index (its rows
    /// are counted with it).
    part_of: Option<usize>,
}

/// What production was checked for before anything was restored.
struct Preflight {
    /// The destination's connection settings (not for `--to-file`).
    dest: Option<tokio_postgres::Config>,
    /// The new name of each table (in the order asked), or of the schema,
    /// beside the live ones.
    new_names: Vec<String>,
    /// Dependents dropped with replaced tables (`--cascade`).
    cascaded: Vec<String>,
}

pub async fn run(cfg: &Config, store: Arc<dyn Store>, codec: &Codec, opts: Options) -> Result<()> {
    if unsafe { libc::geteuid() } == 0 {
        bail!("restore-table starts PostgreSQL, which refuses to run as root; run it as the cluster's OS user (e.g. postgres)");
    }
    let stamp = chrono::Utc::now().format("%Y%m%d_%H%M%S").to_string();
    let pre = preflight(cfg, &opts, &stamp).await?;

    let t0 = Instant::now();
    let scratch = Scratch::create(&opts.scratch_root, "table", &stamp)?;
    let mut ropts = scratch.recover_options(&opts.source, cfg);
    ropts.exclusive = opts.exclusive;
    let outcome = tokio::select! {
        r = restore(cfg, store, codec, &opts, &pre, &ropts, &scratch, t0) => r,
        sig = scratch::interrupted() => Err(anyhow::anyhow!("interrupted by {sig} (the load into the destination is one transaction: whole or nothing)")),
    };
    let outcome = outcome.map_err(|e| {
        let msg = format!("{e:#}");
        match pg::postmaster::tail(&recover::log_path(&ropts), 3) {
            Some(tail) if msg.contains("recovery") && !msg.contains("PostgreSQL stopped") => {
                anyhow::anyhow!("{msg} (server log: {tail})")
            }
            _ => e,
        }
    });
    drop(scratch); // stops the server and removes the directory
    outcome?;
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The destination's checks, before anything is restored: names free for a
/// copy beside the live tables, tables present and free of dependents (or
/// `--cascade`) for `--replace`, no file in the way for `--to-file`.
async fn preflight(cfg: &Config, opts: &Options, stamp: &str) -> Result<Preflight> {
    let mut pre = Preflight {
        dest: None,
        new_names: Vec::new(),
        cascaded: Vec::new(),
    };
    let into = match &opts.destination {
        Destination::File(path) => {
            if path.exists() {
                bail!(
                    "{} exists; restore-table never overwrites a file",
                    path.display()
                );
            }
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = parent {
                if !dir.is_dir() {
                    bail!("directory {} does not exist", dir.display());
                }
            }
            return Ok(pre);
        }
        Destination::Beside { into, .. } | Destination::Replace { into, .. } => into.as_deref(),
    };
    let dest = destination_config(into, cfg.postgres.conninfo.as_deref(), &opts.database)?;
    let client = pg::conn::connect_config(dest.clone())
        .await
        .context("connecting to the destination")?;
    let where_ = format!(
        "database {} at {}",
        dest.get_dbname().unwrap_or("?"),
        pg::conn::describe(&dest)
    );
    match (&opts.destination, &opts.selection) {
        (Destination::Beside { rename, .. }, Selection::Tables(tables)) => {
            if rename.is_some() && tables.len() > 1 {
                bail!("--as names one table; without it each table gets NAME_restored_{stamp}");
            }
            for t in tables {
                let new = rename
                    .clone()
                    .unwrap_or_else(|| names::restored_copy(&t.name, stamp));
                if !objects::taken(&client, &t.schema, std::slice::from_ref(&new))
                    .await?
                    .is_empty()
                {
                    bail!("{}.{new} already exists in {where_}; choose another name with --as (restore-table never overwrites without --replace)", t.schema);
                }
                pre.new_names.push(new);
            }
        }
        (Destination::Beside { rename, .. }, Selection::Schema(schema)) => {
            let new = rename
                .clone()
                .unwrap_or_else(|| names::restored_copy(schema, stamp));
            if objects::schema_exists(&client, &new).await? {
                bail!("schema {new} already exists in {where_}; choose another name with --as");
            }
            pre.new_names.push(new);
        }
        (Destination::Replace { cascade, .. }, Selection::Tables(tables)) => {
            let mut oids = Vec::new();
            for t in tables {
                match objects::table_oid(&client, t).await? {
                    Some(oid) => oids.push(oid),
                    None => bail!("table {t} does not exist in {where_}; --replace swaps a live table (restore beside it with --as)"),
                }
            }
            for (t, oid) in tables.iter().zip(&oids) {
                let deps = objects::dependents(&client, *oid, &oids).await?;
                if deps.is_empty() {
                    continue;
                }
                if !cascade {
                    bail!(
                        "refused: {} depend{} on table {t} ({}); --cascade drops {} with it, or restore beside it with --as and move the rows",
                        deps.len(),
                        if deps.len() == 1 { "s" } else { "" },
                        deps.join(", "),
                        if deps.len() == 1 { "it" } else { "them" }
                    );
                }
                pre.cascaded.extend(deps);
            }
        }
        (Destination::Replace { .. }, Selection::Schema(_)) => {
            bail!("--replace swaps tables: name them with --table (a schema is restored beside the live one, --as NEW_SCHEMA)")
        }
        (Destination::File(_), _) => unreachable!("returned above"),
    }
    pre.dest = Some(dest);
    Ok(pre)
}

/// The destination's settings: `--into` as given (its database, else
/// `--database`), else production's (`postgres.conninfo`, the environment)
/// with `--database`.
fn destination_config(
    into: Option<&str>,
    production: Option<&str>,
    database: &str,
) -> Result<tokio_postgres::Config> {
    match into {
        Some(s) => {
            let named = s
                .parse::<tokio_postgres::Config>()
                .context("--into is not a valid connection string")?
                .get_dbname()
                .is_some();
            let mut c = pg::conn::resolve(Some(s))?;
            if !named {
                c.dbname(database);
            }
            Ok(c)
        }
        None => {
            let mut c = pg::conn::resolve(production)?;
            c.dbname(database);
            Ok(c)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn restore(
    cfg: &Config,
    store: Arc<dyn Store>,
    codec: &Codec,
    opts: &Options,
    pre: &Preflight,
    ropts: &recover::Options,
    scratch: &Scratch,
    t0: Instant,
) -> Result<()> {
    let plan = recover::plan(store.as_ref(), codec, ropts).await?;
    println!(
        "restore-table: backup {} (ended {}), target {}, database {}, scratch {}",
        plan.backup.id,
        plan.backup.stop_time.to_rfc3339(),
        ropts.target.describe(),
        opts.database,
        scratch.dir.display()
    );
    // The client programs are checked before the long part.
    let pg_dump = tools::find("pg_dump", plan.major, &cfg.postgres)?;
    let psql = match pre.dest {
        Some(_) => Some(tools::find("psql", pg_dump.major, &cfg.postgres)?),
        None => None,
    };
    let plan_s = t0.elapsed().as_secs_f64();

    let t = Instant::now();
    let (restored, _) = recover::restore_into(cfg, store.clone(), codec, ropts, &plan).await?;
    let restore_s = t.elapsed().as_secs_f64();
    println!(
        "restored: {} files, {} MiB in {restore_s:.1} s",
        restored.files,
        restored.bytes >> 20
    );

    let t = Instant::now();
    let end = recover::start(ropts, &plan, &scratch.server_settings()).await?;
    let log = std::fs::read_to_string(recover::log_path(ropts)).unwrap_or_default();
    let reached = recover::end::check(&ropts.target, ropts.exclusive, &plan, &end, &log)?;
    let recovery_s = t.elapsed().as_secs_f64();
    println!(
        "recovered: LSN {} on timeline {}, last replayed commit {} in {recovery_s:.1} s ({reached})",
        end.lsn,
        end.timeline,
        end.last_commit
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "none".into()),
    );

    let t = Instant::now();
    let admin = scratch.connect("postgres").await?;
    if admin
        .query_opt(
            "select 1 from pg_database where datname = $1",
            &[&opts.database],
        )
        .await?
        .is_none()
    {
        bail!(
            "database {} did not exist at {}; nothing was written",
            opts.database,
            ropts.target.describe()
        );
    }
    let db = scratch.connect(&opts.database).await?;
    let mut tables = resolve_selection(&db, opts, &ropts.target).await?;
    if let Some(client) = destination_client(pre).await? {
        rename_beside(&db, &client, opts, pre, &mut tables).await?;
    }
    for t in tables.iter_mut().filter(|t| t.part_of.is_none()) {
        t.rows = objects::count_rows(&db, &t.loaded_as).await?;
    }
    let prepare_s = t.elapsed().as_secs_f64();
    println!(
        "dumping: {} as at the target (pg_dump {})",
        tables
            .iter()
            .enumerate()
            .filter(|(_, t)| t.part_of.is_none())
            .map(|(i, t)| {
                match tables.iter().filter(|p| p.part_of == Some(i)).count() {
                    0 => format!("{} ({} rows)", t.at_target, t.rows),
                    n => format!("{} ({} rows in {n} partitions)", t.at_target, t.rows),
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        pg_dump.major
    );

    let t = Instant::now();
    let dump = dump_command(
        &pg_dump,
        scratch,
        opts,
        pre,
        &tables,
        if pre.dest.is_some() {
            "plain"
        } else {
            "custom"
        },
    );
    match (&opts.destination, &pre.dest, &psql) {
        (Destination::File(path), _, _) => {
            dump_to_file(dump, path)?;
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            println!(
                "written: {} ({} KiB, custom format: pg_restore -d DB {} loads it) in {:.1} s",
                path.display(),
                size >> 10,
                path.display(),
                t.elapsed().as_secs_f64()
            );
        }
        (_, Some(dest), Some(psql)) => {
            dump_into(dump, psql, dest, opts, &tables)?;
            let client = pg::conn::connect_config(dest.clone()).await?;
            for t in tables.iter().filter(|t| t.part_of.is_none()) {
                let rows = objects::count_rows(&client, &t.loaded_as).await?;
                if rows != t.rows {
                    bail!(
                        "{} holds {rows} rows after the load, {} were dumped",
                        t.loaded_as,
                        t.rows
                    );
                }
            }
            let verb = match opts.destination {
                Destination::Replace { .. } => "replaced",
                _ => "loaded",
            };
            for t in tables.iter().filter(|t| t.part_of.is_none()) {
                println!(
                    "{verb}: {} ({} rows, as at the target)",
                    t.loaded_as, t.rows
                );
            }
            if !pre.cascaded.is_empty() {
                println!("dropped with --cascade: {}", pre.cascaded.join(", "));
            }
            println!(
                "into:     database {} at {} in one transaction, {:.1} s",
                dest.get_dbname().unwrap_or("?"),
                pg::conn::describe(dest),
                t.elapsed().as_secs_f64()
            );
        }
        _ => unreachable!("a destination server has its psql"),
    }
    println!(
        "timings:  plan {plan_s:.1} s, restore {restore_s:.1} s, recovery {recovery_s:.1} s, tables found and counted {prepare_s:.1} s, dump and load {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn destination_client(pre: &Preflight) -> Result<Option<tokio_postgres::Client>> {
    match &pre.dest {
        Some(d) => Ok(Some(
            pg::conn::connect_config(d.clone())
                .await
                .context("connecting to the destination")?,
        )),
        None => Ok(None),
    }
}

/// The tables asked for, as they were at the target: each must exist there.
async fn resolve_selection(
    db: &tokio_postgres::Client,
    opts: &Options,
    target: &Target,
) -> Result<Vec<Restored>> {
    let tables = match &opts.selection {
        Selection::Tables(t) => t.clone(),
        Selection::Schema(s) => {
            if !objects::schema_exists(db, s).await? {
                bail!(
                    "schema {s} did not exist at {} in database {}; nothing was written",
                    target.describe(),
                    opts.database
                );
            }
            objects::tables_of(db, s).await?
        }
    };
    let with_partitions = matches!(opts.selection, Selection::Tables(_));
    let mut out = Vec::new();
    for t in tables {
        let Some(oid) = objects::table_oid(db, &t).await? else {
            bail!(
                "table {t} did not exist at {} in database {}; nothing was written",
                target.describe(),
                opts.database
            );
        };
        let root = out.len();
        out.push(Restored {
            loaded_as: t.clone(),
            at_target: t,
            rows: 0,
            oid,
            part_of: None,
        });
        if with_partitions {
            for (p, part_oid) in objects::partitions(db, oid).await? {
                out.push(Restored {
                    loaded_as: p.clone(),
                    at_target: p,
                    rows: 0,
                    oid: part_oid,
                    part_of: Some(root),
                });
            }
        }
    }
    Ok(out)
}

/// For a copy beside the live tables: renames them in the scratch cluster
/// (with their indexes and owned sequences, whose names are per schema), after
/// checking that none of the new names is taken in the destination.
async fn rename_beside(
    db: &tokio_postgres::Client,
    dest: &tokio_postgres::Client,
    opts: &Options,
    pre: &Preflight,
    tables: &mut [Restored],
) -> Result<()> {
    let Destination::Beside { .. } = opts.destination else {
        return Ok(());
    };
    let mut sql = Vec::new();
    match &opts.selection {
        Selection::Schema(schema) => {
            let new = pre.new_names[0].clone();
            sql.push(format!(
                "ALTER SCHEMA {} RENAME TO {}",
                ident(schema),
                ident(&new)
            ));
            for t in tables.iter_mut() {
                t.loaded_as.schema = new.clone();
            }
        }
        Selection::Tables(_) => {
            // The new name of each table: the asked ones in order, a partition
            // named after its partitioned table's.
            let mut asked = pre.new_names.iter();
            let mut new_names: Vec<String> = Vec::new();
            for t in tables.iter() {
                let new = match t.part_of {
                    None => asked.next().expect("a name for each table asked").clone(),
                    Some(root) => names::derived(
                        &t.at_target.name,
                        &tables[root].at_target.name,
                        &new_names[root],
                    ),
                };
                new_names.push(new);
            }
            for (t, new) in tables.iter_mut().zip(new_names) {
                let old = &t.at_target;
                let oid = t.oid;
                if t.part_of.is_none() {
                    // A partition asked for alone comes back as a table of its
                    // own: attached to the live parent it would meet its own rows.
                    if let Some(parent) = objects::parent_of(db, oid).await? {
                        sql.push(format!(
                            "ALTER TABLE {} DETACH PARTITION {}",
                            parent.sql(),
                            old.sql()
                        ));
                    }
                }
                for name in objects::own_constraints(db, oid).await? {
                    let renamed = names::derived(&name, &old.name, &new);
                    sql.push(format!(
                        "ALTER TABLE {} RENAME CONSTRAINT {} TO {}",
                        old.sql(),
                        ident(&name),
                        ident(&renamed)
                    ));
                }
                let mut wanted = vec![new.clone()];
                for (name, kind) in objects::companions(db, oid).await? {
                    let renamed = names::derived(&name, &old.name, &new);
                    sql.push(objects::rename_sql(kind, &old.schema, &name, &renamed));
                    wanted.push(renamed);
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = wanted.iter().find(|n| !seen.insert(*n)) {
                    bail!("restoring {old} as {new} would give two objects the name {dup}; choose another name with --as");
                }
                let taken = objects::taken(dest, &old.schema, &wanted).await?;
                if !taken.is_empty() {
                    bail!(
                        "restoring {old} as {new} needs the names {} in schema {}, taken in the destination; choose another name with --as",
                        taken.join(", "),
                        old.schema
                    );
                }
                sql.push(objects::rename_sql("TABLE", &old.schema, &old.name, &new));
                t.loaded_as.name = new;
            }
        }
    }
    let script = format!("BEGIN; {}; COMMIT;", sql.join("; "));
    db.batch_execute(&script)
        .await
        .context("renaming in the scratch cluster")?;
    Ok(())
}

/// pg_dump of exactly the selected objects from the scratch server, in
/// `format`, to its stdout.
fn dump_command(
    pg_dump: &tools::Tool,
    scratch: &Scratch,
    opts: &Options,
    pre: &Preflight,
    tables: &[Restored],
    format: &str,
) -> std::process::Command {
    let mut cmd = pg_dump.command();
    cmd.arg("--dbname")
        .arg(scratch.conninfo(&opts.database))
        .args(["--strict-names", "--no-subscriptions"])
        .arg(format!("--format={format}"));
    match (&opts.selection, &opts.destination) {
        (Selection::Schema(_), Destination::Beside { .. }) => {
            cmd.arg("--schema").arg(ident(&pre.new_names[0]));
        }
        (Selection::Schema(s), _) => {
            cmd.arg("--schema").arg(ident(s));
        }
        (Selection::Tables(_), _) => {
            for t in tables {
                cmd.arg("--table").arg(t.loaded_as.sql());
            }
        }
    }
    cmd
}

/// `--to-file`: a custom-format dump written beside the file's name, made
/// durable, then renamed to it.
fn dump_to_file(mut cmd: std::process::Command, file: &Path) -> Result<()> {
    let partial = file.with_extension("walvault-partial");
    cmd.arg("--file").arg(&partial);
    let r = tools::run(cmd, "pg_dump");
    if r.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    r?;
    crate::files::publish(&partial, file)
}

/// pg_dump's plain SQL streamed into psql (after the DROP of the live tables,
/// for `--replace`), all in one transaction: committed only when pg_dump ended
/// well and psql ran every statement; a pg_dump that fails gets its psql
/// killed before the end of input, so the transaction is rolled back.
fn dump_into(
    dump: std::process::Command,
    psql: &tools::Tool,
    dest: &tokio_postgres::Config,
    opts: &Options,
    tables: &[Restored],
) -> Result<()> {
    let (conninfo, password) = pg::conn::to_libpq(dest);
    let mut cmd = psql.command();
    cmd.args([
        "--no-psqlrc",
        "--quiet",
        "--set",
        "ON_ERROR_STOP=1",
        "--single-transaction",
        "--file",
        "-",
    ])
    .arg("--dbname")
    .arg(conninfo);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let failed = |e: anyhow::Error| {
        anyhow::anyhow!(
            "loading into the destination failed, nothing of it was kept (one transaction): {e:#}"
        )
    };
    let (mut fed, mut stdin) = tools::Fed::spawn(cmd, "psql")?;
    let fed_all = || -> std::io::Result<u64> {
        if let Destination::Replace { cascade, .. } = opts.destination {
            let drop = format!(
                "DROP TABLE {}{};\n",
                tables
                    .iter()
                    .filter(|t| t.part_of.is_none())
                    .map(|t| t.at_target.sql())
                    .collect::<Vec<_>>()
                    .join(", "),
                if cascade { " CASCADE" } else { "" }
            );
            std::io::Write::write_all(&mut stdin, drop.as_bytes())?;
        }
        tools::copy_stdout(dump, "pg_dump", &mut stdin)
    };
    match fed_all() {
        Ok(_) => {
            drop(stdin);
            fed.finish().map_err(failed)?;
            Ok(())
        }
        // psql stopped reading (a statement failed): its own words.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            drop(stdin);
            match fed.finish() {
                Err(p) => Err(failed(p)),
                Ok(_) => Err(failed(anyhow::anyhow!(
                    "psql stopped reading before the end of the dump"
                ))),
            }
        }
        // pg_dump failed: psql is killed before its input ends, so its
        // transaction never commits.
        Err(e) => {
            fed.kill();
            drop(stdin);
            let _ = fed.finish();
            Err(failed(anyhow::anyhow!("{e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for psql: takes its input into `log`, then writes
    /// "committed", as psql commits at the end of its input; or, with
    /// `fail`, refuses at once like a failing statement under ON_ERROR_STOP.
    fn fake_psql(dir: &Path, log: &Path, fail: bool) -> tools::Tool {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(if fail { "psql-failing" } else { "psql" });
        let body = if fail {
            "echo 'psql:<stdin>:9: ERROR:  insert violates foreign key' >&2; exit 3".to_string()
        } else {
            format!("cat > '{0}'; echo committed >> '{0}'", log.display())
        };
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        tools::Tool { path, major: 18 }
    }

    fn options() -> Options {
        Options {
            selection: Selection::Tables(Vec::new()),
            database: "app".into(),
            destination: Destination::Beside {
                into: None,
                rename: None,
            },
            source: Source {
                target: Target::Latest,
                timeline: None,
                backup: None,
                config_file: None,
                carry: Vec::new(),
            },
            exclusive: false,
            scratch_root: std::env::temp_dir(),
        }
    }

    /// dump_into with `script` as pg_dump; run again when the fake psql was
    /// "busy" (ETXTBSY: a test elsewhere forked while it was being written).
    fn run(script: &str, psql: &tools::Tool) -> Result<()> {
        let dest: tokio_postgres::Config = "host=/tmp dbname=app".parse().unwrap();
        for _ in 0..50 {
            let mut dump = std::process::Command::new("sh");
            dump.args(["-c", script]);
            match dump_into(dump, psql, &dest, &options(), &[]) {
                Err(e) if format!("{e:#}").contains("Text file busy") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r,
            }
        }
        panic!("{} stayed busy", psql.path.display())
    }

    #[test]
    fn a_failing_pg_dump_never_reaches_the_end_of_psqls_input() {
        let (dir, log) = crate::testing::temp_path("psql.log");
        let psql = fake_psql(dir.path(), &log, false);
        // pg_dump writes part of the dump, then fails.
        let e = run(
            "echo 'CREATE TABLE t ();'; sleep 0.2; echo 'pg_dump: error: lost' >&2; exit 1",
            &psql,
        )
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("nothing of it was kept") && msg.contains("lost"),
            "{msg}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        let seen = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !seen.contains("committed"),
            "psql reached the end of its input: {seen}"
        );
        // A pg_dump that ends well: psql gets everything and commits.
        run("echo 'CREATE TABLE t ();'", &psql).unwrap();
        let seen = std::fs::read_to_string(&log).unwrap();
        assert_eq!(seen, "CREATE TABLE t ();\ncommitted\n");
    }

    #[test]
    fn a_psql_that_stops_reading_is_reported_in_its_own_words() {
        let dir = tempfile::tempdir().unwrap();
        let psql = fake_psql(dir.path(), &dir.path().join("unused"), true);
        // More than a pipe holds: the writer meets the closed pipe.
        let e = run("head -c 5000000 /dev/zero", &psql).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("ERROR:  insert violates foreign key"), "{msg}");
    }

    #[test]
    fn the_destination_database_follows_into_else_the_option() {
        let c = destination_config(Some("host=/tmp port=5433 dbname=prod"), None, "app").unwrap();
        assert_eq!(c.get_dbname(), Some("prod"));
        let c = destination_config(Some("host=/tmp port=5433"), None, "app").unwrap();
        assert_eq!(c.get_dbname(), Some("app"));
        let c = destination_config(None, Some("host=/tmp dbname=postgres"), "app").unwrap();
        assert_eq!(c.get_dbname(), Some("app"));
        assert!(destination_config(Some("nonsense=1"), None, "app").is_err());
    }
}
