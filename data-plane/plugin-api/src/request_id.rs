//! The request id: kept from the client when sane, generated otherwise, and
//! carried by every gateway-made answer, the upstream request and the access
//! log. It lives at the bottom of the layers because all of them read it.

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id kept as is.
pub const MAX_REQUEST_ID_LEN: usize = 200;

/// A request id that is 1 to [`MAX_REQUEST_ID_LEN`] bytes of visible ASCII
/// other than `"` and `\\`: it goes into headers, JSON error bodies and
/// access-log lines as it is, with no escaping and no check of its own.
/// Only [`ensure_request_id`] and [`generate_request_id`] make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// `value` when it is a sane request id (see the type docs).
    pub fn checked(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let sane = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes
                .iter()
                .all(|b| (0x21..0x7f).contains(b) && *b != b'"' && *b != b'\\');
        sane.then(|| Self(value.clone()))
    }

    /// The id as a header value.
    #[inline]
    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Longest request id [`KeptRequestId`] holds by value (a UUID's 36 fit).
const KEPT_INLINE: usize = 40;

/// A [`RequestId`] kept past its request (for the access log): by value when
/// it is short, as generated ids are, so keeping it costs no reference count
/// now and no release later. As sane as the id it came from.
#[derive(Debug, Clone)]
pub enum KeptRequestId {
    Inline { bytes: [u8; KEPT_INLINE], len: u8 },
    Shared(RequestId),
}

impl KeptRequestId {
    pub fn new(id: &RequestId) -> Self {
        let text = id.as_bytes();
        let mut bytes = [0; KEPT_INLINE];
        match (bytes.get_mut(..text.len()), u8::try_from(text.len())) {
            (Some(slot), Ok(len)) => {
                slot.copy_from_slice(text);
                Self::Inline { bytes, len }
            }
            _ => Self::Shared(id.clone()),
        }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { bytes, len } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Self::Shared(id) => id.as_bytes(),
        }
    }
}

/// Keeps a sane client `X-Request-Id`, or generates a UUIDv4 one; the value
/// is set on `headers` and returned.
pub fn ensure_request_id(headers: &mut HeaderMap) -> RequestId {
    // One lookup (the name hashed once) whether the id is kept or replaced.
    match headers.entry(X_REQUEST_ID) {
        Entry::Occupied(mut sent) => {
            if let Some(existing) = RequestId::checked(sent.get()) {
                return existing;
            }
            let id = generate_request_id();
            sent.insert(id.header().clone());
            id
        }
        Entry::Vacant(slot) => {
            let id = generate_request_id();
            slot.insert(id.header().clone());
            id
        }
    }
}

/// A random UUIDv4 from the thread-local RNG (no syscall per request).
pub fn generate_request_id() -> RequestId {
    let mut random = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut random);
    let uuid = uuid::Builder::from_random_bytes(random).into_uuid();
    let mut buffer = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid.hyphenated().encode_lower(&mut buffer);
    // Lowercase hex digits and hyphens: sane by construction.
    RequestId(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_generated_otherwise() {
        let mut map = headers(&[("x-request-id", "abc-123")]);
        assert_eq!(*ensure_request_id(&mut map).header(), "abc-123");
        let mut map = headers(&[("x-request-id", "has space")]);
        let generated = ensure_request_id(&mut map);
        assert_eq!(generated.as_bytes().len(), 36);
        assert_eq!(map["x-request-id"], *generated.header());
        let mut map = HeaderMap::new();
        let a = ensure_request_id(&mut map);
        let b = ensure_request_id(&mut HeaderMap::new());
        assert_ne!(a, b);
    }

    #[test]
    fn request_ids_need_no_escaping() {
        for bad in ["", "a b", "a\"b", "a\\b", "caf\u{e9}"] {
            let value = HeaderValue::from_bytes(bad.as_bytes()).expect("header value");
            assert_eq!(RequestId::checked(&value), None, "{bad:?}");
        }
        let long = HeaderValue::from_bytes(&[b'a'; MAX_REQUEST_ID_LEN + 1]).expect("long");
        assert_eq!(RequestId::checked(&long), None);
        let max = HeaderValue::from_bytes(&[b'a'; MAX_REQUEST_ID_LEN]).expect("max");
        assert!(RequestId::checked(&max).is_some());
    }

    #[test]
    fn kept_request_ids_keep_their_text() {
        let generated = generate_request_id();
        let kept = KeptRequestId::new(&generated);
        assert!(matches!(kept, KeptRequestId::Inline { .. }));
        assert_eq!(kept.as_bytes(), generated.as_bytes());
        for len in [1, KEPT_INLINE, KEPT_INLINE + 1, MAX_REQUEST_ID_LEN] {
            let value = HeaderValue::from_bytes(&vec![b'k'; len]).expect("value");
            let id = RequestId::checked(&value).expect("sane");
            assert_eq!(KeptRequestId::new(&id).as_bytes(), value.as_bytes());
        }
    }
}
