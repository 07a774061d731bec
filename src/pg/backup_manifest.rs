//! PostgreSQL's own `backup_manifest` (version 1), so that `pg_verifybackup` can check a
//! directory pitr restored.

use sha2::{Digest, Sha256};

use super::Lsn;

pub struct ManifestEntry<'a> {
    pub path: &'a str,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    /// None where the checksum is not known (a file rebuilt from an incremental chain):
    /// PostgreSQL's manifests leave it out for `--manifest-checksums=none`.
    pub crc32c: Option<u32>,
}

/// Renders the manifest exactly as PostgreSQL lays it out: the checksum covers every byte
/// up to the last line.
pub fn render(entries: &[ManifestEntry<'_>], timeline: u32, start: Lsn, end: Lsn) -> String {
    let mut text = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (i, entry) in entries.iter().enumerate() {
        let modified = chrono::DateTime::from_timestamp(entry.mtime, 0)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S GMT");
        text.push_str(if i == 0 { "\n" } else { ",\n" });
        text.push_str(&format!(
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{modified}\"",
            serde_json::to_string(entry.path).expect("a string serialises"),
            entry.size,
        ));
        match entry.crc32c {
            // PostgreSQL hex-encodes the CRC's bytes in memory order.
            Some(crc) => text.push_str(&format!(
                ", \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                hex::encode(crc.to_le_bytes())
            )),
            None => text.push_str(" }"),
        }
    }
    text.push_str(&format!(
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{start}\", \
         \"End-LSN\": \"{end}\" }}\n],\n"
    ));
    let checksum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("\"Manifest-Checksum\": \"{checksum}\"}}\n"));
    text
}

/// A file the server's manifest lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedFile {
    /// Relative to the data directory (tablespace files under `pg_tblspc/<oid>/`); from
    /// `Encoded-Path` (hex) where the server could not write the name as UTF-8.
    pub path: String,
    pub size: u64,
    /// The CRC-32C the server computed while sending; None for other algorithms or none.
    pub crc32c: Option<u32>,
}

/// What pitr reads of a `backup_manifest` the server sent with `BASE_BACKUP`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerManifest {
    pub files: Vec<ListedFile>,
    /// Version 2 (PostgreSQL 17+) names the cluster.
    pub system_identifier: Option<u64>,
}

/// A server's backup_manifest that cannot be trusted to check a backup against.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the server's backup_manifest is not valid JSON: {0}")]
    Json(String),
    #[error("the server's backup_manifest has version {0}, which pitr does not know")]
    Version(u64),
    #[error("the server's backup_manifest has no Manifest-Checksum line")]
    NoChecksum,
    #[error(
        "the server's backup_manifest checksum {stored} does not match its contents \
         ({computed}): it was damaged in transit"
    )]
    Checksum { stored: String, computed: String },
    #[error("the server's backup_manifest lists a file with {0}")]
    BadFile(String),
}

#[derive(serde::Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u64,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

#[derive(serde::Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

/// Parses a `backup_manifest` (versions 1 and 2) and checks its SHA-256, which covers every
/// byte before the `Manifest-Checksum` line.
pub fn parse_server_manifest(bytes: &[u8]) -> Result<ServerManifest, ManifestError> {
    const CHECKSUM_KEY: &[u8] = b"\"Manifest-Checksum\"";
    let covered = bytes
        .windows(CHECKSUM_KEY.len())
        .rposition(|window| window == CHECKSUM_KEY)
        .ok_or(ManifestError::NoChecksum)?;
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    if !(1..=2).contains(&raw.version) {
        return Err(ManifestError::Version(raw.version));
    }
    let computed = hex::encode(Sha256::digest(&bytes[..covered]));
    if !computed.eq_ignore_ascii_case(&raw.checksum) {
        return Err(ManifestError::Checksum {
            stored: raw.checksum,
            computed,
        });
    }
    let files = raw
        .files
        .into_iter()
        .map(listed_file)
        .collect::<Result<_, _>>()?;
    Ok(ServerManifest {
        files,
        system_identifier: raw.system_identifier,
    })
}

fn listed_file(raw: RawFile) -> Result<ListedFile, ManifestError> {
    let path = match (raw.path, raw.encoded_path) {
        (Some(path), _) => path,
        (None, Some(encoded)) => hex::decode(&encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ManifestError::BadFile(format!("Encoded-Path {encoded:?}")))?,
        (None, None) => return Err(ManifestError::BadFile("no path".into())),
    };
    let crc32c = match (raw.algorithm.as_deref(), raw.checksum) {
        (Some("CRC32C"), Some(hex_crc)) => {
            let bytes: [u8; 4] = hex::decode(&hex_crc)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    ManifestError::BadFile(format!("{path}: CRC32C checksum {hex_crc:?}"))
                })?;
            Some(u32::from_le_bytes(bytes))
        }
        _ => None,
    };
    Ok(ListedFile {
        path,
        size: raw.size,
        crc32c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        render(
            &[
                ManifestEntry {
                    path: "backup_label",
                    size: 225,
                    mtime: 1_764_979_200,
                    crc32c: Some(0x1234_5678),
                },
                ManifestEntry {
                    path: "base/5/1259",
                    size: 8192,
                    mtime: 1_764_979_200,
                    crc32c: Some(0xdead_beef),
                },
            ],
            1,
            Lsn(0x200_0028),
            Lsn(0x200_0100),
        )
    }

    #[test]
    fn a_rendered_manifest_reads_back() {
        let manifest = parse_server_manifest(sample().as_bytes()).unwrap();
        assert_eq!(manifest.system_identifier, None);
        assert_eq!(
            manifest.files,
            [
                ListedFile {
                    path: "backup_label".into(),
                    size: 225,
                    crc32c: Some(0x1234_5678)
                },
                ListedFile {
                    path: "base/5/1259".into(),
                    size: 8192,
                    crc32c: Some(0xdead_beef)
                },
            ]
        );
    }

    #[test]
    fn a_changed_byte_fails_the_checksum() {
        let text = sample().replace("\"Size\": 8192", "\"Size\": 8193");
        assert!(matches!(
            parse_server_manifest(text.as_bytes()),
            Err(ManifestError::Checksum { .. })
        ));
        let text = sample().replace("\"Manifest-Checksum\"", "\"Other\"");
        assert!(parse_server_manifest(text.as_bytes()).is_err());
    }

    #[test]
    fn an_encoded_path_is_decoded_and_other_algorithms_carry_no_crc() {
        let body = "{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7,\n\
                    \"Files\": [\n{ \"Encoded-Path\": \"626173652f31\", \"Size\": 3, \
                    \"Last-Modified\": \"x\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \
                    \"00\" }\n],\n\"WAL-Ranges\": []\n,";
        let text = format!(
            "{body}\"Manifest-Checksum\": \"{}\"}}\n",
            hex::encode(Sha256::digest(body.as_bytes()))
        );
        let manifest = parse_server_manifest(text.as_bytes()).unwrap();
        assert_eq!(manifest.system_identifier, Some(7));
        assert_eq!(
            manifest.files,
            [ListedFile {
                path: "base/1".into(),
                size: 3,
                crc32c: None
            }]
        );
    }
}
