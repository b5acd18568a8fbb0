//! OpenAPI 3.0/3.1 document (inline or from a ConfigMap, YAML or JSON) ->
//! `model::...::openapi::OpenApi`: path templates, operations, parameters
//! and request-body schemas, every local `$ref` resolved once into the
//! schema arena. Errors name where in the document they are: the parser's
//! line and column, or a JSON pointer for a document that parses but is
//! not a usable OpenAPI 3 description.

use std::collections::HashMap;

use http::Method;
use portcullis_api::route_filter::threat::{OpenApiSpec, UnknownPath};
use portcullis_model::route_filter::threat::openapi::{
    types, Additional, OpenApi, Operation, ParamLocation, Parameter, PathItem, RequestBody, Schema,
    SchemaId, Segment,
};
use portcullis_model::route_filter::threat::Mode;
use serde_json::{Map, Value};

use super::super::SectionContext;

const DEFAULT_KEY: &str = "openapi.yaml";

const METHODS: [(&str, Method); 8] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("options", Method::OPTIONS),
    ("head", Method::HEAD),
    ("patch", Method::PATCH),
    ("trace", Method::TRACE),
];

pub(super) fn compile(
    spec: &OpenApiSpec,
    mode: Mode,
    ctx: &SectionContext<'_>,
) -> Result<OpenApi, String> {
    let (text, source) = match (&spec.inline, &spec.config_map_ref) {
        (Some(text), None) => (text.clone(), "inline".to_string()),
        (None, Some(r)) => {
            let key = r.key.as_deref().unwrap_or(DEFAULT_KEY);
            let name = format!("{}/{}", ctx.namespace, r.name);
            let cm = ctx
                .index
                .snapshot
                .config_maps
                .iter()
                .find(|(k, _)| k.namespace == ctx.namespace && k.name == r.name)
                .map(|(_, cm)| cm)
                .ok_or_else(|| format!("ConfigMap {name} not found"))?;
            let text = cm
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| format!("ConfigMap {name} has no key {key:?}"))?;
            (text.clone(), format!("ConfigMap {name} key {key}"))
        }
        _ => return Err("exactly one of inline and configMapRef must be set".into()),
    };
    let document = parse_document(&text).map_err(|e| format!("{source}: {e}"))?;
    compile_document(&document, spec, mode, source.clone()).map_err(|e| format!("{source}: {e}"))
}

/// YAML or JSON (JSON is YAML, but its own parser gives better errors).
pub(super) fn parse_document(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
    } else {
        serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))
    }
}

pub(super) fn compile_document(
    doc: &Value,
    spec: &OpenApiSpec,
    mode: Mode,
    source: String,
) -> Result<OpenApi, String> {
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .ok_or("/openapi: missing; only OpenAPI 3.0 and 3.1 documents are supported")?;
    if !(version.starts_with("3.0") || version.starts_with("3.1")) {
        return Err(format!(
            "/openapi: version {version:?} not supported (3.0 or 3.1)"
        ));
    }
    let mut b = Builder {
        doc,
        schemas: Vec::new(),
        by_ref: HashMap::new(),
        v30: version.starts_with("3.0"),
    };
    let base_path = match &spec.base_path {
        Some(p) => clean_base_path(p),
        None => server_base_path(doc),
    };
    let mut paths = Vec::new();
    if let Some(map) = doc.get("paths") {
        let map = map.as_object().ok_or("/paths: expected an object")?;
        for (template, item) in map {
            let at = format!("/paths/{}", escape(template));
            paths.push(b.path_item(template, item, &at)?);
        }
    }
    // Concrete paths win over templated ones; among equals the
    // document's order.
    paths.sort_by_key(|p: &PathItem| {
        p.segments
            .iter()
            .filter(|s| matches!(s, Segment::Template { .. }))
            .count()
    });
    Ok(OpenApi {
        mode,
        source,
        base_path,
        pass_unknown_paths: spec.unknown_path == Some(UnknownPath::Pass),
        validate_body: spec.validate_body.unwrap_or(true),
        paths,
        schemas: b.schemas,
    })
}

fn clean_base_path(p: &str) -> String {
    let trimmed = p.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// The path of the first server URL, its variables replaced by their
/// defaults: `https://api.example.com/v1` -> `/v1`.
fn server_base_path(doc: &Value) -> String {
    let Some(server) = doc.pointer("/servers/0") else {
        return String::new();
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(vars) = server.get("variables").and_then(Value::as_object) {
        for (name, var) in vars {
            if let Some(default) = var.get("default").and_then(Value::as_str) {
                url = url.replace(&format!("{{{name}}}"), default);
            }
        }
    }
    let path = match url.find("://") {
        Some(i) => url[i + 3..]
            .find('/')
            .map(|j| &url[i + 3 + j..])
            .unwrap_or(""),
        None => url.as_str(),
    };
    clean_base_path(path)
}

/// JSON pointer token escaping (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

struct Builder<'a> {
    doc: &'a Value,
    schemas: Vec<Schema>,
    /// `$ref` target -> its schema, so each target compiles once and
    /// cycles terminate.
    by_ref: HashMap<String, SchemaId>,
    v30: bool,
}

impl<'a> Builder<'a> {
    /// Follows `$ref` chains to the object they name.
    fn deref(&self, v: &'a Value, at: &str) -> Result<(&'a Value, String), String> {
        let mut v = v;
        let mut at = at.to_string();
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    v = self.resolve(r, &at)?;
                    at = r.trim_start_matches('#').to_string();
                }
                None => return Ok((v, at)),
            }
        }
        Err(format!("{at}: $ref chain too long"))
    }

    fn resolve(&self, reference: &str, at: &str) -> Result<&'a Value, String> {
        let pointer = reference.strip_prefix('#').ok_or_else(|| {
            format!("{at}: $ref {reference:?}: only references within the document (#/...) are supported")
        })?;
        let decoded =
            portcullis_model::route_filter::threat::injection::percent_decode(pointer, false);
        self.doc
            .pointer(&decoded)
            .ok_or_else(|| format!("{at}: $ref {reference:?} does not resolve"))
    }

    fn path_item(&mut self, template: &str, item: &'a Value, at: &str) -> Result<PathItem, String> {
        if !template.starts_with('/') {
            return Err(format!("{at}: path must start with '/'"));
        }
        let segments = template
            .split('/')
            .skip(1)
            .map(|s| segment(s).map_err(|e| format!("{at}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let (item, at) = self.deref(item, at)?;
        let item = item
            .as_object()
            .ok_or_else(|| format!("{at}: expected an object"))?;
        let common = self.parameters(item, &at)?;
        let mut operations = Vec::new();
        for (name, method) in METHODS {
            let Some(op) = item.get(name) else { continue };
            let op_at = format!("{at}/{name}");
            let op = op
                .as_object()
                .ok_or_else(|| format!("{op_at}: expected an object"))?;
            let mut parameters = common.clone();
            for p in self.parameters(op, &op_at)? {
                // Operation-level parameters override path-level ones.
                parameters.retain(|q: &Parameter| !(q.name == p.name && q.location == p.location));
                parameters.push(p);
            }
            let body = op
                .get("requestBody")
                .map(|b| self.request_body(b, &format!("{op_at}/requestBody")))
                .transpose()?;
            operations.push(Operation {
                method,
                operation_id: op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(String::from),
                parameters,
                body,
            });
        }
        Ok(PathItem {
            template: template.to_string(),
            segments,
            operations,
        })
    }

    fn parameters(
        &mut self,
        owner: &'a Map<String, Value>,
        at: &str,
    ) -> Result<Vec<Parameter>, String> {
        let Some(list) = owner.get("parameters") else {
            return Ok(Vec::new());
        };
        let list = list
            .as_array()
            .ok_or_else(|| format!("{at}/parameters: expected an array"))?;
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            let (p, p_at) = self.deref(p, &format!("{at}/parameters/{i}"))?;
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{p_at}: missing name"))?;
            let location = match p.get("in").and_then(Value::as_str) {
                Some("path") => ParamLocation::Path,
                Some("query") => ParamLocation::Query,
                Some("header") => ParamLocation::Header,
                // Cookie parameters are not validated.
                Some("cookie") => continue,
                other => return Err(format!("{p_at}/in: invalid value {other:?}")),
            };
            let schema = match (p.get("schema"), p.pointer("/content")) {
                (Some(s), _) => Some(self.schema(s, &format!("{p_at}/schema"))?),
                (None, Some(content)) => {
                    match content.as_object().and_then(|c| c.values().next()) {
                        Some(media) => media
                            .get("schema")
                            .map(|s| self.schema(s, &format!("{p_at}/content")))
                            .transpose()?,
                        None => None,
                    }
                }
                (None, None) => None,
            };
            let style_form = match p.get("style").and_then(Value::as_str) {
                Some(style) => style == "form",
                None => location == ParamLocation::Query,
            };
            out.push(Parameter {
                name: if location == ParamLocation::Header {
                    name.to_ascii_lowercase()
                } else {
                    name.to_string()
                },
                location,
                required: location == ParamLocation::Path
                    || p.get("required").and_then(Value::as_bool).unwrap_or(false),
                schema,
                explode: p
                    .get("explode")
                    .and_then(Value::as_bool)
                    .unwrap_or(style_form),
            });
        }
        Ok(out)
    }

    fn request_body(&mut self, body: &'a Value, at: &str) -> Result<RequestBody, String> {
        let (body, at) = self.deref(body, at)?;
        let mut content = Vec::new();
        if let Some(map) = body.get("content") {
            let map = map
                .as_object()
                .ok_or_else(|| format!("{at}/content: expected an object"))?;
            for (media, entry) in map {
                let m_at = format!("{at}/content/{}", escape(media));
                let range = super::media_range(media).map_err(|e| format!("{m_at}: {e}"))?;
                let is_json = match &range {
                    portcullis_model::route_filter::threat::MediaRange::Exact(m) => {
                        portcullis_model::route_filter::threat::is_json(m)
                    }
                    portcullis_model::route_filter::threat::MediaRange::Suffix(_, s) => {
                        s == "+json"
                    }
                    _ => false,
                };
                let schema = match entry.get("schema") {
                    Some(s) if is_json => Some(self.schema(s, &format!("{m_at}/schema"))?),
                    _ => None,
                };
                content.push((range, schema));
            }
        }
        Ok(RequestBody {
            required: body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            content,
        })
    }

    /// Compiles a schema (or a `$ref` to one) into the arena.
    fn schema(&mut self, v: &'a Value, at: &str) -> Result<SchemaId, String> {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let target = self.reference(r, at)?;
            // 3.0: siblings of $ref are ignored. 3.1: they apply too.
            let has_siblings = v
                .as_object()
                .is_some_and(|o| o.keys().any(|k| k != "$ref" && is_assertion(k)));
            if self.v30 || !has_siblings {
                return Ok(target);
            }
            let mut s = self.schema_object(v, at)?;
            s.all_of.push(target);
            return Ok(self.push(s));
        }
        let s = self.schema_object(v, at)?;
        Ok(self.push(s))
    }

    fn reference(&mut self, r: &str, at: &str) -> Result<SchemaId, String> {
        if let Some(&id) = self.by_ref.get(r) {
            return Ok(id);
        }
        let target = self.resolve(r, at)?;
        // Reserve the slot first: a schema that refers to itself
        // (directly or not) then finds it in `by_ref`.
        let id = self.push(Schema::default());
        self.by_ref.insert(r.to_string(), id);
        let target_at = unescape(r.trim_start_matches('#'));
        let compiled = match target.get("$ref").and_then(Value::as_str) {
            Some(next) if next != r => {
                let inner = self.reference(next, &target_at)?;
                Schema {
                    all_of: vec![inner],
                    ..Schema::default()
                }
            }
            Some(_) => return Err(format!("{at}: $ref {r:?} refers to itself")),
            None => self.schema_object(target, &target_at)?,
        };
        self.schemas[id] = compiled;
        Ok(id)
    }

    fn push(&mut self, s: Schema) -> SchemaId {
        self.schemas.push(s);
        self.schemas.len() - 1
    }

    fn schema_object(&mut self, v: &'a Value, at: &str) -> Result<Schema, String> {
        let mut s = Schema::default();
        let o = match v {
            // 3.1 boolean schemas: `true` accepts anything, `false` nothing.
            Value::Bool(true) => return Ok(s),
            Value::Bool(false) => {
                s.not = Some(self.push(Schema::default()));
                return Ok(s);
            }
            Value::Object(o) => o,
            _ => return Err(format!("{at}: a schema must be an object")),
        };
        let err = |key: &str, what: &str| format!("{at}/{key}: {what}");
        if let Some(t) = o.get("type") {
            let names: Vec<&Value> = match t {
                Value::Array(a) => a.iter().collect(),
                one => vec![one],
            };
            for n in names {
                let n = n.as_str().ok_or_else(|| err("type", "expected a string"))?;
                let bit = types::NAMES
                    .iter()
                    .find(|(_, name)| *name == n)
                    .map(|(b, _)| *b)
                    .ok_or_else(|| err("type", &format!("unknown type {n:?}")))?;
                s.types |= bit;
            }
            if o.get("nullable").and_then(Value::as_bool) == Some(true) {
                s.types |= types::NULL;
            }
        }
        if let Some(e) = o.get("enum") {
            let mut values = e
                .as_array()
                .ok_or_else(|| err("enum", "expected an array"))?
                .clone();
            // 3.0 `nullable` with an enum: null is allowed as well.
            if self.v30 && o.get("nullable").and_then(Value::as_bool) == Some(true) {
                values.push(Value::Null);
            }
            s.enumeration = Some(values);
        }
        if let Some(c) = o.get("const") {
            s.enumeration = Some(vec![c.clone()]);
        }
        let count = |key: &str| -> Result<Option<u64>, String> {
            o.get(key)
                .map(|v| {
                    v.as_u64()
                        .ok_or_else(|| err(key, "expected a non-negative integer"))
                })
                .transpose()
        };
        let number = |key: &str| -> Result<Option<f64>, String> {
            match o.get(key) {
                None | Some(Value::Bool(_)) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| err(key, "expected a number")),
            }
        };
        s.min_length = count("minLength")?;
        s.max_length = count("maxLength")?;
        s.min_items = count("minItems")?;
        s.max_items = count("maxItems")?;
        s.min_properties = count("minProperties")?;
        s.max_properties = count("maxProperties")?;
        s.unique_items = o
            .get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        s.minimum = number("minimum")?;
        s.maximum = number("maximum")?;
        // 3.0: exclusiveMinimum is a boolean modifying minimum; 3.1: a
        // number of its own.
        if o.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true) {
            s.exclusive_minimum = s.minimum.take();
        } else {
            s.exclusive_minimum = number("exclusiveMinimum")?;
        }
        if o.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true) {
            s.exclusive_maximum = s.maximum.take();
        } else {
            s.exclusive_maximum = number("exclusiveMaximum")?;
        }
        s.multiple_of = number("multipleOf")?;
        if s.multiple_of.is_some_and(|m| m <= 0.0) {
            return Err(err("multipleOf", "must be positive"));
        }
        if let Some(p) = o.get("pattern") {
            let p = p
                .as_str()
                .ok_or_else(|| err("pattern", "expected a string"))?;
            s.pattern = Some(
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| err("pattern", &format!("unsupported regular expression: {e}")))?,
            );
        }
        if let Some(props) = o.get("properties") {
            let props = props
                .as_object()
                .ok_or_else(|| err("properties", "expected an object"))?;
            for (name, p) in props {
                let id = self.schema(p, &format!("{at}/properties/{}", escape(name)))?;
                s.properties.push((name.clone(), id));
            }
            s.properties.sort_by(|a, b| a.0.cmp(&b.0));
        }
        if let Some(req) = o.get("required") {
            let req = req
                .as_array()
                .ok_or_else(|| err("required", "expected an array"))?;
            for name in req {
                let name = name
                    .as_str()
                    .ok_or_else(|| err("required", "expected strings"))?;
                // readOnly properties are sent by servers, not clients:
                // a request must not be refused for leaving them out.
                let read_only = o
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .and_then(|p| p.get("readOnly"))
                    .and_then(Value::as_bool)
                    == Some(true);
                if !read_only {
                    s.required.push(name.to_string());
                }
            }
        }
        s.additional = match o.get("additionalProperties") {
            None | Some(Value::Bool(true)) => Additional::Any,
            Some(Value::Bool(false)) => Additional::Forbidden,
            Some(a) => Additional::Schema(self.schema(a, &format!("{at}/additionalProperties"))?),
        };
        if let Some(items) = o.get("items") {
            s.items = Some(self.schema(items, &format!("{at}/items"))?);
        }
        for (key, list) in [("allOf", 0), ("anyOf", 1), ("oneOf", 2)] {
            let Some(members) = o.get(key) else { continue };
            let members = members
                .as_array()
                .ok_or_else(|| err(key, "expected an array"))?;
            let mut ids = Vec::new();
            for (i, m) in members.iter().enumerate() {
                ids.push(self.schema(m, &format!("{at}/{key}/{i}"))?);
            }
            match list {
                0 => s.all_of = ids,
                1 => s.any_of = ids,
                _ => s.one_of = ids,
            }
        }
        if let Some(not) = o.get("not") {
            s.not = Some(self.schema(not, &format!("{at}/not"))?);
        }
        Ok(s)
    }
}

/// Keywords that constrain a value (as opposed to annotations such as
/// `description`).
fn is_assertion(key: &str) -> bool {
    !matches!(
        key,
        "description"
            | "title"
            | "example"
            | "examples"
            | "default"
            | "deprecated"
            | "readOnly"
            | "writeOnly"
            | "$comment"
            | "format"
            | "externalDocs"
            | "xml"
            | "discriminator"
    ) && !key.starts_with("x-")
}

fn segment(s: &str) -> Result<Segment, String> {
    match (s.find('{'), s.find('}')) {
        (None, None) => Ok(Segment::Literal(s.to_string())),
        (Some(open), Some(close)) if open < close && s[close + 1..].find(['{', '}']).is_none() => {
            Ok(Segment::Template {
                prefix: s[..open].to_string(),
                name: s[open + 1..close].to_string(),
                suffix: s[close + 1..].to_string(),
            })
        }
        _ => Err(format!("unsupported path segment {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use portcullis_model::route_filter::threat::openapi::{Detail, Matched};
    use serde_json::json;

    const DOC: &str = r##"
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: "https://api.example.com/{version}", variables: {version: {default: v1}}}]
paths:
  /orders:
    post:
      parameters:
        - {name: dryRun, in: query, schema: {type: boolean}}
        - {name: X-Request-Id, in: header, required: true, schema: {type: string, pattern: "^[a-f0-9-]{8,}$"}}
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Order"}
  /orders/{id}:
    parameters:
      - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
    get:
      parameters:
        - {name: fields, in: query, schema: {type: array, items: {type: string, enum: [id, items, total]}}}
        - {name: limit, in: query, required: true, schema: {type: integer, maximum: 100}}
    delete: {}
  /orders/latest:
    get: {}
components:
  schemas:
    Order:
      type: object
      required: [customer, items]
      additionalProperties: false
      properties:
        id: {type: string, readOnly: true}
        customer: {type: string, minLength: 1, maxLength: 20}
        note: {type: string, nullable: true}
        status: {type: string, enum: [new, paid]}
        items:
          type: array
          minItems: 1
          items: {$ref: "#/components/schemas/Item"}
        payment:
          oneOf:
            - {$ref: "#/components/schemas/Card"}
            - {$ref: "#/components/schemas/Iban"}
        parent: {$ref: "#/components/schemas/Order"}
    Item:
      type: object
      required: [sku, qty]
      properties:
        sku: {type: string}
        qty: {type: integer, minimum: 1, exclusiveMaximum: true, maximum: 1000}
    Card:
      type: object
      required: [card]
      properties: {card: {type: string, pattern: "^[0-9]{16}$"}}
    Iban:
      type: object
      required: [iban]
      properties: {iban: {type: string}}
"##;

    fn api() -> OpenApi {
        let doc = parse_document(DOC).unwrap();
        compile_document(&doc, &OpenApiSpec::default(), Mode::Block, "test".into()).unwrap()
    }

    fn body_details(api: &OpenApi, body: Value) -> Vec<Detail> {
        let Matched::Operation { operation, .. } = api.find(&Method::POST, "/v1/orders") else {
            panic!("POST /v1/orders not found");
        };
        let mut details = Vec::new();
        api.validate_body(
            operation,
            Some("application/json"),
            true,
            Some(&body),
            &mut details,
        );
        details
    }

    fn pointers(details: &[Detail]) -> Vec<(String, String)> {
        details
            .iter()
            .map(|d| (d.pointer.clone().unwrap_or_default(), d.message.clone()))
            .collect()
    }

    #[test]
    fn paths_match_templates_after_the_server_base_path() {
        let api = api();
        assert_eq!(api.base_path, "/v1");
        match api.find(&Method::GET, "/v1/orders/42") {
            Matched::Operation { path_params, .. } => assert_eq!(path_params, vec![("id", "42")]),
            other => panic!("{other:?}"),
        }
        // Concrete before templated.
        match api.find(&Method::GET, "/v1/orders/latest") {
            Matched::Operation { path_params, .. } => assert!(path_params.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            api.find(&Method::GET, "/orders/42"),
            Matched::UnknownPath
        ));
        assert!(matches!(
            api.find(&Method::GET, "/v1/nope"),
            Matched::UnknownPath
        ));
        assert!(matches!(
            api.find(&Method::GET, "/v1x/orders"),
            Matched::UnknownPath
        ));
        match api.find(&Method::PUT, "/v1/orders/42") {
            Matched::MethodNotAllowed(allowed) => {
                assert_eq!(allowed, vec![&Method::GET, &Method::DELETE])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            api.find(&Method::HEAD, "/v1/orders/1"),
            Matched::Operation { .. }
        ));
    }

    #[test]
    fn parameters_are_coerced_and_checked() {
        let api = api();
        let Matched::Operation {
            operation,
            path_params,
        } = api.find(&Method::GET, "/v1/orders/0")
        else {
            panic!()
        };
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let mut details = Vec::new();
        api.validate_parameters(
            operation,
            &path_params,
            &q(&[("fields", "id"), ("fields", "bogus")]),
            &HeaderMap::new(),
            &mut details,
        );
        let got: Vec<(Option<String>, Option<String>, String)> = details
            .iter()
            .map(|d| (d.name.clone(), d.pointer.clone(), d.message.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("id".into()), None, "expected a value >= 1".into()),
                (
                    Some("fields".into()),
                    Some("/1".into()),
                    r#"expected one of ["id", "items", "total"]"#.into()
                ),
                (
                    Some("limit".into()),
                    None,
                    "required parameter is missing".into()
                ),
            ]
        );
        let Matched::Operation {
            operation,
            path_params,
        } = api.find(&Method::GET, "/v1/orders/7")
        else {
            panic!()
        };
        let mut details = Vec::new();
        api.validate_parameters(
            operation,
            &path_params,
            &q(&[("limit", "ten")]),
            &HeaderMap::new(),
            &mut details,
        );
        assert_eq!(details[0].message, "expected integer, got string");
        let mut details = Vec::new();
        api.validate_parameters(
            operation,
            &path_params,
            &q(&[("limit", "10")]),
            &HeaderMap::new(),
            &mut details,
        );
        assert!(details.is_empty(), "{details:?}");
    }

    #[test]
    fn header_parameters_are_checked() {
        let api = api();
        let Matched::Operation { operation, .. } = api.find(&Method::POST, "/v1/orders") else {
            panic!()
        };
        let mut headers = HeaderMap::new();
        let mut details = Vec::new();
        api.validate_parameters(operation, &[], &[], &headers, &mut details);
        assert_eq!(details[0].name.as_deref(), Some("x-request-id"));
        headers.insert("x-request-id", "NOT-HEX".parse().unwrap());
        details.clear();
        api.validate_parameters(operation, &[], &[], &headers, &mut details);
        assert!(details[0].message.contains("pattern"), "{details:?}");
        headers.insert("x-request-id", "0123abcd-ff".parse().unwrap());
        details.clear();
        api.validate_parameters(operation, &[], &[], &headers, &mut details);
        assert!(details.is_empty());
    }

    #[test]
    fn bodies_are_validated_with_json_pointers() {
        let api = api();
        let valid = json!({"customer": "ann", "note": null, "status": "new",
            "items": [{"sku": "a", "qty": 2}],
            "payment": {"card": "4111111111111111"},
            "parent": {"customer": "bob", "items": [{"sku": "b", "qty": 1}]}});
        assert!(body_details(&api, valid).is_empty());

        let cases = [
            (
                json!({"customer": "ann", "items": [{"sku": "a", "qty": "2"}]}),
                ("/items/0/qty", "expected integer, got string"),
            ),
            (
                json!({"customer": "ann", "items": [{"sku": "a", "qty": 1000}]}),
                ("/items/0/qty", "expected a value < 1000"),
            ),
            (
                json!({"customer": "ann", "items": [{"sku": "a"}]}),
                ("/items/0/qty", "required property is missing"),
            ),
            (
                json!({"items": [{"sku": "a", "qty": 1}]}),
                ("/customer", "required property is missing"),
            ),
            (
                json!({"customer": "", "items": [{"sku": "a", "qty": 1}]}),
                ("/customer", "expected at least 1 characters"),
            ),
            (
                json!({"customer": "ann", "items": []}),
                ("/items", "expected at least 1 items"),
            ),
            (
                json!({"customer": "ann", "status": "lost", "items": [{"sku": "a", "qty": 1}]}),
                ("/status", r#"expected one of ["new", "paid"]"#),
            ),
            (
                json!({"customer": "ann", "extra": 1, "items": [{"sku": "a", "qty": 1}]}),
                ("/extra", "property is not allowed"),
            ),
            (
                json!({"customer": "ann", "items": [{"sku": "a", "qty": 1}], "payment": {"iban": 5}}),
                (
                    "/payment",
                    "expected to match exactly one of 2 schemas, matched none",
                ),
            ),
            (
                json!({"customer": "ann", "items": [{"sku": "a", "qty": 1}], "payment": {"card": "4111111111111111", "iban": "x"}}),
                (
                    "/payment",
                    "expected to match exactly one of 2 schemas, matched 2",
                ),
            ),
            (
                json!({"customer": "ann", "items": [{"sku": "a", "qty": 1}], "parent": {"customer": 5, "items": [{"sku": "a", "qty": 1}]}}),
                ("/parent/customer", "expected string, got integer"),
            ),
            (json!([1]), ("", "expected object, got array")),
        ];
        for (body, (pointer, message)) in cases {
            let got = pointers(&body_details(&api, body.clone()));
            assert!(
                got.iter().any(|(p, m)| p == pointer && m == message),
                "{body}: expected {pointer} {message:?}, got {got:?}"
            );
        }
    }

    #[test]
    fn body_presence_and_content_type_are_checked() {
        let api = api();
        let Matched::Operation { operation, .. } = api.find(&Method::POST, "/v1/orders") else {
            panic!()
        };
        let mut details = Vec::new();
        api.validate_body(operation, None, false, None, &mut details);
        assert_eq!(details[0].message, "request body is required");
        details.clear();
        api.validate_body(operation, Some("text/plain"), true, None, &mut details);
        assert!(details[0].message.contains("not accepted"), "{details:?}");
    }

    #[test]
    fn invalid_documents_are_reported_with_their_position() {
        let compile = |text: &str| {
            parse_document(text).and_then(|d| {
                compile_document(&d, &OpenApiSpec::default(), Mode::Block, "t".into())
            })
        };
        let e = compile("openapi: 3.0.0\npaths:\n  /a: [\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
        let e = compile("{\"openapi\": \"3.0.0\",\n \"paths\": {]}").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(compile("swagger: '2.0'").unwrap_err().contains("/openapi"));
        let e = compile("openapi: 3.1.0\npaths:\n  /a:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: '#/components/schemas/Nope'}\n").unwrap_err();
        assert!(
            e.contains("/paths/~1a/post/requestBody/content/application~1json/schema"),
            "{e}"
        );
        let e = compile("openapi: 3.1.0\npaths:\n  /a:\n    get:\n      parameters: [{name: q, in: query, schema: {type: strin}}]\n").unwrap_err();
        assert!(e.contains("unknown type \"strin\""), "{e}");
        let e = compile("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      parameters: [{name: q, in: query, schema: {pattern: '(?<=a)b'}}]\n").unwrap_err();
        assert!(e.contains("pattern"), "{e}");
    }

    #[test]
    fn openapi_31_features() {
        let doc = parse_document(
            r##"{"openapi": "3.1.0", "paths": {"/t": {"post": {"requestBody": {"content": {"application/*+json": {"schema": {
                "type": ["object", "null"],
                "properties": {"n": {"type": "number", "exclusiveMinimum": 0, "multipleOf": 0.5},
                               "c": {"const": "x"},
                               "r": {"$ref": "#/$defs/S", "maxLength": 2}}
            }}}}}}},
            "$defs": {"S": {"type": "string"}}}"##,
        )
        .unwrap();
        let api = compile_document(&doc, &OpenApiSpec::default(), Mode::Block, "t".into()).unwrap();
        let Matched::Operation { operation, .. } = api.find(&Method::POST, "/t") else {
            panic!()
        };
        let check = |body: Value| {
            let mut d = Vec::new();
            api.validate_body(
                operation,
                Some("application/vnd.x+json"),
                true,
                Some(&body),
                &mut d,
            );
            pointers(&d)
        };
        assert!(check(json!(null)).is_empty());
        assert!(check(json!({"n": 1.5, "c": "x", "r": "ab"})).is_empty());
        assert_eq!(
            check(json!({"n": 0})),
            vec![("/n".into(), "expected a value > 0".into())]
        );
        assert_eq!(
            check(json!({"n": 0.7})),
            vec![("/n".into(), "expected a multiple of 0.5".into())]
        );
        assert_eq!(
            check(json!({"c": "y"})),
            vec![("/c".into(), "expected one of [\"x\"]".into())]
        );
        assert_eq!(
            check(json!({"r": "abc"})),
            vec![("/r".into(), "expected at most 2 characters".into())]
        );
        assert_eq!(
            check(json!({"r": 1})),
            vec![("/r".into(), "expected string, got integer".into())]
        );
    }
}
