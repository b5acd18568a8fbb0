//! RouteFilter response masking: fields of JSON responses by pointer,
//! values by pattern (payment cards with a Luhn check, IBANs with their
//! mod-97 check, e-mail addresses, US SSNs, custom regexes) — and, when
//! configured, patterns in text responses.
//!
//! It fails closed: a body it should mask but cannot — over the size limit
//! (unless `overLimit: PassThrough`), in a Content-Encoding other than
//! gzip or deflate, not parseable as the JSON its Content-Type claims — is
//! answered 502, never relayed. To keep backends from choosing an encoding
//! the gateway cannot decode, the request's Accept-Encoding is narrowed to
//! gzip, deflate and identity on masked routes. Responses of other content
//! types stream through untouched.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use portcullis_model::route_filter::masking::{MaskAction, MaskingConfig, MatchCheck, PatternMask};
use serde_json::Value;

use super::body_buffer::{self, Buffered};
use super::compression;
use super::ClientRequest;
use crate::body::{self, Body};
use crate::proxy::error_response;

/// Narrows the request's Accept-Encoding to codings masking can decode.
pub(crate) fn request(_config: &MaskingConfig, headers: &mut HeaderMap) {
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        return;
    }
    match compression::decodable_accept_encoding(headers)
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        Some(v) => {
            headers.insert(header::ACCEPT_ENCODING, v);
        }
        None => {
            headers.remove(header::ACCEPT_ENCODING);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Json,
    Text,
}

/// Redacts the response before it leaves the gateway.
pub(crate) async fn response(
    config: &MaskingConfig,
    filter: &str,
    client: &ClientRequest,
    resp: Response<Body>,
) -> Response<Body> {
    let status = resp.status();
    if client.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return resp;
    }
    let kind = if body_buffer::is_json(resp.headers()) {
        Kind::Json
    } else if config.text_bodies && !config.patterns.is_empty() && is_text(resp.headers()) {
        Kind::Text
    } else {
        return resp;
    };
    let refuse = |why: &str| {
        tracing::warn!(
            route_filter = filter,
            reason = why,
            "response cannot be masked: 502"
        );
        error_response(
            StatusCode::BAD_GATEWAY,
            "upstream response cannot be masked",
        )
    };
    let coding = match compression::coding(resp.headers()) {
        Ok(c) => c,
        Err(unsupported) => {
            return refuse(&format!("unsupported Content-Encoding {unsupported:?}"));
        }
    };
    let (mut parts, body) = resp.into_parts();
    let limit = config.max_body_bytes;
    let over_limit = |buffered: Buffered, parts: http::response::Parts| {
        if config.reject_over_limit {
            refuse(&format!("body over maxBodyBytes ({limit})"))
        } else {
            tracing::debug!(
                route_filter = filter,
                "body over maxBodyBytes: relayed unmasked (overLimit: PassThrough)"
            );
            Response::from_parts(parts, buffered.into_body())
        }
    };
    let raw = match body_buffer::read(&parts.headers, body, limit).await {
        Ok(Buffered::Complete(bytes)) => bytes,
        Ok(over) => return over_limit(over, parts),
        Err(e) => {
            tracing::warn!(route_filter = filter, error = %e, "reading the upstream response failed");
            return error_response(StatusCode::BAD_GATEWAY, "upstream response body failed");
        }
    };
    let plain = match compression::decode(coding, &raw, limit) {
        Ok(Some(plain)) => plain,
        Ok(None) => return over_limit(Buffered::Complete(raw), parts),
        Err(e) => return refuse(&format!("invalid {coding:?} body: {e}")),
    };
    let masked = match kind {
        Kind::Json => mask_json_bytes(config, &plain),
        Kind::Text => match std::str::from_utf8(&plain) {
            Ok(text) => Ok(match mask_text(&config.patterns, text) {
                Cow::Borrowed(_) => None,
                Cow::Owned(t) => Some(t.into_bytes()),
            }),
            Err(_) => Err("text body is not UTF-8".to_string()),
        },
    };
    let masked = match masked {
        Ok(Some(masked)) => masked,
        // Nothing to mask: the backend's bytes, as they were.
        Ok(None) => return Response::from_parts(parts, body::full(raw)),
        Err(why) => return refuse(&why),
    };
    let encoded = match compression::encode(coding, &masked) {
        Ok(e) => e,
        Err(e) => return refuse(&format!("re-encoding failed: {e}")),
    };
    body_buffer::body_replaced(&mut parts.headers, encoded.len());
    Response::from_parts(parts, body::full(Bytes::from(encoded)))
}

fn is_text(headers: &HeaderMap) -> bool {
    body_buffer::media_type(headers).is_some_and(|m| m.starts_with("text/"))
        || body_buffer::is_xml(headers)
}

/// The masked document, `None` when nothing was masked.
fn mask_json_bytes(config: &MaskingConfig, bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    if !mask_json(config, &mut doc) {
        return Ok(None);
    }
    serde_json::to_vec(&doc)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Masks `doc` in place; true when something changed.
pub(crate) fn mask_json(config: &MaskingConfig, doc: &mut Value) -> bool {
    let mut changed = false;
    for field in &config.fields {
        changed |= apply_field(doc, &field.pointer.tokens, &field.action);
    }
    if !config.patterns.is_empty() {
        changed |= mask_values(doc, &config.patterns);
    }
    changed
}

fn apply_field(node: &mut Value, tokens: &[String], action: &MaskAction) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return false;
    };
    let wildcard = token == "*";
    if !rest.is_empty() {
        let mut changed = false;
        match node {
            Value::Object(map) if wildcard => {
                for v in map.values_mut() {
                    changed |= apply_field(v, rest, action);
                }
            }
            Value::Object(map) => {
                if let Some(v) = map.get_mut(token.as_str()) {
                    changed |= apply_field(v, rest, action);
                }
            }
            Value::Array(items) if wildcard => {
                for v in items.iter_mut() {
                    changed |= apply_field(v, rest, action);
                }
            }
            Value::Array(items) => {
                if let Some(v) = array_index(token).and_then(|i| items.get_mut(i)) {
                    changed |= apply_field(v, rest, action);
                }
            }
            _ => {}
        }
        return changed;
    }
    match (node, action) {
        (Value::Object(map), MaskAction::Remove) if wildcard => {
            let changed = !map.is_empty();
            map.clear();
            changed
        }
        (Value::Object(map), MaskAction::Remove) => map.remove(token.as_str()).is_some(),
        (Value::Array(items), MaskAction::Remove) if wildcard => {
            let changed = !items.is_empty();
            items.clear();
            changed
        }
        (Value::Array(items), MaskAction::Remove) => match array_index(token) {
            Some(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        (Value::Object(map), action) if wildcard => {
            map.values_mut().fold(false, |c, v| redact(v, action) | c)
        }
        (Value::Object(map), action) => map
            .get_mut(token.as_str())
            .is_some_and(|v| redact(v, action)),
        (Value::Array(items), action) if wildcard => {
            items.iter_mut().fold(false, |c, v| redact(v, action) | c)
        }
        (Value::Array(items), action) => array_index(token)
            .and_then(|i| items.get_mut(i))
            .is_some_and(|v| redact(v, action)),
        _ => false,
    }
}

fn array_index(token: &str) -> Option<usize> {
    if token.len() > 1 && token.starts_with('0') {
        return None;
    }
    token.parse().ok()
}

/// Replace or mask a whole value (`Remove` is done by the parent). Masking
/// an object or array masks every scalar inside it.
fn redact(value: &mut Value, action: &MaskAction) -> bool {
    match action {
        MaskAction::Remove => false,
        MaskAction::Replace(text) => {
            *value = Value::String(text.clone());
            true
        }
        MaskAction::Mask { .. } => match value {
            Value::Null => false,
            Value::Object(map) => map.values_mut().fold(false, |c, v| redact(v, action) | c),
            Value::Array(items) => items.iter_mut().fold(false, |c, v| redact(v, action) | c),
            Value::String(s) => {
                *value = Value::String(masked_text(s, action));
                true
            }
            other => {
                let text = other.to_string();
                *other = Value::String(masked_text(&text, action));
                true
            }
        },
    }
}

/// What `action` makes of a matched text.
fn masked_text(text: &str, action: &MaskAction) -> String {
    match action {
        MaskAction::Remove => String::new(),
        MaskAction::Replace(r) => r.clone(),
        MaskAction::Mask {
            keep_last,
            character,
        } => {
            let count = text.chars().count();
            let hidden = count.saturating_sub(*keep_last);
            let mut out = String::with_capacity(text.len());
            for (i, c) in text.chars().enumerate() {
                out.push(if i < hidden { *character } else { c });
            }
            out
        }
    }
}

/// Applies the patterns to every string and number of the document.
fn mask_values(value: &mut Value, patterns: &[PatternMask]) -> bool {
    match value {
        Value::String(s) => match mask_text(patterns, s) {
            Cow::Owned(masked) => {
                *s = masked;
                true
            }
            Cow::Borrowed(_) => false,
        },
        Value::Number(n) => {
            let text = n.to_string();
            match mask_text(patterns, &text) {
                Cow::Owned(masked) => {
                    *value = Value::String(masked);
                    true
                }
                Cow::Borrowed(_) => false,
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |c, v| mask_values(v, patterns) | c),
        Value::Object(map) => map
            .values_mut()
            .fold(false, |c, v| mask_values(v, patterns) | c),
        Value::Null | Value::Bool(_) => false,
    }
}

/// Applies each pattern in turn to `text`.
pub(crate) fn mask_text<'a>(patterns: &[PatternMask], text: &'a str) -> Cow<'a, str> {
    let mut current = Cow::Borrowed(text);
    for p in patterns {
        let mut out: Option<String> = None;
        let mut copied = 0;
        for m in p.pattern.regex().find_iter(&current) {
            if !passes(p.check, m.as_str()) {
                continue;
            }
            let o = out.get_or_insert_with(|| String::with_capacity(current.len()));
            o.push_str(&current[copied..m.start()]);
            o.push_str(&masked_text(m.as_str(), &p.action));
            copied = m.end();
        }
        if let Some(mut o) = out {
            o.push_str(&current[copied..]);
            current = Cow::Owned(o);
        }
    }
    current
}

fn passes(check: MatchCheck, candidate: &str) -> bool {
    match check {
        MatchCheck::None => true,
        MatchCheck::Luhn => luhn(candidate),
        MatchCheck::Iban => iban(candidate),
        MatchCheck::UsSsn => us_ssn(candidate),
    }
}

/// 13-19 digits (separators ignored) with a valid Luhn check digit.
fn luhn(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616: country, check digits, BBAN; mod 97 of the rearranged
/// number is 1.
fn iban(candidate: &str) -> bool {
    let compact: Vec<char> = candidate.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let rearranged = compact[4..].iter().chain(&compact[..4]);
    let mut remainder: u32 = 0;
    for c in rearranged {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// `AAA-GG-SSSS`, excluding areas 000, 666 and 900-999, group 00 and
/// serial 0000 (never issued).
fn us_ssn(candidate: &str) -> bool {
    let mut parts = candidate.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::route_filter::masking::SearchPattern;

    fn pattern(source: &str, check: MatchCheck, action: MaskAction) -> PatternMask {
        PatternMask {
            pattern: SearchPattern::new(source).unwrap(),
            check,
            action,
        }
    }

    #[test]
    fn checksums() {
        assert!(luhn("4111 1111 1111 1111"));
        assert!(luhn("4111-1111-1111-1111"));
        assert!(!luhn("4111 1111 1111 1112"));
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(iban("GB82WEST12345698765432"));
        assert!(!iban("GB82WEST12345698765433"));
        assert!(us_ssn("123-45-6789"));
        assert!(!us_ssn("666-45-6789"));
        assert!(!us_ssn("923-45-6789"));
        assert!(!us_ssn("123-00-6789"));
    }

    #[test]
    fn text_masking_keeps_last_characters() {
        let p = [pattern(
            r"\b\d(?:[ -]?\d){12,18}\b",
            MatchCheck::Luhn,
            MaskAction::Mask {
                keep_last: 4,
                character: '*',
            },
        )];
        assert_eq!(
            mask_text(&p, "card 4111111111111111 or 4111111111111112"),
            "card ************1111 or 4111111111111112"
        );
        assert!(matches!(mask_text(&p, "nothing"), Cow::Borrowed(_)));
    }
}
#[cfg(test)]
mod field_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcard_pointers_reach_array_elements() {
        let mut doc = json!({"headers": {"x-api-key": ["s3cr3t"], "other": ["x"]}});
        let tokens: Vec<String> = ["headers", "x-api-key", "*"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(apply_field(
            &mut doc,
            &tokens,
            &MaskAction::Replace("[key]".into())
        ));
        assert_eq!(
            doc,
            json!({"headers": {"x-api-key": ["[key]"], "other": ["x"]}})
        );
    }
}
