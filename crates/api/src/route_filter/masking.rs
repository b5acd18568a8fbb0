//! `RouteFilter.spec.masking`: redaction of response data before it leaves
//! the gateway — fields by JSON pointer, values by pattern (payment cards,
//! IBANs, e-mail addresses, US social security numbers, custom regexes).
//!
//! Masking fails closed: a JSON response that cannot be parsed, a body over
//! `maxBodyBytes` or a `Content-Encoding` the gateway cannot decode is
//! answered 502 rather than sent unmasked.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskingSpec {
    /// Fields of JSON responses, by JSON pointer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldMaskSpec>,
    /// Patterns searched in every string (and number) of JSON responses,
    /// and of text responses when `textBodies` is true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<PatternMaskSpec>,
    /// Also apply `patterns` to `text/*` and XML responses (default false:
    /// only JSON responses are masked, others pass unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_bodies: Option<bool>,
    /// Largest (decompressed) response body masked, in bytes (default 1 MiB,
    /// at most 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// A response over `maxBodyBytes`: `Reject` answers 502 (default);
    /// `PassThrough` sends it unmasked — only for data you accept leaking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_limit: Option<MaskOverLimit>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MaskOverLimit {
    Reject,
    PassThrough,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FieldMaskSpec {
    /// JSON pointer (RFC 6901); a `*` token matches every element of an
    /// array (and every member of an object), e.g. `/accounts/*/iban`.
    pub pointer: String,
    #[serde(flatten)]
    pub action: MaskActionSpec,
}

/// A pattern: exactly one of `builtin` and `regex`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatternMaskSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinPattern>,
    /// A regular expression (Rust `regex` syntax) searched in values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(flatten)]
    pub action: MaskActionSpec,
}

/// `PaymentCard`: 13-19 digits (spaces or dashes between), Luhn-checked.
/// `Iban`: ISO 13616, mod-97 checked. `Email`. `UsSsn`: `AAA-GG-SSSS`
/// without the never-issued areas (000, 666, 9xx), group 00 or serial 0000.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BuiltinPattern {
    PaymentCard,
    Iban,
    Email,
    UsSsn,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaskActionSpec {
    /// `Remove`: the field (pointer) or the matched text (pattern) goes.
    /// `Replace`: replaced by `replacement`. `Mask`: every character but the
    /// last `keepLast` replaced by `maskCharacter`.
    pub action: MaskAction,
    /// Text of `Replace` (default `[REDACTED]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// Characters left visible at the end by `Mask` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Character of `Mask` (default `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_character: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MaskAction {
    Remove,
    Replace,
    Mask,
}
