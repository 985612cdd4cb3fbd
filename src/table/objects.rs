//! What a table brings with it and what depends on it, read from the catalogs
//! (the scratch server's for its indexes and sequences, production's for
//! names taken and for dependents of a table to replace).

use super::names::{ident, Qualified};
use anyhow::{Context, Result};
use tokio_postgres::Client;

/// A table's oid, or `None` when no such table exists (views, sequences and
/// other relations are not tables).
pub async fn table_oid(c: &Client, t: &Qualified) -> Result<Option<u32>> {
    let row = c
        .query_opt(
            "select c.oid from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
            &[&t.schema, &t.name],
        )
        .await
        .with_context(|| format!("looking up table {t}"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Every partition below a partitioned table, at any depth, with its oid
/// (none for a plain table).
pub async fn partitions(c: &Client, oid: u32) -> Result<Vec<(Qualified, u32)>> {
    let rows = c
        .query(
            "select n.nspname, c.relname, c.oid from pg_partition_tree($1::oid::regclass) p \
             join pg_class c on c.oid = p.relid join pg_namespace n on n.oid = c.relnamespace \
             where p.relid <> $1::oid::regclass order by p.level, 2",
            &[&oid],
        )
        .await
        .context("reading the table's partitions")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Qualified {
                    schema: r.get(0),
                    name: r.get(1),
                },
                r.get(2),
            )
        })
        .collect())
}

/// The partitioned table a partition belongs to, if it is one.
pub async fn parent_of(c: &Client, oid: u32) -> Result<Option<Qualified>> {
    let row = c
        .query_opt(
            "select n.nspname, p.relname from pg_inherits i join pg_class p on p.oid = i.inhparent \
             join pg_namespace n on n.oid = p.relnamespace join pg_class c on c.oid = i.inhrelid \
             where i.inhrelid = $1 and c.relispartition",
            &[&oid],
        )
        .await?;
    Ok(row.map(|r| Qualified {
        schema: r.get(0),
        name: r.get(1),
    }))
}

pub async fn schema_exists(c: &Client, schema: &str) -> Result<bool> {
    Ok(
        c.query_opt("select 1 from pg_namespace where nspname = $1", &[&schema])
            .await?
            .is_some(),
    )
}

/// The tables of a schema.
pub async fn tables_of(c: &Client, schema: &str) -> Result<Vec<Qualified>> {
    let rows = c
        .query(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relkind in ('r', 'p') order by 1",
            &[&schema],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Qualified {
            schema: schema.to_string(),
            name: r.get(0),
        })
        .collect())
}

/// The relations named after a table that a rename must follow: its indexes
/// (constraints backed by an index are renamed with it) and the sequences it
/// owns (serial and identity columns). Each with its kind for ALTER.
pub async fn companions(c: &Client, oid: u32) -> Result<Vec<(String, &'static str)>> {
    let rows = c
        .query(
            "select i.relname, 'INDEX' from pg_index x join pg_class i on i.oid = x.indexrelid \
             where x.indrelid = $1 \
             union all \
             select s.relname, 'SEQUENCE' from pg_depend d join pg_class s on s.oid = d.objid \
             where d.classid = 'pg_class'::regclass and d.refclassid = 'pg_class'::regclass \
               and d.refobjid = $1 and s.relkind = 'S' and d.deptype in ('a', 'i') \
             order by 1",
            &[&oid],
        )
        .await
        .context("reading the table's indexes and sequences")?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind: &str = r.get(1);
            (r.get(0), if kind == "INDEX" { "INDEX" } else { "SEQUENCE" })
        })
        .collect())
}

/// The table's constraints not backed by an index (checks, foreign keys, not
/// nulls on 18): their names are the table's own, renamed to follow it.
pub async fn own_constraints(c: &Client, oid: u32) -> Result<Vec<String>> {
    let rows = c
        .query(
            "select conname from pg_constraint where conrelid = $1 and contype not in ('p', 'u', 'x')              order by 1",
            &[&oid],
        )
        .await
        .context("reading the table's constraints")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Which of `names` are taken by a relation (table, index, sequence, view)
/// in `schema`.
pub async fn taken(c: &Client, schema: &str, names: &[String]) -> Result<Vec<String>> {
    let rows = c
        .query(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = any($2) order by 1",
            &[&schema, &names],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// What would be dropped with the table beyond itself: views over it and
/// foreign keys of tables not being replaced (a plain DROP refuses them).
pub async fn dependents(c: &Client, oid: u32, replaced: &[u32]) -> Result<Vec<String>> {
    let rows = c
        .query(
            "select distinct pg_describe_object(d.classid, d.objid, d.objsubid) \
             from pg_depend d \
             where d.refclassid = 'pg_class'::regclass and d.refobjid = $1 and d.deptype = 'n' \
               and not (d.classid = 'pg_constraint'::regclass and exists \
                   (select 1 from pg_constraint k where k.oid = d.objid and k.conrelid = any($2))) \
               and not (d.classid = 'pg_rewrite'::regclass and exists \
                   (select 1 from pg_rewrite r where r.oid = d.objid and r.ev_class = $1)) \
             order by 1",
            &[&oid, &replaced],
        )
        .await
        .context("reading what depends on the table")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Exact row count (the report's "rows restored").
pub async fn count_rows(c: &Client, t: &Qualified) -> Result<i64> {
    let row = c
        .query_one(&format!("select count(*) from {}", t.sql()), &[])
        .await
        .with_context(|| format!("counting the rows of {t}"))?;
    Ok(row.get(0))
}

/// `ALTER <kind> schema.old RENAME TO new`.
pub fn rename_sql(kind: &str, schema: &str, old: &str, new: &str) -> String {
    format!(
        "ALTER {kind} {}.{} RENAME TO {}",
        ident(schema),
        ident(old),
        ident(new)
    )
}
