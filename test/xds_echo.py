#!/usr/bin/python3
"""Echo servers for the xDS tests, without registering anywhere.

    xds_echo.py PORT[/half] [PORT[/half]...]

Serves /echo.Echo/Say (proto/echo.proto) on 127.0.0.1:PORT for each PORT,
all in this one process, and answers every call with "127.0.0.1:PORT", the
address the tests register in etcd themselves (etcdctl put), as another
writer than the agent would. Messages are google.protobuf.StringValue,
encoded by hand, so no generated code is needed. Prints "ready" once every
port listens; runs until killed. A port written PORT/half fails every
second call with UNAVAILABLE (the outlier detection test's bad server).

Runs with Debian's python3-grpcio (/usr/bin/python3).
"""
import signal
import sys
import threading
from concurrent import futures

import grpc


def string_value(s):
    b = s.encode()
    if not b:
        return b""
    n, out = len(b), bytearray([0x0A])
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + b


def handler_for(address, half=False):
    reply = string_value(address)
    calls = [0]
    lock = threading.Lock()

    def say(request, context):
        if half:
            with lock:
                calls[0] += 1
                fail = calls[0] % 2 == 0
            if fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, "failing half the calls")
        return reply

    method = grpc.unary_unary_rpc_method_handler(say)
    return grpc.method_handlers_generic_handler("echo.Echo", {"Say": method})


def main():
    ports = [(int(p.split("/")[0]), p.endswith("/half")) for p in sys.argv[1:]]
    if not ports:
        sys.exit("usage: xds_echo.py PORT[/half] [PORT[/half]...]")
    servers = []
    for port, half in ports:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((handler_for("127.0.0.1:%d" % port, half),))
        if server.add_insecure_port("127.0.0.1:%d" % port) != port:
            sys.exit("cannot listen on 127.0.0.1:%d" % port)
        server.start()
        servers.append(server)
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    stop.wait()
    for s in servers:
        s.stop(0)


if __name__ == "__main__":
    main()
