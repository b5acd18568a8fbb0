//! JSON body edits (add, remove, move) on parsed JSON pointers, with JSON
//! Patch (RFC 6902) semantics where they apply: `add` replaces an object
//! member and inserts into an array (`-` appends). Unlike JSON Patch, a
//! path that does not fit the document is skipped rather than failing the
//! request: a missing optional field is not the client's error; `add`
//! creates missing parent objects.

use serde_json::{Map, Value};

/// Inserts `value` at `tokens`; false when the document has no place there
/// (a scalar on the way, an array index out of range).
pub(crate) fn add(doc: &mut Value, tokens: &[String], value: Value) -> bool {
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return true;
    };
    let mut node = doc;
    for token in parents {
        node = match node {
            Value::Object(map) => map
                .entry(token.as_str())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => match index(token, items.len()) {
                Some(i) if i < items.len() => &mut items[i],
                _ => return false,
            },
            _ => return false,
        };
    }
    match node {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            true
        }
        Value::Array(items) => {
            let at = if last == "-" {
                items.len()
            } else {
                match index(last, items.len() + 1) {
                    Some(i) => i,
                    None => return false,
                }
            };
            items.insert(at, value);
            true
        }
        _ => false,
    }
}

/// Removes and returns what is at `tokens`.
pub(crate) fn remove(doc: &mut Value, tokens: &[String]) -> Option<Value> {
    let (last, parents) = tokens.split_last()?;
    let mut node = doc;
    for token in parents {
        node = match node {
            Value::Object(map) => map.get_mut(token.as_str())?,
            Value::Array(items) => {
                let i = index(token, items.len())?;
                items.get_mut(i)?
            }
            _ => return None,
        };
    }
    match node {
        Value::Object(map) => map.remove(last.as_str()),
        Value::Array(items) => {
            let i = index(last, items.len())?;
            (i < items.len()).then(|| items.remove(i))
        }
        _ => None,
    }
}

/// Moves the value at `from` to `to`; nothing happens when `from` is
/// absent. When `to` has no place, the value stays where it was.
pub(crate) fn move_value(doc: &mut Value, from: &[String], to: &[String]) {
    if let Some(value) = remove(doc, from) {
        if !add(doc, to, value.clone()) {
            let _ = add(doc, from, value);
        }
    }
}

/// An RFC 6901 array index: digits without a leading zero, below `bound`.
fn index(token: &str, bound: usize) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok().filter(|i| *i < bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        s.split('/').skip(1).map(str::to_string).collect()
    }

    #[test]
    fn add_remove_move_follow_json_patch() {
        let mut doc = json!({"a": {"b": 1}, "list": [1, 2]});
        assert!(add(&mut doc, &p("/x/y"), json!("new")));
        assert!(add(&mut doc, &p("/list/-"), json!(3)));
        assert!(add(&mut doc, &p("/list/0"), json!(0)));
        assert!(!add(&mut doc, &p("/list/9"), json!(9)));
        assert!(!add(&mut doc, &p("/a/b/c"), json!(9)));
        assert_eq!(remove(&mut doc, &p("/list/1")), Some(json!(1)));
        assert_eq!(remove(&mut doc, &p("/nope/x")), None);
        move_value(&mut doc, &p("/a/b"), &p("/moved"));
        move_value(&mut doc, &p("/absent"), &p("/other"));
        assert_eq!(
            doc,
            json!({"a": {}, "x": {"y": "new"}, "list": [0, 2, 3], "moved": 1})
        );
    }
}
