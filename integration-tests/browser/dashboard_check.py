#!/usr/bin/env python3
"""Checks the control plane's dashboard in a real headless Chromium (issue 20).

    dashboard_check.py DASHBOARD_URL EXPECTED_STATS_JSON SCREENSHOT_PNG NODE,NODE,...

Starts Debian's `chromium` headless with a DevTools port, drives it over the
Chrome DevTools Protocol (python3-websockets), loads the page and checks:
no console errors or uncaught exceptions, the fleet table lists every data
plane, the charts have data points, and the numbers on the page (total
requests, each route's requests and p99) equal EXPECTED_STATS_JSON (the
output of `tollgatectl stats -o json`). Saves a screenshot. Exits non-zero
with the reason on any failure. Only the Chromium it started is stopped.
"""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

TIMEOUT = 60.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_binary():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium found: install Debian's chromium package (scripts/test.sh does)")


class Cdp:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.errors = []
        self.pending = {}

    async def call(self, method, params=None):
        self.next_id += 1
        ident = self.next_id
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.event(message)

    def event(self, message):
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.errors.append("console." + params["type"] + ": " + " ".join(texts))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")


PAGE_STATE = """
(function () {
  if (!document.body || !document.getElementById('error') || !document.getElementById('chart-rps')) { return null; }
  function text(el) { return el ? el.textContent.trim() : null; }
  var routes = {};
  document.querySelectorAll('#routes tbody tr[data-route]').forEach(function (tr) {
    routes[tr.getAttribute('data-route')] = {
      requests: text(tr.querySelector('.requests')),
      p99: text(tr.querySelector('.p99'))
    };
  });
  var nodes = [];
  document.querySelectorAll('#fleet tbody tr[data-node]').forEach(function (tr) {
    nodes.push(tr.getAttribute('data-node'));
  });
  return {
    loaded: document.body.getAttribute('data-loaded'),
    error: document.getElementById('error').hidden ? null : text(document.getElementById('error')),
    total: text(document.getElementById('total-requests')),
    routes: routes,
    nodes: nodes,
    points: parseInt(document.getElementById('chart-rps').getAttribute('data-points') || '0', 10),
    circles: document.querySelectorAll('#chart-rps circle').length
  };
})()
"""


async def check(url, expected, screenshot, nodes, port):
    deadline = time.monotonic() + TIMEOUT
    targets = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if targets:
                break
        except OSError:
            pass
        await asyncio.sleep(0.2)
    if not targets:
        raise SystemExit("chromium did not open its DevTools port")
    async with websockets.connect(targets[0]["webSocketDebuggerUrl"], max_size=None) as ws:
        cdp = Cdp(ws)
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            await cdp.call(domain)
        await cdp.call("Emulation.setDeviceMetricsOverride",
                       {"width": 1400, "height": 1300, "deviceScaleFactor": 1, "mobile": False})
        await cdp.call("Page.navigate", {"url": url})
        state = None
        want_routes = {row["key"]: row for row in expected["rows"]}
        while time.monotonic() < deadline:
            try:
                state = await cdp.evaluate(PAGE_STATE)
            except RuntimeError:
                # The page is being replaced (navigation): ask again.
                state = None
            if (state and state["loaded"] == "true" and state["points"] > 0
                    and set(want_routes) <= set(state["routes"])):
                break
            await asyncio.sleep(0.5)
        # One more refresh cycle, so console errors of later polls show too.
        await asyncio.sleep(2.5)
        state = await cdp.evaluate(PAGE_STATE)
        if state is None:
            raise SystemExit(f"the dashboard did not load from {url}")
        problems = []
        if state["loaded"] != "true":
            problems.append(f"the page never loaded its data: {state}")
        if state["error"]:
            problems.append(f"the page shows an error: {state['error']}")
        if state["total"] != str(expected["totals"]["requests"]):
            problems.append(f"total requests on the page {state['total']} != {expected['totals']['requests']}")
        for key, row in want_routes.items():
            shown = state["routes"].get(key)
            if shown is None:
                problems.append(f"route {key} missing from the page")
                continue
            if shown["requests"] != str(row["requests"]):
                problems.append(f"route {key}: {shown['requests']} requests on the page, {row['requests']} in stats")
            p99 = "-" if row.get("p99_ms") is None else f"{row['p99_ms']:.1f}"
            if shown["p99"] != p99:
                problems.append(f"route {key}: p99 {shown['p99']} on the page, {p99} in stats")
        missing = [n for n in nodes if n not in state["nodes"]]
        if missing:
            problems.append(f"fleet table lacks {missing}: {state['nodes']}")
        if state["points"] <= 0 or state["circles"] <= 0:
            problems.append(f"the requests/s chart has no data points: {state}")
        shot = await cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        import base64
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        problems.extend(cdp.errors)
        return state, problems


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    url, expected_path, screenshot, nodes = sys.argv[1:]
    with open(expected_path) as f:
        expected = json.load(f)
    port = free_port()
    profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
    chromium = subprocess.Popen(
        [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
         f"--remote-debugging-port={port}", "--remote-allow-origins=*",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        state, problems = asyncio.run(check(url, expected, screenshot, nodes.split(","), port))
    finally:
        chromium.terminate()
        try:
            chromium.wait(timeout=10)
        except subprocess.TimeoutExpired:
            chromium.kill()
            chromium.wait()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"page: total {state['total']}, routes {state['routes']}, nodes {state['nodes']}, "
          f"chart points {state['points']}; screenshot {screenshot} ({os.path.getsize(screenshot)} bytes)")
    if problems:
        print("FAILED:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("dashboard OK")


if __name__ == "__main__":
    main()
