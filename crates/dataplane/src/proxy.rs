//! The per-request path: normalize, route, filter, pick a backend and an
//! endpoint, forward with timeouts, filter the response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use portcullis_model::{
    AppProtocol, Backend, BackendTarget, Filter, Mirror, PathMatch, Route, RouteKind, Rule,
    WeightedBackend,
};
use tokio::io::copy_bidirectional;

use crate::body::{self, Body};
use crate::filters::{self, RedirectInput};
use crate::limits::{self, LimitedBody};
use crate::metrics::Limit;
use crate::mirror::TeeBody;
use crate::normalize::normalize_path;
use crate::resilience;
use crate::router::{canonical_host, RequestParts};
use crate::state::Shared;
use crate::upstream::Overloaded;

/// What the proxy knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local_port: u16,
    pub tls: bool,
    /// The listener's request limits (the body limit may be changed per
    /// Service or route by a BackendPolicy).
    pub limits: Arc<crate::limits::Limits>,
    /// The client certificate the port verified (frontend mTLS).
    pub client_certificate: Option<Arc<crate::client_cert::VerifiedClientCertificate>>,
    /// The listener hostname of the certificate the handshake chose by
    /// SNI (when the client sent one): a request for a host of another
    /// listener's certificate is misdirected.
    pub cert: Option<portcullis_model::HostMatch>,
    /// For tunnels that outlive the request (upgrades).
    pub drain: crate::server::DrainWatch,
}

impl ConnInfo {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Entry point from hyper: never fails, every error is an HTTP answer.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match route_and_forward(&shared, &conn, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(error) = e.upstream_error() {
                crate::observe::upstream_failed(error);
            }
            e.into_response()
        }
    })
}

/// A request that ends at the gateway with an error status.
#[derive(Debug)]
pub(crate) struct ProxyError {
    status: StatusCode,
    message: &'static str,
    detail: String,
}

impl ProxyError {
    pub(crate) fn new(
        status: StatusCode,
        message: &'static str,
        detail: impl Into<String>,
    ) -> ProxyError {
        ProxyError {
            status,
            message,
            detail: detail.into(),
        }
    }

    /// For metrics: the failures that happen talking to a backend.
    fn upstream_error(&self) -> Option<crate::metrics::UpstreamError> {
        use crate::metrics::UpstreamError;
        match self.message {
            "upstream connect error" => Some(UpstreamError::connect),
            "upstream TLS error" => Some(UpstreamError::tls),
            "upstream request timeout" => Some(UpstreamError::timeout),
            "upstream error" => Some(UpstreamError::protocol),
            _ => None,
        }
    }

    fn into_response(self) -> Response<Body> {
        // Client errors are the client's business: debug. Gateway-side
        // failures are the operator's: warn.
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), detail = %self.detail, "{}", self.message);
        } else {
            tracing::debug!(status = self.status.as_u16(), detail = %self.detail, "{}", self.message);
        }
        error_response(self.status, self.message)
    }
}

pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn route_and_forward(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if let Err(refusal) = limits::check_request(&conn.limits, &req) {
        limits::record(conn.local_port, refusal.limit, refusal.message);
        return Err(ProxyError::new(refusal.status, refusal.message, ""));
    }
    // In-flight requests keep the table they started with.
    let state = shared.current();
    let port = state.port(conn.local_port).ok_or_else(|| {
        ProxyError::new(
            StatusCode::NOT_FOUND,
            "no route",
            format!("port {} has no configuration", conn.local_port),
        )
    })?;

    // Frontend mTLS: the verified identity for authorization, and the
    // identity header (never taken from the client).
    if let Some(auth) = &port.client_auth {
        auth.forward(req.headers_mut(), conn.client_certificate.as_deref());
    }
    if let Some(cert) = &conn.client_certificate {
        req.extensions_mut().insert(cert.clone());
    }

    let raw_host = request_host(&req).ok_or_else(|| {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "missing Host header",
            "request without host",
        )
    })?;
    let host = canonical_host(&raw_host).ok_or_else(|| {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "invalid Host header",
            raw_host.clone(),
        )
    })?;
    if let (Some(handshake), Some(tls)) = (&conn.cert, port.tls.as_ref()) {
        if tls.is_misdirected(handshake, &host) {
            return Err(ProxyError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected request: open a new connection for this host",
                host,
            ));
        }
    }
    let path = normalize_path(req.uri().path()).map_err(|e| {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "invalid request path",
            e.to_string(),
        )
    })?;
    let mut query = req.uri().query().map(str::to_string);

    let route: &Route = port
        .routes
        .lookup(&RequestParts {
            host: &host,
            path: &path,
            query: query.as_deref(),
            method: req.method(),
            headers: req.headers(),
        })
        .ok_or_else(|| {
            ProxyError::new(StatusCode::NOT_FOUND, "no route", format!("{host}{path}"))
        })?;
    let rule = route.rule.clone();
    crate::observe::route_matched(&rule);
    if let Some(reason) = &rule.policies.invalid {
        // Fail closed: the policies may be what protects this backend.
        return Err(ProxyError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the policies of this route are invalid",
            format!("{}: {reason}", rule.id),
        ));
    }
    // IP rules -> authentication -> authorization (see crate::auth). A
    // CORS preflight carries no credentials by design; the rule's CORS
    // filter answers it below, without reaching the backend.
    let preflight = is_preflight(&req) && rule.filters.iter().any(|f| matches!(f, Filter::Cors(_)));
    if let (Some(auth), false) = (&rule.policies.auth, preflight) {
        let input = crate::auth::AuthInput {
            remote: conn.remote.ip(),
            path: &path,
            query: &mut query,
        };
        if let Err(denied) = crate::auth::check(&shared.auth, auth, input, &mut req).await {
            return Ok(denied);
        }
    }
    // Borrowed from `state`, which this request holds to the end.
    let matched = &route.matcher.path;

    // Rate limits: after authentication, whose Identity (in the request's
    // extensions) keys consumer and claim counters.
    let rate_report = match &rule.policies.rate_limit {
        Some(limits) => {
            let info = crate::ratelimit::RequestInfo {
                client_ip: conn.remote.ip(),
                method: req.method(),
                path: &path,
                headers: req.headers(),
                identity: req.extensions().get(),
            };
            match crate::ratelimit::enforce(&state.rate_limits, &rule, limits, &info).await {
                Ok(report) => report,
                Err(rejected) => return Ok(rejected),
            }
        }
        None => None,
    };

    let origin = req.headers().get(header::ORIGIN).cloned();
    // RouteFilters see the path and query as the client sent them, before
    // URL rewrites: captured only for rules that have some.
    let route_filtered = has_route_filters(&rule);
    let client_target = route_filtered.then(|| (path.clone(), query.clone()));
    let mut ctx = RequestContext {
        host: raw_host,
        path,
        query,
        response_filters: Vec::new(),
        cors: None,
        mirrors: Vec::new(),
        route_filters: Vec::new(),
    };

    if let Some(redirect) =
        apply_request_filters(&rule.filters, &mut ctx, &mut req, matched, &host, conn)
    {
        return Ok(redirect);
    }
    if let (Some(cors), Some(origin)) = (ctx.cors.clone(), origin.as_ref()) {
        if is_preflight(&req) {
            return Ok(preflight_response(&cors, origin, req.headers()));
        }
    }

    let backend = pick_weighted(&rule.backends).ok_or_else(|| {
        ProxyError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no backend available for this route",
            rule.id.to_string(),
        )
    })?;
    if let Some(redirect) =
        apply_request_filters(&backend.filters, &mut ctx, &mut req, matched, &host, conn)
    {
        return Ok(redirect);
    }
    let target = match &backend.target {
        BackendTarget::Service(b) => b.clone(),
        BackendTarget::Invalid { reason } => {
            return Err(ProxyError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend reference is invalid",
                format!("{}: {reason}", rule.id),
            ));
        }
    };
    if target.endpoints.is_empty() {
        return Err(no_endpoint(&target));
    }
    let Some(backend_state) = state.backends.get(&target.name) else {
        // Every backend of a table gets a state when the table is prepared.
        return Err(no_endpoint(&target));
    };
    crate::observe::backend_chosen(&target, req.extensions());
    let route_policy = rule.policies.backend.as_deref();
    // gRPC streams are long-lived and carry their own message size limits:
    // only a BackendPolicy bounds their total size.
    let gateway_limit = match rule.id.kind {
        RouteKind::Grpc => None,
        _ => conn.limits.max_request_body_bytes,
    };
    let body_limit = limits::body_limit(
        route_policy.and_then(|p| p.max_request_body_bytes),
        target.settings.max_request_body_bytes,
        gateway_limit,
    );
    let body_limit = match body_limit {
        Some(max) => {
            // A declared length (Content-Length) over the limit is refused
            // before anything reaches the backend.
            if http_body::Body::size_hint(req.body()).lower() > max {
                limits::record(
                    conn.local_port,
                    Limit::body_size,
                    "declared body length over the limit",
                );
                return Err(body_too_large(&rule, max));
            }
            Some((max, Arc::new(AtomicBool::new(false))))
        }
        None => None,
    };
    let protocol = upstream_protocol(&rule, &target);
    let upgrade = is_upgrade(&req) && protocol != AppProtocol::H2c;
    let body_exceeded = body_limit.as_ref().map(|(_, flag)| flag.clone());
    let client = match client_target {
        Some((path, query)) if !upgrade && !ctx.route_filters.is_empty() => {
            Some(crate::route_filter::ClientRequest {
                method: req.method().clone(),
                host,
                path,
                query,
                headers: req.headers().clone(),
                identity: req.extensions().get::<crate::identity::Identity>().cloned(),
                client_ip: conn.remote.ip(),
                rule: Some(rule.clone()),
            })
        }
        _ => None,
    };
    let UpstreamRequest {
        req: upstream_req,
        client_upgrade,
    } = build_upstream_request(req, &ctx, conn, protocol, &state, body_limit)?;
    // Most specific first: a BackendPolicy on the route, the route's own
    // `retry`, the Service's BackendPolicy.
    let retry = route_policy
        .and_then(|p| p.retry.as_ref())
        .or(rule.retry.as_deref())
        .or(target.settings.retry.as_ref());
    let attempts = resilience::retry::Attempts {
        backend: backend_state,
        protocol,
        retry,
        per_try_timeout: rule
            .timeouts
            .backend_request
            .or(retry.and_then(|r| r.per_try_timeout)),
        client_ip: conn.remote.ip(),
        query: ctx.query.as_deref(),
        upgrade,
    };
    let body_check = BodyCheck {
        exceeded: body_exceeded.as_deref(),
        port: conn.local_port,
    };
    let request_timeout = rule
        .timeouts
        .request
        .or(route_policy.and_then(|p| p.request_timeout))
        .or(target.settings.request_timeout);
    let rule_ref: &Rule = &rule;
    let send = |req: Request<Body>| async move {
        let forward = forward(
            attempts,
            UpstreamRequest {
                req,
                client_upgrade,
            },
            rule_ref,
            body_check,
        );
        match request_timeout {
            Some(limit) => tokio::time::timeout(limit, forward).await.map_err(|_| {
                ProxyError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    format!("{} after {limit:?}", rule_ref.id),
                )
            })?,
            None => forward.await,
        }
    };
    let mut resp = match &client {
        Some(client) => {
            crate::route_filter::serve(
                &shared.route_filters,
                &ctx.route_filters,
                client,
                upstream_req,
                send,
            )
            .await?
        }
        None => send(upstream_req).await?,
    };

    for m in &ctx.response_filters {
        filters::modify_headers(resp.headers_mut(), m);
    }
    if let (Some(cors), Some(origin)) = (&ctx.cors, &origin) {
        if filters::cors_origin_allowed(cors, origin.to_str().unwrap_or("")) {
            filters::cors_response_headers(cors, origin, resp.headers_mut());
        }
    }
    if let Some(report) = &rate_report {
        report.apply(resp.headers_mut());
    }
    Ok(resp)
}

/// State accumulated while filters run.
struct RequestContext {
    /// Host to send upstream (the client's, unless rewritten), with port.
    host: String,
    /// Normalized (and possibly rewritten) path.
    path: String,
    query: Option<String>,
    response_filters: Vec<portcullis_model::HeaderModifier>,
    cors: Option<portcullis_model::Cors>,
    mirrors: Vec<Mirror>,
    route_filters: Vec<Arc<portcullis_model::route_filter::RouteFilterConfig>>,
}

/// Does the rule, or one of its backends, have RouteFilters?
fn has_route_filters(rule: &Rule) -> bool {
    let any = |filters: &[Filter]| filters.iter().any(|f| matches!(f, Filter::RouteFilter(_)));
    any(&rule.filters) || rule.backends.iter().any(|b| any(&b.filters))
}

/// Applies request-side filters; returns a response when one of them ends
/// the request (a redirect).
fn apply_request_filters(
    filters_list: &[Filter],
    ctx: &mut RequestContext,
    req: &mut Request<Incoming>,
    matched: &PathMatch,
    host: &str,
    conn: &ConnInfo,
) -> Option<Response<Body>> {
    for filter in filters_list {
        match filter {
            Filter::RequestHeaderModifier(m) => filters::modify_headers(req.headers_mut(), m),
            Filter::ResponseHeaderModifier(m) => ctx.response_filters.push(m.clone()),
            Filter::UrlRewrite(rw) => {
                if let Some(h) = &rw.hostname {
                    ctx.host = h.clone();
                }
                if let Some(p) = &rw.path {
                    ctx.path = filters::rewrite_path(&ctx.path, p, matched);
                }
            }
            Filter::RequestRedirect(r) => {
                let location = filters::redirect_location(
                    r,
                    &RedirectInput {
                        scheme: conn.scheme(),
                        host,
                        path: &ctx.path,
                        query: ctx.query.as_deref(),
                        listener_port: conn.local_port,
                        matched,
                    },
                );
                let mut resp = Response::new(body::empty());
                *resp.status_mut() =
                    StatusCode::from_u16(r.status_code).unwrap_or(StatusCode::FOUND);
                match HeaderValue::from_str(&location) {
                    Ok(v) => {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    Err(_) => {
                        return Some(error_response(
                            StatusCode::BAD_REQUEST,
                            "cannot build redirect location",
                        ))
                    }
                }
                return Some(resp);
            }
            Filter::RequestMirror(m) => ctx.mirrors.push(m.clone()),
            Filter::Cors(c) => ctx.cors = Some(c.clone()),
            Filter::RouteFilter(f) => ctx.route_filters.push(f.clone()),
        }
    }
    None
}

fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn preflight_response(
    cors: &portcullis_model::Cors,
    origin: &HeaderValue,
    request_headers: &HeaderMap,
) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::OK;
    if filters::cors_origin_allowed(cors, origin.to_str().unwrap_or("")) {
        *resp.headers_mut() = filters::cors_preflight_headers(cors, origin, request_headers);
    }
    resp
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form)
/// or the Host header.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// Weighted random choice among backends with weight > 0. `None` when the
/// rule has no backend or all weights are zero (both answered 500).
pub(crate) fn pick_weighted(backends: &[WeightedBackend]) -> Option<&WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = rand::random::<u64>() % total;
    for b in backends {
        let w = u64::from(b.weight);
        if ticket < w {
            return Some(b);
        }
        ticket -= w;
    }
    None
}

/// gRPC needs HTTP/2 end to end whatever the Service says (so does a rule
/// whose RouteFilter translates gRPC-Web for a gRPC backend); otherwise a
/// BackendPolicy's `connection.httpVersion`, then the Service's.
fn upstream_protocol(rule: &Rule, backend: &Backend) -> AppProtocol {
    if rule.id.kind == RouteKind::Grpc || crate::route_filter::transform::speaks_grpc(rule) {
        AppProtocol::H2c
    } else {
        backend.settings.http_version.unwrap_or(backend.protocol)
    }
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// An upstream request plus what is needed to finish an upgrade.
struct UpstreamRequest {
    req: Request<Body>,
    client_upgrade: Option<ClientUpgrade>,
}

/// The client side of an upgrade, and the drain its tunnel answers to.
struct ClientUpgrade {
    on: hyper::upgrade::OnUpgrade,
    drain: crate::server::DrainWatch,
}

/// Did forwarding fail because reading the client's request body failed?
/// hyper reports the body stream's error as a user error wrapping it.
pub(crate) fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = error.source();
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn build_upstream_request(
    mut req: Request<Incoming>,
    ctx: &RequestContext,
    conn: &ConnInfo,
    protocol: AppProtocol,
    state: &crate::state::Prepared,
    body_limit: Option<(u64, Arc<AtomicBool>)>,
) -> Result<UpstreamRequest, ProxyError> {
    let upgrade = is_upgrade(&req) && protocol != AppProtocol::H2c;
    let client_upgrade = upgrade.then(|| ClientUpgrade {
        on: hyper::upgrade::on(&mut req),
        drain: conn.drain.clone(),
    });
    let upgrade_header = req.headers().get(header::UPGRADE).cloned();

    let uri = origin_form_uri(ctx).map_err(|e| {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "invalid request target",
            e.to_string(),
        )
    })?;

    let (mut parts, incoming) = req.into_parts();
    filters::remove_hop_by_hop(&mut parts.headers);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(u) = upgrade_header {
            parts.headers.insert(header::UPGRADE, u);
        }
    }
    if protocol == AppProtocol::H2c {
        // gRPC relies on trailers: tell the backend we accept them.
        if parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"))
        {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
    } else {
        let host = HeaderValue::from_str(&ctx.host).map_err(|_| {
            ProxyError::new(
                StatusCode::BAD_REQUEST,
                "invalid Host header",
                ctx.host.clone(),
            )
        })?;
        parts.headers.insert(header::HOST, host);
        parts.version = Version::HTTP_11;
    }
    append_forwarded(&mut parts.headers, conn, &ctx.host);
    parts.uri = uri;

    let incoming = match body_limit {
        Some((max, exceeded)) => body::boxed(LimitedBody::new(incoming, max, exceeded)),
        None => body::boxed(incoming),
    };
    let body = if ctx.mirrors.is_empty() {
        incoming
    } else {
        let mut tee = TeeBody::new(incoming);
        for mirror in &ctx.mirrors {
            if !mirror_selected(mirror) {
                continue;
            }
            let mirror_endpoint = state.backends.get(&mirror.backend.name).and_then(|b| {
                b.pick(&crate::lb::PickInput {
                    headers: &parts.headers,
                    query: ctx.query.as_deref(),
                    client_ip: conn.remote.ip(),
                    tried: &[],
                })
                .map(|e| e.addr)
            });
            let Some(mirror_endpoint) = mirror_endpoint else {
                tracing::debug!(backend = %mirror.backend.name, "mirror has no ready endpoint");
                continue;
            };
            let mirror_body = tee.add_mirror();
            send_mirror(
                &state.backends,
                &parts,
                ctx,
                mirror,
                mirror_endpoint,
                body::boxed(mirror_body),
            );
        }
        body::boxed(tee)
    };
    Ok(UpstreamRequest {
        req: Request::from_parts(parts, body),
        client_upgrade,
    })
}

/// `<path>?<query>`: the endpoint is filled in per attempt.
fn origin_form_uri(ctx: &RequestContext) -> Result<Uri, http::Error> {
    let path_and_query = match &ctx.query {
        Some(q) => format!("{}?{q}", ctx.path),
        None => ctx.path.clone(),
    };
    Uri::builder().path_and_query(path_and_query).build()
}

/// `http://<endpoint>/<path>?<query>`: the endpoint in the authority keys
/// the connection pool; the client's host travels in the Host header.
fn upstream_uri(ctx: &RequestContext, endpoint: SocketAddr) -> Result<Uri, http::Error> {
    let path_and_query = match &ctx.query {
        Some(q) => format!("{}?{q}", ctx.path),
        None => ctx.path.clone(),
    };
    Uri::builder()
        .scheme("http")
        .authority(endpoint.to_string())
        .path_and_query(path_and_query)
        .build()
}

fn mirror_selected(mirror: &Mirror) -> bool {
    if mirror.numerator >= mirror.denominator {
        return true;
    }
    mirror.denominator > 0 && rand::random::<u32>() % mirror.denominator < mirror.numerator
}

fn send_mirror(
    backends: &resilience::Backends,
    parts: &http::request::Parts,
    ctx: &RequestContext,
    mirror: &Mirror,
    endpoint: SocketAddr,
    body: Body,
) {
    let Ok(uri) = upstream_uri(ctx, endpoint) else {
        return;
    };
    let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers.clone();
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let protocol = mirror.backend.protocol;
    builder = builder.version(if protocol == AppProtocol::H2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    });
    let Ok(req) = builder.body(body) else {
        return;
    };
    let Some(state) = backends.get(&mirror.backend.name) else {
        return;
    };
    let client = state.clients.client(protocol).clone();
    let name = mirror.backend.name.clone();
    tokio::spawn(async move {
        // Mirrors must not pile up: bound each one's lifetime.
        match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
            Ok(Ok(resp)) => {
                // Drain so the pooled connection can be reused.
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
            Ok(Err(e)) => tracing::debug!(backend = %name, error = %e, "mirror request failed"),
            Err(_) => tracing::debug!(backend = %name, "mirror request timed out"),
        }
    });
}

/// X-Forwarded-For gets the client address appended; -Proto and -Host
/// describe the connection the client made to us.
fn append_forwarded(headers: &mut HeaderMap, conn: &ConnInfo, host: &str) {
    let ip = conn.remote.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(conn.scheme()),
    );
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert(X_FORWARDED_HOST.clone(), v);
        }
    }
}

/// Whether the request body was cut off at its limit (a [`LimitedBody`]
/// sets the flag), and the listener to count it on.
#[derive(Clone, Copy)]
struct BodyCheck<'a> {
    exceeded: Option<&'a AtomicBool>,
    port: u16,
}

/// Sends through the backend's balancer, breakers and retries; maps what
/// cannot be relayed to the gateway's own answer.
async fn forward(
    attempts: resilience::retry::Attempts<'_>,
    upstream: UpstreamRequest,
    rule: &Rule,
    body: BodyCheck<'_>,
) -> Result<Response<Body>, ProxyError> {
    use resilience::retry::Failure;
    let UpstreamRequest {
        req,
        client_upgrade,
    } = upstream;
    let name = attempts.backend.name.as_str();
    let label = &attempts.backend.label;
    let mut resp = match resilience::retry::send(attempts, req).await {
        Ok(resp) => resp,
        // The body was cut off at the limit: whatever the failure looks
        // like upstream, it is the client's 413.
        Err(_) if body.exceeded.is_some_and(|e| e.load(Ordering::Relaxed)) => {
            limits::record(body.port, Limit::body_size, "streamed body over the limit");
            return Err(ProxyError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                rule.id.to_string(),
            ));
        }
        Err(Failure::Overloaded(o)) => {
            crate::metrics::global().record_circuit_rejection(label);
            tracing::warn!(backend = %name, rule = %rule.id, limit = o.as_str(), "circuit breaker open: 503");
            return Ok(overloaded_response(o));
        }
        Err(Failure::NoEndpoint) => {
            return Err(ProxyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                format!("{name} has no ready endpoint"),
            ))
        }
        Err(Failure::Connect(e)) => {
            return Err(ProxyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error",
                format!("{}: {e}", rule.id),
            ))
        }
        Err(Failure::Tls(e)) => {
            return Err(ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "upstream TLS error",
                format!("{}: {e}", rule.id),
            ))
        }
        Err(Failure::Upstream(e)) => {
            return Err(ProxyError::new(
                StatusCode::BAD_GATEWAY,
                "upstream error",
                format!("{}: {e}", rule.id),
            ))
        }
        Err(Failure::ClientBody(e)) => {
            // The client sent a malformed body (bad chunking, cut short):
            // its fault, not the backend's.
            return Err(ProxyError::new(
                StatusCode::BAD_REQUEST,
                "malformed request body",
                format!("{}: {e}", rule.id),
            ));
        }
        Err(Failure::Timeout(limit)) => {
            return Err(ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout",
                format!("{} backend attempt after {limit:?}", rule.id),
            ))
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(ClientUpgrade { on, mut drain }) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            // The tunnel holds `drain`: a graceful shutdown waits for it
            // (the client may finish its session) until the deadline,
            // then closes it.
            tokio::spawn(async move {
                match tokio::try_join!(on, upstream_upgrade) {
                    Ok((client_io, upstream_io)) => {
                        let mut client_io = hyper_util::rt::TokioIo::new(client_io);
                        let mut upstream_io = hyper_util::rt::TokioIo::new(upstream_io);
                        tokio::select! {
                            copied = copy_bidirectional(&mut client_io, &mut upstream_io) => {
                                if let Err(e) = copied {
                                    tracing::debug!(error = %e, "upgraded connection closed with error");
                                }
                            }
                            _ = drain.closing() => {
                                tracing::debug!("drain deadline passed: upgraded connection closed");
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            return Ok(resp);
        }
    }
    filters::remove_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

static X_PORTCULLIS_OVERLOADED: HeaderName = HeaderName::from_static("x-portcullis-overloaded");

/// 503 from a circuit breaker, naming the limit that refused the request.
fn overloaded_response(o: Overloaded) -> Response<Body> {
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded");
    resp.headers_mut().insert(
        X_PORTCULLIS_OVERLOADED.clone(),
        HeaderValue::from_static(o.as_str()),
    );
    resp
}

fn body_too_large(rule: &Rule, max: u64) -> ProxyError {
    ProxyError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body too large",
        format!("{}: limit {max} bytes", rule.id),
    )
}

fn no_endpoint(target: &Backend) -> ProxyError {
    ProxyError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy upstream",
        format!("{} has no ready endpoint", target.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::BackendTarget;

    fn wb(weight: u32, reason: &str) -> WeightedBackend {
        WeightedBackend {
            weight,
            target: BackendTarget::Invalid {
                reason: reason.to_string(),
            },
            filters: vec![],
        }
    }

    #[test]
    fn weights_are_respected_and_zero_never_picked() {
        let backends = vec![wb(0, "zero"), wb(1, "one"), wb(3, "three")];
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            let picked = pick_weighted(&backends).unwrap();
            let BackendTarget::Invalid { reason } = &picked.target else {
                unreachable!()
            };
            match reason.as_str() {
                "zero" => counts[0] += 1,
                "one" => counts[1] += 1,
                _ => counts[2] += 1,
            }
        }
        assert_eq!(counts[0], 0);
        // 1:3 split; with 4000 draws the share of "one" is 0.25 +- 0.05
        // with overwhelming probability.
        let share = f64::from(counts[1]) / 4000.0;
        assert!((0.2..0.3).contains(&share), "share {share}");
    }

    #[test]
    fn all_zero_weights_pick_nothing() {
        assert!(pick_weighted(&[wb(0, "a"), wb(0, "b")]).is_none());
        assert!(pick_weighted(&[]).is_none());
    }
}
