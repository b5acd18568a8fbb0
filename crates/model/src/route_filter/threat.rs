//! Compiled `RouteFilter` threat protection section: limits, content-type
//! rules, the compiled OpenAPI document and the injection rule sets, each
//! check with its mode resolved. The controller builds it
//! (`compile/route_filter/threat`); the data plane runs it
//! (`route_filter/threat`).

pub mod injection;
pub mod openapi;

use std::sync::Arc;

use http::Method;
use serde::Serialize;

/// What a failed check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum Mode {
    #[default]
    Block,
    Report,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ThreatProtectionConfig {
    /// Largest body read for inspection (413 beyond).
    pub max_body_bytes: u64,
    pub json: Option<JsonLimits>,
    pub xml: Option<XmlLimits>,
    pub content_types: Vec<ContentTypeRule>,
    pub open_api: Option<Arc<openapi::OpenApi>>,
    pub injection: Option<Arc<injection::Injection>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonLimits {
    pub mode: Mode,
    pub max_body_bytes: u64,
    pub max_depth: u32,
    pub max_fields_per_object: u32,
    pub max_array_length: u32,
    pub max_string_length: u32,
    pub max_total_keys: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct XmlLimits {
    pub mode: Mode,
    pub max_body_bytes: u64,
    pub max_depth: u32,
    pub max_elements: u32,
    pub max_attributes_per_element: u32,
    pub max_text_length: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContentTypeRule {
    pub mode: Mode,
    #[serde(serialize_with = "methods")]
    pub methods: Vec<Method>,
    pub allowed: Vec<MediaRange>,
}

fn methods<S: serde::Serializer>(m: &[Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(Method::as_str))
}

/// An allowed media type, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MediaRange {
    /// `*/*`
    Any,
    /// `application/json`
    Exact(String),
    /// `text/*`: the type, without the slash.
    Type(String),
    /// `application/*+json`: the type and the suffix (`+json`).
    Suffix(String, String),
}

impl MediaRange {
    /// `media_type` is lowercase, without parameters.
    pub fn allows(&self, media_type: &str) -> bool {
        let (ty, sub) = media_type.split_once('/').unwrap_or((media_type, ""));
        match self {
            MediaRange::Any => true,
            MediaRange::Exact(m) => m == media_type,
            MediaRange::Type(t) => t == ty,
            MediaRange::Suffix(t, suffix) => t == ty && sub.ends_with(suffix.as_str()),
        }
    }
}

/// The media type of a Content-Type value: lowercase, parameters removed.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// JSON bodies: `application/json` and any `+json` type.
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// XML bodies: `application/xml`, `text/xml` and any `+xml` type.
pub fn is_xml(media_type: &str) -> bool {
    media_type == "application/xml" || media_type == "text/xml" || media_type.ends_with("+xml")
}

pub fn is_form(media_type: &str) -> bool {
    media_type == "application/x-www-form-urlencoded"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges() {
        assert!(MediaRange::Exact("application/json".into()).allows("application/json"));
        assert!(!MediaRange::Exact("application/json".into()).allows("application/xml"));
        assert!(MediaRange::Type("text".into()).allows("text/plain"));
        let suffix = MediaRange::Suffix("application".into(), "+json".into());
        assert!(suffix.allows("application/problem+json"));
        assert!(!suffix.allows("application/json"));
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
        assert!(is_json("application/merge-patch+json"));
        assert!(is_xml("text/xml"));
    }
}
