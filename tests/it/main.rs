//! pitr's integration tests, one binary: each module is one area (its file says what it
//! covers). One binary links the dependency tree once, and the tests of every area run side
//! by side instead of one area after another. Pick an area with a filter:
//! `cargo test --test it -- restore::`.

mod common;

mod app_layer;
mod archive;
mod archive_lookahead;
mod backup;
mod backup_hang;
mod check;
mod compression;
mod confinement;
mod demo;
mod drill;
mod encryption;
mod fault_matrix;
mod in_process;
mod incremental;
mod kms;
mod latency_proxy;
mod layers;
mod memory;
mod outside_config;
mod ownership;
mod parsers_never_panic;
mod prefetch;
mod receive_wal;
mod recovery_safety;
mod recovery_window;
mod remote_backup;
mod replication;
mod restore;
mod restore_beside;
mod restore_table;
mod retention;
mod rollups;
mod secrets;
mod several_repos;
mod storage_conformance;
mod tar_stream;
mod target_kinds;
mod tls;
mod unattended;
mod verify;
mod versions;
mod wal_blocks;
mod wal_reader;
