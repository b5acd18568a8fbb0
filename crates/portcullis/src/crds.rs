//! `portcullis crds`: the CRDs of our own resources, generated from the
//! Rust types (crates/api), so the checked-in YAML under crds/ can be
//! compared with what the binary would generate.

use kube::CustomResourceExt;
use portcullis_api::{AuthPolicy, BackendPolicy, GatewayParameters, RateLimitPolicy};

/// Every CRD, as one multi-document YAML text.
pub fn yaml() -> Result<String, serde_yaml::Error> {
    let crds = [
        GatewayParameters::crd(),
        AuthPolicy::crd(),
        RateLimitPolicy::crd(),
        BackendPolicy::crd(),
    ];
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crds_render_and_name_gateway_parameters() {
        let text = super::yaml().expect("CRDs serialize");
        assert!(
            text.contains("name: gatewayparameters.portcullis.dev"),
            "{text}"
        );
        assert!(text.contains("kind: GatewayParameters"));
        assert!(text.contains("name: authpolicies.portcullis.dev"), "{text}");
        assert!(text.contains("name: ratelimitpolicies.portcullis.dev"));
        assert!(text.contains("name: backendpolicies.portcullis.dev"));
    }
}
