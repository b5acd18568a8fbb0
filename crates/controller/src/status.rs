//! What `compile()` says about each object: the `status` to write back, in
//! Gateway API shape, and human-readable problems for `portcullis validate`.

use serde::Serialize;
use serde_json::{json, Value};

/// Which object a [`StatusUpdate`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum StatusKind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    /// Gateway API `BackendTLSPolicy`: `status.ancestors`, one per Gateway.
    BackendTlsPolicy,
    /// One of our policy CRDs: `status.ancestors`.
    Policy(portcullis_api::PolicyKind),
    /// Not a Kubernetes object: a file of the YAML directory provider that
    /// could not be loaded. Status writers skip it; `validate` prints it.
    ConfigFile,
}

impl StatusKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::GatewayClass => "GatewayClass",
            StatusKind::Gateway => "Gateway",
            StatusKind::HttpRoute => "HTTPRoute",
            StatusKind::GrpcRoute => "GRPCRoute",
            StatusKind::BackendTlsPolicy => "BackendTLSPolicy",
            StatusKind::Policy(kind) => kind.as_str(),
            StatusKind::ConfigFile => "File",
        }
    }
}

impl std::fmt::Display for StatusKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of one object, as compiled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusUpdate {
    pub kind: StatusKind,
    /// `None` for cluster-scoped objects (GatewayClass) and files.
    pub namespace: Option<String>,
    pub name: String,
    /// The object's whole `status` field in Gateway API shape. Conditions
    /// carry `observedGeneration` but no `lastTransitionTime`: `compile` is
    /// pure, so the status writer stamps the time (keeping the old one when
    /// a condition did not change). `Null` for [`StatusKind::ConfigFile`].
    pub status: Value,
    /// Actionable, human-readable messages; empty when the object is fully
    /// healthy.
    pub problems: Vec<String>,
}

impl StatusUpdate {
    /// `Kind namespace/name`, for messages.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {}/{}", self.kind, ns, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// Finds a condition by type in a route's status for the parent named
    /// `gateway` (name only), or in a Gateway/GatewayClass status. A helper
    /// for tests and `validate`.
    pub fn condition(&self, condition_type: &str) -> Option<&Value> {
        find_condition(self.status.get("conditions"), condition_type)
    }

    /// A condition of the route status entry whose parentRef has this name
    /// (and section name, when given).
    pub fn parent_condition(
        &self,
        gateway: &str,
        section: Option<&str>,
        condition_type: &str,
    ) -> Option<&Value> {
        let parents = self.status.get("parents")?.as_array()?;
        let parent = parents.iter().find(|p| {
            let r = &p["parentRef"];
            r["name"].as_str() == Some(gateway)
                && (section.is_none() || r["sectionName"].as_str() == section)
        })?;
        find_condition(parent.get("conditions"), condition_type)
    }

    /// A condition of a Gateway listener status.
    pub fn listener_condition(&self, listener: &str, condition_type: &str) -> Option<&Value> {
        let listeners = self.status.get("listeners")?.as_array()?;
        let l = listeners
            .iter()
            .find(|l| l["name"].as_str() == Some(listener))?;
        find_condition(l.get("conditions"), condition_type)
    }
}

fn find_condition<'a>(conditions: Option<&'a Value>, condition_type: &str) -> Option<&'a Value> {
    conditions?
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(condition_type))
}

/// One condition; rendered with [`Condition::to_json`].
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }

    pub fn to_json(&self, observed_generation: i64) -> Value {
        json!({
            "type": self.type_,
            "status": if self.status { "True" } else { "False" },
            "reason": self.reason,
            "message": self.message,
            "observedGeneration": observed_generation,
        })
    }
}

pub(crate) fn conditions_json(conditions: &[Condition], generation: i64) -> Value {
    Value::Array(conditions.iter().map(|c| c.to_json(generation)).collect())
}

/// Condition types and reasons of the Gateway API (v1.5), as strings.
pub mod reasons {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";

    pub const INVALID: &str = "Invalid";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    /// GatewayClass and Gateway: `parametersRef` missing or of a wrong kind.
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";

    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";

    /// Policy attachment (GEP-713).
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";

    /// Client certificate validation (Gateway `spec.tls.frontend`) and
    /// BackendTLSPolicy.
    pub const INVALID_CA_CERTIFICATE_REF: &str = "InvalidCACertificateRef";
    pub const INVALID_CA_CERTIFICATE_KIND: &str = "InvalidCACertificateKind";
    pub const NO_VALID_CA_CERTIFICATE: &str = "NoValidCACertificate";
    /// Gateway `spec.tls.backend.clientCertificateRef`.
    pub const INVALID_CLIENT_CERTIFICATE_REF: &str = "InvalidClientCertificateRef";
    /// Gateway condition type: some port uses `AllowInsecureFallback`.
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
    pub const CONFIGURATION_CHANGED: &str = "ConfigurationChanged";
}
