//! `RouteFilter` versioning section -> model: dates parsed and the header
//! values and 410 body built once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use portcullis_api::route_filter::versioning::VersioningSpec;
use portcullis_model::route_filter::versioning::{Retirement, VersioningConfig};
use portcullis_model::HeaderValueSer;

use super::SectionContext;

pub(crate) fn compile(
    spec: &VersioningSpec,
    _ctx: &SectionContext<'_>,
) -> Result<VersioningConfig, String> {
    let header = |field: &str, v: String| {
        HeaderValue::from_str(&v)
            .map(HeaderValueSer)
            .map_err(|_| format!("{field}: {v:?} cannot be sent in a header"))
    };
    let since = spec
        .deprecated_since
        .as_deref()
        .map(|d| date("deprecatedSince", d))
        .transpose()?;
    let deprecation = match since {
        Some(t) => Some(header("deprecatedSince", format!("@{}", epoch(t)))?),
        None if spec.deprecated => Some(HeaderValueSer(HeaderValue::from_static("true"))),
        None => None,
    };
    let sunset = spec
        .sunset
        .as_deref()
        .map(|d| date("sunset", d))
        .transpose()?;
    let mut links = Vec::new();
    for (field, uri, rel) in [
        ("successor", &spec.successor, "rel=\"successor-version\""),
        (
            "documentation",
            &spec.documentation,
            "rel=\"deprecation\"; type=\"text/html\"",
        ),
    ] {
        if let Some(uri) = uri {
            if uri.is_empty() || uri.contains(['<', '>', ' ', '"']) {
                return Err(format!("{field}: {uri:?} is not a URI reference"));
            }
            links.push(header(field, format!("<{uri}>; {rel}"))?);
        }
    }
    let retired = match (spec.retired, &spec.retire_at) {
        (true, _) => Retirement::Now,
        (false, Some(at)) => Retirement::At(date("retireAt", at)?),
        (false, None) => Retirement::Never,
    };
    let detail = match &spec.successor {
        Some(s) => format!("This API version has been retired; use {s} instead."),
        None => "This API version has been retired.".to_string(),
    };
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": "Gone",
        "status": 410,
        "detail": detail,
    });
    if let Some(s) = &spec.successor {
        body["successor"] = serde_json::Value::String(s.clone());
    }
    Ok(VersioningConfig {
        deprecation,
        sunset: sunset
            .map(|t| header("sunset", httpdate::fmt_http_date(t)))
            .transpose()?,
        links,
        retired,
        gone_body: body.to_string(),
    })
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An RFC 3339 timestamp (`2026-06-30T00:00:00Z`, offsets and fractions
/// allowed) or an HTTP-date.
fn date(field: &str, v: &str) -> Result<SystemTime, String> {
    httpdate::parse_http_date(v)
        .ok()
        .or_else(|| rfc3339(v))
        .ok_or_else(|| {
            format!("{field}: {v:?} is not an RFC 3339 timestamp (e.g. 2026-06-30T00:00:00Z)")
        })
}

fn rfc3339(v: &str) -> Option<SystemTime> {
    let b = v.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (year, month, day) = (num(&v[0..4])?, num(&v[5..7])?, num(&v[8..10])?);
    let (hour, minute, second) = (num(&v[11..13])?, num(&v[14..16])?, num(&v[17..19])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &v[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (num(&rest[1..3])? * 3600 + num(&rest[4..6])? * 60)
        }
        _ => return None,
    };
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(spec: VersioningSpec) -> Result<VersioningConfig, String> {
        let snapshot = crate::snapshot::Snapshot::default();
        let index = crate::compile::index::Index::new(&snapshot);
        compile(
            &spec,
            &SectionContext {
                index: &index,
                namespace: "default",
            },
        )
    }

    #[test]
    fn dates_parse_as_rfc3339_or_http_dates() {
        let at = |s| date("d", s).map(epoch);
        assert_eq!(at("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(at("2026-06-30T00:00:00Z"), Ok(1_782_777_600));
        assert_eq!(at("2026-06-30T02:00:00.250+02:00"), Ok(1_782_777_600));
        assert_eq!(at("Tue, 30 Jun 2026 00:00:00 GMT"), Ok(1_782_777_600));
        assert!(at("2026-13-01T00:00:00Z").is_err());
        assert!(at("next tuesday").is_err());
    }

    #[test]
    fn headers_are_built_once() {
        let c = compiled(VersioningSpec {
            deprecated_since: Some("2026-01-01T00:00:00Z".into()),
            sunset: Some("2026-06-30T00:00:00Z".into()),
            successor: Some("/v2/".into()),
            documentation: Some("https://docs.example.com/v1".into()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            c.deprecation.as_ref().map(|v| v.0.as_bytes()),
            Some(&b"@1767225600"[..])
        );
        assert_eq!(
            c.sunset.as_ref().map(|v| v.0.as_bytes()),
            Some(&b"Tue, 30 Jun 2026 00:00:00 GMT"[..])
        );
        assert_eq!(c.links[0].0, "</v2/>; rel=\"successor-version\"");
        assert_eq!(
            c.links[1].0,
            "<https://docs.example.com/v1>; rel=\"deprecation\"; type=\"text/html\""
        );
        assert!(matches!(c.retired, Retirement::Never));
        assert!(compiled(VersioningSpec {
            successor: Some("/v2> ; rel=x".into()),
            ..Default::default()
        })
        .is_err());
    }
}
