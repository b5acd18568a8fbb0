//! `RouteFilter` cache section -> model. (Lands with the feature.)

use portcullis_api::route_filter::cache::CacheSpec;
use portcullis_model::route_filter::cache::CacheConfig;

use super::SectionContext;

pub(crate) fn compile(_spec: &CacheSpec, _ctx: &SectionContext<'_>) -> Result<CacheConfig, String> {
    Ok(CacheConfig::default())
}
