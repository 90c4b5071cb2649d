//! The detection benchmark at a small size (the CI `--quick` run): the figures are printed by
//! `autopilot bench detection`; this checks the properties the figures must show.

use crate::bench::detection as bench;

#[test]
fn the_quick_benchmark_shows_a_calibrated_judge_and_the_peeking_problem() {
    let rows = bench::run(0.04);
    let ours = |id: &str| {
        rows.iter()
            .find(|r| r.scenario == id && r.detector == "ours")
            .unwrap()
    };
    // healthy canaries: the false rollback rate is within α = 5% (Clopper–Pearson)
    for r in rows.iter().filter(|r| r.detector == "ours" && r.healthy) {
        assert!(
            r.rollback_ci.0 <= 0.05,
            "{}: false rollback rate {} (CI {:?})",
            r.scenario,
            r.rollback_rate,
            r.rollback_ci
        );
        assert_eq!(
            r.decisions_on_missing_data, 0,
            "{}: decided on missing data",
            r.scenario
        );
    }
    assert!(
        ours("S0").promoted as f64 / ours("S0").runs as f64 >= 0.9,
        "healthy canaries are promoted"
    );
    // regressions are caught; a crash at the first read
    for id in ["S1", "S2", "S3a", "S3b", "S6a'", "S6b'", "S6c'", "S8"] {
        assert!(
            ours(id).rollback_rate >= 0.95,
            "{id}: detected {}",
            ours(id).rollback_rate
        );
    }
    assert_eq!(
        ours("S8").time_secs[2],
        10.0,
        "a crash is caught at the first 10 s read"
    );
    // nothing is ever decided on missing data
    assert!(
        rows.iter()
            .filter(|r| r.detector == "ours")
            .all(|r| r.decisions_on_missing_data == 0)
    );
    // the peeking problem: a fixed-sample test repeated every minute rolls back healthy canaries
    let naive = rows
        .iter()
        .find(|r| r.scenario == "S0" && r.detector == "naive")
        .unwrap();
    assert!(
        naive.rollback_ci.0 > 0.05,
        "naive repeated test: {}",
        naive.rollback_rate
    );
    // and Flagger's documented default (99% success) fails a healthy service at 1% errors
    let flagger = rows
        .iter()
        .find(|r| r.scenario == "S0" && r.detector == "flagger t=1")
        .unwrap();
    assert!(flagger.rollback_rate > 0.9);
    // the outputs render
    assert!(bench::markdown(&rows).contains("| S0 | ours |"));
    assert_eq!(bench::csv(&rows).lines().count(), rows.len() + 1);
    assert!(bench::svg(&rows).starts_with("<svg"));
}
