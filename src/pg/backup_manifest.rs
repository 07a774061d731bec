//! PostgreSQL's own `backup_manifest` (version 1), so that `pg_verifybackup` can check a
//! directory pitr restored.

use sha2::{Digest, Sha256};

use super::Lsn;

pub struct ManifestEntry<'a> {
    pub path: &'a str,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    pub crc32c: u32,
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
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{modified}\", \
             \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            serde_json::to_string(entry.path).expect("a string serialises"),
            entry.size,
            // PostgreSQL hex-encodes the CRC's bytes in memory order.
            hex::encode(entry.crc32c.to_le_bytes())
        ));
    }
    text.push_str(&format!(
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{start}\", \
         \"End-LSN\": \"{end}\" }}\n],\n"
    ));
    let checksum = hex::encode(Sha256::digest(text.as_bytes()));
    text.push_str(&format!("\"Manifest-Checksum\": \"{checksum}\"}}\n"));
    text
}
