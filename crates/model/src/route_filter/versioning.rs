//! Compiled `RouteFilter` versioning section: the header values and the
//! 410 answer are built once, here, not per request.

use std::time::SystemTime;

use serde::Serialize;

use crate::HeaderValueSer;

#[derive(Debug, Clone, Serialize)]
pub struct VersioningConfig {
    /// `Deprecation: true` or `Deprecation: @<epoch>`.
    pub deprecation: Option<HeaderValueSer>,
    /// `Sunset: <HTTP-date>`.
    pub sunset: Option<HeaderValueSer>,
    /// `Link` values: successor-version, deprecation.
    pub links: Vec<HeaderValueSer>,
    pub retired: Retirement,
    /// The 410 Gone body (`application/problem+json`), naming the
    /// successor.
    pub gone_body: String,
}

#[derive(Debug, Clone, Serialize)]
pub enum Retirement {
    Never,
    Now,
    /// From this time on.
    At(#[serde(serialize_with = "unix_seconds")] SystemTime),
}

fn unix_seconds<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    s.serialize_u64(secs)
}
