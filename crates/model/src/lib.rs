//! The compiled routing table.
//!
//! This crate is the contract between the controller (which produces a
//! [`RouteTable`] from Kubernetes objects with `compile()`) and the data plane
//! (which serves it). It is plain data: no kube, no I/O. Everything the data
//! path needs per request is precomputed here (header names, compiled regexes,
//! routes presorted by Gateway API precedence), so the hot path only reads.
//!
//! The whole table is `Serialize` so that `/config_dump` can show exactly what
//! is being served; private keys are redacted on the way out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub mod auth;
pub mod backend_policy;
mod pattern;
pub mod ratelimit;
pub mod route_filter;
mod serde_helpers;

pub use pattern::Pattern;
pub use serde_helpers::{HeaderNameSer, HeaderValueSer};

/// Everything one data-plane process serves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteTable {
    /// Increases with every compile; shown in `/config_dump` and logs.
    pub generation: u64,
    /// One entry per listening port, sorted by port.
    pub ports: Vec<PortConfig>,
}

impl RouteTable {
    pub fn port(&self, port: u16) -> Option<&PortConfig> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One bound socket. Several Gateway listeners may share a port when they
/// differ by hostname; they are merged here into one set of virtual hosts.
#[derive(Debug, Clone, Serialize)]
pub struct PortConfig {
    pub port: u16,
    pub protocol: Protocol,
    /// Present for HTTPS ports, and for TLS ports with listeners in
    /// `Terminate` mode.
    pub tls: Option<TlsConfig>,
    /// Sorted most specific first: exact hostnames, then wildcards by
    /// descending suffix length, then the catch-all. Empty on TLS ports.
    pub virtual_hosts: Vec<VirtualHost>,
    /// TLS ports: the TLSRoutes by SNI, sorted like `virtual_hosts`; the
    /// first whose hostname matches the ClientHello's SNI takes the
    /// connection. No SNI, or no match: the connection is closed.
    pub tls_routes: Vec<TlsRoute>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    Http,
    Https,
    /// Gateway API `TLS` listeners: TCP streams routed by SNI (TLSRoute).
    Tls,
}

/// One SNI hostname of a TLS port and where its connections go.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRoute {
    pub hostname: HostMatch,
    pub mode: TlsMode,
    /// The TLSRoute rule: its weighted backends (no filters, no matches).
    /// `None` for the hostname of a listener no route serves it on: the
    /// connection is closed rather than handed to a less specific
    /// listener's route (listener isolation).
    pub rule: Option<Arc<Rule>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsMode {
    /// The TLS bytes go to the backend untouched: the backend terminates.
    Passthrough,
    /// The gateway completes the handshake (with the port's certificate for
    /// the SNI) and forwards the decrypted stream.
    Terminate,
}

/// Server certificates of an HTTPS port, selected by SNI.
#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    /// Selected by SNI: the entry whose hostname matches best (exact, then
    /// longest wildcard); an entry with `HostMatch::Any` is the default for
    /// clients that send no SNI or an unknown name.
    pub certificates: Vec<ServerCertificate>,
    /// Client certificate validation (the Gateway's
    /// `spec.tls.frontend`, per port); `None` asks for no certificate.
    pub client_validation: Option<ClientValidation>,
}

/// How an HTTPS port validates client certificates (frontend mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientValidation {
    /// Trust anchors: PEM bundle of one or more CA certificates.
    pub ca_pem: Arc<str>,
    /// `AllowValidOnly`: a handshake without a valid certificate fails.
    /// `AllowInsecureFallback` (false): the connection is accepted without
    /// a certificate (or with one that does not verify), and the request
    /// carries no client identity.
    pub required: bool,
    /// `Kind namespace/name` of the CA references, for logs.
    pub sources: Vec<String>,
    /// When set, the verified client identity is sent to backends in this
    /// header; a header of that name from the client is always removed.
    pub forward_header: Option<HeaderNameSer>,
}

/// A certificate and private key the gateway presents as a TLS client
/// (the Gateway's `spec.tls.backend.clientCertificateRef`).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ClientCertificate {
    /// `namespace/name` of the Secret, for logs.
    pub source: String,
    pub cert_chain_pem: Arc<str>,
    #[serde(serialize_with = "serde_helpers::redacted")]
    pub private_key_pem: Arc<str>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// TLS from the gateway to a backend (a `BackendTLSPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendTls {
    /// `namespace/name` of the policy, for logs.
    pub policy: String,
    pub roots: TrustRoots,
    /// Sent as SNI; also the name the certificate must carry when
    /// `subject_alt_names` is empty.
    pub server_name: String,
    /// When not empty, the certificate must carry one of these instead of
    /// `server_name`.
    pub subject_alt_names: Vec<SubjectAltName>,
    /// Presented to the backend when it asks (mTLS).
    pub client_certificate: Option<ClientCertificate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TrustRoots {
    /// PEM bundle of the CA certificates to trust.
    Pem(Arc<str>),
    /// The operating system's trust store.
    System,
    /// The policy cannot be honoured (no valid CA certificate, invalid
    /// hostname): connections fail with this reason rather than going out
    /// unverified.
    Unusable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SubjectAltName {
    /// A DNS name (wildcards in the certificate match as usual).
    Hostname(String),
    /// A URI, compared exactly (e.g. a SPIFFE ID).
    Uri(String),
}

#[derive(Clone, Serialize)]
pub struct ServerCertificate {
    pub hostname: HostMatch,
    /// `namespace/name` of the Secret, for logs.
    pub source: String,
    /// PEM chain, leaf first.
    pub cert_chain_pem: Arc<str>,
    #[serde(serialize_with = "serde_helpers::redacted")]
    pub private_key_pem: Arc<str>,
    /// Handshake settings of the listener this certificate belongs to
    /// (`tls.options`); shared by the certificates of one listener.
    pub options: Arc<TlsOptions>,
}

/// Per-listener handshake settings, from the listener's `tls.options`
/// (`portcullis.dev/min-tls-version`, `portcullis.dev/cipher-suites`,
/// `portcullis.dev/alpn`). Validated by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct TlsOptions {
    /// `None`: TLS 1.2 and 1.3.
    pub min_version: Option<TlsVersion>,
    /// IANA names from [`CIPHER_SUITES`], in preference order; empty: the
    /// defaults (all of them).
    pub cipher_suites: Vec<String>,
    /// ALPN protocols offered, in preference order. `None`: the protocol's
    /// default (`h2`, `http/1.1` on HTTPS; none on TLS ports).
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// The cipher suites the data plane can offer (IANA names), TLS 1.3
/// first.
pub const CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("hostname", &self.hostname)
            .field("source", &self.source)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A hostname pattern. Hostnames are stored lowercase, without port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum HostMatch {
    /// `foo.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`; matches any
    /// host with at least one more label in front.
    Wildcard(String),
    /// No hostname restriction.
    Any,
}

impl HostMatch {
    /// Parses a Gateway API hostname (`*.example.com`, `foo.com`), or `Any`
    /// when absent.
    pub fn parse(hostname: Option<&str>) -> HostMatch {
        match hostname {
            None | Some("") => HostMatch::Any,
            Some(h) => {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Wildcard(suffix.to_string()),
                    None => HostMatch::Exact(h),
                }
            }
        }
    }

    /// Does a (lowercase, port-less) request host match this pattern?
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostMatch::Any => true,
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
            HostMatch::Any => f.write_str("*"),
        }
    }
}

/// The routes reachable under one hostname pattern on one port.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    pub hostname: HostMatch,
    /// Presorted by Gateway API precedence: the first route whose matcher
    /// accepts the request wins.
    pub routes: Vec<Route>,
}

/// One `matches[]` entry of one rule (a rule without matches gets one
/// catch-all `PathPrefix /` route).
#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub matcher: RequestMatch,
    pub rule: Arc<Rule>,
}

/// Identifies the source of a rule, for logs, metrics and `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RuleId {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// Index of the rule in `spec.rules`.
    pub rule_index: usize,
    /// `spec.rules[].name` when set.
    pub rule_name: Option<String>,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            RouteKind::Http => "httproute",
            RouteKind::Grpc => "grpcroute",
            RouteKind::Tls => "tlsroute",
        };
        write!(
            f,
            "{kind}/{}/{}/rule/{}",
            self.namespace, self.name, self.rule_index
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RouteKind {
    Http,
    Grpc,
    Tls,
}

/// All conditions must hold (AND).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestMatch {
    pub path: PathMatch,
    /// Uppercase method name.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
    pub query_params: Vec<QueryParamMatch>,
}

#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    /// The normalized request path equals this value.
    Exact(String),
    /// Segment-aware prefix: `/foo` matches `/foo`, `/foo/` and `/foo/bar`
    /// but not `/foobar`. Stored without a trailing slash (except for `/`).
    Prefix(String),
    /// Must match the whole path.
    Regex(Pattern),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".to_string())
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Regex(re) => re.is_full_match(path),
        }
    }
}

/// Segment-aware prefix match (the Gateway API `PathPrefix` semantics).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    pub name: HeaderNameSer,
    pub value: StringMatch,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueryParamMatch {
    /// Query parameter names are case-sensitive.
    pub name: String,
    pub value: StringMatch,
}

#[derive(Debug, Clone, Serialize)]
pub enum StringMatch {
    Exact(String),
    /// Must match the whole value.
    Regex(Pattern),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(v) => v == value,
            StringMatch::Regex(re) => re.is_full_match(value),
        }
    }
}

/// What happens to a request once a route matched: shared by all matches of
/// one rule.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub id: RuleId,
    /// Applied in order. A `RequestRedirect` ends processing: no backend is
    /// contacted.
    pub filters: Vec<Filter>,
    /// Empty with no redirect filter means 500 (the spec's answer for a rule
    /// without usable backends).
    pub backends: Vec<WeightedBackend>,
    pub timeouts: Timeouts,
    /// The route's own retry stanza (HTTPRoute `rules[].retry`). A
    /// BackendPolicy attached to the route wins over it; it wins over the
    /// Service's BackendPolicy.
    pub retry: Option<Box<backend_policy::RetryPolicy>>,
    /// Our policies in force for this rule where it is served (GEP-713
    /// effective policies: Gateway, listener, route and rule levels merged
    /// by the controller). The same route rule served under two listeners
    /// with different policies is two `Rule`s.
    pub policies: RulePolicies,
}

/// The compiled policies of a rule: one field per policy kind, each `None`
/// when no policy of that kind applies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RulePolicies {
    /// Set when the policies that apply could not be compiled together.
    /// The rule is answered with 500 rather than served without them: a
    /// policy may be what protects the backend (fail closed).
    pub invalid: Option<String>,
    /// `AuthPolicy`: IP rules, authentication, authorization.
    pub auth: Option<Arc<auth::AuthConfig>>,
    /// BackendPolicy attached to the route or one of its rules: request-level
    /// settings (timeout, retries) that win over the Service's.
    pub backend: Option<Arc<backend_policy::RouteBackendPolicy>>,
    /// `RateLimitPolicy`: the limits a request must pass.
    pub rate_limit: Option<Arc<ratelimit::RateLimitConfig>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Whole request, from the gateway receiving it to the response headers
    /// (including retries). `None` means no limit.
    pub request: Option<Duration>,
    /// One attempt against a backend.
    pub backend_request: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
    RequestMirror(Mirror),
    Cors(Cors),
    /// An ExtensionRef to one of our `RouteFilter`s.
    RouteFilter(Arc<route_filter::RouteFilterConfig>),
}

/// Order of application: set, add, remove (as the Gateway API specifies).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(HeaderNameSer, HeaderValueSer)>,
    pub add: Vec<(HeaderNameSer, HeaderValueSer)>,
    pub remove: Vec<HeaderNameSer>,
}

#[derive(Debug, Clone, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the prefix the route matched (`PathMatch::Prefix`) with this
    /// value.
    ReplacePrefixMatch(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's scheme.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    /// `None` derives the port from the scheme rules of the spec.
    pub port: Option<u16>,
    pub status_code: u16,
}

#[derive(Debug, Clone, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mirror {
    pub backend: Arc<Backend>,
    /// Share of requests mirrored: numerator / denominator.
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Cors {
    /// Exact origins or patterns with `*` wildcards; `*` alone allows any.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_seconds: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightedBackend {
    /// Weight 0 keeps the backend configured but sends it no traffic.
    pub weight: u32,
    pub target: BackendTarget,
    /// backendRef-level filters, applied after the rule's filters.
    pub filters: Vec<Filter>,
}

#[derive(Debug, Clone, Serialize)]
pub enum BackendTarget {
    Service(Arc<Backend>),
    /// A reference that cannot be served (not found, not permitted, wrong
    /// kind). Its share of the traffic is answered with 500, per the spec.
    Invalid {
        reason: String,
    },
}

/// A Service port and its ready endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    /// `namespace/name:port`: stable key for pools and metrics.
    pub name: String,
    pub protocol: AppProtocol,
    /// Ready endpoints only. Empty means 503.
    pub endpoints: Vec<SocketAddr>,
    /// From a BackendPolicy attached to the Service; the defaults without
    /// one. Backends with equal names and settings share data-plane state
    /// (load balancer, breakers, health) across tables.
    pub settings: Arc<backend_policy::BackendSettings>,
    /// Set when a BackendTLSPolicy targets this Service port: the gateway
    /// speaks TLS to its endpoints.
    pub tls: Option<Arc<BackendTls>>,
}

/// How the gateway talks to a backend (from the Service port `appProtocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum AppProtocol {
    /// HTTP/1.1, upgrading to WebSocket when the client asks.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (`kubernetes.io/h2c`).
    H2c,
    /// WebSocket over HTTP/1.1 (`kubernetes.io/ws`).
    WebSocket,
}
