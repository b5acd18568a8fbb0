//! A listener's TLS mode and handshake settings (`tls.mode`, and the
//! `tls.options` keys under our domain).
//!
//! | key                             | value                                      |
//! |---------------------------------|--------------------------------------------|
//! | `portcullis.dev/min-tls-version`| `1.2` (default) or `1.3`                   |
//! | `portcullis.dev/cipher-suites`  | comma-separated IANA names, in preference order |
//! | `portcullis.dev/alpn`           | comma-separated ALPN ids (`h2,http/1.1`)   |
//! | `portcullis.dev/client-certificate-header` | header carrying the verified client certificate (frontend mTLS, `ca_bundle_frontend`) |
//!
//! Keys of other domains belong to other implementations and are ignored;
//! an unknown key of ours is an error (a typo must not silently leave a
//! listener with weaker settings than asked for).

use std::sync::Arc;

use gateway_api::gateways::{GatewayListenersTls, GatewayListenersTlsMode};
use portcullis_model::{Protocol, TlsMode, TlsOptions, TlsVersion, CIPHER_SUITES};

const PREFIX: &str = "portcullis.dev/";
const MIN_VERSION: &str = "portcullis.dev/min-tls-version";
const CIPHER_SUITES_KEY: &str = "portcullis.dev/cipher-suites";
const ALPN: &str = "portcullis.dev/alpn";

/// `tls.mode` of a TLS listener; the spec's default is Terminate.
pub(crate) fn mode(tls: Option<&GatewayListenersTls>) -> TlsMode {
    match tls.and_then(|t| t.mode.as_ref()) {
        Some(GatewayListenersTlsMode::Passthrough) => TlsMode::Passthrough,
        Some(GatewayListenersTlsMode::Terminate) | None => TlsMode::Terminate,
    }
}

/// The listener's handshake settings, or a message saying which option is
/// wrong and what is accepted.
pub(crate) fn parse(
    tls: Option<&GatewayListenersTls>,
    protocol: Option<Protocol>,
) -> Result<Arc<TlsOptions>, String> {
    let Some(options) = tls.and_then(|t| t.options.as_ref()) else {
        return Ok(Arc::default());
    };
    let ours: Vec<(&String, &String)> = options
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect();
    if ours.is_empty() {
        return Ok(Arc::default());
    }
    if protocol == Some(Protocol::Tls) && mode(tls) == TlsMode::Passthrough {
        return Err(format!(
            "tls.options {} apply to handshakes the gateway makes; a Passthrough listener makes none: remove them",
            ours.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut out = TlsOptions::default();
    for (key, value) in ours {
        let value = value.trim();
        match key.as_str() {
            MIN_VERSION => {
                out.min_version = Some(match value {
                    "1.2" | "TLSv1.2" => TlsVersion::Tls12,
                    "1.3" | "TLSv1.3" => TlsVersion::Tls13,
                    other => {
                        return Err(format!(
                            "tls.options {MIN_VERSION}: {other:?} is not supported; use \"1.2\" or \"1.3\""
                        ))
                    }
                })
            }
            CIPHER_SUITES_KEY => {
                for name in list(value) {
                    let Some(known) = cipher_suite(name) else {
                        return Err(format!(
                            "tls.options {CIPHER_SUITES_KEY}: unknown or unsupported cipher suite {name:?}; supported: {}",
                            CIPHER_SUITES.join(", ")
                        ));
                    };
                    if !out.cipher_suites.iter().any(|s| s == known) {
                        out.cipher_suites.push(known.to_string());
                    }
                }
                if out.cipher_suites.is_empty() {
                    return Err(format!("tls.options {CIPHER_SUITES_KEY} is empty"));
                }
            }
            ALPN => {
                let mut protocols = Vec::new();
                for id in list(value) {
                    if id.len() > 255 {
                        return Err(format!(
                            "tls.options {ALPN}: {id:?} is longer than 255 bytes"
                        ));
                    }
                    if protocol == Some(Protocol::Https) && !matches!(id, "h2" | "http/1.1") {
                        return Err(format!(
                            "tls.options {ALPN}: {id:?} is not served on HTTPS listeners; use h2 and/or http/1.1"
                        ));
                    }
                    if !protocols.iter().any(|p| p == id) {
                        protocols.push(id.to_string());
                    }
                }
                if protocols.is_empty() {
                    return Err(format!("tls.options {ALPN} is empty"));
                }
                out.alpn = Some(protocols);
            }
            // Read by the frontend mTLS compile (`ca_bundle_frontend`).
            super::ca_bundle_frontend::HEADER_OPTION => {}
            other => {
                return Err(format!(
                    "tls.options {other:?} is not a Portcullis option; use {MIN_VERSION}, {CIPHER_SUITES_KEY}, {ALPN} or {}",
                    super::ca_bundle_frontend::HEADER_OPTION
                ))
            }
        }
    }
    if out.min_version == Some(TlsVersion::Tls13)
        && !out.cipher_suites.is_empty()
        && !out.cipher_suites.iter().any(|s| s.starts_with("TLS13_"))
    {
        return Err(format!(
            "tls.options: {MIN_VERSION} is 1.3 but {CIPHER_SUITES_KEY} lists no TLS 1.3 suite: no handshake could succeed"
        ));
    }
    Ok(Arc::new(out))
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The name in [`CIPHER_SUITES`] for a user's name: exact, or the IANA
/// name of a TLS 1.3 suite (`TLS_AES_128_GCM_SHA256`), case-insensitive.
fn cipher_suite(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let tls13 = match upper.as_str() {
        "TLS_AES_256_GCM_SHA384" | "TLS_AES_128_GCM_SHA256" | "TLS_CHACHA20_POLY1305_SHA256" => {
            upper
                .strip_prefix("TLS_")
                .map(|rest| format!("TLS13_{rest}"))
        }
        _ => None,
    };
    let wanted = tls13.as_deref().unwrap_or(&upper);
    CIPHER_SUITES.iter().copied().find(|s| *s == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(mode: Option<GatewayListenersTlsMode>, options: &[(&str, &str)]) -> GatewayListenersTls {
        GatewayListenersTls {
            mode,
            options: Some(
                options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn valid_options_are_read() {
        let t = tls(
            None,
            &[
                (MIN_VERSION, "1.3"),
                (
                    CIPHER_SUITES_KEY,
                    "TLS_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384",
                ),
                (ALPN, "http/1.1"),
                ("example.com/other", "ignored"),
            ],
        );
        let o = parse(Some(&t), Some(Protocol::Https)).unwrap();
        assert_eq!(o.min_version, Some(TlsVersion::Tls13));
        assert_eq!(
            o.cipher_suites,
            ["TLS13_AES_128_GCM_SHA256", "TLS13_AES_256_GCM_SHA384"]
        );
        assert_eq!(o.alpn.as_deref(), Some(&["http/1.1".to_string()][..]));
    }

    /// Options, listener protocol, expected part of the message.
    type Case<'a> = (&'a [(&'a str, &'a str)], Protocol, &'a str);

    #[test]
    fn invalid_options_say_what_is_wrong() {
        let cases: [Case<'_>; 6] = [
            (
                &[(MIN_VERSION, "1.1")],
                Protocol::Https,
                "\"1.1\" is not supported",
            ),
            (
                &[(CIPHER_SUITES_KEY, "RC4")],
                Protocol::Https,
                "unknown or unsupported cipher suite \"RC4\"",
            ),
            (&[(ALPN, "spdy/3")], Protocol::Https, "not served on HTTPS"),
            (
                &[("portcullis.dev/min-version", "1.3")],
                Protocol::Https,
                "not a Portcullis option",
            ),
            (
                &[
                    (MIN_VERSION, "1.3"),
                    (CIPHER_SUITES_KEY, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
                ],
                Protocol::Https,
                "no TLS 1.3 suite",
            ),
            (&[(ALPN, " , ")], Protocol::Tls, "is empty"),
        ];
        for (options, protocol, expected) in cases {
            let err = parse(Some(&tls(None, options)), Some(protocol)).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
        // Any ALPN id is fine where the stream is not HTTP.
        assert!(parse(Some(&tls(None, &[(ALPN, "mqtt")])), Some(Protocol::Tls)).is_ok());
        let passthrough = tls(
            Some(GatewayListenersTlsMode::Passthrough),
            &[(MIN_VERSION, "1.3")],
        );
        let err = parse(Some(&passthrough), Some(Protocol::Tls)).unwrap_err();
        assert!(err.contains("Passthrough"), "{err}");
    }
}
