"""WebSocket echo upstream for the end-to-end tests (Debian's python3-websockets).

Echoes every message back. Prints one JSON line per HTTP request it receives,
before any handshake check, with the request's Upgrade and apikey headers, so a
test can tell what reached the upstream. Usage: ws_echo_server.py PORT
"""
import asyncio
import json
import sys

import websockets


async def log_request(path, headers):
    print(json.dumps({"path": path, "upgrade": headers.get("Upgrade"),
                      "connection": headers.get("Connection"),
                      "apikey": headers.get("apikey")}), flush=True)
    return None


async def echo(ws, path=None):
    async for message in ws:
        await ws.send(message)


async def main(port):
    async with websockets.serve(echo, "127.0.0.1", port, process_request=log_request,
                                ping_interval=None, max_size=2 ** 20):
        print(json.dumps({"ready": port}), flush=True)
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1])))
