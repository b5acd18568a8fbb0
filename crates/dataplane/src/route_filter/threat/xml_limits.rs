//! Structural limits of an XML document, checked in one pass over its
//! bytes. A document type declaration (`<!DOCTYPE`, `<!ENTITY`, any
//! `<!` other than a comment or CDATA) is refused outright: entities
//! declared there are how billion-laughs expansion and external entity
//! (XXE) reads work, and a request body has no business carrying one.
//! For the same reason only the predefined and numeric entity references
//! are accepted.

use portcullis_model::route_filter::threat::XmlLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XmlIssue {
    Limit(&'static str, u64),
    /// DOCTYPE or another markup declaration.
    Dtd,
    /// A reference to an entity that is not predefined.
    Entity,
    Malformed,
}

pub(crate) fn scan(bytes: &[u8], limits: &XmlLimits) -> Result<(), XmlIssue> {
    let mut depth: u32 = 0;
    let mut elements: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            let end = find(bytes, i, b"<").unwrap_or(bytes.len());
            text(&bytes[i..end], limits)?;
            i = end;
            continue;
        }
        let rest = &bytes[i..];
        if rest.starts_with(b"<?") {
            i = find(bytes, i, b"?>").ok_or(XmlIssue::Malformed)? + 2;
        } else if rest.starts_with(b"<!--") {
            i = find(bytes, i + 4, b"-->").ok_or(XmlIssue::Malformed)? + 3;
        } else if rest.starts_with(b"<![CDATA[") {
            let end = find(bytes, i + 9, b"]]>").ok_or(XmlIssue::Malformed)?;
            if end - (i + 9) > limits.max_text_length as usize {
                return Err(text_limit(limits));
            }
            i = end + 3;
        } else if rest.starts_with(b"<!") {
            return Err(XmlIssue::Dtd);
        } else if rest.starts_with(b"</") {
            depth = depth.checked_sub(1).ok_or(XmlIssue::Malformed)?;
            i = find(bytes, i, b">").ok_or(XmlIssue::Malformed)? + 1;
        } else {
            elements += 1;
            if elements > limits.max_elements {
                return Err(XmlIssue::Limit("maxElements", limits.max_elements.into()));
            }
            let (end, self_closing) = start_tag(bytes, i + 1, limits)?;
            // An empty element (`<d/>`) is as deep as any other.
            if depth + 1 > limits.max_depth {
                return Err(XmlIssue::Limit("maxDepth", limits.max_depth.into()));
            }
            if !self_closing {
                depth += 1;
            }
            i = end;
        }
    }
    if depth == 0 && elements > 0 {
        Ok(())
    } else {
        Err(XmlIssue::Malformed)
    }
}

/// Scans a start tag from just after `<`; returns the index after `>`
/// and whether it was `/>`.
fn start_tag(bytes: &[u8], mut i: usize, limits: &XmlLimits) -> Result<(usize, bool), XmlIssue> {
    let mut attributes: u32 = 0;
    // The element name.
    while i < bytes.len() && !is_space(bytes[i]) && bytes[i] != b'>' && bytes[i] != b'/' {
        i += 1;
    }
    loop {
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        match bytes.get(i) {
            None => return Err(XmlIssue::Malformed),
            Some(b'>') => return Ok((i + 1, false)),
            Some(b'/') => {
                return match bytes.get(i + 1) {
                    Some(b'>') => Ok((i + 2, true)),
                    _ => Err(XmlIssue::Malformed),
                }
            }
            Some(_) => {}
        }
        // name = "value"
        while i < bytes.len() && bytes[i] != b'=' && !is_space(bytes[i]) && bytes[i] != b'>' {
            i += 1;
        }
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            return Err(XmlIssue::Malformed);
        }
        i += 1;
        while i < bytes.len() && is_space(bytes[i]) {
            i += 1;
        }
        let quote = match bytes.get(i) {
            Some(q @ (b'"' | b'\'')) => *q,
            _ => return Err(XmlIssue::Malformed),
        };
        let end = find(bytes, i + 1, &[quote]).ok_or(XmlIssue::Malformed)?;
        text(&bytes[i + 1..end], limits)?;
        attributes += 1;
        if attributes > limits.max_attributes_per_element {
            return Err(XmlIssue::Limit(
                "maxAttributesPerElement",
                limits.max_attributes_per_element.into(),
            ));
        }
        i = end + 1;
    }
}

/// Character data or an attribute value: its length, and its entity
/// references (predefined or numeric only).
fn text(t: &[u8], limits: &XmlLimits) -> Result<(), XmlIssue> {
    if t.len() > limits.max_text_length as usize {
        return Err(text_limit(limits));
    }
    let mut i = 0;
    while let Some(amp) = find(t, i, b"&") {
        let end = find(t, amp, b";").ok_or(XmlIssue::Malformed)?;
        let name = &t[amp + 1..end];
        let ok = matches!(name, b"lt" | b"gt" | b"amp" | b"quot" | b"apos")
            || (name.len() > 1
                && name[0] == b'#'
                && (name[1..].iter().all(u8::is_ascii_digit)
                    || (name[1] == b'x'
                        && name.len() > 2
                        && name[2..].iter().all(u8::is_ascii_hexdigit))));
        if !ok {
            return Err(XmlIssue::Entity);
        }
        i = end + 1;
    }
    Ok(())
}

fn text_limit(limits: &XmlLimits) -> XmlIssue {
    XmlIssue::Limit("maxTextLength", limits.max_text_length.into())
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from >= haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::route_filter::threat::Mode;

    fn limits() -> XmlLimits {
        XmlLimits {
            mode: Mode::Block,
            max_body_bytes: 1 << 20,
            max_depth: 3,
            max_elements: 5,
            max_attributes_per_element: 2,
            max_text_length: 16,
        }
    }

    #[test]
    fn documents_within_limits_pass() {
        for doc in [
            r#"<?xml version="1.0"?><a x="1" y='2'><b>t &amp; &#60;</b><!-- c --><c/></a>"#,
            "<a><![CDATA[<not/>]]></a>",
            "<a>\n <b>x</b>\n</a>\n",
        ] {
            assert_eq!(scan(doc.as_bytes(), &limits()), Ok(()), "{doc}");
        }
    }

    #[test]
    fn limits_and_declarations_are_refused() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>
<lolz>&lol2;</lolz>"#;
        let cases = [
            (laughs, XmlIssue::Dtd),
            (
                r#"<!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>"#,
                XmlIssue::Dtd,
            ),
            ("<a>&xxe;</a>", XmlIssue::Entity),
            ("<a><b><c><d/></c></b></a>", XmlIssue::Limit("maxDepth", 3)),
            (
                "<a><b/><b/><b/><b/><b/></a>",
                XmlIssue::Limit("maxElements", 5),
            ),
            (
                r#"<a x="1" y="2" z="3"/>"#,
                XmlIssue::Limit("maxAttributesPerElement", 2),
            ),
            (
                "<a>01234567890123456</a>",
                XmlIssue::Limit("maxTextLength", 16),
            ),
            (
                r#"<a x="01234567890123456"/>"#,
                XmlIssue::Limit("maxTextLength", 16),
            ),
            ("<a><b></a>", XmlIssue::Malformed),
            ("<a x=1/>", XmlIssue::Malformed),
            ("just text", XmlIssue::Malformed),
        ];
        for (doc, issue) in cases {
            assert_eq!(scan(doc.as_bytes(), &limits()), Err(issue), "{doc}");
        }
    }
}
