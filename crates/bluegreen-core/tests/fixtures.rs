//! Journals written by engines of each format this one resumes, checked in
//! under `tests/fixtures/journals/format-N` (a good deployment and a
//! rolled-back one, as `FileJournal` files), resumed after being cut at many
//! points: an upgrade of the engine must resume what the previous release
//! wrote (see `JOURNAL_FORMAT` and `OLDEST_RESUMABLE_FORMAT`).
//!
//! `BLUEGREEN_WRITE_FIXTURES=1 cargo test -p bluegreen-core --features testing
//! --test fixtures` writes `format-{JOURNAL_FORMAT}` anew; do that only with a
//! `JOURNAL_FORMAT` bump, and keep the older directories.
#![cfg(feature = "testing")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bluegreen_core::journal::{Record, JOURNAL_FORMAT, OLDEST_RESUMABLE_FORMAT};
use bluegreen_core::machine::{Action, HoldReason, Input, Stage};
use bluegreen_core::plan::Gate;
use bluegreen_core::testing::{reference_plan, Fakes};
use bluegreen_core::{
    BlueGreen, Color, ComputeProvider, FileJournal, Journal, MigrationContext, MigrationRunner,
    Outcome, Plan, Report, TrafficRouter, TrafficSplit,
};

/// The fixtures of journal format `format`.
fn dir(format: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/journals")
        .join(format!("format-{format}"))
}

/// The fixtures' plan for journal format `format`: the reference with a
/// 10-minute soak (smaller files) and, from format 4, a gate before the old
/// color is scaled down, so the good deployment is held with its monitors
/// running and its journal holds a checkpoint in place of the repeated
/// readings.
fn plan(format: u32) -> Plan {
    let mut p = reference_plan();
    p.timing.soak = Duration::from_secs(10 * 60);
    if format >= 4 {
        p.gates = vec![Gate::BeforeScaleDown];
    }
    p
}

/// How long the fixture writer leaves the deployment held at the gate
/// before it promotes: past a hold reminder (10 minutes), so a checkpoint is
/// journaled before the reminder's step.
const HELD_WHEN_WRITTEN: Duration = Duration::from_secs(15 * 60);

/// How long a resumed deployer of a fixture waits at the gate before it
/// promotes: within the hold timeout however far into the hold it was cut.
const HELD_WHEN_RESUMED: Duration = Duration::from_secs(60);

/// Promotes `deployment` each time it is held at a gate, `after` later.
fn promote_at_gates(deployment: &BlueGreen, after: Duration) {
    let control = deployment.control();
    let mut progress = deployment.progress();
    tokio::spawn(async move {
        loop {
            let held = matches!(
                progress.borrow_and_update().stage,
                Stage::Hold {
                    reason: HoldReason::Gate { .. },
                    ..
                }
            );
            if held {
                tokio::time::sleep(after).await;
                control.promote();
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
    });
}

fn script(f: &Fakes, bad: bool) {
    f.metrics.constant("p95-latency", 180.0);
    f.metrics.script("error-rate", move |q, _| {
        Some(if bad && q.query.contains("color:blue") {
            0.08
        } else {
            0.002
        })
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

/// Applies to the fakes every mutating call the journal records as answered,
/// in order: the world as the deployer left it when it was cut off.
async fn rebuild_world(f: &Fakes, plan: &Plan, journal: &FileJournal) {
    let entries = journal.read("sim-1").await.unwrap();
    let mut issued: BTreeMap<u64, Action> = BTreeMap::new();
    let ctx = MigrationContext {
        deployment_id: "sim-1".into(),
        backup_id: None,
    };
    for e in entries {
        let Record::Step {
            input, commands, ..
        } = e.record
        else {
            continue;
        };
        if let Input::Reply { id, .. } = input {
            match issued.get(&id) {
                Some(Action::SetSplit { split }) => f.router.set_split(*split).await.unwrap(),
                Some(Action::Scale { color, count }) => {
                    f.compute.scale(*color, *count).await.unwrap()
                }
                Some(Action::Prepare { color }) => {
                    f.compute.prepare(*color, &plan.release).await.unwrap();
                }
                Some(Action::SuspendAutoscaling { color }) => {
                    f.compute.suspend_autoscaling(*color).await.unwrap();
                }
                Some(Action::RestoreAutoscaling { color, previous }) => f
                    .compute
                    .restore_autoscaling(*color, *previous)
                    .await
                    .unwrap(),
                Some(Action::Migrate { phase }) => {
                    f.migrations.apply(*phase, &ctx).await.unwrap();
                }
                Some(Action::RevertMigrations { versions }) => {
                    f.migrations.revert(versions, &ctx).await.unwrap();
                }
                _ => {}
            }
        }
        for c in commands {
            issued.insert(c.id, c.action);
        }
    }
    // Let what was scaled settle, as it would have while the deployer was down.
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Writes the first `cut` lines of `lines` to a fresh file journal, rebuilds
/// the fakes' world from it, resumes `sim-1` on it to the end, and returns
/// the report and the fakes.
fn resume_cut(
    format: u32,
    lines: &[&str],
    cut: usize,
    bad: bool,
) -> bluegreen_core::Result<(Report, Fakes)> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("journal.jsonl");
    std::fs::write(&path, lines[..cut].join("\n") + "\n").unwrap();
    runtime().block_on(async {
        let f = Fakes::new();
        script(&f, bad);
        let journal = Arc::new(FileJournal::open(&path).unwrap());
        rebuild_world(&f, &plan(format), &journal).await;
        let deployment = f
            .builder(plan(format))
            .journal(journal)
            .resume("sim-1")
            .build()
            .unwrap();
        promote_at_gates(&deployment, HELD_WHEN_RESUMED);
        let report = deployment.run().await?;
        Ok((report, f))
    })
}

fn write_fixture(name: &str, bad: bool) {
    runtime().block_on(async {
        let path = dir(JOURNAL_FORMAT).join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir_all(dir(JOURNAL_FORMAT)).unwrap();
        let f = Fakes::new();
        script(&f, bad);
        let journal = Arc::new(FileJournal::open(&path).unwrap());
        let deployment = f
            .builder(plan(JOURNAL_FORMAT))
            .journal(journal)
            .build()
            .unwrap();
        promote_at_gates(&deployment, HELD_WHEN_WRITTEN);
        deployment.run().await.unwrap();
    });
}

/// Resumes the fixture `name` of journal format `format` cut after each of
/// several numbers of lines, and checks each outcome and final world.
fn resume_cuts(format: u32, name: &str, bad: bool) {
    let text = std::fs::read_to_string(dir(format).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}: run with BLUEGREEN_WRITE_FIXTURES=1"));
    assert!(
        text.contains(&format!("\"format\":{format}")),
        "{name} is not of format {format}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    assert!(n > 50, "{n} lines");
    let expected = if bad { "rolled_back" } else { "succeeded" };
    // The start, every 1/12 of the file, and just before the end.
    let mut cuts: Vec<usize> = (1..12).map(|i| i * n / 12).collect();
    cuts.extend([3, 8, n - 2]);
    // Right after each checkpoint, and right before it: resumed from the
    // checkpointed state, and from the state before the steps it replaced.
    for (i, line) in lines.iter().enumerate() {
        if line.contains("\"record\":\"checkpoint\"") {
            cuts.extend([i, i + 1]);
        }
    }
    for cut in cuts {
        let (report, f) = resume_cut(format, &lines, cut, bad)
            .unwrap_or_else(|e| panic!("{name} cut after {cut} of {n} lines: {e}"));
        let outcome = report.outcome;
        let (live, blue, green) = (
            f.world.split(),
            f.world.desired(Color::Blue),
            f.world.desired(Color::Green),
        );
        if bad {
            assert_eq!(live, TrafficSplit::all_on(Color::Green), "cut {cut}");
            assert_eq!((blue, green), (0, 3), "cut {cut}");
        } else {
            assert_eq!(live, TrafficSplit::all_on(Color::Blue), "cut {cut}");
            assert_eq!((blue, green), (3, 0), "cut {cut}");
        }
        assert_eq!(
            outcome.as_ref().map(Outcome::name),
            Some(expected),
            "{name} cut after {cut} of {n} lines"
        );
    }
}

#[test]
fn the_checked_in_journals_resume_from_every_cut_to_their_outcome() {
    if std::env::var_os("BLUEGREEN_WRITE_FIXTURES").is_some() {
        write_fixture("good.jsonl", false);
        write_fixture("rolled_back.jsonl", true);
    }
    resume_cuts(JOURNAL_FORMAT, "good.jsonl", false);
    resume_cuts(JOURNAL_FORMAT, "rolled_back.jsonl", true);
}

#[test]
fn the_good_fixture_was_held_with_its_repeated_readings_checkpointed() {
    let text = std::fs::read_to_string(dir(JOURNAL_FORMAT).join("good.jsonl")).unwrap();
    let checkpoints = text
        .lines()
        .filter(|l| l.contains("\"record\":\"checkpoint\""))
        .count();
    assert!(checkpoints >= 2, "{checkpoints} checkpoints");
}

#[test]
fn journals_of_the_oldest_resumable_format_resume_from_every_cut_to_their_outcome() {
    const { assert!(OLDEST_RESUMABLE_FORMAT < JOURNAL_FORMAT) };
    for format in OLDEST_RESUMABLE_FORMAT..JOURNAL_FORMAT {
        resume_cuts(format, "good.jsonl", false);
        resume_cuts(format, "rolled_back.jsonl", true);
    }
}

#[test]
fn a_journal_of_another_format_is_refused_naming_both_versions() {
    let older = refused_as(OLDEST_RESUMABLE_FORMAT - 1);
    assert!(
        older.contains(&format!(
            "format {} by bluegreen-core {}, older than this engine's format {JOURNAL_FORMAT}",
            OLDEST_RESUMABLE_FORMAT - 1,
            bluegreen_core::journal::ENGINE_VERSION
        )),
        "{older}"
    );
    let msg = refused_as(JOURNAL_FORMAT + 1);
    assert!(
        msg.contains(&format!(
            "which resumes formats {OLDEST_RESUMABLE_FORMAT} to {JOURNAL_FORMAT}"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "format {} by bluegreen-core {}, newer than this engine's format {JOURNAL_FORMAT}",
            JOURNAL_FORMAT + 1,
            bluegreen_core::journal::ENGINE_VERSION
        )),
        "{msg}"
    );
}

/// The error of resuming the good fixture of this format with its format
/// field changed to `format`.
fn refused_as(format: u32) -> String {
    let text = std::fs::read_to_string(dir(JOURNAL_FORMAT).join("good.jsonl")).unwrap();
    let changed = text.replacen(
        &format!("\"format\":{JOURNAL_FORMAT}"),
        &format!("\"format\":{format}"),
        1,
    );
    assert_ne!(changed, text);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("journal.jsonl");
    let cut: Vec<&str> = changed.lines().take(20).collect();
    std::fs::write(&path, cut.join("\n") + "\n").unwrap();
    let err = runtime().block_on(async {
        let f = Fakes::new();
        let journal = Arc::new(FileJournal::open(&path).unwrap());
        f.builder(plan(JOURNAL_FORMAT))
            .journal(journal)
            .resume("sim-1")
            .build()
            .unwrap()
            .run()
            .await
            .expect_err("refused")
    });
    err.to_string()
}

#[test]
fn rewording_events_and_notifications_in_a_patch_release_keeps_a_journal_resumable() {
    let text = std::fs::read_to_string(dir(JOURNAL_FORMAT).join("good.jsonl")).unwrap();
    // What an older wording of the same decisions looks like in the journal.
    let reworded = text
        .replace(
            "backup lists 120 entries",
            "backup verified: 120 entries listed",
        )
        .replace("deployment starting", "deployment is starting")
        .replace("100% of traffic on blue", "blue now takes 100%");
    assert_ne!(reworded, text);
    let lines: Vec<&str> = reworded.lines().collect();
    let (report, _) = resume_cut(JOURNAL_FORMAT, &lines, lines.len() / 2, false)
        .expect("the reworded journal resumes");
    let outcome = report.outcome;
    assert_eq!(outcome, Some(Outcome::Succeeded));
}
