//! Keep marks (`backup-mark`) of backups and dumps alike: backups and dumps
//! that retention never removes (audit keeps).
//!
//! A mark is its own clear object, `<prefix>/keep.json`, so the manifest is
//! never rewritten (it may be under Object Lock) and a host without the private
//! key can read it. Unmarking writes a mark that keeps nothing, which also works
//! on a versioned, locked bucket where deleting would only hide the mark.

use crate::store::{Class, Mode, Store};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

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

/// The mark stored under `key`, if any.
pub async fn read(store: &dyn Store, key: &str) -> Result<Option<Keep>> {
    crate::store::get_json(store, key, "a walvault keep mark").await
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

impl Mark {
    /// The lifecycle class a marked object goes into.
    pub fn class(&self) -> Class {
        match self {
            Mark::Permanent => Class::Permanent,
            Mark::Until(_) => Class::Kept,
            Mark::Unmark => Class::Standard,
        }
    }
}

/// Writes a mark under `key` (replacing the last one) and returns it.
pub async fn write(store: &dyn Store, key: &str, mark: Mark, note: Option<String>) -> Result<Keep> {
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
    // The one object walvault replaces on purpose: a mark changes.
    store
        .write(
            key,
            Box::new(std::io::Cursor::new(text)),
            Class::Standard,
            Mode::Replace,
        )
        .await?;
    Ok(keep)
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
