//! Structural limits of a JSON document, checked in one pass over its
//! bytes with an explicit stack: no tree is built and nothing recurses,
//! so a 10,000-level document costs a few comparisons (it fails at
//! `max_depth`), not the gateway's stack.

use portcullis_model::route_filter::threat::JsonLimits;

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonIssue {
    /// A limit (its name in the configuration) and its value.
    Limit(&'static str, u64),
    /// Not JSON (unterminated string, unbalanced brackets).
    Malformed,
}

struct Container {
    object: bool,
    /// Members (objects) or elements (arrays) so far.
    count: u32,
}

pub(crate) fn scan(bytes: &[u8], limits: &JsonLimits) -> Result<(), JsonIssue> {
    let mut stack: Vec<Container> = Vec::new();
    // In an object: the next string is a member name.
    let mut expect_key = false;
    let mut total_keys: u32 = 0;
    let mut i = 0;
    // One value starts at the top of `stack`: arrays count it.
    let value_start = |stack: &mut Vec<Container>| -> Result<(), JsonIssue> {
        if let Some(top) = stack.last_mut() {
            if !top.object {
                top.count += 1;
                if top.count > limits.max_array_length {
                    return Err(JsonIssue::Limit(
                        "maxArrayLength",
                        limits.max_array_length.into(),
                    ));
                }
            }
        }
        Ok(())
    };
    while i < bytes.len() {
        match bytes[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            c @ (b'{' | b'[') => {
                value_start(&mut stack)?;
                if stack.len() >= limits.max_depth as usize {
                    return Err(JsonIssue::Limit("maxDepth", limits.max_depth.into()));
                }
                stack.push(Container {
                    object: c == b'{',
                    count: 0,
                });
                expect_key = c == b'{';
                i += 1;
            }
            c @ (b'}' | b']') => {
                match stack.pop() {
                    Some(top) if top.object == (c == b'}') => {}
                    _ => return Err(JsonIssue::Malformed),
                }
                expect_key = false;
                i += 1;
            }
            b',' => {
                expect_key = stack.last().is_some_and(|t| t.object);
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let end = string_end(bytes, i + 1).ok_or(JsonIssue::Malformed)?;
                let len = end - i - 1;
                if len > limits.max_string_length as usize {
                    return Err(JsonIssue::Limit(
                        "maxStringLength",
                        limits.max_string_length.into(),
                    ));
                }
                match stack.last_mut() {
                    Some(top) if top.object && expect_key => {
                        top.count += 1;
                        if top.count > limits.max_fields_per_object {
                            return Err(JsonIssue::Limit(
                                "maxFieldsPerObject",
                                limits.max_fields_per_object.into(),
                            ));
                        }
                        total_keys += 1;
                        if total_keys > limits.max_total_keys {
                            return Err(JsonIssue::Limit(
                                "maxTotalKeys",
                                limits.max_total_keys.into(),
                            ));
                        }
                        expect_key = false;
                    }
                    _ => value_start(&mut stack)?,
                }
                i = end + 1;
            }
            _ => {
                // A number or literal: runs to the next delimiter.
                value_start(&mut stack)?;
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b',' | b']' | b'}' | b':' | b' ' | b'\t' | b'\n' | b'\r' | b'"'
                    )
                {
                    i += 1;
                }
            }
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(JsonIssue::Malformed)
    }
}

/// Index of the quote closing a string whose content starts at `from`.
fn string_end(bytes: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::route_filter::threat::Mode;

    fn limits() -> JsonLimits {
        JsonLimits {
            mode: Mode::Block,
            max_body_bytes: 1 << 20,
            max_depth: 4,
            max_fields_per_object: 3,
            max_array_length: 3,
            max_string_length: 8,
            max_total_keys: 5,
        }
    }

    #[test]
    fn documents_within_limits_pass() {
        for doc in [
            r#"{"a": [1, 2, {"b": "x\"y"}], "c": null}"#,
            r#"[[[ "deep" ]]]"#,
            "12",
            r#""text""#,
            r#"{"s": "a\\"}"#,
            "{}",
            "[]",
        ] {
            assert_eq!(scan(doc.as_bytes(), &limits()), Ok(()), "{doc}");
        }
    }

    #[test]
    fn each_limit_is_enforced() {
        let cases = [
            (r#"[[[[[1]]]]]"#, "maxDepth"),
            (r#"{"a":1,"b":2,"c":3,"d":4}"#, "maxFieldsPerObject"),
            ("[1,2,3,4]", "maxArrayLength"),
            (r#"[{},{},{},{}]"#, "maxArrayLength"),
            (r#"["123456789"]"#, "maxStringLength"),
            (r#"{"123456789": 1}"#, "maxStringLength"),
            (r#"{"a":{"b":1,"c":2},"d":{"e":1,"f":2}}"#, "maxTotalKeys"),
        ];
        for (doc, limit) in cases {
            match scan(doc.as_bytes(), &limits()) {
                Err(JsonIssue::Limit(name, _)) => assert_eq!(name, limit, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn very_deep_documents_fail_fast_without_recursion() {
        let doc = "[".repeat(1_000_000) + &"]".repeat(1_000_000);
        assert_eq!(
            scan(doc.as_bytes(), &limits()),
            Err(JsonIssue::Limit("maxDepth", 4))
        );
        let mut generous = limits();
        generous.max_depth = u32::MAX;
        assert_eq!(scan(doc.as_bytes(), &generous), Ok(()));
    }

    #[test]
    fn malformed_documents_are_reported() {
        for doc in [r#"{"a": "unterminated"#, "[1, 2", "[}", "]"] {
            assert_eq!(
                scan(doc.as_bytes(), &limits()),
                Err(JsonIssue::Malformed),
                "{doc}"
            );
        }
    }
}
