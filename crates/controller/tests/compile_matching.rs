//! Matching and precedence: which route answers a request.

mod common;

use common::*;
use portcullis_model::{AppProtocol, BackendTarget, HostMatch, PathMatch, RouteKind};

#[test]
fn path_exact_match() {
    let c = fixture("path_exact_match");
    assert_eq!(answer(&c, 80, &get("any.host", "/exact")), "exact#0");
    assert_eq!(answer(&c, 80, &get("any.host", "/exact/below")), "404");
    assert_eq!(answer(&c, 80, &get("any.host", "/other")), "404");
}

#[test]
fn path_prefix_is_segment_aware() {
    let c = fixture("path_prefix_is_segment_aware");
    let r = route_for(&c, 80, &get("h", "/foo")).expect("matches /foo");
    // Stored without the trailing slash the user wrote.
    assert!(matches!(&r.matcher.path, PathMatch::Prefix(p) if p == "/foo"));
    for path in ["/foo", "/foo/", "/foo/bar"] {
        assert_eq!(answer(&c, 80, &get("h", path)), "prefix#0", "{path}");
    }
    assert_eq!(answer(&c, 80, &get("h", "/foobar")), "404");
}

#[test]
fn path_regex_match() {
    let c = fixture("path_regex_match");
    assert_eq!(answer(&c, 80, &get("h", "/v2/items")), "regex#0");
    assert_eq!(
        answer(&c, 80, &get("h", "/v2/items/1")),
        "404",
        "regex matches the whole path only"
    );
    assert_eq!(answer(&c, 80, &get("h", "/vx/items")), "404");
}

#[test]
fn header_query_method_matches() {
    let c = fixture("header_query_method_matches");
    let full = Req {
        host: "h",
        method: "POST",
        path: "/",
        headers: vec![("x-version", "2"), ("X-User", "admin")],
        query: vec![("debug", "true")],
    };
    assert_eq!(answer(&c, 80, &full), "conditions#0");
    let wrong_method = Req {
        method: "GET",
        ..full.clone()
    };
    assert_eq!(answer(&c, 80, &wrong_method), "404");
    let wrong_header = Req {
        headers: vec![("x-version", "2"), ("x-user", "guest")],
        ..full.clone()
    };
    assert_eq!(answer(&c, 80, &wrong_header), "404");
    let no_query = Req {
        query: vec![],
        ..full.clone()
    };
    assert_eq!(answer(&c, 80, &no_query), "404");
}

#[test]
fn invalid_regex_is_unsupported_value() {
    let c = fixture("invalid_regex_is_unsupported_value");
    assert_eq!(
        sr(route_status(&c, "broken").parent_condition("gw", None, "Accepted")),
        is("False", "UnsupportedValue")
    );
    assert!(route_status(&c, "broken")
        .problems
        .iter()
        .any(|p| p.contains("regular expression")));
    assert_eq!(
        answer(&c, 80, &get("h", "/fine")),
        "fine#0",
        "the valid sibling still serves"
    );
    assert!(route_status(&c, "fine").problems.is_empty());
}

#[test]
fn grpc_method_matching() {
    let c = fixture("grpc_method_matching");
    let host = "grpc.example.com";
    let say = Req {
        method: "POST",
        ..get(host, "/echo.v1.Echo/Say")
    };
    let route = route_for(&c, 80, &say).expect("gRPC method routed");
    assert_eq!(route.rule.id.kind, RouteKind::Grpc);
    assert_eq!(route.rule.id.rule_index, 0);
    let BackendTarget::Service(backend) = &route.rule.backends[0].target else {
        panic!("resolved backend")
    };
    assert_eq!(
        backend.protocol,
        AppProtocol::H2c,
        "gRPC backends are spoken to over HTTP/2"
    );
    assert_eq!(
        answer(&c, 80, &get(host, "/health.v1.Health/Check")),
        "grpc#1"
    );
    assert_eq!(
        answer(&c, 80, &get(host, "/echo.v1.Echo/Other")),
        "grpc#2",
        "a rule without matches matches any method"
    );
    let status = status(
        &c,
        portcullis_controller::StatusKind::GrpcRoute,
        Some("default"),
        "grpc",
    );
    assert_eq!(
        sr(status.parent_condition("gw", None, "Accepted")),
        is("True", "Accepted")
    );
}

#[test]
fn precedence_exact_over_prefix() {
    let c = fixture("precedence_exact_over_prefix");
    assert_eq!(answer(&c, 80, &get("h", "/login")), "z-exact#0");
    assert_eq!(answer(&c, 80, &get("h", "/login/x")), "a-prefix#0");
}

#[test]
fn precedence_longest_prefix_wins() {
    let c = fixture("precedence_longest_prefix_wins");
    assert_eq!(answer(&c, 80, &get("h", "/api/v1/users")), "api#1");
    assert_eq!(answer(&c, 80, &get("h", "/api/v2")), "api#0");
}

#[test]
fn precedence_method_over_headers() {
    let c = fixture("precedence_method_over_headers");
    let req = Req {
        headers: vec![("a", "1"), ("b", "1")],
        ..get("h", "/x")
    };
    assert_eq!(answer(&c, 80, &req), "b-method#0");
}

#[test]
fn precedence_most_header_matches() {
    let c = fixture("precedence_most_header_matches");
    let req = Req {
        headers: vec![("a", "1"), ("b", "1")],
        query: vec![("q", "1"), ("r", "1")],
        ..get("h", "/")
    };
    assert_eq!(
        answer(&c, 80, &req),
        "b-two-headers#0",
        "headers count before query parameters"
    );
}

#[test]
fn precedence_most_query_matches() {
    let c = fixture("precedence_most_query_matches");
    let req = Req {
        query: vec![("q", "1"), ("r", "1")],
        ..get("h", "/")
    };
    assert_eq!(answer(&c, 80, &req), "b-two-queries#0");
}

#[test]
fn precedence_oldest_route_wins() {
    let c = fixture("precedence_oldest_route_wins");
    assert_eq!(answer(&c, 80, &get("h", "/")), "b-older#0");
}

#[test]
fn precedence_alphabetical_namespace_name() {
    let c = fixture("precedence_alphabetical_namespace_name");
    let winner = route_for(&c, 80, &get("h", "/")).expect("routed");
    assert_eq!(
        (
            winner.rule.id.namespace.as_str(),
            winner.rule.id.name.as_str()
        ),
        ("apps", "zeta")
    );
}

#[test]
fn precedence_rule_order_then_match_order() {
    let c = fixture("precedence_rule_order_then_match_order");
    assert_eq!(answer(&c, 80, &get("h", "/same")), "rules#0");
    let routes = &vhost(&c, 80, "h").expect("vhost").routes;
    let order: Vec<(usize, usize)> = routes
        .iter()
        .map(|r| (r.rule.id.rule_index, r.matcher.headers.len()))
        .collect();
    // The match with a header sorts first (more headers), then rule 0's
    // plain match, then rule 1's.
    assert_eq!(order, vec![(0, 1), (0, 0), (1, 0)]);
}

#[test]
fn precedence_regex_between_exact_and_prefix() {
    let c = fixture("precedence_regex_between_exact_and_prefix");
    assert_eq!(
        answer(&c, 80, &get("h", "/items/42")),
        "mixed#2",
        "exact first"
    );
    assert_eq!(
        answer(&c, 80, &get("h", "/items/7")),
        "mixed#1",
        "then regex"
    );
    assert_eq!(
        answer(&c, 80, &get("h", "/items/abc")),
        "mixed#0",
        "then prefix"
    );
}

#[test]
fn virtual_hosts_ordered_exact_wildcard_any() {
    let c = fixture("virtual_hosts_ordered_exact_wildcard_any");
    let hosts: Vec<String> = port(&c, 80)
        .virtual_hosts
        .iter()
        .map(|v| v.hostname.to_string())
        .collect();
    assert_eq!(
        hosts,
        vec!["a.b.example.com", "*.b.example.com", "*.example.com", "*"]
    );
    assert_eq!(
        port(&c, 80).virtual_hosts.last().map(|v| &v.hostname),
        Some(&HostMatch::Any)
    );
    assert_eq!(answer(&c, 80, &get("x.b.example.com", "/")), "hosts#0");
    assert_eq!(answer(&c, 80, &get("example.org", "/")), "anything#0");
}

#[test]
fn hostname_precedence_then_path() {
    let c = fixture("hostname_precedence_then_path");
    assert_eq!(
        answer(&c, 80, &get("foo.example.com", "/a")),
        "exact-host#0"
    );
    assert_eq!(
        answer(&c, 80, &get("foo.example.com", "/b")),
        "wildcard-host#0",
        "falls back to the wildcard route"
    );
    assert_eq!(
        answer(&c, 80, &get("foo.example.com", "/c")),
        "any-host#0",
        "and to routes without hostnames"
    );
    assert_eq!(
        answer(&c, 80, &get("bar.example.com", "/a")),
        "wildcard-host#0"
    );
    assert_eq!(answer(&c, 80, &get("example.org", "/a")), "any-host#0");
}

#[test]
fn hostname_precedence_uses_original_hostname() {
    let c = fixture("hostname_precedence_uses_original_hostname");
    assert_eq!(
        answer(&c, 8080, &get("abc.example.com", "/")),
        "exact-newer#0"
    );
}
