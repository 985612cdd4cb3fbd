//! Table and schema names as a DBA types them (`schema.name`, quoted parts kept
//! as written, unquoted ones folded to lower case as PostgreSQL does), SQL
//! identifier quoting, and the names given to restored copies.

use anyhow::{bail, Result};

/// PostgreSQL's identifier limit (NAMEDATALEN - 1), in bytes.
pub const MAX_IDENT: usize = 63;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Qualified {
    pub schema: String,
    pub name: String,
}

impl Qualified {
    /// `"schema"."name"`, for SQL and for pg_dump's `--table` (quoted parts
    /// match literally there).
    pub fn sql(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

impl std::fmt::Display for Qualified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Parses `[schema.]name`; the schema defaults to `public`.
pub fn parse_table(s: &str) -> Result<Qualified> {
    let parts = split_identifiers(s)?;
    match parts.as_slice() {
        [name] => Ok(Qualified {
            schema: "public".into(),
            name: name.clone(),
        }),
        [schema, name] => Ok(Qualified {
            schema: schema.clone(),
            name: name.clone(),
        }),
        _ => bail!("--table '{s}': give SCHEMA.NAME (a database is chosen with --database)"),
    }
}

/// Parses one identifier (a schema or a new name).
pub fn parse_identifier(s: &str, what: &str) -> Result<String> {
    match split_identifiers(s)?.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{what} '{s}' must be one name, without a schema"),
    }
}

/// Splits a dotted identifier list: `"a.b".C` → [`a.b`, `c`].
fn split_identifiers(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.trim().chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                if !cur.is_empty() {
                    bail!("'{s}': a quote in the middle of a name");
                }
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        Some('"') => break,
                        Some(c) => cur.push(c),
                        None => bail!("'{s}': unterminated quoted name"),
                    }
                }
                quoted_part = true;
            }
            '.' => {
                out.push(finish(&mut cur, quoted_part, s)?);
                quoted_part = false;
            }
            c if quoted_part => bail!("'{s}': '{c}' after a quoted name"),
            c if c.is_whitespace() => bail!("'{s}': quote a name that holds spaces"),
            c => cur.extend(c.to_lowercase()),
        }
    }
    out.push(finish(&mut cur, quoted_part, s)?);
    Ok(out)
}

fn finish(cur: &mut String, quoted: bool, whole: &str) -> Result<String> {
    let part = std::mem::take(cur);
    if part.is_empty() && !quoted {
        bail!("'{whole}': an empty name");
    }
    if part.len() > MAX_IDENT {
        bail!("'{whole}': a name longer than {MAX_IDENT} bytes");
    }
    Ok(part)
}

/// An identifier quoted for SQL.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal for SQL.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The name of an object of a restored table (an index, a sequence) once the
/// table is called `new_table`: the old table name's prefix replaced, else the
/// new name put in front; cut to PostgreSQL's limit.
pub fn derived(object: &str, old_table: &str, new_table: &str) -> String {
    let name = match object.strip_prefix(old_table) {
        Some(rest) => format!("{new_table}{rest}"),
        None => format!("{new_table}_{object}"),
    };
    truncate(name)
}

/// The default name of a restored copy: beside the live one, stamped.
pub fn restored_copy(name: &str, stamp: &str) -> String {
    let suffix = format!("_restored_{stamp}");
    let mut base = name.to_string();
    while base.len() + suffix.len() > MAX_IDENT {
        base.pop();
    }
    format!("{base}{suffix}")
}

fn truncate(mut s: String) -> String {
    while s.len() > MAX_IDENT {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_unless_quoted() {
        assert_eq!(
            parse_table("Orders").unwrap(),
            Qualified {
                schema: "public".into(),
                name: "orders".into()
            }
        );
        assert_eq!(
            parse_table("\"Sales\".\"Big.Orders\"").unwrap(),
            Qualified {
                schema: "Sales".into(),
                name: "Big.Orders".into()
            }
        );
        assert_eq!(parse_table("s.\"a\"\"b\"").unwrap().name, "a\"b");
        for bad in ["a.b.c", "", "a.", "\"a", "a b", "\"a\"x"] {
            assert!(parse_table(bad).is_err(), "{bad}");
        }
        assert!(parse_identifier("a.b", "--as").is_err());
    }

    #[test]
    fn quoting_round_trips() {
        let q = Qualified {
            schema: "My \"S\"".into(),
            name: "t".into(),
        };
        assert_eq!(q.sql(), "\"My \"\"S\"\"\".\"t\"");
        assert_eq!(parse_table(&q.sql()).unwrap(), q);
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn derived_names_follow_the_table_and_fit() {
        assert_eq!(
            derived("orders_pkey", "orders", "orders_old"),
            "orders_old_pkey"
        );
        assert_eq!(derived("by_customer", "orders", "o2"), "o2_by_customer");
        let long = "x".repeat(60);
        assert_eq!(derived("orders_id_seq", "orders", &long).len(), MAX_IDENT);
        let c = restored_copy(&"é".repeat(40), "20261203T101010Z");
        assert!(c.len() <= MAX_IDENT && c.ends_with("_restored_20261203T101010Z"));
    }
}
