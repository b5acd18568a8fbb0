//! HTTPRoute / GRPCRoute filters -> `model::Filter`.

use gateway_api::experimental::httproutes::{
    HttpRouteRulesFilters, HttpRouteRulesFiltersRequestHeaderModifier,
    HttpRouteRulesFiltersRequestRedirectPathType, HttpRouteRulesFiltersRequestRedirectScheme,
    HttpRouteRulesFiltersType, HttpRouteRulesFiltersUrlRewritePathType,
};
use http::{HeaderName, HeaderValue};
use portcullis_model::{
    Cors, Filter, HeaderModifier, HeaderNameSer, HeaderValueSer, Mirror, PathModifier, Redirect,
    UrlRewrite,
};

use super::backends::{self, BackendRefSpec, RefProblem, Referrer};
use super::index::Index;
use super::route_filter;
use crate::status::reasons;

/// What the filters of a rule (or of one backendRef) compile to.
#[derive(Debug, Default)]
pub(crate) struct CompiledFilters {
    pub filters: Vec<Filter>,
    /// Mirror backends or extension filters that cannot be resolved.
    pub ref_problems: Vec<RefProblem>,
    /// An ExtensionRef we do not implement, or a RouteFilter that is
    /// missing or invalid: the spec says requests must not skip it, so the
    /// rule answers 500.
    pub unresolved_extension: bool,
}

/// Context the filters are validated in.
pub(crate) struct FilterContext<'a> {
    pub index: &'a Index<'a>,
    pub referrer: Referrer<'a>,
    /// Every match of the rule is a `PathPrefix` (required by
    /// `ReplacePrefixMatch`).
    pub all_matches_are_prefix: bool,
}

/// Compiles filters in order. `Err` is an UnsupportedValue message: the
/// whole route is then not accepted.
pub(crate) fn compile_filters(
    ctx: &FilterContext<'_>,
    filters: &[HttpRouteRulesFilters],
) -> Result<CompiledFilters, String> {
    check_repetition(filters)?;
    let mut out = CompiledFilters::default();
    for (i, f) in filters.iter().enumerate() {
        let missing = || format!("filters[{i}] has type {:?} but no matching field", f.r#type);
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => {
                let m = f.request_header_modifier.as_ref().ok_or_else(missing)?;
                out.filters
                    .push(Filter::RequestHeaderModifier(header_modifier(m)?));
            }
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                let m = f.response_header_modifier.as_ref().ok_or_else(missing)?;
                // Same JSON shape as the request modifier.
                let m: HttpRouteRulesFiltersRequestHeaderModifier = reshape(m)?;
                out.filters
                    .push(Filter::ResponseHeaderModifier(header_modifier(&m)?));
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                let r = f.request_redirect.as_ref().ok_or_else(missing)?;
                let status_code = match r.status_code.unwrap_or(302) {
                    code @ (301 | 302 | 303 | 307 | 308) => code as u16,
                    other => {
                        return Err(format!(
                            "redirect statusCode {other} is not one of 301, 302, 303, 307, 308"
                        ))
                    }
                };
                let port = match r.port {
                    None => None,
                    Some(p) => Some(
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| format!("redirect port {p} is not a valid port"))?,
                    ),
                };
                let scheme = r.scheme.as_ref().map(|s| match s {
                    HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".to_string(),
                    HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".to_string(),
                });
                let path = match &r.path {
                    None => None,
                    Some(p) => Some(path_modifier(
                        ctx,
                        matches!(
                            p.r#type,
                            HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch
                        ),
                        p.replace_full_path.as_deref(),
                        p.replace_prefix_match.as_deref(),
                    )?),
                };
                out.filters.push(Filter::RequestRedirect(Redirect {
                    scheme,
                    hostname: r.hostname.as_ref().map(|h| h.to_ascii_lowercase()),
                    path,
                    port,
                    status_code,
                }));
            }
            HttpRouteRulesFiltersType::UrlRewrite => {
                let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
                let path = match &r.path {
                    None => None,
                    Some(p) => Some(path_modifier(
                        ctx,
                        matches!(
                            p.r#type,
                            HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch
                        ),
                        p.replace_full_path.as_deref(),
                        p.replace_prefix_match.as_deref(),
                    )?),
                };
                out.filters.push(Filter::UrlRewrite(UrlRewrite {
                    hostname: r.hostname.clone(),
                    path,
                }));
            }
            HttpRouteRulesFiltersType::RequestMirror => {
                let m = f.request_mirror.as_ref().ok_or_else(missing)?;
                let (numerator, denominator) = match (&m.fraction, m.percent) {
                    (Some(_), Some(_)) => {
                        return Err("requestMirror sets both percent and fraction; use one".into())
                    }
                    (Some(fr), None) => (fr.numerator, fr.denominator.unwrap_or(100)),
                    (None, Some(p)) => (p, 100),
                    (None, None) => (100, 100),
                };
                if denominator <= 0 || numerator < 0 || numerator > denominator {
                    return Err(format!(
                        "requestMirror fraction {numerator}/{denominator} must be between 0 and 1"
                    ));
                }
                let b = &m.backend_ref;
                let spec = BackendRefSpec {
                    group: b.group.as_deref(),
                    kind: b.kind.as_deref(),
                    namespace: b.namespace.as_deref(),
                    name: &b.name,
                    port: b.port,
                };
                match backends::resolve(ctx.index, &ctx.referrer, &spec) {
                    Ok(backend) => out.filters.push(Filter::RequestMirror(Mirror {
                        backend,
                        numerator: numerator as u32,
                        denominator: denominator as u32,
                    })),
                    // A mirror that cannot be resolved is left out: the
                    // primary traffic must not suffer for it.
                    Err(p) => out.ref_problems.push(RefProblem {
                        reason: p.reason,
                        message: format!("requestMirror: {}", p.message),
                    }),
                }
            }
            HttpRouteRulesFiltersType::Cors => {
                let c = f.cors.as_ref().ok_or_else(missing)?;
                out.filters.push(Filter::Cors(Cors {
                    allow_origins: c.allow_origins.clone().unwrap_or_default(),
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: c.allow_headers.clone().unwrap_or_default(),
                    expose_headers: c.expose_headers.clone().unwrap_or_default(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    // The spec's default is 5 seconds.
                    max_age_seconds: Some(c.max_age.map_or(5, |s| s.max(0) as u32)),
                }));
            }
            HttpRouteRulesFiltersType::ExtensionRef => {
                let (group, kind, name) = f
                    .extension_ref
                    .as_ref()
                    .map(|e| (e.group.as_str(), e.kind.as_str(), e.name.as_str()))
                    .unwrap_or(("", "", ""));
                let ours = group == portcullis_api::parameters::GROUP
                    && kind == portcullis_api::route_filter::KIND;
                let resolved = if ours {
                    route_filter::resolve(ctx.index, ctx.referrer.namespace, name).map_err(|u| {
                        RefProblem {
                            reason: u.reason,
                            message: u.message,
                        }
                    })
                } else {
                    Err(RefProblem {
                        reason: reasons::INVALID_KIND,
                        message: format!(
                            "extensionRef {group}/{kind} {name} is not supported by Portcullis; requests to this rule get 500"
                        ),
                    })
                };
                match resolved {
                    Ok(config) => out.filters.push(Filter::RouteFilter(config)),
                    Err(problem) => {
                        out.unresolved_extension = true;
                        out.ref_problems.push(problem);
                    }
                }
            }
            // Experimental (GEP-1494). Not accepting the route keeps its
            // requests from reaching the backend unauthenticated.
            HttpRouteRulesFiltersType::ExternalAuth => {
                return Err(format!(
                    "filters[{i}]: ExternalAuth is not supported by Portcullis (authenticate with an AuthPolicy)"
                ));
            }
        }
    }
    Ok(out)
}

/// The spec allows each filter type once per rule, except RequestMirror
/// and ExtensionRef; redirect and rewrite exclude each other.
fn check_repetition(filters: &[HttpRouteRulesFilters]) -> Result<(), String> {
    use HttpRouteRulesFiltersType as T;
    let count = |t: T| filters.iter().filter(|f| f.r#type == t).count();
    for (t, name) in [
        (T::RequestHeaderModifier, "RequestHeaderModifier"),
        (T::ResponseHeaderModifier, "ResponseHeaderModifier"),
        (T::RequestRedirect, "RequestRedirect"),
        (T::UrlRewrite, "URLRewrite"),
        (T::Cors, "CORS"),
    ] {
        if count(t) > 1 {
            return Err(format!("filter {name} appears more than once in one rule"));
        }
    }
    if count(T::RequestRedirect) > 0 && count(T::UrlRewrite) > 0 {
        return Err("RequestRedirect and URLRewrite cannot be used in the same rule".into());
    }
    Ok(())
}

fn path_modifier(
    ctx: &FilterContext<'_>,
    prefix: bool,
    full: Option<&str>,
    prefix_value: Option<&str>,
) -> Result<PathModifier, String> {
    if prefix {
        if !ctx.all_matches_are_prefix {
            return Err(
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match".into(),
            );
        }
        let v = prefix_value.ok_or("ReplacePrefixMatch needs replacePrefixMatch")?;
        Ok(PathModifier::ReplacePrefixMatch(v.to_string()))
    } else {
        let v = full.ok_or("ReplaceFullPath needs replaceFullPath")?;
        Ok(PathModifier::ReplaceFullPath(v.to_string()))
    }
}

fn header_modifier(
    m: &HttpRouteRulesFiltersRequestHeaderModifier,
) -> Result<HeaderModifier, String> {
    let pair = |name: &str, value: &str| -> Result<(HeaderNameSer, HeaderValueSer), String> {
        Ok((
            header_name(name)?,
            HeaderValueSer(
                HeaderValue::from_str(value)
                    .map_err(|_| format!("header value {value:?} is not valid"))?,
            ),
        ))
    };
    Ok(HeaderModifier {
        set: m
            .set
            .iter()
            .flatten()
            .map(|h| pair(&h.name, &h.value))
            .collect::<Result<_, _>>()?,
        add: m
            .add
            .iter()
            .flatten()
            .map(|h| pair(&h.name, &h.value))
            .collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .flatten()
            .map(|n| header_name(n))
            .collect::<Result<_, _>>()?,
    })
}

fn header_name(name: &str) -> Result<HeaderNameSer, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map(HeaderNameSer)
        .map_err(|_| format!("header name {name:?} is not valid"))
}

/// Converts between generated types that share one JSON shape.
pub(crate) fn reshape<A: serde::Serialize, B: serde::de::DeserializeOwned>(
    a: &A,
) -> Result<B, String> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("cannot read filter: {e}"))
}
