//! `RouteFilter` versioning section -> model. (Lands with the feature.)

use portcullis_api::route_filter::versioning::VersioningSpec;
use portcullis_model::route_filter::versioning::VersioningConfig;

use super::SectionContext;

pub(crate) fn compile(
    _spec: &VersioningSpec,
    _ctx: &SectionContext<'_>,
) -> Result<VersioningConfig, String> {
    Ok(VersioningConfig::default())
}
