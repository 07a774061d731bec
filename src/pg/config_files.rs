//! The files of a server's configuration (guc-file.l, `ParseConfigFp`): which files a
//! `postgresql.conf` includes, and the same text with settings that name files rewritten
//! for a copy of the cluster elsewhere. Pure: paths in, text out.

use std::path::{Component, Path, PathBuf};

use super::guc::{quote, setting_name, setting_value};

/// The three include directives of `postgresql.conf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeKind {
    /// `include 'file'`: the file must exist.
    Include,
    /// `include_if_exists 'file'`: skipped when missing.
    IncludeIfExists,
    /// `include_dir 'dir'`: every `*.conf` in it not starting with `.`, by name.
    IncludeDir,
}

impl IncludeKind {
    fn of(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "include" => Some(IncludeKind::Include),
            "include_if_exists" => Some(IncludeKind::IncludeIfExists),
            "include_dir" => Some(IncludeKind::IncludeDir),
            _ => None,
        }
    }
}

/// An include directive, with its target resolved against the including file's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Include {
    pub kind: IncludeKind,
    pub target: PathBuf,
}

/// The include directives of `text`, read from the file `file` (relative targets are
/// relative to its directory, as the server takes them).
pub fn includes(text: &[u8], file: &Path) -> Vec<Include> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let name = String::from_utf8_lossy(setting_name(line)?).into_owned();
            let kind = IncludeKind::of(&name)?;
            let value = setting_value(line)?;
            Some(Include {
                kind,
                target: resolve(file, &value),
            })
        })
        .collect()
}

/// `value` as the server takes it in `file`: absolute as it is, else beside `file`.
pub fn resolve(file: &Path, value: &str) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        return lexical(path);
    }
    lexical(&file.parent().unwrap_or(Path::new("/")).join(path))
}

/// `path` with `.` and `..` taken out without asking the file system.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Whether `include_dir` reads a file of this name.
pub fn include_dir_reads(name: &str) -> bool {
    name.ends_with(".conf") && !name.starts_with('.')
}

/// What becomes of a line that sets `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Keep,
    /// Commented out.
    Drop,
    /// Set to this value instead.
    Set(String),
}

/// A line [`rewrite`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub old: String,
    /// None: commented out.
    pub new: Option<String>,
}

const MARK: &str = "# pitr restore:";

/// `text` with each setting line `decide(name, value)` does not keep replaced: commented
/// out (`# pitr restore: <line>`), or set to the new value with the old one in a comment.
/// Every other byte is unchanged. `name` is given in lower case.
pub fn rewrite(text: &[u8], mut decide: impl FnMut(&str, &str) -> Edit) -> (Vec<u8>, Vec<Change>) {
    let mut out = Vec::with_capacity(text.len());
    let mut changes = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        let setting = setting_name(line).and_then(|name| {
            let name = String::from_utf8_lossy(name).to_ascii_lowercase();
            Some((name, setting_value(line)?))
        });
        let Some((name, old)) = setting else {
            out.extend_from_slice(line);
            continue;
        };
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let newline = if body.len() < line.len() { "\n" } else { "" };
        match decide(&name, &old) {
            Edit::Keep => {
                out.extend_from_slice(line);
                continue;
            }
            Edit::Drop => {
                out.extend_from_slice(format!("{MARK} ").as_bytes());
                out.extend_from_slice(body);
                out.extend_from_slice(newline.as_bytes());
                changes.push(Change {
                    name,
                    old,
                    new: None,
                });
            }
            Edit::Set(new) => {
                out.extend_from_slice(
                    format!(
                        "{name} = {}\t{MARK} was {}{newline}",
                        quote(&new),
                        quote(&old)
                    )
                    .as_bytes(),
                );
                changes.push(Change {
                    name,
                    old,
                    new: Some(new),
                });
            }
        }
    }
    (out, changes)
}

/// Debian's layout (postgresql-common): `/etc/postgresql/<version>/<cluster>`, the version
/// and cluster name of a configuration directory.
pub fn debian_cluster(config_dir: &Path) -> Option<(String, String)> {
    let rest = config_dir.strip_prefix("/etc/postgresql").ok()?;
    let parts: Vec<&str> = rest.iter().filter_map(|p| p.to_str()).collect();
    match parts.as_slice() {
        [version, cluster]
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            Some(((*version).to_owned(), (*cluster).to_owned()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_resolve_beside_the_including_file() {
        let text = b"port = 5433\ninclude_dir = 'conf.d'\ninclude_if_exists '/opt/x.conf'\n\
            # include 'commented.conf'\ninclude '../shared/a.conf' # why\n";
        let found = includes(text, Path::new("/etc/postgresql/15/main/postgresql.conf"));
        assert_eq!(
            found,
            vec![
                Include {
                    kind: IncludeKind::IncludeDir,
                    target: "/etc/postgresql/15/main/conf.d".into()
                },
                Include {
                    kind: IncludeKind::IncludeIfExists,
                    target: "/opt/x.conf".into()
                },
                Include {
                    kind: IncludeKind::Include,
                    target: "/etc/postgresql/15/shared/a.conf".into()
                },
            ]
        );
    }

    #[test]
    fn rewrite_comments_out_and_sets_keeping_every_other_byte() {
        let text = b"# top\ndata_directory = '/var/lib/postgresql/15/main'\t# use data in another directory\n\
            hba_file = '/etc/postgresql/15/main/pg_hba.conf'\nport = 5433\nshared_buffers=128MB";
        let (out, changes) = rewrite(text, |name, _| match name {
            "data_directory" => Edit::Drop,
            "hba_file" => Edit::Set("/new/it's.conf".into()),
            _ => Edit::Keep,
        });
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "# top\n# pitr restore: data_directory = '/var/lib/postgresql/15/main'\t# use data in \
             another directory\nhba_file = '/new/it''s.conf'\t# pitr restore: was \
             '/etc/postgresql/15/main/pg_hba.conf'\nport = 5433\nshared_buffers=128MB"
        );
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].new, None);
        assert_eq!(changes[1].old, "/etc/postgresql/15/main/pg_hba.conf");
        // The rewritten text reads back as the new values.
        let (_, again) = rewrite(out.as_bytes(), |name, value| {
            assert!(name != "data_directory");
            if name == "hba_file" {
                assert_eq!(value, "/new/it's.conf");
            }
            Edit::Keep
        });
        assert!(again.is_empty());
    }

    #[test]
    fn debian_clusters_are_named_by_their_directory() {
        assert_eq!(
            debian_cluster(Path::new("/etc/postgresql/15/main")),
            Some(("15".into(), "main".into()))
        );
        assert_eq!(debian_cluster(Path::new("/etc/postgresql/15")), None);
        assert_eq!(debian_cluster(Path::new("/srv/pg/15/main")), None);
        assert!(include_dir_reads("a.conf") && !include_dir_reads(".a.conf"));
        assert!(!include_dir_reads("a.conf.bak"));
    }
}
