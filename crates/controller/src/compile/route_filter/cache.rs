//! `RouteFilter` cache section -> model: durations parsed, header names
//! validated, query parameter names sorted.

use std::time::Duration;

use http::HeaderName;
use portcullis_api::route_filter::cache::{CacheSpec, QueryKey as ApiQueryKey};
use portcullis_model::route_filter::cache::{
    CacheConfig, CacheKey, QueryKey, DEFAULT_COALESCE_TIMEOUT, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_OBJECT_BYTES,
};
use portcullis_model::HeaderNameSer;

use super::SectionContext;

pub(crate) fn compile(spec: &CacheSpec, _ctx: &SectionContext<'_>) -> Result<CacheConfig, String> {
    let ttl = duration("ttl", spec.ttl.as_deref())?;
    if spec.override_backend && ttl.is_none_or(|t| t.is_zero()) {
        return Err("overrideBackend needs a ttl longer than zero".into());
    }
    let key = spec.key.clone().unwrap_or_default();
    let query = match key.query.unwrap_or(ApiQueryKey::All) {
        ApiQueryKey::All => {
            if !key.query_params.is_empty() {
                return Err("key.queryParams is only used with key.query: Include".into());
            }
            QueryKey::All
        }
        ApiQueryKey::Ignore => QueryKey::Ignore,
        ApiQueryKey::Include => {
            let mut names = key.query_params.clone();
            names.sort();
            names.dedup();
            QueryKey::Include(names)
        }
    };
    let headers = key
        .headers
        .iter()
        .map(|h| {
            HeaderName::from_bytes(h.as_bytes())
                .map(HeaderNameSer)
                .map_err(|_| format!("key.headers: {h:?} is not a valid header name"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let max_bytes = spec.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let max_object_bytes = spec.max_object_bytes.unwrap_or(DEFAULT_MAX_OBJECT_BYTES);
    if max_bytes == 0 || max_object_bytes == 0 {
        return Err("maxBytes and maxObjectBytes must be above zero".into());
    }
    if max_object_bytes > max_bytes {
        return Err(format!(
            "maxObjectBytes ({max_object_bytes}) is larger than maxBytes ({max_bytes})"
        ));
    }
    Ok(CacheConfig {
        ttl,
        override_backend: spec.override_backend,
        key: CacheKey {
            query,
            sort_query: key.sort_query,
            headers,
            identity: key.identity,
        },
        max_bytes,
        max_object_bytes,
        coalesce_timeout: duration("coalesceTimeout", spec.coalesce_timeout.as_deref())?
            .unwrap_or(DEFAULT_COALESCE_TIMEOUT),
        stale_if_error: duration("staleIfError", spec.stale_if_error.as_deref())?,
    })
}

/// A Gateway API duration (`500ms`, `30s`, `5m`, `1h`); zero allowed.
fn duration(field: &str, v: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(v) = v else { return Ok(None) };
    let d: gateway_api::Duration = v
        .parse()
        .map_err(|e| format!("{field} {v:?} is not a valid duration (e.g. 500ms, 10s, 1m): {e}"))?;
    Ok(Some(Duration::new(d.as_secs(), d.subsec_nanos())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_api::route_filter::cache::CacheKeySpec;

    fn compiled(spec: CacheSpec) -> Result<CacheConfig, String> {
        let snapshot = crate::snapshot::Snapshot::default();
        let index = crate::compile::index::Index::new(&snapshot);
        compile(
            &spec,
            &SectionContext {
                index: &index,
                namespace: "default",
            },
        )
    }

    #[test]
    fn parses_durations_and_sorts_query_params() {
        let c = compiled(CacheSpec {
            ttl: Some("90s".into()),
            key: Some(CacheKeySpec {
                query: Some(ApiQueryKey::Include),
                query_params: vec!["page".into(), "id".into()],
                headers: vec!["Accept-Language".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(c.ttl, Some(Duration::from_secs(90)));
        assert!(matches!(&c.key.query, QueryKey::Include(n) if n == &["id", "page"]));
        assert_eq!(c.key.headers[0].0.as_str(), "accept-language");
        assert_eq!(c.max_bytes, DEFAULT_MAX_BYTES);
    }

    #[test]
    fn refuses_inconsistent_settings() {
        let err = |spec| compiled(spec).expect_err("invalid");
        assert!(err(CacheSpec {
            override_backend: true,
            ..Default::default()
        })
        .contains("ttl"));
        assert!(err(CacheSpec {
            ttl: Some("soon".into()),
            ..Default::default()
        })
        .contains("not a valid duration"));
        assert!(err(CacheSpec {
            max_bytes: Some(10),
            max_object_bytes: Some(100),
            ..Default::default()
        })
        .contains("larger than maxBytes"));
        assert!(err(CacheSpec {
            key: Some(CacheKeySpec {
                headers: vec!["bad header".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .contains("not a valid header name"));
    }
}
