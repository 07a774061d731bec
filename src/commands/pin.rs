//! `pitr pin ID` / `pitr unpin ID`: keep a backup whatever the retention policy says, and
//! annotate it. The manifest is sealed and never rewritten: the pin lives in its own small
//! sealed object beside it (`backup/<id>/pin.json`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::backup::BackupPin;
use crate::error::Result;

#[derive(Clone, Debug)]
pub struct PinOptions {
    pub id: String,
    /// None leaves the pin as it is (only annotating).
    pub pinned: Option<bool>,
    /// Added or replaced; an empty value removes the key.
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
pub struct PinReport {
    pub id: String,
    pub pinned: bool,
    pub annotations: BTreeMap<String, String>,
}

pub async fn pin(catalog: &Catalog, options: &PinOptions) -> Result<PinReport> {
    // A repository first (a mistyped --repo is named as such), then only a listed backup:
    // its manifest must be there and sound.
    catalog.identity().await?;
    catalog.manifest(&options.id).await?;
    let mut pin = catalog
        .backup_pin(&options.id)
        .await?
        .unwrap_or_else(|| BackupPin::new(&options.id));
    if let Some(pinned) = options.pinned {
        pin.pinned = pinned;
    }
    for (key, value) in &options.annotations {
        if value.is_empty() {
            pin.annotations.remove(key);
        } else {
            pin.annotations.insert(key.clone(), value.clone());
        }
    }
    pin.updated_at = BackupPin::now();
    catalog.put_backup_pin(&pin).await?;
    Ok(PinReport {
        id: pin.id,
        pinned: pin.pinned,
        annotations: pin.annotations,
    })
}
