//! `backup-mark` of a logical dump: its mark (`dumps/<id>/keep.json`, see
//! [`crate::marks`]), its objects put in the mark's lifecycle class.

use super::{prefix, read_manifest};
use crate::marks::{self, Keep, Mark};
use crate::store::{Class, Store};
use anyhow::{Context, Result};

pub fn key(id: &str) -> String {
    format!("{}keep.json", prefix(id))
}

pub async fn read(store: &dyn Store, id: &str) -> Result<Option<Keep>> {
    marks::read(store, &key(id)).await
}

pub async fn run(store: &dyn Store, id: &str, mark: Mark, note: Option<String>) -> Result<()> {
    read_manifest(store, id).await?;
    let class = mark.class();
    let keep = marks::write(store, &key(id), mark, note).await?;
    match keep.reason(chrono::Utc::now()) {
        Some(r) => println!("dump {id}: {r}; no retention policy removes it"),
        None => println!("dump {id}: unmarked; retention policies apply to it again"),
    }
    let mut tagged = 0;
    for o in store.list(&prefix(id)).await? {
        if !store.set_class(&o.key, class).await.with_context(|| {
            format!("the mark is stored, but putting the dump in lifecycle class {} failed; run backup-mark again once fixed", class.as_str())
        })? {
            break;
        }
        tagged += 1;
    }
    if tagged > 0 {
        println!(
            "lifecycle: {tagged} objects tagged {}={}",
            Class::TAG,
            class.as_str()
        );
    }
    Ok(())
}
