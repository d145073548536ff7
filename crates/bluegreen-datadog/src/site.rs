//! Datadog sites and their API hosts.

use std::fmt;
use std::str::FromStr;

use bluegreen_core::Error;

/// The environment variable that names the Datadog site, as in Datadog's own tools.
pub const SITE_ENV: &str = "DD_SITE";

/// A Datadog site: the region an organisation's data lives in.
///
/// Parsed from the names Datadog documents for `DD_SITE` (`datadoghq.com`,
/// `us3.datadoghq.com`, `us5.datadoghq.com`, `datadoghq.eu`, `ap1.datadoghq.com`,
/// `ap2.datadoghq.com`, `ddog-gov.com`) and from the short names `us1`, `us3`,
/// `us5`, `eu`/`eu1`, `ap1`, `ap2` and `gov`/`ddog-gov`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Site {
    /// US1, `datadoghq.com` (the default).
    #[default]
    Us1,
    /// US3, `us3.datadoghq.com`.
    Us3,
    /// US5, `us5.datadoghq.com`.
    Us5,
    /// EU1, `datadoghq.eu`.
    Eu1,
    /// AP1, `ap1.datadoghq.com`.
    Ap1,
    /// AP2, `ap2.datadoghq.com`.
    Ap2,
    /// US1-FED, `ddog-gov.com`.
    Gov,
}

impl Site {
    /// Every site, in the order Datadog lists them.
    pub const ALL: [Site; 7] = [
        Site::Us1,
        Site::Us3,
        Site::Us5,
        Site::Eu1,
        Site::Ap1,
        Site::Ap2,
        Site::Gov,
    ];

    /// The site's domain, as `DD_SITE` spells it.
    pub fn domain(self) -> &'static str {
        match self {
            Site::Us1 => "datadoghq.com",
            Site::Us3 => "us3.datadoghq.com",
            Site::Us5 => "us5.datadoghq.com",
            Site::Eu1 => "datadoghq.eu",
            Site::Ap1 => "ap1.datadoghq.com",
            Site::Ap2 => "ap2.datadoghq.com",
            Site::Gov => "ddog-gov.com",
        }
    }

    /// The base URL of the site's API, e.g. `https://api.us3.datadoghq.com`.
    pub fn api_base_url(self) -> String {
        format!("https://api.{}", self.domain())
    }

    /// The site named by `DD_SITE`, or [`Site::Us1`] when it is unset or empty.
    /// An unknown name is an error naming `DD_SITE`.
    pub fn from_env() -> Result<Site, Error> {
        match std::env::var(SITE_ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse().map_err(|e: Error| {
                Error::invalid_input(format!("{SITE_ENV}: {}", e.message()))
                    .with_provider("datadog")
                    .with_operation("configure")
            }),
            _ => Ok(Site::Us1),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.domain())
    }
}

impl FromStr for Site {
    type Err = Error;

    fn from_str(s: &str) -> Result<Site, Error> {
        let name = s.trim().to_ascii_lowercase();
        let name = name
            .trim_start_matches("https://")
            .trim_start_matches("app.")
            .trim_start_matches("api.")
            .trim_end_matches('/');
        Ok(match name {
            "datadoghq.com" | "us1" | "us1.datadoghq.com" => Site::Us1,
            "us3.datadoghq.com" | "us3" => Site::Us3,
            "us5.datadoghq.com" | "us5" => Site::Us5,
            "datadoghq.eu" | "eu" | "eu1" => Site::Eu1,
            "ap1.datadoghq.com" | "ap1" => Site::Ap1,
            "ap2.datadoghq.com" | "ap2" => Site::Ap2,
            "ddog-gov.com" | "gov" | "ddog-gov" | "us1-fed" => Site::Gov,
            _ => {
                return Err(Error::invalid_input(format!(
                    "unknown Datadog site {s:?}: expected one of {}",
                    Site::ALL.map(|s| s.domain()).join(", ")
                ))
                .with_provider("datadog"))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_site_maps_to_its_api_host() {
        let cases = [
            ("datadoghq.com", "https://api.datadoghq.com"),
            ("us3.datadoghq.com", "https://api.us3.datadoghq.com"),
            ("us5", "https://api.us5.datadoghq.com"),
            ("datadoghq.eu", "https://api.datadoghq.eu"),
            ("ap1.datadoghq.com", "https://api.ap1.datadoghq.com"),
            ("ap2", "https://api.ap2.datadoghq.com"),
            ("ddog-gov.com", "https://api.ddog-gov.com"),
            ("app.datadoghq.eu", "https://api.datadoghq.eu"),
        ];
        for (name, url) in cases {
            assert_eq!(name.parse::<Site>().unwrap().api_base_url(), url, "{name}");
        }
        for s in Site::ALL {
            assert_eq!(s.domain().parse::<Site>().unwrap(), s);
        }
    }

    #[test]
    fn an_unknown_site_is_a_clear_error() {
        let e = "datadoghq.moon".parse::<Site>().unwrap_err();
        assert_eq!(e.kind(), bluegreen_core::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("datadoghq.moon"), "{e}");
        assert!(e.to_string().contains("us5.datadoghq.com"), "{e}");
    }
}
