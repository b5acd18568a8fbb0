//! ExtensionRef filters naming our `RouteFilter` -> `model::Filter::RouteFilter`.
//!
//! A RouteFilter is compiled once per `compile()` (many rules may reference
//! the same one) and shared as an `Arc`. Each section compiles in its own
//! module; an error in any section makes the whole RouteFilter invalid: the
//! referring rule then answers 500 and its route reports `ResolvedRefs`
//! False with the message, rather than serving without, say, its threat
//! protection.

mod cache;
mod masking;
mod threat;
mod transform;
mod versioning;

use std::sync::Arc;

use portcullis_api::route_filter::RouteFilterSpec;
use portcullis_model::route_filter::RouteFilterConfig;

use super::index::Index;
use crate::snapshot::ObjectKey;

/// Route status reasons (ResolvedRefs False) for RouteFilter references.
pub(crate) mod reasons {
    pub const NOT_FOUND: &str = "RouteFilterNotFound";
    pub const INVALID: &str = "InvalidRouteFilter";
}

/// What a section's compile hook may read besides its own spec.
#[allow(dead_code)] // Read by the section compilers that need references.
pub(crate) struct SectionContext<'a> {
    pub index: &'a Index<'a>,
    /// The RouteFilter's namespace: ConfigMaps and Secrets it names live
    /// there.
    pub namespace: &'a str,
}

/// Why a RouteFilter reference cannot be served.
#[derive(Debug, Clone)]
pub(crate) struct Unusable {
    pub reason: &'static str,
    pub message: String,
}

/// The compiled RouteFilter `namespace/name`, memoized in the index.
pub(crate) fn resolve(
    index: &Index<'_>,
    namespace: &str,
    name: &str,
) -> Result<Arc<RouteFilterConfig>, Unusable> {
    let key = ObjectKey::new(namespace, name);
    if let Some(done) = index.route_filters.borrow().get(&key) {
        return done.clone();
    }
    let result = compile(index, &key);
    index.route_filters.borrow_mut().insert(key, result.clone());
    result
}

fn compile(index: &Index<'_>, key: &ObjectKey) -> Result<Arc<RouteFilterConfig>, Unusable> {
    let object = index
        .snapshot
        .route_filters
        .get(key)
        .ok_or_else(|| Unusable {
            reason: reasons::NOT_FOUND,
            message: format!("RouteFilter {key} not found; requests to this rule get 500"),
        })?;
    let invalid = |message: String| Unusable {
        reason: reasons::INVALID,
        message: format!("RouteFilter {key} is invalid: {message}; requests to this rule get 500"),
    };
    let spec: RouteFilterSpec =
        serde_json::from_value(object.spec.clone()).map_err(|e| invalid(e.to_string()))?;
    let ctx = SectionContext {
        index,
        namespace: &key.namespace,
    };
    fn section<S, C>(
        spec: &Option<S>,
        name: &str,
        compile: impl FnOnce(&S) -> Result<C, String>,
    ) -> Result<Option<C>, String> {
        spec.as_ref()
            .map(compile)
            .transpose()
            .map_err(|e| format!("{name}: {e}"))
    }
    let config = RouteFilterConfig {
        name: key.to_string(),
        cache: section(&spec.cache, "cache", |s| cache::compile(s, &ctx)).map_err(invalid)?,
        transform: section(&spec.transform, "transform", |s| {
            transform::compile(s, &ctx)
        })
        .map_err(invalid)?,
        threat_protection: section(&spec.threat_protection, "threatProtection", |s| {
            threat::compile(s, &ctx)
        })
        .map_err(invalid)?,
        masking: section(&spec.masking, "masking", |s| masking::compile(s, &ctx))
            .map_err(invalid)?,
        versioning: section(&spec.versioning, "versioning", |s| {
            versioning::compile(s, &ctx)
        })
        .map_err(invalid)?,
    };
    Ok(Arc::new(config))
}
