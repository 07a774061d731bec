//! `pitr demo`, the README's first command, runs the whole story and ends matched.

use crate::common::*;

#[test]
fn the_demo_restores_the_dropped_table() {
    let dir = TestDir::new("demo");
    let work = dir.path().join("work");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(["demo", "--dir"])
        .arg(&work)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("orders: 1500 rows (expected 1500)"),
        "{stdout}"
    );
    // Both clusters were stopped.
    for cluster in ["primary", "restored"] {
        assert!(
            !work.join(cluster).join("postmaster.pid").exists(),
            "{cluster} still running"
        );
    }
}
