//! Request path normalization, done once before route matching so that no
//! alternative spelling of a path can reach a route it should not (or miss
//! one it should): `/admin/../public`, `//admin`, `/%61dmin` all become the
//! path the routes are written against, and that normalized path is also the
//! one sent to the backend, so the gateway and the backend agree on it.

use std::fmt;

/// Why a path was rejected; the request gets a 400 with this text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
    /// `%2F` or `%5C`: an encoded separator means different things to
    /// different backends, so it is refused instead of guessed.
    EncodedSeparator,
    /// NUL or other control characters, raw or encoded.
    ControlCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "request path must start with '/'",
            PathError::BadPercentEncoding => "request path has an invalid percent-encoding",
            PathError::EncodedSeparator => "request path contains an encoded '/' or '\\'",
            PathError::ControlCharacter => "request path contains a control character",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalizes an absolute request path (without the query):
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
///   decoded, other escapes are kept with uppercase hex digits;
/// - runs of slashes collapse to one;
/// - `.` and `..` segments are resolved (RFC 3986, section 5.2.4); `..`
///   never climbs above the root.
///
/// Returns the input unchanged (no allocation beyond the copy) when it is
/// already normal.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(path)?;
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            // Empty segments come from duplicate or trailing slashes.
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_control() {
            return Err(PathError::ControlCharacter);
        }
        if b != b'%' {
            // Safe to push byte-wise: `path` is a &str, and multi-byte UTF-8
            // sequences never contain ASCII bytes, so copying runs of
            // non-'%' bytes keeps them intact.
            let start = i;
            while i < bytes.len() && bytes[i] != b'%' && !bytes[i].is_ascii_control() {
                i += 1;
            }
            out.push_str(&path[start..i]);
            continue;
        }
        let (hi, lo) = match (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) {
            (Some(hi), Some(lo)) => (hi, lo),
            _ => return Err(PathError::BadPercentEncoding),
        };
        let value = hi << 4 | lo;
        if value == b'/' || value == b'\\' {
            return Err(PathError::EncodedSeparator);
        }
        if value.is_ascii_control() {
            return Err(PathError::ControlCharacter);
        }
        if is_unreserved(value) {
            out.push(value as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize_path(p).unwrap()
    }

    #[test]
    fn already_normal_paths_are_unchanged() {
        for p in ["/", "/a", "/a/b/", "/a/b.c", "/caf%C3%A9", "/a%20b"] {
            assert_eq!(n(p), p);
        }
    }

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(n("/admin/../public"), "/public");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn duplicate_slashes_collapse() {
        assert_eq!(n("//admin"), "/admin");
        assert_eq!(n("/a///b//"), "/a/b/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_before_dot_segments() {
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/public/%2e%2e/admin"), "/admin");
        assert_eq!(n("/public/%2E%2E/admin"), "/admin");
        assert_eq!(n("/%7Euser"), "/~user");
    }

    #[test]
    fn reserved_escapes_are_kept_uppercased() {
        assert_eq!(n("/a%3fb"), "/a%3Fb");
        assert_eq!(n("/a%25b"), "/a%25b");
    }

    #[test]
    fn ambiguous_paths_are_rejected() {
        assert_eq!(
            normalize_path("/admin%2Fx"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(
            normalize_path("/admin%5cx"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(normalize_path("/a%00"), Err(PathError::ControlCharacter));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize_path("/a%4"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize_path("a"), Err(PathError::NotAbsolute));
    }
}
