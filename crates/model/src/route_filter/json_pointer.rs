//! JSON pointers (RFC 6901) parsed at compile time into reference tokens.

use serde::{Serialize, Serializer};

/// A parsed JSON pointer; `*` tokens are wildcards only where the owner
/// says so (masking), literal keys elsewhere.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPointer {
    pub source: String,
    /// Unescaped tokens (`~1` -> `/`, `~0` -> `~`); empty for the whole
    /// document.
    pub tokens: Vec<String>,
}

impl JsonPointer {
    /// Parses `""` (the whole document) or `/a/b~1c`.
    pub fn parse(source: &str) -> Result<JsonPointer, String> {
        if source.is_empty() {
            return Ok(JsonPointer {
                source: String::new(),
                tokens: Vec::new(),
            });
        }
        let Some(rest) = source.strip_prefix('/') else {
            return Err(format!("JSON pointer {source:?} must start with '/'"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "JSON pointer {source:?}: '~' must be followed by 0 or 1"
                            ))
                        }
                    }
                } else {
                    token.push(c);
                }
            }
            tokens.push(token);
        }
        Ok(JsonPointer {
            source: source.to_string(),
            tokens,
        })
    }
}

impl Serialize for JsonPointer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escapes_and_rejects_bad_pointers() {
        let p = JsonPointer::parse("/a~1b/c~0d/0").unwrap();
        assert_eq!(p.tokens, vec!["a/b", "c~d", "0"]);
        assert!(JsonPointer::parse("").unwrap().tokens.is_empty());
        assert_eq!(JsonPointer::parse("/").unwrap().tokens, vec![""]);
        assert!(JsonPointer::parse("a/b").is_err());
        assert!(JsonPointer::parse("/a~2").is_err());
    }
}
