//! Colors, traffic splits and timestamps: the vocabulary every layer shares.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One of the two environments of a blue-green deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The blue environment.
    Blue,
    /// The green environment.
    Green,
}

impl Color {
    /// Both colors, blue first.
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The other color.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// `"blue"` or `"green"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Color {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "blue" => Ok(Color::Blue),
            "green" => Ok(Color::Green),
            other => Err(Error::invalid_response(format!(
                "unknown color {other:?}: expected \"blue\" or \"green\""
            ))),
        }
    }
}

/// The share of traffic each color receives, in whole percent, adding up to 100.
///
/// The constructor refuses splits that do not add up, so a router that reads
/// back nonsense produces an [`ErrorKind::InvalidResponse`](crate::ErrorKind)
/// error instead of a wrong decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "SplitRepr", into = "SplitRepr")]
pub struct TrafficSplit {
    blue: u8,
    green: u8,
}

#[derive(Serialize, Deserialize)]
struct SplitRepr {
    blue: u32,
    green: u32,
}

impl TryFrom<SplitRepr> for TrafficSplit {
    type Error = Error;
    fn try_from(r: SplitRepr) -> Result<Self> {
        TrafficSplit::new(r.blue, r.green)
    }
}

impl From<TrafficSplit> for SplitRepr {
    fn from(s: TrafficSplit) -> Self {
        SplitRepr {
            blue: s.blue.into(),
            green: s.green.into(),
        }
    }
}

impl TrafficSplit {
    /// A split of `blue` and `green` percent; they must add up to 100.
    pub fn new(blue: u32, green: u32) -> Result<Self> {
        if blue + green != 100 {
            return Err(Error::invalid_response(format!(
                "traffic split blue={blue} green={green} does not add up to 100"
            )));
        }
        Ok(TrafficSplit {
            blue: blue as u8,
            green: green as u8,
        })
    }

    /// All traffic on `color`.
    pub fn all_on(color: Color) -> Self {
        Self::with_percent(color, 100)
    }

    /// `percent` on `color` and the rest on the other color (capped at 100).
    pub fn with_percent(color: Color, percent: u8) -> Self {
        let p = percent.min(100);
        match color {
            Color::Blue => TrafficSplit {
                blue: p,
                green: 100 - p,
            },
            Color::Green => TrafficSplit {
                blue: 100 - p,
                green: p,
            },
        }
    }

    /// Builds a split from raw weights of any scale (such as ALB's 0–999),
    /// rounding to whole percent. Both zero is an error.
    pub fn from_weights(blue: u64, green: u64) -> Result<Self> {
        let total = blue + green;
        if total == 0 {
            return Err(Error::invalid_response(
                "traffic weights are zero for both colors",
            ));
        }
        let b = ((blue * 100 + total / 2) / total) as u8;
        Ok(TrafficSplit {
            blue: b,
            green: 100 - b,
        })
    }

    /// The percent of traffic on `color`.
    pub fn percent(&self, color: Color) -> u8 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    /// The color with all the traffic, if one has it all.
    pub fn live_color(&self) -> Option<Color> {
        match (self.blue, self.green) {
            (100, 0) => Some(Color::Blue),
            (0, 100) => Some(Color::Green),
            _ => None,
        }
    }
}

impl fmt::Display for TrafficSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blue {}% / green {}%", self.blue, self.green)
    }
}

/// Milliseconds since the Unix epoch: the only notion of time the state
/// machine knows, always handed to it by the driver.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `d` later (saturating).
    pub fn after(self, d: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(d.as_millis() as u64))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Converts a [`SystemTime`]; times before the epoch become zero.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        Timestamp(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    /// Converts back to a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_must_add_up_to_100() {
        assert!(TrafficSplit::new(60, 40).is_ok());
        let err = TrafficSplit::new(60, 60).unwrap_err();
        assert!(err.to_string().contains("does not add up"), "{err}");
        assert_eq!(
            TrafficSplit::from_weights(1, 3).unwrap(),
            TrafficSplit::new(25, 75).unwrap()
        );
        assert!(TrafficSplit::from_weights(0, 0).is_err());
        assert!(serde_json::from_str::<TrafficSplit>(r#"{"blue":90,"green":20}"#).is_err());
    }

    #[test]
    fn live_color_only_when_one_color_has_everything() {
        assert_eq!(
            TrafficSplit::all_on(Color::Green).live_color(),
            Some(Color::Green)
        );
        assert_eq!(
            TrafficSplit::with_percent(Color::Blue, 10).live_color(),
            None
        );
        assert_eq!(
            TrafficSplit::with_percent(Color::Blue, 10).percent(Color::Green),
            90
        );
    }
}
