//! RouteFilter threat protection on the data path.
//!
//! Order, cheapest and most decisive first: content type (415) ->
//! injection patterns in path, query and headers (403) -> OpenAPI path,
//! method and parameters (404/405/400) -> the body, read only when a
//! check needs it and never beyond `maxBodyBytes` (413) -> JSON/XML
//! limits (400) -> OpenAPI body schema (400) -> injection patterns in the
//! body (403). A check in `Report` mode logs and counts its finding and
//! the request goes on; in `Block` mode the first finding answers.
//!
//! Answers are JSON and never contain the request's own data (no
//! reflected payloads): the rule id, the parameter name or JSON pointer,
//! and what was expected.

mod body;
mod json_limits;
mod xml_limits;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use portcullis_model::route_filter::threat::injection::{Injection, Location, Rule};
use portcullis_model::route_filter::threat::openapi::{Detail, Matched, OpenApi, Operation};
use portcullis_model::route_filter::threat::{
    is_form, is_json, is_xml, media_type, Mode, ThreatProtectionConfig,
};
use serde_json::{json, Value};

use super::ClientRequest;
use crate::body::Body;
use crate::metrics::{self, ThreatDecision};

use json_limits::JsonIssue;
use xml_limits::XmlIssue;

/// Inspects the request; `Err` is the rejection to send. (Public for the
/// benchmark in tests/benches/threat.rs.)
pub async fn inspect(
    config: &ThreatProtectionConfig,
    filter: &str,
    client: &ClientRequest,
    req: Request<Body>,
) -> Result<Request<Body>, Response<Body>> {
    checked(config, filter, client, req).await.map_err(|r| *r)
}

/// A refusal, boxed: it travels up through every check.
type Refusal = Box<Response<Body>>;

async fn checked(
    config: &ThreatProtectionConfig,
    filter: &str,
    client: &ClientRequest,
    req: Request<Body>,
) -> Result<Request<Body>, Refusal> {
    let judge = Judge { filter };
    let media = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(media_type);
    let has_body = !req.body().is_end_stream();

    check_content_type(config, &judge, client, media.as_deref(), has_body)?;

    if let Some(inj) = &config.injection {
        scan_request_line(inj, &judge, client)?;
    }
    let operation = match &config.open_api {
        Some(api) => {
            let query = decoded_query(client.query.as_deref());
            match_operation(api, &judge, client, &query)?
        }
        None => None,
    };

    let json_media = media.as_deref().is_some_and(is_json);
    let xml_media = media.as_deref().is_some_and(is_xml);
    let form_media = media.as_deref().is_some_and(is_form);
    let body_injection = config
        .injection
        .as_ref()
        .filter(|i| i.rules(Location::Body).is_some());
    let validate_body = operation.filter(|(api, op)| api.validate_body && op.body.is_some());
    let needs_body = has_body
        && ((json_media
            && (config.json.is_some() || validate_body.is_some() || body_injection.is_some()))
            || (xml_media && config.xml.is_some())
            || (form_media && body_injection.is_some()));
    if !needs_body {
        if let Some((api, op)) = validate_body {
            // Bodies the schema does not read (not JSON, or absent) are
            // still checked for presence and content type.
            let mut details = Vec::new();
            api.validate_body(op, media.as_deref(), has_body, None, &mut details);
            judge.validation(api.mode, details)?;
        }
        return Ok(req);
    }

    let (parts, incoming) = req.into_parts();
    let bytes = match body::read(incoming, config.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(body::ReadError::TooLarge { prefix, rest }) => {
            // Block when any check that wanted the body blocks.
            let blocking = [
                config.json.as_ref().map(|j| j.mode).filter(|_| json_media),
                config.xml.as_ref().map(|x| x.mode).filter(|_| xml_media),
                validate_body.map(|(api, _)| api.mode),
                body_injection
                    .and_then(|i| i.rules(Location::Body))
                    .map(|set| {
                        if set.rules().iter().any(|r| r.mode == Mode::Block) {
                            Mode::Block
                        } else {
                            Mode::Report
                        }
                    }),
            ]
            .into_iter()
            .flatten()
            .any(|m| m == Mode::Block);
            let mode = if blocking { Mode::Block } else { Mode::Report };
            judge.decide(mode, "body", "maxBodyBytes", None, || {
                payload_too_large(config.max_body_bytes)
            })?;
            // Reported: the request goes on uninspected, its body intact.
            return Ok(Request::from_parts(parts, body::prefixed(prefix, rest)));
        }
        Err(body::ReadError::Failed) => {
            tracing::debug!(filter, "threat protection: could not read the request body");
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                json!({"error": "could not read the request body"}),
            )));
        }
    };

    if bytes.is_empty() {
        // A chunked body with no data: no body, as far as the checks go.
        if let Some((api, op)) = validate_body {
            let mut details = Vec::new();
            api.validate_body(op, media.as_deref(), false, None, &mut details);
            judge.validation(api.mode, details)?;
        }
        return Ok(Request::from_parts(parts, crate::body::empty()));
    }

    if json_media {
        if let Some(limits) = &config.json {
            let issue = if bytes.len() as u64 > limits.max_body_bytes {
                Some(JsonIssue::Limit("maxBodyBytes", limits.max_body_bytes))
            } else {
                json_limits::scan(&bytes, limits).err()
            };
            if let Some(issue) = issue {
                judge.payload(limits.mode, "json", issue_of_json(issue))?;
            }
        }
    }
    if xml_media {
        if let Some(limits) = &config.xml {
            let issue = if bytes.len() as u64 > limits.max_body_bytes {
                Some(XmlIssue::Limit("maxBodyBytes", limits.max_body_bytes))
            } else {
                xml_limits::scan(&bytes, limits).err()
            };
            if let Some(issue) = issue {
                judge.payload(limits.mode, "xml", issue_of_xml(issue))?;
            }
        }
    }

    // Parsed once, for the schema and the body scan. serde_json bounds
    // its own recursion (128 levels), so even without JSON limits a deep
    // document is an error, not a stack overflow.
    let parsed: Option<Result<Value, serde_json::Error>> = (json_media
        && (validate_body.is_some() || body_injection.is_some()))
    .then(|| serde_json::from_slice(&bytes));

    if let Some((api, op)) = validate_body {
        let mut details = Vec::new();
        match &parsed {
            Some(Ok(value)) => {
                api.validate_body(op, media.as_deref(), true, Some(value), &mut details)
            }
            Some(Err(e)) => details.push(Detail {
                location: "body",
                name: None,
                pointer: None,
                message: format!("invalid JSON: {e}"),
            }),
            None => api.validate_body(op, media.as_deref(), true, None, &mut details),
        }
        judge.validation(api.mode, details)?;
    }

    if let Some(inj) = body_injection {
        if form_media {
            for (key, value) in raw_pairs(&String::from_utf8_lossy(&bytes)) {
                judge.scan(inj, Location::Body, key, true)?;
                judge.scan(inj, Location::Body, value, true)?;
            }
        } else if let Some(parsed) = &parsed {
            match parsed {
                Ok(value) => scan_json(inj, &judge, value)?,
                // Not JSON after all: its text is what a backend would
                // see.
                Err(_) => {
                    judge.scan(inj, Location::Body, &String::from_utf8_lossy(&bytes), false)?
                }
            }
        }
    }

    Ok(Request::from_parts(parts, crate::body::full(bytes)))
}

/// Content-type rules: a request with a body and one of the rule's
/// methods must carry an allowed media type.
fn check_content_type(
    config: &ThreatProtectionConfig,
    judge: &Judge<'_>,
    client: &ClientRequest,
    media: Option<&str>,
    has_body: bool,
) -> Result<(), Refusal> {
    if !has_body {
        return Ok(());
    }
    for rule in &config.content_types {
        if !rule.methods.contains(&client.method) {
            continue;
        }
        let allowed = media.is_some_and(|m| rule.allowed.iter().any(|r| r.allows(m)));
        if !allowed {
            judge.decide(rule.mode, "content_type", "contentTypes", None, || {
                let allowed: Vec<String> = rule.allowed.iter().map(ToString::to_string).collect();
                error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    json!({"error": "unsupported media type", "allowed": allowed}),
                )
            })?;
        }
    }
    Ok(())
}

/// Path, query (names and values) and the configured headers.
fn scan_request_line(
    inj: &Injection,
    judge: &Judge<'_>,
    client: &ClientRequest,
) -> Result<(), Refusal> {
    judge.scan(inj, Location::Path, &client.path, false)?;
    if let Some(q) = client.query.as_deref() {
        for (key, value) in raw_pairs(q) {
            judge.scan(inj, Location::Query, key, true)?;
            judge.scan(inj, Location::Query, value, true)?;
        }
    }
    if inj.rules(Location::Header).is_some() {
        for name in &inj.headers {
            for value in client.headers.get_all(name) {
                judge.scan(
                    inj,
                    Location::Header,
                    &String::from_utf8_lossy(value.as_bytes()),
                    false,
                )?;
            }
        }
    }
    Ok(())
}

/// Every string (member names included) of a JSON document, walked
/// with an explicit stack.
fn scan_json(inj: &Injection, judge: &Judge<'_>, value: &Value) -> Result<(), Refusal> {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => judge.scan(inj, Location::Body, s, false)?,
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                for (k, v) in map {
                    judge.scan(inj, Location::Body, k, false)?;
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The operation the request names, after its parameters were checked;
/// `None` when the path is outside the document and unknown paths pass.
fn match_operation<'a>(
    api: &'a OpenApi,
    judge: &Judge<'_>,
    client: &'a ClientRequest,
    query: &[(String, String)],
) -> Result<Option<(&'a OpenApi, &'a Operation)>, Refusal> {
    match api.find(&client.method, &client.path) {
        Matched::Operation {
            operation,
            path_params,
        } => {
            let mut details = Vec::new();
            api.validate_parameters(
                operation,
                &path_params,
                query,
                &client.headers,
                &mut details,
            );
            judge.validation(api.mode, details)?;
            Ok(Some((api, operation)))
        }
        Matched::MethodNotAllowed(allowed) => {
            judge.decide(api.mode, "openapi", "methodNotAllowed", None, || {
                let names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
                let mut resp = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"error": "method not allowed", "allowed": names}),
                );
                if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                    resp.headers_mut().insert(ALLOW, v);
                }
                resp
            })?;
            Ok(None)
        }
        Matched::UnknownPath if api.pass_unknown_paths => Ok(None),
        Matched::UnknownPath => {
            judge.decide(api.mode, "openapi", "unknownPath", None, || {
                error(
                    StatusCode::NOT_FOUND,
                    json!({"error": "path not described by the API"}),
                )
            })?;
            Ok(None)
        }
    }
}

/// Records findings and builds answers for one filter.
struct Judge<'a> {
    filter: &'a str,
}

impl Judge<'_> {
    /// A finding of `check`/`rule`: counted and logged; in Block mode
    /// the answer `respond` builds is returned as the error.
    fn decide(
        &self,
        mode: Mode,
        check: &'static str,
        rule: &str,
        location: Option<&'static str>,
        respond: impl FnOnce() -> Response<Body>,
    ) -> Result<(), Refusal> {
        let decision = match mode {
            Mode::Block => ThreatDecision::blocked,
            Mode::Report => ThreatDecision::reported,
        };
        metrics::global().record_threat(self.filter, check, rule, decision);
        tracing::warn!(
            filter = self.filter,
            check,
            rule,
            location = location.unwrap_or(""),
            decision = ?decision,
            "threat protection finding"
        );
        match mode {
            Mode::Block => Err(Box::new(respond())),
            Mode::Report => Ok(()),
        }
    }

    fn scan(
        &self,
        inj: &Injection,
        location: Location,
        raw: &str,
        plus: bool,
    ) -> Result<(), Refusal> {
        let mut blocked: Option<&Rule> = None;
        inj.scan(location, raw, plus, &mut |rule| match rule.mode {
            Mode::Report => {
                let _ = self.decide(
                    Mode::Report,
                    "injection",
                    &rule.id,
                    Some(location.as_str()),
                    unreachable_response,
                );
            }
            Mode::Block => {
                blocked.get_or_insert(rule);
            }
        });
        match blocked {
            Some(rule) => self.decide(Mode::Block, "injection", &rule.id, Some(location.as_str()), || {
                error(
                    StatusCode::FORBIDDEN,
                    json!({"error": "request blocked", "rule": &*rule.id, "location": location.as_str()}),
                )
            }),
            None => Ok(()),
        }
    }

    fn validation(&self, mode: Mode, details: Vec<Detail>) -> Result<(), Refusal> {
        if details.is_empty() {
            return Ok(());
        }
        self.decide(mode, "openapi", "requestValidation", None, || {
            error(
                StatusCode::BAD_REQUEST,
                json!({"error": "request validation failed", "details": details}),
            )
        })
    }

    fn payload(&self, mode: Mode, check: &'static str, issue: PayloadIssue) -> Result<(), Refusal> {
        self.decide(mode, check, issue.rule, None, || match issue.max {
            Some(max) if issue.rule == "maxBodyBytes" => payload_too_large(max),
            Some(max) => error(
                StatusCode::BAD_REQUEST,
                json!({"error": "payload limit exceeded", "limit": issue.rule, "max": max}),
            ),
            None => error(StatusCode::BAD_REQUEST, json!({"error": issue.message})),
        })
    }
}

struct PayloadIssue {
    rule: &'static str,
    max: Option<u64>,
    message: &'static str,
}

fn issue_of_json(issue: JsonIssue) -> PayloadIssue {
    match issue {
        JsonIssue::Limit(rule, max) => PayloadIssue {
            rule,
            max: Some(max),
            message: "",
        },
        JsonIssue::Malformed => PayloadIssue {
            rule: "malformed",
            max: None,
            message: "request body is not valid JSON",
        },
    }
}

fn issue_of_xml(issue: XmlIssue) -> PayloadIssue {
    match issue {
        XmlIssue::Limit(rule, max) => PayloadIssue {
            rule,
            max: Some(max),
            message: "",
        },
        XmlIssue::Dtd => PayloadIssue {
            rule: "doctype",
            max: None,
            message: "XML document type declarations (DOCTYPE, ENTITY) are not allowed",
        },
        XmlIssue::Entity => PayloadIssue {
            rule: "entity",
            max: None,
            message: "XML entity references other than the predefined ones are not allowed",
        },
        XmlIssue::Malformed => PayloadIssue {
            rule: "malformed",
            max: None,
            message: "request body is not well-formed XML",
        },
    }
}

fn payload_too_large(max: u64) -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"error": "request body too large", "max": max}),
    )
}

/// Report-mode decisions never build an answer.
fn unreachable_response() -> Response<Body> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": "internal"}),
    )
}

fn error(status: StatusCode, body: Value) -> Response<Body> {
    let mut resp = Response::new(crate::body::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `k=v&k2=v2` as raw (still encoded) pairs; a pair without `=` has an
/// empty value.
fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn decoded_query(query: Option<&str>) -> Vec<(String, String)> {
    use portcullis_model::route_filter::threat::injection::percent_decode;
    query
        .map(|q| {
            raw_pairs(q)
                .map(|(k, v)| (percent_decode(k, true), percent_decode(v, true)))
                .collect()
        })
        .unwrap_or_default()
}
