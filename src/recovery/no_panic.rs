//! What a repository holds is outside input: sizes in rollup keys and listings, segment
//! numbers, timelines and LSNs in manifests and history files are whatever a damaged or
//! crafted repository says. The archive view, `list`, restore planning, retention and
//! `metrics` over any of it give a result or a typed error, never a panic (a debug build
//! checks every `+`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use super::plan::tests::backup;
use super::plan::{PlanRequest, gather_and_plan, plan_restore, summaries_needed};
use super::retention::{Policy, ReplayHold, hold_for_replays, plan_retention};
use super::timelines::{timeline_tree, timelines_without_backup};
use super::view::ArchiveView;
use super::window::recovery_window;
use crate::catalog::backup::BackupManifest;
use crate::catalog::rollup::prefixes_to_list;
use crate::catalog::wal::WalListing;
use crate::catalog::{Catalog, RepositoryIdentity};
use crate::commands::list::{ListOptions, list};
use crate::commands::metrics::{MetricsOptions, metrics};
use crate::pg::recovery_target::{RecoveryRequest, Target, TargetTimeline};
use crate::pg::timeline::HistoryEntry;
use crate::pg::wal_summary::{RestorePoint, SegmentSummary};
use crate::pg::{Lsn, WalFileKind};
use crate::storage::{MemoryStorage, ObjectMeta, PutMode, PutPayload, Storage};

const SEG: u64 = 16 << 20;

/// Two rollups of timeline 1 whose stored bytes sum past u64::MAX, and a large one on top.
const CRAFTED: [&str; 3] = [
    "wal/rollup/00000001/000000010000000000000000.16.c-.b18446744073709551615.r0.json",
    "wal/rollup/00000001/000000010000000000000010.16.c1795428131120334.b18446744073709551615.r1.json",
    "wal/rollup/00000001/000000010000000100000000.256.c-.b18446744073709551614.r0.json",
];

async fn crafted_repository() -> (Catalog, RepositoryIdentity) {
    let store = Arc::new(MemoryStorage::new("crafted"));
    let catalog = Catalog::new(store.clone());
    let identity = RepositoryIdentity::for_tests(SEG, 8192);
    catalog.init(&identity).await.unwrap();
    for key in CRAFTED {
        // Empty, as an attacker or a torn write leaves them: only the keys say anything.
        store
            .put(key, PutPayload::from_bytes(Vec::new()), PutMode::Create)
            .await
            .unwrap();
    }
    (catalog, identity)
}

#[tokio::test]
async fn crafted_rollup_sizes_past_u64_max_are_listed_planned_and_measured_without_panic() {
    let (catalog, identity) = crafted_repository().await;

    // list: the timeline's stored bytes stay at u64::MAX.
    let report = list(&catalog, &ListOptions { jobs: 4 }).await.unwrap();
    let wal: Vec<(u32, u64)> = report
        .wal
        .iter()
        .map(|w| (w.timeline, w.stored_bytes))
        .collect();
    assert_eq!(wal, [(1, u64::MAX)]);

    // metrics: the repository total too.
    let text = metrics(
        &catalog,
        &MetricsOptions {
            jobs: 4,
            dbname: None,
            repository: 1,
            peers: Vec::new(),
        },
    )
    .await
    .unwrap();
    assert!(text.contains("pitr_wal_stored_bytes"), "{text}");

    // The archive view: a walk over the groups and its stored bytes.
    let mut view = ArchiveView::load(&catalog, &identity).await.unwrap();
    assert_eq!(view.listing.stored_bytes_on(1), u64::MAX);
    let path = view.path(1).unwrap();
    let walk = view.walk(&path, Lsn(0));
    assert_eq!(view.stored_bytes(&walk.segments), u64::MAX);

    // Restore planning from a backup inside the crafted groups: reading them finds them
    // empty (damaged), so the plan is refused or made, with a total that does not wrap.
    let backups = [backup("crafted", 1, 2, 20, 5)];
    for target in [Target::End, Target::Immediate, Target::Name("none".into())] {
        let request = PlanRequest {
            recovery: RecoveryRequest {
                target,
                ..RecoveryRequest::default()
            },
            backup: None,
        };
        // The empty rollups count as damaged and their groups hold nothing: a typed error,
        // the catalog's (a segment a rollup named is not there) or the planner's.
        let planned = gather_and_plan(&catalog, &mut view, &backups, &request, 4).await;
        assert!(!matches!(planned, Ok(Ok(_))));
    }
    // Retention over the same view.
    let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let policy = Policy {
        keep_last: Some(1),
        ..Policy::default()
    };
    let _ = plan_retention(&view, &backups, &BTreeSet::new(), now, &policy);
}

/// A name's hex fields, biased to edges: timeline 0 and u32::MAX, segment ids past a log's
/// last segment, the last log.
fn hex_field() -> impl Strategy<Value = u32> + Clone {
    prop_oneof![
        4 => 0u32..3,
        2 => (0u32..20).prop_map(|i| i * 16),
        1 => Just(0xFF),
        1 => Just(0x100),
        1 => Just(0xFFF),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

fn size() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![
        3 => 0u64..100_000,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => Just(u64::MAX / 2 + 1),
        1 => any::<u64>(),
    ]
}

/// Object keys as a repository could hold them: WAL files, summaries, rollups, histories,
/// backups, and anything else.
fn object_key() -> impl Strategy<Value = String> {
    let name = (hex_field(), hex_field(), hex_field());
    prop_oneof![
        6 => (name.clone(), prop::sample::select(vec![".lz4", ".zst", ".partial.lz4", ".summary.json", ""]))
            .prop_map(|((t, l, s), suffix)| format!("wal/{t:08X}{l:08X}/{t:08X}{l:08X}{s:08X}{suffix}")),
        1 => (name.clone(), any::<u32>())
            .prop_map(|((t, l, s), o)| format!("wal/{t:08X}{l:08X}/{t:08X}{l:08X}{s:08X}.{o:08X}.backup.lz4")),
        1 => hex_field().prop_map(|t| format!("wal/history/{t:08X}.history.lz4")),
        4 => (
            name,
            prop_oneof![Just(16u64), Just(256), Just(0), Just(1), Just(u64::MAX), any::<u64>()],
            prop_oneof![Just("-".to_owned()), any::<i64>().prop_map(|t| t.to_string()), Just("1795428131120334".to_owned())],
            size(),
            0u8..3,
        )
            .prop_map(|((t, l, s), span, commit, bytes, r)| {
                format!("wal/rollup/{t:08X}/{t:08X}{l:08X}{s:08X}.{span}.c{commit}.b{bytes}.r{r}.json")
            }),
        1 => "[a-z0-9]{1,8}".prop_map(|id| format!("backup/{id}/manifest.json")),
        1 => ".{0,40}",
    ]
}

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn lsn() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 0u64..(600 * SEG),
        1 => Just(u64::MAX),
        1 => (u64::MAX - 4 * SEG)..=u64::MAX,
        1 => any::<u64>(),
    ]
}

fn timeline() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 1u32..4, 1 => Just(0), 1 => Just(u32::MAX), 1 => any::<u32>()]
}

/// Manifests as `BackupManifest::check` leaves them possible: any timeline and LSNs, the
/// stop not before the start.
fn manifests() -> impl Strategy<Value = Vec<BackupManifest>> {
    prop::collection::vec(
        (
            timeline(),
            lsn(),
            lsn(),
            -100_000_000_000i64..100_000_000_000,
        ),
        0..4,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (timeline, a, b, stop))| BackupManifest {
                timeline,
                start_lsn: Lsn(a.min(b)),
                stop_lsn: Lsn(a.max(b)),
                start_time: at(stop.saturating_sub(60)),
                stop_time: at(stop),
                ..backup(&format!("b{i}"), 1, 0, 0, 0)
            })
            .collect()
    })
}

/// History files' contents as parsed: switch points and parents anywhere.
fn histories() -> impl Strategy<Value = BTreeMap<u32, Vec<HistoryEntry>>> {
    prop::collection::btree_map(
        timeline(),
        prop::collection::vec(
            (timeline(), lsn()).prop_map(|(timeline, at)| HistoryEntry {
                timeline,
                switchpoint: Lsn(at),
            }),
            0..3,
        ),
        0..3,
    )
}

fn target() -> impl Strategy<Value = RecoveryRequest> {
    let target = prop_oneof![
        Just(Target::End),
        Just(Target::Immediate),
        (-100_000_000_000i64..100_000_000_000).prop_map(|t| Target::Time(at(t))),
        any::<u64>().prop_map(|l| Target::Lsn(Lsn(l))),
        any::<u32>().prop_map(Target::Xid),
        Just(Target::Name("here".into())),
    ];
    let timeline = prop_oneof![
        Just(None),
        Just(Some(TargetTimeline::Latest)),
        Just(Some(TargetTimeline::Current)),
        timeline().prop_map(|t| Some(TargetTimeline::Number(t))),
    ];
    (target, timeline).prop_map(|(target, timeline)| RecoveryRequest {
        target,
        action: None,
        timeline,
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    let count = prop_oneof![Just(None), (0u32..4).prop_map(Some), Just(Some(u32::MAX))];
    let within = prop_oneof![
        Just(None),
        (0i64..1000).prop_map(|d| Some(Duration::days(d))),
        Just(Some(Duration::MAX)),
        Just(Some(Duration::MIN)),
    ];
    (count.clone(), within, count.clone(), count).prop_map(
        |(keep_last, keep_within, daily, monthly)| Policy {
            keep_last,
            keep_within,
            keep_daily: daily,
            keep_monthly: monthly,
            ..Policy::default()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any listing, with any manifests and histories: the view, list's figures, planning and
    /// retention return, whatever they return.
    #[test]
    fn arbitrary_listings_never_panic(
        objects in prop::collection::vec((object_key(), size()), 0..60),
        shift in 20u32..=30,
        backups in manifests(),
        histories in histories(),
        request in target(),
        policy in policy(),
        commits in prop::collection::vec(-100_000_000_000i64..100_000_000_000, 0..8),
        now in -100_000_000_000i64..100_000_000_000,
        after in size(),
    ) {
        let segment_size = 1u64 << shift;
        let identity = RepositoryIdentity::for_tests(segment_size, 8192);
        let metas: Vec<ObjectMeta> = objects
            .into_iter()
            .map(|(key, size)| ObjectMeta {
                key,
                size,
                modified: None,
            })
            .collect();
        // The overview's choice of what to list one by one.
        let folders: BTreeSet<String> = metas
            .iter()
            .filter_map(|m| m.key.get(..21).filter(|f| f.ends_with('/')).map(str::to_owned))
            .collect();
        let listing = WalListing::from_metas(metas, segment_size);
        let folders: Vec<String> = folders.into_iter().collect();
        let _ = prefixes_to_list(&folders, &listing.rollups, segment_size);
        let _ = listing.ranges_after(after).count();
        let _ = listing.files().count();

        let mut view = ArchiveView::new(&identity, listing, histories);
        // Summaries for some of the segments: commits, and a restore point.
        let segments: Vec<_> = view
            .listing
            .files()
            .filter(|f| f.name.kind() == WalFileKind::Segment)
            .map(|f| f.name.clone())
            .collect();
        for (name, commit) in segments.into_iter().zip(commits) {
            let time = at(commit);
            view.insert_summary(name, SegmentSummary {
                first_commit_time: Some(time),
                last_commit_time: Some(time),
                commits: 1,
                restore_points: vec![RestorePoint {
                    name: "here".into(),
                    lsn: Lsn(commit.unsigned_abs()),
                    time: Some(time),
                }],
                ..SegmentSummary::default()
            });
        }

        // What list reports per timeline.
        for timeline in view.listing.timelines() {
            let _ = view.listing.segment_bounds(timeline);
            let _ = view.listing.stored_bytes_on(timeline);
            let _ = view.latest_timeline(timeline);
            if let Some(path) = view.path(timeline) {
                let _ = recovery_window(&view, &path, &backups);
                for start in backups.iter().map(|b| b.start_lsn).chain([Lsn(0), Lsn(u64::MAX)]) {
                    let walk = view.walk(&path, start);
                    let _ = view.stored_bytes(&walk.segments);
                    let _ = view.last_commit(&walk.segments);
                    let _ = view.files(&walk.segments.first_n(64));
                    let _ = view.summaries_in(&walk);
                    let _ = view.find(&walk.segments, |_| true, |s| s.commits > 0);
                    let _ = walk.segments.names().take(64).count();
                    let _ = (walk.segments.first_name(), walk.segments.last_name());
                }
            }
        }
        let _ = timeline_tree(&view, &backups);
        let _ = timelines_without_backup(&view, &backups);

        // Restore planning, with and without a named backup.
        for backup in &backups {
            let _ = summaries_needed(&view, backup, &request);
        }
        let mut request = PlanRequest { recovery: request, backup: None };
        let _ = plan_restore(&view, &backups, &request);
        if let Some(first) = backups.first() {
            request.backup = Some(first.id.clone());
            let _ = plan_restore(&view, &backups, &request);
        }

        // Retention, and the holds of live replays on top.
        let pinned: BTreeSet<String> = backups.iter().take(1).map(|b| b.id.clone()).collect();
        let mut retention = plan_retention(&view, &backups, &pinned, at(now), &policy);
        let holds: Vec<ReplayHold> = backups
            .iter()
            .map(|b| ReplayHold {
                claim: "claim".into(),
                backup: b.id.clone(),
                runs: vec![(b.timeline, after, after.saturating_add(3)), (1, 0, u64::MAX)],
            })
            .collect();
        hold_for_replays(&mut retention, &holds, &backups, segment_size);
    }
}
