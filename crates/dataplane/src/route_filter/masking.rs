//! RouteFilter response masking. (Lands with the feature: until then a
//! pass-through.)

use http::Response;
use portcullis_model::route_filter::masking::MaskingConfig;

use crate::body::Body;

/// Redacts the response before it leaves the gateway.
pub(crate) async fn response(
    _config: &MaskingConfig,
    _filter: &str,
    resp: Response<Body>,
) -> Response<Body> {
    resp
}
