//! Compiled `RouteFilter` masking section: pointers split, patterns
//! compiled, limits resolved.

use serde::{Serialize, Serializer};

use super::json_pointer::JsonPointer;

#[derive(Debug, Clone, Default, Serialize)]
pub struct MaskingConfig {
    pub fields: Vec<FieldMask>,
    pub patterns: Vec<PatternMask>,
    pub text_bodies: bool,
    pub max_body_bytes: usize,
    /// Over the limit: 502 (true, the default) or unmasked (false).
    pub reject_over_limit: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldMask {
    /// `*` tokens match every array element and object member.
    pub pointer: JsonPointer,
    pub action: MaskAction,
}

#[derive(Debug, Clone, Serialize)]
pub struct PatternMask {
    pub pattern: SearchPattern,
    /// Extra check of a candidate match (checksums of builtins).
    pub check: MatchCheck,
    pub action: MaskAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MatchCheck {
    None,
    Luhn,
    Iban,
    UsSsn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MaskAction {
    Remove,
    Replace(String),
    Mask { keep_last: usize, character: char },
}

/// An unanchored regular expression searched in values, compiled once.
#[derive(Clone)]
pub struct SearchPattern {
    source: String,
    regex: regex::Regex,
}

impl SearchPattern {
    pub fn new(source: &str) -> Result<SearchPattern, regex::Error> {
        let regex = regex::RegexBuilder::new(source)
            // Bound the memory a hostile or careless pattern can take.
            .size_limit(1 << 20)
            .build()?;
        Ok(SearchPattern {
            source: source.to_string(),
            regex,
        })
    }

    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }
}

impl std::fmt::Debug for SearchPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SearchPattern({:?})", self.source)
    }
}

impl Serialize for SearchPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}
