//! Routing precedence, fall-through, host buckets and `strip_prefix`, as
//! tables a reader can check against the module docs.

use super::*;
use http::{HeaderMap, HeaderValue, Method};
use tollgate_shared::model::{HeaderMatch, Route};

fn route(name: &str) -> Route {
    Route {
        tags: Vec::new(),
        name: name.into(),
        service: "svc".into(),
        hosts: Vec::new(),
        paths: Vec::new(),
        methods: Vec::new(),
        headers: Vec::new(),
        strip_path: false,
        priority: 0,
        plugins: Vec::new(),
        max_body_bytes: None,
        metrics: Default::default(),
        https_only: false,
        https_redirect: false,
        encoded_slashes: None,
        path_parameters: None,
        retries: None,
        retry_non_idempotent: false,
        websocket: false,
        websocket_idle_timeout_ms: None,
    }
}

fn with_paths(name: &str, paths: &[&str]) -> Route {
    Route {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ..route(name)
    }
}

fn with_hosts(name: &str, hosts: &[&str], paths: &[&str]) -> Route {
    Route {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        ..with_paths(name, paths)
    }
}

fn with_methods(mut r: Route, methods: &[&str]) -> Route {
    r.methods = methods.iter().map(|m| m.to_string()).collect();
    r
}

fn with_header(mut r: Route, name: &str, value: Option<&str>) -> Route {
    r.headers.push(HeaderMatch {
        name: name.into(),
        value: value.map(str::to_string),
    });
    r
}

struct Table {
    routes: Vec<Route>,
    router: Router,
}

impl Table {
    fn new(routes: Vec<Route>) -> Table {
        let router = Router::build(&routes).unwrap_or_else(|e| panic!("build: {e}"));
        Table { routes, router }
    }

    /// The name of the route chosen for a GET without headers, and its
    /// matched length.
    fn get(&self, host: &str, path: &str) -> Option<(&str, usize)> {
        self.find(host, path, &Method::GET, &HeaderMap::new())
    }

    fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> Option<(&str, usize)> {
        self.router
            .find(host, path, method, headers)
            .map(|m| (self.routes[m.route_index].name.as_str(), m.matched_len))
    }

    fn name(&self, host: &str, path: &str) -> Option<&str> {
        self.get(host, path).map(|(name, _)| name)
    }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

#[test]
fn path_kinds() {
    let table = Table::new(vec![
        with_paths("orders", &["/v1/orders"]),
        with_paths("exact", &["=/v1/exact"]),
        with_paths("users", &["/users/{id}"]),
        with_paths("user-exact", &["=/profiles/{id}"]),
        with_paths("slash", &["/docs/"]),
    ]);
    let cases: &[(&str, Option<(&str, usize)>)] = &[
        ("/v1/orders", Some(("orders", 10))),
        ("/v1/orders/", Some(("orders", 10))),
        ("/v1/orders/42", Some(("orders", 10))),
        ("/v1/orders/42/items", Some(("orders", 10))),
        ("/v1/ordersx", None),
        ("/v1/order", None),
        ("/v1", None),
        ("/V1/orders", None),
        ("/v1/exact", Some(("exact", 9))),
        ("/v1/exact/", None),
        ("/v1/exact/1", None),
        ("/users/42", Some(("users", 9))),
        ("/users/42/", Some(("users", 9))),
        ("/users/42/orders", Some(("users", 9))),
        ("/users/", None),
        ("/users", None),
        ("/profiles/7", Some(("user-exact", 11))),
        ("/profiles/7/", None),
        ("/profiles/7/x", None),
        ("/docs/", Some(("slash", 5))),
        ("/docs/a", Some(("slash", 5))),
        ("/docs", None),
        ("/", None),
    ];
    for (path, expected) in cases {
        assert_eq!(table.get("any.host", path), *expected, "{path}");
    }
}

#[test]
fn root_and_pathless_routes_match_everything() {
    for routes in [vec![with_paths("root", &["/"])], vec![route("root")]] {
        let table = Table::new(routes);
        for path in ["/", "/a", "/a/", "/a/b/c", "/%2Fx"] {
            assert_eq!(table.get("h", path), Some(("root", 0)), "{path}");
        }
    }
    let exact_root = Table::new(vec![with_paths("exact-root", &["=/"])]);
    assert_eq!(exact_root.get("h", "/"), Some(("exact-root", 1)));
    assert_eq!(exact_root.get("h", "/a"), None);
}

#[test]
fn path_precedence_within_a_host() {
    let table = Table::new(vec![
        with_paths("root", &["/"]),
        with_paths("v1", &["/v1"]),
        with_paths("v1-slash", &["/v1/"]),
        with_paths("orders", &["/v1/orders"]),
        with_paths("orders-exact", &["=/v1/orders"]),
        with_paths("orders-id", &["/v1/orders/{id}"]),
        with_paths("orders-me", &["/v1/orders/me"]),
        with_paths("any-items", &["/v1/{x}/items"]),
        with_paths("orders-p", &["/v1/orders/{id}/{sub}"]),
        with_paths("a-literal-first", &["/a/b/{y}"]),
        with_paths("a-param-first", &["/a/{x}/c"]),
    ]);
    let cases = [
        ("/", "root"),
        ("/other", "root"),
        ("/v1", "v1"),
        ("/v1/", "v1-slash"),
        ("/v1/x", "v1-slash"),
        ("/v1/orders", "orders-exact"),
        ("/v1/orders/", "orders"),
        ("/v1/orders/42", "orders-id"),
        ("/v1/orders/me", "orders-me"),
        ("/v1/orders/me/", "orders-me"),
        ("/v1/orders/items", "orders-id"),
        ("/v1/carts/items", "any-items"),
        ("/v1/orders/42/x", "orders-p"),
        ("/v1/orders/me/x", "orders-p"),
        ("/a/b/c", "a-literal-first"),
        ("/a/z/c", "a-param-first"),
    ];
    for (path, expected) in cases {
        assert_eq!(table.name("h", path), Some(expected), "{path}");
    }
}

#[test]
fn exact_beats_longer_prefix_and_template() {
    let table = Table::new(vec![
        with_paths("template", &["/users/{id}"]),
        with_paths("exact", &["=/users/{id}"]),
        with_paths("literal", &["/users/me"]),
    ]);
    assert_eq!(table.name("h", "/users/me"), Some("exact"));
    assert_eq!(table.name("h", "/users/me/x"), Some("literal"));
    assert_eq!(table.name("h", "/users/7/x"), Some("template"));
}

#[test]
fn priority_then_name_break_ties() {
    let table = Table::new(vec![
        Route {
            priority: 1,
            ..with_paths("b-high", &["/api"])
        },
        with_paths("a-low", &["/api"]),
        Route {
            priority: 5,
            ..with_paths("c-shorter", &["/"])
        },
    ]);
    // Priority never beats specificity: `c-shorter` only gets the rest.
    assert_eq!(table.name("h", "/api/x"), Some("b-high"));
    assert_eq!(table.name("h", "/other"), Some("c-shorter"));

    let tie = Table::new(vec![
        with_paths("zeta", &["/api"]),
        with_paths("alpha", &["/api"]),
    ]);
    assert_eq!(tie.name("h", "/api"), Some("alpha"));
    let reversed = Table::new(vec![
        with_paths("alpha", &["/api"]),
        with_paths("zeta", &["/api"]),
    ]);
    assert_eq!(reversed.name("h", "/api"), Some("alpha"));
}

#[test]
fn host_precedence() {
    let table = Table::new(vec![
        with_hosts("any", &[], &["/"]),
        with_hosts("wild", &["*.example.com"], &["/"]),
        with_hosts("wild-b", &["*.b.example.com"], &["/"]),
        with_hosts("exact", &["api.example.com"], &["/"]),
        with_hosts("exact-deep", &["x.b.example.com"], &["/"]),
    ]);
    let cases = [
        ("api.example.com", "exact"),
        ("API.Example.com:8443", "exact"),
        ("api.example.com.", "exact"),
        ("other.example.com", "wild"),
        ("a.b.c.example.com", "wild"),
        ("b.example.com", "wild"),
        ("y.b.example.com", "wild-b"),
        ("z.y.b.example.com", "wild-b"),
        ("x.b.example.com", "exact-deep"),
        ("example.com", "any"),
        (".example.com", "any"),
        ("example.org", "any"),
        ("", "any"),
        ("[::1]:8000", "any"),
    ];
    for (host, expected) in cases {
        assert_eq!(table.name(host, "/"), Some(expected), "{host}");
    }
}

#[test]
fn hostile_hosts_are_cheap() {
    let table = Table::new(vec![
        with_hosts("wild", &["*.example.com"], &["/"]),
        with_hosts("any", &[], &["/"]),
    ]);
    let many_labels = "a.".repeat(30_000);
    assert_eq!(table.name(&many_labels, "/"), Some("any"));
    let deep = format!("{many_labels}example.com");
    assert_eq!(table.name(&deep, "/"), Some("wild"));
}

#[test]
fn host_bucket_beats_path_specificity() {
    let table = Table::new(vec![
        with_hosts("any-long", &[], &["=/v1/orders/42"]),
        with_hosts("exact-host-root", &["api.example.com"], &["/"]),
    ]);
    assert_eq!(
        table.name("api.example.com", "/v1/orders/42"),
        Some("exact-host-root")
    );
    assert_eq!(table.name("other", "/v1/orders/42"), Some("any-long"));
}

#[test]
fn host_without_fallback_is_not_found() {
    let table = Table::new(vec![with_hosts("api", &["api.example.com"], &["/"])]);
    assert_eq!(table.name("api.example.com", "/x"), Some("api"));
    assert_eq!(table.name("www.example.com", "/x"), None);
    assert_eq!(table.name("", "/x"), None);
}

#[test]
fn methods_filter_and_fall_through() {
    let table = Table::new(vec![
        with_methods(
            with_paths("orders-write", &["/v1/orders"]),
            &["POST", "PUT"],
        ),
        with_methods(with_paths("v1-read", &["/v1"]), &["GET"]),
        with_paths("fallback", &["/"]),
    ]);
    let get = |m: Method| table.find("h", "/v1/orders", &m, &HeaderMap::new());
    assert_eq!(get(Method::POST).map(|f| f.0), Some("orders-write"));
    assert_eq!(get(Method::PUT).map(|f| f.0), Some("orders-write"));
    assert_eq!(get(Method::GET), Some(("v1-read", 3)));
    // HEAD is not GET.
    assert_eq!(get(Method::HEAD), Some(("fallback", 0)));
    assert_eq!(get(Method::DELETE), Some(("fallback", 0)));
    let custom = Method::from_bytes(b"PURGE").expect("valid token");
    assert_eq!(get(custom), Some(("fallback", 0)));
}

#[test]
fn head_matches_only_when_listed() {
    let table = Table::new(vec![with_methods(
        with_paths("get-head", &["/"]),
        &["GET", "HEAD"],
    )]);
    for method in [Method::GET, Method::HEAD] {
        assert!(table.find("h", "/", &method, &HeaderMap::new()).is_some());
    }
    assert!(table
        .find("h", "/", &Method::POST, &HeaderMap::new())
        .is_none());
}

#[test]
fn headers_filter_and_fall_through() {
    let table = Table::new(vec![
        with_header(with_paths("canary", &["/api"]), "X-Canary", Some("Yes")),
        with_header(with_paths("debug", &["/api"]), "x-debug", None),
        with_paths("stable", &["/api"]),
    ]);
    let cases: &[(&[(&'static str, &'static str)], &str)] = &[
        (&[], "stable"),
        (&[("x-canary", "Yes")], "canary"),
        (&[("X-CANARY", "Yes")], "canary"),
        // values are case-sensitive
        (&[("x-canary", "yes")], "stable"),
        (&[("x-canary", "Yes ")], "stable"),
        // any of several values
        (&[("x-canary", "no"), ("x-canary", "Yes")], "canary"),
        // presence
        (&[("x-debug", "")], "debug"),
        (&[("x-debug", "1"), ("x-canary", "Yes")], "canary"),
        (&[("x-canary", "no"), ("x-debug", "1")], "debug"),
    ];
    for (pairs, expected) in cases {
        let found = table.find("h", "/api/x", &Method::GET, &headers(pairs));
        assert_eq!(found.map(|f| f.0), Some(*expected), "{pairs:?}");
    }
}

#[test]
fn all_header_conditions_must_hold() {
    let r = with_header(
        with_header(with_paths("both", &["/"]), "a", Some("1")),
        "b",
        None,
    );
    let table = Table::new(vec![r]);
    let find = |pairs| table.find("h", "/", &Method::GET, &headers(pairs));
    assert!(find(&[("a", "1"), ("b", "x")]).is_some());
    assert!(find(&[("a", "1")]).is_none());
    assert!(find(&[("b", "x")]).is_none());
}

#[test]
fn fall_through_crosses_host_buckets() {
    let table = Table::new(vec![
        with_methods(
            with_hosts("exact-post", &["api.example.com"], &["=/v1/orders"]),
            &["POST"],
        ),
        with_header(
            with_hosts("wild-hdr", &["*.example.com"], &["/v1"]),
            "x-beta",
            None,
        ),
        with_hosts("any", &[], &["/"]),
    ]);
    let find = |method: Method, pairs| {
        table
            .find("api.example.com", "/v1/orders", &method, &headers(pairs))
            .map(|f| f.0)
    };
    assert_eq!(find(Method::POST, &[]), Some("exact-post"));
    assert_eq!(find(Method::GET, &[("x-beta", "1")]), Some("wild-hdr"));
    assert_eq!(find(Method::GET, &[]), Some("any"));
}

#[test]
fn fall_through_to_nothing_is_none() {
    let table = Table::new(vec![with_methods(
        with_paths("only-post", &["/"]),
        &["POST"],
    )]);
    assert!(table
        .find("h", "/x", &Method::GET, &HeaderMap::new())
        .is_none());
}

#[test]
fn route_with_several_paths_and_hosts() {
    let table = Table::new(vec![
        with_hosts(
            "multi",
            &["a.example.com", "*.example.org", "a.example.com"],
            &["=/health", "/api"],
        ),
        with_paths("other", &["/"]),
    ]);
    assert_eq!(table.get("a.example.com", "/health"), Some(("multi", 7)));
    assert_eq!(table.get("x.example.org", "/api/v"), Some(("multi", 4)));
    assert_eq!(table.name("a.example.com", "/healthz"), Some("other"));
    assert_eq!(table.name("b.example.com", "/api"), Some("other"));
}

#[test]
fn path_tricks_route_by_the_normalized_path() {
    let table = Table::new(vec![
        with_paths("public", &["/v1"]),
        with_paths("admin", &["/admin"]),
        with_paths("files", &["/files/{name}"]),
    ]);
    let route = |raw: &str| -> Result<Option<String>, PathError> {
        let path = normalize_path(raw)?;
        Ok(table.name("h", &path).map(str::to_string))
    };
    let admin = Ok(Some("admin".to_string()));
    assert_eq!(route("/v1/../admin"), admin);
    assert_eq!(route("/v1/%2e%2e/admin"), admin);
    assert_eq!(route("/v1/%2E%2E/admin/x"), admin);
    assert_eq!(route("//admin"), admin);
    assert_eq!(route("/./admin"), admin);
    assert_eq!(route("/%61dmin"), admin);
    // An encoded slash is data in one segment.
    assert_eq!(route("/files/a%2Fb"), Ok(Some("files".into())));
    assert_eq!(route("/v1%2Fadmin"), Ok(None));
    assert_eq!(
        route("/v1/..%2Fadmin"),
        Err(PathError::AmbiguousEncodedSlash)
    );
    assert_eq!(route("/v1/..;/admin"), Err(PathError::DotSegmentParameters));
    assert_eq!(route("/v1\\..\\admin"), Err(PathError::Backslash));
    assert_eq!(route("/../admin"), Err(PathError::AboveRoot));
    // `;` is ordinary: not the `admin` segment.
    assert_eq!(route("/admin;x"), Ok(None));
}

#[test]
fn strip_prefix_cases() {
    let cases = [
        ("/v1/orders/42", 10, "/42"),
        ("/v1/orders/", 10, "/"),
        ("/v1/orders", 10, "/"),
        ("/anything", 0, "/anything"),
        ("/", 0, "/"),
        ("/", 1, "/"),
        ("/users/42/orders", 9, "/orders"),
        ("/a/b", 99, "/"),
        ("/ab", 2, "/b"),
    ];
    for (path, len, expected) in cases {
        assert_eq!(strip_prefix(path, len), expected, "{path} {len}");
    }
    assert!(matches!(strip_prefix("/v1/x", 3), Cow::Borrowed("/x")));
}

#[test]
fn strip_prefix_with_matched_len() {
    let table = Table::new(vec![
        with_paths("orders", &["/v1/orders"]),
        with_paths("exact", &["=/v1/exact"]),
        with_paths("user", &["/users/{id}"]),
        with_paths("slash", &["/docs/"]),
    ]);
    for (path, upstream) in [
        ("/v1/orders/42", "/42"),
        ("/v1/orders", "/"),
        ("/v1/exact", "/"),
        ("/users/42/orders/7", "/orders/7"),
        ("/docs/a/b", "/a/b"),
        ("/docs/", "/"),
    ] {
        let found = table
            .router
            .find("h", path, &Method::GET, &HeaderMap::new())
            .unwrap_or_else(|| panic!("{path} routes"));
        assert_eq!(strip_prefix(path, found.matched_len), upstream, "{path}");
    }
}

#[test]
fn unnormalized_or_odd_input_never_panics() {
    let table = Table::new(vec![
        with_paths("a", &["/a/{x}"]),
        with_hosts("w", &["*.example.com"], &["=/"]),
    ]);
    for path in ["", "a", "*", "/a//", "//", "/a/%2F", "/\u{e9}/\u{e9}"] {
        for host in [
            "",
            ".",
            "..",
            "*.example.com",
            "[",
            "[::1",
            "a..example.com",
        ] {
            let _ = table.get(host, path);
        }
    }
    assert_eq!(table.get("h", ""), None);
    assert_eq!(table.get("h", "a/b"), None);
}

#[test]
fn build_rejects_what_validation_would() {
    for bad in [
        with_paths("p", &["no-slash"]),
        with_paths("p", &["/a//b"]),
        with_hosts("h", &["bad host"], &[]),
        with_methods(route("m"), &["GE T"]),
        with_header(route("hdr"), "bad header", None),
    ] {
        assert!(Router::build(&[bad]).is_err());
    }
    let empty = Router::build(&[]).expect("empty table builds");
    assert!(empty
        .find("h", "/", &Method::GET, &HeaderMap::new())
        .is_none());
}

#[test]
fn router_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
}

/// Benchmark-like: 10,000 routes across hosts build, and lookups find the
/// right one (the trie walk touches only the request's own branch).
#[test]
fn ten_thousand_routes() {
    let mut routes = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let r = match i % 4 {
            0 => with_paths(&format!("r{i}"), &[&format!("/svc{i}/v1")]),
            1 => with_paths(&format!("r{i}"), &[&format!("=/svc{i}/items/{{id}}")]),
            2 => with_hosts(
                &format!("r{i}"),
                &[&format!("h{i}.example.com")],
                &[&format!("/svc{i}")],
            ),
            _ => with_methods(
                with_hosts(
                    &format!("r{i}"),
                    &[&format!("*.t{i}.example.com")],
                    &[&format!("/svc{i}/{{x}}")],
                ),
                &["POST"],
            ),
        };
        routes.push(r);
    }
    routes.push(with_paths("fallback", &["/"]));
    let started = std::time::Instant::now();
    let table = Table::new(routes);
    let built = started.elapsed();

    let started = std::time::Instant::now();
    for i in (0..10_000).step_by(97) {
        let name = format!("r{i}");
        let (host, path, method) = match i % 4 {
            0 => ("x".to_string(), format!("/svc{i}/v1/z"), Method::GET),
            1 => ("x".to_string(), format!("/svc{i}/items/9"), Method::GET),
            2 => (
                format!("h{i}.example.com"),
                format!("/svc{i}/z"),
                Method::GET,
            ),
            _ => (
                format!("a.t{i}.example.com"),
                format!("/svc{i}/q/r"),
                Method::POST,
            ),
        };
        let found = table.find(&host, &path, &method, &HeaderMap::new());
        assert_eq!(found.map(|f| f.0), Some(name.as_str()), "{host}{path}");
    }
    assert_eq!(table.name("x", "/svc0/v2"), Some("fallback"));
    assert_eq!(table.name("h2.example.com", "/svc3"), Some("fallback"));
    let looked_up = started.elapsed();
    // Generous bounds: this guards against accidental quadratic behaviour,
    // not against a slow CI machine.
    assert!(built.as_secs() < 20, "build took {built:?}");
    assert!(looked_up.as_secs() < 5, "lookups took {looked_up:?}");
}
