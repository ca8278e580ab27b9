"""WebSocket client for the end-to-end tests (Debian's python3-websockets).

Usage: ws_client.py SPEC, SPEC a JSON object: url, headers (object), messages
(how many to send, each awaited as an echo), wait_close (seconds to wait for the
other side to close after the last echo). Prints one JSON object: ok, echoed,
closed (the peer closed the connection), seconds (from open to the end) or,
when the handshake was refused, ok false with the HTTP status.
"""
import asyncio
import json
import sys
import time

import websockets


async def main(spec):
    out = {"ok": False, "echoed": 0}
    try:
        async with websockets.connect(spec["url"], extra_headers=spec.get("headers", {}),
                                      open_timeout=10, ping_interval=None, close_timeout=2,
                                      max_size=2 ** 20) as ws:
            opened = time.monotonic()
            for i in range(spec.get("messages", 0)):
                message = "message %d %s" % (i, "x" * (i % 200))
                await ws.send(message)
                got = await asyncio.wait_for(ws.recv(), 10)
                if got != message:
                    out["error"] = "echo %d differs" % i
                    print(json.dumps(out))
                    return
                out["echoed"] += 1
            out["ok"] = True
            if spec.get("wait_close"):
                try:
                    await asyncio.wait_for(ws.recv(), spec["wait_close"])
                except websockets.ConnectionClosed:
                    out["closed"] = True
                except asyncio.TimeoutError:
                    out["closed"] = False
            out["seconds"] = time.monotonic() - opened
    except websockets.InvalidStatusCode as e:
        out["status"] = e.status_code
    except Exception as e:  # reported, the test decides
        out["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out))


asyncio.run(main(json.loads(sys.argv[1])))
