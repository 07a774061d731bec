//! `pitr demo`: the whole story on a scratch cluster, explained as it goes.
//!
//! Archive with pitr, take a backup, make changes while noting the time, drop a table,
//! restore to the moment before the drop into a second directory, start it, and show that the
//! table is back with the right rows. Everything runs as subprocesses, as a user would run
//! them (as the `postgres` user when started as root, since PostgreSQL refuses root).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where to work; a fresh temporary directory when absent.
    pub dir: Option<PathBuf>,
}

fn failed(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Config(format!("demo: {what}: {detail}"))
}

/// PostgreSQL's server binaries: pg_config's, else the newest supported Debian layout.
fn postgres_bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    crate::pg::version::VERSIONS
        .iter()
        .rev()
        .map(|v| v.major)
        .map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
        .find(|dir| dir.join("initdb").exists())
        .ok_or_else(|| {
            failed(
                "PostgreSQL server binaries not found",
                "install them (apt-get install postgresql-15) and retry",
            )
        })
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed("no free port", e))
}

struct Demo {
    dir: PathBuf,
    bin: PathBuf,
    pitr: PathBuf,
    repo: PathBuf,
    as_postgres: bool,
    started: Vec<PathBuf>,
}

impl Demo {
    fn say(&self, text: &str) {
        println!("\n== {text}");
    }

    fn command(&self, program: impl AsRef<Path>) -> Command {
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program.as_ref());
            cmd
        } else {
            Command::new(program.as_ref())
        }
    }

    fn run(&self, what: &str, cmd: &mut Command) -> Result<String> {
        let out = cmd.output().map_err(|e| failed(what, e))?;
        if !out.status.success() {
            return Err(failed(
                what,
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
                .trim(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn pitr(&self, what: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(&self.pitr);
        cmd.arg("--repo").arg(&self.repo).args(args);
        let output = self.run(what, &mut cmd)?;
        for line in output.lines() {
            println!("   {line}");
        }
        Ok(output)
    }

    fn sql(&self, data: &Path, port: u16, sql: &str) -> Result<String> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(&self.dir)
            .args(["-p", &port.to_string(), "-d", "postgres", "-c", sql]);
        self.run(&format!("SQL on {}", data.display()), &mut cmd)
    }

    fn configure(&self, data: &Path, lines: &str) -> Result<()> {
        use std::io::Write;
        let path = data.join("postgresql.conf");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{lines}"))
            .map_err(|e| failed("configuring", e))
    }

    fn start(&mut self, data: &Path) -> Result<()> {
        let log = data.with_extension("log");
        let mut cmd = self.command(self.bin.join("pg_ctl"));
        cmd.args(["-w", "-t", "120", "-D"])
            .arg(data)
            .arg("-l")
            .arg(&log)
            .arg("start");
        self.run("starting PostgreSQL", &mut cmd)?;
        self.started.push(data.to_owned());
        Ok(())
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if self.as_postgres {
            self.run(
                "chown",
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(path),
            )?;
        }
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let started = std::mem::take(&mut self.started);
        for data in started.iter().rev() {
            let _ = self
                .command(self.bin.join("pg_ctl"))
                .args(["-w", "-m", "fast", "-D"])
                .arg(data)
                .arg("stop")
                .output();
        }
    }
}

pub fn demo(options: &DemoOptions) -> Result<()> {
    let as_postgres = crate::ownership::running_as_root();
    let bin = postgres_bin_dir()?;
    let dir = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| failed("creating --dir", e))?;
            if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                return Err(failed("--dir", format!("{} is not empty", dir.display())));
            }
            std::path::absolute(dir).unwrap_or_else(|_| dir.clone())
        }
        None => tempfile::Builder::new()
            .prefix("pitr-demo-")
            .tempdir_in("/tmp")
            .map_err(|e| failed("creating a directory", e))?
            .keep(),
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| failed("directory permissions", e))?;
    // The postgres user cannot read /root: give archive_command a copy of this binary.
    let pitr = dir.join("pitr");
    std::fs::copy(
        std::env::current_exe().map_err(|e| failed("finding pitr", e))?,
        &pitr,
    )
    .map_err(|e| failed("copying pitr", e))?;
    let mut demo = Demo {
        repo: dir.join("repository"),
        dir: dir.clone(),
        bin,
        pitr,
        as_postgres,
        started: Vec::new(),
    };
    demo.chown(&dir)?;
    let primary = dir.join("primary");
    let restored = dir.join("restored");
    let (port, restored_port) = (free_port()?, free_port()?);

    demo.say(&format!(
        "1. A scratch PostgreSQL cluster in {}",
        primary.display()
    ));
    let mut initdb = demo.command(demo.bin.join("initdb"));
    initdb
        .args(["-A", "trust", "-U", "postgres", "-N", "-D"])
        .arg(&primary);
    demo.run("initdb", &mut initdb)?;
    demo.say("2. A repository for it: pitr init (the embedded default: a local directory)");
    demo.pitr(
        "pitr init",
        &["init", "--pgdata", &primary.display().to_string()],
    )?;
    let archive_command = format!(
        "{} --repo {} archive-push %p",
        demo.pitr.display(),
        demo.repo.display()
    );
    println!("   archive_command = '{archive_command}'");
    demo.configure(
        &primary,
        &format!(
            "listen_addresses = ''\nunix_socket_directories = '{}'\nport = {port}\n\
             archive_mode = on\narchive_command = '{archive_command}'",
            dir.display()
        ),
    )?;
    demo.start(&primary)?;

    demo.say("3. An orders table, then a base backup while PostgreSQL runs: pitr backup");
    demo.sql(
        &primary,
        port,
        "create table orders (id int primary key, item text)",
    )?;
    demo.sql(
        &primary,
        port,
        "insert into orders select g, 'item ' || g from generate_series(1, 1000) g",
    )?;
    let dbname = format!("host={} port={port} user=postgres", dir.display());
    demo.pitr(
        "pitr backup",
        &[
            "backup",
            "--pgdata",
            &primary.display().to_string(),
            "--dbname",
            &dbname,
        ],
    )?;

    demo.say("4. More orders after the backup; we note the time");
    demo.sql(
        &primary,
        port,
        "insert into orders select g, 'item ' || g from generate_series(1001, 1500) g",
    )?;
    let expected = demo.sql(&primary, port, "select count(*) from orders")?;
    let noted = demo.sql(
        &primary,
        port,
        "select to_char(now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    )?;
    println!("   {expected} orders at {noted}");
    std::thread::sleep(Duration::from_millis(1100));

    demo.say("5. The disaster: DROP TABLE orders");
    demo.sql(&primary, port, "drop table orders")?;
    let last = demo.sql(
        &primary,
        port,
        "select pg_walfile_name(pg_current_wal_lsn())",
    )?;
    demo.sql(&primary, port, "select pg_switch_wal()")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while demo.sql(
        &primary,
        port,
        "select coalesce(last_archived_wal, '') from pg_stat_archiver",
    )? < last
    {
        if Instant::now() > deadline {
            return Err(failed(
                "archiving",
                "the WAL was not archived within 2 minutes",
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("   the WAL up to the drop is in the repository");

    demo.say(&format!(
        "6. Restore to {noted}, the moment before the drop: pitr restore"
    ));
    demo.pitr(
        "pitr restore",
        &[
            "restore",
            "--pgdata",
            &restored.display().to_string(),
            "--target-time",
            &noted,
            "--target-action",
            "promote",
            "--port",
            &restored_port.to_string(),
        ],
    )?;
    demo.chown(&restored)?;
    // restore wrote the port and archive_mode = off (a copy beside its primary).
    demo.configure(
        &restored,
        &format!("unix_socket_directories = '{}'", dir.display()),
    )?;
    demo.start(&restored)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while demo.sql(&restored, restored_port, "select pg_is_in_recovery()")? == "t" {
        if Instant::now() > deadline {
            return Err(failed("recovery", "did not finish within 2 minutes"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    demo.say("7. The restored cluster");
    let got = demo.sql(&restored, restored_port, "select count(*) from orders")?;
    println!("   orders: {got} rows (expected {expected})");
    drop(demo);
    if got != expected {
        return Err(failed(
            "result",
            format!("{got} rows restored, {expected} expected"),
        ));
    }
    println!("\nThe table is back with every order up to {noted}. Both clusters are stopped;");
    println!("everything is in {} (remove it when done).", dir.display());
    Ok(())
}
