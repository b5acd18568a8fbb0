//! `RouteFilter` transform section -> model: templates parsed, static
//! header values and names validated, JSON pointers split, limits resolved.

use http::{HeaderName, HeaderValue};
use portcullis_api::route_filter::transform as api;
use portcullis_model::route_filter::json_pointer::JsonPointer;
use portcullis_model::route_filter::transform::{
    BodyFormat, Conversion, HeaderTemplate, JsonEdit, JsonValue, MessageTransform, TransformConfig,
};

use super::template;
use super::SectionContext;

pub(crate) const DEFAULT_MAX_BODY: u64 = 1 << 20;
pub(crate) const MAX_MAX_BODY: u64 = 64 << 20;
const DEFAULT_MAX_DEPTH: u32 = 64;
const MAX_MAX_DEPTH: u32 = 512;

pub(crate) fn compile(
    spec: &api::TransformSpec,
    _ctx: &SectionContext<'_>,
) -> Result<TransformConfig, String> {
    let max_body = spec.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
    if max_body == 0 || max_body > MAX_MAX_BODY {
        return Err(format!(
            "maxBodyBytes must be between 1 and {MAX_MAX_BODY}, got {max_body}"
        ));
    }
    let max_depth = spec.max_depth.unwrap_or(DEFAULT_MAX_DEPTH);
    if max_depth == 0 || max_depth > MAX_MAX_DEPTH {
        return Err(format!(
            "maxDepth must be between 1 and {MAX_MAX_DEPTH}, got {max_depth}"
        ));
    }
    let direction = |spec: &Option<api::MessageTransformSpec>, name: &str| {
        spec.as_ref()
            .map(message)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("{name}: {e}"))
    };
    Ok(TransformConfig {
        request: direction(&spec.request, "request")?,
        response: direction(&spec.response, "response")?,
        skip_header_on_missing: spec.missing_variable == Some(api::MissingVariable::SkipHeader),
        // Bounded by MAX_MAX_BODY above: fits any usize of 32 bits or more.
        max_body_bytes: max_body as usize,
        reject_response_over_limit: spec.response_over_limit == Some(api::OverLimitAction::Reject),
        max_depth: max_depth as usize,
        grpc_web: spec.grpc_web.is_some(),
    })
}

fn message(spec: &api::MessageTransformSpec) -> Result<MessageTransform, String> {
    let mut out = MessageTransform::default();
    if let Some(h) = &spec.headers {
        out.remove_headers = h
            .remove
            .iter()
            .map(|n| header_name(n.as_str()))
            .collect::<Result<_, _>>()?;
        out.set_headers = h
            .set
            .iter()
            .map(header_template)
            .collect::<Result<_, _>>()?;
        out.add_headers = h
            .add
            .iter()
            .map(header_template)
            .collect::<Result<_, _>>()?;
    }
    out.json = spec
        .json
        .iter()
        .enumerate()
        .map(|(i, e)| json_edit(e).map_err(|m| format!("json[{i}]: {m}")))
        .collect::<Result<_, _>>()?;
    if let Some(c) = &spec.convert {
        let format = |f: api::BodyFormat| match f {
            api::BodyFormat::Json => BodyFormat::Json,
            api::BodyFormat::Xml => BodyFormat::Xml,
        };
        if c.from == c.to {
            return Err("convert: from and to must differ".into());
        }
        if let Some(root) = &c.root_element {
            if !is_xml_name(root) {
                return Err(format!("convert: rootElement {root:?} is not an XML name"));
            }
        }
        out.convert = Some(Conversion {
            from: format(c.from),
            to: format(c.to),
            root_element: c.root_element.clone(),
        });
    }
    Ok(out)
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
}

fn header_template(spec: &api::HeaderTemplateSpec) -> Result<HeaderTemplate, String> {
    let name = header_name(&spec.name)?;
    let value = template::parse(&spec.value)?;
    // Static parts must be valid header text; a variable's value is
    // checked when rendered (and the header skipped if invalid).
    for s in &value.segments {
        if let portcullis_model::route_filter::template::Segment::Literal(l) = s {
            if HeaderValue::from_bytes(l.as_bytes()).is_err() {
                return Err(format!(
                    "header {}: {:?} is not a valid header value",
                    spec.name, spec.value
                ));
            }
        }
    }
    Ok(HeaderTemplate { name, value })
}

fn json_edit(spec: &api::JsonEditSpec) -> Result<JsonEdit, String> {
    let path = JsonPointer::parse(&spec.path)?;
    match spec.op {
        api::JsonEditOp::Add => {
            if path.tokens.is_empty() {
                return Err("add: path must name a member, not the whole document".into());
            }
            let value = match (&spec.value, &spec.template) {
                (Some(v), None) => JsonValue::Literal(v.clone()),
                (None, Some(t)) => JsonValue::Template(template::parse(t)?),
                _ => return Err("add needs exactly one of value and template".into()),
            };
            Ok(JsonEdit::Add { path, value })
        }
        api::JsonEditOp::Remove => {
            if path.tokens.is_empty() {
                return Err("remove: path must name a member, not the whole document".into());
            }
            Ok(JsonEdit::Remove { path })
        }
        api::JsonEditOp::Move => {
            let from = spec
                .from
                .as_deref()
                .ok_or("move needs from")
                .and_then(|f| {
                    JsonPointer::parse(f).map_err(|_| "move: from is not a JSON pointer")
                })?;
            if from.tokens.is_empty() || path.tokens.is_empty() {
                return Err("move: from and path must name members".into());
            }
            if path.tokens.starts_with(&from.tokens) {
                return Err("move: path must not be inside from".into());
            }
            Ok(JsonEdit::Move { from, path })
        }
    }
}

/// XML 1.0 names, ASCII subset plus any non-ASCII letter: a letter, `_` or
/// `:` first, then also digits, `-` and `.`.
pub(crate) fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
}
