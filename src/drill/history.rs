//! The drills kept in the repository (`drills/<id>/report.json`), newest first:
//! what `status` reports and alerts on.

use crate::store::Store;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Deserialize;

/// The few fields of a stored report that monitoring needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    pub drill_id: String,
    pub result: String,
    pub finished_at: Option<DateTime<Utc>>,
    pub timings: Timings,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Timings {
    pub rto_seconds: Option<f64>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.result == "passed"
    }
}

/// The newest drill, and the newest one that passed (reading back at most
/// `depth` reports to find it).
pub async fn latest(store: &dyn Store, depth: usize) -> Result<(Option<Summary>, Option<Summary>)> {
    let mut ids: Vec<String> = store
        .list("drills/")
        .await?
        .into_iter()
        .filter_map(|o| {
            o.key
                .strip_prefix("drills/")
                .and_then(|k| k.strip_suffix("/report.json"))
                .map(str::to_string)
        })
        .collect();
    // Ids are UTC timestamps: their order is their age.
    ids.sort();
    let mut newest = None;
    for id in ids.iter().rev().take(depth) {
        let s = read(store, id).await?;
        let passed = s.passed();
        if newest.is_none() {
            newest = Some(s.clone());
        }
        if passed {
            return Ok((newest, Some(s)));
        }
    }
    Ok((newest, None))
}

async fn read(store: &dyn Store, id: &str) -> Result<Summary> {
    let key = format!("drills/{id}/report.json");
    crate::store::get_json(store, &key, "a walvault drill report")
        .await?
        .with_context(|| format!("{} vanished while reading", store.locate(&key)))
}
