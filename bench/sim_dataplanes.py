#!/usr/bin/env python3
"""Simulated Tollgate data planes: N concurrent ConfigStream subscriptions on one tollgate-cp.

(Copied from ../shared/bench and extended for the delta protocol of issue 25: the simulated data
planes set Hello.accepts_deltas unless --legacy is given, join SnapshotChunks, take Deltas, and ACK
each version once it is whole; bytes per data plane are the sum of every message of that version.)

Each simulated data plane speaks tollgate.stream.v1.ConfigStream/Subscribe the way tollgate-dp does
(data-plane/src/snapshot/subscribe.rs): its own HTTP/2 connection, a Hello with a distinct node id (and
the version it holds, after a reconnect), then for every Snapshot an Ack carrying the snapshot's
version. It does not compile the snapshot: it reads the version out of the raw bytes (a few varints)
and ACKs at once, so the figures are the control plane's cost, not a data plane's compile time. It
records, per data plane and per version, the monotonic time the snapshot arrived and its size; it
reconnects with the data plane's backoff (100 ms doubling, full jitter, cap 5 s) and counts every
dropped stream.

Commands (all loopback, every wait bounded, every process it starts stopped by PID at the end):

  gen-config  write a config file (N routes over M services; route-00000 is the probe route)
  fleet       for each N: fresh tollgate-cp, apply a config, connect N simulated data planes,
              time the initial snapshot, then K one-route changes (fan-out), CP RSS/CPU from /proc,
              `tollgatectl dataplanes` wall time and completeness
  scale       100,000 routes: apply, N simulated data planes and one real tollgate-dp get it, then
              one-route changes: apply-to-serve on the real one, its CPU and memory, the fleet's fan-out
  real-dp     one real tollgate-dp: RSS at 10 and at 10,000 routes, apply-to-serve of a one-route
              change (polling /status and the changed route)
  tables      markdown tables from `fleet --out` JSON files

Needs grpcio and grpcio-tools (`pip install grpcio grpcio-tools`); the stubs are generated from the
repository's proto/ into a temporary directory at start.

Examples (from the Tollgate repository's root):

  python3 ../shared/bench/sim_dataplanes.py fleet --repo . --n 10,100,500,1000 --changes 5
  python3 ../shared/bench/sim_dataplanes.py fleet --repo . --n 100,500 --routes 10000 --services 2000
  python3 ../shared/bench/sim_dataplanes.py real-dp --repo .
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

METHOD = "/tollgate.stream.v1.ConfigStream/Subscribe"
MAX_MESSAGE = 64 * 1024 * 1024

pb_stream = None  # tollgate_stream_pb2, set by load_stubs()
pb_config = None  # tollgate_config_pb2
pb_admin = None  # tollgate_admin_pb2
grpc = None


def load_stubs(proto_dir, out_dir):
    """Generates the Python stubs of proto_dir's files into out_dir and imports them."""
    global pb_stream, pb_config, pb_admin, grpc
    from grpc_tools import protoc
    import grpc as _grpc
    import grpc.aio  # noqa: F401

    files = ["tollgate_config.proto", "tollgate_stream.proto", "tollgate_admin.proto"]
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + files)
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc}) on {proto_dir}")
    sys.path.insert(0, out_dir)
    import tollgate_config_pb2
    import tollgate_stream_pb2
    import tollgate_stream_pb2_grpc  # noqa: F401  (generated for completeness; the raw method is used)
    import tollgate_admin_pb2

    pb_stream, pb_config, pb_admin, grpc = tollgate_stream_pb2, tollgate_config_pb2, tollgate_admin_pb2, _grpc


# ---------------------------------------------------------------- protobuf wire, just enough

def _varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _len_field(buf, start, end, wanted):
    """(begin, end) of the first length-delimited field number `wanted` in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if field == wanted:
                return pos, pos + length
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    return None


def snapshot_version(raw):
    """ConfigVersion bytes of ControlPlaneMessage{snapshot{version}} without decoding the config."""
    snap = _len_field(raw, 0, len(raw), 1)
    if snap is None:
        return None
    ver = _len_field(raw, snap[0], snap[1], 1)
    if ver is None:
        return None
    return bytes(raw[ver[0]:ver[1]])


def _varint_field(buf, start, end, wanted):
    """Value of the first varint field number `wanted` in buf[start:end] (0 when absent)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            if field == wanted:
                return value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    return 0


def classify(raw):
    """What a ControlPlaneMessage carries, without decoding any config:
    ("snapshot", version bytes, encoded Snapshot), ("delta", target version bytes, None),
    ("chunk", version bytes, (offset, total, data)), or (None, None, None)."""
    snap = _len_field(raw, 0, len(raw), 1)
    if snap is not None:
        ver = _len_field(raw, snap[0], snap[1], 1)
        return "snapshot", bytes(raw[ver[0]:ver[1]]) if ver else b"", bytes(raw[snap[0]:snap[1]])
    delta = _len_field(raw, 0, len(raw), 20)
    if delta is not None:
        ver = _len_field(raw, delta[0], delta[1], 2)
        return "delta", bytes(raw[ver[0]:ver[1]]) if ver else b"", None
    chunk = _len_field(raw, 0, len(raw), 21)
    if chunk is not None:
        ver = _len_field(raw, chunk[0], chunk[1], 1)
        offset = _varint_field(raw, chunk[0], chunk[1], 2)
        total = _varint_field(raw, chunk[0], chunk[1], 3)
        data = _len_field(raw, chunk[0], chunk[1], 4)
        data = bytes(raw[data[0]:data[1]]) if data else b""
        return "chunk", bytes(raw[ver[0]:ver[1]]) if ver else b"", (offset, total, data)
    return None, None, None


# ---------------------------------------------------------------- /proc

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_mem(pid):
    """VmRSS, VmHWM, RssAnon in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "Threads"):
                out[key] = int(rest.split()[0])
    return out


def proc_cpu_ticks(pid):
    """utime + stime of the whole process (dead threads included), in seconds (10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_thread_ns(pid):
    """{tid: ns on CPU} from /proc/PID/task/*/schedstat (nanosecond resolution)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def cpu_delta_s(before, after):
    """CPU seconds between two proc_thread_ns() readings (threads that exited in between are lost)."""
    total = 0
    for tid, ns in after.items():
        total += ns - before.get(tid, 0)
    return total / 1e9


class RssSampler:
    """Samples a process's VmRSS every `period` seconds on a thread; keeps the peak."""

    def __init__(self, pid, period=0.01):
        self.pid, self.period, self.peak, self._stop = pid, period, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, proc_mem(self.pid)["VmRSS"])
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summary_ms(values):
    if not values:
        return {}
    return {
        "p50_ms": round(pct(values, 50) * 1000, 2),
        "p99_ms": round(pct(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "min_ms": round(min(values) * 1000, 2),
    }


# ---------------------------------------------------------------- config files

def gen_config(routes, services, upstream, change=0, consumers=0):
    """A gateway config as YAML text. route-00000 (any host, path /probe/<change>) is the one a
    one-route change touches; the other routes spread over 100 hosts, one path each, every 10th with a
    local rate limit, every 20th with a request transformer."""
    out = ["services:"]
    for s in range(services):
        out += [
            f"  - name: svc-{s:05d}",
            "    upstream:",
            "      targets:",
            f'        - {{ address: "{upstream}" }}',
            "      load_balancing: round_robin",
            "    timeouts: { connect_ms: 1000, request_ms: 15000 }",
        ]
    out.append("routes:")
    for r in range(routes):
        svc = r % services
        out += [f"  - name: route-{r:05d}", f"    service: svc-{svc:05d}"]
        if r == 0:
            out.append(f'    paths: ["/probe/{change}"]')
            continue
        out += [
            f'    hosts: ["h{r % 100}.example.com"]',
            f'    paths: ["/v1/s{svc}/r{r}"]',
            "    methods: [GET, POST]",
        ]
        if r % 7 == 0:
            out.append("    strip_path: true")
        if r % 10 == 1:
            out += [
                "    plugins:",
                "      - name: rate-limit",
                "        config: { limit: 100, window: 1m, scope: ip }",
            ]
        elif r % 20 == 2:
            out += [
                "    plugins:",
                "      - name: request-transformer",
                "        config: { add: { headers: { x-route: r" + str(r) + " } } }",
            ]
    if consumers:
        out.append("consumers:")
        for c in range(consumers):
            out += [f"  - name: consumer-{c:05d}", "    credentials:", f'      - api_key: "key-{c:05d}-0123456789abcdef"']
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- processes

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc, grace=15.0):
    """SIGTERM the process we started (by PID), SIGKILL after `grace`; returns its exit code."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=5)


class ControlPlane:
    def __init__(self, bin_dir, workdir, name="cp", cpus=None, env=None):
        self.bin_dir, self.workdir, self.cpus, self.env = bin_dir, workdir, cpus, env
        self.port, self.metrics_port = free_port(), free_port()
        self.data_dir = os.path.join(workdir, f"{name}-data")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc = None

    @property
    def server(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                os.path.join(self.bin_dir, "tollgate-cp"),
                "--admin-listen", f"127.0.0.1:{self.port}",
                "--data-dir", self.data_dir,
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            ],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
            env={**os.environ, **(self.env or {})},
        )
        if not wait_port(self.port):
            self.stop()
            raise SystemExit(f"tollgate-cp did not listen on {self.port}; see {self.log_path}")
        return self

    def stop(self):
        rc = stop_process(self.proc)
        if getattr(self, "log", None):
            self.log.close()
        return rc

    @property
    def pid(self):
        return self.proc.pid

    def metrics(self):
        """The CP's own counters (per-node series left out); scrape wall time and size under _scrape."""
        t = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {"_scrape_ms": round((time.monotonic() - t) * 1000, 1), "_scrape_bytes": len(text)}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            if name.startswith("tollgate_cp_") and "_bucket" not in name and "node_id=" not in name:
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out


def log_summary(path):
    """Line counts of a tollgate log (ANSI colours stripped): WARN and ERROR lines, with a few samples."""
    import re
    with open(path, errors="replace") as f:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in f]
    bad = [line.strip() for line in lines if re.search(r"^\S+\s+(WARN|ERROR)\s", line)]
    return {"lines": len(lines), "warn": sum(1 for b in bad if " WARN " in b),
            "error": sum(1 for b in bad if " ERROR " in b), "samples": bad[:5],
            "connected": sum("data plane connected" in line for line in lines),
            "disconnected": sum("data plane disconnected" in line for line in lines)}


def ctl(bin_dir, server, *args, timeout=300):
    """Runs tollgatectl; returns (wall seconds, rc, stdout, stderr)."""
    t = time.monotonic()
    p = subprocess.run([os.path.join(bin_dir, "tollgatectl"), "--server", server, *args],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return time.monotonic() - t, p.returncode, p.stdout, p.stderr


async def actl(bin_dir, server, *args, timeout=300):
    """tollgatectl from the event loop (the simulated data planes keep running); the time it returned."""
    t = time.monotonic()
    p = await asyncio.create_subprocess_exec(
        os.path.join(bin_dir, "tollgatectl"), "--server", server, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    t_end = time.monotonic()
    return t_end - t, t_end, p.returncode, out.decode(), err.decode()


# ---------------------------------------------------------------- the simulated fleet

class SimDP:
    def __init__(self, fleet, index):
        self.fleet, self.index = fleet, index
        self.node_id = f"{fleet.prefix}-{index:05d}"
        self.arrivals = {}  # revision -> monotonic time of first arrival
        self.sizes = {}  # revision -> bytes of every ControlPlaneMessage of that version
        self.kinds = {}  # revision -> "snapshot" | "delta" | "chunks"
        self.latest = 0
        self.held = None  # ConfigVersion last acked (sent in the Hello after a reconnect)
        self.sessions = 0
        self.errors = []
        self.started = None

    async def run(self):
        backoff = 0.1
        self.started = time.monotonic()
        while not self.fleet.stopping:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.fleet.port}", options=self.fleet.channel_options)
            try:
                call = channel.stream_stream(METHOD)()  # raw bytes both ways
                joined = []  # the chunks of the snapshot being received
                self.fleet.calls[self.index] = call
                hello = pb_stream.DataPlaneMessage(hello=pb_stream.Hello(
                    node_id=self.node_id, hostname="sim-host", build_version="sim-0",
                    held_version=self.held, accepts_deltas=not self.fleet.legacy))
                await call.write(hello.SerializeToString())
                self.sessions += 1
                while True:
                    raw = await call.read()
                    if raw is grpc.aio.EOF:
                        if not self.fleet.stopping:
                            self.errors.append((time.monotonic(), "EOF"))
                        break
                    now = time.monotonic()
                    kind, vbytes, extra = classify(raw)
                    if kind is None:
                        continue
                    version, ack = self.fleet.ack_for(vbytes)
                    rev = version.revision
                    self.sizes[rev] = self.sizes.get(rev, 0) + len(raw)
                    if kind == "chunk":
                        offset, total, data = extra
                        if offset == 0:
                            joined = []
                        joined.append(data)
                        if offset + len(data) < total:
                            continue  # the version is whole with its last chunk
                        kind, extra = "chunks", b"".join(joined)
                    self.kinds[rev] = kind
                    if rev not in self.arrivals:
                        self.arrivals[rev] = now
                    if self.index == 0 and rev not in self.fleet.first_raw and kind != "delta":
                        self.fleet.first_raw[rev] = extra
                    if self.fleet.apply_delay:
                        await asyncio.sleep(self.fleet.apply_delay)
                    await call.write(ack)
                    self.held = version
                    self.fleet.arrived(self, rev)
                    backoff = 0.1
            except asyncio.CancelledError:
                if not self.fleet.stopping:
                    raise
            except Exception as e:  # noqa: BLE001 - every failure is a dropped stream to count
                if not self.fleet.stopping:
                    code = e.code().name if hasattr(e, "code") else type(e).__name__
                    detail = e.details() if hasattr(e, "details") else str(e)
                    self.errors.append((time.monotonic(), f"{code}: {detail}"))
            finally:
                self.fleet.calls.pop(self.index, None)
                await channel.close(grace=None)
            if self.fleet.stopping:
                break
            await asyncio.sleep(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, 5.0)


class Fleet:
    def __init__(self, port, n, prefix="sim-dp", apply_delay=0.0, legacy=False):
        self.port, self.n, self.prefix, self.apply_delay = port, n, prefix, apply_delay
        self.legacy = legacy
        self.stopping = False
        self.dps = [SimDP(self, i) for i in range(n)]
        self.calls = {}
        self.tasks = []
        self.first_raw = {}
        self._waits = {}  # target revision -> [count, event]
        self._acks = {}
        self.channel_options = [
            # One TCP connection per simulated data plane, like a real fleet.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # The real data plane's HTTP/2 keepalive: 10 s interval, 10 s timeout, also while idle.
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def ack_for(self, vbytes):
        """(ConfigVersion, serialized Ack) for a version's bytes; built once per version."""
        hit = self._acks.get(vbytes)
        if hit is None:
            version = pb_config.ConfigVersion.FromString(vbytes)
            ack = pb_stream.DataPlaneMessage(ack=pb_stream.Ack(version=version)).SerializeToString()
            hit = self._acks[vbytes] = (version, ack)
        return hit

    def arrived(self, dp, rev):
        prev = dp.latest
        if rev > prev:
            dp.latest = rev
            for target, w in self._waits.items():
                if prev < target <= rev:
                    w[0] += 1
                    if w[0] >= self.n:
                        w[1].set()

    async def wait_all(self, target, timeout):
        """Until every data plane holds a revision >= target; False on timeout."""
        have = sum(1 for d in self.dps if d.latest >= target)
        if have >= self.n:
            return True
        w = self._waits.setdefault(target, [have, asyncio.Event()])
        try:
            await asyncio.wait_for(w[1].wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waits.pop(target, None)

    def reached(self, target):
        """Per data plane: first time it held a revision >= target (None if never)."""
        out = []
        for d in self.dps:
            times = [t for r, t in d.arrivals.items() if r >= target]
            out.append(min(times) if times else None)
        return out

    def start(self):
        self.tasks = [asyncio.ensure_future(d.run()) for d in self.dps]

    async def start_in_batches(self, batch, timeout):
        """Connects `batch` data planes at a time, each batch once the one before holds a version
        (the initial full snapshots of 1,000 at once can outrun this one Python process)."""
        for first in range(0, self.n, batch):
            group = self.dps[first:first + batch]
            self.tasks += [asyncio.ensure_future(d.run()) for d in group]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(d.latest for d in group):
                await asyncio.sleep(0.05)

    async def stop(self):
        self.stopping = True
        for call in list(self.calls.values()):
            call.cancel()
        done, pending = await asyncio.wait(self.tasks, timeout=30)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)

    def drops(self):
        return {
            "sessions_total": sum(d.sessions for d in self.dps),
            "data_planes_reconnected": sum(1 for d in self.dps if d.sessions > 1),
            "errors_total": sum(len(d.errors) for d in self.dps),
            "error_samples": sorted({e for d in self.dps for _, e in d.errors})[:5],
        }


# ---------------------------------------------------------------- fleet measurement

async def measure_fleet(args, bin_dir, workdir, n, files, log):
    cp_env = dict(kv.split("=", 1) for kv in args.cp_env)
    cp = ControlPlane(bin_dir, workdir, name=f"cp-n{n}-r{args.routes}", cpus=args.pin_cp_set, env=cp_env).start()
    result = {"n": n, "routes": args.routes, "services": args.services,
              "cp_cpus": sorted(os.sched_getaffinity(cp.pid)), "sim_cpus": sorted(os.sched_getaffinity(0)),
              "cp_env": cp_env}
    fleet = None
    try:
        wall, rc, out, err = ctl(bin_dir, cp.server, "apply", "-f", files[0])
        if rc != 0:
            raise SystemExit(f"apply failed: {err}")
        result["initial_apply_s"] = round(wall, 3)
        await asyncio.sleep(1.0)
        result["cp_before"] = {**proc_mem(cp.pid), "cpu_s": proc_cpu_ticks(cp.pid)}

        # (a) connect N and time the initial snapshot.
        fleet = Fleet(cp.port, n, legacy=args.legacy)
        cpu0 = proc_thread_ns(cp.pid)
        sim0 = time.process_time()
        t0 = time.monotonic()
        with RssSampler(cp.pid) as rss:
            if args.connect_batch:
                await fleet.start_in_batches(args.connect_batch, args.wait_timeout)
            else:
                fleet.start()
            ok = await fleet.wait_all(1, timeout=args.wait_timeout)
        t_all = time.monotonic()
        firsts = [min(d.arrivals.values()) - t0 for d in fleet.dps if d.arrivals]
        result["initial"] = {
            "all_received": ok,
            "received": len(firsts),
            "all_s": round(t_all - t0, 3),
            **summary_ms(firsts),
            "cp_cpu_s": round(cpu_delta_s(cpu0, proc_thread_ns(cp.pid)), 3),
            "cp_peak_rss_kib": rss.peak,
            "sim_cpu_s": round(time.process_time() - sim0, 3),
        }
        sizes = {d.sizes.get(min(d.arrivals), None) for d in fleet.dps if d.arrivals}
        result["snapshot_bytes"] = sorted(s for s in sizes if s)
        first_rev = max(fleet.first_raw) if fleet.first_raw else None
        if first_rev is not None:
            snap = pb_stream.Snapshot.FromString(fleet.first_raw[first_rev])
            cfg = json.loads(snap.config.json or "{}")
            result["snapshot_content"] = {"revision": first_rev, "encoded_bytes": len(fleet.first_raw[first_rev]),
                                          "routes": len(cfg.get("routes", [])),
                                          "services": len(cfg.get("services", [])),
                                          "consumers": len(cfg.get("consumers", []))}
        log(f"  N={n}: initial snapshot to all in {result['initial']['all_s']} s "
            f"(ok={ok}, {len(firsts)}/{n}), {result['snapshot_bytes']} bytes")

        await asyncio.sleep(2.0)
        # (c) RSS with N streams, idle; and idle CPU (keepalives) over a window.
        result["cp_connected"] = {**proc_mem(cp.pid), "cpu_s": proc_cpu_ticks(cp.pid)}
        idle0, idle_t = proc_thread_ns(cp.pid), time.monotonic()
        await asyncio.sleep(args.idle_window)
        result["cp_idle_cpu_pct"] = round(
            100 * cpu_delta_s(idle0, proc_thread_ns(cp.pid)) / (time.monotonic() - idle_t), 2)
        rss_before = result["cp_before"]["VmRSS"]
        result["cp_rss_per_dp_kib"] = round((result["cp_connected"]["VmRSS"] - rss_before) / n, 1)

        # (b) fan-out of one-route changes.
        current = max(d.latest for d in fleet.dps)
        fanouts = []
        for k in range(1, args.changes + 1):
            await asyncio.sleep(args.pause)
            target = current + 1
            cpu_a = proc_thread_ns(cp.pid)
            m_a = cp.metrics()
            sim_a = time.process_time()
            with RssSampler(cp.pid) as rss:
                apply_wall, t_ret, rc, out, err = await actl(bin_dir, cp.server, "apply", "-f", files[k])
                if rc != 0:
                    raise SystemExit(f"apply {k} failed: {err}")
                cpu_ret = proc_thread_ns(cp.pid)
                ok = await fleet.wait_all(target, timeout=args.wait_timeout)
                t_done = time.monotonic()
                await asyncio.sleep(0.3)  # let the ACKs land
            cpu_b = proc_thread_ns(cp.pid)
            m_b = cp.metrics()
            lat = [t - t_ret for t in fleet.reached(target) if t is not None]
            fan = {
                "change": k, "revision": target, "all_received": ok, "received": len(lat),
                "apply_wall_ms": round(apply_wall * 1000, 1),
                "last_ms": round((t_done - t_ret) * 1000, 1),
                **summary_ms(lat),
                "cp_cpu_apply_s": round(cpu_delta_s(cpu_a, cpu_ret), 4),
                "cp_cpu_fanout_s": round(cpu_delta_s(cpu_ret, cpu_b), 4),
                "cp_peak_rss_kib": rss.peak,
                "sim_cpu_s": round(time.process_time() - sim_a, 3),
                "snapshot_builds": m_b.get("tollgate_cp_snapshot_builds_total", 0) - m_a.get("tollgate_cp_snapshot_builds_total", 0),
                "snapshot_pushes": m_b.get("tollgate_cp_snapshot_pushes_total", 0) - m_a.get("tollgate_cp_snapshot_pushes_total", 0),
                "bytes_per_dp": sorted({d.sizes.get(target) for d in fleet.dps if d.sizes.get(target)}),
                "kinds": sorted({d.kinds.get(target) for d in fleet.dps if d.kinds.get(target)}),
                "bytes_sent_delta": m_b.get('tollgate_cp_config_bytes_sent_total{kind="delta"}', 0)
                - m_a.get('tollgate_cp_config_bytes_sent_total{kind="delta"}', 0),
                "bytes_sent_full": m_b.get('tollgate_cp_config_bytes_sent_total{kind="full"}', 0)
                + m_b.get('tollgate_cp_config_bytes_sent_total{kind="legacy_full"}', 0)
                - m_a.get('tollgate_cp_config_bytes_sent_total{kind="full"}', 0)
                - m_a.get('tollgate_cp_config_bytes_sent_total{kind="legacy_full"}', 0),
                "cp_last_ack_s_metric": m_b.get("tollgate_cp_config_last_ack_seconds"),
                "snapshot_build_s_total": round(
                    m_b.get("tollgate_cp_snapshot_build_duration_seconds_sum", 0)
                    - m_a.get("tollgate_cp_snapshot_build_duration_seconds_sum", 0), 4),
                "cp_vmhwm_kib": proc_mem(cp.pid)["VmHWM"],
                "cp_rss_after_kib": proc_mem(cp.pid)["VmRSS"],
            }
            fanouts.append(fan)
            current = target
            log(f"  N={n} change {k}: last DP at {fan.get('max_ms')} ms after apply returned "
                f"(p50 {fan.get('p50_ms')}, p99 {fan.get('p99_ms')}), CP CPU {fan['cp_cpu_fanout_s']} s, "
                f"apply {fan['apply_wall_ms']} ms, builds {fan['snapshot_builds']}")
        result["fanouts"] = fanouts
        result["cp_after_fanouts"] = {**proc_mem(cp.pid), "cpu_s": proc_cpu_ticks(cp.pid)}

        # (d) tollgatectl dataplanes.
        dps = []
        expected = {d.node_id for d in fleet.dps}
        for _ in range(args.dataplanes_repeats):
            wall, _, rc, out, err = await actl(bin_dir, cp.server, "dataplanes", "-o", "json")
            entry = {"wall_ms": round(wall * 1000, 1), "rc": rc}
            if rc == 0:
                planes = json.loads(out)
                if isinstance(planes, dict):
                    planes = planes.get("data_planes", planes.get("dataplanes", []))
                ids = {p.get("node_id") for p in planes}
                entry.update({
                    "listed": len(planes),
                    "connected": sum(1 for p in planes if p.get("connected")),
                    "all_n_listed": expected <= ids,
                    "at_latest": sum(1 for p in planes if (p.get("applied_version") or {}).get("revision") == current),
                    "distinct_addresses": len({p.get("address") for p in planes}),
                    "output_bytes": len(out),
                })
            else:
                entry["error"] = err.strip()[:300]
            dps.append(entry)
        table_wall, _, rc, out, _ = await actl(bin_dir, cp.server, "dataplanes")
        result["dataplanes"] = dps
        result["dataplanes_table"] = {"wall_ms": round(table_wall * 1000, 1), "rc": rc,
                                      "lines": len(out.splitlines())}
        log(f"  N={n}: dataplanes {[d['wall_ms'] for d in dps]} ms, listed {dps[-1].get('listed')}, "
            f"connected {dps[-1].get('connected')}, at latest {dps[-1].get('at_latest')}")
        result["cp_metrics"] = cp.metrics()
    finally:
        if fleet is not None:
            await fleet.stop()
            result["drops"] = fleet.drops()
            if cp.proc.poll() is None:
                await asyncio.sleep(2.0)  # is the per-stream memory given back once the streams end?
                result["cp_after_disconnect"] = proc_mem(cp.pid)
                if args.reconnect_check:
                    # Same N again under new node ids: is the memory kept above reused, or does it grow?
                    again = Fleet(cp.port, n, prefix="sim-dp-again")
                    again.start()
                    ok = await again.wait_all(1, timeout=args.wait_timeout)
                    await asyncio.sleep(2.0)
                    result["cp_after_reconnect"] = {**proc_mem(cp.pid), "all_received": ok}
                    await again.stop()
                    await asyncio.sleep(2.0)
                    result["cp_after_second_disconnect"] = proc_mem(cp.pid)
        result["cp_exit"] = cp.stop()
        result["cp_log"] = log_summary(cp.log_path)
    return result


def cmd_fleet(args):
    repo = args.repo
    bin_dir = args.bin_dir or os.path.join(repo, "target", "release")
    ns = [int(x) for x in args.n.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="tollgate-fleet-") as workdir:
        load_stubs(os.path.join(repo, "proto"), workdir)
        files = []
        for k in range(args.changes + 1):
            path = os.path.join(workdir, f"config-{k}.yaml")
            with open(path, "w") as f:
                f.write(gen_config(args.routes, args.services, args.upstream, change=k, consumers=args.consumers))
            files.append(path)
        config_bytes = os.path.getsize(files[0])

        def log(msg):
            print(msg, flush=True)

        log(f"config: {args.routes} routes, {args.services} services, {args.consumers} consumers, "
            f"{config_bytes} bytes of YAML")
        for n in ns:
            results.append(asyncio.run(measure_fleet(args, bin_dir, workdir, n, files, log)))
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({"config_yaml_bytes": config_bytes, "results": results}, f, indent=1)
    return results


# ---------------------------------------------------------------- one real data plane

def http_get(conn_holder, port, path, host=None):
    """GET over a kept-alive connection (reopened on failure): (status, body) or (None, error)."""
    import http.client
    for _ in range(2):
        conn = conn_holder.get(port)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn_holder[port] = conn
        try:
            conn.request("GET", path, headers={"Host": host} if host else {})
            r = conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conn_holder.pop(port, None)
            err = str(e)
    return None, err


def dp_revision(conns, status_port):
    status, body = http_get(conns, status_port, "/status")
    if status != 200:
        return None
    v = json.loads(body).get("config_version")
    return v.get("revision") if v else None


def wait_until(pred, timeout, period=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = pred()
        if r:
            return time.monotonic(), r
        time.sleep(period)
    return None, None


def start_dp(bin_dir, workdir, cp, name):
    port, status_port = free_port(), free_port()
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "tollgate-dp"), "--control-plane", cp.server,
         "--listen", f"127.0.0.1:{port}", "--status-listen", f"127.0.0.1:{status_port}",
         "--node-id", name],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, port, status_port, log


def cmd_real_dp(args):
    repo = args.repo
    bin_dir = args.bin_dir or os.path.join(repo, "target", "release")
    out = {"routes_large": args.routes, "services_large": args.services}
    procs = []
    conns = {}
    with tempfile.TemporaryDirectory(prefix="tollgate-realdp-") as workdir:
        echo_port = free_port()
        upstream = f"127.0.0.1:{echo_port}"
        small = os.path.join(workdir, "small.yaml")
        with open(small, "w") as f:
            f.write(gen_config(10, 2, upstream))
        large = []
        for k in range(args.changes + 1):
            path = os.path.join(workdir, f"large-{k}.yaml")
            with open(path, "w") as f:
                f.write(gen_config(args.routes, args.services, upstream, change=1000 + k))
            large.append(path)
        cp = ControlPlane(bin_dir, workdir, "cp-real").start()
        try:
            echo = subprocess.Popen([os.path.join(bin_dir, "tollgate-echo"), "--listen", upstream],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            procs.append(echo)
            wait_port(echo_port)
            wall, rc, _, err = ctl(bin_dir, cp.server, "apply", "-f", small)
            assert rc == 0, err
            dp, dport, sport, dlog = start_dp(bin_dir, workdir, cp, "real-dp-1")
            procs.append(dp)
            t0 = time.monotonic()
            t_ready, _ = wait_until(lambda: http_get(conns, sport, "/readyz")[0] == 200, 30, 0.005)
            out["dp1_start_to_ready_10_routes_ms"] = round((t_ready - t0) * 1000, 1) if t_ready else None
            time.sleep(args.settle)
            status, _ = http_get(conns, dport, "/probe/0")
            out["dp_10_routes"] = {**proc_mem(dp.pid), "probe_status": status}

            # Move the same data plane to 10,000 routes.
            rev_before = dp_revision(conns, sport)
            cpu_a = proc_thread_ns(dp.pid)
            wall, t_ret, rc, _, err = asyncio.run(actl(bin_dir, cp.server, "apply", "-f", large[0]))
            assert rc == 0, err
            t_rev, _ = wait_until(lambda: (dp_revision(conns, sport) or 0) > rev_before, 60)
            t_probe, _ = wait_until(lambda: http_get(conns, dport, "/probe/1000")[0] == 200, 60)
            out["to_10k"] = {
                "apply_wall_ms": round(wall * 1000, 1),
                "apply_to_status_ms": round((t_rev - t_ret) * 1000, 1) if t_rev else None,
                "apply_to_route_ms": round((t_probe - t_ret) * 1000, 1) if t_probe else None,
                "dp_cpu_s": round(cpu_delta_s(cpu_a, proc_thread_ns(dp.pid)), 3),
            }
            time.sleep(args.settle)
            out["dp_10k_routes_after_move"] = proc_mem(dp.pid)

            # One-route changes at 10,000 routes: apply returning -> /status shows it -> the route serves.
            changes = []
            for k in range(1, args.changes + 1):
                time.sleep(args.pause)
                rev_before = dp_revision(conns, sport)
                cpu_a = proc_thread_ns(dp.pid)
                cp_a = proc_thread_ns(cp.pid)
                wall, t_ret, rc, _, err = asyncio.run(actl(bin_dir, cp.server, "apply", "-f", large[k]))
                assert rc == 0, err
                path = f"/probe/{1000 + k}"
                t_probe = t_rev = None
                deadline = time.monotonic() + 60
                # One loop polls both, 1 ms apart, so neither waits on the other.
                while time.monotonic() < deadline and (t_probe is None or t_rev is None):
                    if t_rev is None and (dp_revision(conns, sport) or 0) > (rev_before or 0):
                        t_rev = time.monotonic()
                    if t_probe is None and http_get(conns, dport, path)[0] == 200:
                        t_probe = time.monotonic()
                    time.sleep(0.001)
                time.sleep(0.2)
                changes.append({
                    "change": k,
                    "apply_wall_ms": round(wall * 1000, 1),
                    "apply_to_status_ms": round((t_rev - t_ret) * 1000, 1) if t_rev else None,
                    "apply_to_route_ms": round((t_probe - t_ret) * 1000, 1) if t_probe else None,
                    "dp_cpu_s": round(cpu_delta_s(cpu_a, proc_thread_ns(dp.pid)), 3),
                    "cp_cpu_s": round(cpu_delta_s(cp_a, proc_thread_ns(cp.pid)), 3),
                })
                print(f"  real DP change {k}: {changes[-1]}", flush=True)
            out["changes_10k"] = changes
            time.sleep(args.settle)
            out["dp_10k_routes_after_changes"] = proc_mem(dp.pid)

            # A fresh data plane that boots straight into 10,000 routes.
            dp2, dport2, sport2, dlog2 = start_dp(bin_dir, workdir, cp, "real-dp-2")
            procs.append(dp2)
            t0 = time.monotonic()
            t_ready, _ = wait_until(lambda: http_get(conns, sport2, "/readyz")[0] == 200, 60, 0.005)
            out["dp2_start_to_ready_10k_routes_ms"] = round((t_ready - t0) * 1000, 1) if t_ready else None
            time.sleep(args.settle)
            out["dp2_fresh_10k_routes"] = proc_mem(dp2.pid)
            status, _ = http_get(conns, dport2, f"/probe/{1000 + args.changes}")
            out["dp2_probe_status"] = status

            # And a fresh one at 10 routes, for the same comparison.
            ctl(bin_dir, cp.server, "apply", "-f", small)
            dp3, dport3, sport3, dlog3 = start_dp(bin_dir, workdir, cp, "real-dp-3")
            procs.append(dp3)
            wait_until(lambda: http_get(conns, sport3, "/readyz")[0] == 200, 30, 0.005)
            time.sleep(args.settle)
            out["dp3_fresh_10_routes"] = proc_mem(dp3.pid)
            time.sleep(1.0)
            out["dp1_back_to_10_routes"] = proc_mem(dp.pid)
            out["cp_final"] = proc_mem(cp.pid)
        finally:
            for c in conns.values():
                c.close()
            for p in reversed(procs):
                stop_process(p)
            out["cp_exit"] = cp.stop()
            out["logs"] = {name: log_summary(os.path.join(workdir, f"{name}.log"))
                           for name in ("cp-real", "real-dp-1", "real-dp-2", "real-dp-3")
                           if os.path.exists(os.path.join(workdir, f"{name}.log"))}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


# ---------------------------------------------------------------- 100,000 routes: simulated fleet + one real data plane

def dp_cpu_idle_rate(pid, window=1.0):
    """CPU seconds per second a data plane spends with nothing to do (timers, keepalives)."""
    a = proc_thread_ns(pid)
    time.sleep(window)
    return cpu_delta_s(a, proc_thread_ns(pid)) / window


async def measure_scale(args, bin_dir, workdir, files, log):
    out = {"routes": args.routes, "services": args.services, "simulated": args.n}
    conns = {}
    procs = []
    echo_port = int(args.upstream.rsplit(":", 1)[1])
    echo = subprocess.Popen([os.path.join(bin_dir, "tollgate-echo"), "--listen", args.upstream],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    procs.append(echo)
    wait_port(echo_port)
    cp = ControlPlane(bin_dir, workdir, name="cp-scale").start()
    fleet = None
    try:
        t = time.monotonic()
        wall, t_ret, rc, _, err = await actl(bin_dir, cp.server, "apply", "-f", files[0], timeout=600)
        if rc != 0:
            raise SystemExit(f"apply of {args.routes} routes failed: {err}")
        out["initial_apply_s"] = round(wall, 3)
        out["cp_after_apply"] = proc_mem(cp.pid)
        log(f"apply of {args.routes} routes: {wall:.2f} s")

        dp, dport, sport, dlog = start_dp(bin_dir, workdir, cp, "real-dp-scale")
        procs.append(dp)
        t0 = time.monotonic()
        t_ready = None
        while time.monotonic() - t0 < args.wait_timeout:
            if http_get(conns, sport, "/readyz")[0] == 200:
                t_ready = time.monotonic()
                break
            await asyncio.sleep(0.02)
        out["real_dp_start_to_ready_s"] = round(t_ready - t0, 3) if t_ready else None
        log(f"real data plane ready in {out['real_dp_start_to_ready_s']} s")

        fleet = Fleet(cp.port, args.n)
        t0 = time.monotonic()
        fleet.start()
        ok = await fleet.wait_all(1, timeout=args.wait_timeout)
        out["fleet_initial"] = {"all_received": ok, "all_s": round(time.monotonic() - t0, 3),
                                "bytes_per_dp": sorted({d.sizes.get(min(d.arrivals)) for d in fleet.dps if d.arrivals})}
        log(f"{args.n} simulated data planes have it: {ok} in {out['fleet_initial']['all_s']} s")
        await asyncio.sleep(args.settle)
        status, _ = http_get(conns, dport, "/probe/0")
        out["real_dp_probe_status"] = status
        out["real_dp_mem"] = proc_mem(dp.pid)
        out["cp_connected"] = proc_mem(cp.pid)
        idle = dp_cpu_idle_rate(dp.pid)
        out["real_dp_idle_cpu_per_s"] = round(idle, 5)

        current = max(d.latest for d in fleet.dps)
        admin_channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}", options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)])
        admin_update = admin_channel.unary_unary("/tollgate.admin.v1.Admin/Update")
        changes = []
        for k in range(1, args.changes + 1):
            await asyncio.sleep(args.pause)
            target = current + 1
            path = f"/probe/{k}"
            # Even changes: poll the changed route every millisecond (latency). Odd: every 20 ms
            # (CPU: the polling itself costs the data plane CPU).
            latency_mode = k % 2 == 0
            # Changes 1-2 and 5-6...: `tollgatectl apply -f` of the whole file; 3-4, 7-8...: the Admin
            # Update RPC of the one route (what automation at this size does: the CP then parses,
            # validates and diffs one entity, not 100,000).
            by_rpc = ((k - 1) // 2) % 2 == 1
            rev_before = dp_revision(conns, sport) or 0
            # The data plane has nothing to do before the commit: its CPU for the change is sampled
            # from just before the write (per thread: the busiest one is the blocking thread that
            # applies and compiles the delta; the others answer this script's polling).
            cpu_a = proc_thread_ns(dp.pid)
            cp_a = proc_thread_ns(cp.pid)
            if by_rpc:
                route = {"name": "route-00000", "service": "svc-00000", "paths": [path]}
                req = pb_admin.EntityRequest(entity=pb_admin.Entity(route=pb_config.Route(json=json.dumps(route))))
                t_call = time.monotonic()
                resp = await admin_update(req.SerializeToString())
                t_ret = time.monotonic()
                apply_wall = t_ret - t_call
                target = pb_admin.EntityResponse.FromString(resp).version.revision
            else:
                apply_wall, t_ret, rc, _, err = await actl(bin_dir, cp.server, "apply", "-f", files[k], timeout=600)
                if rc != 0:
                    raise SystemExit(f"apply {k} failed: {err}")
            t_seen = None
            deadline = time.monotonic() + args.wait_timeout
            polls = 0
            while time.monotonic() < deadline:
                polls += 1
                if latency_mode:
                    if http_get(conns, dport, path)[0] == 200:
                        t_seen = time.monotonic()
                        break
                    await asyncio.sleep(0.001)
                else:
                    # Not /status: at 10,000 services its JSON (every pool's health) costs the data
                    # plane more CPU than the change itself.
                    if http_get(conns, dport, path)[0] == 200:
                        t_seen = time.monotonic()
                        break
                    await asyncio.sleep(0.02)
            t_cpu_end = time.monotonic()
            ok = await fleet.wait_all(target, timeout=args.wait_timeout)
            t_fleet = time.monotonic()
            await asyncio.sleep(0.3)
            cpu_b = proc_thread_ns(dp.pid)
            dp_cpu = cpu_delta_s(cpu_a, cpu_b)
            busiest = max((ns - cpu_a.get(tid, 0) for tid, ns in cpu_b.items()), default=0) / 1e9
            window = time.monotonic() - (t_ret - apply_wall)
            entry = {
                "change": k, "mode": "latency" if latency_mode else "cpu",
                "via": "Admin.Update" if by_rpc else "apply -f",
                "apply_wall_ms": round(apply_wall * 1000, 1),
                "real_dp_ms": round((t_seen - t_ret) * 1000, 1) if t_seen else None,
                "polls": polls,
                "real_dp_cpu_ms": round(dp_cpu * 1000, 2),
                "real_dp_busiest_thread_ms": round(busiest * 1000, 2),
                "real_dp_cpu_minus_idle_ms": round((dp_cpu - idle * window) * 1000, 2),
                "fleet_all": ok, "fleet_last_ms": round((t_fleet - t_ret) * 1000, 1),
                "cp_cpu_ms": round(cpu_delta_s(cp_a, proc_thread_ns(cp.pid)) * 1000, 1),
                "sim_bytes_per_dp": sorted({d.sizes.get(target) for d in fleet.dps if d.sizes.get(target)}),
                "sim_kinds": sorted({d.kinds.get(target) for d in fleet.dps if d.kinds.get(target)}),
            }
            # The data plane's own account: the wall time from the delta's arrival to in service.
            import re
            with open(dlog.name, errors="replace") as f:
                applied = re.findall(r"apply_ms=([0-9.]+)", re.sub(r"\x1b\[[0-9;]*m", "", f.read()))
            entry["real_dp_apply_ms_logged"] = float(applied[-1]) if applied else None
            changes.append(entry)
            current = target
            log(f"  change {k}: {entry}")
        await admin_channel.close()
        out["changes"] = changes
        out["real_dp_mem_after"] = proc_mem(dp.pid)
        out["cp_after"] = proc_mem(cp.pid)
    finally:
        for c in conns.values():
            c.close()
        if fleet is not None:
            await fleet.stop()
            out["drops"] = fleet.drops()
        for p in reversed(procs):
            stop_process(p)
        out["cp_exit"] = cp.stop()
        out["logs"] = {name: log_summary(os.path.join(workdir, f"{name}.log"))
                       for name in ("cp-scale", "real-dp-scale")
                       if os.path.exists(os.path.join(workdir, f"{name}.log"))}
    return out


def cmd_scale(args):
    repo = args.repo
    bin_dir = args.bin_dir or os.path.join(repo, "target", "release")
    with tempfile.TemporaryDirectory(prefix="tollgate-scale-") as workdir:
        load_stubs(os.path.join(repo, "proto"), workdir)
        args.upstream = f"127.0.0.1:{free_port()}"
        files = []
        for k in range(args.changes + 1):
            path = os.path.join(workdir, f"config-{k}.yaml")
            with open(path, "w") as f:
                f.write(gen_config(args.routes, args.services, args.upstream, change=k))
            files.append(path)

        def log(msg):
            print(msg, flush=True)

        out = asyncio.run(measure_scale(args, bin_dir, workdir, files, log))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "changes"}, indent=1))


# ---------------------------------------------------------------- markdown tables from the JSON results

def _med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _f(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _mib(kib):
    return None if kib is None else kib / 1024


def cmd_tables(args):
    runs = []
    for path in args.fleet:
        label = os.path.splitext(os.path.basename(path))[0]
        with open(path) as fh:
            for r in json.load(fh)["results"]:
                r["_label"] = label
                r["_mode"] = "pinned" if len(r["cp_cpus"]) == 1 else "shared"
                runs.append(r)
    out = []
    w = out.append
    w("CPUs: `shared` = tollgate-cp and the simulator unpinned on the 2 CPUs; `pinned` = tollgate-cp on CPU 0 "
      "alone, the simulator (and tollgatectl) on CPU 1.\n")
    w("### (a) Initial snapshot after connecting N at once\n")
    w("| run | N | routes | CPUs | all N had it (s) | p50 (ms) | p99 (ms) | CP CPU (s) | sim CPU (s) | streams dropped |")
    w("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        i = r["initial"]
        w(f"| {r['_label']} | {r['n']} | {r['routes']:,} | {r['_mode']} | {_f(i['all_s'], 3)} | {_f(i.get('p50_ms'))} | "
          f"{_f(i.get('p99_ms'))} | {_f(i['cp_cpu_s'], 3)} | {_f(i['sim_cpu_s'], 3)} | {r['drops']['errors_total']} |")
    w("\n### (b)/(e) Fan-out of a one-route change (apply returned -> data plane has the new version)\n")
    w("Medians over the changes; `max` also as the range over the changes. CP CPU is the control plane's CPU "
      "from apply returning until every data plane had the version, plus 0.3 s for the ACKs.\n")
    w("| run | N | routes | CPUs | snapshot bytes | changes | p50 (ms) | p99 (ms) | max (ms) | max range (ms) | "
      "CP CPU / fan-out (s) | CP CPU / DP (ms) | snapshot build sum (s) | sim CPU / fan-out (s) | CP peak RSS in fan-out (MiB) |")
    w("|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in runs:
        f = r["fanouts"]
        ok = all(x["all_received"] for x in f)
        cpu = _med([x["cp_cpu_fanout_s"] for x in f])
        maxes = [x.get("max_ms") for x in f]
        sizes = sorted({b for x in f for b in x["bytes_per_dp"]})
        w(f"| {r['_label']} | {r['n']} | {r['routes']:,} | {r['_mode']} | {', '.join(f'{b:,}' for b in sizes)} | {len(f)}{'' if ok else ' (INCOMPLETE)'} | "
          f"{_f(_med([x.get('p50_ms') for x in f]))} | {_f(_med([x.get('p99_ms') for x in f]))} | {_f(_med(maxes))} | "
          f"{_f(min(maxes))}-{_f(max(maxes))} | {_f(cpu, 3)} | {_f(1000 * cpu / r['n'], 3)} | "
          f"{_f(_med([x.get('snapshot_build_s_total') for x in f]), 3)} | {_f(_med([x['sim_cpu_s'] for x in f]), 3)} | "
          f"{_f(_mib(max(x['cp_peak_rss_kib'] for x in f)))} |")
    w("\n### (c) Control plane memory and CPU (from /proc/PID/status and /proc/PID/stat)\n")
    w("| run | N | routes | CPUs | RSS, no DP (MiB) | RSS, N connected (MiB) | RSS / DP (KiB) | RSS after fan-outs (MiB) | "
      "VmHWM (MiB) | idle CPU with N (%) | CPU total (s) | threads |")
    w("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        w(f"| {r['_label']} | {r['n']} | {r['routes']:,} | {r['_mode']} | {_f(_mib(r['cp_before']['VmRSS']))} | "
          f"{_f(_mib(r['cp_connected']['VmRSS']))} | {_f(r['cp_rss_per_dp_kib'])} | "
          f"{_f(_mib(r['cp_after_fanouts']['VmRSS']))} | {_f(_mib(r['cp_after_fanouts']['VmHWM']))} | "
          f"{_f(r['cp_idle_cpu_pct'], 2)} | {_f(r['cp_after_fanouts']['cpu_s'], 2)} | {r['cp_connected']['Threads']} |")
    w("\n### (d) `tollgatectl dataplanes`\n")
    w("| run | N | routes | CPUs | `-o json` wall (ms), each run | listed | connected | at latest version | distinct peer addresses | "
      "JSON bytes | table wall (ms) | /metrics scrape (ms, bytes) |")
    w("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        d = r["dataplanes"]
        last = d[-1]
        m = r.get("cp_metrics", {})
        w(f"| {r['_label']} | {r['n']} | {r['routes']:,} | {r['_mode']} | {', '.join(_f(x['wall_ms']) for x in d)} | {last.get('listed')} | "
          f"{last.get('connected')} | {last.get('at_latest')} | {last.get('distinct_addresses')} | {_f(last.get('output_bytes'))} | "
          f"{_f(r['dataplanes_table']['wall_ms'])} | {_f(m.get('_scrape_ms'))}, {_f(m.get('_scrape_bytes'))} |")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("gen-config")
    g.add_argument("--routes", type=int, default=10)
    g.add_argument("--services", type=int, default=2)
    g.add_argument("--consumers", type=int, default=0)
    g.add_argument("--upstream", default="127.0.0.1:9")
    g.add_argument("--change", type=int, default=0)
    g.add_argument("-o", "--out", default="-")

    f = sub.add_parser("fleet")
    f.add_argument("--repo", required=True, help="the Tollgate repository (proto/, target/release/)")
    f.add_argument("--bin-dir", help="default: REPO/target/release")
    f.add_argument("--n", default="10,100,500,1000")
    f.add_argument("--routes", type=int, default=10)
    f.add_argument("--services", type=int, default=2)
    f.add_argument("--consumers", type=int, default=0)
    f.add_argument("--upstream", default="127.0.0.1:9")
    f.add_argument("--changes", type=int, default=5)
    f.add_argument("--pause", type=float, default=1.0, help="seconds between changes")
    f.add_argument("--idle-window", type=float, default=5.0)
    f.add_argument("--wait-timeout", type=float, default=120.0)
    f.add_argument("--dataplanes-repeats", type=int, default=3)
    f.add_argument("--pin-cp", help="CPU list for tollgate-cp, e.g. 0 (default: unpinned)")
    f.add_argument("--pin-sim", help="CPU list for this simulator, e.g. 1 (default: unpinned)")
    f.add_argument("--cp-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for tollgate-cp, e.g. GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072")
    f.add_argument("--reconnect-check", action="store_true",
                   help="after the run, disconnect all, connect N new ones, disconnect again; RSS at each step")
    f.add_argument("--connect-batch", type=int, default=0,
                   help="connect this many data planes at a time (0: all at once)")
    f.add_argument("--legacy", action="store_true",
                   help="simulate data planes that do not speak deltas (whole snapshots)")
    f.add_argument("--out", help="JSON results")

    r = sub.add_parser("real-dp")
    r.add_argument("--repo", required=True)
    r.add_argument("--bin-dir")
    r.add_argument("--routes", type=int, default=10_000)
    r.add_argument("--services", type=int, default=2_000)
    r.add_argument("--changes", type=int, default=5)
    r.add_argument("--pause", type=float, default=1.0)
    r.add_argument("--settle", type=float, default=2.0)
    r.add_argument("--out")

    sc = sub.add_parser("scale", help="100,000 routes: N simulated data planes and one real one")
    sc.add_argument("--repo", required=True)
    sc.add_argument("--bin-dir")
    sc.add_argument("--n", type=int, default=100)
    sc.add_argument("--routes", type=int, default=100_000)
    sc.add_argument("--services", type=int, default=10_000)
    sc.add_argument("--changes", type=int, default=6)
    sc.add_argument("--pause", type=float, default=1.0)
    sc.add_argument("--settle", type=float, default=2.0)
    sc.add_argument("--wait-timeout", type=float, default=300.0)
    sc.add_argument("--out")

    t = sub.add_parser("tables", help="markdown tables from `fleet --out` files")
    t.add_argument("fleet", nargs="+")

    args = ap.parse_args()
    cpu_list = lambda text: {int(c) for c in text.split(",")} if text else None  # noqa: E731
    if args.cmd == "fleet":
        args.pin_cp_set = cpu_list(args.pin_cp)
        if args.pin_sim:
            os.sched_setaffinity(0, cpu_list(args.pin_sim))  # before grpc starts its threads
    if args.cmd == "gen-config":
        text = gen_config(args.routes, args.services, args.upstream, args.change, args.consumers)
        if args.out == "-":
            sys.stdout.write(text)
        else:
            with open(args.out, "w") as fh:
                fh.write(text)
    elif args.cmd == "fleet":
        cmd_fleet(args)
    elif args.cmd == "real-dp":
        cmd_real_dp(args)
    elif args.cmd == "scale":
        cmd_scale(args)
    elif args.cmd == "tables":
        cmd_tables(args)


if __name__ == "__main__":
    main()
