//! `pg::tar_stream` on the archives PostgreSQL really writes: `pg_basebackup -Ft` of a
//! PostgreSQL 15 cluster with a tablespace and WAL in the archive, fed in pieces of every
//! size, must give exactly the files, directories and symlinks GNU tar extracts from the same
//! archives (sizes, CRCs, modes, mtimes); GNU tar's own formats parse too, and a cut archive
//! is never complete.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use pitr::pg::tar_stream::{ArchiveEnd, EntryKind, TarError, TarEvent, TarStream};

use crate::common::{PgCluster, TestDir, as_postgres, run_ok};

/// What an archive (or an extracted tree) holds: per path, its kind and, for files, the
/// size and CRC-32C of the content, with the mode and mtime.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    File {
        size: u64,
        crc: u32,
        mode: u32,
        mtime: u64,
    },
    Directory {
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

struct Parsed {
    items: BTreeMap<String, Item>,
    ended: bool,
}

fn parse(archive: &[u8], chunk: usize) -> Result<Parsed, TarError> {
    let mut stream = TarStream::new();
    let mut items = BTreeMap::new();
    let mut ended = false;
    let mut current: Option<(String, EntryKind, u32, u64)> = None;
    let mut crc = 0u32;
    let mut seen = 0u64;
    for piece in archive.chunks(chunk) {
        let mut rest = piece;
        while let Some(event) = stream.next_event(&mut rest)? {
            match event {
                TarEvent::Entry(entry) => {
                    assert!(current.is_none());
                    current = Some((entry.path, entry.kind, entry.mode, entry.mtime));
                    crc = 0;
                    seen = 0;
                }
                TarEvent::Data(data) => {
                    crc = crc32c::crc32c_append(crc, data);
                    seen += data.len() as u64;
                }
                TarEvent::EntryEnd => {
                    let (path, kind, mode, mtime) = current.take().unwrap();
                    let item = match kind {
                        EntryKind::File { size } => {
                            assert_eq!(seen, size, "{path}");
                            Item::File {
                                size,
                                crc,
                                mode,
                                mtime,
                            }
                        }
                        EntryKind::Directory => Item::Directory { mode },
                        EntryKind::Symlink { target } => Item::Symlink { target },
                        EntryKind::Hardlink { target } => panic!("{path}: hard link to {target}"),
                    };
                    assert!(items.insert(path.clone(), item).is_none(), "{path} twice");
                }
                TarEvent::End => ended = true,
            }
        }
    }
    stream.finish(ArchiveEnd::Marker)?;
    Ok(Parsed { items, ended })
}

/// The same description of a tree GNU tar extracted.
fn extracted(root: &Path) -> BTreeMap<String, Item> {
    let mut items = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let item = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                Item::Symlink {
                    target: target.to_str().unwrap().to_owned(),
                }
            } else if meta.is_dir() {
                pending.push(path.clone());
                Item::Directory { mode }
            } else {
                let content = std::fs::read(&path).unwrap();
                Item::File {
                    size: meta.len(),
                    crc: crc32c::crc32c(&content),
                    mode,
                    mtime: meta.mtime() as u64,
                }
            };
            items.insert(relative, item);
        }
    }
    items
}

fn extract(archive: &Path, into: &Path) -> BTreeMap<String, Item> {
    std::fs::create_dir_all(into).unwrap();
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into),
    );
    extracted(into)
}

#[test]
fn pg_basebackup_archives_parse_to_what_tar_extracts() {
    let dir = TestDir::new("tar-stream");
    let mut cluster = PgCluster::initdb(&dir, "pg", &[]);
    cluster.start();
    let tablespace = dir.subdir("ts");
    cluster.sql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        tablespace.display()
    ));
    cluster.sql(
        "CREATE TABLE t (i int, s text) TABLESPACE ts; \
         INSERT INTO t SELECT g, repeat(md5(g::text), g % 40) FROM generate_series(1, 20000) g",
    );
    let out = dir.subdir("backup");
    // -X fetch puts the WAL in base.tar after the data files, as BASE_BACKUP's WAL option.
    run_ok(
        as_postgres(cluster.bin.join("pg_basebackup"))
            .args(["-Ft", "-X", "fetch", "-c", "fast", "-U", "postgres", "-h"])
            .arg(&cluster.socket_dir)
            .args(["-p", &cluster.port.to_string(), "-D"])
            .arg(&out),
    );
    let oid = cluster.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts'");

    for name in ["base.tar".to_owned(), format!("{oid}.tar")] {
        let path = out.join(&name);
        let archive = std::fs::read(&path).unwrap();
        let expected = extract(&path, &dir.path().join(format!("x-{name}")));
        assert!(expected.len() > 5, "{name}: {expected:?}");
        let whole = parse(&archive, archive.len()).unwrap();
        assert!(
            whole.ended,
            "{name}: PostgreSQL 15 ends its archives with two zero blocks"
        );
        assert_eq!(whole.items, expected, "{name}");
        for chunk in [1, 7, 511, 513, 8192, 64 << 10] {
            assert_eq!(
                parse(&archive, chunk).unwrap().items,
                expected,
                "{name} by {chunk}"
            );
        }
        if name == "base.tar" {
            // pg_basebackup -Ft asks for a tablespace_map in place of the pg_tblspc symlink
            // (PostgreSQL's own symlink header is a unit test); GNU tar's is below.
            assert!(!whole.items.contains_key(&format!("pg_tblspc/{oid}")));
            let map =
                std::fs::read_to_string(dir.path().join("x-base.tar/tablespace_map")).unwrap();
            assert!(
                map.starts_with(&format!("{oid} {}", tablespace.display())),
                "{map}"
            );
            assert!(
                whole.items.contains_key("pg_wal/archive_status"),
                "written as ./pg_wal/…"
            );
            assert!(whole.items.keys().any(|p| p.starts_with("pg_wal/0000000")));
            let large = whole
                .items
                .values()
                .filter(|i| matches!(i, Item::File { size, .. } if *size >= 16 << 20))
                .count();
            assert!(large >= 1, "a WAL segment of 16 MiB");
        }

        // Cut anywhere before its end, the archive is incomplete, and the error says where.
        for cut in [
            0,
            100,
            512,
            700,
            archive.len() / 2,
            archive.len() - 2 * 512,
            archive.len() - 1,
        ] {
            let err = parse(&archive[..cut], 4096).map(|_| ()).unwrap_err();
            assert!(
                matches!(err, TarError::Truncated { offset, .. } if offset == cut as u64),
                "{name} cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("incomplete"), "{err}");
        }
        // One flipped bit in the first header is a checksum error.
        let mut corrupt = archive.clone();
        corrupt[10] ^= 0x20;
        let err = parse(&corrupt, 64 << 10).map(|_| ()).unwrap_err();
        assert!(matches!(err, TarError::Checksum { offset: 0, .. }), "{err}");
    }

    // PostgreSQL 13 and 14 send no end blocks: the transport's end is the archive's end, but
    // only between two entries.
    let archive = std::fs::read(out.join(format!("{oid}.tar"))).unwrap();
    let unterminated = &archive[..archive.len() - 2 * 512];
    let mut stream = TarStream::new();
    let events = stream.feed(unterminated).unwrap();
    assert!(!events.contains(&TarEvent::End));
    stream.finish(ArchiveEnd::MarkerOrTransport).unwrap();
    let mut stream = TarStream::new();
    stream
        .feed(&unterminated[..unterminated.len() - 1])
        .unwrap();
    assert!(stream.finish(ArchiveEnd::MarkerOrTransport).is_err());

    // GNU tar's formats of the same tree parse to the same contents, with the tablespace's
    // symlink where pg_basebackup -Fp would put it.
    let tree = dir.path().join("x-base.tar");
    std::os::unix::fs::symlink(&tablespace, tree.join("pg_tblspc").join(&oid)).unwrap();
    let names: Vec<String> = std::fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for format in ["gnu", "ustar"] {
        let path = dir.path().join(format!("{format}.tar"));
        run_ok(
            Command::new("tar")
                .arg(format!("--format={format}"))
                .arg("-cf")
                .arg(&path)
                .arg("-C")
                .arg(&tree)
                .args(&names),
        );
        let parsed = parse(&std::fs::read(&path).unwrap(), 10240).unwrap();
        assert!(parsed.ended, "{format}");
        assert_eq!(parsed.items, extracted(&tree), "{format}");
        assert!(
            matches!(&parsed.items[&format!("pg_tblspc/{oid}")], Item::Symlink { target }
                if *target == tablespace.to_str().unwrap()),
            "{format}"
        );
    }
}
