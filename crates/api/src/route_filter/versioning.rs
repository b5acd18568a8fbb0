//! `RouteFilter.spec.versioning`: deprecation and retirement of an API
//! version. Routing *by* version (path, header such as `Accept:
//! application/vnd.example+json; version=2`, query parameter) is done with
//! the standard HTTPRoute matchers; this section is attached to the rule
//! of the old version.
//!
//! Dates are RFC 3339 timestamps (`2026-06-30T00:00:00Z`) or HTTP-dates.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersioningSpec {
    /// The version is deprecated: responses get `Deprecation: true`, or
    /// `Deprecation: @<epoch>` (RFC 9745) when `deprecatedSince` is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deprecated: bool,
    /// When the version was (or will be) deprecated; implies `deprecated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated_since: Option<String>,
    /// When the version stops being served: the `Sunset` header (RFC
    /// 8594).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
    /// URI of the version that replaces this one: `Link: <uri>;
    /// rel="successor-version"`, and named in the 410 answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successor: Option<String>,
    /// URI of a human-readable deprecation notice: `Link: <uri>;
    /// rel="deprecation"; type="text/html"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documentation: Option<String>,
    /// The version is retired: every request is answered 410 Gone without
    /// reaching the backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
    /// The version is retired from this date on (410 Gone); before it,
    /// it is served with the headers above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<String>,
}
