//! RouteFilter versioning: deprecation headers (RFC 9745 `Deprecation`,
//! RFC 8594 `Sunset`, `Link` to the successor and the deprecation notice)
//! on every answer of a deprecated version, and 410 Gone for a retired
//! one. Every value was built by the controller; nothing is formatted
//! here.

use std::time::SystemTime;

use http::header::{HeaderName, CONTENT_TYPE, LINK};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use portcullis_model::route_filter::versioning::{Retirement, VersioningConfig};

use super::ClientRequest;
use crate::body::{self, Body};

const DEPRECATION: HeaderName = HeaderName::from_static("deprecation");
const SUNSET: HeaderName = HeaderName::from_static("sunset");

/// The 410 Gone answer of a retired version, if this one is.
pub(crate) fn retired(
    config: &VersioningConfig,
    _client: &ClientRequest,
) -> Option<Response<Body>> {
    let gone = match config.retired {
        Retirement::Never => false,
        Retirement::Now => true,
        Retirement::At(at) => SystemTime::now() >= at,
    };
    if !gone {
        return None;
    }
    let mut resp = Response::new(body::full(config.gone_body.clone()));
    *resp.status_mut() = StatusCode::GONE;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    annotate(config, resp.headers_mut());
    Some(resp)
}

/// Deprecation, Sunset and Link headers. Links are added next to the
/// backend's own `Link` values.
pub(crate) fn annotate(config: &VersioningConfig, headers: &mut HeaderMap) {
    if let Some(v) = &config.deprecation {
        headers.insert(DEPRECATION, v.0.clone());
    }
    if let Some(v) = &config.sunset {
        headers.insert(SUNSET, v.0.clone());
    }
    for link in &config.links {
        headers.append(LINK, link.0.clone());
    }
}
