//! `bluegreen watch`: a live view of a running deployment, rebuilt from its
//! journal, so it works from any machine that can read the journal (the
//! file, or the Postgres journal a spec's `[journal] kind = "postgres"`
//! names).
//!
//! It shows the stage, a bar of the traffic split, each check's latest
//! value against its success threshold (in the check's unit), and the time
//! left in the current wait (a traffic step's watch, the analysis window,
//! the soak, the scale-down delay, a drain, or a hold's timeout). On a
//! terminal it redraws in place; otherwise (or with `--plain`) it prints a
//! line for each change. It reads the journal every `--interval`: the file
//! journal from where the last read ended, the Postgres journal the
//! deployment's records past the last one seen
//! ([`PostgresJournal::read_after`]). It ends with the
//! deployment, with the exit code `status` gives a finished deployment, or
//! at Ctrl-C ([`EXIT_INTERRUPTED`]).
//!
//! Every line is masked as the log is ([`crate::logging::mask`]): a secret
//! the spec names never shows.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bluegreen_core::machine::{Event, Stage};
use bluegreen_core::plan::{Condition, Unit};
use bluegreen_core::{
    Color, Error, ErrorKind, Journal, JournalEntry, Outcome, Record, Report, Timestamp,
};
use bluegreen_postgres::PostgresJournal;
use serde::Deserialize;

use crate::logging::mask;
use crate::output::EXIT_ERROR;
use crate::spec::{JournalKind, LoadedSpec};

/// Exit code when the watch is stopped with Ctrl-C before the deployment
/// ended (128 + SIGINT, as a shell reports it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// The default interval between two reads of the journal.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// Width of the split bar, in characters.
const BAR: usize = 20;

/// How often plain output repeats the time left in a wait.
const PLAIN_LEFT_EVERY: Duration = Duration::from_secs(10);

/// What `bluegreen watch` was asked.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The deployment (the latest unfinished one of the spec's service, else
    /// its latest, when absent).
    pub id: Option<String>,
    /// How often the journal is read.
    pub interval: Duration,
    /// Appended lines even on a terminal.
    pub plain: bool,
}

/// Runs `bluegreen watch` on its own real-time runtime (a spec under
/// paused time would otherwise make every poll's sleep end at once);
/// returns the exit code: `exit_code` of the finished deployment's report
/// (the one `status` gives), [`EXIT_INTERRUPTED`] at Ctrl-C, or
/// [`EXIT_ERROR`] when the journal cannot be read.
pub fn run(
    loaded: &LoadedSpec,
    journal_path: &Path,
    opts: WatchOptions,
    exit_code: fn(&Report) -> i32,
) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bluegreen: cannot start the runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let r = rt.block_on(async {
        tokio::select! {
            r = watch(loaded, journal_path, &opts, exit_code) => r,
            _ = tokio::signal::ctrl_c() => Ok(EXIT_INTERRUPTED),
        }
    });
    match r {
        Ok(code) => {
            if code == EXIT_INTERRUPTED {
                eprintln!("bluegreen: watch stopped; the deployment goes on");
            }
            code
        }
        Err(e) => {
            eprintln!("bluegreen: {}", mask(&e.to_string()));
            EXIT_ERROR
        }
    }
}

/// Where the records come from.
enum Source {
    /// The journal file, read from where the last read ended.
    File(FileTail),
    /// The Postgres journal: the deployment's records past the last one
    /// seen.
    Postgres(Box<PostgresJournal>),
}

impl Source {
    /// The records of `id` written since the last call (`seen` is the last
    /// `seq` handed out).
    async fn next(&mut self, id: &str, seen: u64) -> Result<Vec<JournalEntry>, Error> {
        match self {
            Source::File(t) => Ok(t
                .read_new()?
                .into_iter()
                .filter(|e| e.deployment_id == id && e.seq > seen)
                .collect()),
            Source::Postgres(j) => j.read_after(id, seen).await,
        }
    }
}

/// A reader of the journal file that only ever reads the bytes appended
/// since its last read. It opens the file read-only: watching needs no
/// write access to the journal, and never creates one.
struct FileTail {
    path: PathBuf,
    offset: u64,
    /// An incomplete last line, completed by a later read.
    partial: Vec<u8>,
    line: usize,
}

/// A journal file line; only the entries matter here.
#[derive(Deserialize)]
#[serde(tag = "line", rename_all = "snake_case")]
enum Line {
    Entry {
        entry: Box<JournalEntry>,
    },
    #[serde(other)]
    Other,
}

impl FileTail {
    fn new(path: &Path) -> FileTail {
        FileTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            line: 0,
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::new(
            ErrorKind::Other,
            format!("journal {}: {what}: {e}", self.path.display()),
        )
    }

    /// The entries in the lines completed since the last read.
    fn read_new(&mut self) -> Result<Vec<JournalEntry>, Error> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "no journal at {}: nothing has been deployed with this spec",
                    self.path.display()
                )))
            }
            Err(e) => return Err(self.io("open", e)),
        };
        let len = f.metadata().map_err(|e| self.io("stat", e))?.len();
        if len < self.offset {
            return Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "journal {} shrank from {} to {len} bytes while watched: it was modified outside bluegreen",
                    self.path.display(),
                    self.offset
                ),
            ));
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| self.io("seek", e))?;
        let mut buf = std::mem::take(&mut self.partial);
        let read = (&mut f)
            .take(len - self.offset)
            .read_to_end(&mut buf)
            .map_err(|e| self.io("read", e))?;
        self.offset += read as u64;
        let mut out = Vec::new();
        let mut rest: &[u8] = &buf;
        while let Some(n) = rest.iter().position(|b| *b == b'\n') {
            let line = &rest[..n];
            rest = &rest[n + 1..];
            self.line += 1;
            match serde_json::from_slice::<Line>(line) {
                Ok(Line::Entry { entry }) => out.push(*entry),
                Ok(Line::Other) => {}
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "journal {} line {} is damaged ({e})",
                            self.path.display(),
                            self.line
                        ),
                    ))
                }
            }
        }
        // A line the deployer is still writing waits for the next read.
        self.partial = rest.to_vec();
        Ok(out)
    }
}

/// Picks the deployment to watch from the file journal's first read: `id`,
/// or the latest unfinished deployment of `service`, else its latest.
/// Returns its records read so far.
fn pick_in_file(
    entries: Vec<JournalEntry>,
    service: &str,
    id: Option<&str>,
    path: &Path,
) -> Result<(String, Vec<JournalEntry>), Error> {
    let mut by_id: HashMap<String, Vec<JournalEntry>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for e in entries {
        if id.is_some_and(|i| i != e.deployment_id) || (id.is_none() && e.service != service) {
            continue;
        }
        if !by_id.contains_key(&e.deployment_id) {
            order.push(e.deployment_id.clone());
        }
        by_id.entry(e.deployment_id.clone()).or_default().push(e);
    }
    if let Some(id) = id {
        return Ok((id.to_string(), by_id.remove(id).unwrap_or_default()));
    }
    let finished = |es: &[JournalEntry]| {
        es.iter().any(|e| match &e.record {
            Record::Step { events, .. } => {
                events.iter().any(|v| matches!(v, Event::Finished { .. }))
            }
            _ => false,
        })
    };
    let started = |id: &String| by_id[id].first().map_or(Timestamp(0), |e| e.at);
    order.sort_by_key(started);
    let chosen = order
        .iter()
        .rev()
        .find(|d| !finished(&by_id[*d]))
        .or_else(|| order.last())
        .cloned()
        .ok_or_else(|| {
            Error::not_found(format!("no deployment of {service} in {}", path.display()))
        })?;
    let records = by_id.remove(&chosen).unwrap_or_default();
    Ok((chosen, records))
}

/// Picks the deployment in another journal, as `resume` does: the latest
/// unfinished one of `service`, else its latest.
async fn pick_in_journal(j: &dyn Journal, service: &str, path: &Path) -> Result<String, Error> {
    let mut all = j.deployments(Some(service.to_string())).await?;
    all.sort_by_key(|d| d.started_at);
    all.iter()
        .rev()
        .find(|d| d.outcome.is_none())
        .or_else(|| all.last())
        .map(|d| d.id.clone())
        .ok_or_else(|| {
            Error::not_found(format!("no deployment of {service} in {}", path.display()))
        })
}

async fn watch(
    l: &LoadedSpec,
    path: &Path,
    opts: &WatchOptions,
    exit_code: fn(&Report) -> i32,
) -> Result<i32, Error> {
    let service = l.spec.scope.service.clone();
    let (id, mut source, first) = match l.spec.journal.kind {
        JournalKind::File => {
            let mut tail = FileTail::new(path);
            let all = tail.read_new()?;
            let (id, first) = pick_in_file(all, &service, opts.id.as_deref(), path)?;
            (id, Source::File(tail), first)
        }
        JournalKind::Postgres => {
            let j = PostgresJournal::connect(crate::journal::journal_database(l)?).await?;
            let id = match &opts.id {
                Some(id) => id.clone(),
                None => pick_in_journal(&j, &service, path).await?,
            };
            (id, Source::Postgres(Box::new(j)), Vec::new())
        }
    };
    let plain = opts.plain || !std::io::stdout().is_terminal();
    let mut view = View::new(id.clone(), plain);
    let mut seen = 0u64;
    let mut pending = first;
    let mut waited_note = false;
    loop {
        if pending.is_empty() {
            pending = source.next(&id, seen).await?;
        }
        for e in pending.drain(..) {
            seen = seen.max(e.seq);
            view.add(&e);
        }
        if view.state.report.records == 0 && !waited_note {
            waited_note = true;
            println!("{}", mask(&format!("waiting for the first record of {id}")));
        }
        view.show(Timestamp::from_system_time(std::time::SystemTime::now()));
        if let Some(code) = view.finished(exit_code) {
            return Ok(code);
        }
        tokio::time::sleep(opts.interval).await;
    }
}

/// What the journal has said so far.
#[derive(Default)]
struct State {
    report: Report,
    /// The current stage, as journaled (with its wait's end).
    stage: Option<Stage>,
    /// When it began.
    stage_at: Timestamp,
    /// The hold timeout of the plan.
    hold_timeout: Option<Duration>,
    /// The old and the new color.
    colors: Option<(Color, Color)>,
    /// The latest record's time.
    last_at: Timestamp,
}

impl State {
    /// When the current stage's wait ends, if it waits.
    fn wait_until(&self) -> Option<Timestamp> {
        match self.stage.as_ref()? {
            Stage::Watch { until, .. }
            | Stage::Analysis { until }
            | Stage::Soak { until }
            | Stage::ScaleDownDelay { until }
            | Stage::Drain { until } => Some(*until),
            Stage::Hold { .. } => self.hold_timeout.map(|t| self.stage_at.after(t)),
            _ => None,
        }
    }

    /// The time left in the current wait at `now` (the wall clock, or the
    /// latest record's time when a deployment under virtual time is ahead
    /// of it), with the wait's length.
    fn left(&self, now: Timestamp) -> Option<(Duration, Duration)> {
        let until = self.wait_until()?;
        let now = now.max(self.last_at);
        Some((until.since(now), until.since(self.stage_at)))
    }
}

/// The view: a frame redrawn in place, or plain appended lines.
struct View {
    id: String,
    plain: bool,
    state: State,
    /// Plain lines waiting to be printed.
    lines: Vec<String>,
    /// Lines of the frame drawn last (to move back over).
    drawn: usize,
    /// The last line printed for each check (plain output).
    printed_checks: HashMap<String, String>,
    /// The stage the time left was last printed for, and when.
    left_printed: Option<(String, Instant)>,
    header_done: bool,
}

impl View {
    fn new(id: String, plain: bool) -> View {
        View {
            id,
            plain,
            state: State::default(),
            lines: Vec::new(),
            drawn: 0,
            printed_checks: HashMap::new(),
            left_printed: None,
            header_done: false,
        }
    }

    fn add(&mut self, e: &JournalEntry) {
        let s = &mut self.state;
        s.report.add(&e.deployment_id, e.at, &e.record);
        s.last_at = s.last_at.max(e.at);
        match &e.record {
            Record::Started { plan, .. } => s.hold_timeout = Some(plan.timing.hold_timeout),
            Record::Step { events, .. } => {
                for ev in events {
                    self.event(e.at, ev);
                }
            }
            Record::Checkpoint { .. } => {}
        }
    }

    fn event(&mut self, at: Timestamp, ev: &Event) {
        let s = &mut self.state;
        match ev {
            Event::Stage { stage } => {
                // A stage entered again in another phase (a scale request
                // done, polling begun) keeps its name: shown once.
                let again = s.stage.as_ref().is_some_and(|p| p.name() == stage.name());
                s.stage = Some(stage.clone());
                s.stage_at = at;
                if again {
                    return;
                }
                let wait = s
                    .wait_until()
                    .map(|u| format!(" (wait {})", dur(u.since(at))))
                    .unwrap_or_default();
                self.lines
                    .push(format!("{at}  stage {}{wait}", stage.name()));
            }
            Event::Colors { old, new } => {
                s.colors = Some((*old, *new));
                self.lines.push(format!(
                    "{at}  {old} serves; deploying to {new}; traffic {}",
                    bar(
                        bluegreen_core::TrafficSplit::all_on(*old).percent(Color::Blue),
                        true
                    )
                ));
            }
            Event::TrafficConfirmed { split } => self.lines.push(format!(
                "{at}  traffic {}",
                bar(split.percent(Color::Blue), true)
            )),
            Event::Measured { measurement } => {
                let unit = unit_of(&s.report, &measurement.check);
                let line = check_line(
                    &measurement.check,
                    measurement.value,
                    &measurement.condition,
                    unit,
                    verdict(measurement),
                );
                if self.printed_checks.get(&measurement.check) != Some(&line) {
                    self.printed_checks
                        .insert(measurement.check.clone(), line.clone());
                    self.lines.push(format!("{at}  check {line}"));
                }
            }
            Event::Control {
                control, effect, ..
            } => self.lines.push(format!(
                "{at}  control {}: {effect}",
                crate::output::describe_control(control)
            )),
            Event::RollbackStarted { reason } => self
                .lines
                .push(format!("{at}  rollback: {}", reason.summary)),
            Event::Finished { outcome, .. } => {
                let mut line = format!("{at}  finished: {}", outcome.name());
                if let Outcome::RolledBack { reason } | Outcome::Halted { reason } = outcome {
                    line.push_str(&format!(" ({})", reason.summary));
                }
                self.lines.push(line);
            }
            _ => {}
        }
    }

    /// The exit code once the deployment has ended.
    fn finished(&self, exit_code: fn(&Report) -> i32) -> Option<i32> {
        self.state
            .report
            .outcome
            .as_ref()
            .map(|_| exit_code(&self.state.report))
    }

    fn header(&self) -> String {
        let r = &self.state.report;
        format!("watching {} {} ({})", r.service, r.version, self.id)
    }

    fn show(&mut self, now: Timestamp) {
        if self.state.report.records == 0 {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.plain {
            if !self.header_done {
                self.header_done = true;
                let _ = writeln!(out, "{}", mask(&self.header()));
            }
            for l in self.lines.drain(..) {
                let _ = writeln!(out, "{}", mask(&l));
            }
            if self.state.report.outcome.is_none() {
                if let (Some((left, _)), Some(stage)) = (self.state.left(now), &self.state.stage) {
                    let name = stage.name();
                    let due = match &self.left_printed {
                        Some((s, t)) => *s != name || t.elapsed() >= PLAIN_LEFT_EVERY,
                        None => true,
                    };
                    if due {
                        self.left_printed = Some((name.clone(), Instant::now()));
                        let _ = writeln!(
                            out,
                            "{}",
                            mask(&format!("{now}  {} left in {name}", dur(left)))
                        );
                    }
                }
            }
        } else {
            self.lines.clear();
            let frame = self.frame(now);
            let mut text = String::new();
            if self.drawn > 0 {
                // Back to the frame's first line.
                text.push_str(&format!("\x1b[{}A\r", self.drawn));
            }
            for l in &frame {
                text.push_str("\x1b[2K");
                text.push_str(&mask(l));
                text.push('\n');
            }
            // Lines a longer earlier frame left below.
            text.push_str("\x1b[J");
            self.drawn = frame.len();
            let _ = out.write_all(text.as_bytes());
        }
        let _ = out.flush();
    }

    /// The frame on a terminal.
    fn frame(&self, now: Timestamp) -> Vec<String> {
        let s = &self.state;
        let r = &s.report;
        let mut f = vec![self.header()];
        let stage = s.stage.as_ref().map_or("pending".into(), Stage::name);
        let outcome = match &r.outcome {
            Some(o) => format!("  — finished: {}", o.name()),
            None => String::new(),
        };
        f.push(format!("stage    {stage}{outcome}"));
        if r.outcome.is_none() {
            if let Some((left, total)) = s.left(now) {
                f.push(format!("wait     {} left of {}", dur(left), dur(total)));
            }
        }
        if let Some(split) = r.splits.last() {
            f.push(format!(
                "traffic  {}",
                bar(split.split.percent(Color::Blue), false)
            ));
        }
        if let Some((old, new)) = s.colors {
            f.push(format!(
                "         {old} serves the old release, {new} the new one"
            ));
        }
        for c in &r.checks {
            let latest = r.measurements.iter().rev().find(|m| m.check == c.name);
            let line = match latest {
                Some(m) => check_line(&c.name, m.value, &m.condition, c.unit, verdict(m)),
                None => format!(
                    "{}: not measured yet ({} {})",
                    c.name,
                    "success",
                    condition_text(&c.success, c.unit)
                ),
            };
            f.push(format!("check    {line}"));
        }
        if let Some(d) = r.decisions.last() {
            f.push(format!("latest   {}  {}", d.at, d.text));
        }
        if let Some(Outcome::RolledBack { reason } | Outcome::Halted { reason }) = &r.outcome {
            f.push(format!("reason   {}", reason.summary));
        }
        f
    }
}

/// The unit of `check` in the plan (a number when the plan is not read yet).
fn unit_of(r: &Report, check: &str) -> Unit {
    r.checks
        .iter()
        .find(|c| c.name == check)
        .map_or(Unit::Number, |c| c.unit)
}

fn verdict(m: &bluegreen_core::analysis::Measurement) -> String {
    let v = match m.verdict {
        bluegreen_core::analysis::Verdict::Pass => "pass",
        bluegreen_core::analysis::Verdict::Fail => "fail",
        bluegreen_core::analysis::Verdict::Inconclusive => "inconclusive",
    };
    if m.breach {
        format!("{v}, breach")
    } else {
        v.to_string()
    }
}

/// `error-rate 0.2% (success < 1%): pass`.
fn check_line(
    name: &str,
    value: Option<f64>,
    c: &Condition,
    unit: Unit,
    verdict: String,
) -> String {
    let v = value.map_or("no value".into(), |v| value_text(v, unit));
    format!(
        "{name} {v} (success {}): {verdict}",
        condition_text(c, unit)
    )
}

/// A value in its unit, as the report and `deploy` write it: a ratio as a
/// percentage (`0.002` is `0.2%`), milliseconds as `ms`.
pub fn value_text(v: f64, unit: Unit) -> String {
    unit.format(v)
}

/// A condition with its threshold in the check's unit: `< 1%`.
pub fn condition_text(c: &Condition, unit: Unit) -> String {
    c.in_unit(unit)
}

/// A duration in whole seconds, rounded up (`1m 30s`), or in
/// milliseconds under a second (`500ms`).
fn dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let secs = d.as_millis().div_ceil(1000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The split as a bar: `blue 20% [####----------------] 80% green`; `plain`
/// draws it in ASCII, a terminal in block characters.
pub fn bar(blue: u8, plain: bool) -> String {
    let blue = blue.min(100);
    let filled = (usize::from(blue) * BAR + 50) / 100;
    let (b, g) = if plain { ('#', '-') } else { ('█', '░') };
    let cells: String = std::iter::repeat_n(b, filled)
        .chain(std::iter::repeat_n(g, BAR - filled))
        .collect();
    format!("blue {blue:>3}% [{cells}] {:>3}% green", 100 - blue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_splits_its_cells_by_the_percent() {
        assert_eq!(bar(20, true), "blue  20% [####----------------]  80% green");
        assert_eq!(
            bar(100, true),
            "blue 100% [####################]   0% green"
        );
        assert_eq!(bar(0, false), "blue   0% [░░░░░░░░░░░░░░░░░░░░] 100% green");
    }

    #[test]
    fn values_and_thresholds_carry_the_unit() {
        assert_eq!(value_text(0.002, Unit::Ratio), "0.2%");
        assert_eq!(value_text(4.24434, Unit::Milliseconds), "4.2443 ms");
        assert_eq!(condition_text(&Condition::lt(0.01), Unit::Ratio), "< 1%");
        assert_eq!(
            check_line(
                "p95",
                None,
                &Condition::lt(500.0),
                Unit::Milliseconds,
                "inconclusive".into()
            ),
            "p95 no value (success < 500 ms): inconclusive"
        );
        assert_eq!(dur(Duration::from_millis(1500)), "2s");
        assert_eq!(dur(Duration::from_millis(500)), "500ms");
        assert_eq!(dur(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn a_line_still_being_written_waits_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(
            &path,
            "{\"line\":\"released\",\"service\":\"s\",\"token\":1}\n{\"line\":\"rel",
        )
        .unwrap();
        let mut t = FileTail::new(&path);
        assert!(t.read_new().unwrap().is_empty());
        assert_eq!(t.partial, b"{\"line\":\"rel");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"eased\",\"service\":\"s\",\"token\":2}\nnot json\n")
            .unwrap();
        let e = t.read_new().unwrap_err();
        assert!(e.to_string().contains("line 3 is damaged"), "{e}");
    }
}
