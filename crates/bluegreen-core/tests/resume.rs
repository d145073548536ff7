//! Invariant 6: a deployer killed at any journal append resumes to the same
//! outcome without repeating a non-idempotent action.
#![cfg(feature = "testing")]

use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::testing::{reference_plan, Change, CrashingJournal, Fakes};
use bluegreen_core::{Journal, Outcome};

/// The changes that must happen exactly as often as in an uninterrupted run.
fn effects(f: &Fakes) -> Vec<Change> {
    f.world
        .changes()
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Change::Split(_)
                    | Change::Scaled(..)
                    | Change::Prepared(..)
                    | Change::Migrated(..)
                    | Change::Reverted(_)
            )
        })
        .collect()
}

fn scenario(bad: bool) -> impl Fn(&Fakes) {
    move |f: &Fakes| {
        f.metrics.constant("p95-latency", 200.0);
        f.metrics.script("error-rate", move |q, _| {
            Some(if bad && q.query.contains("color:blue") {
                0.08
            } else {
                0.002
            })
        });
    }
}

fn run(
    script: &dyn Fn(&Fakes),
    crash_after: Option<usize>,
) -> (Option<Outcome>, Vec<Change>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let f = Fakes::new();
        script(&f);
        if let Some(allowed) = crash_after {
            let killed = Arc::new(CrashingJournal::new(f.journal.clone(), allowed));
            let first = f
                .builder(reference_plan())
                .journal(killed)
                .build()
                .unwrap()
                .run()
                .await;
            assert!(
                first.is_err(),
                "the deployer was killed after {allowed} appends"
            );
            // Some time passes before the operator runs `resume`.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let report = f
                .builder(reference_plan())
                .resume("sim-1")
                .build()
                .unwrap()
                .run()
                .await
                .expect("resume runs to the end");
            (report.outcome, effects(&f), report.records)
        } else {
            let report = f
                .builder(reference_plan())
                .build()
                .unwrap()
                .run()
                .await
                .unwrap();
            (report.outcome, effects(&f), report.records)
        }
    })
}

fn killed_at_every_append_point_resumes_to_the_same_outcome(bad: bool) {
    let script = scenario(bad);
    let (outcome, baseline, records) = run(&script, None);
    assert!(records > 20, "{records}");
    let expected = if bad { "rolled_back" } else { "succeeded" };
    assert_eq!(outcome.as_ref().unwrap().name(), expected);
    for allowed in 1..records {
        let (o, changes, _) = run(&script, Some(allowed));
        assert_eq!(
            o.as_ref().map(Outcome::name),
            Some(expected),
            "killed after {allowed} of {records} appends: {o:?}"
        );
        assert_eq!(
            changes, baseline,
            "killed after {allowed} of {records} appends: every effect exactly once"
        );
    }
}

#[test]
fn a_good_release_killed_at_every_append_point_resumes_to_success() {
    killed_at_every_append_point_resumes_to_the_same_outcome(false);
}

#[test]
fn a_bad_release_killed_at_every_append_point_resumes_to_the_same_rollback() {
    killed_at_every_append_point_resumes_to_the_same_outcome(true);
}

#[test]
fn resume_refuses_a_journal_of_a_different_plan() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let f = Fakes::new();
        scenario(false)(&f);
        let killed = Arc::new(CrashingJournal::new(f.journal.clone(), 10));
        let _ = f
            .builder(reference_plan())
            .journal(killed)
            .build()
            .unwrap()
            .run()
            .await;
        let mut other = reference_plan();
        other.release.version = "2.6.0".into();
        let err = match f
            .builder(other)
            .resume("sim-1")
            .build()
            .unwrap()
            .run()
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("resume with another plan must be refused"),
        };
        assert!(err.to_string().contains("different plan"), "{err}");
        assert!(err.to_string().contains("2.5.0"), "{err}");
    });
}

#[test]
fn a_compacting_journal_resumes_from_compressed_blocks_to_the_same_effects() {
    let script = scenario(false);
    let (_, baseline, records) = run(&script, None);
    for allowed in [70, 130, 260, records - 5] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (outcome, changes) = rt.block_on(async {
            let f = Fakes::new();
            script(&f);
            let journal = Arc::new(bluegreen_core::MemoryJournal::compacting());
            let killed = Arc::new(CrashingJournal::new(journal.clone(), allowed));
            let first = f
                .builder(reference_plan())
                .journal(killed)
                .build()
                .unwrap()
                .run()
                .await;
            assert!(first.is_err());
            // More than one block of 64 records was sealed before the crash.
            assert!(journal.read("sim-1").await.unwrap().len() >= allowed.min(records) - 1);
            let report = f
                .builder(reference_plan())
                .journal(journal.clone())
                .resume("sim-1")
                .build()
                .unwrap()
                .run()
                .await
                .expect("resume runs to the end");
            // The run went on past the cut (how many records it wrote
            // depends on the polls of the time it waited out the lease).
            assert!(
                report.records > allowed.min(records),
                "killed after {allowed}"
            );
            let resumed = journal
                .read("sim-1")
                .await
                .unwrap()
                .iter()
                .filter(|e| {
                    matches!(
                        e.record,
                        bluegreen_core::journal::Record::Step {
                            input: bluegreen_core::machine::Input::Resumed { .. },
                            ..
                        }
                    )
                })
                .count();
            assert_eq!(resumed, 1, "killed after {allowed}");
            (report.outcome, effects(&f))
        });
        assert_eq!(outcome, Some(Outcome::Succeeded), "killed after {allowed}");
        assert_eq!(
            changes, baseline,
            "killed after {allowed}: every effect once"
        );
    }
}
