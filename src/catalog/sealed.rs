//! Metadata objects (`repository.json`, manifests, summaries) carry their own checksum:
//! a `"checksum": "sha256:<hex>"` field over the compact JSON of everything else. Every read
//! recomputes it, so a flipped byte in a path, an offset or a mode is caught even where the
//! JSON still parses. An object without the field is refused: pitr writes none without it,
//! so one is damaged or was written by hand.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const FIELD_PREFIX: &str = "sha256:";

#[derive(Serialize, Deserialize)]
struct Sealed<T> {
    #[serde(flatten)]
    body: T,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checksum: Option<String>,
}

fn checksum_of<T: Serialize>(body: &T) -> String {
    let compact = serde_json::to_vec(body).expect("metadata serialises");
    format!("{FIELD_PREFIX}{}", hex::encode(Sha256::digest(&compact)))
}

/// `value` as pretty JSON with its checksum, and a final newline.
pub fn seal<T: Serialize>(value: &T) -> Vec<u8> {
    let sealed = Sealed {
        checksum: Some(checksum_of(value)),
        body: value,
    };
    let mut json = serde_json::to_vec_pretty(&sealed).expect("metadata serialises");
    json.push(b'\n');
    json
}

/// Parses what [`seal`] wrote and proves it unchanged.
pub fn unseal<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let sealed: Sealed<T> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let Some(stored) = &sealed.checksum else {
        return Err(
            "no \"checksum\" field: pitr seals every metadata object, so this one was \
                    not written by pitr or lost its seal"
                .into(),
        );
    };
    let computed = checksum_of(&sealed.body);
    if *stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored}, computed {computed}): the object was \
             changed after it was written"
        ));
    }
    Ok(sealed.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meta {
        path: String,
        offset: u64,
    }

    #[test]
    fn a_changed_value_is_caught_where_the_json_still_parses() {
        let meta = Meta {
            path: "base/1/1259".into(),
            offset: 8192,
        };
        let bytes = seal(&meta);
        assert_eq!(unseal::<Meta>(&bytes).unwrap(), meta);
        let text = String::from_utf8(bytes).unwrap();
        for (from, to) in [("1259", "1258"), ("8192", "8193")] {
            let err = unseal::<Meta>(text.replace(from, to).as_bytes()).unwrap_err();
            assert!(err.contains("checksum mismatch"), "{err}");
        }
        // Whitespace is not content.
        assert!(unseal::<Meta>(text.replace("  ", "    ").as_bytes()).is_ok());
        // Without a seal: refused, whatever the content.
        let err = unseal::<Meta>(br#"{"path": "base/1/1259", "offset": 8192}"#).unwrap_err();
        assert!(err.contains("no \"checksum\""), "{err}");
    }
}
