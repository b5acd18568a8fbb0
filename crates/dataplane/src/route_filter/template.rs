//! Renders compiled transform templates against the client's request.

use std::borrow::Cow;

use portcullis_model::route_filter::template::{Segment, Template, Variable};

use super::ClientRequest;

/// The rendered text; `None` when a variable has no value and `strict`
/// (the header is then left out). Non-strict: missing values render empty.
pub(crate) fn render(template: &Template, client: &ClientRequest, strict: bool) -> Option<String> {
    let mut out = String::new();
    for segment in &template.segments {
        match segment {
            Segment::Literal(l) => out.push_str(l),
            Segment::Variable(v) => match value(v, client) {
                Some(value) => out.push_str(&value),
                None if strict => return None,
                None => {}
            },
        }
    }
    Some(out)
}

fn value<'a>(variable: &Variable, client: &'a ClientRequest) -> Option<Cow<'a, str>> {
    let identity = client.identity.as_ref();
    Some(match variable {
        Variable::Method => Cow::Borrowed(client.method.as_str()),
        Variable::Host => Cow::Borrowed(client.host.as_str()),
        Variable::Path => Cow::Borrowed(client.path.as_str()),
        Variable::QueryParam(name) => query_param(client.query.as_deref()?, name)?,
        Variable::Header(name) => Cow::Borrowed(client.headers.get(name)?.to_str().ok()?),
        Variable::ClientIp => Cow::Owned(client.client_ip.to_string()),
        Variable::RequestId => Cow::Borrowed(client.headers.get("x-request-id")?.to_str().ok()?),
        Variable::Claim(name) => Cow::Owned(identity?.claim_str(name)?),
        Variable::Subject => Cow::Borrowed(identity?.subject.as_deref()?),
        Variable::Consumer => Cow::Borrowed(identity?.consumer.as_deref()?),
        Variable::Mechanism => Cow::Borrowed(identity?.mechanism?),
        Variable::RouteNamespace => Cow::Borrowed(client.rule.as_ref()?.id.namespace.as_str()),
        Variable::RouteName => Cow::Borrowed(client.rule.as_ref()?.id.name.as_str()),
        Variable::RouteRule => {
            let id = &client.rule.as_ref()?.id;
            match &id.rule_name {
                Some(name) => Cow::Borrowed(name.as_str()),
                None => Cow::Owned(id.rule_index.to_string()),
            }
        }
    })
}

/// The first value of `name` in a query string, percent- and
/// `+`-decoded.
fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h << 4) | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
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

    #[test]
    fn query_parameters_are_decoded() {
        let q = "a=1&name=J%C3%B6rg+M&x";
        assert_eq!(query_param(q, "name").as_deref(), Some("Jörg M"));
        assert_eq!(query_param(q, "a").as_deref(), Some("1"));
        assert_eq!(query_param(q, "x").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("100%"), "100%");
    }
}
