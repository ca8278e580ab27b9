//! Values templated from the request, as `request-transformer` writes them:
//! `$(headers.x-tenant)`, `$(query.page)`, `$(consumer.name)`,
//! `$(route.name)`, and in a rewritten path `{id}`: a capture of the route's
//! path template (`/users/{id}`). Parsed once here (the control plane
//! refuses a malformed one, naming the field); the data plane renders the
//! parts per request.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// A request header's value (lower-case name); empty when absent.
    Header(String),
    /// A query parameter's raw value; empty when absent.
    Query(String),
    /// The authenticated consumer's name; empty when none.
    Consumer,
    Route,
    /// A `{name}` segment of the route's path template.
    Capture(String),
}

/// Parses `text`; `{name}` captures only where `captures` is true (paths).
pub fn parse(text: &str, captures: bool) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("$(") {
            let Some(end) = after.find(')') else {
                return Err(format!("unclosed $( in {}", crate::limits::show(text)));
            };
            let name = &after[..end];
            let part = match name.split_once('.') {
                Some(("headers", header)) if !header.is_empty() => {
                    Part::Header(header.to_ascii_lowercase())
                }
                Some(("query", query)) if !query.is_empty() => Part::Query(query.to_string()),
                _ if name == "consumer.name" => Part::Consumer,
                _ if name == "route.name" => Part::Route,
                _ => {
                    return Err(format!(
                        "unknown template $({}) (known: headers.NAME, query.NAME, consumer.name, route.name)",
                        crate::limits::show(name)
                    ))
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &after[end + 1..];
        } else if let (true, Some(after)) = (captures, rest.strip_prefix('{')) {
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed {{ in {}", crate::limits::show(text)));
            };
            let name = &after[..end];
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "{{{}}} is not a capture name",
                    crate::limits::show(name)
                ));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Capture(name.to_string()));
            rest = &after[end + 1..];
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                literal.push(c);
            }
            rest = chars.as_str();
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Whether `text` uses any template at all (a plain value is sent as is).
pub fn is_templated(text: &str) -> bool {
    text.contains("$(")
}

/// The capture names a route path template declares (`/users/{id}` ->
/// `id`).
pub fn route_captures(path: &str) -> Vec<&str> {
    path.trim_start_matches('=')
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_parts() {
        assert_eq!(
            parse("/v2/accounts/{id}/$(headers.X-Tenant)", true),
            Ok(vec![
                Part::Literal("/v2/accounts/".into()),
                Part::Capture("id".into()),
                Part::Literal("/".into()),
                Part::Header("x-tenant".into()),
            ])
        );
        assert_eq!(
            parse("by $(consumer.name) on $(route.name) {x}", false),
            Ok(vec![
                Part::Literal("by ".into()),
                Part::Consumer,
                Part::Literal(" on ".into()),
                Part::Route,
                Part::Literal(" {x}".into()),
            ])
        );
        for bad in ["$(headers.x", "$(nope)", "$(headers.)", "/{a-b}", "/{id"] {
            assert!(parse(bad, true).is_err(), "{bad}");
        }
        assert_eq!(route_captures("=/users/{id}/x/{sub}"), ["id", "sub"]);
    }
}
