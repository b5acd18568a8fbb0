//! `RouteFilter` masking section -> model. (Lands with the feature.)

use portcullis_api::route_filter::masking::MaskingSpec;
use portcullis_model::route_filter::masking::MaskingConfig;

use super::SectionContext;

pub(crate) fn compile(
    _spec: &MaskingSpec,
    _ctx: &SectionContext<'_>,
) -> Result<MaskingConfig, String> {
    Ok(MaskingConfig::default())
}
