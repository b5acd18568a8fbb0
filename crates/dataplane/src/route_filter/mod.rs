//! `RouteFilter` sections on the data path.
//!
//! A rule's RouteFilters (ExtensionRef filters, compiled by the controller
//! into `model::route_filter::RouteFilterConfig`) run around the upstream
//! call, each section in this order, every filter of the rule in the order
//! the route lists them:
//!
//! 1. versioning: a retired version is answered 410 Gone at once;
//! 2. threat protection: payload limits, content types, OpenAPI
//!    validation, injection patterns (reject, or report only);
//! 3. cache: the first filter with a cache section; a hit (or a coalesced
//!    miss) skips steps 4-6, so what is cached is what clients receive;
//! 4. request transformation;
//! 5. the backend (balancing, retries, timeouts: `proxy::forward`);
//! 6. response transformation, then masking;
//! 7. versioning headers (Deprecation, Sunset, Link) on every answer.
//!
//! Upgraded connections (WebSocket) skip RouteFilters: they carry streams,
//! not documents.

pub mod cache;
pub mod masking;
pub mod threat;
pub mod transform;
pub mod versioning;

use std::future::Future;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response};
use portcullis_model::route_filter::RouteFilterConfig;

use crate::body::Body;
use crate::identity::Identity;
use crate::proxy::ProxyError;

/// What RouteFilters keep across tables (caches), shared by every
/// connection of the process.
#[derive(Default)]
pub struct RouteFilterState {
    pub cache: cache::CacheState,
}

/// The client's request as the route matched it: canonical host,
/// normalized path and query as the client sent them (before URL
/// rewrites), headers after the route's header filters, and the identity
/// authentication established. Built only for rules with RouteFilters.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: Method,
    pub host: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub identity: Option<Identity>,
}

/// Runs the rule's RouteFilters around `upstream` (steps 1-7 above).
pub(crate) async fn serve<F, Fut>(
    state: &RouteFilterState,
    filters: &[Arc<RouteFilterConfig>],
    client: &ClientRequest,
    req: Request<Body>,
    upstream: F,
) -> Result<Response<Body>, ProxyError>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>>,
{
    for f in filters {
        if let Some(v) = &f.versioning {
            if let Some(gone) = versioning::retired(v, client) {
                return Ok(gone);
            }
        }
    }
    let mut req = req;
    for f in filters {
        if let Some(t) = &f.threat_protection {
            req = match threat::inspect(t, &f.name, client, req).await {
                Ok(req) => req,
                Err(rejected) => return Ok(rejected),
            };
        }
    }
    let cache = filters
        .iter()
        .find_map(|f| f.cache.as_ref().map(|c| (f.name.as_str(), c)));
    let backend = |req| through_backend(filters, client, req, upstream);
    let mut resp = match cache {
        Some((name, config)) => {
            cache::serve(&state.cache, config, name, client, req, backend).await?
        }
        None => backend(req).await?,
    };
    for f in filters {
        if let Some(v) = &f.versioning {
            versioning::annotate(v, resp.headers_mut());
        }
    }
    Ok(resp)
}

/// Steps 4-6: what a cache miss does.
async fn through_backend<F, Fut>(
    filters: &[Arc<RouteFilterConfig>],
    client: &ClientRequest,
    mut req: Request<Body>,
    upstream: F,
) -> Result<Response<Body>, ProxyError>
where
    F: FnOnce(Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>>,
{
    for f in filters {
        if let Some(t) = &f.transform {
            req = match transform::request(t, client, req).await {
                Ok(req) => req,
                Err(rejected) => return Ok(rejected),
            };
        }
    }
    let mut resp = upstream(req).await?;
    for f in filters {
        if let Some(t) = &f.transform {
            resp = transform::response(t, client, resp).await;
        }
    }
    for f in filters {
        if let Some(m) = &f.masking {
            resp = masking::response(m, &f.name, resp).await;
        }
    }
    Ok(resp)
}
