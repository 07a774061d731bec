//! The SQL session with the running server, found the way libpq finds it: `--dbname`
//! (a conninfo string or URL), then PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD.

use std::str::FromStr;

use tokio_postgres::{Client, Config, NoTls};

use crate::error::Error;
use crate::pg::Lsn;

/// Connection settings: `dbname` as given, libpq's environment for what it leaves out.
pub fn connection_config(dbname: Option<&str>) -> Result<Config, Error> {
    let mut config = match dbname {
        Some(conninfo) => Config::from_str(conninfo).map_err(|e| {
            Error::Config(format!(
                "--dbname '{conninfo}' is not a connection string: {e}"
            ))
        })?,
        None => Config::new(),
    };
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if config.get_hosts().is_empty() {
        let host = env("PGHOST").unwrap_or_else(|| {
            // libpq's compiled-in default on Debian, else TCP on localhost.
            let socket_dir = "/var/run/postgresql";
            if std::path::Path::new(socket_dir).is_dir() {
                socket_dir.to_owned()
            } else {
                "localhost".to_owned()
            }
        });
        for host in host.split(',') {
            config.host(host);
        }
    }
    if config.get_ports().is_empty()
        && let Some(port) = env("PGPORT")
    {
        let port: u16 = port
            .parse()
            .map_err(|_| Error::Config(format!("PGPORT '{port}' is not a port number")))?;
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER")
            .or_else(|| env("USER"))
            .unwrap_or_else(|| "postgres".to_owned());
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let database = env("PGDATABASE").unwrap_or_else(|| "postgres".to_owned());
        config.dbname(&database);
    }
    if config.get_password().is_none()
        && let Some(password) = env("PGPASSWORD")
    {
        config.password(password);
    }
    config.application_name("pitr");
    Ok(config)
}

/// An open session; the connection task lives as long as the runtime.
pub struct Session {
    client: Client,
    pub server_version_num: i32,
}

fn sql_error(what: &str, e: tokio_postgres::Error) -> Error {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    };
    Error::Server(format!("{what}: {detail}"))
}

impl Session {
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let (client, connection) = config.connect(NoTls).await.map_err(|e| {
            Error::Server(format!(
                "cannot connect to PostgreSQL: {e} (set --dbname, or PGHOST/PGPORT/PGUSER)"
            ))
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("connection to PostgreSQL ended: {e}");
            }
        });
        let row = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(|e| sql_error("reading the server version", e))?;
        Ok(Session {
            client,
            server_version_num: row.get(0),
        })
    }

    pub async fn text(&self, what: &str, sql: &str) -> Result<String, Error> {
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| sql_error(what, e))?;
        Ok(row.get(0))
    }

    /// Starts a non-exclusive backup on this session; returns the start LSN.
    pub async fn backup_start(&self, label: &str, fast: bool) -> Result<Lsn, Error> {
        let sql = if self.server_version_num >= 150000 {
            "SELECT pg_backup_start($1, $2)::text"
        } else {
            "SELECT pg_start_backup($1, $2, false)::text"
        };
        let row = self
            .client
            .query_one(sql, &[&label, &fast])
            .await
            .map_err(|e| sql_error("starting the backup", e))?;
        let lsn: String = row.get(0);
        lsn.parse().map_err(|e| Error::Server(format!("{e}")))
    }

    /// Ends the backup begun on this session, waiting until its WAL is archived; returns the
    /// stop LSN, backup_label and tablespace_map contents.
    pub async fn backup_stop(&self) -> Result<(Lsn, String, Option<String>), Error> {
        let sql = if self.server_version_num >= 150000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, true)"
        };
        let row = self
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| sql_error("stopping the backup", e))?;
        let lsn: String = row.get(0);
        let spcmap: Option<String> = row.get(2);
        Ok((
            lsn.parse().map_err(|e| Error::Server(format!("{e}")))?,
            row.get(1),
            spcmap.filter(|s| !s.is_empty()),
        ))
    }

    /// The WAL segment name holding `lsn` on the current timeline.
    pub async fn walfile_name(&self, lsn: Lsn) -> Result<String, Error> {
        let row = self
            .client
            .query_one(
                "SELECT pg_walfile_name($1::text::pg_lsn)",
                &[&lsn.to_string()],
            )
            .await
            .map_err(|e| sql_error("naming the WAL segment", e))?;
        Ok(row.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_wins_over_defaults() {
        let config =
            connection_config(Some("host=/tmp/sock port=5999 user=alice dbname=app")).unwrap();
        assert_eq!(config.get_ports(), &[5999]);
        assert_eq!(config.get_user(), Some("alice"));
        assert_eq!(config.get_dbname(), Some("app"));
        assert!(connection_config(Some("nonsense = = =")).is_err());
    }
}
