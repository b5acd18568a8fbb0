//! HTTPRoute and GRPCRoute matches -> `RequestMatch`.

use std::borrow::Cow;

use gateway_api::experimental::httproutes::{
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use gateway_api::grpcroutes::{
    GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use http::HeaderName;
use portcullis_model::{
    HeaderMatch, HeaderNameSer, PathMatch, Pattern, QueryParamMatch, RequestMatch, StringMatch,
};

/// One `matches[]` entry of either route kind.
#[derive(Debug, Clone)]
pub(crate) enum MatchSource<'a> {
    Http(Cow<'a, HttpRouteRulesMatches>),
    Grpc(Cow<'a, GrpcRouteRulesMatches>),
}

/// Compiles one match. `Err` is an UnsupportedValue message.
pub(crate) fn compile_match(m: &MatchSource<'_>) -> Result<RequestMatch, String> {
    match m {
        MatchSource::Http(m) => http_match(m),
        MatchSource::Grpc(m) => grpc_match(m),
    }
}

fn http_match(m: &HttpRouteRulesMatches) -> Result<RequestMatch, String> {
    let path = match &m.path {
        None => PathMatch::default(),
        Some(p) => {
            let value = p.value.as_deref().unwrap_or("/");
            match p
                .r#type
                .as_ref()
                .unwrap_or(&HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact => {
                    check_path(value)?;
                    PathMatch::Exact(value.to_string())
                }
                HttpRouteRulesMatchesPathType::PathPrefix => {
                    check_path(value)?;
                    PathMatch::Prefix(normalize_prefix(value))
                }
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    PathMatch::Regex(pattern("path", value)?)
                }
            }
        }
    };
    let method = match &m.method {
        None => None,
        Some(method) => Some(
            serde_json::to_value(method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| "method cannot be read".to_string())?,
        ),
    };
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let regex = matches!(
            h.r#type,
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression)
        );
        push_header(&mut headers, &h.name, &h.value, regex)?;
    }
    let mut query_params: Vec<QueryParamMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        // The spec: with several matches on one name, the first one counts.
        if query_params.iter().any(|e| e.name == q.name) {
            continue;
        }
        let value = if matches!(
            q.r#type,
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression)
        ) {
            StringMatch::Regex(pattern("query parameter", &q.value)?)
        } else {
            StringMatch::Exact(q.value.clone())
        };
        query_params.push(QueryParamMatch {
            name: q.name.clone(),
            value,
        });
    }
    // Kept in the table for every route: no growth slack.
    headers.shrink_to_fit();
    query_params.shrink_to_fit();
    Ok(RequestMatch {
        path,
        method,
        headers,
        query_params,
    })
}

/// gRPC requests are `POST /package.Service/Method`: service and method
/// matches become path matches. Exact service+method -> exact path;
/// service only -> the `/service` prefix; method only or regular
/// expressions -> a path regex.
fn grpc_match(m: &GrpcRouteRulesMatches) -> Result<RequestMatch, String> {
    let path = match &m.method {
        None => PathMatch::default(),
        Some(method) => {
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|s| !s.is_empty());
            match method
                .r#type
                .as_ref()
                .unwrap_or(&GrpcRouteRulesMatchesMethodType::Exact)
            {
                GrpcRouteRulesMatchesMethodType::Exact => {
                    for part in [service, name].into_iter().flatten() {
                        if part.contains('/') {
                            return Err(format!(
                                "gRPC service/method {part:?} must not contain '/'"
                            ));
                        }
                    }
                    match (service, name) {
                        (Some(s), Some(n)) => PathMatch::Exact(format!("/{s}/{n}")),
                        (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                        (None, Some(n)) => PathMatch::Regex(pattern(
                            "gRPC method",
                            &format!("/[^/]+/{}", regex::escape(n)),
                        )?),
                        (None, None) => {
                            return Err("gRPC method match needs a service or a method".into())
                        }
                    }
                }
                GrpcRouteRulesMatchesMethodType::RegularExpression => {
                    let s = service.unwrap_or("[^/]+");
                    let n = name.unwrap_or("[^/]+");
                    PathMatch::Regex(pattern("gRPC method", &format!("/(?:{s})/(?:{n})"))?)
                }
            }
        }
    };
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let regex = matches!(
            h.r#type,
            Some(GrpcRouteRulesMatchesHeadersType::RegularExpression)
        );
        push_header(&mut headers, &h.name, &h.value, regex)?;
    }
    headers.shrink_to_fit();
    Ok(RequestMatch {
        path,
        method: None,
        headers,
        query_params: Vec::new(),
    })
}

fn push_header(
    headers: &mut Vec<HeaderMatch>,
    name: &str,
    value: &str,
    regex: bool,
) -> Result<(), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("header name {name:?} is not valid"))?;
    // Header names are case-insensitive; the first match on a name counts.
    if headers.iter().any(|h| h.name.0 == name) {
        return Ok(());
    }
    let value = if regex {
        StringMatch::Regex(pattern("header", value)?)
    } else {
        StringMatch::Exact(value.to_string())
    };
    headers.push(HeaderMatch {
        name: HeaderNameSer(name),
        value,
    });
    Ok(())
}

fn pattern(what: &str, source: &str) -> Result<Pattern, String> {
    Pattern::new(source)
        .map_err(|e| format!("{what} regular expression {source:?} is invalid: {e}"))
}

fn check_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must start with '/'"));
    }
    Ok(())
}

/// `/foo/` and `/foo` are the same segment-aware prefix; the model stores
/// it without the trailing slash (except `/` itself).
pub(crate) fn normalize_prefix(value: &str) -> String {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}
