//! What `BASE_BACKUP` sends between its tablespace list and its end position, as one sequence
//! of [`BackupStreamEvent`]s whatever the version.
//!
//! PostgreSQL 13/14 (basebackup.c) open one CopyOut per row of the tablespace list, in the
//! list's order (the main data directory last), each carrying raw tar bytes, then one more
//! CopyOut for the manifest if it was asked for. No message names the archive: it is known
//! only by its position. PostgreSQL 15+ (basebackup_copy.c) open a single CopyOut whose
//! CopyData payloads begin with a type byte: `n` a new archive (name and tablespace location,
//! NUL-terminated; the location empty for the main data directory), `d` data of the current
//! archive or of the manifest, `p` progress (bytes done, int64), `m` the manifest begins.
//!
//! The connection drives a [`BackupStream`]: it reports each CopyOut that begins, hands over
//! each CopyData payload, reports each CopyDone, and calls [`BackupStream::finish`] when the
//! end-position result set arrives.

use super::results::BackupTablespace;
use super::{ProtocolError, Syntax};

/// One step of a base backup's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupStreamEvent<'a> {
    /// A tar archive begins: `base.tar` for the main data directory (`oid` and `tablespace`
    /// None), `<oid>.tar` for a tablespace at `tablespace` on the server.
    ArchiveStart {
        name: String,
        oid: Option<u32>,
        tablespace: Option<String>,
    },
    /// The next bytes of the current archive.
    ArchiveData(&'a [u8]),
    /// Bytes the server has sent so far (15+ only; on 13/14 count the archive bytes, as
    /// pg_basebackup does).
    Progress(u64),
    /// The backup_manifest begins; no archive data follows.
    ManifestStart,
    /// The next bytes of the backup_manifest.
    ManifestData(&'a [u8]),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first CopyOut, or (13/14) between two.
    OutsideCopy,
    /// 15+: in the CopyOut, before its first archive.
    CopyBegun,
    InArchive,
    InManifest,
    /// 15+: after the CopyOut's CopyDone.
    CopyEnded,
}

/// The decoder of a base backup's COPY data for one server version.
#[derive(Clone, Debug)]
pub struct BackupStream {
    syntax: Syntax,
    tablespaces: Vec<BackupTablespace>,
    /// Which rows of the list an archive has begun for.
    started: Vec<bool>,
    manifest_expected: bool,
    manifest_seen: bool,
    state: State,
    archive_bytes: u64,
}

impl BackupStream {
    /// `tablespaces` is the list `BASE_BACKUP` returned; `manifest_expected` whether it was
    /// asked for a manifest.
    pub fn new(syntax: Syntax, tablespaces: &[BackupTablespace], manifest_expected: bool) -> Self {
        BackupStream {
            syntax,
            tablespaces: tablespaces.to_vec(),
            started: vec![false; tablespaces.len()],
            manifest_expected,
            manifest_seen: false,
            state: State::OutsideCopy,
            archive_bytes: 0,
        }
    }

    /// Archive bytes received so far (tar bytes, not counting the manifest).
    pub fn archive_bytes(&self) -> u64 {
        self.archive_bytes
    }

    fn archive_start(&mut self, index: usize) -> BackupStreamEvent<'static> {
        if let Some(started) = self.started.get_mut(index) {
            *started = true;
        }
        self.state = State::InArchive;
        let row = self.tablespaces.get(index);
        BackupStreamEvent::ArchiveStart {
            name: row.map(BackupTablespace::archive_name).unwrap_or_default(),
            oid: row.and_then(|r| r.oid),
            tablespace: row.and_then(|r| r.location.clone()),
        }
    }

    /// A CopyOutResponse arrived. On 13/14 the event that begins (an archive or the
    /// manifest); on 15+ none (the messages inside name what begins).
    pub fn copy_out_began(&mut self) -> Result<Option<BackupStreamEvent<'static>>, ProtocolError> {
        if self.state != State::OutsideCopy {
            return Err(ProtocolError::BackupStreamOrder(
                "a COPY began before the previous one ended",
            ));
        }
        match self.syntax {
            Syntax::Positional => {
                if let Some(next) = self.started.iter().position(|s| !s) {
                    Ok(Some(self.archive_start(next)))
                } else if self.manifest_expected && !self.manifest_seen {
                    self.manifest_seen = true;
                    self.state = State::InManifest;
                    Ok(Some(BackupStreamEvent::ManifestStart))
                } else {
                    Err(ProtocolError::BackupStreamOrder(
                        "more COPY streams than tablespaces and manifest",
                    ))
                }
            }
            Syntax::OptionList => {
                self.state = State::CopyBegun;
                Ok(None)
            }
        }
    }

    /// One CopyData payload.
    pub fn copy_data<'a>(
        &mut self,
        payload: &'a [u8],
    ) -> Result<BackupStreamEvent<'a>, ProtocolError> {
        match self.syntax {
            Syntax::Positional => match self.state {
                State::InArchive => {
                    self.count(payload);
                    Ok(BackupStreamEvent::ArchiveData(payload))
                }
                State::InManifest => Ok(BackupStreamEvent::ManifestData(payload)),
                _ => Err(ProtocolError::BackupStreamOrder("data outside a COPY")),
            },
            Syntax::OptionList => self.decode_message(payload),
        }
    }

    fn count(&mut self, payload: &[u8]) {
        let len = u64::try_from(payload.len()).unwrap_or(u64::MAX);
        self.archive_bytes = self.archive_bytes.saturating_add(len);
    }

    fn decode_message<'a>(
        &mut self,
        payload: &'a [u8],
    ) -> Result<BackupStreamEvent<'a>, ProtocolError> {
        let (&tag, body) = payload.split_first().ok_or(ProtocolError::EmptyMessage)?;
        if matches!(self.state, State::OutsideCopy | State::CopyEnded) {
            return Err(ProtocolError::BackupStreamOrder("data outside a COPY"));
        }
        match tag {
            b'n' => {
                if self.state == State::InManifest {
                    return Err(ProtocolError::BackupStreamOrder(
                        "an archive began after the manifest",
                    ));
                }
                let (name, rest) = c_string(body)?;
                let (location, rest) = c_string(rest)?;
                if !rest.is_empty() {
                    return Err(ProtocolError::BadArchiveMessage("bytes after the location"));
                }
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(ProtocolError::BadArchiveMessage(
                        "the archive name is not a plain file name",
                    ));
                }
                let location = (!location.is_empty()).then_some(location);
                let index = self
                    .tablespaces
                    .iter()
                    .zip(&self.started)
                    .position(|(row, started)| !started && row.location.as_deref() == location)
                    .ok_or(ProtocolError::BackupStreamOrder(
                        "an archive for a tablespace not in the list, or sent twice",
                    ))?;
                let event = self.archive_start(index);
                // The server's name, which differs from pg_basebackup's only if the server
                // compressed (pitr does not ask it to).
                Ok(match event {
                    BackupStreamEvent::ArchiveStart {
                        oid, tablespace, ..
                    } => BackupStreamEvent::ArchiveStart {
                        name: name.to_owned(),
                        oid,
                        tablespace,
                    },
                    other => other,
                })
            }
            b'd' => match self.state {
                State::InArchive => {
                    self.count(body);
                    Ok(BackupStreamEvent::ArchiveData(body))
                }
                State::InManifest => Ok(BackupStreamEvent::ManifestData(body)),
                _ => Err(ProtocolError::BackupStreamOrder(
                    "data before the first archive",
                )),
            },
            b'p' => {
                let bytes: [u8; 8] = body.try_into().map_err(|_| ProtocolError::MessageLength {
                    message: "progress",
                    len: payload.len(),
                    need: 9,
                })?;
                let done = i64::from_be_bytes(bytes);
                u64::try_from(done)
                    .map(BackupStreamEvent::Progress)
                    .map_err(|_| ProtocolError::NegativeProgress(done))
            }
            b'm' => {
                if !body.is_empty() {
                    return Err(ProtocolError::MessageLength {
                        message: "manifest",
                        len: payload.len(),
                        need: 1,
                    });
                }
                if !self.manifest_expected {
                    return Err(ProtocolError::BackupStreamOrder(
                        "a manifest that was not asked for",
                    ));
                }
                if self.manifest_seen {
                    return Err(ProtocolError::BackupStreamOrder("a second manifest"));
                }
                self.manifest_seen = true;
                self.state = State::InManifest;
                Ok(BackupStreamEvent::ManifestStart)
            }
            tag => Err(ProtocolError::UnknownMessage {
                stream: "base backup",
                tag,
            }),
        }
    }

    /// A CopyDone arrived.
    pub fn copy_done(&mut self) -> Result<(), ProtocolError> {
        self.state = match (self.syntax, self.state) {
            (_, State::OutsideCopy | State::CopyEnded) => {
                return Err(ProtocolError::BackupStreamOrder(
                    "a COPY ended that never began",
                ));
            }
            (Syntax::Positional, _) => State::OutsideCopy,
            (Syntax::OptionList, _) => State::CopyEnded,
        };
        Ok(())
    }

    /// The end position arrived: every tablespace's archive and the manifest (if asked for)
    /// must have come, and every COPY ended.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        let copy_closed = match self.syntax {
            Syntax::Positional => self.state == State::OutsideCopy,
            Syntax::OptionList => self.state == State::CopyEnded,
        };
        if !copy_closed {
            return Err(ProtocolError::BackupStreamIncomplete(
                "the COPY did not end".into(),
            ));
        }
        let missing = self.started.iter().filter(|s| !**s).count();
        if missing > 0 {
            return Err(ProtocolError::BackupStreamIncomplete(format!(
                "{missing} of {} archives did not arrive",
                self.started.len()
            )));
        }
        if self.manifest_expected && !self.manifest_seen {
            return Err(ProtocolError::BackupStreamIncomplete(
                "the backup manifest did not arrive".into(),
            ));
        }
        Ok(())
    }
}

/// A NUL-terminated UTF-8 string and what follows it.
fn c_string(bytes: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::BadArchiveMessage("a string lacks its NUL"))?;
    let (text, rest) = bytes.split_at(end);
    let text = std::str::from_utf8(text)
        .map_err(|_| ProtocolError::BadArchiveMessage("a string is not UTF-8"))?;
    Ok((text, rest.get(1..).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tablespaces() -> Vec<BackupTablespace> {
        vec![
            BackupTablespace {
                oid: Some(16400),
                location: Some("/srv/ts".into()),
                size_kb: Some(8),
            },
            BackupTablespace {
                oid: None,
                location: None,
                size_kb: Some(30000),
            },
        ]
    }

    fn new_archive(name: &str, location: &str) -> Vec<u8> {
        let mut bytes = vec![b'n'];
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(location.as_bytes());
        bytes.push(0);
        bytes
    }

    fn progress(done: i64) -> Vec<u8> {
        let mut bytes = vec![b'p'];
        bytes.extend_from_slice(&done.to_be_bytes());
        bytes
    }

    fn start(name: &str, oid: Option<u32>, tablespace: Option<&str>) -> BackupStreamEvent<'static> {
        BackupStreamEvent::ArchiveStart {
            name: name.into(),
            oid,
            tablespace: tablespace.map(str::to_owned),
        }
    }

    #[test]
    fn positional_layout_one_copy_per_tablespace_then_manifest() {
        let mut stream = BackupStream::new(Syntax::Positional, &tablespaces(), true);
        assert_eq!(
            stream.copy_out_began().unwrap(),
            Some(start("16400.tar", Some(16400), Some("/srv/ts")))
        );
        assert_eq!(
            stream.copy_data(b"tar1").unwrap(),
            BackupStreamEvent::ArchiveData(b"tar1")
        );
        stream.copy_done().unwrap();
        assert_eq!(
            stream.copy_out_began().unwrap(),
            Some(start("base.tar", None, None))
        );
        assert_eq!(
            stream.copy_data(b"tar22").unwrap(),
            BackupStreamEvent::ArchiveData(b"tar22")
        );
        assert!(stream.finish().is_err(), "inside a COPY");
        stream.copy_done().unwrap();
        assert!(stream.finish().is_err(), "manifest missing");
        assert_eq!(
            stream.copy_out_began().unwrap(),
            Some(BackupStreamEvent::ManifestStart)
        );
        assert_eq!(
            stream.copy_data(b"{}").unwrap(),
            BackupStreamEvent::ManifestData(b"{}")
        );
        stream.copy_done().unwrap();
        stream.finish().unwrap();
        assert_eq!(stream.archive_bytes(), 9);
        assert!(stream.copy_out_began().is_err(), "one COPY too many");
    }

    #[test]
    fn positional_layout_errors() {
        let mut stream = BackupStream::new(Syntax::Positional, &tablespaces(), false);
        assert!(stream.copy_data(b"x").is_err());
        assert!(stream.copy_done().is_err());
        stream.copy_out_began().unwrap();
        assert!(stream.copy_out_began().is_err());
        stream.copy_done().unwrap();
        assert_eq!(
            stream.finish(),
            Err(ProtocolError::BackupStreamIncomplete(
                "1 of 2 archives did not arrive".into()
            ))
        );
        stream.copy_out_began().unwrap();
        stream.copy_done().unwrap();
        stream.finish().unwrap();
        assert!(
            stream.copy_out_began().is_err(),
            "no manifest was asked for"
        );
    }

    #[test]
    fn option_list_layout_single_copy_of_typed_messages() {
        let mut stream = BackupStream::new(Syntax::OptionList, &tablespaces(), true);
        assert_eq!(stream.copy_out_began().unwrap(), None);
        assert_eq!(
            stream.copy_data(&new_archive("base.tar", "")).unwrap(),
            start("base.tar", None, None)
        );
        assert_eq!(
            stream.copy_data(b"dtar").unwrap(),
            BackupStreamEvent::ArchiveData(b"tar")
        );
        assert_eq!(
            stream.copy_data(&progress(3)).unwrap(),
            BackupStreamEvent::Progress(3)
        );
        assert_eq!(
            stream
                .copy_data(&new_archive("16400.tar", "/srv/ts"))
                .unwrap(),
            start("16400.tar", Some(16400), Some("/srv/ts"))
        );
        assert_eq!(
            stream.copy_data(b"d").unwrap(),
            BackupStreamEvent::ArchiveData(b"")
        );
        assert_eq!(
            stream.copy_data(b"m").unwrap(),
            BackupStreamEvent::ManifestStart
        );
        assert_eq!(
            stream.copy_data(b"d{\"a\"").unwrap(),
            BackupStreamEvent::ManifestData(b"{\"a\"")
        );
        assert!(stream.finish().is_err());
        stream.copy_done().unwrap();
        stream.finish().unwrap();
        assert_eq!(stream.archive_bytes(), 3);
        assert!(stream.copy_data(b"dx").is_err(), "after CopyDone");
        assert!(stream.copy_done().is_err());
        assert!(stream.copy_out_began().is_err());
    }

    #[test]
    fn option_list_layout_errors() {
        let fresh = || {
            let mut stream = BackupStream::new(Syntax::OptionList, &tablespaces(), true);
            stream.copy_out_began().unwrap();
            stream
        };
        for (bytes, error) in [
            (&b""[..], ProtocolError::EmptyMessage),
            (
                &b"dx"[..],
                ProtocolError::BackupStreamOrder("data before the first archive"),
            ),
            (
                &b"x"[..],
                ProtocolError::UnknownMessage {
                    stream: "base backup",
                    tag: b'x',
                },
            ),
            (
                &b"p1234567"[..],
                ProtocolError::MessageLength {
                    message: "progress",
                    len: 8,
                    need: 9,
                },
            ),
            (
                &b"mx"[..],
                ProtocolError::MessageLength {
                    message: "manifest",
                    len: 2,
                    need: 1,
                },
            ),
            (
                &b"nbase.tar"[..],
                ProtocolError::BadArchiveMessage("a string lacks its NUL"),
            ),
            (
                &b"nbase.tar\0"[..],
                ProtocolError::BadArchiveMessage("a string lacks its NUL"),
            ),
            (
                &b"nbase.tar\0\0x"[..],
                ProtocolError::BadArchiveMessage("bytes after the location"),
            ),
            (
                &b"n\0\0"[..],
                ProtocolError::BadArchiveMessage("the archive name is not a plain file name"),
            ),
            (
                &b"n../x\0\0"[..],
                ProtocolError::BadArchiveMessage("the archive name is not a plain file name"),
            ),
            (
                &b"n\xff\0\0"[..],
                ProtocolError::BadArchiveMessage("a string is not UTF-8"),
            ),
        ] {
            assert_eq!(fresh().copy_data(bytes), Err(error), "{bytes:?}");
        }
        assert_eq!(
            fresh().copy_data(&progress(-1)),
            Err(ProtocolError::NegativeProgress(-1))
        );
        let mut stream = fresh();
        assert!(
            stream
                .copy_data(&new_archive("x.tar", "/elsewhere"))
                .is_err()
        );
        stream.copy_data(&new_archive("base.tar", "")).unwrap();
        assert!(
            stream.copy_data(&new_archive("base.tar", "")).is_err(),
            "twice"
        );
        stream.copy_data(b"m").unwrap();
        assert!(stream.copy_data(b"m").is_err(), "a second manifest");
        assert!(
            stream
                .copy_data(&new_archive("16400.tar", "/srv/ts"))
                .is_err(),
            "after manifest"
        );
        stream.copy_done().unwrap();
        assert_eq!(
            stream.finish(),
            Err(ProtocolError::BackupStreamIncomplete(
                "1 of 2 archives did not arrive".into()
            ))
        );
        let mut no_manifest = BackupStream::new(Syntax::OptionList, &tablespaces(), false);
        assert!(no_manifest.copy_data(b"m").is_err(), "outside a COPY");
        no_manifest.copy_out_began().unwrap();
        assert!(no_manifest.copy_data(b"m").is_err(), "not asked for");
    }
}
