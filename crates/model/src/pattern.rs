use serde::{Serialize, Serializer};

/// A regular expression that must match a whole value (Gateway API
/// `RegularExpression` matches are full matches). Compiled once, at compile
/// time; serialized as the source the user wrote.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    anchored: regex::Regex,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, regex::Error> {
        let anchored = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            // Bound the memory a hostile or careless pattern can take.
            .size_limit(1 << 20)
            .build()?;
        Ok(Pattern {
            source: source.to_string(),
            anchored,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_full_match(&self, value: &str) -> bool {
        self.anchored.is_match(value)
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_value_only() {
        let p = Pattern::new("/v[0-9]+").unwrap();
        assert!(p.is_full_match("/v2"));
        assert!(!p.is_full_match("/v2/extra"));
        assert!(!p.is_full_match("x/v2"));
    }

    #[test]
    fn alternation_is_anchored_as_a_whole() {
        let p = Pattern::new("a|b").unwrap();
        assert!(p.is_full_match("a"));
        assert!(!p.is_full_match("ab"));
    }
}
