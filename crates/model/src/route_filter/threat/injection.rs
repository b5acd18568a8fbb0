//! Injection rule sets: one `RegexSet` per request location, built once
//! at compile time, and the decoding a value goes through before it is
//! matched (percent-decoding repeated, so double-encoded payloads such as
//! `%252e%252e%252f` are seen as `../`).

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderName;
use serde::{Serialize, Serializer};

use super::Mode;

/// Where in the request a value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Location {
    Path,
    Query,
    Header,
    Body,
}

impl Location {
    pub const ALL: [Location; 4] = [
        Location::Path,
        Location::Query,
        Location::Header,
        Location::Body,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
            Location::Body => "body",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One detection rule as it applies to a location.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    pub id: Arc<str>,
    pub mode: Mode,
    pub pattern: String,
}

/// The rules of one location, matched in one pass.
#[derive(Clone)]
pub struct RuleSet {
    set: regex::RegexSet,
    rules: Vec<Rule>,
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, regex::Error> {
        let set = regex::RegexSetBuilder::new(rules.iter().map(|r| &r.pattern))
            // Bound what a careless custom pattern can cost.
            .size_limit(8 << 20)
            .build()?;
        Ok(RuleSet { set, rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules `value` matches, in rule order. The common case (nothing
    /// matches) costs one `is_match` and no allocation.
    pub fn matching(&self, value: &str) -> Vec<&Rule> {
        if !self.set.is_match(value) {
            return Vec::new();
        }
        self.set
            .matches(value)
            .into_iter()
            .map(|i| &self.rules[i])
            .collect()
    }
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.id))
            .finish()
    }
}

impl Serialize for RuleSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.rules.iter().map(|r| (&*r.id, r.mode)))
    }
}

/// The compiled injection section.
#[derive(Debug, Clone, Serialize)]
pub struct Injection {
    /// Headers scanned (lowercase).
    #[serde(serialize_with = "header_names")]
    pub headers: Vec<HeaderName>,
    /// Per `Location` (indexed by `Location as usize`); `None` = not
    /// scanned.
    sets: [Option<RuleSet>; 4],
}

fn header_names<S: Serializer>(h: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(HeaderName::as_str))
}

impl Injection {
    pub fn new(headers: Vec<HeaderName>, sets: [Option<RuleSet>; 4]) -> Injection {
        Injection { headers, sets }
    }

    pub fn rules(&self, location: Location) -> Option<&RuleSet> {
        self.sets[location.index()].as_ref()
    }

    /// Scans `raw` (as found at `location`) and each of its decodings;
    /// calls `found` with every rule that matches, at most once per
    /// rule per value. `plus_is_space` for query strings and form fields.
    pub fn scan<'a>(
        &'a self,
        location: Location,
        raw: &str,
        plus_is_space: bool,
        found: &mut impl FnMut(&'a Rule),
    ) {
        let Some(set) = self.rules(location) else {
            return;
        };
        let mut seen: Vec<&Rule> = Vec::new();
        for_each_decoding(raw, plus_is_space, |value| {
            for rule in set.matching(value) {
                if !seen.iter().any(|r| std::ptr::eq(*r, rule)) {
                    seen.push(rule);
                    found(rule);
                }
            }
        });
    }
}

/// Percent-decoding rounds applied to a value: enough for double (and
/// triple) encoding, bounded so a crafted value cannot loop.
const MAX_DECODE_ROUNDS: usize = 3;

/// Calls `f` with `raw` and with each successive percent-decoding of it
/// that differs from the previous one.
pub fn for_each_decoding(raw: &str, plus_is_space: bool, mut f: impl FnMut(&str)) {
    f(raw);
    let mut current: Cow<'_, str> = Cow::Borrowed(raw);
    for round in 0..MAX_DECODE_ROUNDS {
        let plus = plus_is_space && round == 0;
        let encoded = current.contains('%') || (plus && current.contains('+'));
        if !encoded {
            return;
        }
        let next = percent_decode(&current, plus);
        if next == current {
            return;
        }
        f(&next);
        current = Cow::Owned(next);
    }
}

/// Percent-decodes `s` (invalid escapes kept as they are; invalid UTF-8
/// replaced), `+` as a space if `plus_is_space`.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decodings(raw: &str, plus: bool) -> Vec<String> {
        let mut out = Vec::new();
        for_each_decoding(raw, plus, |v| out.push(v.to_string()));
        out
    }

    #[test]
    fn decodes_repeatedly_and_stops_when_stable() {
        assert_eq!(decodings("abc", false), vec!["abc"]);
        assert_eq!(
            decodings("%252e%252e%252f", false),
            vec!["%252e%252e%252f", "%2e%2e%2f", "../"]
        );
        assert_eq!(decodings("a+b%20c", true), vec!["a+b%20c", "a b c"]);
        assert_eq!(decodings("100%", false), vec!["100%"]);
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%c3%a9", false), "é");
    }

    #[test]
    fn rule_sets_report_every_matching_rule_once() {
        let rule = |id: &str, pattern: &str| Rule {
            id: id.into(),
            mode: Mode::Block,
            pattern: pattern.into(),
        };
        let set = RuleSet::new(vec![rule("a", "x"), rule("b", r"\.\./")]).unwrap();
        let injection = Injection::new(Vec::new(), [None, Some(set), None, None]);
        let mut hits = Vec::new();
        injection.scan(Location::Query, "x%2e%2e%2f", false, &mut |r| {
            hits.push(r.id.to_string())
        });
        assert_eq!(hits, vec!["a", "b"]);
        let mut none = 0;
        injection.scan(Location::Path, "x", false, &mut |_| none += 1);
        assert_eq!(none, 0);
    }
}
