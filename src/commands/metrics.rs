//! `pitr metrics`: the repository's state in the Prometheus text exposition format, printed
//! (for node_exporter's textfile collector) or served on `/metrics`, computed per scrape from
//! the same overview `pitr check` reads.
//!
//! The format is prometheus-client's (the Prometheus project's own Rust crate), the server
//! hyper 1 (already in the build through the AWS SDK, so serving adds no new HTTP stack).

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::overview::{RepositoryOverview, overview};
use crate::catalog::history::RunStatus;
use crate::catalog::{Catalog, total_bytes};
use crate::commands::check::{ReceiverSlot, RepositoryLag, receiver_slots, repository_lags};
use crate::error::Result;
use crate::pg::Lsn;
use crate::pg::timestamp::parse_rfc3339;
use crate::server::{Session, connection_settings};

/// The content type of what `encode` writes (OpenMetrics text, which Prometheus and the
/// textfile collector read).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;

/// Backups are all full backups today; the label keeps room for other types.
const BACKUP_TYPE: &str = "full";

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn seconds(time: chrono::DateTime<chrono::Utc>) -> f64 {
    time.timestamp_micros() as f64 / 1e6
}

/// A registry of gauge families registered under `pitr_`.
struct Metrics {
    registry: Registry,
}

impl Metrics {
    fn family(&mut self, name: &str, help: &str) -> GaugeFamily {
        let family = GaugeFamily::default();
        self.registry.register(name, help, family.clone());
        family
    }

    fn gauge(&mut self, name: &str, help: &str) -> Gauge<f64, AtomicU64> {
        let gauge = Gauge::default();
        self.registry.register(name, help, gauge.clone());
        gauge
    }
}

/// The exposition text of `repo` and what the server said: pure.
pub fn encode_metrics(
    repo: &RepositoryOverview,
    server: Option<&ServerMetrics>,
    lags: &[RepositoryLag],
) -> String {
    let mut m = Metrics {
        registry: Registry::with_prefix("pitr"),
    };
    let list = &repo.list;

    let count = m.family("backup_count", "Complete backups in the repository");
    count
        .get_or_create(&labels(&[("type", BACKUP_TYPE.into())]))
        .set(list.backups.len() as f64);
    m.gauge(
        "backup_damaged_count",
        "Backups whose manifest is damaged (not restorable)",
    )
    .set(list.damaged_backups.len() as f64);

    let last_time = m.family(
        "backup_last_time_seconds",
        "When the newest complete backup finished, Unix time",
    );
    let last_start = m.family(
        "backup_last_start_time_seconds",
        "When the newest complete backup started, Unix time",
    );
    let last_size = m.family(
        "backup_last_size_bytes",
        "Size of the newest complete backup's files",
    );
    let last_stored = m.family(
        "backup_last_stored_bytes",
        "Stored (compressed) size of the newest complete backup",
    );
    let newest = list
        .backups
        .iter()
        .filter_map(|b| Some((b, parse_rfc3339(&b.stop_time)?)))
        .max_by_key(|&(_, stop)| stop);
    if let Some((backup, stop)) = newest {
        let by_type = labels(&[("type", BACKUP_TYPE.into())]);
        last_time.get_or_create(&by_type).set(seconds(stop));
        if let Some(start) = parse_rfc3339(&backup.start_time) {
            last_start.get_or_create(&by_type).set(seconds(start));
        }
        last_size
            .get_or_create(&by_type)
            .set(backup.size_bytes as f64);
        last_stored
            .get_or_create(&by_type)
            .set(backup.stored_bytes as f64);
    }

    let stored = total_bytes(
        list.wal
            .iter()
            .map(|w| w.stored_bytes)
            .chain(list.backups.iter().map(|b| b.stored_bytes)),
    );
    m.gauge(
        "repository_stored_bytes",
        "Stored bytes of the complete backups and the archived WAL segments",
    )
    .set(stored as f64);
    let wal_stored = m.family(
        "wal_stored_bytes",
        "Stored bytes of the archived WAL segments per timeline",
    );
    for w in &list.wal {
        wal_stored
            .get_or_create(&labels(&[("timeline", w.timeline.to_string())]))
            .set(w.stored_bytes as f64);
    }

    let newest_segment = m.family(
        "wal_newest_segment_number",
        "Number of the newest archived WAL segment per timeline (LSN / segment size)",
    );
    let last_commit = m.family(
        "wal_last_commit_time_seconds",
        "Time of the last commit in the newest archived WAL per timeline, Unix time",
    );
    for (timeline, wal) in &repo.newest_wal {
        let by_timeline = labels(&[("timeline", timeline.to_string())]);
        newest_segment
            .get_or_create(&by_timeline)
            .set(wal.segment_number as f64);
        if let Some(commit) = wal.last_commit {
            last_commit.get_or_create(&by_timeline).set(seconds(commit));
        }
    }

    let window_start = m.family(
        "recovery_window_start_seconds",
        "Earliest time a restore can reach per timeline, Unix time",
    );
    let window_end = m.family(
        "recovery_window_end_seconds",
        "Latest commit a restore can reach per timeline, Unix time",
    );
    let window_length = m.family(
        "recovery_window_seconds",
        "Length of the recovery window per timeline",
    );
    for w in &list.recovery_window {
        let by_timeline = labels(&[("timeline", w.timeline.to_string())]);
        let from = parse_rfc3339(&w.from);
        let until = w.until.as_deref().and_then(parse_rfc3339);
        if let Some(from) = from {
            window_start.get_or_create(&by_timeline).set(seconds(from));
        }
        if let Some(until) = until {
            window_end.get_or_create(&by_timeline).set(seconds(until));
        }
        if let (Some(from), Some(until)) = (from, until) {
            window_length
                .get_or_create(&by_timeline)
                .set(seconds(until) - seconds(from));
        }
    }

    let tail_end = m.family(
        "wal_tail_end_lsn_bytes",
        "Where the newest tail pitr receive-wal uploaded ends per timeline (LSN as a byte position)",
    );
    let tail_uploaded = m.family(
        "wal_tail_upload_time_seconds",
        "When pitr receive-wal last uploaded the tail per timeline, Unix time",
    );
    for tail in &list.tails {
        let by_timeline = labels(&[("timeline", tail.timeline.to_string())]);
        if let Ok(end) = tail.end_lsn.parse::<Lsn>() {
            let gauge = tail_end.get_or_create(&by_timeline);
            gauge.set(gauge.get().max(end.0 as f64));
        }
        if let Some(uploaded) = tail.uploaded.as_deref().and_then(parse_rfc3339) {
            let gauge = tail_uploaded.get_or_create(&by_timeline);
            gauge.set(gauge.get().max(seconds(uploaded)));
        }
    }

    if let Some(server) = server {
        encode_server(&mut m, server);
    }

    let run_time = m.family(
        "last_run_time_seconds",
        "When the last recorded run of a command (backup, verify, check, expire, drill, restore-table) ended, Unix time",
    );
    let run_ok = m.family(
        "last_run_success",
        "Whether the last recorded run of a command succeeded (1) or not (0)",
    );
    let success_time = m.family(
        "last_success_time_seconds",
        "When the last successful run of a command ended, Unix time",
    );
    for (command, latest) in &repo.latest_runs {
        let by_command = labels(&[("command", command.clone())]);
        run_time
            .get_or_create(&by_command)
            .set(seconds(latest.last_run.end));
        let ok = latest.last_run.status == RunStatus::Ok;
        run_ok
            .get_or_create(&by_command)
            .set(if ok { 1.0 } else { 0.0 });
        if let Some(success) = &latest.last_success {
            success_time
                .get_or_create(&by_command)
                .set(seconds(success.end));
        }
    }

    // Several repositories: how far each is behind the one with the newest WAL.
    if !lags.is_empty() {
        let segments = m.family(
            "repository_lag_segments",
            "With several repositories: WAL segments this one is behind the newest (absent on \
             another timeline or without WAL)",
        );
        let commits = m.family(
            "repository_lag_seconds",
            "With several repositories: time between the newest repository's last archived \
             commit and this one's",
        );
        for lag in lags {
            let by_repository = labels(&[("repository", lag.repository.to_string())]);
            if let Some(behind) = lag.segments_behind {
                segments.get_or_create(&by_repository).set(behind as f64);
            }
            if let Some(time) = lag.commit_lag {
                commits
                    .get_or_create(&by_repository)
                    .set(time.as_secs_f64());
            }
        }
    }

    let mut text = String::new();
    encode(&mut text, &m.registry).expect("writing to a String cannot fail");
    text
}

/// The receivers' slots as the server sees them.
fn encode_server(m: &mut Metrics, server: &ServerMetrics) {
    m.gauge(
        "server_up",
        "Whether the server metrics asked (--dbname) answered (1) or not (0)",
    )
    .set(if server.up { 1.0 } else { 0.0 });
    let active = m.family(
        "receiver_active",
        "Whether a pitr receive-wal streams from the slot now (1) or not (0)",
    );
    let state = m.family(
        "receiver_slot_wal_status",
        "The slot's wal_status (reserved, extended, unreserved, lost) as a label, value 1; lost: the archive has a gap, take a new backup",
    );
    let behind = m.family(
        "receiver_behind_bytes",
        "WAL the server wrote that the receiver has not flushed",
    );
    let lag = m.family(
        "receiver_flush_lag_seconds",
        "pg_stat_replication.flush_lag of the receiver",
    );
    for slot in &server.receivers {
        let by_slot = labels(&[("slot", slot.slot.clone())]);
        active
            .get_or_create(&by_slot)
            .set(if slot.active { 1.0 } else { 0.0 });
        state
            .get_or_create(&labels(&[
                ("slot", slot.slot.clone()),
                ("wal_status", slot.wal_status.clone()),
            ]))
            .set(1.0);
        if let Some(bytes) = slot.behind_bytes {
            behind.get_or_create(&by_slot).set(bytes as f64);
        }
        if slot.active {
            lag.get_or_create(&by_slot)
                .set(slot.flush_lag.unwrap_or_default().as_secs_f64());
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// Summaries read at once.
    pub jobs: usize,
    /// Also ask the server at this conninfo (receive-wal's slots).
    pub dbname: Option<String>,
    /// With several repositories: this one's number and the others, whose lag is reported.
    pub repository: u8,
    pub peers: Vec<(u8, Catalog)>,
}

/// What the server said, when metrics asked it.
#[derive(Clone, Debug, Default)]
pub struct ServerMetrics {
    /// It answered.
    pub up: bool,
    pub receivers: Vec<ReceiverSlot>,
}

/// The metrics of the repository (and, where asked, the server) now. A server that does
/// not answer is `pitr_server_up 0`, not a failed scrape: the repository's figures stand.
pub async fn metrics(catalog: &Catalog, options: &MetricsOptions) -> Result<String> {
    let repository = overview(catalog, options.jobs).await?;
    let server = match &options.dbname {
        Some(dbname) => Some(server_metrics(dbname).await),
        None => None,
    };
    let mut overviews = vec![(options.repository, Some(repository))];
    for (number, peer) in &options.peers {
        let read = overview(peer, options.jobs).await;
        if let Err(e) = &read {
            tracing::warn!("metrics: repository {number}: {e}");
        }
        overviews.push((*number, read.ok()));
    }
    let lags = if options.peers.is_empty() {
        Vec::new()
    } else {
        repository_lags(&overviews)
    };
    let repository = overviews.swap_remove(0).1.expect("read above");
    Ok(encode_metrics(&repository, server.as_ref(), &lags))
}

async fn server_metrics(dbname: &str) -> ServerMetrics {
    let asked = async {
        let session = Session::connect(&connection_settings(Some(dbname))?).await?;
        receiver_slots(&session).await
    };
    match asked.await {
        Ok(receivers) => ServerMetrics {
            up: true,
            receivers,
        },
        Err(e) => {
            tracing::warn!("metrics: the server: {e}");
            ServerMetrics::default()
        }
    }
}

/// Listens on `addr` and serves there (see [`serve`]); says where on stderr.
pub async fn serve_at(
    catalog: &Catalog,
    addr: std::net::SocketAddr,
    options: &MetricsOptions,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::error::Error::Config(format!("--listen {addr}: {e}")))?;
    eprintln!("pitr: serving metrics on http://{addr}/metrics");
    serve(catalog, listener, options).await
}

/// Serves `GET /metrics` on `listener` until the process ends; each scrape reads the
/// repository again.
pub async fn serve(
    catalog: &Catalog,
    listener: tokio::net::TcpListener,
    options: &MetricsOptions,
) -> Result<()> {
    // Connections run as local tasks: the repository reads behind a scrape are not all
    // `Send`, and a scrape is rare enough for one thread.
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: the next accept may work.
                        tracing::warn!("metrics: accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (catalog, options) = (catalog.clone(), options.clone());
                tokio::task::spawn_local(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (catalog, options) = (catalog.clone(), options.clone());
                        async move {
                            Ok::<_, Infallible>(respond(&catalog, &options, request).await)
                        }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!("metrics: connection from {peer}: {e}");
                    }
                });
            }
        })
        .await
}

async fn respond<B>(
    catalog: &Catalog,
    options: &MetricsOptions,
    request: Request<B>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "pitr serves /metrics\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    match metrics(catalog, options).await {
        Ok(text) => reply(StatusCode::OK, CONTENT_TYPE, text),
        Err(e) => {
            tracing::warn!("metrics: {e}");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("pitr metrics: {e}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::commands::list::{BackupEntry, ListReport, RecoveryWindow, WalRange, WalTail};

    #[test]
    fn the_exposition_names_every_family_once_with_its_type() {
        let repo = RepositoryOverview {
            wal_segment_size: 16 << 20,
            list: ListReport {
                backups: vec![BackupEntry {
                    id: "20261120T000000Z".into(),
                    start_time: "2026-11-20T00:00:00Z".into(),
                    stop_time: "2026-11-20T00:01:00.5Z".into(),
                    start_lsn: "0/2000028".into(),
                    stop_lsn: "0/2000100".into(),
                    timeline: 1,
                    size_bytes: 300,
                    stored_bytes: 100,
                    pinned: false,
                    annotations: Default::default(),
                    method: "local",
                    backup_type: "full",
                    parent: None,
                    configuration: None,
                }],
                damaged_backups: Vec::new(),
                wal: vec![WalRange {
                    timeline: 1,
                    first_segment: "000000010000000000000002".into(),
                    last_segment: "000000010000000000000005".into(),
                    stored_bytes: 50,
                }],
                tails: vec![
                    WalTail {
                        timeline: 1,
                        segment: "000000010000000000000006".into(),
                        bytes: 0x1000,
                        end_lsn: "0/6001000".into(),
                        uploaded: Some("2026-11-20T00:11:01Z".into()),
                    },
                    // An older one, awaiting removal, does not hide the newest.
                    WalTail {
                        timeline: 1,
                        segment: "000000010000000000000005".into(),
                        bytes: 0x2000,
                        end_lsn: "0/5002000".into(),
                        uploaded: Some("2026-11-20T00:10:00Z".into()),
                    },
                ],
                recovery_window: vec![RecoveryWindow {
                    timeline: 1,
                    from: "2026-11-20T00:01:00.5Z".into(),
                    until: Some("2026-11-20T00:11:00.5Z".into()),
                }],
                timelines_without_backup: Vec::new(),
                timelines: Vec::new(),
            },
            newest_wal: BTreeMap::new(),
            latest_runs: BTreeMap::new(),
        };
        let server = ServerMetrics {
            up: true,
            receivers: vec![ReceiverSlot {
                slot: "pitr".into(),
                active: true,
                wal_status: "reserved".into(),
                behind_bytes: Some(8192),
                flush_lag: Some(std::time::Duration::from_millis(1500)),
            }],
        };
        let text = encode_metrics(&repo, Some(&server), &[]);
        for line in [
            "pitr_wal_tail_end_lsn_bytes{timeline=\"1\"} 100667392.0",
            "pitr_wal_tail_upload_time_seconds{timeline=\"1\"} 1795133461.0",
            "pitr_server_up 1.0",
            "pitr_receiver_active{slot=\"pitr\"} 1.0",
            "pitr_receiver_slot_wal_status{slot=\"pitr\",wal_status=\"reserved\"} 1.0",
            "pitr_receiver_behind_bytes{slot=\"pitr\"} 8192.0",
            "pitr_receiver_flush_lag_seconds{slot=\"pitr\"} 1.5",
            "# TYPE pitr_backup_count gauge",
            "pitr_backup_count{type=\"full\"} 1.0",
            "pitr_backup_last_time_seconds{type=\"full\"} 1795132860.5",
            "pitr_repository_stored_bytes 150.0",
            "pitr_recovery_window_seconds{timeline=\"1\"} 600.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // No run recorded: no run metrics.
        assert!(!text.contains("pitr_last_run_success{"), "{text}");
        // Not asked: nothing of the server.
        let text = encode_metrics(&repo, None, &[]);
        assert!(!text.contains("pitr_server_up"), "{text}");
    }
}
