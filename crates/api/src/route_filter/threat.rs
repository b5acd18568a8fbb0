//! `RouteFilter.spec.threatProtection`: checks a request must pass before it
//! reaches the backend — payload limits (JSON, XML), content types per
//! method, validation against an OpenAPI 3 document, and SQL injection /
//! XSS / path traversal patterns.
//!
//! Every check has a mode: `Block` (the default) answers the client with
//! an error (403, 400, 405, 413 or 415) and never reaches the backend;
//! `Report` logs and counts the finding and lets the request through — for
//! trying a rule set on live traffic before enforcing it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a check does when a request fails it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ThreatMode {
    /// Reject the request (the default).
    #[default]
    Block,
    /// Log and count the finding, let the request through.
    Report,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreatProtectionSpec {
    /// Mode of every check that does not set its own. Default `Block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
    /// Largest request body, in bytes, the gateway reads to inspect it
    /// (JSON/XML limits, OpenAPI body validation, body injection scan);
    /// larger bodies are answered 413. Default 1048576 (1 MiB). Bodies of
    /// requests no check needs to read are streamed, not buffered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Limits on JSON request bodies (content types `application/json` and
    /// `*/*+json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonLimitsSpec>,
    /// Limits on XML request bodies (content types `application/xml`,
    /// `text/xml` and `*/*+xml`). A document type declaration (DOCTYPE) is
    /// always refused: it is how entity expansion (billion laughs) and
    /// external entities (XXE) get in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<XmlLimitsSpec>,
    /// Content types allowed per method; a request with a body of another
    /// type is answered 415.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_types: Vec<ContentTypeRule>,
    /// Validation of requests against an OpenAPI 3.0 or 3.1 document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_api: Option<OpenApiSpec>,
    /// Detection of SQL injection, cross-site scripting and path traversal
    /// patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionSpec>,
}

/// Structural limits on a JSON body, checked by a single pass over the
/// bytes (no document tree is built, so deep documents cannot exhaust the
/// stack). Unset limits have the defaults shown.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonLimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
    /// Largest JSON body in bytes. Default: `maxBodyBytes` of the section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Deepest nesting of objects and arrays. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Most members in one object. Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fields_per_object: Option<u32>,
    /// Most elements in one array. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_length: Option<u32>,
    /// Longest string (value or key), in bytes as sent. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_string_length: Option<u32>,
    /// Most object members in the whole document. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_keys: Option<u32>,
}

/// Structural limits on an XML body, checked by a single pass over the
/// bytes. Unset limits have the defaults shown.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XmlLimitsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
    /// Largest XML body in bytes. Default: `maxBodyBytes` of the section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Deepest element nesting. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Most elements in the document. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elements: Option<u32>,
    /// Most attributes on one element. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attributes_per_element: Option<u32>,
    /// Longest text node or attribute value, in bytes. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_text_length: Option<u32>,
}

/// Requests with one of `methods` and a body must have one of the
/// `allowed` media types.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContentTypeRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
    /// Methods the rule applies to, e.g. `[POST, PUT, PATCH]`.
    pub methods: Vec<String>,
    /// Media types (parameters such as `charset` are ignored): exact
    /// (`application/json`), a whole type (`text/*`) or a structured
    /// syntax suffix (`application/*+json`).
    pub allowed: Vec<String>,
}

/// Where the OpenAPI document comes from and how strictly it is applied.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenApiSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
    /// The document inline (YAML or JSON). Exactly one of `inline` and
    /// `configMapRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// A ConfigMap in the RouteFilter's namespace holding the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<OpenApiConfigMapRef>,
    /// Path prefix the document's paths are relative to. Default: the path
    /// of the document's first `servers` URL (`/` if none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_path: Option<String>,
    /// What to do with a path the document does not describe: `Reject`
    /// (404, the default) or `Pass` (forward unvalidated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_path: Option<UnknownPath>,
    /// Validate JSON request bodies against the operation's schema.
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_body: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenApiConfigMapRef {
    pub name: String,
    /// Key of the document in the ConfigMap's data. Default `openapi.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UnknownPath {
    /// Answer 404.
    #[default]
    Reject,
    /// Forward without validation.
    Pass,
}

/// Injection pattern detection. The default rule set (ids `sqli-*`,
/// `xss-*`, `traversal-*`; see the README) is applied to the decoded
/// path, query parameters, the listed headers, and the string values of
/// JSON bodies and form fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
    /// Where to look. Default: all of `Path`, `Query`, `Header`, `Body`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<InjectionLocation>,
    /// Request headers to scan (case-insensitive). Default `user-agent`,
    /// `referer`, `x-forwarded-host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// Ids of default rules to turn off (false positives for this API).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disabled_rules: Vec<String>,
    /// Ids of default rules that only report, whatever the mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report_rules: Vec<String>,
    /// Additional rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_rules: Vec<InjectionRuleSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InjectionLocation {
    Path,
    Query,
    Header,
    Body,
}

/// A custom detection rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionRuleSpec {
    /// Reported in the 403 body, logs and metrics. Must not repeat a
    /// default rule's id.
    pub id: String,
    /// A regular expression (Rust `regex` syntax; matched anywhere in the
    /// decoded value, so add `(?i)` for case-insensitive rules).
    pub pattern: String,
    /// Where the rule applies. Default: the section's locations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<InjectionLocation>,
    /// Overrides the section's mode for this rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ThreatMode>,
}
