//! The per-host segment trie: route paths compiled into a tree of path
//! segments, so a lookup walks the request path once instead of testing every
//! route.
//!
//! Each node stands for a sequence of route-path segments from the root (a
//! literal segment, or `{param}` matching any one non-empty segment). Routes
//! are attached to the node where their path ends, in one of three lists:
//!
//! - `exact`: `=/path` routes, which match only when the request path ends
//!   exactly here;
//! - `prefix`: `/path` routes, which match here whether or not more segments
//!   follow;
//! - `prefix_more`: `/path/` routes (trailing slash, and `/` itself), which
//!   match only when at least one more segment follows (possibly the empty
//!   one of a trailing slash).
//!
//! Lists hold entry ids, which are ranks: a smaller id always wins. Lists are
//! filled in rank order, so each is sorted and a lookup can stop early.
//! A walk visits each node at most once (a node sits at a fixed depth), so the
//! cost of a lookup is bounded by the request's segments and the branching of
//! literal and `{param}` children, not by the number of routes.

use std::collections::HashMap;

/// One segment of a compiled route path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(Box<str>),
    Param,
}

/// A route path compiled for the trie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PathPattern {
    pub segments: Vec<Segment>,
    /// `=/path`: the request path must end where the pattern ends.
    pub exact: bool,
    /// `/path/` prefix: at least one more segment must follow.
    pub needs_more: bool,
}

impl PathPattern {
    /// The pattern of a route without paths: the `/` prefix.
    pub fn any() -> PathPattern {
        PathPattern {
            segments: Vec::new(),
            exact: false,
            needs_more: true,
        }
    }

    /// Parses a validated route path (`/prefix`, `/prefix/`, `=/exact`,
    /// templates with `{name}` segments).
    pub fn parse(path: &str) -> Result<PathPattern, String> {
        let (exact, body) = match path.strip_prefix('=') {
            Some(body) => (true, body),
            None => (false, path),
        };
        let rest = body
            .strip_prefix('/')
            .ok_or_else(|| format!("route path {path:?} must start with \"/\""))?;
        let mut segments: Vec<Segment> = rest
            .split('/')
            .map(|segment| {
                if segment.len() >= 2 && segment.starts_with('{') && segment.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(segment.into())
                }
            })
            .collect();
        let mut needs_more = false;
        if !exact && segments.last() == Some(&Segment::Literal("".into())) {
            segments.pop();
            needs_more = true;
        }
        Ok(PathPattern {
            segments,
            exact,
            needs_more,
        })
    }

    /// How much of a path this pattern pins down: two per segment, one more
    /// for a trailing slash. Longer wins.
    pub fn depth(&self) -> usize {
        2 * self.segments.len() + usize::from(self.needs_more)
    }

    /// Literal (`true`) or parameter (`false`) per segment, left to right; at
    /// the first difference, a literal wins.
    pub fn shape(&self) -> impl Iterator<Item = bool> + '_ {
        self.segments
            .iter()
            .map(|segment| matches!(segment, Segment::Literal(_)))
    }
}

#[derive(Debug, Default)]
pub(super) struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    exact: Vec<u32>,
    prefix: Vec<u32>,
    prefix_more: Vec<u32>,
}

impl Node {
    /// Attaches entry `id` at the end of `pattern`. Ids must be inserted in
    /// increasing order (rank order).
    pub fn insert(&mut self, pattern: &PathPattern, id: u32) {
        let mut node = self;
        for segment in &pattern.segments {
            node = match segment {
                Segment::Literal(text) => node.literal.entry(text.clone()).or_default(),
                Segment::Param => node.param.get_or_insert_with(Box::default),
            };
        }
        let list = if pattern.exact {
            &mut node.exact
        } else if pattern.needs_more {
            &mut node.prefix_more
        } else {
            &mut node.prefix
        };
        if list.last() != Some(&id) {
            list.push(id);
        }
    }

    /// Walks a normalized `path` (starting with `/`) and calls `visit` with
    /// every list of candidate ids that match it, and the byte length of the
    /// path they matched (the prefix for prefix routes, the whole path for
    /// exact routes). Lists come in no particular order; ids inside a list
    /// are increasing.
    pub fn search<F: FnMut(&[u32], usize)>(&self, path: &str, visit: &mut F) {
        if path.starts_with('/') {
            self.walk(path, 0, visit);
        }
    }

    /// `pos` is where the rest of `path` starts: at a `/`, or at the end.
    fn walk<F: FnMut(&[u32], usize)>(&self, path: &str, pos: usize, visit: &mut F) {
        if !self.prefix.is_empty() {
            visit(&self.prefix, pos);
        }
        let Some(rest) = path.get(pos + 1..) else {
            // At the end of the path.
            if !self.exact.is_empty() {
                visit(&self.exact, path.len());
            }
            return;
        };
        if !self.prefix_more.is_empty() {
            visit(&self.prefix_more, pos);
        }
        let segment_len = rest.find('/').unwrap_or(rest.len());
        let segment = &rest[..segment_len];
        let end = pos + 1 + segment_len;
        if let Some(child) = self.literal.get(segment) {
            child.walk(path, end, visit);
        }
        if !segment.is_empty() {
            if let Some(child) = &self.param {
                child.walk(path, end, visit);
            }
        }
    }
}
