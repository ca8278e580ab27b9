"""A real gRPC client for the end-to-end tests (Debian's python3-grpcio).

Usage: grpc_client.py SPEC, SPEC a JSON object: target (host:port), metadata
(list of [key, value]), timeout (seconds, per call), calls (a list of: unary,
server_stream, client_stream, bidi, health, slow, or a method path
/pkg.Service/Method called unary with b"x"). Prints one JSON object per
call: call, code (the gRPC status name), details, and what came back.
"""
import json
import sys

import grpc


def run(channel, call, metadata, timeout):
    out = {"call": call}
    try:
        if call == "unary":
            response, rpc = channel.unary_unary("/test.Echo/Unary").with_call(
                b"hello", metadata=metadata, timeout=timeout)
            out["response"] = response.decode()
            out["trailers"] = dict(rpc.trailing_metadata() or ())
        elif call == "server_stream":
            out["responses"] = [m.decode() for m in channel.unary_stream(
                "/test.Echo/ServerStream")(b"5", metadata=metadata, timeout=timeout)]
        elif call == "client_stream":
            out["response"] = channel.stream_unary("/test.Echo/ClientStream")(
                iter([b"a" * 10] * 7), metadata=metadata, timeout=timeout).decode()
        elif call == "bidi":
            out["responses"] = [m.decode() for m in channel.stream_stream("/test.Echo/Bidi")(
                iter([b"one", b"two", b"three"]), metadata=metadata, timeout=timeout)]
        elif call == "health":
            out["response"] = channel.unary_unary("/grpc.health.v1.Health/Check")(
                b"", metadata=metadata, timeout=timeout).hex()
        elif call.startswith("/"):
            out["response"] = channel.unary_unary(call)(
                b"x", metadata=metadata, timeout=timeout).decode()
        elif call == "slow":
            out["response"] = channel.unary_unary("/test.Echo/Slow")(
                b"3", metadata=metadata, timeout=timeout).decode()
        out["code"] = "OK"
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details()
    return out


def main(spec):
    metadata = [tuple(pair) for pair in spec.get("metadata", [])]
    with grpc.insecure_channel(spec["target"]) as channel:
        for call in spec["calls"]:
            print(json.dumps(run(channel, call, metadata, spec.get("timeout", 10))), flush=True)


main(json.loads(sys.argv[1]))
