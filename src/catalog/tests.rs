use super::wal::{wal_key, wal_name_of_key};
use super::*;
use crate::pg::WalFileName;

#[test]
fn wal_keys_group_by_timeline_and_log() {
    let cases = [
        (
            "000000010000000A000000FF",
            "wal/000000010000000A/000000010000000A000000FF.lz4",
        ),
        (
            "000000020000000000000003.partial",
            "wal/0000000200000000/000000020000000000000003.partial.lz4",
        ),
        (
            "000000010000000000000002.00000028.backup",
            "wal/0000000100000000/000000010000000000000002.00000028.backup.lz4",
        ),
        ("00000002.history", "wal/history/00000002.history.lz4"),
    ];
    for (name, key) in cases {
        let parsed = WalFileName::parse(name).unwrap();
        assert_eq!(wal_key(&parsed), key);
        assert_eq!(wal_name_of_key(key), Some(parsed));
    }
    assert_eq!(wal_name_of_key("repository.json"), None);
    assert_eq!(
        wal_name_of_key("wal/0000000100000000/000000020000000000000001.lz4"),
        None
    );
}

#[test]
fn identity_json_keeps_the_system_identifier_exact() {
    let control = ControlFile {
        system_identifier: 7_301_234_567_890_123_457,
        pg_control_version: 1300,
        catalog_version_no: 202_209_061,
        wal_block_size: 8192,
        wal_segment_size: 16 << 20,
        data_checksum_version: 0,
    };
    let identity = RepositoryIdentity::new(&control, 15, Utc::now());
    let json = serde_json::to_string(&identity).unwrap();
    assert!(
        json.contains("\"system_identifier\":\"7301234567890123457\""),
        "{json}"
    );
    assert_eq!(
        RepositoryIdentity::parse(json.as_bytes()).unwrap(),
        identity
    );
    let odd = json.replace("16777216", "1000000");
    assert!(RepositoryIdentity::parse(odd.as_bytes()).is_err());
}
