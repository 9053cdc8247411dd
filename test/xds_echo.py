#!/usr/bin/python3
"""Echo servers for the xDS tests, without registering anywhere.

    xds_echo.py PORT [PORT...]

Serves /echo.Echo/Say (proto/echo.proto) on 127.0.0.1:PORT for each PORT,
all in this one process, and answers every call with "127.0.0.1:PORT", the
address the tests register in etcd themselves (etcdctl put), as another
writer than the agent would. Messages are google.protobuf.StringValue,
encoded by hand, so no generated code is needed. Prints "ready" once every
port listens; runs until killed.

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


def handler_for(address):
    reply = string_value(address)

    def say(request, context):
        return reply

    method = grpc.unary_unary_rpc_method_handler(say)
    return grpc.method_handlers_generic_handler("echo.Echo", {"Say": method})


def main():
    ports = [int(p) for p in sys.argv[1:]]
    if not ports:
        sys.exit("usage: xds_echo.py PORT [PORT...]")
    servers = []
    for port in ports:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers((handler_for("127.0.0.1:%d" % port),))
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
