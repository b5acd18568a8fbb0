//! Compiled `RouteFilter` transform section: templates parsed, pointers
//! split, header names validated, limits resolved.

use http::HeaderName;
use serde::{Serialize, Serializer};

use super::json_pointer::JsonPointer;
use super::template::Template;

#[derive(Debug, Clone, Default, Serialize)]
pub struct TransformConfig {
    pub request: MessageTransform,
    pub response: MessageTransform,
    /// Leave a header out (rather than render the empty string) when one
    /// of its variables has no value.
    pub skip_header_on_missing: bool,
    pub max_body_bytes: usize,
    /// Response over `max_body_bytes`: 502 (true) or unmodified (false).
    pub reject_response_over_limit: bool,
    pub max_depth: usize,
    pub grpc_web: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageTransform {
    #[serde(serialize_with = "header_names")]
    pub remove_headers: Vec<HeaderName>,
    pub set_headers: Vec<HeaderTemplate>,
    pub add_headers: Vec<HeaderTemplate>,
    pub json: Vec<JsonEdit>,
    pub convert: Option<Conversion>,
}

impl MessageTransform {
    /// Does this direction touch the body?
    pub fn edits_body(&self) -> bool {
        !self.json.is_empty() || self.convert.is_some()
    }

    pub fn edits_headers(&self) -> bool {
        !self.remove_headers.is_empty()
            || !self.set_headers.is_empty()
            || !self.add_headers.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderTemplate {
    #[serde(serialize_with = "header_name")]
    pub name: HeaderName,
    pub value: Template,
}

#[derive(Debug, Clone, Serialize)]
pub enum JsonEdit {
    Add {
        path: JsonPointer,
        value: JsonValue,
    },
    Remove {
        path: JsonPointer,
    },
    Move {
        from: JsonPointer,
        path: JsonPointer,
    },
}

#[derive(Debug, Clone, Serialize)]
pub enum JsonValue {
    Literal(serde_json::Value),
    Template(Template),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BodyFormat {
    Json,
    Xml,
}

#[derive(Debug, Clone, Serialize)]
pub struct Conversion {
    pub from: BodyFormat,
    pub to: BodyFormat,
    pub root_element: Option<String>,
}

fn header_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

fn header_names<S: Serializer>(names: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(HeaderName::as_str))
}
