//! Deployment windows: when a deployment may start, in a time zone.
//!
//! The reference's checklist asks for a "deployment window scheduled
//! (maintenance window if needed)". A [`DeployWindow`] lists the weekly
//! windows a deployment may start in and the blackout periods it may not,
//! in one IANA time zone (daylight-saving time included: 09:00 in
//! `Europe/Berlin` is 08:00 UTC in winter and 07:00 UTC in summer). The
//! check is made once, before the lease is taken and before anything is
//! read or changed; a deployment that started in its window runs to its
//! end (a rollback is never held back by a window), and a resumed one is
//! not checked again.

use std::str::FromStr;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::color::Timestamp;
use crate::error::PlanError;

/// How far ahead the next opening is looked for: a window that does not
/// open within this many days is refused as one that never opens.
pub const WINDOW_HORIZON_DAYS: i32 = 400;

/// When a deployment may start: weekly allowed windows and blackout
/// periods, in `time_zone`.
///
/// With no `allowed` windows, any time outside a blackout is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployWindow {
    /// An IANA time zone, e.g. `Europe/Berlin` or `America/New_York`
    /// (the tz database is bundled: the same answer on every host).
    pub time_zone: String,
    /// Weekly windows a deployment may start in.
    #[serde(default)]
    pub allowed: Vec<AllowedWindow>,
    /// Periods no deployment may start in, even inside an allowed window.
    #[serde(default)]
    pub blackouts: Vec<Blackout>,
}

/// A weekly window: on `days`, from `from` until `to` (local times,
/// `"09:00"`). A `to` earlier than `from` ends the next day (`22:00` to
/// `02:00`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedWindow {
    /// The days the window opens on (the day of `from`).
    pub days: Vec<Weekday>,
    /// When it opens, local time `HH:MM`.
    pub from: String,
    /// When it closes, local time `HH:MM` (exclusive).
    pub to: String,
}

/// A period no deployment may start in, e.g. a year-end freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blackout {
    /// Its start, local date and time `YYYY-MM-DDTHH:MM`.
    pub from: String,
    /// Its end (exclusive), local date and time `YYYY-MM-DDTHH:MM`.
    pub to: String,
    /// Why, shown when a deployment is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A day of the week, written `mon` … `sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Weekday {
    fn of(d: jiff::civil::Weekday) -> Weekday {
        use jiff::civil::Weekday as W;
        match d {
            W::Monday => Weekday::Mon,
            W::Tuesday => Weekday::Tue,
            W::Wednesday => Weekday::Wed,
            W::Thursday => Weekday::Thu,
            W::Friday => Weekday::Fri,
            W::Saturday => Weekday::Sat,
            W::Sunday => Weekday::Sun,
        }
    }
}

/// Whether a deployment may start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowCheck {
    /// Inside an allowed window and outside every blackout.
    Open,
    /// Not now.
    Closed {
        /// When the next window opens.
        next_open: Timestamp,
        /// Why not now, e.g. `outside the allowed windows (mon-fri 09:00-17:00 Europe/Berlin)`.
        why: String,
        /// `next_open` in the window's zone, e.g. `2026-03-30 09:00 CEST`.
        next_open_local: String,
    },
}

struct Parsed {
    tz: TimeZone,
    allowed: Vec<(Vec<Weekday>, Time, Time)>,
    blackouts: Vec<(jiff::Timestamp, jiff::Timestamp, Option<String>)>,
}

impl DeployWindow {
    /// Checks the window's fields; errors name the field under `field`
    /// (e.g. `window.allowed[0].to`). A window that can never open (no
    /// days, or `from` equal to `to`) is refused here.
    pub fn validate(&self, field: &str) -> Result<(), PlanError> {
        self.parse(field).map(|_| ())
    }

    fn parse(&self, field: &str) -> Result<Parsed, PlanError> {
        let tz = TimeZone::get(&self.time_zone).map_err(|_| {
            PlanError::new(
                format!("{field}.time_zone"),
                format!(
                    "{:?} is not a time zone of the IANA database, e.g. \"Europe/Berlin\", \"America/New_York\", \"UTC\"",
                    self.time_zone
                ),
            )
        })?;
        let mut allowed = Vec::new();
        for (i, w) in self.allowed.iter().enumerate() {
            let f = |n: &str| format!("{field}.allowed[{i}].{n}");
            if w.days.is_empty() {
                return Err(PlanError::new(
                    f("days"),
                    "lists no day, so the window never opens: e.g. [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]",
                ));
            }
            let from = local_time(&f("from"), &w.from)?;
            let to = local_time(&f("to"), &w.to)?;
            if from == to {
                return Err(PlanError::new(
                    f("to"),
                    format!(
                        "equals `from` ({}), so the window never opens: give when it closes",
                        w.from
                    ),
                ));
            }
            allowed.push((w.days.clone(), from, to));
        }
        let mut blackouts = Vec::new();
        for (i, b) in self.blackouts.iter().enumerate() {
            let f = |n: &str| format!("{field}.blackouts[{i}].{n}");
            let from = local_datetime(&f("from"), &b.from, &tz)?;
            let to = local_datetime(&f("to"), &b.to, &tz)?;
            if to <= from {
                return Err(PlanError::new(
                    f("to"),
                    format!("{} is not after `from` ({})", b.to, b.from),
                ));
            }
            blackouts.push((from, to, b.reason.clone()));
        }
        Ok(Parsed {
            tz,
            allowed,
            blackouts,
        })
    }

    /// Whether a deployment may start at `now`, and if not, why and when
    /// the next window opens. An error names the field: a bad field, or a
    /// window that does not open within [`WINDOW_HORIZON_DAYS`] days of
    /// `now` (blackouts covering every allowed window).
    pub fn check(&self, now: Timestamp) -> Result<WindowCheck, PlanError> {
        let field = "window";
        let p = self.parse(field)?;
        let now_ts = to_jiff(now);
        let intervals = p.allowed_intervals(now_ts)?;
        let allowed_at = |t: jiff::Timestamp| {
            p.allowed.is_empty() || intervals.iter().any(|(s, e)| *s <= t && t < *e)
        };
        let blackout_at = |t: jiff::Timestamp| {
            p.blackouts
                .iter()
                .find(|(s, e, _)| *s <= t && t < *e)
                .map(|b| b.2.clone())
        };
        if allowed_at(now_ts) && blackout_at(now_ts).is_none() {
            return Ok(WindowCheck::Open);
        }
        let why = match blackout_at(now_ts) {
            Some(reason) if allowed_at(now_ts) => format!(
                "in a blackout period{}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            _ => format!("outside the allowed windows ({})", self.describe_allowed()),
        };
        let mut candidates: Vec<jiff::Timestamp> = intervals
            .iter()
            .map(|(s, _)| *s)
            .chain(p.blackouts.iter().map(|(_, e, _)| *e))
            .filter(|t| *t > now_ts)
            .collect();
        candidates.sort();
        let horizon = now_ts
            .checked_add(jiff::SignedDuration::from_hours(
                24 * i64::from(WINDOW_HORIZON_DAYS),
            ))
            .unwrap_or(now_ts);
        for t in candidates.into_iter().filter(|t| *t <= horizon) {
            if allowed_at(t) && blackout_at(t).is_none() {
                let next_open = Timestamp(u64::try_from(t.as_millisecond()).unwrap_or(0));
                return Ok(WindowCheck::Closed {
                    next_open,
                    why,
                    next_open_local: t
                        .to_zoned_datetime(p.tz.clone())
                        .strftime("%Y-%m-%d %H:%M %Z (%:z)")
                        .to_string(),
                });
            }
        }
        Err(PlanError::new(
            field,
            format!(
                "never opens in the {WINDOW_HORIZON_DAYS} days from now: the blackouts cover every allowed window"
            ),
        ))
    }

    /// The allowed windows in words: `mon,tue 09:00-17:00 Europe/Berlin`.
    pub fn describe_allowed(&self) -> String {
        if self.allowed.is_empty() {
            return format!("any time outside blackouts, {}", self.time_zone);
        }
        let parts: Vec<String> = self
            .allowed
            .iter()
            .map(|w| {
                let days: Vec<String> = w
                    .days
                    .iter()
                    .map(|d| {
                        serde_json::to_value(d)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    })
                    .collect();
                format!("{} {}-{}", days.join(","), w.from, w.to)
            })
            .collect();
        format!("{} {}", parts.join("; "), self.time_zone)
    }
}

impl Parsed {
    /// Every allowed interval that may hold a time from `now` to the
    /// horizon: one per allowed window per matching day, starting the day
    /// before (an overnight window opened yesterday).
    fn allowed_intervals(
        &self,
        now: jiff::Timestamp,
    ) -> Result<Vec<(jiff::Timestamp, jiff::Timestamp)>, PlanError> {
        let today: Date = now.to_zoned_datetime(self.tz.clone()).date();
        let mut out = Vec::new();
        for offset in -1..=WINDOW_HORIZON_DAYS {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            let weekday = Weekday::of(day.weekday());
            for (days, from, to) in &self.allowed {
                if !days.contains(&weekday) {
                    continue;
                }
                let end_day = if to <= from {
                    match day.tomorrow() {
                        Ok(d) => d,
                        Err(_) => continue,
                    }
                } else {
                    day
                };
                // A local time skipped by a daylight-saving change opens
                // at the first instant after the gap; a repeated one at
                // its first occurrence (jiff's "compatible" rule).
                let (Ok(s), Ok(e)) = (
                    DateTime::from_parts(day, *from).to_zoned_datetime(self.tz.clone()),
                    DateTime::from_parts(end_day, *to).to_zoned_datetime(self.tz.clone()),
                ) else {
                    continue;
                };
                out.push((s.timestamp(), e.timestamp()));
            }
        }
        Ok(out)
    }
}

fn to_jiff(t: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(i64::try_from(t.0).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
}

fn local_time(field: &str, v: &str) -> Result<Time, PlanError> {
    Time::from_str(v.trim()).map_err(|_| {
        PlanError::new(
            field,
            format!("{v:?} is not a local time: write it HH:MM, e.g. \"09:00\""),
        )
    })
}

fn local_datetime(field: &str, v: &str, tz: &TimeZone) -> Result<jiff::Timestamp, PlanError> {
    let dt = DateTime::from_str(v.trim()).map_err(|_| {
        PlanError::new(
            field,
            format!("{v:?} is not a local date and time: write it YYYY-MM-DDTHH:MM, e.g. \"2026-12-20T00:00\""),
        )
    })?;
    dt.to_zoned_datetime(tz.clone())
        .map(|z| z.timestamp())
        .map_err(|e| PlanError::new(field, format!("{v:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin_office_hours() -> DeployWindow {
        DeployWindow {
            time_zone: "Europe/Berlin".into(),
            allowed: vec![AllowedWindow {
                days: vec![
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
                from: "09:00".into(),
                to: "17:00".into(),
            }],
            blackouts: vec![],
        }
    }

    fn at(utc: &str) -> Timestamp {
        let t: jiff::Timestamp = utc.parse().unwrap();
        Timestamp(t.as_millisecond() as u64)
    }

    #[test]
    fn a_deploy_at_23_00_berlin_is_told_the_next_morning_at_09_00() {
        // Tuesday 2026-11-10 23:00 CET is 22:00 UTC.
        let WindowCheck::Closed {
            next_open,
            why,
            next_open_local,
        } = berlin_office_hours()
            .check(at("2026-11-10T22:00:00Z"))
            .unwrap()
        else {
            panic!("open at 23:00")
        };
        assert_eq!(next_open, at("2026-11-11T08:00:00Z"));
        assert_eq!(next_open_local, "2026-11-11 09:00 CET (+01:00)");
        assert!(
            why.contains("mon,tue,wed,thu,fri 09:00-17:00 Europe/Berlin"),
            "{why}"
        );
    }

    #[test]
    fn the_next_opening_after_a_dst_change_is_09_00_summer_time() {
        // Saturday 2026-03-28 12:00 CET; clocks go forward on Sunday the
        // 29th, so Monday 09:00 is CEST, 07:00 UTC (not 08:00).
        let WindowCheck::Closed {
            next_open,
            next_open_local,
            ..
        } = berlin_office_hours()
            .check(at("2026-03-28T11:00:00Z"))
            .unwrap()
        else {
            panic!("open on a Saturday")
        };
        assert_eq!(next_open, at("2026-03-30T07:00:00Z"));
        assert_eq!(next_open_local, "2026-03-30 09:00 CEST (+02:00)");
        // Inside the window on the Monday: open.
        assert_eq!(
            berlin_office_hours()
                .check(at("2026-03-30T07:30:00Z"))
                .unwrap(),
            WindowCheck::Open
        );
    }

    #[test]
    fn a_blackout_defers_the_opening_to_its_end_within_a_window() {
        let mut w = berlin_office_hours();
        w.blackouts.push(Blackout {
            from: "2026-11-11T00:00".into(),
            to: "2026-11-11T12:00".into(),
            reason: Some("release freeze".into()),
        });
        let WindowCheck::Closed { next_open, .. } = w.check(at("2026-11-10T22:00:00Z")).unwrap()
        else {
            panic!()
        };
        assert_eq!(next_open, at("2026-11-11T11:00:00Z"));
        let WindowCheck::Closed { why, .. } = w.check(at("2026-11-11T09:00:00Z")).unwrap() else {
            panic!()
        };
        assert!(
            why.contains("blackout") && why.contains("release freeze"),
            "{why}"
        );
    }

    #[test]
    fn a_window_that_never_opens_is_refused_naming_the_field() {
        let mut w = berlin_office_hours();
        w.allowed[0].to = "09:00".into();
        assert_eq!(
            w.validate("window").unwrap_err().field,
            "window.allowed[0].to"
        );
        let mut w = berlin_office_hours();
        w.allowed[0].days.clear();
        assert_eq!(
            w.validate("window").unwrap_err().field,
            "window.allowed[0].days"
        );
        let mut w = berlin_office_hours();
        w.blackouts.push(Blackout {
            from: "2026-01-01T00:00".into(),
            to: "2030-01-01T00:00".into(),
            reason: None,
        });
        let err = w.check(at("2026-11-10T22:00:00Z")).unwrap_err();
        assert_eq!(err.field, "window");
        assert!(err.message.contains("never opens"), "{err}");
        let mut w = berlin_office_hours();
        w.time_zone = "Europe/Berlinn".into();
        assert_eq!(w.validate("window").unwrap_err().field, "window.time_zone");
    }

    #[test]
    fn an_overnight_window_holds_after_midnight() {
        let w = DeployWindow {
            time_zone: "UTC".into(),
            allowed: vec![AllowedWindow {
                days: vec![Weekday::Tue],
                from: "22:00".into(),
                to: "02:00".into(),
            }],
            blackouts: vec![],
        };
        // Wednesday 01:00 UTC belongs to Tuesday's window.
        assert_eq!(
            w.check(at("2026-11-11T01:00:00Z")).unwrap(),
            WindowCheck::Open
        );
    }
}
