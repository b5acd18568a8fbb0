//! Cache keys. The primary key names a resource as the filter sees it:
//! `"<filter> <host><path>[?<query>]"`, then one line per configured
//! request header and the identity when the filter keys by identity. The
//! full key adds what the stored response's scheme asks for: the values
//! of its `Vary` headers, and the identity when it was `private`.
//!
//! Client-controlled parts that could contain the separators are length
//! prefixed, so two different requests never produce the same key — which
//! is what keeps a private entry from ever matching another identity. The
//! textual form is what the admin purge matches prefixes against.

use std::fmt::Write;

use http::{HeaderMap, HeaderName};
use portcullis_model::route_filter::cache::{CacheConfig, QueryKey};

use super::store::Scheme;
use crate::identity::Identity;
use crate::route_filter::ClientRequest;

/// The resource part of a key (`"<filter> <host><path>"`): every entry of
/// a path starts with it, whatever its query or variants.
pub(crate) fn resource(filter: &str, host: &str, path: &str) -> String {
    let mut k = String::with_capacity(filter.len() + host.len() + path.len() + 1);
    k.push_str(filter);
    k.push(' ');
    k.push_str(host);
    k.push_str(path);
    k
}

/// The primary key; `None` when the filter keys by identity and the
/// request is anonymous.
pub(crate) fn primary(
    config: &CacheConfig,
    filter: &str,
    client: &ClientRequest,
) -> Option<String> {
    let mut k = resource(filter, &client.host, &client.path);
    if let Some(q) = client.query.as_deref().filter(|q| !q.is_empty()) {
        push_query(&mut k, q, &config.key.query, config.key.sort_query);
    }
    for name in &config.key.headers {
        push_header(&mut k, "header", &name.0, &client.headers);
    }
    if config.key.identity {
        push_identity(&mut k, client.identity.as_ref()?)?;
    }
    Some(k)
}

/// The full key for `scheme`; `None` when the scheme is private and the
/// request anonymous.
pub(crate) fn full(primary: &str, scheme: &Scheme, client: &ClientRequest) -> Option<String> {
    let mut k = String::with_capacity(primary.len() + 16 * scheme.vary.len());
    k.push_str(primary);
    for name in scheme.vary.iter() {
        push_header(&mut k, "vary", name, &client.headers);
    }
    if scheme.private {
        k.push_str("\nprivate");
        push_identity(&mut k, client.identity.as_ref()?)?;
    }
    Some(k)
}

fn push_query(k: &mut String, query: &str, which: &QueryKey, sort: bool) {
    let name_of = |pair: &str| pair.split_once('=').map_or(pair, |(n, _)| n).to_string();
    let mut pairs: Vec<&str> = match which {
        QueryKey::Ignore => return,
        QueryKey::All if !sort => {
            k.push('?');
            k.push_str(query);
            return;
        }
        QueryKey::All => query.split('&').filter(|p| !p.is_empty()).collect(),
        QueryKey::Include(names) => query
            .split('&')
            .filter(|p| names.binary_search(&name_of(p)).is_ok())
            .collect(),
    };
    if pairs.is_empty() {
        return;
    }
    if sort {
        // Stable: repeated parameters keep their relative order.
        pairs.sort_by_key(|p| name_of(p));
    }
    k.push('?');
    for (i, p) in pairs.iter().enumerate() {
        if i > 0 {
            k.push('&');
        }
        k.push_str(p);
    }
}

fn push_header(k: &mut String, what: &str, name: &HeaderName, headers: &HeaderMap) {
    let _ = write!(k, "\n{what} {}:", name.as_str());
    for v in headers.get_all(name) {
        let v = String::from_utf8_lossy(v.as_bytes());
        let _ = write!(k, "{}:{v};", v.len());
    }
}

/// `None` when the identity names nobody.
fn push_identity(k: &mut String, id: &Identity) -> Option<()> {
    if id.subject.is_none() && id.consumer.is_none() {
        return None;
    }
    let subject = id.subject.as_deref().unwrap_or("");
    let consumer = id.consumer.as_deref().unwrap_or("");
    let _ = write!(
        k,
        "\nidentity {}:{}:{subject}{}:{consumer}",
        id.mechanism.unwrap_or("-"),
        subject.len(),
        consumer.len()
    );
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};
    use portcullis_model::route_filter::cache::CacheKey;
    use portcullis_model::HeaderNameSer;

    fn client(
        query: Option<&str>,
        headers: &[(&'static str, &'static str)],
        who: Option<&str>,
    ) -> ClientRequest {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, HeaderValue::from_static(v));
        }
        ClientRequest {
            method: Method::GET,
            host: "example.com".into(),
            path: "/items".into(),
            query: query.map(str::to_string),
            headers: h,
            identity: who.map(|w| Identity {
                mechanism: Some("api_key"),
                subject: Some(w.into()),
                consumer: Some(w.into()),
                claims: None,
            }),
        }
    }

    fn config(
        query: QueryKey,
        sort: bool,
        headers: &[&'static str],
        identity: bool,
    ) -> CacheConfig {
        CacheConfig {
            key: CacheKey {
                query,
                sort_query: sort,
                headers: headers
                    .iter()
                    .map(|h| HeaderNameSer(HeaderName::from_static(h)))
                    .collect(),
                identity,
            },
            ..CacheConfig::default()
        }
    }

    #[test]
    fn query_parameters_are_kept_as_configured() {
        let key =
            |c: &CacheConfig, q| primary(c, "ns/f", &client(Some(q), &[], None)).expect("key");
        let all = config(QueryKey::All, false, &[], false);
        assert_eq!(key(&all, "b=2&a=1"), "ns/f example.com/items?b=2&a=1");
        let sorted = config(QueryKey::All, true, &[], false);
        assert_eq!(
            key(&sorted, "b=2&a=1&a=0"),
            "ns/f example.com/items?a=1&a=0&b=2"
        );
        let ignore = config(QueryKey::Ignore, false, &[], false);
        assert_eq!(key(&ignore, "b=2"), "ns/f example.com/items");
        let include = config(
            QueryKey::Include(vec!["id".into(), "page".into()]),
            true,
            &[],
            false,
        );
        assert_eq!(
            key(&include, "utm=x&page=3&id=7"),
            "ns/f example.com/items?id=7&page=3"
        );
        assert_eq!(key(&include, "utm=x"), "ns/f example.com/items");
    }

    #[test]
    fn headers_and_identities_partition_keys() {
        let c = config(QueryKey::All, false, &["accept-language"], false);
        let en = primary(&c, "f", &client(None, &[("accept-language", "en")], None));
        let de = primary(&c, "f", &client(None, &[("accept-language", "de")], None));
        let none = primary(&c, "f", &client(None, &[], None));
        assert!(en != de && en != none && de != none);

        let by_id = config(QueryKey::All, false, &[], true);
        assert_eq!(primary(&by_id, "f", &client(None, &[], None)), None);
        let alice = primary(&by_id, "f", &client(None, &[], Some("alice")));
        let bob = primary(&by_id, "f", &client(None, &[], Some("bob")));
        assert!(alice.is_some() && alice != bob);

        let private = Scheme {
            vary: Arc::from(vec![HeaderName::from_static("accept")]),
            private: true,
        };
        let base = "f example.com/items";
        assert_eq!(full(base, &private, &client(None, &[], None)), None);
        let a = full(
            base,
            &private,
            &client(None, &[("accept", "a")], Some("alice")),
        );
        let b = full(
            base,
            &private,
            &client(None, &[("accept", "a")], Some("bob")),
        );
        assert!(a.is_some() && a != b);
        // A subject cannot be crafted to look like another's key.
        let tricky = full(
            base,
            &private,
            &client(None, &[("accept", "a")], Some("alice5:alice")),
        );
        assert_ne!(a, tricky);
    }

    use std::sync::Arc;
}
