//! `RouteFilter` threat section -> model. (Lands with the feature.)

use portcullis_api::route_filter::threat::ThreatProtectionSpec;
use portcullis_model::route_filter::threat::ThreatProtectionConfig;

use super::SectionContext;

pub(crate) fn compile(
    _spec: &ThreatProtectionSpec,
    _ctx: &SectionContext<'_>,
) -> Result<ThreatProtectionConfig, String> {
    Ok(ThreatProtectionConfig::default())
}
