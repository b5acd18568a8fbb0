//! RouteFilter request and response transformation. (Lands with the
//! feature: until then a pass-through.)

use http::{Request, Response};
use portcullis_model::route_filter::transform::TransformConfig;

use super::ClientRequest;
use crate::body::Body;

/// Rewrites the upstream request; `Err` is the rejection to send.
pub(crate) async fn request(
    _config: &TransformConfig,
    _client: &ClientRequest,
    req: Request<Body>,
) -> Result<Request<Body>, Response<Body>> {
    Ok(req)
}

/// Rewrites the backend's response.
pub(crate) async fn response(
    _config: &TransformConfig,
    _client: &ClientRequest,
    resp: Response<Body>,
) -> Response<Body> {
    resp
}
