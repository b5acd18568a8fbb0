//! RouteFilter versioning: deprecation headers and retired versions.
//! (Lands with the feature: until then a pass-through.)

use http::{HeaderMap, Response};
use portcullis_model::route_filter::versioning::VersioningConfig;

use super::ClientRequest;
use crate::body::Body;

/// The 410 Gone answer of a retired version, if this one is.
pub(crate) fn retired(
    _config: &VersioningConfig,
    _client: &ClientRequest,
) -> Option<Response<Body>> {
    None
}

/// Deprecation, Sunset and Link headers.
pub(crate) fn annotate(_config: &VersioningConfig, _headers: &mut HeaderMap) {}
