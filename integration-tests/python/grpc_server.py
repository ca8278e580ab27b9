"""A real gRPC server for the end-to-end tests and bench/grpc.sh (Debian's
python3-grpcio), with no generated code: methods take and return raw bytes.

Service test.Echo: Unary (echo:<request>, trailing metadata x-trailer),
ServerStream (request N: N messages), ClientStream (answers "<count> <bytes>"),
Bidi (re:<each message>), Slow (sleeps <request> seconds). Also the standard
grpc.health.v1.Health/Check, answering SERVING (protobuf bytes 08 01).
Prints one JSON line per call (method, apikey metadata).
Usage: grpc_server.py PORT [quiet] [tls CERT_PEM_FILE KEY_PEM_FILE] (TLS: ALPN h2).
"""
import json
import sys
import time
from concurrent import futures

import grpc

QUIET = "quiet" in sys.argv[2:]
TLS = sys.argv[sys.argv.index("tls") + 1:sys.argv.index("tls") + 3] if "tls" in sys.argv[2:] else None


def log(method, context):
    if not QUIET:
        metadata = dict(context.invocation_metadata())
        print(json.dumps({"method": method, "apikey": metadata.get("apikey")}), flush=True)


def unary(request, context):
    log("Unary", context)
    context.set_trailing_metadata((("x-trailer", "unary-done"),))
    return b"echo:" + request


def server_stream(request, context):
    log("ServerStream", context)
    for i in range(int(request.decode())):
        yield ("item %d" % i).encode()


def client_stream(requests, context):
    log("ClientStream", context)
    count = total = 0
    for message in requests:
        count += 1
        total += len(message)
    return ("%d %d" % (count, total)).encode()


def bidi(requests, context):
    log("Bidi", context)
    for message in requests:
        yield b"re:" + message


def slow(request, context):
    log("Slow", context)
    time.sleep(float(request.decode()))
    return b"late"


def health(request, context):
    log("Health", context)
    return b"\x08\x01"


def main(port):
    echo = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    })
    checks = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(health),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((echo, checks))
    if TLS:
        with open(TLS[0], "rb") as cert, open(TLS[1], "rb") as key:
            credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
        server.add_secure_port("127.0.0.1:%d" % port, credentials)
    else:
        server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print(json.dumps({"ready": port}), flush=True)
    server.wait_for_termination()


main(int(sys.argv[1]))
