//! RouteFilter response cache. (Lands with the feature: until then a
//! pass-through.)

use std::future::Future;

use http::{Request, Response};
use portcullis_model::route_filter::cache::CacheConfig;

use super::ClientRequest;
use crate::body::Body;
use crate::proxy::ProxyError;

/// Cached responses of every RouteFilter, kept across tables.
#[derive(Default)]
pub struct CacheState {}

/// Answers from the cache, or through `next` (the backend) on a miss.
pub(crate) async fn serve<F, Fut>(
    _state: &CacheState,
    _config: &CacheConfig,
    _filter: &str,
    _client: &ClientRequest,
    req: Request<Body>,
    next: F,
) -> Result<Response<Body>, ProxyError>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>>,
{
    next(req).await
}
