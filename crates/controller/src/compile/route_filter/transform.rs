//! `RouteFilter` transform section -> model. (Lands with the feature.)

use portcullis_api::route_filter::transform::TransformSpec;
use portcullis_model::route_filter::transform::TransformConfig;

use super::SectionContext;

pub(crate) fn compile(
    _spec: &TransformSpec,
    _ctx: &SectionContext<'_>,
) -> Result<TransformConfig, String> {
    Ok(TransformConfig::default())
}
