//! What the gateway does with the two path forms that upstreams disagree
//! about, before routing: encoded slashes (`/admin%2Fsecret`, which some
//! upstreams decode into `/admin/secret`) and `;params` in a segment
//! (`/admin;x/secret`, which servlet containers strip into `/admin/secret`).
//!
//! Normalization ([`super::normalize`]) treats `%2F` as data and `;` as an
//! ordinary character, a consistent rule. But when the gateway routes
//! `/admin%2Fsecret` to a catch-all route without auth and the upstream
//! serves it as `/admin/secret`, the gateway is the one that lost. So a
//! [`PathPolicy`] (gateway-wide flags, per-route override) resolves those
//! forms on the normalized path, and the route is chosen, the plugins run
//! and the upstream receives the result. Defaults: `encoded_slashes: decode`
//! (what nginx and most upstreams do, so the gateway sees what they see) and
//! `path_parameters: reject` (the gateway cannot know whether the upstream
//! strips them).

use std::borrow::Cow;

use tollgate_shared::model::{EncodedSlashes, PathParameters};

use super::normalize::{normalize_path, PathError};

/// The two settings in force for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathPolicy {
    pub encoded_slashes: EncodedSlashes,
    pub path_parameters: PathParameters,
}

impl PathPolicy {
    /// This policy with a route's overrides applied.
    pub fn with_overrides(
        self,
        encoded_slashes: Option<EncodedSlashes>,
        path_parameters: Option<PathParameters>,
    ) -> PathPolicy {
        PathPolicy {
            encoded_slashes: encoded_slashes.unwrap_or(self.encoded_slashes),
            path_parameters: path_parameters.unwrap_or(self.path_parameters),
        }
    }

    /// Applies the policy to a path `normalize_path` returned (escapes upper
    /// case, no dot segments). A path with neither form is returned as is,
    /// after one scan.
    pub fn apply<'a>(&self, normalized: Cow<'a, str>) -> Result<Cow<'a, str>, PathError> {
        let mut path = normalized;
        // Most paths hold neither an escape nor a `;`: one byte scan instead
        // of two substring searches.
        if !path.bytes().any(|byte| byte == b'%' || byte == b';') {
            return Ok(path);
        }
        if path.contains("%2F") {
            match self.encoded_slashes {
                EncodedSlashes::Keep => {}
                EncodedSlashes::Reject => return Err(PathError::EncodedSlash),
                EncodedSlashes::Decode => {
                    let decoded = path.replace("%2F", "/");
                    path = Cow::Owned(normalize_path(&decoded)?.into_owned());
                }
            }
        }
        if path.contains(';') {
            match self.path_parameters {
                PathParameters::Keep => {}
                PathParameters::Reject => return Err(PathError::PathParameters),
                PathParameters::Strip => {
                    let mut stripped = String::with_capacity(path.len());
                    for segment in path.split('/').skip(1) {
                        stripped.push('/');
                        stripped.push_str(segment.split(';').next().unwrap_or(""));
                    }
                    path = Cow::Owned(normalize_path(&stripped)?.into_owned());
                }
            }
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(policy: PathPolicy, raw: &str) -> Result<String, PathError> {
        let normalized = normalize_path(raw)?;
        policy.apply(normalized).map(Cow::into_owned)
    }

    fn policy(slashes: EncodedSlashes, params: PathParameters) -> PathPolicy {
        PathPolicy {
            encoded_slashes: slashes,
            path_parameters: params,
        }
    }

    #[test]
    fn encoded_slashes_are_decoded_rejected_or_kept() {
        let decode = policy(EncodedSlashes::Decode, PathParameters::Keep);
        assert_eq!(
            apply(decode, "/admin%2fsecret").as_deref(),
            Ok("/admin/secret")
        );
        assert_eq!(
            apply(decode, "/a/b%2F..%2Fadmin"),
            Err(PathError::AmbiguousEncodedSlash)
        );
        assert_eq!(
            apply(decode, "/a%252Fb").as_deref(),
            Ok("/a%252Fb"),
            "decoded once"
        );
        assert_eq!(apply(decode, "/plain/path").as_deref(), Ok("/plain/path"));
        let reject = policy(EncodedSlashes::Reject, PathParameters::Keep);
        assert_eq!(
            apply(reject, "/admin%2Fsecret"),
            Err(PathError::EncodedSlash)
        );
        assert_eq!(
            apply(reject, "/admin/secret").as_deref(),
            Ok("/admin/secret")
        );
        let keep = policy(EncodedSlashes::Keep, PathParameters::Keep);
        assert_eq!(apply(keep, "/files/a%2fb").as_deref(), Ok("/files/a%2Fb"));
    }

    #[test]
    fn path_parameters_are_rejected_stripped_or_kept() {
        let strip = policy(EncodedSlashes::Decode, PathParameters::Strip);
        assert_eq!(
            apply(strip, "/admin;x/secret").as_deref(),
            Ok("/admin/secret")
        );
        assert_eq!(
            apply(strip, "/admin;/secret").as_deref(),
            Ok("/admin/secret")
        );
        assert_eq!(
            apply(strip, "/admin/secret;jsessionid=1").as_deref(),
            Ok("/admin/secret")
        );
        assert_eq!(apply(strip, "/;x/admin").as_deref(), Ok("/admin"));
        let reject = PathPolicy::default();
        assert_eq!(
            apply(reject, "/admin;x/secret"),
            Err(PathError::PathParameters)
        );
        assert_eq!(
            apply(reject, "/a/b;").as_ref().map(String::as_str),
            Err(&PathError::PathParameters)
        );
        let keep = policy(EncodedSlashes::Decode, PathParameters::Keep);
        assert_eq!(apply(keep, "/a;v=1").as_deref(), Ok("/a;v=1"));
        // Both at once: the slash is decoded, then the parameters go.
        assert_eq!(
            apply(strip, "/admin;x%2Fsecret").as_deref(),
            Ok("/admin/secret")
        );
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let gateway = PathPolicy::default();
        let route = gateway.with_overrides(Some(EncodedSlashes::Keep), None);
        assert_eq!(route.encoded_slashes, EncodedSlashes::Keep);
        assert_eq!(route.path_parameters, PathParameters::Reject);
        assert_eq!(gateway.with_overrides(None, None), gateway);
    }
}
