//! Content-Encoding of bodies that RouteFilters rewrite: gzip and deflate
//! are decoded (bounded: a small compressed body must not inflate past the
//! limit) and encoded again; anything else (br, zstd, stacked encodings) is
//! reported unsupported so that masking can refuse rather than leak.

use std::io::{Read, Write};

use http::HeaderMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    Gzip,
    Deflate,
}

/// The response's coding; `Err` carries the unsupported value.
pub(crate) fn coding(headers: &HeaderMap) -> Result<Coding, String> {
    let mut values = headers.get_all(http::header::CONTENT_ENCODING).iter();
    let Some(first) = values.next() else {
        return Ok(Coding::Identity);
    };
    if values.next().is_some() {
        return Err("several Content-Encoding headers".into());
    }
    let value = first
        .to_str()
        .map_err(|_| "non-text Content-Encoding".to_string())?;
    let value = value.trim();
    if value.eq_ignore_ascii_case("identity") || value.is_empty() {
        Ok(Coding::Identity)
    } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
        Ok(Coding::Gzip)
    } else if value.eq_ignore_ascii_case("deflate") {
        Ok(Coding::Deflate)
    } else {
        Err(value.to_string())
    }
}

/// Decodes at most `limit` bytes; `Ok(None)` when the decoded body would
/// be larger.
pub(crate) fn decode(
    coding: Coding,
    data: &[u8],
    limit: usize,
) -> std::io::Result<Option<Vec<u8>>> {
    fn bounded(reader: impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        // One byte more than the limit tells "exactly at" from "over".
        reader.take(limit as u64 + 1).read_to_end(&mut out)?;
        Ok((out.len() <= limit).then_some(out))
    }
    match coding {
        Coding::Identity => Ok((data.len() <= limit).then(|| data.to_vec())),
        Coding::Gzip => bounded(flate2::read::MultiGzDecoder::new(data), limit),
        // HTTP's deflate is zlib (RFC 1950); some servers send raw deflate.
        Coding::Deflate => match bounded(flate2::read::ZlibDecoder::new(data), limit) {
            Ok(out) => Ok(out),
            Err(_) => bounded(flate2::read::DeflateDecoder::new(data), limit),
        },
    }
}

pub(crate) fn encode(coding: Coding, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let level = flate2::Compression::default();
    match coding {
        Coding::Identity => Ok(data.to_vec()),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data)?;
            e.finish()
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(data)?;
            e.finish()
        }
    }
}

/// The request's Accept-Encoding restricted to codings this module can
/// decode (so a backend does not pick br for a masked route); `None`: the
/// header is to be removed (identity only).
pub(crate) fn decodable_accept_encoding(headers: &HeaderMap) -> Option<String> {
    let mut kept = Vec::new();
    for value in headers.get_all(http::header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let item = item.trim();
            let coding = item.split(';').next().unwrap_or("").trim();
            if ["gzip", "x-gzip", "deflate", "identity"]
                .iter()
                .any(|c| c.eq_ignore_ascii_case(coding))
            {
                kept.push(item);
            }
        }
    }
    (!kept.is_empty()).then(|| kept.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_bounds() {
        let data = vec![b'a'; 10_000];
        for c in [Coding::Gzip, Coding::Deflate, Coding::Identity] {
            let packed = encode(c, &data).unwrap();
            assert_eq!(
                decode(c, &packed, 10_000).unwrap().as_deref(),
                Some(&data[..])
            );
            assert_eq!(decode(c, &packed, 9_999).unwrap(), None);
        }
        assert!(decode(Coding::Gzip, b"not gzip", 100).is_err());
    }

    #[test]
    fn accept_encoding_keeps_decodable_codings() {
        let mut h = HeaderMap::new();
        h.insert(
            "accept-encoding",
            "br, gzip;q=0.8, zstd, deflate".parse().unwrap(),
        );
        assert_eq!(
            decodable_accept_encoding(&h).as_deref(),
            Some("gzip;q=0.8, deflate")
        );
        h.insert("accept-encoding", "br".parse().unwrap());
        assert_eq!(decodable_accept_encoding(&h), None);
    }
}
