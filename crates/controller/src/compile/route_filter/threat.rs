//! `RouteFilter` threatProtection section -> model: limits with their
//! defaults, content-type rules, the OpenAPI document (parsed and its
//! schemas compiled here, once), and the injection rule sets (one
//! `RegexSet` per location).

mod injection;
mod openapi;

use std::sync::Arc;

use http::Method;
use portcullis_api::route_filter::threat::{self as api, ThreatMode};
use portcullis_model::route_filter::threat::{
    ContentTypeRule, JsonLimits, MediaRange, Mode, ThreatProtectionConfig, XmlLimits,
};

use super::SectionContext;

/// Largest body read for inspection unless the filter says otherwise.
const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

pub(crate) fn compile(
    spec: &api::ThreatProtectionSpec,
    ctx: &SectionContext<'_>,
) -> Result<ThreatProtectionConfig, String> {
    let default_mode = mode(spec.mode, Mode::Block);
    let max_body_bytes = spec.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err("maxBodyBytes must be positive".into());
    }
    let json = spec.json.as_ref().map(|j| JsonLimits {
        mode: mode(j.mode, default_mode),
        max_body_bytes: j
            .max_body_bytes
            .unwrap_or(max_body_bytes)
            .min(max_body_bytes),
        max_depth: j.max_depth.unwrap_or(32),
        max_fields_per_object: j.max_fields_per_object.unwrap_or(256),
        max_array_length: j.max_array_length.unwrap_or(10_000),
        max_string_length: j.max_string_length.unwrap_or(65_536),
        max_total_keys: j.max_total_keys.unwrap_or(10_000),
    });
    let xml = spec.xml.as_ref().map(|x| XmlLimits {
        mode: mode(x.mode, default_mode),
        max_body_bytes: x
            .max_body_bytes
            .unwrap_or(max_body_bytes)
            .min(max_body_bytes),
        max_depth: x.max_depth.unwrap_or(32),
        max_elements: x.max_elements.unwrap_or(10_000),
        max_attributes_per_element: x.max_attributes_per_element.unwrap_or(32),
        max_text_length: x.max_text_length.unwrap_or(65_536),
    });
    let content_types = spec
        .content_types
        .iter()
        .enumerate()
        .map(|(i, r)| {
            content_type_rule(r, default_mode).map_err(|e| format!("contentTypes[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let open_api = spec
        .open_api
        .as_ref()
        .map(|o| openapi::compile(o, mode(o.mode, default_mode), ctx))
        .transpose()
        .map_err(|e| format!("openApi: {e}"))?
        .map(Arc::new);
    let injection = spec
        .injection
        .as_ref()
        .map(|i| injection::compile(i, mode(i.mode, default_mode)))
        .transpose()
        .map_err(|e| format!("injection: {e}"))?
        .map(Arc::new);
    Ok(ThreatProtectionConfig {
        max_body_bytes,
        json,
        xml,
        content_types,
        open_api,
        injection,
    })
}

pub(super) fn mode(spec: Option<ThreatMode>, default: Mode) -> Mode {
    match spec {
        None => default,
        Some(ThreatMode::Block) => Mode::Block,
        Some(ThreatMode::Report) => Mode::Report,
    }
}

fn content_type_rule(
    rule: &api::ContentTypeRule,
    default: Mode,
) -> Result<ContentTypeRule, String> {
    if rule.methods.is_empty() || rule.allowed.is_empty() {
        return Err("methods and allowed must not be empty".into());
    }
    let methods = rule
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("invalid method {m:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allowed = rule
        .allowed
        .iter()
        .map(|m| media_range(m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContentTypeRule {
        mode: mode(rule.mode, default),
        methods,
        allowed,
    })
}

/// `application/json`, `text/*`, `application/*+json` or `*/*`.
pub(super) fn media_range(text: &str) -> Result<MediaRange, String> {
    let m = portcullis_model::route_filter::threat::media_type(text);
    let (ty, sub) = m
        .split_once('/')
        .filter(|(t, s)| !t.is_empty() && !s.is_empty())
        .ok_or_else(|| format!("invalid media type {text:?}"))?;
    Ok(match (ty, sub) {
        ("*", "*") => MediaRange::Any,
        (_, "*") => MediaRange::Type(ty.to_string()),
        (_, s) if s.starts_with("*+") => MediaRange::Suffix(ty.to_string(), s[1..].to_string()),
        _ if ty == "*" || sub.contains('*') => return Err(format!("invalid media type {text:?}")),
        _ => MediaRange::Exact(m.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ranges_parse() {
        assert_eq!(media_range("*/*").unwrap(), MediaRange::Any);
        assert_eq!(
            media_range("text/*").unwrap(),
            MediaRange::Type("text".into())
        );
        assert_eq!(
            media_range("application/*+json").unwrap(),
            MediaRange::Suffix("application".into(), "+json".into())
        );
        assert_eq!(
            media_range("Application/JSON; charset=utf-8").unwrap(),
            MediaRange::Exact("application/json".into())
        );
        assert!(media_range("json").is_err());
        assert!(media_range("*/json").is_err());
    }
}
