"""Unary gRPC calls per second against TARGET (bench/grpc.sh runs it).

Usage: grpc_client.py TARGET SECONDS THREADS. Each thread makes blocking
unary calls (/test.Echo/Unary of integration-tests/python/grpc_server.py) on
one shared channel for SECONDS after a warm-up; prints one JSON line: calls,
seconds, calls_per_s, errors, and the p50/p99 latency in ms.
"""
import json
import sys
import threading
import time

import grpc


def main(target, seconds, threads):
    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/test.Echo/Unary")
    for _ in range(200):
        call(b"warm-up", timeout=10)
    latencies = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker():
        mine = []
        failed = 0
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                call(b"payload-of-a-bench-call", timeout=10)
                mine.append(time.monotonic() - started)
            except grpc.RpcError:
                failed += 1
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    began = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    pick = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None
    print(json.dumps({"calls": len(latencies), "seconds": round(elapsed, 3),
                      "calls_per_s": round(len(latencies) / elapsed, 1), "errors": errors[0],
                      "p50_ms": pick(0.5), "p99_ms": pick(0.99)}), flush=True)
    channel.close()


main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
