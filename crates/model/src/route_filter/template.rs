//! Header and body templates of RouteFilter transforms, parsed by the
//! controller into segments so that the data plane only concatenates.

use http::HeaderName;
use serde::{Serialize, Serializer};

/// A parsed template: literal text and variables, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Template {
    /// The template as written (for dumps and logs).
    pub source: String,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Segment {
    Literal(String),
    Variable(Variable),
}

/// What a `${...}` placeholder reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Variable {
    Method,
    Host,
    Path,
    /// A query parameter by name (first occurrence, percent-decoded).
    QueryParam(String),
    /// A request header (first value).
    Header(#[serde(serialize_with = "header_name")] HeaderName),
    ClientIp,
    /// The request id (`x-request-id`, set by the gateway).
    RequestId,
    /// A verified JWT claim (strings as they are, numbers and booleans in
    /// their JSON form).
    Claim(String),
    Subject,
    Consumer,
    Mechanism,
    RouteNamespace,
    RouteName,
    /// The rule's name, else its index in `spec.rules`.
    RouteRule,
}

fn header_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

impl Template {
    /// A template without variables renders to this text.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::Variable(_) => return None,
            }
        }
        Some(out)
    }
}
