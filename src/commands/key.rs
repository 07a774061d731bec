//! `pitr key list|add|remove`: the keys that open an encrypted repository. Keys wrap the
//! one data key (see `catalog::keys`), so adding or removing one rewrites keys.json only.

use serde::Serialize;

use crate::catalog::Catalog;
use crate::catalog::keys::{KeyMaterial, KeysFile, Wrap};
use crate::error::{Error, Result};

/// One key as `pitr key list` shows it: never the key.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub fingerprint: String,
    pub kind: &'static str,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyReport {
    pub location: String,
    pub cipher: String,
    /// The data key's fingerprint: the same before and after every key change.
    pub data_key: String,
    pub keys: Vec<KeyInfo>,
    /// Fingerprints this command added or removed.
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

fn report(catalog: &Catalog, keys: &KeysFile) -> KeyReport {
    KeyReport {
        location: catalog.location(),
        cipher: keys.cipher.clone(),
        data_key: keys.data_key.clone(),
        keys: keys
            .wraps
            .iter()
            .map(|w| KeyInfo {
                fingerprint: w.fingerprint.clone(),
                kind: w.kind.name(),
                created_at: w.created_at.clone(),
                kms_key_id: w.kms_key_id.clone(),
            })
            .collect(),
        added: Vec::new(),
        removed: Vec::new(),
    }
}

/// The keys file of an encrypted repository; a plain one is a usage error.
async fn encrypted_keys(catalog: &Catalog) -> Result<KeysFile> {
    let identity = catalog.identity().await?;
    if !identity.is_encrypted() {
        return Err(Error::Config(format!(
            "repository {} is not encrypted: it has no keys (`pitr init --encrypt` creates an \
             encrypted repository)",
            catalog.location()
        )));
    }
    Ok(catalog.keys_file().await?)
}

/// Needs no key: fingerprints are not secret.
pub async fn key_list(catalog: &Catalog) -> Result<KeyReport> {
    Ok(report(catalog, &encrypted_keys(catalog).await?))
}

/// Wraps the data key (opened with the settings' key) with each new key, under the
/// repository lock; proves that each new key opens the stored result.
pub async fn key_add(catalog: &Catalog, new: &[KeyMaterial]) -> Result<KeyReport> {
    if new.is_empty() {
        return Err(Error::Config(
            "key add needs a new key: --new-passphrase-file, PITR_NEW_PASSPHRASE, \
             --new-key-file or --new-kms-key-id"
                .to_owned(),
        ));
    }
    encrypted_keys(catalog).await?;
    let data_key = catalog.data_key().await?;
    let lock = catalog.lock("key").await?;
    let result = async {
        let mut keys = catalog.keys_file().await?;
        let mut added = Vec::new();
        for material in new {
            let wrap = Wrap::new(material, &data_key).await?;
            if keys.wraps.iter().any(|w| w.fingerprint == wrap.fingerprint) {
                return Err(Error::Config(format!(
                    "{} is a key of the repository already (fingerprint {})",
                    material.describe(),
                    wrap.fingerprint
                )));
            }
            added.push(wrap.fingerprint.clone());
            keys.wraps.push(wrap);
        }
        catalog.replace_keys_file(&keys).await?;
        let stored = catalog.keys_file().await?;
        for material in new {
            stored.unlock(std::slice::from_ref(material)).await?;
        }
        let mut report = report(catalog, &stored);
        report.added = added;
        Ok(report)
    }
    .await;
    lock.release().await;
    result
}

/// Removes one wrap. Refuses the last one, and a removal after which no key given in the
/// settings opens the repository (so the caller cannot lock themself out by mistake).
pub async fn key_remove(catalog: &Catalog, fingerprint: &str) -> Result<KeyReport> {
    encrypted_keys(catalog).await?;
    let lock = catalog.lock("key").await?;
    let result = async {
        let mut keys = catalog.keys_file().await?;
        let Some(index) = keys.wraps.iter().position(|w| w.fingerprint == fingerprint) else {
            return Err(Error::Config(format!(
                "repository {} has no key with fingerprint {fingerprint} (its keys: {}; see \
                 `pitr key list`)",
                catalog.location(),
                keys.fingerprints()
            )));
        };
        if keys.wraps.len() == 1 {
            return Err(Error::Config(format!(
                "{fingerprint} is the repository's last key: removing it would make every \
                 backup and WAL segment unreadable; add another key first (`pitr key add`)"
            )));
        }
        keys.wraps.remove(index);
        if catalog.key_materials().is_empty() {
            return Err(Error::Config(
                "key remove needs a key that stays: give one of the other keys in the settings \
                 (passphrase_file, PITR_PASSPHRASE, key_file or kms_key_id)"
                    .to_owned(),
            ));
        }
        keys.unlock(catalog.key_materials()).await.map_err(|_| {
            Error::Config(format!(
                "after removing {fingerprint}, no key given in the settings would open the \
                 repository: give one of the remaining keys ({}) in the settings",
                keys.fingerprints()
            ))
        })?;
        catalog.replace_keys_file(&keys).await?;
        let mut report = report(catalog, &catalog.keys_file().await?);
        report.removed = vec![fingerprint.to_owned()];
        Ok(report)
    }
    .await;
    lock.release().await;
    result
}
