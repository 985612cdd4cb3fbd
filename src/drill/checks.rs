//! What a drill checks in the restored cluster: the built-in checks (every
//! database connects, every table reads, amcheck) and the user's SQL file of
//! named checks.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio_postgres::{types::Type, Client, SimpleQueryMessage};

/// One named query from the user's checks file.
#[derive(Clone, Debug, PartialEq)]
pub struct UserCheck {
    pub name: String,
    /// Database to run it in (default `postgres`).
    pub database: Option<String>,
    pub sql: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckResult {
    pub name: String,
    /// `builtin` or `user`.
    pub kind: &'static str,
    pub database: Option<String>,
    pub status: Status,
    pub detail: String,
}

impl CheckResult {
    pub fn builtin(name: String, database: Option<&str>, status: Status, detail: String) -> Self {
        CheckResult {
            name,
            kind: "builtin",
            database: database.map(str::to_string),
            status,
            detail,
        }
    }
}

/// Row count of one table, for the report (the evidence that it was read).
#[derive(Clone, Debug, Serialize)]
pub struct TableRows {
    pub database: String,
    pub table: String,
    pub rows: i64,
}

/// Parses a checks file:
///
/// ```sql
/// -- check: no orphaned order lines
/// -- database: shop
/// select l.id from order_lines l left join orders o on o.id = l.order_id where o.id is null;
///
/// -- check: orders arrived today
/// select count(*) > 0 from orders;
/// ```
///
/// Each check is one statement: it passes when it returns no rows, or, when it
/// returns a single boolean, when that is true.
pub fn parse(text: &str, origin: &str) -> Result<Vec<UserCheck>> {
    let mut checks: Vec<UserCheck> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(name) = directive(trimmed, "check") {
            if name.is_empty() {
                bail!("{origin} line {}: '-- check:' needs a name", n + 1);
            }
            if checks.iter().any(|c| c.name == name) {
                bail!("{origin} line {}: two checks are named '{name}'", n + 1);
            }
            checks.push(UserCheck {
                name: name.to_string(),
                database: None,
                sql: String::new(),
            });
            continue;
        }
        if let Some(db) = directive(trimmed, "database") {
            match checks.last_mut() {
                Some(c) if c.sql.trim().is_empty() && c.database.is_none() && !db.is_empty() => {
                    c.database = Some(db.to_string());
                    continue;
                }
                _ => bail!(
                    "{origin} line {}: '-- database: NAME' belongs right after a '-- check: NAME' line",
                    n + 1
                ),
            }
        }
        match checks.last_mut() {
            Some(c) => {
                c.sql.push_str(line);
                c.sql.push('\n');
            }
            None if trimmed.is_empty() || trimmed.starts_with("--") => {}
            None => bail!(
                "{origin} line {}: SQL before the first '-- check: NAME' line",
                n + 1
            ),
        }
    }
    for c in &mut checks {
        c.sql = c.sql.trim().trim_end_matches(';').trim_end().to_string();
        let code = c
            .sql
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"));
        if !code {
            bail!("{origin}: check '{}' has no query", c.name);
        }
    }
    if checks.is_empty() {
        bail!("{origin} holds no check; each starts with a '-- check: NAME' line");
    }
    Ok(checks)
}

/// `-- check: NAME` → `Some("NAME")` for `key` = `check`.
fn directive<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.strip_prefix("--")?.trim_start();
    let rest = rest.strip_prefix(key)?.trim_start();
    rest.strip_prefix(':').map(str::trim)
}

/// Runs one user check in a read-only transaction.
pub async fn run_user(client: &Client, check: &UserCheck, timeout_secs: u64) -> CheckResult {
    let status_detail = match user_verdict(client, check, timeout_secs).await {
        Ok(v) => v,
        Err(e) => (Status::Failed, format!("error: {e:#}")),
    };
    // The transaction may be aborted by the failure: end it either way.
    let _ = client.batch_execute("rollback").await;
    CheckResult {
        name: check.name.clone(),
        kind: "user",
        database: Some(
            check
                .database
                .clone()
                .unwrap_or_else(|| "postgres".to_string()),
        ),
        status: status_detail.0,
        detail: status_detail.1,
    }
}

async fn user_verdict(
    client: &Client,
    check: &UserCheck,
    timeout_secs: u64,
) -> Result<(Status, String)> {
    client
        .batch_execute(&format!(
            "begin transaction read only; set local statement_timeout = '{timeout_secs}s'"
        ))
        .await?;
    let stmt = client.prepare(&check.sql).await?;
    let cols = stmt.columns();
    if cols.len() == 1 && *cols[0].type_() == Type::BOOL {
        let rows = client.query(&stmt, &[]).await?;
        if rows.len() == 1 {
            let v: Option<bool> = rows[0].get(0);
            return Ok(match v {
                Some(true) => (Status::Passed, "true".into()),
                Some(false) => (Status::Failed, "returned false".into()),
                None => (Status::Failed, "returned null".into()),
            });
        }
    }
    // Rows as text, to name what was found.
    let mut found = Vec::new();
    for m in client.simple_query(&check.sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            found.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
    }
    Ok(match found.len() {
        0 => (Status::Passed, "no rows".into()),
        n => (
            Status::Failed,
            format!(
                "returned {n} row{}, first: ({})",
                if n == 1 { "" } else { "s" },
                found[0]
            ),
        ),
    })
}

/// Reads every table of one database (row counts); the check passes when all read.
pub async fn read_tables(client: &Client, database: &str) -> Result<(CheckResult, Vec<TableRows>)> {
    let rels = client
        .query(
            "select quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relispopulated, c.relpersistence = 'u' \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'm') and n.nspname not in ('pg_catalog', 'information_schema') \
               and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%' \
             order by 1",
            &[],
        )
        .await
        .context("listing tables")?;
    let mut tables = Vec::new();
    let mut failed = Vec::new();
    let mut total: i64 = 0;
    for r in &rels {
        let (name, populated): (String, bool) = (r.get(0), r.get(1));
        if !populated {
            continue; // a materialized view never refreshed has nothing to read
        }
        // ONLY: each partition is its own table here, counted once.
        match client
            .query_one(&format!("select count(*) from only {name}"), &[])
            .await
        {
            Ok(row) => {
                let rows: i64 = row.get(0);
                total += rows;
                tables.push(TableRows {
                    database: database.to_string(),
                    table: name,
                    rows,
                });
            }
            Err(e) => failed.push(format!("{name}: {e}")),
        }
    }
    let name = format!("every table of {database} reads");
    let result = if failed.is_empty() {
        CheckResult::builtin(
            name,
            Some(database),
            Status::Passed,
            format!("{} tables, {total} rows", tables.len()),
        )
    } else {
        CheckResult::builtin(
            name,
            Some(database),
            Status::Failed,
            format!(
                "{} of {} tables unreadable: {}",
                failed.len(),
                rels.len(),
                failed.join("; ")
            ),
        )
    };
    Ok((result, tables))
}

/// Whether `query` returns a row.
async fn exists(client: &Client, query: &str) -> Result<bool> {
    let row = client
        .query_one(&format!("select exists ({query})"), &[])
        .await?;
    Ok(row.get(0))
}

/// amcheck on one database: `bt_index_check` on every B-tree index and
/// `verify_heapam` on every table (PostgreSQL 14 and later: 13's amcheck has
/// no heap check, and says so). Skipped (not failed) when the extension is
/// not installed on this host.
pub async fn amcheck(client: &Client, database: &str) -> Result<CheckResult> {
    let name = format!("amcheck on {database}");
    let available = exists(
        client,
        "select 1 from pg_available_extensions where name = 'amcheck'",
    )
    .await?;
    if !available {
        return Ok(CheckResult::builtin(
            name,
            Some(database),
            Status::Skipped,
            "the amcheck extension is not installed on this host (postgresql-contrib)".into(),
        ));
    }
    // The scratch cluster is thrown away: creating the extension there is harmless.
    if let Err(e) = client
        .batch_execute("create extension if not exists amcheck")
        .await
    {
        return Ok(CheckResult::builtin(
            name,
            Some(database),
            Status::Skipped,
            format!("cannot create the amcheck extension: {e}"),
        ));
    }
    let indexes = client
        .query(
            "select c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             from pg_index i join pg_class c on c.oid = i.indexrelid \
             join pg_namespace n on n.oid = c.relnamespace join pg_am a on a.oid = c.relam \
             where a.amname = 'btree' and i.indisvalid and i.indisready and c.relpersistence <> 't' \
             order by 2",
            &[],
        )
        .await?;
    let tables = client
        .query(
            "select c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where c.relkind in ('r', 'm') and c.relpersistence <> 't' \
               and (c.relkind = 'r' or c.relispopulated) \
             order by 2",
            &[],
        )
        .await?;
    let heap_check = exists(
        client,
        "select 1 from pg_proc where proname = 'verify_heapam'",
    )
    .await?;
    let mut problems = Vec::new();
    for r in &indexes {
        let (oid, name): (u32, String) = (r.get(0), r.get(1));
        if let Err(e) = client
            .execute("select bt_index_check($1::oid::regclass)", &[&oid])
            .await
        {
            problems.push(format!("index {name}: {}", db_message(&e)));
        }
    }
    for r in tables.iter().filter(|_| heap_check) {
        let (oid, name): (u32, String) = (r.get(0), r.get(1));
        match client
            .query(
                "select coalesce(blkno::text, '?'), msg from verify_heapam($1::oid::regclass) limit 3",
                &[&oid],
            )
            .await
        {
            Ok(rows) if rows.is_empty() => {}
            Ok(rows) => {
                let (blk, msg): (String, String) = (rows[0].get(0), rows[0].get(1));
                problems.push(format!("table {name}: block {blk}: {msg}"));
            }
            Err(e) => problems.push(format!("table {name}: {}", db_message(&e))),
        }
    }
    let counted = if heap_check {
        format!(
            "{} B-tree indexes (bt_index_check), {} tables (verify_heapam)",
            indexes.len(),
            tables.len()
        )
    } else {
        format!(
            "{} B-tree indexes (bt_index_check); {} tables not checked: verify_heapam needs PostgreSQL 14",
            indexes.len(),
            tables.len()
        )
    };
    Ok(if problems.is_empty() {
        CheckResult::builtin(name, Some(database), Status::Passed, counted)
    } else {
        CheckResult::builtin(
            name,
            Some(database),
            Status::Failed,
            format!("{counted}: {}", problems.join("; ")),
        )
    })
}

/// The server's own message for a failed statement (not just "db error").
fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_named_checks() {
        let text = "\
-- Checks for the shop database.

-- check: no orphaned order lines
-- database: shop
select l.id
  from order_lines l left join orders o on o.id = l.order_id
 where o.id is null;

--check:orders today
select count(*) > 0 from orders;
";
        let c = parse(text, "checks.sql").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "no orphaned order lines");
        assert_eq!(c[0].database.as_deref(), Some("shop"));
        assert!(c[0].sql.starts_with("select l.id\n"));
        assert!(c[0].sql.ends_with("o.id is null"), "{}", c[0].sql);
        assert_eq!(c[1].name, "orders today");
        assert_eq!(c[1].database, None);
        assert_eq!(c[1].sql, "select count(*) > 0 from orders");
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let err = |t: &str| parse(t, "f.sql").unwrap_err().to_string();
        assert!(err("select 1;\n").contains("line 1: SQL before the first"));
        assert!(err("-- check: a\n-- only a comment\n").contains("check 'a' has no query"));
        assert!(err("-- check: a\nselect 1;\n-- check: a\nselect 2;\n").contains("two checks"));
        assert!(err("-- check:\nselect 1;\n").contains("needs a name"));
        assert!(err("-- check: a\nselect 1;\n-- database: x\n").contains("right after"));
        assert!(err("-- nothing here\n\n").contains("holds no check"));
    }
}
