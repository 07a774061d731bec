//! `pitr restore-table`: tables (or a schema) as they were at a moment, back into the live
//! database. A scratch restore of that one database (`--db-include`) replays to the target;
//! PostgreSQL's pg_dump exports the tables from it; psql loads them into the live database
//! in one transaction, under a new name or (`--replace`) in place of the live tables. The
//! live database is not written to before the export succeeded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::commands::restore::RestoreOptions;
use crate::commands::scratch::{Scratch, pg_bin};
use crate::error::{Error, Result};
use crate::server::{ConnectSettings, Session, connection_settings};

/// What to bring back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    Tables(Vec<QualifiedName>),
    Schema(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}.{}",
            quote_ident(&self.schema),
            quote_ident(&self.name)
        )
    }
}

pub struct RestoreTableOptions {
    pub restore: RestoreOptions,
    pub selection: Selection,
    /// The live database, as a conninfo string or URL (libpq's conventions).
    pub into: String,
    /// The database of the backup the tables come from (default: the one `into` names).
    pub database: Option<String>,
    /// The new name (of the one table, or of the schema); default: the name with
    /// `_restored_<timestamp>`.
    pub rename: Option<String>,
    /// Replace the live tables (or schema), in one transaction.
    pub replace: bool,
    pub scratch_parent: PathBuf,
    pub keep: bool,
    pub pg_bin: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoredTable {
    /// As it was at the target.
    pub from: String,
    /// As it is now in the live database.
    pub into: String,
    pub rows: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestoreTableReport {
    pub backup: String,
    pub target: String,
    pub database: String,
    pub replaced: bool,
    pub tables: Vec<RestoredTable>,
    pub bytes_read: u64,
    pub restore_seconds: f64,
    pub replay_seconds: f64,
    pub export_seconds: f64,
    pub load_seconds: f64,
    pub total_seconds: f64,
}

pub async fn restore_table(
    catalog: &Catalog,
    options: &RestoreTableOptions,
) -> Result<RestoreTableReport> {
    let started = Instant::now();
    let live_settings = connection_settings(Some(&options.into))?;
    let database = options
        .database
        .clone()
        .unwrap_or_else(|| live_settings.dbname.clone());
    let suffix = format!("_restored_{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let renames = new_names(&options.selection, options.rename.as_deref(), &suffix)?;
    // Before the long part: the live database is reachable and the new names are free.
    let live = Session::connect(&live_settings).await?;
    if !options.replace {
        for name in renames.iter().map(|(_, to)| to) {
            if exists(&live, &options.selection, name).await? {
                return Err(Error::Config(format!(
                    "{name} exists already in the live database {}: name another with --as, \
                     or drop it",
                    live_settings.dbname
                )));
            }
        }
    }
    drop(live);

    let mut scratch = Scratch::create(
        &options.scratch_parent,
        "pitr-table-",
        options.keep,
        "restore-table",
    )?;
    let result = tokio::select! {
        result = run(catalog, options, &mut scratch, &live_settings, &database, &renames) => result,
        signal = crate::commands::scratch::interrupted() => Err(crate::commands::scratch::interruption(signal, &scratch)),
    };
    scratch.stop().await;
    scratch.release_claim(catalog).await;
    let mut report = result?;
    report.total_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn run(
    catalog: &Catalog,
    options: &RestoreTableOptions,
    scratch: &mut Scratch,
    live_settings: &ConnectSettings,
    database: &str,
    renames: &[(QualifiedName, QualifiedName)],
) -> Result<RestoreTableReport> {
    let mut restore = options.restore.clone();
    restore.db_include = vec![database.to_owned()];
    let bin = pg_bin::find(
        catalog.identity().await?.pg_version,
        options.pg_bin.as_deref(),
    )?;
    let restored = scratch.restore(catalog, restore).await?;
    let replay = scratch.start(&bin).await?;

    let session = scratch.connect(database).await?;
    let tables = selected_tables(&session, &options.selection, database).await?;
    let mut counts = Vec::new();
    for table in &tables {
        counts.push(count_rows(&session, table).await?);
    }
    // Under their new names in the scratch copy already: the dump then creates them so.
    if !options.replace {
        rename_in_scratch(&session, &options.selection, &tables, renames).await?;
    }
    drop(session);
    let export_started = Instant::now();
    let dump = scratch.root().join("export.sql");
    let dumped: Vec<QualifiedName> = if options.replace {
        tables.clone()
    } else {
        tables.iter().map(|t| renamed(t, renames)).collect()
    };
    export(
        &bin,
        scratch,
        database,
        &options.selection,
        (renames, options.replace),
        &dumped,
        &dump,
    )
    .await?;
    let export_seconds = export_started.elapsed();
    scratch.stop().await;

    let load_started = Instant::now();
    load(&bin, options, scratch.root(), &dump, &tables).await?;
    let load_seconds = load_started.elapsed();

    // The live copy holds every row the scratch one did.
    let live = Session::connect(live_settings).await?;
    let mut restored_tables = Vec::new();
    for ((table, into), rows) in tables.iter().zip(&dumped).zip(&counts) {
        // The load was one transaction that stopped at any error; a difference here is
        // the live database's own writes since (a replaced table is in use at once).
        let live_rows = count_rows(&live, into).await?;
        if live_rows != *rows {
            tracing::warn!(
                "{into} holds {live_rows} rows in the live database now, {rows} at the target \
                 (written to since the load?)"
            );
        }
        restored_tables.push(RestoredTable {
            from: table.to_string(),
            into: into.to_string(),
            rows: *rows,
        });
    }
    Ok(RestoreTableReport {
        backup: restored.plan.backup.id.clone(),
        target: options.restore.request.recovery.target.to_string(),
        database: database.to_owned(),
        replaced: options.replace,
        tables: restored_tables,
        bytes_read: restored.bytes_read,
        restore_seconds: restored.elapsed.as_secs_f64(),
        replay_seconds: replay.as_secs_f64(),
        export_seconds: export_seconds.as_secs_f64(),
        load_seconds: load_seconds.as_secs_f64(),
        total_seconds: 0.0,
    })
}

/// PostgreSQL's identifier limit (NAMEDATALEN - 1 bytes).
const MAX_IDENTIFIER: usize = 63;

/// The name each restored table (or the schema) gets: `--as`, else the name with `suffix`
/// (cut to fit PostgreSQL's identifier limit). For a schema, one pair naming the schema.
fn new_names(
    selection: &Selection,
    rename: Option<&str>,
    suffix: &str,
) -> Result<Vec<(QualifiedName, QualifiedName)>> {
    let with_suffix = |name: &str| with_suffix(name, suffix);
    if let Some(new) = rename
        && new.len() > MAX_IDENTIFIER
    {
        return Err(Error::Config(format!(
            "--as {new}: longer than PostgreSQL's {MAX_IDENTIFIER}-byte names"
        )));
    }
    match selection {
        Selection::Schema(schema) => {
            let from = QualifiedName {
                schema: schema.clone(),
                name: String::new(),
            };
            let to = QualifiedName {
                schema: rename.map_or_else(|| with_suffix(schema), str::to_owned),
                name: String::new(),
            };
            Ok(vec![(from, to)])
        }
        Selection::Tables(tables) => {
            if rename.is_some() && tables.len() > 1 {
                return Err(Error::Config(
                    "--as names one table: give one --table with it, or leave it out (each \
                     table then gets a _restored_<timestamp> suffix)"
                        .into(),
                ));
            }
            Ok(tables
                .iter()
                .map(|t| {
                    let name = rename.map_or_else(|| with_suffix(&t.name), str::to_owned);
                    (
                        t.clone(),
                        QualifiedName {
                            schema: t.schema.clone(),
                            name,
                        },
                    )
                })
                .collect())
        }
    }
}

/// `name` with `suffix`, cut first to fit PostgreSQL's identifier limit.
fn with_suffix(name: &str, suffix: &str) -> String {
    let mut cut = MAX_IDENTIFIER.saturating_sub(suffix.len()).min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &name[..cut])
}

fn renamed(table: &QualifiedName, renames: &[(QualifiedName, QualifiedName)]) -> QualifiedName {
    for (from, to) in renames {
        if from.name.is_empty() && from.schema == table.schema {
            return QualifiedName {
                schema: to.schema.clone(),
                name: table.name.clone(),
            };
        }
        if from == table {
            return to.clone();
        }
    }
    table.clone()
}

async fn exists(session: &Session, selection: &Selection, name: &QualifiedName) -> Result<bool> {
    let sql = match selection {
        Selection::Schema(_) => format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = {}",
            quote_literal(&name.schema)
        ),
        Selection::Tables(_) => format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relname = {}",
            quote_literal(&name.schema),
            quote_literal(&name.name)
        ),
    };
    let rows = session
        .simple_rows(&sql)
        .await
        .map_err(|e| Error::Server(format!("reading the live database: {e}")))?;
    Ok(first_value(&rows).is_some_and(|v| v != "0"))
}

fn first_value(rows: &[Vec<Option<String>>]) -> Option<String> {
    rows.first().and_then(|r| r.first()).cloned().flatten()
}

/// The tables the selection names, as they were at the target; an error if one was not
/// there.
async fn selected_tables(
    session: &Session,
    selection: &Selection,
    database: &str,
) -> Result<Vec<QualifiedName>> {
    let sql = |schema: &str, name: Option<&str>| {
        format!(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n \
             ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
             AND n.nspname = {}{} ORDER BY 2",
            quote_literal(schema),
            name.map_or_else(String::new, |n| format!(
                " AND c.relname = {}",
                quote_literal(n)
            ))
        )
    };
    let query = |sql: String| async move {
        session
            .simple_rows(&sql)
            .await
            .map_err(|e| Error::Server(format!("reading the scratch copy: {e}")))
    };
    match selection {
        Selection::Tables(tables) => {
            for table in tables {
                if query(sql(&table.schema, Some(&table.name)))
                    .await?
                    .is_empty()
                {
                    return Err(Error::Incomplete(format!(
                        "table {table} did not exist in database {database} at the target: \
                         check the name, or choose an earlier --target-time"
                    )));
                }
            }
            Ok(tables.clone())
        }
        Selection::Schema(schema) => {
            let exists = query(format!(
                "SELECT 1 FROM pg_namespace WHERE nspname = {}",
                quote_literal(schema)
            ))
            .await?;
            if exists.is_empty() {
                return Err(Error::Incomplete(format!(
                    "schema {} did not exist in database {database} at the target",
                    quote_ident(schema)
                )));
            }
            Ok(query(sql(schema, None))
                .await?
                .into_iter()
                .map(|row| QualifiedName {
                    schema: row.first().cloned().flatten().unwrap_or_default(),
                    name: row.get(1).cloned().flatten().unwrap_or_default(),
                })
                .collect())
        }
    }
}

async fn count_rows(session: &Session, table: &QualifiedName) -> Result<u64> {
    let rows = session
        .simple_rows(&format!("SELECT count(*) FROM {table}"))
        .await
        .map_err(|e| Error::Server(format!("counting the rows of {table}: {e}")))?;
    Ok(first_value(&rows).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Renames, in the scratch copy, the tables (with their indexes and owned sequences, whose
/// names would collide with the live ones) or the schema.
async fn rename_in_scratch(
    session: &Session,
    selection: &Selection,
    tables: &[QualifiedName],
    renames: &[(QualifiedName, QualifiedName)],
) -> Result<()> {
    let mut sql = String::from("BEGIN;\n");
    if let Selection::Schema(schema) = selection {
        let to = &renames[0].1.schema;
        sql.push_str(&format!(
            "ALTER SCHEMA {} RENAME TO {};\n",
            quote_ident(schema),
            quote_ident(to)
        ));
    } else {
        for table in tables {
            let to = renamed(table, renames);
            if &to == table {
                continue; // --as the same name: back where it was (the live one is gone)
            }
            // The new name's suffix; for a name that is no suffix of the old one, that
            // whole name (unique as the table's own new name is).
            let suffix = match to.name.strip_prefix(table.name.as_str()) {
                Some(suffix) if !suffix.is_empty() => suffix.to_owned(),
                _ => format!("_{}", to.name),
            };
            let suffix = suffix.as_str();
            // Its indexes (and the constraints they back) and owned sequences.
            let dependents = session
                .simple_rows(&format!(
                    "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'INDEX' END, c.relname \
                     FROM pg_class c WHERE c.oid IN (SELECT indexrelid FROM pg_index WHERE \
                     indrelid = {regclass}::regclass) OR (c.relkind = 'S' AND c.oid IN (SELECT \
                     objid FROM pg_depend WHERE refobjid = {regclass}::regclass AND classid = \
                     'pg_class'::regclass AND deptype IN ('a', 'i')))",
                    regclass = quote_literal(&table.to_string())
                ))
                .await
                .map_err(|e| Error::Server(format!("reading the scratch copy: {e}")))?;
            for row in dependents {
                let (Some(Some(kind)), Some(Some(name))) = (row.first(), row.get(1)) else {
                    continue;
                };
                sql.push_str(&format!(
                    "ALTER {kind} {}.{} RENAME TO {};\n",
                    quote_ident(&table.schema),
                    quote_ident(name),
                    quote_ident(&with_suffix(name, suffix))
                ));
            }
            sql.push_str(&format!(
                "ALTER TABLE {table} RENAME TO {};\n",
                quote_ident(&to.name)
            ));
        }
    }
    sql.push_str("COMMIT;\n");
    session
        .simple_rows(&sql)
        .await
        .map_err(|e| Error::Server(format!("renaming in the scratch copy: {e}")))?;
    Ok(())
}

/// pg_dump of the tables (or schema) from the scratch server, as plain SQL in `dump`.
async fn export(
    bin: &Path,
    scratch: &Scratch,
    database: &str,
    selection: &Selection,
    (renames, replace): (&[(QualifiedName, QualifiedName)], bool),
    tables: &[QualifiedName],
    dump: &Path,
) -> Result<()> {
    let mut command = tokio::process::Command::new(bin.join("pg_dump"));
    command
        .arg("--dbname")
        .arg(scratch.conninfo(database))
        .arg("--no-owner")
        .arg("--format=plain")
        .arg("--file")
        .arg(dump)
        .env_remove("PGSERVICE");
    match selection {
        Selection::Schema(schema) => {
            // The schema's name in the scratch copy: renamed unless it replaces the live one.
            let dumped = if replace {
                schema
            } else {
                &renames[0].1.schema
            };
            command.arg("--schema").arg(quote_ident(dumped));
        }
        Selection::Tables(_) => {
            for table in tables {
                command.arg("--table").arg(table.to_string());
            }
        }
    }
    run_tool(command, "pg_dump (the export from the scratch copy)").await
}

/// Loads the dump into the live database in one transaction: with `--replace`, the live
/// tables (or schema) are dropped first, in the same transaction.
async fn load(
    bin: &Path,
    options: &RestoreTableOptions,
    root: &Path,
    dump: &Path,
    tables: &[QualifiedName],
) -> Result<()> {
    let prelude = root.join("prelude.sql");
    let mut sql = String::new();
    if options.replace {
        match &options.selection {
            Selection::Schema(schema) => sql.push_str(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE;\n",
                quote_ident(schema)
            )),
            Selection::Tables(_) => {
                for table in tables {
                    sql.push_str(&format!("DROP TABLE IF EXISTS {table};\n"));
                }
            }
        }
    }
    std::fs::write(&prelude, sql).map_err(|e| Error::local_io(prelude.display(), e))?;
    let mut command = tokio::process::Command::new(bin.join("psql"));
    command
        .arg("--no-psqlrc")
        .arg("--quiet")
        .arg("--set")
        .arg("ON_ERROR_STOP=1")
        .arg("--single-transaction")
        .arg("--dbname")
        .arg(&options.into)
        .arg("--file")
        .arg(&prelude)
        .arg("--file")
        .arg(dump);
    run_tool(
        command,
        "psql (the load into the live database, rolled back)",
    )
    .await
}

async fn run_tool(mut command: tokio::process::Command, what: &str) -> Result<()> {
    let started = Instant::now();
    let output = command
        .stdin(std::process::Stdio::null())
        // A run stopped by a signal stops its tools too (a load then rolls back).
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::Server(format!("cannot run {what}: {e}")))?;
    tracing::debug!("{what} took {:?}", started.elapsed());
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .collect();
    Err(Error::Server(format!(
        "{what} failed ({}): {}",
        output.status,
        lines.join(" / ")
    )))
}

/// `SCHEMA.TABLE` (each part may be double-quoted to keep capitals or a dot; no schema
/// means public).
pub fn parse_table(text: &str) -> std::result::Result<QualifiedName, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut current)),
            // As in SQL (and pg_dump's patterns): unquoted names fold to lower case.
            c if !quoted => current.push(c.to_ascii_lowercase()),
            c => current.push(c),
        }
    }
    parts.push(current);
    if quoted || parts.iter().any(String::is_empty) || parts.len() > 2 {
        return Err(format!(
            "'{text}' is not SCHEMA.TABLE (quote a part with \"…\" if it holds a dot)"
        ));
    }
    let name = parts.pop().unwrap_or_default();
    Ok(QualifiedName {
        schema: parts.pop().unwrap_or_else(|| "public".into()),
        name,
    })
}

/// One name (a schema), folded and unquoted as `parse_table` does.
pub fn parse_identifier(text: &str) -> std::result::Result<String, String> {
    match parse_table(text) {
        Ok(name) if !text.contains('.') || text.starts_with('"') && name.schema == "public" => {
            Ok(name.name)
        }
        _ => Err(format!(
            "'{text}' is not one name (quote it with \"…\" if it holds a dot)"
        )),
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse_as_sql_writes_them() {
        let t = parse_table("public.orders").unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "orders"));
        let t = parse_table("Orders").unwrap();
        assert_eq!((t.schema.as_str(), t.name.as_str()), ("public", "orders"));
        let t = parse_table("\"My.Schema\".\"Or\"\"ders\"").unwrap();
        assert_eq!(
            (t.schema.as_str(), t.name.as_str()),
            ("My.Schema", "Or\"ders")
        );
        assert_eq!(t.to_string(), "\"My.Schema\".\"Or\"\"ders\"");
        assert!(parse_table("a.b.c").is_err());
        assert_eq!(parse_identifier("App").unwrap(), "app");
        assert_eq!(parse_identifier("\"A.b\"").unwrap(), "A.b");
        assert!(parse_identifier("a.b").is_err());
        assert!(parse_table("a.").is_err());
        assert!(parse_table("\"a").is_err());
    }

    #[test]
    fn new_names_fit_postgres_identifiers() {
        let long = "x".repeat(63);
        let tables = Selection::Tables(vec![QualifiedName {
            schema: "s".into(),
            name: long,
        }]);
        let names = new_names(&tables, None, "_restored_20261206120000").unwrap();
        assert_eq!(names[0].1.name.len(), 63);
        assert!(names[0].1.name.ends_with("_restored_20261206120000"));
        let named = new_names(&tables, Some("back"), "_x").unwrap();
        assert_eq!(named[0].1.name, "back");
        let two = Selection::Tables(vec![
            parse_table("a.b").unwrap(),
            parse_table("a.c").unwrap(),
        ]);
        assert!(new_names(&two, Some("x"), "_x").is_err());
        let schema = new_names(&Selection::Schema("app".into()), None, "_r").unwrap();
        assert_eq!(schema[0].1.schema, "app_r");
        assert_eq!(
            renamed(&parse_table("app.t").unwrap(), &schema),
            parse_table("app_r.t").unwrap()
        );
    }
}
