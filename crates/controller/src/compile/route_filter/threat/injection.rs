//! The default injection rule set and its compilation into one `RegexSet`
//! per request location.
//!
//! The default rules aim at payloads, not at words: `select` or `union`
//! alone, an apostrophe in a name (O'Brien), `a < b` in prose or dots in a
//! file name pass; a quote followed by a tautology or a comment, `UNION
//! SELECT`, an HTML tag that runs script, an event-handler attribute, a
//! `javascript:` URL, or a `..` path segment does not. Values are matched
//! as sent and after each round of percent-decoding (see
//! `model::route_filter::threat::injection`).

use std::collections::HashSet;

use http::HeaderName;
use portcullis_api::route_filter::threat::{InjectionLocation, InjectionSpec};
use portcullis_model::route_filter::threat::injection::{Injection, Location, Rule, RuleSet};
use portcullis_model::route_filter::threat::Mode;

use super::mode;

/// `(id, pattern)`. Ids are stable: users disable them by id.
pub(crate) const DEFAULT_RULES: &[(&str, &str)] = &[
    // ' OR 1=1 --, " or "a"="a, ') or ('x' like 'x
    (
        "sqli-tautology",
        r#"(?i)['"`]\s*\)?\s*(?:or|and|\|\||&&)\s+\(?\s*['"`]?\w*['"`]?\s*(?:=|<>|!=|<=?|>=?)"#,
    ),
    // 1 OR 1=1 (unquoted numeric tautology)
    (
        "sqli-numeric-tautology",
        r"(?i)\b(?:or|and)\s+(\d+)\s*(?:=|<>|!=)\s*\d+\b",
    ),
    // admin'--, x' #, 1'/*
    ("sqli-comment", r#"['"`]\s*(?:--|#|/\*)"#),
    // UNION [ALL] SELECT, also with inline comments or + for spaces
    (
        "sqli-union",
        r"(?i)\bunion\b(?:\s|\+|/\*.*?\*/)+(?:all\b|distinct\b)?(?:\s|\+|/\*.*?\*/)*select\b",
    ),
    // ; DROP TABLE, ; DELETE FROM, ...
    (
        "sqli-stacked-query",
        r"(?i);\s*(?:drop\s+(?:table|database|schema|user)|truncate\s+table|alter\s+table|delete\s+from|insert\s+into|update\s+\w+\s+set|exec(?:ute)?\s+\w|shutdown\b)",
    ),
    // Time- and error-based probes, dangerous procedures.
    (
        "sqli-functions",
        r"(?i)\b(?:pg_)?sleep\s*\(\s*\d|\bbenchmark\s*\(\s*\d+\s*,|\bwaitfor\s+delay\s+'|\bxp_cmdshell\b|\b(?:extractvalue|updatexml|load_file)\s*\(",
    ),
    // Catalog probing: select ... from information_schema
    (
        "sqli-schema-probe",
        r"(?i)\bfrom\s+(?:information_schema|mysql\.user|pg_catalog|pg_shadow|sqlite_master|sys\.objects|sysobjects)\b",
    ),
    // <script, </script (a tag name must follow '<' directly)
    ("xss-script-tag", r"(?i)<\s*/?\s*script\b"),
    // Tags that load or run active content.
    (
        "xss-active-tag",
        r"(?i)<(?:iframe|frame|frameset|object|embed|applet|base|meta|link|svg|math|form|isindex)\b",
    ),
    // javascript:alert(1), vbscript:..., data:text/html,...
    (
        "xss-script-url",
        r#"(?i)(?:^|[\s"'`=(<])(?:java|vb|live)script\s*:[^\s]|\bdata\s*:\s*text/html\b"#,
    ),
    // onerror=, onload=, onclick= ... (event-handler attributes)
    (
        "xss-event-handler",
        r"(?i)\bon(?:error|load|unload|beforeunload|click|dblclick|contextmenu|mouse(?:over|out|down|up|move|enter|leave)|key(?:down|up|press)|focus(?:in|out)?|blur|submit|reset|change|input|invalid|select|toggle|pointer[a-z]+|animation[a-z]+|transition[a-z]+|begin|end|hashchange|message|resize|scroll|wheel|drag[a-z]*|drop|copy|cut|paste|show|play|pause|error)\s*=",
    ),
    // CSS expression(), srcdoc=, document.cookie
    (
        "xss-dom-access",
        r"(?i)\bdocument\s*\.\s*(?:cookie|domain|write)\b|\bexpression\s*\(|\bsrcdoc\s*=",
    ),
    // ../ or ..\ as a path segment (after decoding)
    ("traversal-dot-dot", r"(?:^|[/\\])\.\.(?:[/\\]|$)"),
    // Well-known sensitive files.
    (
        "traversal-sensitive-file",
        r"(?i)/etc/(?:passwd|shadow|group|hosts)\b|/proc/self/|\b(?:boot|win)\.ini\b|\\windows\\system32\\",
    ),
    // NUL bytes truncate paths in C-based backends.
    ("traversal-nul-byte", r"\x00"),
];

const DEFAULT_HEADERS: &[&str] = &["user-agent", "referer", "x-forwarded-host"];

fn location(l: InjectionLocation) -> Location {
    match l {
        InjectionLocation::Path => Location::Path,
        InjectionLocation::Query => Location::Query,
        InjectionLocation::Header => Location::Header,
        InjectionLocation::Body => Location::Body,
    }
}

pub(super) fn compile(spec: &InjectionSpec, section_mode: Mode) -> Result<Injection, String> {
    let default_ids: HashSet<&str> = DEFAULT_RULES.iter().map(|(id, _)| *id).collect();
    for id in spec.disabled_rules.iter().chain(&spec.report_rules) {
        if !default_ids.contains(id.as_str()) {
            return Err(format!("unknown default rule id {id:?}"));
        }
    }
    let section_locations: Vec<Location> = if spec.locations.is_empty() {
        Location::ALL.to_vec()
    } else {
        spec.locations.iter().copied().map(location).collect()
    };
    // Every rule with the locations it applies to.
    let mut rules: Vec<(Rule, Vec<Location>)> = Vec::new();
    for (id, pattern) in DEFAULT_RULES {
        if spec.disabled_rules.iter().any(|d| d == id) {
            continue;
        }
        let mode = if spec.report_rules.iter().any(|r| r == id) {
            Mode::Report
        } else {
            section_mode
        };
        rules.push((
            Rule {
                id: (*id).into(),
                mode,
                pattern: (*pattern).to_string(),
            },
            section_locations.clone(),
        ));
    }
    let mut custom_ids = HashSet::new();
    for (i, custom) in spec.custom_rules.iter().enumerate() {
        let id = custom.id.trim();
        if id.is_empty() || default_ids.contains(id) || !custom_ids.insert(id) {
            return Err(format!(
                "customRules[{i}]: id {id:?} is empty or already used"
            ));
        }
        // Checked alone first so the error names the rule.
        regex::RegexBuilder::new(&custom.pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("customRules[{i}] ({id}): invalid pattern: {e}"))?;
        let locations = if custom.locations.is_empty() {
            section_locations.clone()
        } else {
            custom.locations.iter().copied().map(location).collect()
        };
        rules.push((
            Rule {
                id: id.into(),
                mode: mode(custom.mode, section_mode),
                pattern: custom.pattern.clone(),
            },
            locations,
        ));
    }
    let mut sets: [Option<RuleSet>; 4] = Default::default();
    for (slot, loc) in sets.iter_mut().zip(Location::ALL) {
        let here: Vec<Rule> = rules
            .iter()
            .filter(|(_, locs)| locs.contains(&loc))
            .map(|(r, _)| r.clone())
            .collect();
        if !here.is_empty() {
            *slot = Some(RuleSet::new(here).map_err(|e| format!("rule set too large: {e}"))?);
        }
    }
    let headers = match &spec.headers {
        Some(names) => names
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid header name {n:?}"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => DEFAULT_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect(),
    };
    Ok(Injection::new(headers, sets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_set() -> Injection {
        compile(&InjectionSpec::default(), Mode::Block).expect("default rules compile")
    }

    fn hits(injection: &Injection, location: Location, value: &str) -> Vec<String> {
        let mut out = Vec::new();
        injection.scan(location, value, location == Location::Query, &mut |r| {
            out.push(r.id.to_string())
        });
        out
    }

    #[test]
    fn malicious_samples_are_detected_by_the_expected_rule() {
        let set = default_set();
        let samples = [
            (Location::Query, "' OR 1=1 --", "sqli-tautology"),
            (Location::Query, "x' or 'a'='a", "sqli-tautology"),
            (Location::Query, "1 or 1=1", "sqli-numeric-tautology"),
            (Location::Query, "admin'--", "sqli-comment"),
            (
                Location::Query,
                "1 UNION SELECT password FROM users",
                "sqli-union",
            ),
            (Location::Query, "1+union+all+select+1,2", "sqli-union"),
            (Location::Query, "1/**/UNION/**/SELECT/**/1", "sqli-union"),
            (Location::Body, "x'; DROP TABLE users", "sqli-stacked-query"),
            (Location::Body, "1 AND SLEEP(5)", "sqli-functions"),
            (
                Location::Body,
                "select table_name from information_schema.tables",
                "sqli-schema-probe",
            ),
            (
                Location::Body,
                "<script>alert(1)</script>",
                "xss-script-tag",
            ),
            (
                Location::Query,
                "%3Cscript%3Ealert(1)%3C/script%3E",
                "xss-script-tag",
            ),
            (Location::Query, "%253Cscript%253E", "xss-script-tag"),
            (Location::Body, "<iframe src=//evil>", "xss-active-tag"),
            (Location::Body, "javascript:alert(1)", "xss-script-url"),
            (
                Location::Body,
                "<a href=\"JavaScript:alert(1)\">",
                "xss-script-url",
            ),
            (
                Location::Body,
                "<img src=x onerror=alert(1)>",
                "xss-event-handler",
            ),
            (
                Location::Body,
                "<body onload = steal()>",
                "xss-event-handler",
            ),
            (
                Location::Header,
                "x\" onmouseover=\"alert(1)",
                "xss-event-handler",
            ),
            (Location::Query, "../../etc/passwd", "traversal-dot-dot"),
            (
                Location::Query,
                "..\\..\\windows\\win.ini",
                "traversal-dot-dot",
            ),
            (
                Location::Path,
                "/files/..%2F..%2Fsecret",
                "traversal-dot-dot",
            ),
            (
                Location::Query,
                "%2e%2e%2f%2e%2e%2fsecret",
                "traversal-dot-dot",
            ),
            (
                Location::Query,
                "%252e%252e%252fsecret",
                "traversal-dot-dot",
            ),
            (Location::Query, "/etc/passwd", "traversal-sensitive-file"),
            (Location::Query, "report.pdf%00.png", "traversal-nul-byte"),
        ];
        for (location, value, rule) in samples {
            let found = hits(&set, location, value);
            assert!(
                found.iter().any(|r| r == rule),
                "{value:?} at {location:?}: expected {rule}, got {found:?}"
            );
        }
    }

    #[test]
    fn benign_samples_pass() {
        let set = default_set();
        let samples = [
            "O'Brien",
            "Conan O'Brien's show",
            "it's 5 o'clock",
            "D'Angelo and O'Neil",
            "I'd say 'yes' or 'no' is fine",
            "a < b and c > d",
            "if x<3 or y>4 then",
            "Please select a plan from the list below",
            "select",
            "the union of two sets",
            "Union Station, select platform 3",
            "report.v2.final.pdf",
            "archive..tar.gz",
            "/docs/v1.2/readme.md",
            "wait... what?",
            "JavaScript: The Good Parts",
            "one=1&onion=2",
            "money=5",
            "Tom & Jerry",
            "SELECT is a SQL keyword",
            "50% off, 100%",
            "user@example.com",
            "mozilla/5.0 (x11; linux x86_64) applewebkit/537.36",
            "https://example.com/a?b=c",
            "or 1 more thing",
            "don't -- really",
        ];
        for location in Location::ALL {
            for value in samples {
                let found = hits(&set, location, value);
                assert!(
                    found.is_empty(),
                    "{value:?} at {location:?} flagged: {found:?}"
                );
            }
        }
    }

    #[test]
    fn rules_can_be_disabled_reported_and_extended() {
        let spec: InjectionSpec = serde_json::from_value(serde_json::json!({
            "locations": ["Query"],
            "disabledRules": ["sqli-comment"],
            "reportRules": ["xss-script-tag"],
            "customRules": [{"id": "no-foo", "pattern": "(?i)foo", "locations": ["Header"], "mode": "Report"}]
        }))
        .unwrap();
        let set = compile(&spec, Mode::Block).unwrap();
        assert!(hits(&set, Location::Query, "admin'--").is_empty());
        assert!(set.rules(Location::Path).is_none());
        let mut modes = Vec::new();
        set.scan(Location::Query, "<script>", true, &mut |r| {
            modes.push(r.mode)
        });
        assert_eq!(modes, vec![Mode::Report]);
        assert_eq!(hits(&set, Location::Header, "FOO"), vec!["no-foo"]);
        assert!(hits(&set, Location::Query, "foo").is_empty());

        let bad = |v: serde_json::Value| {
            compile(&serde_json::from_value(v).unwrap(), Mode::Block).unwrap_err()
        };
        assert!(bad(serde_json::json!({"disabledRules": ["nope"]})).contains("nope"));
        assert!(
            bad(serde_json::json!({"customRules": [{"id": "x", "pattern": "("}]}))
                .contains("customRules[0]")
        );
        assert!(
            bad(serde_json::json!({"customRules": [{"id": "sqli-union", "pattern": "x"}]}))
                .contains("already used")
        );
    }
}
