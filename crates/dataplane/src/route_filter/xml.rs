//! XML <-> JSON for legacy services. The mapping (README, "XML <-> JSON"):
//!
//! - the document is an object with one member, the root element:
//!   `<order/>` <-> `{"order": ""}`;
//! - an attribute is a member `@name`, text beside attributes or child
//!   elements is `#text` (trimmed; whitespace between children dropped);
//! - an element with neither attributes nor children is its text, a string
//!   (`<id>7</id>` -> `"id": "7"`: XML has no types, numbers stay strings);
//!   an empty element is `""`; JSON `null` becomes an empty element;
//! - repeated child elements become an array, in order; a JSON array
//!   becomes repeated elements of the member's name;
//! - names keep their namespace prefixes (`soap:Body`), `xmlns` declarations
//!   are attributes like any other; comments and processing instructions
//!   are dropped; CDATA is text; entity and character references are
//!   resolved (only XML's five predefined entities: a DOCTYPE is refused,
//!   which also rules out entity expansion attacks).
//!
//! Both directions are bounded in nesting depth; the input is bounded in
//! size by the caller.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::{Map, Value};

#[derive(Debug)]
pub(crate) struct ConvertError(pub String);

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(message: impl Into<String>) -> ConvertError {
    ConvertError(message.into())
}

struct Element {
    name: String,
    members: Map<String, Value>,
    has_attributes: bool,
    has_children: bool,
    text: String,
}

impl Element {
    fn into_value(self) -> Value {
        if !self.has_attributes && !self.has_children {
            return Value::String(self.text);
        }
        let mut members = self.members;
        let text = self.text.trim();
        if !text.is_empty() {
            members.insert("#text".into(), Value::String(text.to_string()));
        }
        Value::Object(members)
    }

    fn add_child(&mut self, name: String, value: Value) {
        self.has_children = true;
        match self.members.get_mut(&name) {
            // A single element's value is never an array: an array here
            // was made by repetition.
            Some(Value::Array(items)) => items.push(value),
            Some(first) => {
                let first = std::mem::take(first);
                self.members.insert(name, Value::Array(vec![first, value]));
            }
            None => {
                self.members.insert(name, value);
            }
        }
    }
}

/// Parses an XML document into its JSON form.
pub(crate) fn xml_to_json(xml: &[u8], max_depth: usize) -> Result<Value, ConvertError> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Value> = None;
    loop {
        let event = reader.read_event().map_err(|e| {
            err(format!(
                "invalid XML at byte {}: {e}",
                reader.error_position()
            ))
        })?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(err("invalid XML: more than one root element"));
            }
            Event::Start(start) => {
                if stack.len() >= max_depth {
                    return Err(err(format!("XML nested deeper than {max_depth}")));
                }
                stack.push(element(&reader, &start)?);
            }
            Event::Empty(start) => {
                if stack.len() >= max_depth {
                    return Err(err(format!("XML nested deeper than {max_depth}")));
                }
                let done = element(&reader, &start)?;
                close(&mut stack, &mut root, done);
            }
            Event::End(_) => {
                // check_end_names guarantees a matching Start.
                let Some(done) = stack.pop() else {
                    return Err(err("invalid XML: unexpected end tag"));
                };
                close(&mut stack, &mut root, done);
            }
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|e| err(format!("invalid XML text: {e}")))?;
                push_text(&mut stack, &text)?;
            }
            Event::CData(c) => {
                let text = c
                    .decode()
                    .map_err(|e| err(format!("invalid XML CDATA: {e}")))?;
                push_text(&mut stack, &text)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = r.decode().map_err(|e| err(format!("invalid XML: {e}")))?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| err(format!("invalid XML: unknown entity &{name};")))?
                            .to_string()
                    }
                    Err(e) => return Err(err(format!("invalid XML: {e}"))),
                };
                push_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err(err("XML with a DOCTYPE is not accepted")),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(err("invalid XML: unclosed element"));
    }
    root.ok_or_else(|| err("invalid XML: no root element"))
}

fn element(
    reader: &Reader<&[u8]>,
    start: &quick_xml::events::BytesStart<'_>,
) -> Result<Element, ConvertError> {
    let name = reader
        .decoder()
        .decode(start.name().as_ref())
        .map_err(|e| err(format!("invalid XML name: {e}")))?
        .into_owned();
    let mut members = Map::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| err(format!("invalid XML attribute: {e}")))?;
        let key = reader
            .decoder()
            .decode(attr.key.as_ref())
            .map_err(|e| err(format!("invalid XML attribute: {e}")))?;
        let value = attr
            .decode_and_unescape_value(reader.decoder())
            .map_err(|e| err(format!("invalid XML attribute value: {e}")))?;
        members.insert(format!("@{key}"), Value::String(value.into_owned()));
    }
    Ok(Element {
        name,
        has_attributes: !members.is_empty(),
        members,
        has_children: false,
        text: String::new(),
    })
}

fn close(stack: &mut [Element], root: &mut Option<Value>, done: Element) {
    let name = done.name.clone();
    let value = done.into_value();
    match stack.last_mut() {
        Some(parent) => parent.add_child(name, value),
        None => {
            let mut doc = Map::new();
            doc.insert(name, value);
            *root = Some(Value::Object(doc));
        }
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), ConvertError> {
    match stack.last_mut() {
        Some(e) => {
            e.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(err("invalid XML: text outside the root element")),
    }
}

/// Writes the JSON form back as an XML document (UTF-8, with declaration).
/// `root`: wrap the document in this element; `None`: the document must be
/// an object with one member, the root element.
pub(crate) fn json_to_xml(
    doc: &Value,
    root: Option<&str>,
    max_depth: usize,
) -> Result<String, ConvertError> {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    match root {
        Some(name) => write_element(&mut out, name, doc, 1, max_depth)?,
        None => {
            let single = doc
                .as_object()
                .filter(|m| m.len() == 1)
                .and_then(|m| m.iter().next())
                .filter(|(_, v)| !v.is_array());
            let Some((name, value)) = single else {
                return Err(err(
                    "JSON -> XML needs an object with exactly one member (the root element) \
                     or a configured rootElement",
                ));
            };
            write_element(&mut out, name, value, 1, max_depth)?;
        }
    }
    Ok(out)
}

fn write_element(
    out: &mut String,
    name: &str,
    value: &Value,
    depth: usize,
    max_depth: usize,
) -> Result<(), ConvertError> {
    if depth > max_depth {
        return Err(err(format!("JSON nested deeper than {max_depth}")));
    }
    if !is_xml_name(name) {
        return Err(err(format!("{name:?} is not an XML element name")));
    }
    match value {
        Value::Array(items) => {
            for item in items {
                write_element(out, name, item, depth + 1, max_depth)?;
            }
        }
        Value::Object(members) => {
            out.push('<');
            out.push_str(name);
            for (key, v) in members {
                let Some(attr) = key.strip_prefix('@') else {
                    continue;
                };
                if !is_xml_name(attr) {
                    return Err(err(format!("{attr:?} is not an XML attribute name")));
                }
                let Some(text) = scalar(v) else {
                    return Err(err(format!(
                        "attribute @{attr} must be a string, number or boolean"
                    )));
                };
                out.push(' ');
                out.push_str(attr);
                out.push_str("=\"");
                out.push_str(&quick_xml::escape::escape(text.as_str()));
                out.push('"');
            }
            let mut content = false;
            for (key, v) in members {
                if key.starts_with('@') {
                    continue;
                }
                if !content {
                    out.push('>');
                    content = true;
                }
                if key == "#text" {
                    let Some(text) = scalar(v) else {
                        return Err(err("#text must be a string, number or boolean"));
                    };
                    out.push_str(&quick_xml::escape::escape(text.as_str()));
                } else {
                    write_element(out, key, v, depth + 1, max_depth)?;
                }
            }
            if content {
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            } else {
                out.push_str("/>");
            }
        }
        Value::Null => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        scalar_value => {
            let text = scalar(scalar_value).unwrap_or_default();
            out.push('<');
            out.push_str(name);
            out.push('>');
            out.push_str(&quick_xml::escape::escape(text.as_str()));
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
    Ok(())
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// XML 1.0 names, ASCII subset plus any non-ASCII letter (the controller
/// checks configured names with the same rule).
fn is_xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_alphabetic() || first == '_' || first == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn xml_maps_to_json_and_back() {
        let xml = br#"<?xml version="1.0"?>
<order id="7" xmlns:x="urn:x">
  <!-- comment -->
  <item sku="a&amp;b">Tea &lt;green&gt;</item>
  <item sku="c">Cake</item>
  <note><![CDATA[<fragile>]]> &#233;</note>
  <empty/>
  <x:tag>1</x:tag>
</order>"#;
        let doc = xml_to_json(xml, 64).unwrap();
        assert_eq!(
            doc,
            json!({"order": {
                "@id": "7",
                "@xmlns:x": "urn:x",
                "item": [
                    {"@sku": "a&b", "#text": "Tea <green>"},
                    {"@sku": "c", "#text": "Cake"}
                ],
                "note": "<fragile> é",
                "empty": "",
                "x:tag": "1"
            }})
        );
        let back = json_to_xml(&doc, None, 64).unwrap();
        assert_eq!(xml_to_json(back.as_bytes(), 64).unwrap(), doc);
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(xml_to_json(b"<a><b></a>", 64).is_err());
        assert!(xml_to_json(b"<a/><b/>", 64).is_err());
        assert!(xml_to_json(b"text", 64).is_err());
        assert!(xml_to_json(b"<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>", 64).is_err());
        assert!(xml_to_json(b"<a>&unknown;</a>", 64).is_err());
        assert!(xml_to_json(b"<a><a><a/></a></a>", 2).is_err());
        assert!(xml_to_json(b"<a><a><a/></a></a>", 3).is_ok());
        assert!(json_to_xml(&json!({"a": 1, "b": 2}), None, 64).is_err());
        assert!(json_to_xml(&json!({"bad name": 1}), None, 64).is_err());
        assert_eq!(
            json_to_xml(&json!({"a": 1, "b": [true, null]}), Some("r"), 64).unwrap(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r><a>1</a><b>true</b><b/></r>"
        );
    }
}
