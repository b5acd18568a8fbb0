//! Filters, backends, timeouts and status details.

mod common;

use std::time::Duration;

use common::*;
use portcullis_model::{AppProtocol, BackendTarget, Filter, PathModifier};

fn only_rule_filters(c: &portcullis_controller::Compiled, path: &str) -> Vec<Filter> {
    route_for(c, 80, &get("h", path))
        .expect("routed")
        .rule
        .filters
        .clone()
}

#[test]
fn filter_request_header_modifier() {
    let c = fixture("filter_request_header_modifier");
    let filters = only_rule_filters(&c, "/");
    let [Filter::RequestHeaderModifier(m)] = filters.as_slice() else {
        panic!("{filters:?}")
    };
    assert_eq!(m.set[0].0 .0.as_str(), "x-set");
    assert_eq!(m.set[0].1 .0.to_str().ok(), Some("one"));
    assert_eq!(m.add[0].0 .0.as_str(), "x-add");
    assert_eq!(m.remove[0].0.as_str(), "x-remove");
    assert!(route_status(&c, "headers").problems.is_empty());
}

#[test]
fn filter_response_header_modifier() {
    let c = fixture("filter_response_header_modifier");
    let filters = only_rule_filters(&c, "/");
    let [Filter::ResponseHeaderModifier(m)] = filters.as_slice() else {
        panic!("{filters:?}")
    };
    assert_eq!(m.set[0].0 .0.as_str(), "cache-control");
}

#[test]
fn filter_redirect() {
    let c = fixture("filter_redirect");
    let old = route_for(&c, 80, &get("h", "/old/page")).expect("routed");
    let [Filter::RequestRedirect(r)] = old.rule.filters.as_slice() else {
        panic!()
    };
    assert_eq!(r.status_code, 302, "302 by default");
    assert!(matches!(&r.path, Some(PathModifier::ReplacePrefixMatch(p)) if p == "/new"));
    assert!(old.rule.backends.is_empty());
    let secure = route_for(&c, 80, &get("h", "/secure")).expect("routed");
    let [Filter::RequestRedirect(r)] = secure.rule.filters.as_slice() else {
        panic!()
    };
    assert_eq!(
        (
            r.scheme.as_deref(),
            r.hostname.as_deref(),
            r.port,
            r.status_code
        ),
        (Some("https"), Some("secure.example.com"), Some(8443), 301)
    );
    assert!(matches!(&r.path, Some(PathModifier::ReplaceFullPath(p)) if p == "/login"));
    assert!(route_status(&c, "redirects").problems.is_empty());
}

#[test]
fn filter_replace_prefix_needs_prefix_match() {
    let c = fixture("filter_replace_prefix_needs_prefix_match");
    let bad = route_status(&c, "bad-rewrite");
    assert_eq!(
        sr(bad.parent_condition("gw", None, "Accepted")),
        is("False", "UnsupportedValue")
    );
    assert!(bad
        .problems
        .iter()
        .any(|p| p.contains("ReplacePrefixMatch")));
    assert_eq!(
        answer(&c, 80, &get("h", "/exact")),
        "404",
        "the rejected route is not served"
    );
    assert_eq!(answer(&c, 80, &get("h", "/ok")), "sibling#0");
    let gw = gateway_status(&c, "gw");
    assert_eq!(
        gw.status["listeners"][0]["attachedRoutes"], 1,
        "only the accepted route is attached"
    );
}

#[test]
fn filter_url_rewrite() {
    let c = fixture("filter_url_rewrite");
    let filters = only_rule_filters(&c, "/app/x");
    let [Filter::UrlRewrite(r)] = filters.as_slice() else {
        panic!("{filters:?}")
    };
    assert_eq!(r.hostname.as_deref(), Some("internal.local"));
    assert!(matches!(&r.path, Some(PathModifier::ReplacePrefixMatch(p)) if p == "/"));
}

#[test]
fn filter_request_mirror() {
    let c = fixture("filter_request_mirror");
    let route = route_for(&c, 80, &get("h", "/")).expect("routed");
    let mirrors: Vec<(String, u32, u32)> = route
        .rule
        .filters
        .iter()
        .filter_map(|f| match f {
            Filter::RequestMirror(m) => Some((m.backend.name.clone(), m.numerator, m.denominator)),
            _ => None,
        })
        .collect();
    assert_eq!(
        mirrors,
        vec![
            ("default/other:80".to_string(), 25, 100),
            ("default/other:80".to_string(), 1, 3)
        ]
    );
    assert_eq!(
        backends(&c, 80, &get("h", "/")),
        vec!["default/echo:80"],
        "primary traffic unaffected"
    );
    let s = route_status(&c, "mirror");
    assert_eq!(
        sr(s.parent_condition("gw", None, "ResolvedRefs")),
        is("False", "BackendNotFound")
    );
    assert_eq!(
        sr(s.parent_condition("gw", None, "Accepted")),
        is("True", "Accepted")
    );
}

#[test]
fn filter_cors() {
    let c = fixture("filter_cors");
    let filters = only_rule_filters(&c, "/");
    let [Filter::Cors(cors)] = filters.as_slice() else {
        panic!("{filters:?}")
    };
    assert_eq!(
        cors.allow_origins,
        vec!["https://app.example.com", "https://*.example.org"]
    );
    assert_eq!(cors.allow_methods, vec!["GET", "POST"]);
    assert!(cors.allow_credentials);
    assert_eq!(cors.max_age_seconds, Some(600));
    assert_eq!(cors.expose_headers, vec!["X-Request-Id"]);
}

#[test]
fn filter_extension_ref_unknown() {
    let c = fixture("filter_extension_ref_unknown");
    let ext = route_for(&c, 80, &get("h", "/ext")).expect("routed");
    assert!(
        ext.rule.backends.is_empty() && ext.rule.filters.is_empty(),
        "answered with 500"
    );
    assert_eq!(
        backends(&c, 80, &get("h", "/plain")),
        vec!["default/echo:80"]
    );
    let s = route_status(&c, "ext");
    assert_eq!(
        sr(s.parent_condition("gw", None, "ResolvedRefs")),
        is("False", "InvalidKind")
    );
}

#[test]
fn filter_backend_ref_level() {
    let c = fixture("filter_backend_ref_level");
    let route = route_for(&c, 80, &get("h", "/")).expect("routed");
    assert!(route.rule.filters.is_empty());
    assert!(matches!(
        route.rule.backends[0].filters.as_slice(),
        [Filter::RequestHeaderModifier(_)]
    ));
    assert!(route.rule.backends[1].filters.is_empty());
}

#[test]
fn filter_redirect_and_rewrite_together() {
    let c = fixture("filter_redirect_and_rewrite_together");
    assert_eq!(
        sr(route_status(&c, "both").parent_condition("gw", None, "Accepted")),
        is("False", "UnsupportedValue")
    );
}

#[test]
fn backend_weights_including_zero() {
    let c = fixture("backend_weights_including_zero");
    let route = route_for(&c, 80, &get("h", "/")).expect("routed");
    let weights: Vec<u32> = route.rule.backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, vec![90, 0, 1]);
}

#[test]
fn backend_cross_namespace_without_grant() {
    let c = fixture("backend_cross_namespace_without_grant");
    assert_eq!(
        backends(&c, 80, &get("h", "/")),
        vec!["invalid:RefNotPermitted", "default/echo:80"]
    );
    let s = route_status(&c, "cross");
    assert_eq!(
        sr(s.parent_condition("gw", None, "ResolvedRefs")),
        is("False", "RefNotPermitted")
    );
    assert_eq!(
        sr(s.parent_condition("gw", None, "Accepted")),
        is("True", "Accepted")
    );
    assert!(
        s.problems.iter().any(|p| p.contains("ReferenceGrant")),
        "{:?}",
        s.problems
    );
}

#[test]
fn backend_cross_namespace_with_grant() {
    let c = fixture("backend_cross_namespace_with_grant");
    assert_eq!(backends(&c, 80, &get("h", "/")), vec!["data/db-api:80"]);
    assert_eq!(
        sr(route_status(&c, "cross").parent_condition("gw", None, "ResolvedRefs")),
        is("True", "ResolvedRefs")
    );
}

#[test]
fn backend_not_found() {
    let c = fixture("backend_not_found");
    let route = &vhost(&c, 80, "h").expect("vhost").routes;
    let reasons: Vec<String> = route
        .iter()
        .map(|r| match &r.rule.backends[0].target {
            BackendTarget::Invalid { reason } => reason.clone(),
            BackendTarget::Service(s) => s.name.clone(),
        })
        .collect();
    assert_eq!(reasons, vec!["BackendNotFound", "BackendNotFound"]);
    let s = route_status(&c, "missing");
    assert_eq!(
        sr(s.parent_condition("gw", None, "ResolvedRefs")),
        is("False", "BackendNotFound")
    );
    assert!(s.problems.iter().any(|p| p.contains("default/nowhere")));
    assert!(s.problems.iter().any(|p| p.contains("no port 81")));
}

#[test]
fn backend_wrong_kind() {
    let c = fixture("backend_wrong_kind");
    assert_eq!(
        backends(&c, 80, &get("h", "/")),
        vec!["invalid:InvalidKind"]
    );
    assert_eq!(
        sr(route_status(&c, "kind").parent_condition("gw", None, "ResolvedRefs")),
        is("False", "InvalidKind")
    );
}

#[test]
fn backend_app_protocol() {
    let c = fixture("backend_app_protocol");
    let route = route_for(&c, 80, &get("h", "/")).expect("routed");
    let protocols: Vec<AppProtocol> = route
        .rule
        .backends
        .iter()
        .filter_map(|b| match &b.target {
            BackendTarget::Service(s) => Some(s.protocol),
            BackendTarget::Invalid { .. } => None,
        })
        .collect();
    assert_eq!(
        protocols,
        vec![AppProtocol::H2c, AppProtocol::WebSocket, AppProtocol::Http1]
    );
}

#[test]
fn endpoint_slice_ready_only_and_port_by_name() {
    let c = fixture("endpoint_slice_ready_only_and_port_by_name");
    let route = route_for(&c, 80, &get("h", "/")).expect("routed");
    let BackendTarget::Service(b) = &route.rule.backends[0].target else {
        panic!("resolved")
    };
    let endpoints: Vec<String> = b.endpoints.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        endpoints,
        vec!["10.1.0.1:8080", "10.1.0.3:8080", "10.1.0.4:8080"]
    );
}

#[test]
fn rule_without_backends() {
    let c = fixture("rule_without_backends");
    let route = route_for(&c, 80, &get("h", "/nothing")).expect("routed");
    assert!(route.rule.backends.is_empty() && route.rule.filters.is_empty());
    assert_eq!(
        sr(route_status(&c, "empty").parent_condition("gw", None, "Accepted")),
        is("True", "Accepted")
    );
}

#[test]
fn timeouts() {
    let c = fixture("timeouts");
    let slow = route_for(&c, 80, &get("h", "/slow")).expect("routed");
    assert_eq!(slow.rule.timeouts.request, Some(Duration::from_secs(90)));
    assert_eq!(
        slow.rule.timeouts.backend_request,
        Some(Duration::from_millis(500))
    );
    let unlimited = route_for(&c, 80, &get("h", "/unlimited")).expect("routed");
    assert_eq!(unlimited.rule.timeouts.request, None);
    let inverted = route_status(&c, "inverted");
    assert_eq!(
        sr(inverted.parent_condition("gw", None, "Accepted")),
        is("False", "UnsupportedValue")
    );
}

#[test]
fn http_route_retry() {
    let c = fixture("retry");
    let retried = route_for(&c, 80, &get("h", "/retried")).expect("routed");
    let r = retried.rule.retry.as_deref().expect("retry compiled");
    assert_eq!(r.codes, [500, 503]);
    assert_eq!(r.attempts, 3);
    assert_eq!(r.backoff_base, Duration::from_millis(100));
    assert!(r.on.connect_failure && r.on.reset && r.retries_timeout());
    assert!(
        r.retries_status(503) && !r.retries_status(502),
        "only the listed codes"
    );

    // An empty stanza still retries connection errors, with the defaults.
    let bare = route_for(&c, 80, &get("h", "/bare-stanza")).expect("routed");
    let b = bare.rule.retry.as_deref().expect("retry compiled");
    assert!(b.codes.is_empty() && b.attempts == 2 && b.on.connect_failure);
    assert!(!b.retries_status(503));

    let plain = route_for(&c, 80, &get("h", "/plain")).expect("routed");
    assert!(plain.rule.retry.is_none());

    let too_many = route_status(&c, "too-many");
    assert_eq!(
        sr(too_many.parent_condition("gw", None, "Accepted")),
        is("False", "UnsupportedValue")
    );
    assert!(
        too_many.status.to_string().contains("retry.attempts 50"),
        "{}",
        too_many.status
    );
    assert!(route_for(&c, 80, &get("h", "/too-many")).is_none());
}

#[test]
fn filter_external_auth_is_not_accepted() {
    let c = fixture("filter_external_auth");
    let s = route_status(&c, "ext-auth");
    assert_eq!(
        sr(s.parent_condition("gw", None, "Accepted")),
        is("False", "UnsupportedValue")
    );
    assert!(route_for(&c, 80, &get("h", "/guarded")).is_none());
    assert!(route_for(&c, 80, &get("h", "/open")).is_some());
}

#[test]
fn status_observed_generation() {
    let c = fixture("status_observed_generation");
    let s = route_status(&c, "versioned");
    let parent = &s.status["parents"][0];
    assert_eq!(
        parent["controllerName"],
        "portcullis.dev/gateway-controller"
    );
    assert_eq!(
        parent["parentRef"],
        serde_json::json!({ "name": "gw", "sectionName": "http" })
    );
    for condition in parent["conditions"].as_array().expect("conditions") {
        assert_eq!(condition["observedGeneration"], 7, "{condition}");
    }
    assert!(
        s.problems.is_empty(),
        "a healthy route has no problems: {:?}",
        s.problems
    );
    let gw = gateway_status(&c, "gw");
    assert_eq!(sr(gw.condition("Accepted")), is("True", "Accepted"));
    assert_eq!(sr(gw.condition("Programmed")), is("True", "Programmed"));
    assert_eq!(
        gw.condition("Programmed")
            .map(|c| c["observedGeneration"].clone()),
        Some(serde_json::json!(1))
    );
    assert!(gw.problems.is_empty(), "{:?}", gw.problems);
}

#[test]
fn compile_is_deterministic() {
    let snapshot = snapshot("virtual_hosts_ordered_exact_wildcard_any");
    let options = portcullis_controller::CompileOptions::default();
    let a = portcullis_controller::compile(&snapshot, &options);
    let b = portcullis_controller::compile(&snapshot, &options);
    assert_eq!(
        serde_json::to_string(&a.table).ok(),
        serde_json::to_string(&b.table).ok()
    );
    assert_eq!(a.statuses, b.statuses);
}

#[test]
fn filter_route_filter_compiled_once_and_shared() {
    let c = fixture("filter_route_filter");
    let a = only_rule_filters(&c, "/a");
    let b = only_rule_filters(&c, "/b");
    let ([Filter::RouteFilter(a)], [Filter::RouteFilter(b)]) = (a.as_slice(), b.as_slice()) else {
        panic!("{a:?} {b:?}")
    };
    assert_eq!(a.name, "default/shared");
    assert!(a.cache.is_some() && a.transform.is_none());
    assert!(std::sync::Arc::ptr_eq(a, b), "one compile per RouteFilter");
    assert!(route_status(&c, "filtered").problems.is_empty());
}

#[test]
fn filter_route_filter_missing_or_invalid_answers_500() {
    let c = fixture("filter_route_filter");
    for (route, path, reason, text) in [
        (
            "missing",
            "/missing",
            "RouteFilterNotFound",
            "RouteFilter default/nope not found",
        ),
        (
            "broken",
            "/broken",
            "InvalidRouteFilter",
            "RouteFilter default/broken is invalid",
        ),
    ] {
        let r = route_for(&c, 80, &get("h", path)).expect("routed");
        assert!(r.rule.backends.is_empty(), "{route}: answered with 500");
        let s = route_status(&c, route);
        let condition = s.parent_condition("gw", None, "ResolvedRefs");
        assert_eq!(sr(condition), is("False", reason), "{route}");
        let message = condition.and_then(|c| c["message"].as_str()).unwrap_or("");
        assert!(message.contains(text), "{route}: {message}");
    }
}
