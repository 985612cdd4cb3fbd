//! `backup-mark`: backups that retention never removes (audit keeps).
//!
//! The mark is its own clear object, `backups/<id>/keep.json`, so the manifest is
//! never rewritten (it may be under Object Lock) and a host without the private key
//! can read it. Unmarking writes a mark that keeps nothing, which also works on a
//! versioned, locked bucket where deleting would only hide the mark.

use super::{manifest_key, prefix};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Keep {
    /// Never removed by any retention policy.
    pub permanent: bool,
    /// Not removed before the end of this day (UTC).
    pub keep_until: Option<NaiveDate>,
    pub note: Option<String>,
    pub marked_at: DateTime<Utc>,
    pub marked_by: String,
}

impl Keep {
    /// Why retention must keep the backup at `now`; `None` when the mark keeps nothing.
    pub fn reason(&self, now: DateTime<Utc>) -> Option<String> {
        let note = self
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        if self.permanent {
            return Some(format!("permanent{note}"));
        }
        match self.keep_until {
            Some(d) if now.date_naive() <= d => Some(format!("kept until {d}{note}")),
            _ => None,
        }
    }
}

pub fn key(id: &str) -> String {
    format!("{}keep.json", prefix(id))
}

pub async fn read(store: &dyn Store, id: &str) -> Result<Option<Keep>> {
    let k = key(id);
    let Some(mut body) = store.get(&k).await? else {
        return Ok(None);
    };
    let mut text = Vec::new();
    body.read_to_end(&mut text)
        .await
        .with_context(|| format!("reading {}", store.locate(&k)))?;
    serde_json::from_slice(&text)
        .map(Some)
        .with_context(|| format!("{} is not a walvault keep mark", store.locate(&k)))
}

pub enum Mark {
    Permanent,
    Until(NaiveDate),
    Unmark,
}

/// Parses `--keep-until`: a date, YYYY-MM-DD.
pub fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .with_context(|| format!("--keep-until '{s}' is not a date; use YYYY-MM-DD"))
}

pub async fn run(store: &dyn Store, id: &str, mark: Mark, note: Option<String>) -> Result<()> {
    if store.head(&manifest_key(id)).await?.is_none() {
        bail!(
            "backup '{id}' does not exist (no {}); see walvault backup-list",
            store.locate(&manifest_key(id))
        );
    }
    let now = Utc::now();
    let keep = Keep {
        permanent: matches!(mark, Mark::Permanent),
        keep_until: match mark {
            Mark::Until(d) => {
                if d < now.date_naive() {
                    bail!("--keep-until {d} is in the past");
                }
                Some(d)
            }
            _ => None,
        },
        note,
        marked_at: now,
        marked_by: crate::pg::conn::os_user(),
    };
    let text = serde_json::to_vec_pretty(&keep)?;
    store
        .put(&key(id), Box::new(std::io::Cursor::new(text)))
        .await?;
    match keep.reason(now) {
        Some(r) => println!("backup {id}: {r}; no retention policy removes it"),
        None => println!("backup {id}: unmarked; retention policies apply to it again"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let now = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut k = Keep {
            permanent: true,
            keep_until: None,
            note: Some("audit 2026".into()),
            marked_at: now,
            marked_by: "dba".into(),
        };
        assert_eq!(k.reason(now).unwrap(), "permanent: audit 2026");
        k.permanent = false;
        assert_eq!(k.reason(now), None);
        k.keep_until = Some(parse_date("2026-11-22").unwrap());
        assert!(k.reason(now).unwrap().starts_with("kept until 2026-11-22"));
        assert_eq!(k.reason("2026-11-23T00:00:01Z".parse().unwrap()), None);
        assert!(parse_date("22/11/2026").is_err());
    }
}
