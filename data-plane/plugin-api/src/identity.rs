//! The identity headers: only the gateway says who is calling. The core
//! removes client copies from every request before any plugin runs;
//! authentication plugins set them for the consumer they proved.

use http::header::{HeaderMap, HeaderName};

/// The authenticated consumer's name, forwarded upstream.
pub const X_CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
/// The authenticated consumer's groups (`a, b`), forwarded upstream.
pub const X_CONSUMER_GROUPS: HeaderName = HeaderName::from_static("x-consumer-groups");
/// `true` when the request runs as a route's `anonymous` consumer.
pub const X_ANONYMOUS_CONSUMER: HeaderName = HeaderName::from_static("x-anonymous-consumer");

/// One of the identity headers only the gateway may set.
#[inline]
pub fn is_identity_header(name: &HeaderName) -> bool {
    name == X_CONSUMER_NAME || name == X_CONSUMER_GROUPS || name == X_ANONYMOUS_CONSUMER
}

/// Removes every identity header a client may have sent.
#[inline]
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    // `remove` drops every value of the name; absent names cost one lookup.
    headers.remove(X_CONSUMER_NAME);
    headers.remove(X_CONSUMER_GROUPS);
    headers.remove(X_ANONYMOUS_CONSUMER);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn identity_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.append(X_CONSUMER_NAME, HeaderValue::from_static("admin"));
        headers.append(X_CONSUMER_NAME, HeaderValue::from_static("root"));
        headers.append(X_CONSUMER_GROUPS, HeaderValue::from_static("admins"));
        headers.append(X_ANONYMOUS_CONSUMER, HeaderValue::from_static("false"));
        headers.append("x-other", HeaderValue::from_static("kept"));
        strip_identity_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-other"], "kept");
    }
}
