//! What the CLI shows and returns: its exit codes, its output and report
//! formats, and the rendering of a running deployment's events. Shared by
//! `cli` (one service), `group` (several) and `watch`, and depending on
//! none of them.

use std::io::IsTerminal;
use std::time::Duration;

use bluegreen_core::driver::DeploymentEvent;
use bluegreen_core::machine::Event;
use bluegreen_core::{Control, Error, Outcome, Report};
use clap::ValueEnum;

/// Exit code: the deployment succeeded (or the command did its job).
pub const EXIT_SUCCEEDED: i32 = 0;
/// Exit code: the deployment rolled back after it changed something (the
/// new color started, traffic moved); the rollback undid it.
pub const EXIT_ROLLED_BACK: i32 = 1;
/// Exit code: the deployment halted and needs a human.
pub const EXIT_HALTED: i32 = 2;
/// Exit code: the deployer could not go on (lease held, journal failure,
/// a provider could not be built); the journal keeps everything recorded.
pub const EXIT_ERROR: i32 = 3;
/// Exit code: refused before changing anything: preflight failed (a
/// staging check, a secret, a provider or endpoint that cannot be
/// reached) or another deployer holds the service's lease. Nothing was
/// changed; fix the cause and deploy again.
pub const EXIT_REFUSED: i32 = 4;
/// Exit code: the spec (or the command line) is bad (`EX_USAGE`).
pub const EXIT_BAD_SPEC: i32 = 64;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text; live progress on a terminal, plain lines otherwise.
    Text,
    /// JSON lines for events, a JSON object at the end.
    Json,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown.
    Markdown,
    /// JSON.
    Json,
    /// One self-contained HTML page with a timeline chart.
    Html,
}

/// Says the deployment was refused before it changed anything, and why;
/// returns [`EXIT_REFUSED`].
pub(crate) fn refused(e: &Error, out: OutputFormat) -> i32 {
    if out == OutputFormat::Json {
        println!(
            "{}",
            serde_json::json!({"refused": true, "error": e.to_string(), "kind": e.kind().as_str()})
        );
    } else {
        eprintln!("bluegreen: refused, nothing was changed: {e}");
    }
    EXIT_REFUSED
}

pub(crate) fn exit_code(r: &Report) -> i32 {
    match r.outcome {
        Some(Outcome::Succeeded) => EXIT_SUCCEEDED,
        Some(Outcome::RolledBack { .. }) if changed_nothing(r) => EXIT_REFUSED,
        Some(Outcome::RolledBack { .. }) => EXIT_ROLLED_BACK,
        Some(Outcome::Halted { .. }) | None => EXIT_HALTED,
    }
}

/// Whether a finished deployment changed nothing: no split requested, no
/// color prepared or scaled, no autoscaling suspended, no backup taken, no
/// migration applied (a preflight failure).
pub(crate) fn changed_nothing(r: &Report) -> bool {
    r.facts.as_ref().is_some_and(|f| {
        !f.traffic_touched
            && f.new_count.is_none()
            && f.prepared_id.is_none()
            && f.autoscaling.is_empty()
            && f.backup.is_none()
            && f.applied.is_empty()
    })
}

/// The unit of each check of `spec`, by name, for showing its values.
pub(crate) fn units_of<'a>(specs: impl IntoIterator<Item = &'a crate::spec::Spec>) -> Units {
    specs
        .into_iter()
        .flat_map(|s| s.monitoring.checks.iter().map(|c| (c.name.clone(), c.unit)))
        .collect()
}

/// Check units by check name.
pub(crate) type Units = std::collections::BTreeMap<String, bluegreen_core::plan::Unit>;

fn describe(e: &Event, units: &Units) -> Option<String> {
    Some(match e {
        Event::Stage { stage } => format!("stage {}", stage.name()),
        Event::Colors { old, new } => format!("{old} serves; deploying to {new}"),
        Event::TrafficConfirmed { split } => format!("traffic confirmed: {split}"),
        Event::Measured { measurement } => format!(
            "measured {}",
            measurement.describe_in(units.get(&measurement.check).copied().unwrap_or_default())
        ),
        Event::SmokeTests { results, .. } => format!(
            "smoke tests: {}/{} passed",
            results
                .iter()
                .filter(|r| r.outcome.as_ref().is_some_and(|o| o.passed))
                .count(),
            results.len()
        ),
        Event::Note { text, .. } => format!("note: {text}"),
        Event::Control {
            control, effect, ..
        } => format!("control {}: {effect}", describe_control(control)),
        Event::RollbackStarted { reason } => format!("ROLLBACK: {}", reason.summary),
        Event::Finished { outcome, .. } => format!("finished: {}", outcome.name()),
        Event::DryRun { detail, .. } => format!("dry-run check: {detail}"),
        _ => return None,
    })
}

/// Runs `run` to its end while showing `events` as they come (a spinner on a
/// terminal, plain lines otherwise, JSON lines with `--output json`), after
/// `first` in text mode.
pub(crate) async fn follow<T>(
    run: impl std::future::Future<Output = Result<T, Error>>,
    mut events: tokio::sync::broadcast::Receiver<DeploymentEvent>,
    out: OutputFormat,
    first: String,
    units: Units,
) -> Result<T, Error> {
    let bar = (out == OutputFormat::Text && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    // The first line is printed once the deployment has begun (its first
    // event): a deployer refused at the start (the lease held by another)
    // says only that it was refused.
    let mut first = Some(first);
    // The stage last shown per deployment: a stage entered again at once
    // (a poll's next round) is shown once.
    let mut stages = std::collections::BTreeMap::new();
    let mut begin = |bar: Option<&indicatif::ProgressBar>| {
        if let (Some(f), OutputFormat::Text) = (first.take(), out) {
            match bar {
                Some(b) => b.println(f),
                None => println!("{f}"),
            }
        }
    };
    tokio::pin!(run);
    let result = loop {
        tokio::select! {
            biased;
            ev = events.recv() => {
                if let Ok(ev) = ev {
                    begin(bar.as_ref());
                    show(&ev, out, bar.as_ref(), &units, &mut stages);
                }
            }
            r = &mut run => {
                while let Ok(ev) = events.try_recv() {
                    begin(bar.as_ref());
                    show(&ev, out, bar.as_ref(), &units, &mut stages);
                }
                if r.is_ok() {
                    begin(bar.as_ref());
                }
                break r;
            }
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    result
}

fn show(
    ev: &DeploymentEvent,
    out: OutputFormat,
    bar: Option<&indicatif::ProgressBar>,
    units: &Units,
    stages: &mut std::collections::BTreeMap<String, String>,
) {
    match out {
        OutputFormat::Json => {
            println!(
                "{}",
                serde_json::json!({"deployment_id": &*ev.deployment_id, "at": ev.at, "event": ev.event})
            );
        }
        OutputFormat::Text => {
            if let Event::Stage { stage } = &ev.event {
                let name = stage.name();
                if stages.get(&*ev.deployment_id) == Some(&name) {
                    return;
                }
                stages.insert(ev.deployment_id.to_string(), name);
            }
            let Some(mut line) = describe(&ev.event, units) else {
                return;
            };
            // A group member's deployment id is `<group>/<service>`.
            if let Some((_, service)) = ev.deployment_id.rsplit_once('/') {
                line = format!("[{service}] {line}");
            }
            match bar {
                Some(b) => {
                    if let Event::Stage { stage } = &ev.event {
                        b.set_message(stage.name());
                    }
                    b.println(format!("{}  {line}", ev.at));
                }
                None => println!("{}  {line}", ev.at),
            }
        }
    }
}

/// Polls of [`CONTROL_CONFIRM_POLL`] for a live deployer to take a
/// control: 3 s.
pub(crate) const CONTROL_CONFIRM_POLLS: u32 = 15;

/// The interval of those polls.
pub(crate) const CONTROL_CONFIRM_POLL: Duration = Duration::from_millis(200);

/// Waits `d` of real time, blocking the thread: `abort` and `promote` wait
/// for the deployer, another process, even when the spec runs under paused
/// (virtual) time, where a tokio sleep would end at once.
pub(crate) fn wait_real(d: Duration) {
    std::thread::sleep(d);
}

/// A control in words, e.g. `abort ("bad canary")`.
pub(crate) fn describe_control(c: &Control) -> String {
    match c {
        Control::Abort { reason } => format!("abort ({reason:?})"),
        Control::Promote => "promote".into(),
        Control::Pause => "pause".into(),
        Control::Resume => "resume".into(),
        Control::Proceed { barrier } => format!("proceed past {barrier}"),
        Control::Approve {
            name,
            gate: Some(g),
        } => format!("approval by {name} of gate {g}"),
        Control::Approve { name, gate: None } => format!("approval by {name}"),
    }
}
