//! `RouteFilter.spec.transform`: request and response rewriting — templated
//! headers, JSON body edits, XML <-> JSON conversion and gRPC-Web -> gRPC
//! translation.
//!
//! Templates are strings with `${variable}` placeholders (`$$` is a literal
//! `$`), parsed once when the RouteFilter is compiled. Variables:
//! `request.method`, `request.host`, `request.path`, `request.query.NAME`,
//! `request.header.NAME`, `request.clientIp`, `request.id` (the
//! `x-request-id`), `claim.NAME` (a verified JWT claim), `identity.subject`,
//! `identity.consumer`, `identity.mechanism`, `route.namespace`,
//! `route.name`, `route.rule` (the rule's name, else its index). Response
//! templates see the same request variables.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransformSpec {
    /// What is done to the request before it goes to the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<MessageTransformSpec>,
    /// What is done to the backend's response before it goes to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<MessageTransformSpec>,
    /// A template variable with no value (absent header, claim, query
    /// parameter): `Empty` renders it as the empty string (default),
    /// `SkipHeader` leaves the header out altogether.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_variable: Option<MissingVariable>,
    /// Largest body (bytes) read for body edits and conversions (default
    /// 1 MiB, at most 64 MiB). A larger request is answered 413; a larger
    /// response follows `responseOverLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// A response body over `maxBodyBytes`: `PassThrough` sends it to the
    /// client unmodified (default), `Reject` answers 502.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_over_limit: Option<OverLimitAction>,
    /// Deepest nesting accepted by XML <-> JSON conversion (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<u32>,
    /// Translates gRPC-Web requests (`application/grpc-web`,
    /// `application/grpc-web+proto`, `application/grpc-web-text`) into gRPC
    /// over HTTP/2 cleartext to the backend, and the backend's trailers into
    /// the gRPC-Web trailer frame of the response body. The rule's backends
    /// are then reached over h2c, as for a GRPCRoute. Other requests of the
    /// rule pass unchanged (also over h2c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_web: Option<GrpcWebSpec>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MissingVariable {
    Empty,
    SkipHeader,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OverLimitAction {
    PassThrough,
    Reject,
}

/// Edits of one direction (request or response), applied in this order:
/// headers, then the body (conversion from XML first, JSON edits, then
/// conversion to XML: JSON edits always see JSON).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageTransformSpec {
    /// Headers set (replacing any value), added (appended) or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderTemplatesSpec>,
    /// JSON body edits in order, like JSON Patch (RFC 6902) operations on
    /// JSON pointers (RFC 6901). Applied only when the body is JSON
    /// (`application/json` or `+json`); other bodies pass unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json: Vec<JsonEditSpec>,
    /// Converts the body between XML and JSON (see the README for the
    /// mapping). Applied only when the body has the source type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<ConvertSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTemplatesSpec {
    /// Replace the header with the rendered template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderTemplateSpec>,
    /// Append the rendered template as a further value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderTemplateSpec>,
    /// Header names to remove (before `set` and `add`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderTemplateSpec {
    pub name: String,
    /// A template, e.g. `tenant-${claim.tenant}`.
    pub value: String,
}

/// One JSON edit. `add` puts `value` (any JSON) or the rendered `template`
/// (a string) at `path`, creating missing parent objects and replacing what
/// is there; `-` as the last token appends to an array. `remove` deletes
/// `path` (absent: nothing happens). `move` takes the value at `from` and
/// puts it at `path` (absent `from`: nothing happens).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JsonEditSpec {
    pub op: JsonEditOp,
    /// JSON pointer (RFC 6901) of the target, e.g. `/user/id`.
    pub path: String,
    /// Source pointer of `move`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(
        default,
        deserialize_with = "present_value",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "any_json")]
    pub value: Option<serde_json::Value>,
    /// Template of `add`, rendered to a JSON string (instead of `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// A `value` that is present is `Some`, even when it is `null` (which
/// plain `Option` would make `None`).
fn present_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// Any JSON value: a structural CRD schema says so with
/// `x-kubernetes-preserve-unknown-fields`.
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "JSON value of `add` (any JSON, `null` included).",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JsonEditOp {
    Add,
    Remove,
    Move,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConvertSpec {
    pub from: BodyFormat,
    pub to: BodyFormat,
    /// XML root element wrapping the JSON document when converting to XML.
    /// Unset: the JSON must be an object with exactly one member, which
    /// becomes the root element (what XML -> JSON produces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_element: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BodyFormat {
    Json,
    Xml,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrpcWebSpec {}
