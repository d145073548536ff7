//! The report as one self-contained HTML page: a summary, an SVG timeline
//! drawn by plotters (stage bands, the traffic split per color, each check's
//! values against its thresholds with breach markers, decisions, human
//! controls and hook runs as annotations) and the tables of the Markdown
//! report, including the production checks (`#production-checks`) and the
//! hook runs (`#hooks`).
//!
//! The page loads nothing: no script, no stylesheet, no font, no image from
//! anywhere. Every text from the report is HTML-escaped here, and the text
//! plotters writes into the SVG is escaped by its SVG backend. The report
//! holds no secret (secrets are masked before they are journaled), and this
//! page adds none.
//!
//! The chart is drawn in layers, each a plotters drawing of the same layout,
//! and each layer is embedded in a `<g>` with an id or class (plotters gives
//! its elements none), so a browser test or a stylesheet can find every
//! part: `#stage-bands > g.stage-band[data-stage]`, `g.split-series[data-color]`,
//! `g.check-series[data-check]`, `g.threshold[data-check][data-kind]`,
//! `g.breach-markers[data-check]` and `g.annotation[data-kind]`.

use std::fmt::Write as _;
use std::time::Duration;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::Color as _;

use super::{CheckRecord, DecisionKind, Report, SmokeRecord};
use crate::analysis::{Measurement, MeasurementKind, Verdict};
use crate::color::{Color, Timestamp};
use crate::machine::{Outcome, SmokeScope};
use crate::plan::{Comparison, Condition, Unit};

/// The chart's width in pixels.
const WIDTH: u32 = 1200;
/// The traffic panel's height in pixels (it carries the annotations' labels).
const TRAFFIC_HEIGHT: u32 = 300;
/// Each check panel's height in pixels.
const CHECK_HEIGHT: u32 = 220;
/// Space left of each panel for the y labels and the panel's title.
const Y_LABELS: u32 = 90;
/// Space under each panel for the time labels.
const X_LABELS: u32 = 30;
/// The font of every text in the chart: the reader's own sans-serif.
const FONT: &str = "sans-serif";

const BLUE: RGBColor = RGBColor(31, 100, 200);
const GREEN: RGBColor = RGBColor(30, 140, 60);
const SUCCESS: RGBColor = RGBColor(40, 150, 80);
const BREACH: RGBColor = RGBColor(200, 30, 30);
const VALUE: RGBColor = RGBColor(60, 60, 60);
const CONTROL: RGBColor = RGBColor(130, 50, 170);
const ROLLBACK: RGBColor = RGBColor(200, 30, 30);
const OUTCOME: RGBColor = RGBColor(20, 20, 20);
const HOOK: RGBColor = RGBColor(200, 120, 0);

type DrawError = plotters::drawing::DrawingAreaErrorKind<std::io::Error>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

impl Report {
    /// The report as one self-contained HTML page (no external asset):
    /// the outcome and its evidence, a timeline chart in SVG and the tables
    /// of [`Report::to_markdown`]. Values carry their units; every text is
    /// HTML-escaped. A chart that cannot be drawn is replaced by a line
    /// saying why; the tables are always there.
    pub fn to_html(&self) -> String {
        self.to_html_with(&[])
    }

    /// [`Report::to_html`] with `extra` tables after the report's own (a
    /// caller's acceptance criteria, for example), escaped like the rest.
    pub fn to_html_with(&self, extra: &[HtmlTable]) -> String {
        let mut s = String::with_capacity(64 * 1024);
        let title = format!(
            "Deployment {} of {} {}",
            self.deployment_id, self.service, self.version
        );
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            esc(&title),
            esc(&title)
        );
        self.summary_html(&mut s);
        s.push_str("<h2>Timeline</h2>\n<figure id=\"timeline\">\n");
        match Timeline::new(self).and_then(|t| t.svg()) {
            Ok(svg) => s.push_str(&svg),
            Err(e) => {
                let _ = writeln!(
                    s,
                    "<p class=\"chart-error\">The timeline could not be drawn: {}</p>",
                    esc(&e)
                );
            }
        }
        s.push_str(LEGEND);
        s.push_str("</figure>\n");
        self.state_html(&mut s);
        self.rollback_times_html(&mut s);
        self.stages_html(&mut s);
        self.smoke_html(&mut s);
        self.hooks_html(&mut s);
        self.measurements_html(&mut s);
        self.decisions_html(&mut s);
        self.calls_html(&mut s);
        for t in extra {
            t.write(&mut s);
        }
        s.push_str("</body>\n</html>\n");
        s
    }

    fn summary_html(&self, s: &mut String) {
        s.push_str("<dl id=\"summary\">\n");
        dl(s, "Service", &self.service);
        dl(s, "Version", &self.version);
        dl(s, "Image", &self.image);
        dl(s, "Deployment", &self.deployment_id);
        dl(s, "Started", &self.started_at.to_string());
        if let Some(f) = self.finished_at {
            dl(
                s,
                "Finished",
                &format!("{f} (took {})", took(f.since(self.started_at))),
            );
        }
        let _ = writeln!(
            s,
            "<dt>Outcome</dt><dd id=\"outcome\" class=\"outcome {}\">{}</dd>",
            outcome_class(self.outcome.as_ref()),
            esc(&words(self.outcome_name()))
        );
        if let Some(Outcome::RolledBack { reason } | Outcome::Halted { reason }) = &self.outcome {
            dl(s, "Reason", &reason.summary);
        }
        s.push_str("</dl>\n");
        if let Some(Outcome::RolledBack { reason } | Outcome::Halted { reason }) = &self.outcome {
            if !reason.evidence.is_empty() {
                s.push_str("<h2>Evidence behind the decision</h2>\n");
                s.push_str(
                    "<table id=\"evidence\">\n<thead><tr><th>at</th><th>check</th><th>value</th>\
                     <th>success</th><th>samples</th><th>window</th><th>verdict</th><th>breach</th></tr></thead>\n<tbody>\n",
                );
                for m in &reason.evidence {
                    let unit = self.unit_of(&m.check);
                    row(
                        s,
                        &[
                            &m.to.to_string(),
                            &m.check,
                            &value_text(m.value, unit),
                            &condition_text(&m.condition, unit),
                            &m.samples.len().to_string(),
                            &took(m.to.since(m.from)),
                            verdict_text(m.verdict),
                            if m.breach { "yes" } else { "no" },
                        ],
                    );
                }
                s.push_str("</tbody>\n</table>\n");
            }
        }
    }

    fn state_html(&self, s: &mut String) {
        let Some(f) = &self.facts else { return };
        let color = |c: Option<Color>| c.map_or("unknown".to_string(), |c| c.to_string());
        let count = |n: Option<u32>| n.map_or("none requested".to_string(), |n| n.to_string());
        s.push_str("<h2>Recorded state</h2>\n<table id=\"recorded-state\">\n<tbody>\n");
        row(s, &["old color", &color(f.old)]);
        row(s, &["new color", &color(f.new)]);
        if let Some(split) = f.confirmed_split {
            row(s, &["traffic (read back)", &split_text(split)]);
        }
        row(s, &["new color's requested count", &count(f.new_count)]);
        row(s, &["old color's requested count", &count(f.old_count)]);
        row(s, &["old color's capacity", &count(f.old_capacity)]);
        if let Some(b) = &f.backup {
            row(s, &["backup", &format!("{} at {}", b.id, b.location)]);
        }
        for m in &f.applied {
            let kind = if m.reversible {
                "reversible"
            } else {
                "irreversible"
            };
            row(
                s,
                &[
                    "migration applied",
                    &format!("{} {} ({}, {kind})", m.version, m.name, m.phase),
                ],
            );
        }
        for m in &f.reverted {
            row(
                s,
                &["migration reverted", &format!("{} {}", m.version, m.name)],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }

    fn rollback_times_html(&self, s: &mut String) {
        let times = self.rollback_times();
        if times.is_empty() {
            return;
        }
        s.push_str(
            "<h2>Rollback time against the reference's targets</h2>\n<table id=\"rollback-times\">\n\
             <thead><tr><th></th><th>measured as</th><th>target</th><th>measured</th><th></th></tr></thead>\n<tbody>\n",
        );
        for t in &times {
            row(
                s,
                &[
                    &t.what,
                    &t.measured_as,
                    &format!("< {}", took(t.target)),
                    &t.measured.map_or("-".to_string(), took),
                    t.verdict(),
                ],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }

    fn stages_html(&self, s: &mut String) {
        s.push_str(
            "<h2>Stages</h2>\n<table id=\"stages\">\n<thead><tr><th>stage</th><th>started</th>\
             <th>after start</th><th>took</th></tr></thead>\n<tbody>\n",
        );
        for st in &self.stages {
            row(
                s,
                &[
                    &st.stage,
                    &st.started_at.to_string(),
                    &took(st.started_at.since(self.started_at)),
                    &st.ended_at
                        .map_or("unfinished".to_string(), |e| took(e.since(st.started_at))),
                ],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }

    /// The smoke tests on the new color, then the production checks (smoke
    /// tests through the production URL), each in its own table as in the
    /// Markdown report.
    fn smoke_html(&self, s: &mut String) {
        for production in [false, true] {
            let runs: Vec<&SmokeRecord> = self
                .smoke_tests
                .iter()
                .filter(|r| (r.scope == SmokeScope::Production) == production)
                .collect();
            if runs.is_empty() {
                continue;
            }
            s.push_str(if production {
                "<h2>Production checks</h2>\n<p>Smoke tests through the production URL after each \
                 traffic change and after a rollback.</p>\n<table id=\"production-checks\">\n"
            } else {
                "<h2>Smoke tests</h2>\n<table id=\"smoke-tests\">\n"
            });
            s.push_str(
                "<thead><tr><th>at</th><th>on</th><th>test</th><th>result</th><th>took</th>\
                 <th>detail</th></tr></thead>\n<tbody>\n",
            );
            smoke_rows(s, &runs);
            s.push_str("</tbody>\n</table>\n");
        }
    }

    /// The lifecycle hook runs: name, point, outcome, attempts, duration and
    /// the tail of the output (masked when it was recorded).
    fn hooks_html(&self, s: &mut String) {
        if self.hooks.is_empty() {
            return;
        }
        s.push_str(
            "<h2>Hooks</h2>\n<table id=\"hooks\">\n<thead><tr><th>at</th><th>hook</th>\
             <th>point</th><th>result</th><th>attempts</th><th>took</th><th>output</th>\
             </tr></thead>\n<tbody>\n",
        );
        for h in &self.hooks {
            let o = &h.outcome;
            let result = match (o.passed, h.late) {
                (true, false) => "passed",
                (false, false) => "failed",
                (true, true) => "passed (after the rollback began)",
                (false, true) => "failed (after the rollback began)",
            };
            row(
                s,
                &[
                    &h.at.to_string(),
                    &h.hook,
                    h.point.as_str(),
                    result,
                    &o.attempts.to_string(),
                    &format!("{} ms", o.duration.as_millis()),
                    &o.detail,
                ],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }
}

/// One row per smoke test of `runs`.
fn smoke_rows(s: &mut String, runs: &[&SmokeRecord]) {
    for run in runs {
        let on = super::scope_text(run.scope);
        for t in &run.results {
            let (result, duration, detail) = match (&t.outcome, &t.error) {
                (Some(o), _) => (
                    if o.passed { "passed" } else { "failed" },
                    format!("{} ms", o.duration.as_millis()),
                    o.detail.clone(),
                ),
                (None, Some(e)) => ("failed", String::new(), e.message.clone()),
                (None, None) => ("no result", String::new(), String::new()),
            };
            row(
                s,
                &[
                    &run.at.to_string(),
                    &on,
                    &t.name,
                    result,
                    &duration,
                    &detail,
                ],
            );
        }
    }
}

impl Report {
    fn measurements_html(&self, s: &mut String) {
        if self.measurements.is_empty() {
            return;
        }
        s.push_str(
            "<h2>Measurements</h2>\n<table id=\"measurements\">\n<thead><tr><th>at</th><th>check</th>\
             <th>kind</th><th>value</th><th>success</th><th>samples</th><th>verdict</th>\
             <th>breach</th></tr></thead>\n<tbody>\n",
        );
        for m in &self.measurements {
            let unit = self.unit_of(&m.check);
            let mut verdict = verdict_text(m.verdict).to_string();
            if m.dry_run {
                verdict.push_str(" (dry run)");
            }
            if let Some(n) = &m.note {
                let _ = write!(verdict, ": {n}");
            }
            row(
                s,
                &[
                    &m.to.to_string(),
                    &m.check,
                    kind_text(m.kind),
                    &value_text(m.value, unit),
                    &condition_text(&m.condition, unit),
                    &m.samples.len().to_string(),
                    &verdict,
                    if m.breach { "yes" } else { "" },
                ],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }

    fn decisions_html(&self, s: &mut String) {
        s.push_str(
            "<h2>Decisions</h2>\n<table id=\"decisions\">\n<thead><tr><th>at</th><th>after start</th>\
             <th>kind</th><th>what</th></tr></thead>\n<tbody>\n",
        );
        for d in &self.decisions {
            row(
                s,
                &[
                    &d.at.to_string(),
                    &took(d.at.since(self.started_at)),
                    decision_kind_text(d.kind),
                    &d.text,
                ],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }

    fn calls_html(&self, s: &mut String) {
        s.push_str(
            "<h2>Provider calls</h2>\n<table id=\"provider-calls\">\n<thead><tr><th>at</th>\
             <th>call</th><th>detail</th><th>result</th></tr></thead>\n<tbody>\n",
        );
        for a in &self.actions {
            row(
                s,
                &[
                    &a.at.to_string(),
                    &a.operation,
                    &a.detail,
                    a.result.as_deref().unwrap_or("(no result recorded)"),
                ],
            );
        }
        s.push_str("</tbody>\n</table>\n");
    }

    /// The unit of `check`'s values, as the plan said ([`Unit::Number`]
    /// when the report does not know the check).
    fn unit_of(&self, check: &str) -> Unit {
        self.checks
            .iter()
            .find(|c| c.name == check)
            .map_or(Unit::Number, |c| c.unit)
    }
}

/// A table a caller adds to the HTML report: a heading, column names and
/// rows of plain text (escaped when written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HtmlTable {
    /// The table's `id` attribute, e.g. `acceptance`.
    pub id: String,
    /// The heading above it.
    pub title: String,
    /// The column names.
    pub columns: Vec<String>,
    /// The rows, each a cell per column.
    pub rows: Vec<Vec<String>>,
}

impl HtmlTable {
    fn write(&self, s: &mut String) {
        let _ = write!(
            s,
            "<h2>{}</h2>\n<table id=\"{}\">\n<thead><tr>",
            esc(&self.title),
            esc(&self.id)
        );
        for c in &self.columns {
            let _ = write!(s, "<th>{}</th>", esc(c));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            row(s, &r.iter().map(String::as_str).collect::<Vec<_>>());
        }
        s.push_str("</tbody>\n</table>\n");
    }
}

/// What the chart shows, in seconds since the deployment started and in
/// each check's display unit.
struct Timeline<'r> {
    report: &'r Report,
    /// The time axis ends here (seconds since the start).
    end: f64,
    /// The checks, each with its own panel under the traffic panel.
    checks: Vec<CheckPanel<'r>>,
    /// Decisions and controls at one instant each, in time order.
    annotations: Vec<Annotation>,
}

struct CheckPanel<'r> {
    name: String,
    unit: Unit,
    success: Option<Condition>,
    breach: Vec<Condition>,
    measurements: Vec<&'r Measurement>,
    /// The y axis's range, in display units.
    top: f64,
}

struct Annotation {
    at: f64,
    kind: &'static str,
    label: String,
    text: String,
    color: RGBColor,
}

/// One panel of a layer being drawn: the traffic panel or a check's.
enum Panel<'t, 'r> {
    Traffic,
    Check(&'t CheckPanel<'r>),
}

impl<'r> Timeline<'r> {
    fn new(report: &'r Report) -> Result<Timeline<'r>, String> {
        let start = report.started_at;
        let secs = |t: Timestamp| t.since(start).as_secs_f64();
        let mut last = report.finished_at.unwrap_or(start);
        let times = report
            .stages
            .iter()
            .flat_map(|s| [Some(s.started_at), s.ended_at])
            .flatten()
            .chain(report.measurements.iter().map(|m| m.to))
            .chain(report.decisions.iter().map(|d| d.at))
            .chain(report.splits.iter().map(|s| s.at))
            .chain(report.hooks.iter().map(|h| h.at));
        for t in times {
            last = last.max(t);
        }
        let end = secs(last).max(1.0);
        let mut checks: Vec<CheckPanel<'r>> = report
            .checks
            .iter()
            .map(|c: &CheckRecord| CheckPanel {
                name: c.name.clone(),
                unit: c.unit,
                success: Some(c.success),
                breach: c.breach.clone(),
                measurements: Vec::new(),
                top: 0.0,
            })
            .collect();
        for m in &report.measurements {
            let i = match checks.iter().position(|c| c.name == m.check) {
                Some(i) => i,
                None => {
                    checks.push(CheckPanel {
                        name: m.check.clone(),
                        unit: Unit::Number,
                        success: Some(m.condition),
                        breach: Vec::new(),
                        measurements: Vec::new(),
                        top: 0.0,
                    });
                    checks.len() - 1
                }
            };
            checks[i].measurements.push(m);
        }
        for c in &mut checks {
            let values = c
                .measurements
                .iter()
                .filter_map(|m| m.value)
                .chain(c.success.iter().map(|s| s.threshold))
                .chain(c.breach.iter().map(|b| b.threshold))
                .map(|v| display(v, c.unit))
                .filter(|v| v.is_finite());
            let max = values.fold(0.0_f64, f64::max);
            c.top = if max > 0.0 { max * 1.15 } else { 1.0 };
        }
        let mut annotations: Vec<Annotation> = Vec::new();
        for d in &report.decisions {
            let (kind, color, label) = match d.kind {
                DecisionKind::Control => ("control", CONTROL, control_label(&d.text)),
                DecisionKind::Rollback => ("rollback", ROLLBACK, "rollback".to_string()),
                DecisionKind::Note | DecisionKind::Notification => continue,
            };
            let at = secs(d.at);
            // A control's instruction and its effect land at one instant: one mark.
            if let Some(a) = annotations
                .iter_mut()
                .find(|a| a.kind == kind && (a.at - at).abs() < 1e-9)
            {
                a.text.push('\n');
                a.text.push_str(&d.text);
                continue;
            }
            annotations.push(Annotation {
                at,
                kind,
                label,
                text: d.text.clone(),
                color,
            });
        }
        if let (Some(f), Some(o)) = (report.finished_at, &report.outcome) {
            let text = match o {
                Outcome::RolledBack { reason } | Outcome::Halted { reason } => {
                    format!("{}: {}", words(o.name()), reason.summary)
                }
                _ => words(o.name()),
            };
            annotations.push(Annotation {
                at: secs(f),
                kind: "outcome",
                label: words(o.name()),
                text,
                color: OUTCOME,
            });
        }
        for h in &report.hooks {
            annotations.push(Annotation {
                at: secs(h.at),
                kind: "hook",
                label: h.hook.clone(),
                text: format!(
                    "hook {} at {}: {} after {} attempt{}",
                    h.hook,
                    h.point,
                    if h.outcome.passed { "passed" } else { "failed" },
                    h.outcome.attempts,
                    if h.outcome.attempts == 1 { "" } else { "s" }
                ),
                color: if h.outcome.passed { HOOK } else { ROLLBACK },
            });
        }
        annotations.sort_by(|a, b| a.at.total_cmp(&b.at));
        Ok(Timeline {
            report,
            end,
            checks,
            annotations,
        })
    }

    fn height(&self) -> u32 {
        TRAFFIC_HEIGHT + CHECK_HEIGHT * self.checks.len() as u32
    }

    /// Draws one layer: `draw` is called with each panel's chart, all
    /// panels laid out identically in every layer. Returns the drawing's
    /// elements without plotters' `<svg>` element around them.
    fn layer(
        &self,
        draw: &mut dyn FnMut(&Panel<'_, 'r>, &mut Chart<'_, '_>) -> Result<(), DrawError>,
        background: bool,
    ) -> Result<String, String> {
        let mut buf = String::new();
        {
            let root =
                SVGBackend::with_string(&mut buf, (WIDTH, self.height())).into_drawing_area();
            if background {
                root.fill(&WHITE).map_err(|e| e.to_string())?;
            }
            // The traffic panel, then one panel under it per check.
            let breaks: Vec<i32> = (0..self.checks.len())
                .map(|i| (TRAFFIC_HEIGHT + CHECK_HEIGHT * i as u32) as i32)
                .collect();
            let areas = root.split_by_breakpoints([] as [i32; 0], &breaks);
            let panels = std::iter::once((Panel::Traffic, 100.0))
                .chain(self.checks.iter().map(|c| (Panel::Check(c), c.top)));
            for (i, (area, (panel, top))) in areas.iter().zip(panels).enumerate() {
                let mut chart = ChartBuilder::on(area)
                    .margin_top(if i == 0 { 40 } else { 12 })
                    .margin_bottom(6)
                    .margin_left(10)
                    .margin_right(150)
                    .x_label_area_size(X_LABELS)
                    .y_label_area_size(Y_LABELS)
                    .build_cartesian_2d(0.0..self.end, 0.0..top)
                    .map_err(|e| e.to_string())?;
                draw(&panel, &mut chart).map_err(|e| e.to_string())?;
            }
            root.present().map_err(|e| e.to_string())?;
        }
        let open = buf
            .find("<svg")
            .and_then(|i| buf[i..].find('>').map(|j| i + j + 1))
            .ok_or("plotters wrote no <svg> element")?;
        let close = buf.rfind("</svg>").ok_or("plotters wrote no </svg>")?;
        Ok(buf[open..close.max(open)].to_string())
    }

    /// The whole chart: each layer in a `<g>` named for what it shows.
    fn svg(&self) -> Result<String, String> {
        let report = self.report;
        let height = self.height();
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            "<svg id=\"timeline-chart\" class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" \
             width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" \
             aria-label=\"{}\">",
            esc("The deployment over time: stages, traffic split, checks and decisions")
        );
        let group = |svg: &mut String, attrs: &str, title: &str, inner: String| {
            let _ = write!(svg, "<g {attrs}>");
            if !title.is_empty() {
                let _ = write!(svg, "<title>{}</title>", esc(title));
            }
            svg.push_str(&inner);
            svg.push_str("</g>\n");
        };

        // The background and the axes with their labels.
        let axes = self.layer(
            &mut |panel, chart| {
                let (desc, unit) = match panel {
                    Panel::Traffic => ("traffic (%)".to_string(), Unit::Percent),
                    Panel::Check(c) => (
                        match suffix(c.unit) {
                            "" => c.name.clone(),
                            u => format!("{} ({u})", c.name),
                        },
                        c.unit,
                    ),
                };
                chart
                    .configure_mesh()
                    .x_labels(12)
                    .y_labels(6)
                    .x_label_formatter(&|t| axis_time(*t))
                    .y_label_formatter(&|v| axis_value(*v, unit))
                    .x_desc("time since the start")
                    .y_desc(desc)
                    .label_style((FONT, 12))
                    .axis_desc_style((FONT, 13))
                    .light_line_style(RGBColor(240, 240, 240))
                    .bold_line_style(RGBColor(215, 215, 215))
                    .draw()
            },
            true,
        )?;
        group(&mut svg, "id=\"chart-axes\" class=\"axes\"", "", axes);

        // Stage bands: one group per stage, in every panel.
        svg.push_str("<g id=\"stage-bands\" class=\"stage-bands\">\n");
        let end_secs = self.end;
        for (i, st) in report.stages.iter().enumerate() {
            let from = st.started_at.since(report.started_at).as_secs_f64();
            let to = st
                .ended_at
                .map_or(end_secs, |e| e.since(report.started_at).as_secs_f64());
            let fill = stage_color(&st.stage).mix(if i % 2 == 0 { 0.28 } else { 0.42 });
            let name = st.stage.clone();
            let band = self.layer(
                &mut |panel, chart| {
                    let top = chart.y_range().end;
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(from, 0.0), (to.max(from), top)],
                        fill.filled(),
                    )))?;
                    if let Panel::Traffic = panel {
                        // A name that fits its band, written at the top.
                        let (x0, _) = chart.backend_coord(&(from, top));
                        let (x1, _) = chart.backend_coord(&(to, top));
                        if (x1 - x0) as usize > 7 * name.len() + 6 {
                            chart.draw_series(std::iter::once(Text::new(
                                name.clone(),
                                (from, top),
                                (FONT, 11).into_font().color(&RGBColor(60, 60, 60)),
                            )))?;
                        }
                    }
                    Ok(())
                },
                false,
            )?;
            let took_text = st
                .ended_at
                .map_or("unfinished".to_string(), |e| took(e.since(st.started_at)));
            group(
                &mut svg,
                &format!("class=\"stage-band\" data-stage=\"{}\"", esc(&st.stage)),
                &format!(
                    "{} at {} (took {took_text})",
                    st.stage,
                    took(st.started_at.since(report.started_at))
                ),
                band,
            );
        }
        svg.push_str("</g>\n");

        // Thresholds: success and breach lines in each check's panel.
        for c in &self.checks {
            let lines: Vec<(&str, Condition, RGBColor)> = c
                .success
                .iter()
                .map(|s| ("success", *s, SUCCESS))
                .chain(c.breach.iter().map(|b| ("breach", *b, BREACH)))
                .collect();
            for (kind, cond, color) in lines {
                let y = display(cond.threshold, c.unit);
                if !y.is_finite() {
                    continue;
                }
                let label = format!("{kind} {}", condition_text(&cond, c.unit));
                let end = self.end;
                let line = self.layer(
                    &mut |panel, chart| {
                        let Panel::Check(p) = panel else {
                            return Ok(());
                        };
                        if p.name != c.name {
                            return Ok(());
                        }
                        chart.draw_series(DashedLineSeries::new(
                            [(0.0, y), (end, y)],
                            8,
                            5,
                            color.stroke_width(2),
                        ))?;
                        chart.draw_series(std::iter::once(
                            EmptyElement::at((end, y))
                                + Text::new(
                                    label.clone(),
                                    (6, -6),
                                    (FONT, 12).into_font().color(&color),
                                ),
                        ))?;
                        Ok(())
                    },
                    false,
                )?;
                group(
                    &mut svg,
                    &format!(
                        "class=\"threshold\" data-check=\"{}\" data-kind=\"{kind}\"",
                        esc(&c.name)
                    ),
                    &format!("{}: {label}", c.name),
                    line,
                );
            }
        }

        // The split per color over time: step lines, in percent.
        for color in [Color::Blue, Color::Green] {
            let mut points: Vec<(f64, f64)> = Vec::new();
            for r in &report.splits {
                let at = r.at.since(report.started_at).as_secs_f64();
                let pct = f64::from(r.split.percent(color));
                if let Some(&(_, prev)) = points.last() {
                    points.push((at, prev));
                }
                points.push((at, pct));
            }
            if let Some(&(_, last)) = points.last() {
                points.push((self.end, last));
            }
            let stroke = if color == Color::Blue { BLUE } else { GREEN };
            let series = self.layer(
                &mut |panel, chart| {
                    if let Panel::Traffic = panel {
                        chart.draw_series(LineSeries::new(
                            points.iter().copied(),
                            stroke.stroke_width(3),
                        ))?;
                    }
                    Ok(())
                },
                false,
            )?;
            let changes: Vec<String> = report
                .splits
                .iter()
                .map(|r| {
                    format!(
                        "{} {}%",
                        took(r.at.since(report.started_at)),
                        r.split.percent(color)
                    )
                })
                .collect();
            group(
                &mut svg,
                &format!("id=\"split-{color}\" class=\"split-series\" data-color=\"{color}\""),
                &format!("traffic on {color}: {}", changes.join(", ")),
                series,
            );
        }

        // Each check's values, and its breaches.
        for c in &self.checks {
            let mut queries: Vec<&str> = Vec::new();
            for m in &c.measurements {
                if !queries.contains(&m.query.as_str()) {
                    queries.push(&m.query);
                }
            }
            let x = |m: &Measurement| m.to.since(report.started_at).as_secs_f64();
            let y = |m: &Measurement| m.value.map(|v| display(v, c.unit).min(c.top));
            let values = self.layer(
                &mut |panel, chart| {
                    let Panel::Check(p) = panel else {
                        return Ok(());
                    };
                    if p.name != c.name {
                        return Ok(());
                    }
                    for (qi, q) in queries.iter().enumerate() {
                        let shade = if qi == 0 {
                            VALUE
                        } else {
                            RGBColor(150, 150, 150)
                        };
                        let periodic: Vec<(f64, f64)> = c
                            .measurements
                            .iter()
                            .filter(|m| m.query == *q && m.kind == MeasurementKind::Periodic)
                            .filter_map(|m| Some((x(m), y(m)?)))
                            .collect();
                        chart.draw_series(LineSeries::new(
                            periodic.iter().copied(),
                            shade.stroke_width(2),
                        ))?;
                        chart.draw_series(
                            periodic.iter().map(|&p| Circle::new(p, 2, shade.filled())),
                        )?;
                    }
                    // Final evaluations: hollow circles; no data: a triangle on the axis.
                    chart.draw_series(
                        c.measurements
                            .iter()
                            .filter(|m| m.kind == MeasurementKind::Final)
                            .filter_map(|m| {
                                Some(Circle::new((x(m), y(m)?), 5, VALUE.stroke_width(2)))
                            }),
                    )?;
                    chart.draw_series(c.measurements.iter().filter(|m| m.value.is_none()).map(
                        |m| TriangleMarker::new((x(m), 0.0), 5, RGBColor(150, 150, 150).filled()),
                    ))?;
                    Ok(())
                },
                false,
            )?;
            let unit = c.unit;
            // "2m 30s 0.2%, 3m 0.4%": what a hover title lists.
            let list = |ms: &[&Measurement]| {
                ms.iter()
                    .map(|m| {
                        format!(
                            "{} {}",
                            took(m.to.since(report.started_at)),
                            value_text(m.value, unit)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            group(
                &mut svg,
                &format!(
                    "class=\"check-series\" data-check=\"{}\" data-queries=\"{}\"",
                    esc(&c.name),
                    queries.len()
                ),
                &format!("{}: {}", c.name, list(&c.measurements)),
                values,
            );
            let breaches: Vec<&Measurement> = c
                .measurements
                .iter()
                .copied()
                .filter(|m| m.breach)
                .collect();
            if breaches.is_empty() {
                continue;
            }
            let markers = self.layer(
                &mut |panel, chart| {
                    let Panel::Check(p) = panel else {
                        return Ok(());
                    };
                    if p.name != c.name {
                        return Ok(());
                    }
                    chart.draw_series(breaches.iter().map(|m| {
                        Cross::new((x(m), y(m).unwrap_or(0.0)), 7, BREACH.stroke_width(3))
                    }))?;
                    Ok(())
                },
                false,
            )?;
            group(
                &mut svg,
                &format!(
                    "class=\"breach-markers\" data-check=\"{}\" data-count=\"{}\"",
                    esc(&c.name),
                    breaches.len()
                ),
                &format!("{} breached: {}", c.name, list(&breaches)),
                markers,
            );
        }

        // Decisions and human controls: a line across every panel, a label on top.
        for (i, a) in self.annotations.iter().enumerate() {
            let row = (i % 3) as i32;
            let mark = self.layer(
                &mut |panel, chart| {
                    let top = chart.y_range().end;
                    chart.draw_series(DashedLineSeries::new(
                        [(a.at, 0.0), (a.at, top)],
                        6,
                        4,
                        a.color.stroke_width(2),
                    ))?;
                    if let Panel::Traffic = panel {
                        chart.draw_series(std::iter::once(
                            EmptyElement::at((a.at, top))
                                + Text::new(
                                    a.label.clone(),
                                    (3, -36 + 12 * row),
                                    (FONT, 12).into_font().color(&a.color),
                                ),
                        ))?;
                    }
                    Ok(())
                },
                false,
            )?;
            group(
                &mut svg,
                &format!(
                    "class=\"annotation\" data-kind=\"{}\" data-at=\"{}\"",
                    a.kind,
                    esc(&took(Duration::from_secs_f64(a.at)))
                ),
                &format!(
                    "{} after the start: {}",
                    took(Duration::from_secs_f64(a.at)),
                    a.text
                ),
                mark,
            );
        }
        svg.push_str("</svg>\n");
        Ok(svg)
    }
}

/// The page's only style, inline.
const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}\
table{border-collapse:collapse;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}\
.outcome.succeeded{color:#1e7a3c;font-weight:bold}.outcome.rolled-back,.outcome.halted{color:#b00;font-weight:bold}\
figure{margin:0}svg.timeline{max-width:100%;height:auto;border:1px solid #ddd}\
.legend{font-size:.85em;color:#444}.legend span{margin-right:1.2em}.swatch{display:inline-block;width:1.6em;height:.5em;margin-right:.3em;vertical-align:middle}";

/// The chart's legend, in HTML under the chart.
const LEGEND: &str = "<figcaption class=\"legend\">\
<span><i class=\"swatch\" style=\"background:#1f64c8\"></i>traffic on blue (%)</span>\
<span><i class=\"swatch\" style=\"background:#1e8c3c\"></i>traffic on green (%)</span>\
<span><i class=\"swatch\" style=\"background:#3c3c3c\"></i>a check's values (dots periodic, rings final evaluations, grey triangles no data)</span>\
<span><i class=\"swatch\" style=\"background:#289650\"></i>success threshold</span>\
<span><i class=\"swatch\" style=\"background:#c81e1e\"></i>breach threshold, breach markers (crosses), rollback</span>\
<span><i class=\"swatch\" style=\"background:#8232aa\"></i>human control</span>\
<span><i class=\"swatch\" style=\"background:#c87800\"></i>hook run (red when it failed)</span>\
<span>Shaded bands: the stages (hover for names and times).</span>\
</figcaption>\n";

/// A stage's band color, by the part of the procedure it belongs to.
fn stage_color(stage: &str) -> RGBColor {
    if stage.starts_with("rollback") {
        RGBColor(235, 90, 90)
    } else if stage.starts_with("hold") || stage.starts_with("halt") {
        RGBColor(240, 160, 40)
    } else if stage.starts_with("backup")
        || stage.starts_with("verify_")
        || stage.starts_with("migrate")
    {
        RGBColor(170, 130, 210)
    } else if stage.starts_with("shift") || stage.starts_with("confirm_shift") {
        RGBColor(110, 160, 230)
    } else if stage.starts_with("watch")
        || stage.starts_with("evaluate")
        || stage == "analysis"
        || stage == "soak"
    {
        RGBColor(100, 200, 190)
    } else if stage.starts_with("prepare")
        || stage.starts_with("scale_up")
        || stage.starts_with("wait_stable")
        || stage.starts_with("smoke")
    {
        RGBColor(230, 210, 90)
    } else {
        RGBColor(180, 180, 180)
    }
}

/// A value in the unit the chart and tables show it in: ratios as percent.
fn display(v: f64, unit: Unit) -> f64 {
    match unit {
        Unit::Ratio => v * 100.0,
        _ => v,
    }
}

/// The suffix of a unit as shown: `%`, `ms`, or nothing for a plain number.
fn suffix(unit: Unit) -> &'static str {
    match unit {
        Unit::Ratio | Unit::Percent => "%",
        Unit::Milliseconds => "ms",
        Unit::Number => "",
    }
}

/// A number with as many decimals as its size needs, trailing zeros dropped.
fn number(v: f64) -> String {
    if !v.is_finite() {
        return if v > 0.0 { "infinite" } else { "-infinite" }.into();
    }
    let digits = match v.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        a if a >= 1.0 => 2,
        _ => 3,
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A raw value of `unit` with its unit: `0.07` of a ratio is `7 %`.
fn value_text(v: Option<f64>, unit: Unit) -> String {
    match v {
        None => "no value".into(),
        Some(v) => with_unit(number(display(v, unit)), unit),
    }
}

fn with_unit(n: String, unit: Unit) -> String {
    match suffix(unit) {
        "" => n,
        u => format!("{n} {u}"),
    }
}

/// An axis label: an already displayed value with its unit.
fn axis_value(v: f64, unit: Unit) -> String {
    with_unit(number(v), unit)
}

/// A condition with its threshold in the check's unit: `< 1 %`.
fn condition_text(c: &Condition, unit: Unit) -> String {
    let op = match c.op {
        Comparison::Lt => "<",
        Comparison::Le => "<=",
        Comparison::Gt => ">",
        Comparison::Ge => ">=",
    };
    format!("{op} {}", value_text(Some(c.threshold), unit))
}

/// A split in words: `blue 10 %, green 90 %`.
fn split_text(s: crate::color::TrafficSplit) -> String {
    format!(
        "blue {} %, green {} %",
        s.percent(Color::Blue),
        s.percent(Color::Green)
    )
}

/// A duration to the second (milliseconds under a second): `5m 30s`, `250ms`.
fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// A time axis label: whole seconds, `0s` at the start.
fn axis_time(secs: f64) -> String {
    if secs < 1.0 {
        return "0s".into();
    }
    took(Duration::from_secs_f64(secs))
}

/// A snake_case name in words: `rolled_back` is `rolled back`.
fn words(name: &str) -> String {
    name.replace('_', " ")
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Inconclusive => "inconclusive",
    }
}

fn kind_text(k: MeasurementKind) -> &'static str {
    match k {
        MeasurementKind::Periodic => "periodic",
        MeasurementKind::Final => "final evaluation",
        MeasurementKind::Baseline => "baseline",
    }
}

fn decision_kind_text(k: DecisionKind) -> &'static str {
    match k {
        DecisionKind::Note => "note",
        DecisionKind::Notification => "notification",
        DecisionKind::Control => "human control",
        DecisionKind::Rollback => "rollback",
    }
}

/// The short label of a control's annotation: its instruction's first word.
fn control_label(text: &str) -> String {
    let rest = text
        .strip_prefix("human: ")
        .or_else(|| text.strip_prefix("control "))
        .unwrap_or(text);
    rest.split([' ', ':']).next().unwrap_or(rest).to_string()
}

fn outcome_class(o: Option<&Outcome>) -> &'static str {
    match o {
        Some(Outcome::Succeeded) => "succeeded",
        Some(Outcome::RolledBack { .. }) => "rolled-back",
        Some(Outcome::Halted { .. }) => "halted",
        None => "in-progress",
    }
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn dl(s: &mut String, term: &str, value: &str) {
    let _ = writeln!(s, "<dt>{}</dt><dd>{}</dd>", esc(term), esc(value));
}

fn row(s: &mut String, cells: &[&str]) {
    s.push_str("<tr>");
    for c in cells {
        let _ = write!(s, "<td>{}</td>", esc(c));
    }
    s.push_str("</tr>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_units() {
        assert_eq!(value_text(Some(0.07), Unit::Ratio), "7 %");
        assert_eq!(value_text(Some(0.0125), Unit::Ratio), "1.25 %");
        assert_eq!(value_text(Some(180.0), Unit::Milliseconds), "180 ms");
        assert_eq!(value_text(Some(42.5), Unit::Percent), "42.5 %");
        assert_eq!(value_text(Some(3.0), Unit::Number), "3");
        assert_eq!(value_text(None, Unit::Ratio), "no value");
        assert_eq!(condition_text(&Condition::lt(0.01), Unit::Ratio), "< 1 %");
        assert_eq!(took(Duration::from_millis(90_500)), "1m 30s");
        assert_eq!(took(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn the_page_escapes_the_reports_text_and_loads_nothing() {
        let report = Report {
            deployment_id: "dep-<1>".into(),
            service: "<script>alert(1)</script>".into(),
            version: "2.5.0 & \"more\"".into(),
            ..Report::default()
        };
        let html = report.to_html();
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("2.5.0 &amp; &quot;more&quot;"));
        assert!(
            html.contains("<svg id=\"timeline-chart\""),
            "an empty report still has its chart"
        );
        assert!(html.contains("in progress"), "an unfinished report says so");
        for external in ["<link", "src=", "https://", "url("] {
            assert!(!html.contains(external), "{external}");
        }
    }

    #[test]
    fn a_caller_s_table_is_added_and_escaped() {
        let html = Report::default().to_html_with(&[HtmlTable {
            id: "acceptance".into(),
            title: "Acceptance <criteria>".into(),
            columns: vec!["criterion".into()],
            rows: vec![vec!["a < b".into()]],
        }]);
        assert!(html.contains("<table id=\"acceptance\">"));
        assert!(html.contains("<h2>Acceptance &lt;criteria&gt;</h2>"));
        assert!(html.contains("<td>a &lt; b</td>"));
    }

    #[test]
    fn hook_runs_and_production_checks_were_missing_from_the_page() {
        use crate::machine::SmokeResult;
        use crate::plan::HookPoint;
        use crate::provider::{HookOutcome, SmokeOutcome};
        let start = Timestamp(0);
        let hook =
            |name: &str, point, passed, attempts, detail: &str, at| super::super::HookRecord {
                at: Timestamp(at),
                hook: name.into(),
                point,
                outcome: HookOutcome {
                    passed,
                    duration: Duration::from_millis(1200),
                    detail: detail.into(),
                    attempts,
                },
                late: false,
            };
        let report = Report {
            started_at: start,
            hooks: vec![
                hook(
                    "warm-cache",
                    HookPoint::AfterScaleUp,
                    true,
                    1,
                    "exit 0: warmed",
                    5_000,
                ),
                hook(
                    "notify-cdn",
                    HookPoint::AfterTraffic,
                    false,
                    3,
                    "exit 2: token=[masked] <refused>",
                    9_000,
                ),
            ],
            smoke_tests: vec![SmokeRecord {
                at: Timestamp(7_000),
                scope: SmokeScope::Production,
                results: vec![SmokeResult {
                    name: "checkout".into(),
                    outcome: Some(SmokeOutcome {
                        passed: true,
                        duration: Duration::from_millis(80),
                        detail: "200".into(),
                    }),
                    error: None,
                }],
            }],
            ..Report::default()
        };
        let html = report.to_html();
        assert!(html.contains("<table id=\"hooks\">"), "{html}");
        assert!(html.contains(
            "<td>warm-cache</td><td>after_scale_up</td><td>passed</td><td>1</td><td>1200 ms</td>\
             <td>exit 0: warmed</td>"
        ));
        assert!(html.contains(
            "<td>notify-cdn</td><td>after_traffic</td><td>failed</td><td>3</td><td>1200 ms</td>\
             <td>exit 2: token=[masked] &lt;refused&gt;</td>"
        ));
        assert!(html.contains("<table id=\"production-checks\">"));
        assert!(html.contains("<td>checkout</td><td>passed</td>"));
        assert!(
            !html.contains("<table id=\"smoke-tests\">"),
            "no smoke tests on the new color ran"
        );
        assert_eq!(
            html.matches("data-kind=\"hook\"").count(),
            2,
            "each run is annotated"
        );
    }

    #[test]
    fn a_control_is_labelled_by_its_instruction() {
        assert_eq!(control_label("human: promote"), "promote");
        assert_eq!(control_label("control abort (bad): rolling back"), "abort");
        assert_eq!(control_label("control pause: held"), "pause");
    }
}
