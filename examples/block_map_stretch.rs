//! Reads the block maps of a long stretch of a synthetic repository (`synthetic_archive
//! --block-maps`) as an incremental backup does, for `bench/block_maps.sh`: once segment by
//! segment (as before rollups), once by the rollups of the whole groups inside it; prints the
//! time of each and checks that both give the same change set.
//!
//! `cargo run --release --example block_map_stretch -- REPO FIRST LAST JOBS`
//! (REPO: a path or s3://BUCKET/PREFIX, with PITR_S3_ENDPOINT for an S3-compatible server)

use std::time::Instant;

use futures_util::{StreamExt, stream};

use pitr::catalog::Catalog;
use pitr::pg::WalFileName;
use pitr::pg::change_set::merge_maps;
use pitr::storage::{RepoLocation, S3Options};

const SEGMENT_SIZE: u64 = 16 << 20;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let location = RepoLocation::parse(&args[0]).unwrap();
    let (first, last): (u64, u64) = (args[1].parse().unwrap(), args[2].parse().unwrap());
    let jobs: usize = args[3].parse().unwrap();
    let options = S3Options {
        endpoint: std::env::var("PITR_S3_ENDPOINT").ok(),
        path_style: true,
    };
    let catalog = Catalog::new(location.open(&options).await.unwrap());
    let names: Vec<WalFileName> = (first..=last)
        .map(|segno| WalFileName::segment(1, segno, SEGMENT_SIZE).unwrap())
        .collect();

    let started = Instant::now();
    let each: Vec<_> = stream::iter(&names)
        .map(|name| catalog.block_map(name))
        .buffered(jobs)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let by_segment = merge_maps(
        names
            .iter()
            .map(|n| n.as_str())
            .zip(each.iter().map(Option::as_ref)),
    );
    let segment_time = started.elapsed();

    let started = Instant::now();
    let pieces = catalog
        .block_maps(&names, SEGMENT_SIZE, jobs)
        .await
        .unwrap();
    let by_rollup = merge_maps(
        pieces
            .iter()
            .map(|(label, map)| (label.as_str(), map.as_ref())),
    );
    let rollup_time = started.elapsed();

    assert!(by_segment.is_complete(), "{:?}", by_segment.incomplete);
    assert_eq!(by_segment, by_rollup, "the two reads disagree");
    let blocks: u64 = by_rollup
        .blocks
        .values()
        .flatten()
        .map(|[_, count]| u64::from(*count))
        .sum();
    println!(
        "{} segments, {blocks} changed blocks: by segment {:.2} s ({} objects), by rollups \
         {:.2} s ({} objects)",
        names.len(),
        segment_time.as_secs_f64(),
        names.len(),
        rollup_time.as_secs_f64(),
        pieces.len()
    );
}
