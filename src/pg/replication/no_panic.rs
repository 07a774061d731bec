//! Whatever a server sends, the replication decoders answer with a value or an error: arbitrary
//! and near-valid bytes, rows and call orders, never a panic. And what the command builders
//! accept reaches the server unchanged.

use proptest::prelude::*;

use super::*;
use crate::pg::Lsn;

/// Valid messages of both streams, to mutate.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut xlog = vec![b'w'];
    xlog.extend_from_slice(&0x1_0300_0000u64.to_be_bytes());
    xlog.extend_from_slice(&0x1_0400_0000u64.to_be_bytes());
    xlog.extend_from_slice(&818_035_920_123_456i64.to_be_bytes());
    xlog.extend_from_slice(b"some WAL");
    let mut keepalive = vec![b'k'];
    keepalive.extend_from_slice(&0x2000028u64.to_be_bytes());
    keepalive.extend_from_slice(&5i64.to_be_bytes());
    keepalive.push(1);
    let mut progress = vec![b'p'];
    progress.extend_from_slice(&4096i64.to_be_bytes());
    vec![
        xlog,
        keepalive,
        progress,
        b"nbase.tar\0\0".to_vec(),
        b"n16400.tar\0/srv/ts\0".to_vec(),
        b"dtar bytes".to_vec(),
        b"m".to_vec(),
    ]
}

/// A valid message with a few bytes changed, dropped or cut off, or arbitrary bytes.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let messages = valid_messages();
    let count = messages.len();
    prop_oneof![
        (
            0..count,
            prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            any::<usize>()
        )
            .prop_map(move |(which, flips, cut)| {
                let mut bytes = messages[which].clone();
                for (at, value) in flips {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = value;
                    }
                }
                let keep = cut % (bytes.len() + 1);
                bytes.truncate(keep.max(bytes.len() / 2));
                bytes
            }),
        any::<Vec<u8>>(),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Began,
    Data(Vec<u8>),
    Done,
    Finish,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Began),
        6 => message().prop_map(Step::Data),
        1 => Just(Step::Done),
        1 => Just(Step::Finish),
    ]
}

fn cell() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[0-9A-Fa-f/]{0,20}",
        "-?[0-9]{1,21}",
        "(physical|logical|[0-9A-F]{8}\\.history|16MB|1GB|/srv/ts)",
        ".{0,12}",
    ])
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(prop::collection::vec(cell(), 0..6), 0..4)
}

/// The replication scanner's reading of a string literal at the start of `text`: the text
/// and what follows.
fn scan_literal(text: &str) -> Option<(String, &str)> {
    let mut rest = text.strip_prefix('\'')?;
    let mut value = String::new();
    loop {
        let quote = rest.find('\'')?;
        value.push_str(&rest[..quote]);
        rest = &rest[quote + 1..];
        match rest.strip_prefix('\'') {
            Some(after) => {
                value.push('\'');
                rest = after;
            }
            None => return Some((value, rest)),
        }
    }
}

/// Collects a stream's events: each archive by name with its bytes, and the manifest.
fn apply(
    event: BackupStreamEvent<'_>,
    received: &mut Vec<(String, Vec<u8>)>,
    received_manifest: &mut Option<Vec<u8>>,
) {
    match event {
        BackupStreamEvent::ArchiveStart { name, .. } => received.push((name, Vec::new())),
        BackupStreamEvent::ArchiveData(data) => {
            received.last_mut().unwrap().1.extend_from_slice(data)
        }
        BackupStreamEvent::ManifestStart => *received_manifest = Some(Vec::new()),
        BackupStreamEvent::ManifestData(data) => {
            received_manifest.as_mut().unwrap().extend_from_slice(data)
        }
        BackupStreamEvent::Progress(_) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn wal_sender_messages(bytes in message()) {
        if let Ok(decoded) = decode_wal_sender_message(&bytes) {
            let _ = decoded.data_end();
            if let WalSenderMessage::XLogData { data, .. } = decoded {
                prop_assert_eq!(data.len() + 25, bytes.len());
            }
        }
    }

    #[test]
    fn backup_streams_in_any_order(
        list in rows(),
        positional in any::<bool>(),
        manifest in any::<bool>(),
        steps in prop::collection::vec(step(), 0..24),
    ) {
        let tablespaces = parse_backup_tablespaces(&list).unwrap_or_else(|_| {
            vec![
                BackupTablespace { oid: Some(16400), location: Some("/srv/ts".into()), size_kb: None },
                BackupTablespace { oid: None, location: None, size_kb: None },
            ]
        });
        let syntax = if positional { Syntax::Positional } else { Syntax::OptionList };
        let mut stream = BackupStream::new(syntax, &tablespaces, manifest);
        let mut archives = 0usize;
        for step in &steps {
            match step {
                Step::Began => {
                    if let Ok(Some(BackupStreamEvent::ArchiveStart { .. })) = stream.copy_out_began() {
                        archives += 1;
                    }
                }
                Step::Data(bytes) => {
                    if let Ok(BackupStreamEvent::ArchiveStart { .. }) = stream.copy_data(bytes) {
                        archives += 1;
                    }
                }
                Step::Done => { let _ = stream.copy_done(); }
                Step::Finish => {
                    if stream.finish().is_ok() {
                        // A stream that finishes had every archive, once.
                        prop_assert_eq!(archives, tablespaces.len());
                    }
                }
            }
            prop_assert!(archives <= tablespaces.len());
        }
    }

    #[test]
    fn result_rows(rows in rows()) {
        let _ = parse_identify_system(&rows);
        let _ = parse_timeline_history(&rows);
        let _ = parse_created_slot(&rows);
        let _ = parse_read_replication_slot(&rows);
        let _ = parse_backup_position(&rows);
        let _ = parse_timeline_switch(&rows);
        let _ = parse_wal_segment_size(&rows);
        if let Ok(list) = parse_backup_tablespaces(&rows) {
            prop_assert_eq!(list.iter().filter(|t| t.oid.is_none()).count(), 1);
        }
    }

    #[test]
    fn labels_reach_the_server_unchanged(label in ".{0,40}", rate in any::<u32>(), major in 0u32..30) {
        let Ok(syntax) = Syntax::for_major(major) else { return Ok(()) };
        let request = BaseBackupRequest {
            label: label.clone(),
            max_rate_kb: Some(rate),
            ..BaseBackupRequest::default()
        };
        if let Ok(command) = base_backup(syntax, &request) {
            let after = command.split_once("LABEL ").unwrap().1;
            let (scanned, _) = scan_literal(after).unwrap();
            prop_assert_eq!(scanned, label);
        }
    }

    #[test]
    fn slot_names_and_settings(name in ".{0,70}", lsn in any::<u64>(), tli in any::<u32>()) {
        let ok = validate_slot_name(&name).is_ok();
        prop_assert_eq!(drop_slot(&name).is_ok(), ok);
        prop_assert_eq!(create_physical_slot(Syntax::OptionList, &name, true, true).is_ok(), ok);
        let _ = start_replication(Some(&name), Lsn(lsn), tli);
        let _ = show_setting(&name);
        let _ = read_replication_slot(Syntax::OptionList, &name);
        if let Some(quoted) = quote_literal(&name) {
            prop_assert_eq!(scan_literal(&quoted), Some((name.clone(), "")));
        }
    }

    #[test]
    fn timestamps(micros in any::<i64>(), secs in any::<u32>()) {
        let _ = from_pg_timestamp(micros);
        let _ = pg_timestamp_to_system_time(micros);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(u64::from(secs) * 1_000_001);
        let pg = to_pg_timestamp(time);
        prop_assert_eq!(pg_timestamp_to_system_time(pg), Some(time));
    }

    #[test]
    fn valid_streams_decode_to_what_was_sent(
        archives in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4),
        manifest in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        chunk in 1usize..16,
        positional in any::<bool>(),
    ) {
        let count = archives.len();
        let tablespaces: Vec<BackupTablespace> = (0..count)
            .map(|i| if i + 1 == count {
                BackupTablespace { oid: None, location: None, size_kb: None }
            } else {
                BackupTablespace {
                    oid: Some(16400 + i as u32),
                    location: Some(format!("/ts/{i}")),
                    size_kb: None,
                }
            })
            .collect();
        let syntax = if positional { Syntax::Positional } else { Syntax::OptionList };
        let mut stream = BackupStream::new(syntax, &tablespaces, manifest.is_some());
        let mut received: Vec<(String, Vec<u8>)> = Vec::new();
        let mut received_manifest: Option<Vec<u8>> = None;
        if positional {
            for archive in &archives {
                let event = stream.copy_out_began().unwrap().unwrap();
                apply(event, &mut received, &mut received_manifest);
                for piece in archive.chunks(chunk) {
                    let event = stream.copy_data(piece).unwrap();
                    apply(event, &mut received, &mut received_manifest);
                }
                stream.copy_done().unwrap();
            }
            if let Some(manifest) = &manifest {
                let event = stream.copy_out_began().unwrap().unwrap();
                apply(event, &mut received, &mut received_manifest);
                for piece in manifest.chunks(chunk) {
                    let event = stream.copy_data(piece).unwrap();
                    apply(event, &mut received, &mut received_manifest);
                }
                stream.copy_done().unwrap();
            }
        } else {
            prop_assert_eq!(stream.copy_out_began().unwrap(), None);
            let mut messages: Vec<Vec<u8>> = Vec::new();
            let mut done = 0i64;
            for (archive, tablespace) in archives.iter().zip(&tablespaces) {
                let mut start = vec![b'n'];
                start.extend_from_slice(tablespace.archive_name().as_bytes());
                start.push(0);
                start.extend_from_slice(tablespace.location.as_deref().unwrap_or("").as_bytes());
                start.push(0);
                messages.push(start);
                for piece in archive.chunks(chunk) {
                    let mut data = vec![b'd'];
                    data.extend_from_slice(piece);
                    messages.push(data);
                }
                done += archive.len() as i64;
                let mut progress = vec![b'p'];
                progress.extend_from_slice(&done.to_be_bytes());
                messages.push(progress);
            }
            if let Some(manifest) = &manifest {
                messages.push(b"m".to_vec());
                for piece in manifest.chunks(chunk) {
                    let mut data = vec![b'd'];
                    data.extend_from_slice(piece);
                    messages.push(data);
                }
            }
            for message in &messages {
                let event = stream.copy_data(message).unwrap();
                apply(event, &mut received, &mut received_manifest);
            }
            stream.copy_done().unwrap();
        }
        stream.finish().unwrap();
        let expected: Vec<(String, Vec<u8>)> = tablespaces
            .iter()
            .map(BackupTablespace::archive_name)
            .zip(archives.iter().cloned())
            .collect();
        prop_assert_eq!(received, expected);
        prop_assert_eq!(received_manifest, manifest);
        let total: usize = archives.iter().map(Vec::len).sum();
        prop_assert_eq!(stream.archive_bytes(), total as u64);
    }
}
