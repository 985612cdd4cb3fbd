//! `dump-verify`: every object of a dump present and intact. Without the key
//! (or with `--stored-only`), the stored bytes against their trailer and the
//! manifest; with it, each archive decoded into `pg_restore --list`, whose
//! table of contents must hold every table the manifest lists.

use super::{list, read_manifest, Manifest, Object};
use crate::codec::{self, Codec};
use crate::config::Config;
use crate::pg::tools;
use crate::store::Store;
use anyhow::Result;

pub struct Options {
    /// Dumps to verify; empty: all.
    pub ids: Vec<String>,
    /// Only the stored bytes, even with the key at hand.
    pub stored_only: bool,
}

/// `Ok(false)` when any object is missing or damaged (each one named).
pub async fn run(cfg: &Config, store: &dyn Store, codec: &Codec, opts: Options) -> Result<bool> {
    let dumps = if opts.ids.is_empty() {
        list(store).await?.dumps
    } else {
        let mut v = Vec::new();
        for id in &opts.ids {
            v.push(read_manifest(store, id).await?);
        }
        v
    };
    if dumps.is_empty() {
        println!("no dumps to verify in {}", store.locate("dumps/"));
        return Ok(true);
    }
    let mut all_ok = true;
    for m in &dumps {
        let decode = !opts.stored_only && (!m.encrypted || codec.check_key().is_ok());
        let how = if decode {
            "decoded, pg_restore --list"
        } else {
            "stored bytes (without the key)"
        };
        let mut problems = Vec::new();
        for d in &m.databases {
            let expected: Vec<String> = d
                .tables
                .iter()
                .map(|t| format!(" TABLE {} {} ", t.schema, t.name))
                .collect();
            let r = if decode {
                listed(cfg, store, codec, m, &d.object, &expected).await
            } else {
                stored(store, &d.object).await
            };
            if let Err(e) = r {
                problems.push(format!("{}: {e:#}", store.locate(&d.object.key)));
            }
        }
        if let Some(g) = &m.globals {
            let r = if decode {
                decoded(store, codec, g).await
            } else {
                stored(store, g).await
            };
            if let Err(e) = r {
                problems.push(format!("{}: {e:#}", store.locate(&g.key)));
            }
        }
        if problems.is_empty() {
            println!(
                "{}: OK ({} objects, {}; {} tables)",
                m.id,
                m.objects().count(),
                how,
                m.databases.iter().map(|d| d.tables.len()).sum::<usize>()
            );
        } else {
            all_ok = false;
            println!("{}: DAMAGED ({how})", m.id);
            for p in problems {
                println!("  - {p}");
            }
        }
    }
    Ok(all_ok)
}

/// The stored bytes against their own trailer, and the trailer against the manifest.
async fn stored(store: &dyn Store, o: &Object) -> Result<()> {
    match codec::verify_stored(store, &o.key).await {
        Ok(Some((trailer, len))) => same(o, &trailer, Some(len)),
        Ok(None) => anyhow::bail!("missing"),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

fn same(o: &Object, t: &crate::codec::envelope::Trailer, stored: Option<u64>) -> Result<()> {
    if hex::encode(t.plain_sha256) != o.sha256 || t.plain_len != o.raw_bytes {
        anyhow::bail!("not the object the manifest recorded (sha256 or size differs)");
    }
    if let Some(len) = stored {
        if len != o.stored_bytes {
            anyhow::bail!(
                "{len} bytes stored, the manifest recorded {}",
                o.stored_bytes
            );
        }
    }
    Ok(())
}

async fn decoded(store: &dyn Store, codec: &Codec, o: &Object) -> Result<()> {
    match codec.download(store, &o.key, std::io::sink()).await {
        Ok(Some((t, _))) => same(o, &t, None),
        Ok(None) => anyhow::bail!("missing"),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// The archive decoded into `pg_restore --list`: it must read to the end and
/// name every table of the manifest.
async fn listed(
    cfg: &Config,
    store: &dyn Store,
    codec: &Codec,
    m: &Manifest,
    o: &Object,
    expected: &[String],
) -> Result<()> {
    let pg_restore = tools::find("pg_restore", m.pg_dump_major, &cfg.postgres)?;
    let mut cmd = pg_restore.command();
    cmd.arg("--list");
    let (fed, stdin) = tools::Fed::spawn(cmd, "pg_restore --list")?;
    let trailer = match codec
        .download(store, &o.key, tools::Tolerant::new(stdin))
        .await
    {
        Ok(Some((t, stdin))) => {
            drop(stdin);
            t
        }
        Ok(None) => {
            let _ = fed.finish();
            anyhow::bail!("missing")
        }
        Err(e) => {
            let _ = fed.finish();
            return Err(anyhow::Error::new(e));
        }
    };
    let (toc, _) = fed.finish()?;
    same(o, &trailer, None)?;
    let entries = toc
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .count();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|t| !toc.lines().any(|l| format!("{l} ").contains(t.as_str())))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the archive's table of contents ({entries} entries) lacks {} of the manifest's tables, e.g.{}",
            missing.len(),
            missing[0].trim_end()
        );
    }
    Ok(())
}
