use serde::{Serialize, Serializer};

/// `http::HeaderName` with `Serialize` (as its lowercase string).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HeaderNameSer(pub http::HeaderName);

/// `http::HeaderValue` with `Serialize` (lossy for non-UTF-8 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueSer(pub http::HeaderValue);

impl Serialize for HeaderNameSer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl Serialize for HeaderValueSer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(self.0.as_bytes()))
    }
}

pub(crate) fn redacted<T, S: Serializer>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}
