//! Command-line interface: flags and environment variables (here), what each command
//! prints (`render`), the terminal progress bar (`progress`), and the glue from arguments to
//! a command's options (`run`).

mod options;
mod progress;
mod render;
pub mod restore_command;
mod run;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::commands::restore::server::ArchiveMode;
use crate::config::Settings;
pub use crate::config::{GlobalSettingArgs, RetentionArgs};
use crate::pg::Lsn;
use crate::pg::recovery_target::{
    RecoveryRequest, Target, TargetAction, TargetTimeline, parse_target_time,
};

pub use run::run;

#[derive(Debug, Parser)]
#[command(
    name = "pitr",
    version,
    about = "PostgreSQL point-in-time recovery: WAL archiving, base backups and restore to a \
             moment, with a local or S3 repository",
    after_help = crate::error::exit_codes_help()
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, shown in their own help section after the command's own.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// TOML file of settings, named as their flags with _ for - (s3_endpoint for
    /// --s3-endpoint); flags and PITR_… variables win over it.
    #[arg(long, global = true, env = "PITR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: GlobalSettingArgs,

    /// Repositories 2 to 4 (hidden flags: --repo2, --repo2-s3-endpoint, …).
    #[command(flatten)]
    pub numbered: crate::config::NumberedRepoArgs,

    /// More output: -v one line per file, -vv debug (default: a summary).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl GlobalArgs {
    /// Flags and environment, as clap merged them.
    pub fn settings(&self) -> Settings {
        Settings {
            numbered: self.numbered.numbered.clone(),
            ..self.settings.settings()
        }
    }
}

/// The scratch cluster of drill and restore-table.
#[derive(Clone, Debug, Default, Args)]
pub struct ScratchArgs {
    /// Make the scratch directory under DIR (default: $TMPDIR, else /tmp); it needs room
    /// for the restored cluster.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// Keep the scratch directory (the server is stopped all the same).
    #[arg(long)]
    pub keep: bool,
    /// The directory of the PostgreSQL binaries of the backup's major version (default:
    /// pg_config --bindir, PATH, /usr/lib/postgresql/<major>/bin, /usr/pgsql-<major>/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,
    /// Objects restored at once (default: the number of cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// Where recovery stops: the same options for restore, drill and restore-table.
#[derive(Clone, Debug, Default, Args)]
#[command(group(clap::ArgGroup::new("recovery_target").multiple(false).args([
    "target_time", "target_lsn", "target_xid", "target_name", "target"
])))]
pub struct TargetArgs {
    /// Stop at this time: RFC 3339 or 'YYYY-MM-DD HH:MM:SS[.ffffff]+TZ'; a zone is required.
    #[arg(long, value_name = "TIME", value_parser = parse_target_time)]
    pub target_time: Option<DateTime<Utc>>,
    /// Stop at this WAL location (X/X).
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    pub target_lsn: Option<Lsn>,
    /// Stop after this transaction commits.
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<u32>,
    /// Stop at this restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent. Without any --target* option, recovery
    /// replays all archived WAL (the default).
    #[arg(long, value_parser = ["immediate"])]
    pub target: Option<String>,
    /// Timeline to follow: latest, current or a number (default: latest, PostgreSQL's); the
    /// restore plan prints the one chosen.
    #[arg(long, value_name = "TIMELINE", value_parser = parse_from_str::<TargetTimeline>)]
    pub target_timeline: Option<TargetTimeline>,
}

impl TargetArgs {
    /// The recovery request these options make, with `action` at the target.
    pub fn recovery(&self, action: Option<TargetAction>) -> RecoveryRequest {
        // clap lets at most one target through.
        let target = if let Some(time) = self.target_time {
            Target::Time(time)
        } else if let Some(lsn) = self.target_lsn {
            Target::Lsn(lsn)
        } else if let Some(xid) = self.target_xid {
            Target::Xid(xid)
        } else if let Some(name) = &self.target_name {
            Target::Name(name.clone())
        } else if self.target.is_some() {
            Target::Immediate
        } else {
            Target::End
        };
        RecoveryRequest {
            target,
            action,
            timeline: self.target_timeline,
        }
    }
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Record the cluster that a repository belongs to (run once, before archiving).
    Init {
        /// The cluster's data directory, on this host.
        #[arg(long, env = "PGDATA", value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Or its server, when this host has no access to the data directory (a backup
        /// host): a connection string or URL as libpq reads them (see `backup --dbname`); the
        /// identity is asked of the server. --pgdata, where given, wins.
        #[arg(long, short = 'd', value_name = "CONNINFO")]
        dbname: Option<String>,
        /// Encrypt everything stored: a new data key, wrapped by each key given
        /// (passphrase_file / PITR_PASSPHRASE, key_file, kms_key_id).
        #[arg(long)]
        encrypt: bool,
    },
    /// Store one WAL file: archive_command = 'pitr --repo URL archive-push %p'.
    ArchivePush {
        /// Path of the WAL file (%p), relative to the data directory or absolute.
        path: PathBuf,
    },
    /// Stream WAL over a physical replication slot into the repository, continuously (a
    /// long-running service: contrib/systemd/pitr-receive-wal.service).
    ReceiveWal {
        /// How to reach the server (a replication connection is opened); default from the
        /// environment (PGHOST, PGPORT, PGUSER…) as for libpq.
        #[arg(long, short = 'd', value_name = "CONNINFO")]
        dbname: Option<String>,
        /// The physical replication slot to stream from (it keeps the server's WAL until
        /// the spool holds it).
        #[arg(long, value_name = "NAME", default_value = "pitr")]
        slot: String,
        /// Create the slot when it does not exist.
        #[arg(long)]
        create_slot: bool,
        /// The spool on local disk, where WAL lands (fsynced) before it is stored; default:
        /// under spool_path.
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
        /// Report WAL as flushed as soon as it is durable, for a receiver named in
        /// synchronous_standby_names (as pitr_receive_wal, its application_name): then no
        /// commit the primary acknowledged is lost with the primary's host. `spool` (the
        /// default when given bare): fsynced in the spool on this host; `repository`: stored
        /// in the repository as the tail, so that losing this host too loses nothing.
        #[arg(long, value_name = "WHERE", num_args = 0..=1, default_missing_value = "spool", value_parser = parse_synchronous)]
        synchronous: Option<crate::commands::receive_wal::Synchronous>,
        /// Seconds between position reports when nothing else prompts one (below the
        /// server's wal_sender_timeout).
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        status_interval: u64,
        /// Seconds between uploads of the segment being filled (the repository's tail, which
        /// restore and archive-get use after the primary's loss); 0: only when the stream
        /// stops. The asynchronous receiver's RPO.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        partial_interval: u64,
    },
    /// Fetch one WAL file: restore_command = 'pitr --repo URL archive-get %f %p'.
    ArchiveGet {
        /// Name of the WAL file (%f).
        name: String,
        /// Where to write it (%p).
        dest: PathBuf,
    },
    /// Take a base backup of the running cluster into the repository.
    Backup {
        /// The cluster's data directory (default: the server's data_directory).
        #[arg(long, env = "PGDATA", value_name = "DIR")]
        pgdata: Option<PathBuf>,
        /// Connection string or URL, as libpq reads them: 'host=db.example user=backup
        /// sslmode=verify-full sslrootcert=/etc/pitr/ca.crt' or
        /// 'postgresql://backup@db.example/postgres?sslmode=verify-full'; also service=,
        /// sslcert=, sslkey=, password=. What it leaves out comes from the service
        /// (PGSERVICE, pg_service.conf), then PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD,
        /// PGSSLMODE, PGSSLROOTCERT, PGSSLCERT, PGSSLKEY; the password last from PGPASSFILE or
        /// ~/.pgpass. sslmode defaults to prefer, as in libpq.
        #[arg(long, short = 'd', value_name = "CONNINFO")]
        dbname: Option<String>,
        /// Start with an immediate checkpoint (the default).
        #[arg(long, conflicts_with = "spread")]
        fast: bool,
        /// Start with a spread checkpoint, gentler on a busy server.
        #[arg(long)]
        spread: bool,
        /// Files copied at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// How long, in seconds, to wait for the backup's WAL (its last segment and backup
        /// history file) to reach the repository, once the files are copied.
        /// Meanwhile a line every 5 s names what is missing and whether archiving fails;
        /// at the deadline the backup fails (exit 8) and nothing is recorded (default 120).
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 120,
            hide_default_value = true
        )]
        wal_timeout: u64,
        /// What to copy: `full`, every file; `incr`, only what changed since the newest
        /// backup; `diff`, only what changed since the newest full backup. An incremental
        /// or differential backup stores only the blocks the archived WAL says changed
        /// (reading only those, except over the replication protocol, where the server sends
        /// every file) and refers to its parent for the rest; it is taken full, saying why,
        /// where it cannot build on one.
        #[arg(long = "type", value_name = "TYPE", default_value = "full", value_parser = parse_backup_type)]
        backup_type: crate::catalog::backup::BackupType,
        /// Pin the backup: retention never removes it (until `pitr unpin`).
        #[arg(long)]
        pin: bool,
        /// Note KEY=VALUE on the backup, shown by `list` (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_annotation)]
        annotate: Vec<(String, String)>,
        /// How the files are read: `local`, from the data directory on this host; `replication`,
        /// over a replication connection (BASE_BACKUP) from any host, like pg_basebackup;
        /// `auto` (the default): local with --pgdata or where the server's data directory is
        /// on this host, replication otherwise.
        #[arg(long, value_name = "METHOD", default_value = "auto", value_parser = parse_method)]
        method: crate::commands::backup::BackupMethodChoice,
        /// Throttle a backup over the replication protocol on the server: kB/s, or with a k
        /// or M suffix (as pg_basebackup's --max-rate), 32k to 1024M.
        #[arg(long, value_name = "RATE", value_parser = parse_max_rate)]
        max_rate: Option<u32>,
        /// Where a backup over the replication protocol gets its WAL: `archive`, through the
        /// server's archive_command; `stream`, over a second replication connection with a
        /// temporary slot, stored into the repository as archive-push stores it (the backup
        /// is then restorable whatever archives); `auto` (the default): archive where the
        /// server's archiver is seen storing into this repository, stream otherwise.
        #[arg(long, value_name = "METHOD", default_value = "auto", value_parser = parse_wal_method)]
        wal_method: crate::commands::backup::WalMethod,
        /// Whether the server compresses a backup over the replication protocol before
        /// sending it: `lz4` (PostgreSQL 15 and later, built with lz4; several times fewer
        /// bytes on the network, some CPU on the server); `none`; `auto` (the default): lz4
        /// where the server can and runs on another host, none elsewhere.
        #[arg(long, value_name = "CODEC", default_value = "auto", value_parser = parse_network_compression)]
        network_compression: crate::commands::backup::NetworkCompression,
        /// With a rule set, `pitr expire` runs after the backup succeeded.
        #[command(flatten)]
        retention: RetentionArgs,
    },
    /// Rebuild a data directory from a backup, to replay WAL up to a target.
    Restore {
        /// Directory to restore into: absent or empty (or --force); default $PGDATA.
        #[arg(
            long,
            env = "PGDATA",
            value_name = "DIR",
            required_unless_present = "dry_run"
        )]
        pgdata: Option<PathBuf>,
        /// Check that the repository holds everything the restore needs and print the plan
        /// (backup, WAL range, segments, bytes); write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: TargetArgs,
        /// What the server does at the target: pause (the default, PostgreSQL's), promote or
        /// shutdown. Without a target recovery replays all WAL and ends, whatever the action.
        #[arg(long, value_name = "ACTION", value_parser = parse_from_str::<TargetAction>)]
        target_action: Option<TargetAction>,
        /// Restore only this database (repeatable) and the cluster-wide catalogs: the other
        /// databases' files are not read and are written as empty sparse files. PostgreSQL
        /// cannot open those databases: drop them once the server is up.
        #[arg(long, value_name = "NAME")]
        db_include: Vec<String>,
        /// Restore this backup (default: the newest one before the target).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Objects restored at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Replace the contents of a non-empty directory.
        #[arg(long)]
        force: bool,
        /// Do not fsync the restored files before exiting (faster; a power loss may then
        /// leave a directory that looks complete and is not).
        #[arg(long)]
        no_sync: bool,
        /// Restore tablespace OID into DIR instead of its original place (repeatable).
        #[arg(long = "tablespace-map", value_name = "OID=DIR", value_parser = parse_tablespace_map)]
        tablespace_map: Vec<(u32, PathBuf)>,
        /// Run as root: give the restored files to this user (default: the data directory's
        /// owner recorded in the backup, else the owner of DIR's parent, else postgres;
        /// never root).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// Whether the restored server archives into the repository: off writes
        /// archive_mode = off into postgresql.auto.conf; preserve keeps the backup's archive
        /// settings. Default: off, except preserve when restoring into the backup's own data
        /// directory (in place).
        #[arg(long, value_name = "MODE", value_parser = parse_from_str::<ArchiveMode>)]
        archive_mode: Option<ArchiveMode>,
        /// Write port = N for the restored server. Default: the backup's port while it is
        /// free on this host, else the first free port above it (written, and printed).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// In place: write the configuration the backup recorded outside the data directory
        /// (Debian's /etc/postgresql/<v>/<cluster>) back to its original paths; the files
        /// there are kept beside as <name>.pitr-<time>. Default: they are left as they are.
        #[arg(long)]
        restore_config: bool,
        /// Write the configuration the backup recorded outside the data directory into DIR
        /// (for a Debian-style copy: /etc/postgresql/<v>/<new cluster>), with data_directory
        /// naming the restored directory. Default: into the restored data directory, unless
        /// in place.
        #[arg(long, value_name = "DIR")]
        config_dir: Option<PathBuf>,
    },
    /// Test a restore and measure its RTO: restore a backup into a scratch directory, start
    /// PostgreSQL there (no TCP, a private socket, archive_mode=off) to replay WAL up to the
    /// target, check that it got there, run pg_amcheck on every database and the --checks
    /// queries, then stop the server and remove the directory. Exits 0 only if every check
    /// passed (13 when one failed).
    Drill {
        #[command(flatten)]
        target: TargetArgs,
        /// Restore this backup (default: the newest one before the target).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// SQL checks to run on the restored databases (TOML: [[check]] tables with sql,
        /// database and one of expect = true|false, min_rows = N, equals = "text"; see
        /// docs/operations.md).
        #[arg(long, value_name = "FILE")]
        checks: Option<PathBuf>,
        /// Skip pg_amcheck (heap tables and B-tree indexes of every database).
        #[arg(long)]
        no_amcheck: bool,
        #[command(flatten)]
        scratch: ScratchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring tables back as they were at a moment, into the live database: a scratch restore
    /// of their database alone (--db-include) replays to the target, pg_dump exports the
    /// tables, psql loads them in one transaction, under a new name (default
    /// NAME_restored_<timestamp>) or, with --replace, in place of the live ones.
    #[command(group(clap::ArgGroup::new("selection").required(true).args(["table", "schema"])))]
    RestoreTable {
        /// The table, as SCHEMA.TABLE (repeatable; no schema means public).
        #[arg(long, value_name = "SCHEMA.TABLE", value_parser = parse_table)]
        table: Vec<crate::commands::restore_table::QualifiedName>,
        /// Every table of this schema (restored as a schema NAME_restored_<timestamp>).
        #[arg(long, value_name = "NAME", conflicts_with = "table", value_parser = parse_name)]
        schema: Option<String>,
        #[command(flatten)]
        target: TargetArgs,
        /// Restore from this backup (default: the newest one before the target).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// The live database to load into: a conninfo string or URL, with libpq's
        /// environment (PGHOST, PGUSER, PGPASSWORD, the password file…) as for psql.
        #[arg(long, value_name = "CONNINFO")]
        into: String,
        /// The database of the backup the tables come from (default: the one --into names).
        #[arg(long, value_name = "NAME")]
        database: Option<String>,
        /// The restored table's name (one --table), or the restored schema's (--schema).
        #[arg(long = "as", value_name = "NEW_NAME", conflicts_with = "replace", value_parser = parse_name)]
        rename: Option<String>,
        /// Replace the live table(s) (or schema, with CASCADE) with the restored ones: the
        /// drop and the load are one transaction, so a failure leaves the live ones as they
        /// were.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        scratch: ScratchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the whole loop on a scratch cluster: archive, back up, drop a table, restore.
    Demo {
        /// Work here (must be empty); default: a new directory under /tmp.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// List backups, the WAL held per timeline, and each timeline's recovery window.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy backups and WAL that one repository holds and another lacks (several
    /// repositories: repo, repo2 … repo4), each verified on both sides; run again, it
    /// resumes.
    Copy {
        /// The repository to copy from, by number (default: 1, or --repo-index).
        #[arg(long, value_name = "N")]
        from: Option<u8>,
        /// The repository to copy into (default: every other one).
        #[arg(long, value_name = "N")]
        to: Option<u8>,
        /// Only this backup and the backups it builds on (default: every backup).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Backups only, no WAL.
        #[arg(long)]
        no_wal: bool,
        /// Objects copied at once (default 4).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read every object and check checksums, WAL continuity and timeline histories.
    Verify {
        /// Verify only this backup and the WAL from its start on (default: everything).
        #[arg(long, value_name = "ID")]
        backup: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Objects read at once (default: 2 per core).
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        /// An encrypted repository without its key: check only the stored checksums (no
        /// object authenticated, WAL and backups not checked; not recorded as a verify for
        /// `check`). Without it, verify refuses such a repository (exit 12).
        #[arg(long)]
        no_key: bool,
    },
    /// Monitoring probe: one OK/WARNING/CRITICAL/UNKNOWN line per check, Nagios exit codes
    /// (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN); thresholds are the check_* settings.
    Check {
        /// Also ask the server (conninfo or URL, as for `backup --dbname`: sslmode,
        /// sslrootcert, sslcert, sslkey, service…; PGSSLMODE, PGPASSFILE and the rest of
        /// libpq's environment fill in): its WAL position and pg_stat_archiver.
        #[arg(long, short = 'd', value_name = "CONNINFO")]
        dbname: Option<String>,
        /// Switch WAL on the server and wait for the segment to reach the repository (needs
        /// a connection: --dbname or libpq's environment).
        #[arg(long)]
        switch_wal: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prometheus metrics: printed (for node_exporter's textfile collector) or served.
    Metrics {
        /// Serve GET /metrics on this address (e.g. 127.0.0.1:9187), computed per scrape
        /// (default: print the metrics once and exit).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Also ask the server (as for `check --dbname`) for pitr receive-wal's slots: their
        /// state and how far the receiver is behind.
        #[arg(long, short = 'd', value_name = "CONNINFO")]
        dbname: Option<String>,
    },
    /// Recorded runs of backup, verify, check, expire, drill and restore-table, newest first.
    History {
        /// Print the runs as JSON.
        #[arg(long)]
        json: bool,
        /// How many runs to show (default 20).
        #[arg(
            long,
            value_name = "N",
            default_value_t = 20,
            hide_default_value = true
        )]
        limit: usize,
    },
    /// Remove the backups and WAL the retention policy does not keep (and leftovers of
    /// interrupted backups); say which rule keeps what.
    Expire {
        #[command(flatten)]
        retention: RetentionArgs,
        /// Print what would be removed and why; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pin a backup: retention never removes it.
    Pin {
        /// The backup's id (see `pitr list`).
        id: String,
        /// Note KEY=VALUE on the backup (repeatable; an empty VALUE removes the note).
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_annotation)]
        annotate: Vec<(String, String)>,
    },
    /// Unpin a backup: retention may remove it again.
    Unpin {
        /// The backup's id (see `pitr list`).
        id: String,
    },
    /// The keys of an encrypted repository: list, add, remove (no data is rewritten).
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// archive-get's background prefetcher (started by archive-get during recovery).
    #[command(name = "archive-get-prefetch", hide = true)]
    ArchiveGetPrefetch {
        /// The get spool to fill.
        #[arg(long, value_name = "DIR")]
        spool: PathBuf,
        /// The segment archive-get served when it started the prefetcher.
        after: String,
    },
}

#[derive(Clone, Debug, Subcommand)]
pub enum KeyAction {
    /// The keys that open the repository: fingerprint, kind, creation time (never a key).
    List {
        /// Print the keys as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a key; the repository's current key (passphrase_file, PITR_PASSPHRASE, key_file
    /// or kms_key_id) must open it.
    Add {
        /// File holding the new passphrase (or set PITR_NEW_PASSPHRASE).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        /// New key file: 32 or more random bytes.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
        /// New AWS KMS key (id, ARN or alias).
        #[arg(long, value_name = "KEY")]
        new_kms_key_id: Option<String>,
    },
    /// Remove the key with this fingerprint (see `pitr key list`). The last key cannot be
    /// removed, and a key given in the settings must still open the repository after.
    Remove {
        /// The key's fingerprint.
        fingerprint: String,
    },
}

/// Prints a command line clap refused (or help) and returns the exit code: 2, or for
/// archive-get the code that makes PostgreSQL abort recovery, since a broken restore_command
/// must not read as "no such file".
pub fn usage_error(error: clap::Error) -> u8 {
    let code = u8::try_from(error.exit_code()).unwrap_or(crate::error::EXIT_USAGE);
    let _ = error.print();
    if code != 0 && std::env::args().any(|arg| arg == "archive-get") {
        crate::error::archive_get_exit_code(code)
    } else if code != 0 && std::env::args().any(|arg| arg == "check") {
        // A monitoring plugin given a bad command line is UNKNOWN, not CRITICAL.
        crate::error::EXIT_CHECK_UNKNOWN
    } else {
        code
    }
}

/// archive-get runs inside PostgreSQL's recovery: a panic must stop recovery, not read as
/// "no such file" (Rust's panic exit code, 101, would).
pub fn abort_recovery_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(i32::from(crate::error::EXIT_ARCHIVE_GET_BUG));
    }));
}

impl Command {
    /// The exit code for `error` (see [`crate::commands::run::exit_code`]).
    pub fn exit_code(&self, error: &crate::error::Error) -> u8 {
        crate::commands::run::exit_code(self.name(), error)
    }

    /// How a failure is reported: one line on stderr, which PostgreSQL writes to its log.
    pub fn failure_line(&self, error: &crate::error::Error) -> String {
        one_line(&match self {
            Command::ArchiveGet { name, .. } => format!(
                "pitr archive-get {name}: {error}; recovery stops here rather than end without \
                 this file: fix the cause, then start the server again"
            ),
            Command::Check { .. } => format!("UNKNOWN pitr check: {error}"),
            _ => format!("pitr {}: {error}", self.name()),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Init { .. } => "init",
            Command::ArchivePush { .. } => "archive-push",
            Command::ReceiveWal { .. } => "receive-wal",
            Command::ArchiveGet { .. } => "archive-get",
            Command::ArchiveGetPrefetch { .. } => "archive-get-prefetch",
            Command::Verify { .. } => "verify",
            Command::Copy { .. } => "copy",
            Command::Backup { .. } => "backup",
            Command::List { .. } => "list",
            Command::Restore { .. } => "restore",
            Command::Drill { .. } => "drill",
            Command::RestoreTable { .. } => "restore-table",
            Command::Demo { .. } => "demo",
            Command::Check { .. } => "check",
            Command::Metrics { .. } => "metrics",
            Command::History { .. } => "history",
            Command::Expire { .. } => "expire",
            Command::Pin { .. } => "pin",
            Command::Unpin { .. } => "unpin",
            Command::Key { .. } => "key",
        }
    }
}

fn parse_lsn(text: &str) -> Result<Lsn, String> {
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_from_str<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T, String> {
    text.parse()
}

fn parse_method(text: &str) -> Result<crate::commands::backup::BackupMethodChoice, String> {
    use crate::commands::backup::BackupMethodChoice;
    match text {
        "auto" => Ok(BackupMethodChoice::Auto),
        "local" => Ok(BackupMethodChoice::Local),
        "replication" => Ok(BackupMethodChoice::Replication),
        _ => Err(format!(
            "'{text}' is not a method: use auto, local or replication"
        )),
    }
}

fn parse_wal_method(text: &str) -> Result<crate::commands::backup::WalMethod, String> {
    use crate::commands::backup::WalMethod;
    match text {
        "auto" => Ok(WalMethod::Auto),
        "archive" => Ok(WalMethod::Archive),
        "stream" => Ok(WalMethod::Stream),
        _ => Err(format!(
            "'{text}' is not a WAL method: use auto, archive or stream"
        )),
    }
}

fn parse_synchronous(text: &str) -> Result<crate::commands::receive_wal::Synchronous, String> {
    use crate::commands::receive_wal::Synchronous;
    match text {
        "spool" => Ok(Synchronous::Spool),
        "repository" => Ok(Synchronous::Repository),
        _ => Err(format!(
            "'{text}' is not where WAL is durable: use spool or repository"
        )),
    }
}

fn parse_backup_type(text: &str) -> Result<crate::catalog::backup::BackupType, String> {
    use crate::catalog::backup::BackupType;
    match text {
        "full" => Ok(BackupType::Full),
        "incr" => Ok(BackupType::Incr),
        "diff" => Ok(BackupType::Diff),
        _ => Err(format!(
            "'{text}' is not a backup type: use full, incr or diff"
        )),
    }
}

fn parse_network_compression(
    text: &str,
) -> Result<crate::commands::backup::NetworkCompression, String> {
    use crate::commands::backup::NetworkCompression;
    match text {
        "auto" => Ok(NetworkCompression::Auto),
        "lz4" => Ok(NetworkCompression::Lz4),
        "none" => Ok(NetworkCompression::None),
        _ => Err(format!(
            "'{text}' is not a network compression: use auto, lz4 or none"
        )),
    }
}

/// kB/s: `500`, `500k`, `20M`; PostgreSQL's own bounds.
fn parse_max_rate(text: &str) -> Result<u32, String> {
    use crate::pg::replication::{MAX_RATE_KB, MIN_RATE_KB};
    let (digits, factor) = match text.strip_suffix(['M', 'm']) {
        Some(digits) => (digits, 1024),
        None => (text.strip_suffix(['k', 'K']).unwrap_or(text), 1),
    };
    let rate = digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("'{text}' is not a rate: use kB/s, or a number with k or M"))?;
    u32::try_from(rate)
        .ok()
        .filter(|rate| (MIN_RATE_KB..=MAX_RATE_KB).contains(rate))
        .ok_or_else(|| {
            format!("{text} is out of range: PostgreSQL accepts {MIN_RATE_KB}k to 1024M (kB/s)")
        })
}

fn parse_annotation(entry: &str) -> Result<(String, String), String> {
    match entry.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("'{entry}' is not KEY=VALUE")),
    }
}

fn parse_table(text: &str) -> Result<crate::commands::restore_table::QualifiedName, String> {
    crate::commands::restore_table::parse_table(text)
}

fn parse_name(text: &str) -> Result<String, String> {
    crate::commands::restore_table::parse_identifier(text)
}

fn parse_tablespace_map(entry: &str) -> Result<(u32, PathBuf), String> {
    entry
        .split_once('=')
        .and_then(|(oid, dir)| Some((oid.parse().ok()?, PathBuf::from(dir))))
        .filter(|(_, dir)| dir.is_absolute())
        .ok_or_else(|| format!("'{entry}' is not OID=DIR with an absolute DIR"))
}

/// A failure line stays one line whatever values it quotes (a `--target-name` with a
/// newline, a file name with a tab): control characters are shown escaped, as Rust does.
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_failure_line_escapes_control_characters() {
        assert_eq!(
            one_line("no restore point 'a\nb\tc\u{1b}[31m' é"),
            "no restore point 'a\\nb\\tc\\u{1b}[31m' é"
        );
    }

    #[test]
    fn a_bare_path_style_flag_does_not_swallow_the_subcommand() {
        let cli = Cli::try_parse_from([
            "pitr",
            "--repo",
            "s3://b/p",
            "--s3-path-style",
            "archive-get",
            "00000002.history",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.global.settings.s3_path_style, Some(true));
        assert!(matches!(cli.command, Command::ArchiveGet { .. }));
        let cli =
            Cli::try_parse_from(["pitr", "archive-push", "f", "--s3-path-style=false"]).unwrap();
        assert_eq!(cli.global.settings.s3_path_style, Some(false));
    }

    #[test]
    fn targets_are_parsed_once_at_the_edge() {
        let parse = |args: &[&str]| {
            let mut all = vec!["pitr", "restore", "--pgdata", "/tmp/x"];
            all.extend(args);
            Cli::try_parse_from(all)
        };
        assert!(parse(&["--target-time", "2026-11-21 14:29:00+01"]).is_ok());
        assert!(parse(&["--target-lsn", "0/16B3748"]).is_ok());
        assert!(parse(&["--target-timeline", "0x2", "--target-action", "promote"]).is_ok());
        assert!(parse(&["--tablespace-map", "16400=/srv/ts"]).is_ok());
        for bad in [
            &["--target-time", "2026-11-21 14:29:00"][..],
            &["--target-lsn", "16B3748"],
            &["--target-timeline", "newest"],
            &["--target-action", "resume"],
            &["--tablespace-map", "x=/srv/ts"],
            &["--tablespace-map", "16400=relative"],
            &["--target-time", "2026-11-21T00:00:00Z", "--target-xid", "5"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    /// What `pitr ARGS… --help` prints.
    fn help_of(args: &[&str]) -> String {
        let mut all = vec!["pitr"];
        all.extend(args);
        all.push("--help");
        let err = Cli::try_parse_from(all).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        err.render().to_string()
    }

    /// Where option `flag` is listed in `help` (not where a description mentions it).
    fn find_flag(help: &str, flag: &str) -> Option<usize> {
        help.match_indices(flag).map(|(at, _)| at).find(|&at| {
            let listed = help[..at].ends_with("  ") || help[..at].ends_with(", ");
            listed
                && matches!(
                    help.as_bytes().get(at + flag.len()),
                    Some(b' ' | b'[' | b'.' | b'\n')
                )
        })
    }

    /// The help text of option `flag`, up to the next option.
    fn option_help<'a>(help: &'a str, flag: &str) -> &'a str {
        let start = find_flag(help, flag).unwrap_or_else(|| panic!("{flag} not in\n{help}"));
        let rest = &help[start..];
        let end = rest[flag.len()..]
            .find("\n  ")
            .and_then(|i| {
                // Continuation lines of the same option are indented deeper than an option.
                let after = &rest[flag.len() + i + 3..];
                (!after.starts_with("  ")).then_some(flag.len() + i)
            })
            .unwrap_or(rest.len());
        &rest[..end]
    }

    #[test]
    fn global_options_come_after_the_commands_own_under_their_heading() {
        let global = Cli::command()
            .get_arguments()
            .filter(|arg| arg.get_help_heading() == Some("Global options"))
            .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
            .collect::<Vec<_>>();
        assert!(global.contains(&"--repo".to_owned()), "{global:?}");
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .map(|sub| sub.get_name().to_owned())
            .collect();
        for name in names {
            let help = help_of(&[&name]);
            let heading = help
                .find("\nGlobal options:\n")
                .unwrap_or_else(|| panic!("no Global options heading in {name} --help:\n{help}"));
            for flag in &global {
                let at = find_flag(&help, flag)
                    .unwrap_or_else(|| panic!("{name} --help lacks {flag}:\n{help}"));
                assert!(at > heading, "{name} --help: {flag} before the heading");
            }
        }
        let help = help_of(&["restore"]);
        let heading = help.find("\nGlobal options:\n").unwrap();
        for own in ["--target-action", "--pgdata", "--jobs", "--owner"] {
            assert!(
                find_flag(&help, own).unwrap() < heading,
                "{own} after the heading"
            );
        }
    }

    #[test]
    fn options_with_a_default_state_it() {
        for (command, flag) in [
            (&["restore"][..], "--target-action"),
            (&["restore"], "--target-timeline"),
            (&["restore"], "--jobs"),
            (&["restore"], "--backup"),
            (&["restore"], "--owner"),
            (&["backup"], "--jobs"),
            (&["backup"], "--wal-timeout"),
            (&["backup"], "--pgdata"),
            (&["verify"], "--jobs"),
            (&["history"], "--limit"),
            (&["metrics"], "--listen"),
            (&["restore"], "--archive-get-prefetch"),
            (&["restore"], "--s3-path-style"),
            (&["restore"], "--storage-timeout"),
            (&["restore"], "--notify-on-success"),
            (&["restore"], "--compression"),
        ] {
            let help = help_of(command);
            let text = option_help(&help, flag);
            assert!(text.contains("default"), "{command:?} {flag}: {text}");
        }
        let help = help_of(&["restore"]);
        assert!(
            option_help(&help, "--target-action").contains("pause (the default"),
            "{help}"
        );
    }

    #[test]
    fn history_help_names_every_recorded_command() {
        let help = help_of(&["history"]);
        let about = help.split("Usage:").next().unwrap_or_default();
        let about = about.split_whitespace().collect::<Vec<_>>().join(" ");
        for command in crate::commands::history::RECORDED_COMMANDS {
            assert!(about.contains(command), "{command} missing from: {about}");
        }
    }

    #[test]
    fn help_carries_the_exit_code_table() {
        let help = Cli::command().render_long_help().to_string();
        for row in crate::error::EXIT_CODES {
            assert!(help.contains(row.meaning), "{}", row.meaning);
        }
    }
}

#[cfg(test)]
mod backup_option_tests {
    use super::*;

    #[test]
    fn max_rate_reads_as_pg_basebackup_does() {
        assert_eq!(parse_max_rate("500"), Ok(500));
        assert_eq!(parse_max_rate("500k"), Ok(500));
        assert_eq!(parse_max_rate("20M"), Ok(20 * 1024));
        assert_eq!(parse_max_rate("1024M"), Ok(1_048_576));
        for bad in ["31", "1025M", "fast", "", "-5", "99999999999999999999M"] {
            assert!(parse_max_rate(bad).is_err(), "{bad}");
        }
    }
}
