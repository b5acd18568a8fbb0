//! Reading and removing query parameters that carry credentials.

/// The first value of parameter `name` (raw, as sent; credentials are
/// opaque strings and compared as such).
pub fn param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Removes every occurrence of parameter `name`; an empty query becomes
/// `None`.
pub fn remove(query: &mut Option<String>, name: &str) {
    let Some(q) = query.as_deref() else {
        return;
    };
    if !q
        .split('&')
        .any(|pair| pair.split('=').next() == Some(name))
    {
        return;
    }
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    *query = if kept.is_empty() {
        None
    } else {
        Some(kept.join("&"))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_found_and_removed() {
        assert_eq!(param(Some("a=1&key=s3cr3t&b=2"), "key"), Some("s3cr3t"));
        assert_eq!(param(Some("a=1"), "key"), None);
        assert_eq!(param(None, "key"), None);
        let mut q = Some("a=1&key=x&b=2&key=y".to_string());
        remove(&mut q, "key");
        assert_eq!(q.as_deref(), Some("a=1&b=2"));
        let mut q = Some("key=x".to_string());
        remove(&mut q, "key");
        assert_eq!(q, None);
        let mut q = Some("keyx=1".to_string());
        remove(&mut q, "key");
        assert_eq!(q.as_deref(), Some("keyx=1"));
    }
}
