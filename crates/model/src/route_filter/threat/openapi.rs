//! A compiled OpenAPI 3.0/3.1 document and the request validation that
//! runs against it: path templates, methods, parameters (path, query,
//! header) and JSON request bodies.
//!
//! Schemas live in one arena (`OpenApi::schemas`) and refer to each other
//! by index, so `$ref` cycles (trees, linked lists) are plain indices
//! resolved once by the controller. The validator implements the subset
//! of JSON Schema that OpenAPI request schemas use: type (and 3.0
//! `nullable`), enum/const, string length and pattern, numeric bounds and
//! `multipleOf`, object properties/required/additionalProperties and
//! property counts, array items/length/uniqueness, allOf/anyOf/oneOf/not.
//! `format` is an annotation here (not asserted).

use std::fmt::Write as _;

use http::{HeaderMap, Method};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::{MediaRange, Mode};

pub type SchemaId = usize;

/// Most details returned in one 400 answer.
pub const MAX_DETAILS: usize = 10;

/// Schema nesting (through `$ref`, allOf, ...) beyond which validation
/// gives up instead of recursing further: bounds the stack for
/// self-referencing compositions such as `A: {allOf: [$ref: A]}`.
const MAX_SCHEMA_DEPTH: usize = 256;

#[derive(Debug, Clone, Serialize)]
pub struct OpenApi {
    pub mode: Mode,
    /// Where the document came from (for /config_dump and logs).
    pub source: String,
    /// Prefix of every path of the document, `""` for the root; never
    /// ends with `/`.
    pub base_path: String,
    /// Forward requests whose path the document does not describe.
    pub pass_unknown_paths: bool,
    pub validate_body: bool,
    /// Concrete paths before templated ones (OpenAPI's matching order).
    pub paths: Vec<PathItem>,
    #[serde(skip)]
    pub schemas: Vec<Schema>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathItem {
    pub template: String,
    #[serde(skip)]
    pub segments: Vec<Segment>,
    pub operations: Vec<Operation>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    /// `{name}` with optional literal text around it (`{id}.json`).
    Template {
        prefix: String,
        name: String,
        suffix: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    #[serde(serialize_with = "method")]
    pub method: Method,
    pub operation_id: Option<String>,
    pub parameters: Vec<Parameter>,
    pub body: Option<RequestBody>,
}

fn method<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ParamLocation {
    Path,
    Query,
    Header,
}

impl ParamLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamLocation::Path => "path",
            ParamLocation::Query => "query",
            ParamLocation::Header => "header",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Parameter {
    /// Lowercase for headers.
    pub name: String,
    pub location: ParamLocation,
    pub required: bool,
    pub schema: Option<SchemaId>,
    /// Arrays: one occurrence per element (`form` style with `explode`,
    /// OpenAPI's default for query) rather than comma-separated.
    pub explode: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestBody {
    pub required: bool,
    /// Declared media types; `schema` is validated for JSON ones.
    pub content: Vec<(MediaRange, Option<SchemaId>)>,
}

/// JSON Schema type bits.
pub mod types {
    pub const NULL: u8 = 1;
    pub const BOOLEAN: u8 = 2;
    pub const OBJECT: u8 = 4;
    pub const ARRAY: u8 = 8;
    pub const NUMBER: u8 = 16;
    pub const STRING: u8 = 32;
    pub const INTEGER: u8 = 64;
    pub const NAMES: [(u8, &str); 7] = [
        (NULL, "null"),
        (BOOLEAN, "boolean"),
        (OBJECT, "object"),
        (ARRAY, "array"),
        (NUMBER, "number"),
        (STRING, "string"),
        (INTEGER, "integer"),
    ];
}

#[derive(Debug, Clone, Default)]
pub enum Additional {
    #[default]
    Any,
    Forbidden,
    Schema(SchemaId),
}

/// One compiled schema. Absent keywords are `None`/empty.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// Allowed types (bits of `types`); 0 = any.
    pub types: u8,
    /// `enum` (and `const`, as a one-value enum).
    pub enumeration: Option<Vec<Value>>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<regex::Regex>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: Option<f64>,
    pub exclusive_maximum: Option<f64>,
    pub multiple_of: Option<f64>,
    /// Sorted by name.
    pub properties: Vec<(String, SchemaId)>,
    pub required: Vec<String>,
    pub additional: Additional,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub items: Option<SchemaId>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub unique_items: bool,
    pub all_of: Vec<SchemaId>,
    pub any_of: Vec<SchemaId>,
    pub one_of: Vec<SchemaId>,
    pub not: Option<SchemaId>,
}

/// One validation failure, as sent to the client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    /// `path`, `query`, `header` or `body`.
    pub location: &'static str,
    /// The parameter, for path/query/header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON pointer into the body (or into an array/object parameter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    pub message: String,
}

/// The outcome of matching a request's path and method.
#[derive(Debug)]
pub enum Matched<'a> {
    Operation {
        operation: &'a Operation,
        /// Path parameters by name (raw, still percent-encoded).
        path_params: Vec<(&'a str, &'a str)>,
    },
    /// The path is described, the method is not (405); the allowed
    /// methods.
    MethodNotAllowed(Vec<&'a Method>),
    /// Outside the document (404 or pass, per config).
    UnknownPath,
}

impl OpenApi {
    /// Finds the operation for `method` and the normalized `path`.
    pub fn find<'a>(&'a self, method: &Method, path: &'a str) -> Matched<'a> {
        let Some(relative) = self.relative(path) else {
            return Matched::UnknownPath;
        };
        let segments: Vec<&str> = relative.split('/').skip(1).collect();
        let mut allowed: Option<&PathItem> = None;
        for item in &self.paths {
            let Some(params) = match_segments(&item.segments, &segments) else {
                continue;
            };
            match item.operations.iter().find(|o| o.method == *method) {
                Some(operation) => {
                    return Matched::Operation {
                        operation,
                        path_params: params,
                    }
                }
                // A HEAD request may use the GET operation.
                None if *method == Method::HEAD => {
                    if let Some(operation) =
                        item.operations.iter().find(|o| o.method == Method::GET)
                    {
                        return Matched::Operation {
                            operation,
                            path_params: params,
                        };
                    }
                }
                None => {}
            }
            allowed.get_or_insert(item);
        }
        match allowed {
            Some(item) => {
                Matched::MethodNotAllowed(item.operations.iter().map(|o| &o.method).collect())
            }
            None => Matched::UnknownPath,
        }
    }

    /// `path` without the base path, starting with `/`; `None` outside.
    fn relative<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.base_path.is_empty() {
            return Some(path);
        }
        let rest = path.strip_prefix(self.base_path.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }

    /// Checks the operation's parameters. `query` holds the decoded
    /// query pairs in order.
    pub fn validate_parameters(
        &self,
        operation: &Operation,
        path_params: &[(&str, &str)],
        query: &[(String, String)],
        headers: &HeaderMap,
        details: &mut Vec<Detail>,
    ) {
        for p in &operation.parameters {
            let values: Vec<String> = match p.location {
                ParamLocation::Path => path_params
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| super::injection::percent_decode(v, false))
                    .collect(),
                ParamLocation::Query => query
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, v)| v.clone())
                    .collect(),
                ParamLocation::Header => headers
                    .get_all(p.name.as_str())
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
            };
            let detail = |pointer: Option<String>, message: String| Detail {
                location: p.location.as_str(),
                name: Some(p.name.clone()),
                pointer,
                message,
            };
            if values.is_empty() {
                if p.required {
                    details.push(detail(None, "required parameter is missing".into()));
                }
                continue;
            }
            let Some(schema) = p.schema else { continue };
            let value = self.coerce_parameter(schema, p, &values);
            let mut found = Vec::new();
            let mut pointer = String::new();
            self.validate(schema, &value, &mut pointer, &mut found, 0);
            for d in found {
                let pointer = (!d.pointer.as_deref().unwrap_or("").is_empty()).then_some(d.pointer);
                details.push(detail(pointer.flatten(), d.message));
            }
        }
    }

    /// The parameter's string value(s) as the JSON value its schema
    /// describes: numbers and booleans parsed when the schema allows
    /// them, arrays from repeated or comma-separated values.
    fn coerce_parameter(&self, schema: SchemaId, p: &Parameter, values: &[String]) -> Value {
        let s = &self.schemas[schema];
        if s.types & types::ARRAY != 0 {
            let elements: Vec<&str> = if p.explode && p.location == ParamLocation::Query {
                values.iter().map(String::as_str).collect()
            } else {
                values.iter().flat_map(|v| v.split(',')).collect()
            };
            let items = s.items;
            return Value::Array(
                elements
                    .into_iter()
                    .map(|e| match items {
                        Some(i) => self.coerce_scalar(i, e),
                        None => Value::String(e.to_string()),
                    })
                    .collect(),
            );
        }
        self.coerce_scalar(schema, &values[0])
    }

    fn coerce_scalar(&self, schema: SchemaId, raw: &str) -> Value {
        let t = self.effective_types(schema);
        if t & types::INTEGER != 0 {
            if let Ok(i) = raw.parse::<i64>() {
                return Value::from(i);
            }
        }
        if t & types::NUMBER != 0 {
            if let Some(n) = raw
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
            {
                return Value::Number(n);
            }
        }
        if t & types::BOOLEAN != 0 && (raw == "true" || raw == "false") {
            return Value::Bool(raw == "true");
        }
        Value::String(raw.to_string())
    }

    /// Types of a schema, looking through an allOf of one `$ref`-like
    /// member (a common way of annotating a referenced schema).
    fn effective_types(&self, schema: SchemaId) -> u8 {
        let s = &self.schemas[schema];
        if s.types == 0 {
            if let [only] = s.all_of.as_slice() {
                return self.schemas[*only].types;
            }
        }
        s.types
    }

    /// Checks a request body. `media_type` is the request's (lowercase,
    /// no parameters), `body` the parsed JSON when it is JSON and not
    /// empty; `has_body` whether the request carries a body at all.
    pub fn validate_body(
        &self,
        operation: &Operation,
        media_type: Option<&str>,
        has_body: bool,
        json: Option<&Value>,
        details: &mut Vec<Detail>,
    ) {
        let body_detail = |message: String| Detail {
            location: "body",
            name: None,
            pointer: None,
            message,
        };
        let Some(spec) = &operation.body else {
            return;
        };
        if !has_body {
            if spec.required {
                details.push(body_detail("request body is required".into()));
            }
            return;
        }
        let media_type = media_type.unwrap_or("");
        let Some((_, schema)) = spec.content.iter().find(|(m, _)| m.allows(media_type)) else {
            let declared: Vec<String> = spec.content.iter().map(|(m, _)| m.to_string()).collect();
            details.push(body_detail(format!(
                "content type {media_type:?} not accepted; expected one of {declared:?}"
            )));
            return;
        };
        if let (Some(schema), Some(json)) = (schema, json) {
            let mut pointer = String::new();
            self.validate(*schema, json, &mut pointer, details, 0);
        }
    }

    /// Validates `value` against `schema`, appending failures (with JSON
    /// pointers rooted at `pointer`) to `details`, at most `MAX_DETAILS`.
    pub fn validate(
        &self,
        schema: SchemaId,
        value: &Value,
        pointer: &mut String,
        details: &mut Vec<Detail>,
        depth: usize,
    ) {
        if details.len() >= MAX_DETAILS {
            return;
        }
        let fail = |details: &mut Vec<Detail>, pointer: &str, message: String| {
            if details.len() < MAX_DETAILS {
                details.push(Detail {
                    location: "body",
                    name: None,
                    pointer: Some(pointer.to_string()),
                    message,
                });
            }
        };
        if depth > MAX_SCHEMA_DEPTH {
            fail(
                details,
                pointer,
                "schema nesting too deep to validate".into(),
            );
            return;
        }
        let s = &self.schemas[schema];
        if s.types != 0 && !type_matches(s.types, value) {
            fail(
                details,
                pointer,
                format!(
                    "expected {}, got {}",
                    type_names(s.types),
                    value_type_name(value)
                ),
            );
            return;
        }
        if let Some(allowed) = &s.enumeration {
            if !allowed.iter().any(|a| json_equal(a, value)) {
                let shown: Vec<String> = allowed.iter().take(10).map(Value::to_string).collect();
                let more = if allowed.len() > 10 { ", ..." } else { "" };
                fail(
                    details,
                    pointer,
                    format!("expected one of [{}{more}]", shown.join(", ")),
                );
            }
        }
        match value {
            Value::String(text) => self.validate_string(s, text, pointer, details, &fail),
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    validate_number(s, x, pointer, details, &fail)
                }
            }
            Value::Array(items) => {
                if let Some(min) = s.min_items {
                    if (items.len() as u64) < min {
                        fail(details, pointer, format!("expected at least {min} items"));
                    }
                }
                if let Some(max) = s.max_items {
                    if items.len() as u64 > max {
                        fail(details, pointer, format!("expected at most {max} items"));
                    }
                }
                if s.unique_items && has_duplicates(items) {
                    fail(details, pointer, "expected unique items".into());
                }
                if let Some(item_schema) = s.items {
                    for (i, item) in items.iter().enumerate() {
                        let len = pointer.len();
                        let _ = write!(pointer, "/{i}");
                        self.validate(item_schema, item, pointer, details, depth + 1);
                        pointer.truncate(len);
                        if details.len() >= MAX_DETAILS {
                            break;
                        }
                    }
                }
            }
            Value::Object(map) => {
                for name in &s.required {
                    if !map.contains_key(name) {
                        let len = pointer.len();
                        push_token(pointer, name);
                        fail(details, pointer, "required property is missing".into());
                        pointer.truncate(len);
                    }
                }
                if let Some(min) = s.min_properties {
                    if (map.len() as u64) < min {
                        fail(
                            details,
                            pointer,
                            format!("expected at least {min} properties"),
                        );
                    }
                }
                if let Some(max) = s.max_properties {
                    if map.len() as u64 > max {
                        fail(
                            details,
                            pointer,
                            format!("expected at most {max} properties"),
                        );
                    }
                }
                for (name, member) in map {
                    let len = pointer.len();
                    push_token(pointer, name);
                    match s
                        .properties
                        .binary_search_by(|(n, _)| n.as_str().cmp(name))
                        .map(|i| s.properties[i].1)
                    {
                        Ok(p) => self.validate(p, member, pointer, details, depth + 1),
                        Err(_) => match s.additional {
                            Additional::Any => {}
                            Additional::Forbidden => {
                                fail(details, pointer, "property is not allowed".into())
                            }
                            Additional::Schema(a) => {
                                self.validate(a, member, pointer, details, depth + 1)
                            }
                        },
                    }
                    pointer.truncate(len);
                    if details.len() >= MAX_DETAILS {
                        break;
                    }
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
        for &part in &s.all_of {
            self.validate(part, value, pointer, details, depth + 1);
        }
        if !s.any_of.is_empty() {
            let matched = s
                .any_of
                .iter()
                .any(|&b| self.is_valid(b, value, pointer, depth + 1));
            if !matched {
                self.explain_branches(&s.any_of, "at least one", value, pointer, details, depth);
            }
        }
        if !s.one_of.is_empty() {
            let matched = s
                .one_of
                .iter()
                .filter(|&&b| self.is_valid(b, value, pointer, depth + 1))
                .count();
            if matched == 0 {
                self.explain_branches(&s.one_of, "exactly one", value, pointer, details, depth);
            } else if matched > 1 {
                fail(
                    details,
                    pointer,
                    format!(
                        "expected to match exactly one of {} schemas, matched {matched}",
                        s.one_of.len()
                    ),
                );
            }
        }
        if let Some(not) = s.not {
            if self.is_valid(not, value, pointer, depth + 1) {
                fail(
                    details,
                    pointer,
                    "must not match the schema in `not`".into(),
                );
            }
        }
    }

    /// No branch of anyOf/oneOf matched: if exactly one branch accepts
    /// the value's type, its failures are the useful explanation;
    /// otherwise a summary.
    fn explain_branches(
        &self,
        branches: &[SchemaId],
        how_many: &str,
        value: &Value,
        pointer: &mut String,
        details: &mut Vec<Detail>,
        depth: usize,
    ) {
        let typed: Vec<SchemaId> = branches
            .iter()
            .copied()
            .filter(|&b| {
                let t = self.effective_types(b);
                t == 0 || type_matches(t, value)
            })
            .collect();
        if let [only] = typed.as_slice() {
            self.validate(*only, value, pointer, details, depth + 1);
            return;
        }
        if details.len() < MAX_DETAILS {
            details.push(Detail {
                location: "body",
                name: None,
                pointer: Some(pointer.clone()),
                message: format!(
                    "expected to match {how_many} of {} schemas, matched none",
                    branches.len()
                ),
            });
        }
    }

    fn is_valid(&self, schema: SchemaId, value: &Value, pointer: &str, depth: usize) -> bool {
        let mut scratch = Vec::new();
        let mut p = pointer.to_string();
        self.validate(schema, value, &mut p, &mut scratch, depth);
        scratch.is_empty()
    }

    fn validate_string(
        &self,
        s: &Schema,
        text: &str,
        pointer: &str,
        details: &mut Vec<Detail>,
        fail: &impl Fn(&mut Vec<Detail>, &str, String),
    ) {
        if s.min_length.is_some() || s.max_length.is_some() {
            // JSON Schema counts characters (code points), not bytes.
            let n = text.chars().count() as u64;
            if let Some(min) = s.min_length {
                if n < min {
                    fail(
                        details,
                        pointer,
                        format!("expected at least {min} characters"),
                    );
                }
            }
            if let Some(max) = s.max_length {
                if n > max {
                    fail(
                        details,
                        pointer,
                        format!("expected at most {max} characters"),
                    );
                }
            }
        }
        if let Some(re) = &s.pattern {
            if !re.is_match(text) {
                fail(
                    details,
                    pointer,
                    format!("expected to match pattern {:?}", re.as_str()),
                );
            }
        }
    }
}

fn validate_number(
    s: &Schema,
    x: f64,
    pointer: &str,
    details: &mut Vec<Detail>,
    fail: &impl Fn(&mut Vec<Detail>, &str, String),
) {
    if let Some(min) = s.minimum {
        if x < min {
            fail(details, pointer, format!("expected a value >= {min}"));
        }
    }
    if let Some(max) = s.maximum {
        if x > max {
            fail(details, pointer, format!("expected a value <= {max}"));
        }
    }
    if let Some(min) = s.exclusive_minimum {
        if x <= min {
            fail(details, pointer, format!("expected a value > {min}"));
        }
    }
    if let Some(max) = s.exclusive_maximum {
        if x >= max {
            fail(details, pointer, format!("expected a value < {max}"));
        }
    }
    if let Some(m) = s.multiple_of {
        let q = x / m;
        if (q - q.round()).abs() > 1e-9 {
            fail(details, pointer, format!("expected a multiple of {m}"));
        }
    }
}

/// Appends `/token` to a JSON pointer, escaped per RFC 6901.
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

fn is_integer(n: &serde_json::Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn type_matches(allowed: u8, value: &Value) -> bool {
    let bit = match value {
        Value::Null => types::NULL,
        Value::Bool(_) => types::BOOLEAN,
        Value::Object(_) => types::OBJECT,
        Value::Array(_) => types::ARRAY,
        Value::String(_) => types::STRING,
        Value::Number(n) => {
            if allowed & types::NUMBER != 0 || (allowed & types::INTEGER != 0 && is_integer(n)) {
                return true;
            }
            types::NUMBER
        }
    };
    allowed & bit != 0
}

fn type_names(bits: u8) -> String {
    let names: Vec<&str> = types::NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect();
    names.join(" or ")
}

fn value_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(n) if is_integer(n) => "integer",
        Value::Number(_) => "number",
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

fn has_duplicates(items: &[Value]) -> bool {
    // Quadratic, bounded by the array-length limit; arrays declared
    // unique are small in practice.
    items
        .iter()
        .enumerate()
        .any(|(i, a)| items[i + 1..].iter().any(|b| json_equal(a, b)))
}

impl std::fmt::Display for MediaRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaRange::Any => f.write_str("*/*"),
            MediaRange::Exact(m) => f.write_str(m),
            MediaRange::Type(t) => write!(f, "{t}/*"),
            MediaRange::Suffix(t, s) => write!(f, "{t}/*{s}"),
        }
    }
}

/// Matches request path segments against a template; the path
/// parameters on success.
fn match_segments<'a>(
    template: &'a [Segment],
    path: &[&'a str],
) -> Option<Vec<(&'a str, &'a str)>> {
    if template.len() != path.len() {
        return None;
    }
    let mut params = Vec::new();
    for (t, p) in template.iter().zip(path) {
        match t {
            Segment::Literal(l) => {
                if l != p {
                    return None;
                }
            }
            Segment::Template {
                prefix,
                name,
                suffix,
            } => {
                let value = p
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                if value.is_empty() {
                    return None;
                }
                params.push((name.as_str(), value));
            }
        }
    }
    Some(params)
}
