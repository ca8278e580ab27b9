#!/usr/bin/env python3
"""Instructions per request by stage, from a callgrind file of bench/callgrind.sh.

    KEEP=/tmp/plain.cg bench/callgrind.sh plain      (a build with symbols, see below)
    bench/callgrind-stages.py /tmp/plain.cg [REQUESTS]

Prints the inclusive cost per request (total / REQUESTS, default 3000) of the
functions that mark each stage of a proxied request, as a Markdown table for
docs/performance.md. Stages nest (the handler includes the routing), so rows
do not add up; the "self" rows (memcpy, allocator, hashing) cut across all of
them. Build with symbols for names to resolve:

    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none \\
        cargo build --release --bins

Needs callgrind_annotate (valgrind).
"""
import subprocess
import sys

# (label, substring of the function name, inclusive?)
STAGES = [
    ("client connection task (hyper server dispatcher, all of it)",
     "<hyper_util::server::conn::auto::UpgradeableConnection<I,S,E> as core::future::future::Future>::poll", True),
    ("  request head parse (httparse into a HeaderMap)",
     "<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse", True),
    ("  observe (span, exchange, metrics, access log) + handler",
     "tollgate_proxy::server::connection::{{closure}}::{{closure}}", True),
    ("    observe::serve (handler inlined: bounds, request id, route, headers, plugins)",
     "tollgate_proxy::observe::serve::{{closure}}", True),
    ("      forward_route (plugins, body, target, upstream call)",
     "tollgate_proxy::handler::forward_route::{{closure}}", True),
    ("      path normalization", "tollgate_proxy::router::normalize::normalize_path", True),
    ("      path policy", "tollgate_proxy::router::path_policy::PathPolicy::apply", True),
    ("      route lookup", "tollgate_proxy::router::Router::find", True),
    ("      X-Request-Id kept or generated", "tollgate_plugin_api::request_id::ensure_request_id", True),
    ("      hop-by-hop removal (request and response)", "tollgate_proxy::forward::remove_hop_by_hop", True),
    ("      X-Forwarded-*", "tollgate_proxy::forward::set_forwarded", True),
    ("      untrusted-header policy", "tollgate_proxy::untrusted::UntrustedHeaders::apply", True),
    ("      plugin chain, request phases", "tollgate_plugin_api::chain::PluginChain::run_request", True),
    ("      response finish (X-Request-Id, response/log phases)", "tollgate_proxy::handler::finish", True),
    ("      hand-off to the upstream connection (hyper client send)",
     "hyper::client::conn::http1::SendRequest<B>::try_send_request", True),
    ("  response head encode (hyper server)",
     "<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::encode", True),
    ("  request recorded (metrics, access log)", "tollgate_proxy::observe::ObservedBody::finish", True),
    ("upstream connection task (hyper client dispatcher, all of it; --upstream-http1 hyper)",
     "tollgate_proxy::pool::TargetConnections::http1::{{closure}}::{{closure}}", True),
    ("  request head encode (hyper client)",
     "<hyper::proto::h1::role::Client as hyper::proto::h1::Http1Transaction>::encode", True),
    ("  response head parse (httparse into a HeaderMap)",
     "<hyper::proto::h1::role::Client as hyper::proto::h1::Http1Transaction>::parse", True),
    ("upstream exchange on our HTTP/1.1 client (request written, response head read)",
     "tollgate_proxy::http1_client::Connection::send::{{closure}}", True),
    ("  request head encode (ours, one buffer)", "tollgate_proxy::http1_client::encode_request", True),
    ("  response head parse (ours: httparse into a pre-sized HeaderMap)",
     "tollgate_proxy::http1_client::parse_head", True),
    ("idle connection checkout (ours, with the closed-by-upstream check)",
     "tollgate_proxy::pool::TargetConnections::checkout_native", True),
    ("response body read (ours)",
     "<tollgate_proxy::http1_client::ResponseBody as http_body::Body>::poll_frame", True),
    ("runtime: parking, epoll, timers", "tokio::runtime::scheduler::current_thread::Context::park", True),
    ("memcpy (all callers)", "__memcpy_avx_unaligned_erms", True),
    ("allocator (mimalloc, self)", "mi_", False),
    ("HeaderMap hashing (self)", "http::header::map::hash_elem_using", False),
    ("httparse (self)", "httparse::parse_headers_iter_uninit", False),
]


def costs(path, inclusive):
    """(total, {function: cost}). With line tables a function can show up
    in several rows (per source file, absolute and relative); the largest
    row is taken as its cost."""
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no",
         f"--inclusive={'yes' if inclusive else 'no'}", path],
        check=True, capture_output=True, text=True).stdout
    by_function = {}
    total = None
    for line in out.splitlines():
        parts = line.split()
        if not parts or not parts[0][0].isdigit() or "=>" in line:
            continue
        try:
            value = int(parts[0].replace(",", ""))
        except ValueError:
            continue
        if "PROGRAM TOTALS" in line:
            total = value
            continue
        # "123 (1.0%)  file:function [binary]"
        located = line.split(")", 1)[-1].strip()
        name = located.split(":", 1)[1] if ":" in located else located
        name = name.rsplit(" [", 1)[0].strip()
        by_function[name] = max(by_function.get(name, 0), value)
    return total, by_function


def main():
    path = sys.argv[1]
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    total, inclusive = costs(path, True)
    _, exclusive = costs(path, False)
    print("| stage | instructions / request |\n|---|---:|")
    print(f"| **total (whole process)** | **{total // requests:,}** |")
    for label, pattern, incl in STAGES:
        rows = inclusive if incl else exclusive
        if pattern.endswith("_"):
            # A family (the allocator's `mi_*` functions), self costs.
            value = sum(v for name, v in rows.items()
                        if name.startswith(pattern) or name.startswith("_" + pattern))
        else:
            value = rows.get(pattern, 0)
        cell = f"{value // requests:,}" if value else "(inlined)"
        print(f"| {label.replace('  ', '&nbsp;&nbsp;')} | {cell} |")


if __name__ == "__main__":
    main()
