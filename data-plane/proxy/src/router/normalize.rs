//! Request-path normalization: the one spelling of a path that routing,
//! authorization *and* the upstream all see.
//!
//! Why: every path-based auth bypass in real proxies (Envoy CVE-2019-9901,
//! Istio CVE-2021-31920, the Tomcat `..;` trick) came from the gateway matching
//! one spelling of a path while the upstream resolved another. So the gateway
//! resolves the path once, by the rule below, routes on the result and forwards
//! exactly that result; anything it cannot resolve unambiguously is rejected
//! (the caller answers 400) rather than guessed at.
//!
//! # The rule
//!
//! Input is the raw request-target path, without the query string.
//!
//! 1. It must start with `/` ([`PathError::NotAbsolute`]).
//! 2. Percent-escapes must be `%` plus two hex digits
//!    ([`PathError::InvalidPercentEncoding`]). Escapes of unreserved characters
//!    (`A-Z a-z 0-9 - . _ ~`) are decoded, so `%2e%2e` *is* `..` before
//!    dot-segment removal and `%41` is `A`. Every other escape is kept, with its
//!    hex digits upper-cased (`%3f` becomes `%3F`). Decoding is done once:
//!    `%252e` stays `%252e` (it means the three characters `%2e`).
//! 3. `%2F` (an encoded slash) is data inside a segment, never a separator: it
//!    does not split segments for routing and the upstream receives it as
//!    `%2F`. Because some upstreams decode it anyway, a segment holding `%2F`
//!    must not contain an empty, `.` or `..` piece between encoded slashes
//!    (`..%2Fadmin`, `%2Fadmin`, `a%2F%2Fb` are rejected with
//!    [`PathError::AmbiguousEncodedSlash`]), so no upstream can turn it into a
//!    traversal or a different root.
//! 4. NUL (`%00`) and control characters (raw or escaped, `0x00-0x1F`, `0x7F`)
//!    are rejected ([`PathError::NulByte`], [`PathError::ControlCharacter`]).
//! 5. A backslash, raw or `%5C`, is rejected ([`PathError::Backslash`]): some
//!    servers treat it as a separator, others as data.
//! 6. Raw characters that are not allowed in a URI path (space, `"`, `<`, `>`,
//!    `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`, `#`, `?`, non-ASCII bytes) are
//!    percent-encoded (upper-case hex), so the result is always a valid
//!    request-target.
//! 7. Duplicate slashes are merged (`//a///b` is `/a/b`); `.` segments are
//!    removed; `..` removes the previous segment; `..` above the root is an
//!    error ([`PathError::AboveRoot`]), not clamped. A trailing slash is kept
//!    (`/a/` stays `/a/`; `/a/b/..` is `/a/`, as in RFC 3986).
//! 8. `;` is an ordinary character, not a path-parameter separator: `/a;v=1`
//!    routes as the segment `a;v=1` and is forwarded unchanged. Because servers
//!    such as Tomcat and Jetty do strip `;...` from segments, a segment that
//!    would become `.` or `..` that way (`..;`, `.;x`, `..%3B`) is rejected
//!    ([`PathError::DotSegmentParameters`]).
//!
//! The result is a fixed point (`normalize_path(normalize_path(x)) ==
//! normalize_path(x)`), and a path that is already normal is returned
//! borrowed, without allocating.

use std::borrow::Cow;

/// Why a request path was refused; every variant means "400 Bad Request".
///
/// Messages never echo the path, so they are safe to send to the client and
/// to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with \"/\"")]
    NotAbsolute,
    #[error("the request path has an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("the request path contains a NUL byte")]
    NulByte,
    #[error("the request path contains a control character")]
    ControlCharacter,
    #[error("the request path contains a backslash")]
    Backslash,
    #[error("the request path climbs above the root with \"..\"")]
    AboveRoot,
    #[error("the request path has a dot segment with \";\" parameters")]
    DotSegmentParameters,
    #[error("the request path has an encoded slash next to an empty or dot segment")]
    AmbiguousEncodedSlash,
    /// An encoded slash under `encoded_slashes: reject` ([`super::path_policy`]).
    #[error("the request path contains an encoded slash (%2F)")]
    EncodedSlash,
    /// `;params` in a segment under `path_parameters: reject`.
    #[error("the request path has ;parameters in a segment")]
    PathParameters,
}

/// Normalizes a raw request path by the rule in the [module docs](self).
///
/// Returns `Cow::Borrowed(raw)` when `raw` is already normal.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if is_plainly_normal(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    normalize_by_the_rule(raw)
}

/// [`normalize_path`] without the fast path: the rule, step by step.
fn normalize_by_the_rule(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;

    // Pass 1: validate every segment and find out whether anything changes.
    // Errors are found here, so pass 2 only rebuilds.
    let mut changed = false;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let canonical = canonical_segment(segment)?;
        if matches!(canonical, Cow::Owned(_)) {
            changed = true;
        }
        match canonical.as_ref() {
            "." | ".." => changed = true,
            "" if !last => changed = true,
            _ => {}
        }
    }
    if !changed {
        return Ok(Cow::Borrowed(raw));
    }

    // Pass 2: rebuild with dot segments resolved and empty segments merged.
    let mut stack: Vec<Cow<'_, str>> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let canonical = canonical_segment(segment)?;
        match canonical.as_ref() {
            "" => trailing_slash = last,
            "." => trailing_slash = last,
            ".." => {
                stack.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            _ => {
                stack.push(canonical);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(raw.len() + 1);
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || stack.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Bytes that stay as they are in any segment and cannot start an escape or
/// a `;` parameter: [`is_raw_allowed`] minus `;` (and `%`, never raw-allowed).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        byte += 1;
    }
    table
};

/// The common case in one pass, before the two-pass rule: an absolute path
/// of [`PLAIN`] bytes with no empty segment (but the last) and no `.` or `..`
/// segment is already normal. Anything else (escapes, `;`, dots, `//`,
/// other bytes) takes the full rule, which decides the same for these paths
/// (`plain_paths_take_the_fast_path_to_the_same_answer`). This is what most
/// requests cost: about a tenth of the full rule on a short path.
#[inline]
fn is_plainly_normal(raw: &[u8]) -> bool {
    let Some((&b'/', rest)) = raw.split_first() else {
        return false;
    };
    let mut segment_start = 0;
    for (i, &byte) in rest.iter().enumerate() {
        if byte == b'/' {
            if !is_kept_segment(&rest[segment_start..i]) || i == segment_start {
                return false;
            }
            segment_start = i + 1;
        } else if !PLAIN[usize::from(byte)] {
            return false;
        }
    }
    is_kept_segment(&rest[segment_start..])
}

/// Not a dot segment (`.` or `..`), which normalization removes.
#[inline]
fn is_kept_segment(segment: &[u8]) -> bool {
    !matches!(segment, b"." | b"..")
}

/// Whether a byte may appear raw in a normalized path segment: RFC 3986
/// `pchar` minus `%` (unreserved, sub-delims, `:` and `@`).
fn is_raw_allowed(byte: u8) -> bool {
    is_unreserved(byte)
        || matches!(
            byte,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn check_not_control(byte: u8) -> Result<(), PathError> {
    match byte {
        0 => Err(PathError::NulByte),
        0x01..=0x1f | 0x7f => Err(PathError::ControlCharacter),
        b'\\' => Err(PathError::Backslash),
        _ => Ok(()),
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
}

/// One segment (no raw `/`) in canonical form, validated. Borrowed when it is
/// already canonical.
fn canonical_segment(segment: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = segment.as_bytes();
    let mut out: Option<String> = None;
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&hi), Some(&lo)) => (hi, lo),
                _ => return Err(PathError::InvalidPercentEncoding),
            };
            let decoded = match (hex_value(hi), hex_value(lo)) {
                (Some(h), Some(l)) => (h << 4) | l,
                _ => return Err(PathError::InvalidPercentEncoding),
            };
            check_not_control(decoded)?;
            let keep_as_is =
                !is_unreserved(decoded) && !hi.is_ascii_lowercase() && !lo.is_ascii_lowercase();
            if keep_as_is {
                if let Some(out) = out.as_mut() {
                    push_escaped(out, decoded);
                }
            } else {
                let out = out.get_or_insert_with(|| start_copy(segment, i));
                if is_unreserved(decoded) {
                    out.push(char::from(decoded));
                } else {
                    push_escaped(out, decoded);
                }
            }
            i += 3;
            continue;
        }
        check_not_control(byte)?;
        if is_raw_allowed(byte) {
            if let Some(out) = out.as_mut() {
                out.push(char::from(byte));
            }
        } else {
            push_escaped(out.get_or_insert_with(|| start_copy(segment, i)), byte);
        }
        i += 1;
    }
    let canonical = match out {
        Some(out) => Cow::Owned(out),
        None => Cow::Borrowed(segment),
    };
    check_ambiguity(&canonical)?;
    Ok(canonical)
}

/// A copy of `segment[..upto]`, with room for the rest (escapes grow it).
fn start_copy(segment: &str, upto: usize) -> String {
    let mut out = String::with_capacity(segment.len() + 8);
    // Everything before `upto` was kept unchanged: raw-allowed ASCII bytes and
    // already-canonical escapes, so plain ASCII. Copying bytes as chars needs
    // no char-boundary reasoning and cannot panic.
    out.extend(segment.as_bytes()[..upto].iter().map(|&b| char::from(b)));
    out
}

/// Rejects canonical segments that other servers would resolve differently:
/// `;`-parameters hiding a dot segment, and encoded slashes around empty or
/// dot pieces.
fn check_ambiguity(segment: &str) -> Result<(), PathError> {
    if is_dot_with_parameters(segment) {
        return Err(PathError::DotSegmentParameters);
    }
    if segment.contains("%2F") {
        for piece in segment.split("%2F") {
            if piece.is_empty() || is_dot(piece) || is_dot_with_parameters(piece) {
                return Err(PathError::AmbiguousEncodedSlash);
            }
        }
    }
    Ok(())
}

fn is_dot(text: &str) -> bool {
    text == "." || text == ".."
}

/// `..;x`, `.;`, `..%3Bx`: a dot segment once `;` parameters are stripped.
fn is_dot_with_parameters(segment: &str) -> bool {
    let base_end = [segment.find(';'), segment.find("%3B")]
        .into_iter()
        .flatten()
        .min();
    match base_end {
        Some(end) => is_dot(&segment[..end]),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a",
            "/a/",
            "/v1/orders/42",
            "/a;b=c/d",
            "/files/report%20final.pdf",
            "/repos/group%2Fproject/issues",
            "/%E2%82%AC",
            "/a/%252e%252e/b",
            "/~user/.hidden/x.y",
            "/a:b@c!$&'()*+,=",
            "/...",
            "/a/.../b",
        ] {
            let normalized = normalize_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                matches!(normalized, Cow::Borrowed(_)),
                "{path} should be borrowed"
            );
            assert_eq!(normalized, path);
        }
    }

    #[test]
    fn paths_are_normalized() {
        let cases = [
            // duplicate slashes
            ("//", "/"),
            ("///", "/"),
            ("//a///b", "/a/b"),
            ("/a//", "/a/"),
            ("//a", "/a"),
            // dot segments
            ("/.", "/"),
            ("/./", "/"),
            ("/a/.", "/a/"),
            ("/a/./b", "/a/b"),
            ("/a/..", "/"),
            ("/a/../", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/../c", "/a/c"),
            ("/v1/../admin", "/admin"),
            ("/v1/./../admin/", "/admin/"),
            ("/a/b/c/../../d", "/a/d"),
            ("/a//..//b", "/b"),
            // encoded dots are dots
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2E/admin", "/admin"),
            ("/v1/.%2e/admin", "/admin"),
            ("/v1/%2e/admin", "/v1/admin"),
            // unreserved escapes decoded, others upper-cased
            ("/%41%62%63", "/Abc"),
            ("/%7euser", "/~user"),
            ("/%2d%5f", "/-_"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb", "/a%2Fb"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/%25", "/%25"),
            ("/%252e", "/%252e"),
            ("/a%3bb", "/a%3Bb"),
            // raw characters outside the URI path alphabet are encoded
            ("/a b", "/a%20b"),
            ("/\u{e9}", "/%C3%A9"),
            ("/a{b}|c", "/a%7Bb%7D%7Cc"),
            ("/a\"<>^`[]", "/a%22%3C%3E%5E%60%5B%5D"),
            ("/a?b#c", "/a%3Fb%23c"),
            // ; is ordinary
            ("/a;x=1//b", "/a;x=1/b"),
            ("/...;x", "/...;x"),
        ];
        for (raw, expected) in cases {
            let normalized = normalize_path(raw).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert_eq!(normalized, expected, "{raw:?}");
            let again = normalize_path(&normalized).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            assert!(
                matches!(again, Cow::Borrowed(_)),
                "{raw:?} not a fixed point"
            );
        }
    }

    #[test]
    fn bad_paths_are_rejected() {
        use PathError::*;
        let cases = [
            ("", NotAbsolute),
            ("a/b", NotAbsolute),
            ("*", NotAbsolute),
            ("http://x/a", NotAbsolute),
            ("%2Fa", NotAbsolute),
            ("/a%zz", InvalidPercentEncoding),
            ("/a%2", InvalidPercentEncoding),
            ("/a%", InvalidPercentEncoding),
            ("/a%g0", InvalidPercentEncoding),
            ("/a%\u{e9}", InvalidPercentEncoding),
            ("/a%00b", NulByte),
            ("/a\0b", NulByte),
            ("/a\nb", ControlCharacter),
            ("/a%0Ab", ControlCharacter),
            ("/a%0d%0aSet-Cookie:x", ControlCharacter),
            ("/a%7f", ControlCharacter),
            ("/a\u{7f}", ControlCharacter),
            ("/a\tb", ControlCharacter),
            ("/a\\b", Backslash),
            ("/a%5Cb", Backslash),
            ("/a%5cb", Backslash),
            ("/..", AboveRoot),
            ("/../a", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("/%2e%2e/etc/passwd", AboveRoot),
            ("//..", AboveRoot),
            ("/..;/admin", DotSegmentParameters),
            ("/public/..;/admin", DotSegmentParameters),
            ("/public/.;x/admin", DotSegmentParameters),
            ("/public/..%3B/admin", DotSegmentParameters),
            ("/public/%2e%2e;x/admin", DotSegmentParameters),
            ("/public/..%2Fadmin", AmbiguousEncodedSlash),
            ("/public/%2e%2e%2fadmin", AmbiguousEncodedSlash),
            ("/%2Fadmin", AmbiguousEncodedSlash),
            ("/a%2F", AmbiguousEncodedSlash),
            ("/a%2F%2Fb", AmbiguousEncodedSlash),
            ("/a%2F.%2Fb", AmbiguousEncodedSlash),
            ("/a%2F..;x", AmbiguousEncodedSlash),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_path(raw), Err(expected), "{raw:?}");
        }
    }

    #[test]
    fn errors_do_not_echo_the_path() {
        let err = normalize_path("/secret-token/%zz").expect_err("invalid escape");
        assert!(!err.to_string().contains("secret"));
    }

    /// The one-pass check agrees with the rule: every path it lets through
    /// is one the rule leaves as it is (random paths over the characters that
    /// matter to either).
    #[test]
    fn plain_paths_take_the_fast_path_to_the_same_answer() {
        let seed: u64 = rand::thread_rng().gen();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        const ALPHABET: &[&str] = &[
            "/", "/", "/", ".", ".", "..", "a", "Z", "0", "-", "_", "~", "!", "$", "&", "'", "(",
            ")", "*", "+", ",", "=", ":", "@", ";", "%", "%2F", "%2e", " ", "\\", "\0", "?", "#",
            "\u{e9}", "%3B",
        ];
        let mut fast = 0;
        for _ in 0..50_000 {
            let mut input = String::new();
            if rng.gen_bool(0.95) {
                input.push('/');
            }
            for _ in 0..rng.gen_range(0..12) {
                input.push_str(ALPHABET[rng.gen_range(0..ALPHABET.len())]);
            }
            let full = normalize_by_the_rule(&input);
            if is_plainly_normal(input.as_bytes()) {
                fast += 1;
                assert!(
                    matches!(full, Ok(Cow::Borrowed(_))),
                    "seed {seed}: {input:?} is not normal: {full:?}"
                );
            }
            assert_eq!(normalize_path(&input), full, "seed {seed}: {input:?}");
        }
        assert!(fast > 1_000, "seed {seed}: only {fast} plain paths");
        for plain in [
            "/",
            "/a",
            "/a/",
            "/v1/orders/42",
            "/file.json",
            "/.well-known/x",
            "/a..b",
        ] {
            assert!(is_plainly_normal(plain.as_bytes()), "{plain}");
        }
        for other in [
            "", "a", "//", "/a//b", "/.", "/..", "/a/./b", "/a/../b", "/a;b", "/%41", "/a b",
        ] {
            assert!(!is_plainly_normal(other.as_bytes()), "{other}");
        }
    }

    /// Random input never panics, and the output is a normal path that maps
    /// to itself.
    #[test]
    fn fuzz_never_panics_and_is_idempotent() {
        let seed: u64 = rand::thread_rng().gen();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        const ALPHABET: &[&str] = &[
            "/", "/", "/", ".", ".", "%", "2", "e", "E", "f", "F", "5", "c", "C", "3", "b", "B",
            "0", "a", ";", "\\", "\0", "\n", " ", "?", "{", "\u{e9}", "\u{20ac}", "%2e", "%2F",
            "%2f", "%5C", "%3B", "%25", "..", "//", "~", "-", "_", "%7E", "%41", "%0", "%zz",
        ];
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut input = String::new();
            if rng.gen_bool(0.9) {
                input.push('/');
            }
            if rng.gen_bool(0.2) {
                // Arbitrary bytes, made into a string the way a server would.
                let len = rng.gen_range(0..24);
                let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                input.push_str(&String::from_utf8_lossy(&bytes));
            } else {
                for _ in 0..rng.gen_range(0..16) {
                    input.push_str(ALPHABET[rng.gen_range(0..ALPHABET.len())]);
                }
            }
            let Ok(once) = normalize_path(&input) else {
                continue;
            };
            accepted += 1;
            let twice = normalize_path(&once)
                .unwrap_or_else(|e| panic!("seed {seed}: {input:?} -> {once:?} -> {e}"));
            assert_eq!(twice, once, "seed {seed}: {input:?}");
            assert!(
                matches!(twice, Cow::Borrowed(_)),
                "seed {seed}: {input:?} -> {once:?} is not borrowed"
            );
            assert!(once.starts_with('/'), "seed {seed}: {input:?}");
            assert!(once.is_ascii(), "seed {seed}: {input:?}");
            assert!(!once.contains("//"), "seed {seed}: {input:?}");
            assert!(
                once.split('/').all(|s| s != "." && s != ".."),
                "seed {seed}: {input:?}"
            );
            assert!(
                once.parse::<http::uri::PathAndQuery>().is_ok(),
                "seed {seed}: {input:?} -> {once:?} is not a valid request-target"
            );
        }
        assert!(
            accepted > 1_000,
            "seed {seed}: only {accepted} inputs were accepted"
        );
    }
}
