//! Parses transform templates (`tenant-${claim.tenant}`) into segments.

use http::HeaderName;
use portcullis_model::route_filter::template::{Segment, Template, Variable};

/// `$$` is a literal `$`; `${name}` a variable; anything else literal.
pub(crate) fn parse(source: &str) -> Result<Template, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = source;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            literal.push('$');
            rest = tail;
        } else if let Some(open) = after.strip_prefix('{') {
            let Some(close) = open.find('}') else {
                return Err(format!("template {source:?}: unclosed '${{'"));
            };
            let variable =
                variable(open[..close].trim()).map_err(|e| format!("template {source:?}: {e}"))?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Variable(variable));
            rest = &open[close + 1..];
        } else {
            literal.push('$');
            rest = after;
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(Template {
        source: source.to_string(),
        segments,
    })
}

fn variable(name: &str) -> Result<Variable, String> {
    let named = |prefix: &str| {
        name.strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    };
    Ok(match name {
        "request.method" => Variable::Method,
        "request.host" => Variable::Host,
        "request.path" => Variable::Path,
        "request.clientIp" => Variable::ClientIp,
        "request.id" => Variable::RequestId,
        "identity.subject" => Variable::Subject,
        "identity.consumer" => Variable::Consumer,
        "identity.mechanism" => Variable::Mechanism,
        "route.namespace" => Variable::RouteNamespace,
        "route.name" => Variable::RouteName,
        "route.rule" => Variable::RouteRule,
        _ => {
            if let Some(q) = named("request.query.") {
                Variable::QueryParam(q)
            } else if let Some(h) = named("request.header.") {
                let header = HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("{h:?} is not a header name"))?;
                Variable::Header(header)
            } else if let Some(c) = named("claim.") {
                Variable::Claim(c)
            } else {
                return Err(format!(
                    "unknown variable {name:?} (request.method, request.host, request.path, \
                     request.query.NAME, request.header.NAME, request.clientIp, request.id, \
                     claim.NAME, identity.subject, identity.consumer, identity.mechanism, \
                     route.namespace, route.name, route.rule)"
                ));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_literals_and_variables() {
        let t = parse("a-${claim.tenant}/${request.header.X-Id}$$5$").unwrap();
        assert_eq!(
            t.segments,
            vec![
                Segment::Literal("a-".into()),
                Segment::Variable(Variable::Claim("tenant".into())),
                Segment::Literal("/".into()),
                Segment::Variable(Variable::Header(HeaderName::from_static("x-id"))),
                Segment::Literal("$5$".into()),
            ]
        );
        assert_eq!(
            parse("plain").unwrap().as_literal().as_deref(),
            Some("plain")
        );
        assert!(parse("${request.nope}").is_err());
        assert!(parse("${claim.}").is_err());
        assert!(parse("${request.method").is_err());
        assert!(parse("${request.header.bad header}").is_err());
    }
}
