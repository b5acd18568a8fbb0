//! RouteFilter threat protection. (Lands with the feature: until then a
//! pass-through.)

use http::{Request, Response};
use portcullis_model::route_filter::threat::ThreatProtectionConfig;

use super::ClientRequest;
use crate::body::Body;

/// Inspects the request; `Err` is the rejection to send.
pub(crate) async fn inspect(
    _config: &ThreatProtectionConfig,
    _filter: &str,
    _client: &ClientRequest,
    req: Request<Body>,
) -> Result<Request<Body>, Response<Body>> {
    Ok(req)
}
