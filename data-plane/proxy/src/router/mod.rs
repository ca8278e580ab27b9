//! Routing: which route a request belongs to.
//!
//! A [`Router`] is compiled once per config snapshot and then only read, so
//! request threads share it without locks. Lookups go through a hash map of
//! hosts and a segment trie per host (see `trie`), so their cost depends on
//! the request, not on the number of routes. Routing always works on the
//! path produced by [`normalize_path`] (see [`normalize`] for that rule), and
//! the upstream receives that same path (minus the matched prefix with
//! `strip_path`).
//!
//! # Routing precedence
//!
//! **Hosts.** The `Host` header (or the HTTP/2 `:authority`) is normalized
//! first: port stripped, lower-cased, one trailing dot removed.
//! A route host is exact (`api.example.com`) or a wildcard (`*.example.com`),
//! which matches one *or more* labels in front of the suffix
//! (`a.example.com`, `a.b.example.com`) but never the bare `example.com`.
//! A route without `hosts` matches any host. Host buckets are tried in this
//! order: the exact host, then wildcards from the longest suffix to the
//! shortest (`*.b.example.com` before `*.example.com`), then the any-host
//! routes.
//!
//! **Paths.** Path matching is case-sensitive and works on whole segments.
//! - `/v1/orders` is a prefix on a segment boundary: it matches `/v1/orders`,
//!   `/v1/orders/` and `/v1/orders/42`, never `/v1/ordersx`.
//! - `/v1/orders/` (trailing slash) matches `/v1/orders/` and
//!   `/v1/orders/42`, not `/v1/orders`.
//! - `/` matches every path; so does a route without `paths`.
//! - `=/v1/orders` matches exactly `/v1/orders` (not `/v1/orders/`).
//! - Templates: `{name}` matches exactly one whole, non-empty segment. A
//!   template is a prefix like any other path (`/users/{id}` matches
//!   `/users/42` and `/users/42/orders`), unless written `=/users/{id}`.
//!
//! **Order within a host bucket** (the first that also passes its method and
//! header checks wins):
//! 1. exact paths (`=/...`) before prefixes and templates;
//! 2. more specific first: more segments matched (a trailing slash counts
//!    half a segment); with as many segments, a literal segment beats a
//!    `{param}` at the first position where they differ
//!    (`/users/me` before `/users/{id}`);
//! 3. higher `priority` first;
//! 4. route name, then position in the config, so the choice never depends on
//!    hash order.
//!
//! **Methods and headers.** Empty `methods` matches any method; otherwise the
//! request method must be listed (`HEAD` does *not* match a `GET`-only route
//! unless `HEAD` is listed too). Each header condition must hold: with a
//! `value`, some value of that header (name case-insensitive) must equal it
//! byte for byte (case-sensitive); without, the header must be present.
//!
//! **Fall-through.** If the best path match fails its method or header
//! checks, the next candidate in the order above is tried, then the next host
//! bucket (exact host, wildcards, any host). Nothing left: no route (404).
//!
//! **`strip_path`.** [`RouteMatch::matched_len`] is the byte length of the
//! matched part of the normalized path: the prefix (up to the end of its last
//! segment) for prefix and template routes, the whole path for exact routes.
//! [`strip_prefix`] removes it and always leaves a path starting with `/`:
//! `/v1/orders` on `/v1/orders/42` forwards `/42`, and on `/v1/orders` forwards
//! `/`.

pub mod host;
pub mod normalize;
pub mod path_policy;
mod trie;

#[cfg(test)]
mod tests;

pub use host::normalize_host;
pub use normalize::{normalize_path, PathError};
pub use path_policy::PathPolicy;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, Method};
use tollgate_shared::model::Route;

use trie::{Node, PathPattern};

/// Compiled route table: built once per snapshot, read lock-free per request
/// (it is immutable).
///
/// Each host bucket is its own table (`Arc<Bucket>`, with its own ranks: a
/// lookup only compares candidates of one bucket), so a config delta
/// rebuilds the buckets of the hosts it touches ([`Router::rebuild`]) and
/// shares every other one with the previous snapshot.
#[derive(Clone)]
pub struct Router {
    exact_hosts: HashMap<Box<str>, Arc<Bucket>>,
    /// Keyed by the suffix after `*.`.
    wildcard_hosts: HashMap<Box<str>, Arc<Bucket>>,
    /// Longest key of `wildcard_hosts`: longer suffixes are not even hashed,
    /// so a hostile `Host` of thousands of labels costs one pass, not one
    /// hash per label.
    longest_wildcard: usize,
    any_host: Arc<Bucket>,
    route_count: usize,
}

/// The routes of one host bucket, ranked.
#[derive(Default)]
struct Bucket {
    node: Node,
    /// Entry id (rank within this bucket) to route index and its checks.
    entries: Vec<Entry>,
    /// The route indexes with an entry here, ascending (what a rebuild of
    /// this bucket alone starts from).
    members: Vec<usize>,
}

struct Entry {
    route_index: usize,
    checks: Arc<RouteChecks>,
}

/// Which bucket a route host puts a route in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Exact(Box<str>),
    /// The suffix after `*.`.
    Wildcard(Box<str>),
    Any,
}

impl BucketKey {
    /// The buckets of a route with these `hosts`, each once.
    fn of(hosts: &[String]) -> Vec<BucketKey> {
        if hosts.is_empty() {
            return vec![BucketKey::Any];
        }
        let mut keys: Vec<BucketKey> = Vec::with_capacity(hosts.len());
        for host in hosts {
            let host = host.to_ascii_lowercase();
            let key = match host.strip_prefix("*.") {
                Some(suffix) => BucketKey::Wildcard(suffix.into()),
                None => BucketKey::Exact(host.into()),
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

/// Result of a match: which route (index into the `routes` slice given to
/// `build`) and what to strip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    pub route_index: usize,
    /// Byte length of the matched path prefix of the *normalized* path, for
    /// strip_path (prefix and template routes: the prefix length; exact
    /// routes: the whole path).
    pub matched_len: usize,
}

/// The method and header conditions of one route.
struct RouteChecks {
    /// Empty: any method.
    methods: Box<[Method]>,
    headers: Box<[HeaderCheck]>,
}

struct HeaderCheck {
    name: HeaderName,
    /// `None`: the header must be present.
    value: Option<Box<[u8]>>,
}

impl RouteChecks {
    fn compile(route: &Route) -> Result<RouteChecks, String> {
        let methods = route
            .methods
            .iter()
            .map(|method| {
                Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("route {:?}: invalid method {method:?}", route.name))
            })
            .collect::<Result<_, _>>()?;
        let headers = route
            .headers
            .iter()
            .map(|header| {
                let name = HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                    format!(
                        "route {:?}: invalid header name {:?}",
                        route.name, header.name
                    )
                })?;
                Ok(HeaderCheck {
                    name,
                    value: header.value.as_deref().map(|v| v.as_bytes().into()),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(RouteChecks { methods, headers })
    }

    fn accepts(&self, method: &Method, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|check| match &check.value {
                None => headers.contains_key(&check.name),
                Some(value) => headers
                    .get_all(&check.name)
                    .iter()
                    .any(|actual| actual.as_bytes() == &value[..]),
            })
    }
}

/// One (route, path) pair before ranking.
struct Candidate<'a> {
    route: &'a Route,
    route_index: usize,
    path_index: usize,
    pattern: PathPattern,
}

/// The precedence order of the module docs (smaller is better), minus the
/// host bucket, which the lookup handles.
fn precedence(a: &Candidate<'_>, b: &Candidate<'_>) -> Ordering {
    b.pattern
        .exact
        .cmp(&a.pattern.exact)
        .then_with(|| b.pattern.depth().cmp(&a.pattern.depth()))
        .then_with(|| b.pattern.shape().cmp(a.pattern.shape()))
        .then_with(|| b.route.priority.cmp(&a.route.priority))
        .then_with(|| a.route.name.cmp(&b.route.name))
        .then_with(|| a.route_index.cmp(&b.route_index))
        .then_with(|| a.path_index.cmp(&b.path_index))
}

impl Bucket {
    /// Ranks the paths of `members` (route index, route; each once) into one
    /// bucket.
    fn build(members: &[(usize, &Route)]) -> Result<Bucket, String> {
        let mut candidates = Vec::with_capacity(members.len());
        let mut checks = HashMap::with_capacity(members.len());
        for &(route_index, route) in members {
            checks.insert(route_index, Arc::new(RouteChecks::compile(route)?));
            if route.paths.is_empty() {
                candidates.push(Candidate {
                    route,
                    route_index,
                    path_index: 0,
                    pattern: PathPattern::any(),
                });
            }
            for (path_index, path) in route.paths.iter().enumerate() {
                tollgate_shared::validate::check_route_path(path)
                    .map_err(|m| format!("route {:?}: paths[{path_index}]: {m}", route.name))?;
                candidates.push(Candidate {
                    route,
                    route_index,
                    path_index,
                    pattern: PathPattern::parse(path)?,
                });
            }
        }
        if u32::try_from(candidates.len()).is_err() {
            return Err("too many route paths".into());
        }
        candidates.sort_by(precedence);
        let mut bucket = Bucket {
            node: Node::default(),
            entries: Vec::with_capacity(candidates.len()),
            members: members.iter().map(|&(index, _)| index).collect(),
        };
        bucket.members.sort_unstable();
        for (id, candidate) in (0u32..).zip(&candidates) {
            let checks = checks
                .get(&candidate.route_index)
                .cloned()
                .ok_or("route checks missing")?;
            bucket.entries.push(Entry {
                route_index: candidate.route_index,
                checks,
            });
            bucket.node.insert(&candidate.pattern, id);
        }
        Ok(bucket)
    }
}

fn check_hosts(route: &Route) -> Result<(), String> {
    for host in &route.hosts {
        tollgate_shared::validate::check_host(host, true)
            .map_err(|m| format!("route {:?}: hosts: {m}", route.name))?;
    }
    Ok(())
}

impl Router {
    /// Compiles the table. Errors (String) only for things validation could
    /// not catch; a validated config always compiles.
    pub fn build(routes: &[Route]) -> Result<Router, String> {
        Router::build_indexed(routes.iter().enumerate(), routes.len())
    }

    /// Compiles the table of `routes` (route index, route); `route_count` is
    /// one more than the highest index.
    pub fn build_indexed<'a>(
        routes: impl Iterator<Item = (usize, &'a Route)>,
        route_count: usize,
    ) -> Result<Router, String> {
        let mut buckets: HashMap<BucketKey, Vec<(usize, &Route)>> = HashMap::new();
        for (route_index, route) in routes {
            check_hosts(route)?;
            for key in BucketKey::of(&route.hosts) {
                buckets.entry(key).or_default().push((route_index, route));
            }
        }
        let mut router = Router {
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
            longest_wildcard: 0,
            any_host: Arc::default(),
            route_count,
        };
        for (key, members) in buckets {
            router.put(key, Some(Bucket::build(&members)?));
        }
        Ok(router)
    }

    /// The table after the routes at `touched` indexes changed: `old_hosts`
    /// gives the hosts of the route an index held before (if any), `new` the
    /// route it holds now (if any; every index of a rebuilt bucket is looked
    /// up there). Only the buckets of the touched routes' hosts (before and
    /// after) are rebuilt; every other bucket is shared with `self`.
    pub fn rebuild<'a, 'h>(
        &self,
        touched: &[usize],
        old_hosts: impl Fn(usize) -> Option<&'h [String]>,
        new: impl Fn(usize) -> Option<&'a Route>,
        route_count: usize,
    ) -> Result<Router, String> {
        let mut affected: Vec<BucketKey> = Vec::new();
        for &index in touched {
            let new_hosts = new(index).map(|route| &route.hosts[..]);
            for hosts in [old_hosts(index), new_hosts].into_iter().flatten() {
                for key in BucketKey::of(hosts) {
                    if !affected.contains(&key) {
                        affected.push(key);
                    }
                }
            }
            if let Some(route) = new(index) {
                check_hosts(route)?;
            }
        }
        let touched_set: HashSet<usize> = touched.iter().copied().collect();
        let mut router = self.clone();
        router.route_count = route_count;
        for key in affected {
            let mut indexes: Vec<usize> = self
                .bucket(&key)
                .map(|bucket| bucket.members.clone())
                .unwrap_or_default();
            indexes.retain(|index| !touched_set.contains(index));
            indexes.extend(touched_set.iter().copied().filter(|&index| {
                new(index).is_some_and(|route| BucketKey::of(&route.hosts).contains(&key))
            }));
            let mut members = Vec::with_capacity(indexes.len());
            for index in indexes {
                let route = new(index).ok_or_else(|| format!("route index {index} is gone"))?;
                members.push((index, route));
            }
            let bucket = if members.is_empty() {
                None
            } else {
                Some(Bucket::build(&members)?)
            };
            router.put(key, bucket);
        }
        router.longest_wildcard = router
            .wildcard_hosts
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(0);
        Ok(router)
    }

    fn bucket(&self, key: &BucketKey) -> Option<&Arc<Bucket>> {
        match key {
            BucketKey::Exact(host) => self.exact_hosts.get(host),
            BucketKey::Wildcard(suffix) => self.wildcard_hosts.get(suffix),
            BucketKey::Any => Some(&self.any_host),
        }
    }

    /// Sets (or with `None` removes) one bucket.
    fn put(&mut self, key: BucketKey, bucket: Option<Bucket>) {
        match (key, bucket) {
            (BucketKey::Exact(host), Some(bucket)) => {
                self.exact_hosts.insert(host, Arc::new(bucket));
            }
            (BucketKey::Exact(host), None) => {
                self.exact_hosts.remove(&host);
            }
            (BucketKey::Wildcard(suffix), Some(bucket)) => {
                self.longest_wildcard = self.longest_wildcard.max(suffix.len());
                self.wildcard_hosts.insert(suffix, Arc::new(bucket));
            }
            (BucketKey::Wildcard(suffix), None) => {
                self.wildcard_hosts.remove(&suffix);
            }
            (BucketKey::Any, bucket) => self.any_host = Arc::new(bucket.unwrap_or_default()),
        }
    }

    /// `host`: the request authority/Host header value (may include :port,
    /// any case; the port, case and a trailing dot are ignored).
    /// `path`: an ALREADY NORMALIZED path (from [`normalize_path`]), without
    /// query.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<RouteMatch> {
        let host = normalize_host(host);
        let host: &str = &host;
        if let Some(found) = self
            .exact_hosts
            .get(host)
            .and_then(|bucket| self.find_in(bucket, path, method, headers))
        {
            return Some(found);
        }
        if !self.wildcard_hosts.is_empty() {
            // Every suffix after a dot, longest first; the label(s) before it
            // must be non-empty.
            for (dot, _) in host.match_indices('.') {
                let suffix = &host[dot + 1..];
                if dot == 0 || suffix.len() > self.longest_wildcard {
                    continue;
                }
                if let Some(found) = self
                    .wildcard_hosts
                    .get(suffix)
                    .and_then(|bucket| self.find_in(bucket, path, method, headers))
                {
                    return Some(found);
                }
            }
        }
        self.find_in(&self.any_host, path, method, headers)
    }

    /// The best-ranked candidate of one host bucket that passes its checks.
    fn find_in(
        &self,
        bucket: &Bucket,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<RouteMatch> {
        let mut best: Option<(u32, usize)> = None;
        bucket
            .node
            .search(path, &mut |ids: &[u32], matched_len: usize| {
                for &id in ids {
                    if best.is_some_and(|(best_id, _)| id >= best_id) {
                        break;
                    }
                    let accepted = bucket
                        .entries
                        .get(id as usize)
                        .is_some_and(|entry| entry.checks.accepts(method, headers));
                    if accepted {
                        best = Some((id, matched_len));
                        break;
                    }
                }
            });
        let (id, matched_len) = best?;
        Some(RouteMatch {
            route_index: bucket.entries.get(id as usize)?.route_index,
            matched_len,
        })
    }

    /// Number of routes the table was built from.
    pub fn route_count(&self) -> usize {
        self.route_count
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.route_count)
            .field("exact_hosts", &self.exact_hosts.len())
            .field("wildcard_hosts", &self.wildcard_hosts.len())
            .finish()
    }
}

/// `strip_path` helper: the upstream path after removing `matched_len` bytes;
/// always starts with '/'.
pub fn strip_prefix(path: &str, matched_len: usize) -> Cow<'_, str> {
    match path.get(matched_len..) {
        Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
        Some(rest) if !rest.is_empty() => Cow::Owned(format!("/{rest}")),
        _ => Cow::Borrowed("/"),
    }
}
