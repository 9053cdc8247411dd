#!/usr/bin/python3
"""An unmodified gRPC client of xds:///NAME, for the xDS tests.

    xds_client.py TARGET [--calls N] [--duration S] [--group G]
                  [--interval-ms MS] [--header NAME] [--deadline S] [--no-wait]

Calls /echo.Echo/Say on TARGET (xds:///echo) through a plain
grpc.insecure_channel: the only xDS-specific thing is the environment,
GRPC_XDS_BOOTSTRAP naming the agent's bootstrap file. It makes N calls, or
calls for S seconds (one every MS milliseconds; 0 = back to back), with
the per-call metadata "x-group: G" when --group is given, then prints one
JSON object:

  {"ok": 1000, "failed": 0, "errors": {}, "counts": {"127.0.0.1:5001": 750},
   "first": {ADDR: epoch_ms}, "last": {ADDR: epoch_ms},
   "start": epoch_ms, "end": epoch_ms, "first_call_ms": 12.3}

"first"/"last" are wall-clock times (ms since the epoch) of the first and
last reply from each address, which the tests compare with when they
changed etcd. The first call waits for the channel to be ready (xDS has to
answer first; --no-wait: it does not); every later call fails at once if
no backend can take it, so that a failure shows up as one.

Runs with Debian's python3-grpcio (/usr/bin/python3).
"""
import argparse
import json
import sys
import time

import grpc


def decode_string_value(b):
    if not b:
        return ""
    if b[0] != 0x0A:
        return "?"
    n, shift, i = 0, 0, 1
    while True:
        byte = b[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return b[i:i + n].decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--calls", type=int, default=0)
    ap.add_argument("--duration", type=float, default=0)
    ap.add_argument("--group")
    ap.add_argument("--header", default="x-group")
    ap.add_argument("--interval-ms", type=float, default=0)
    ap.add_argument("--deadline", type=float, default=5)
    ap.add_argument("--no-wait", action="store_true")
    args = ap.parse_args()
    if not args.calls and not args.duration:
        args.calls = 100

    md = ((args.header, args.group),) if args.group else None
    counts, first, last, errors = {}, {}, {}, {}
    ok = failed = 0
    t0 = time.time()
    with grpc.insecure_channel(args.target) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        made = 0
        first_call_ms = None
        while True:
            now = time.time()
            if args.calls and made >= args.calls:
                break
            if args.duration and now - t0 >= args.duration:
                break
            try:
                reply = say(b"", timeout=args.deadline if made else 20, metadata=md,
                            wait_for_ready=(made == 0 and not args.no_wait))
                at = time.time()
                if first_call_ms is None:
                    first_call_ms = (at - t0) * 1000
                addr = decode_string_value(reply)
                ok += 1
                counts[addr] = counts.get(addr, 0) + 1
                ms = int(at * 1000)
                first.setdefault(addr, ms)
                last[addr] = ms
            except grpc.RpcError as e:
                failed += 1
                key = "%s: %s" % (e.code().name, e.details())
                errors[key] = errors.get(key, 0) + 1
            made += 1
            if args.interval_ms:
                time.sleep(args.interval_ms / 1000.0)
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "counts": counts,
                      "first": first, "last": last, "start": int(t0 * 1000),
                      "end": int(time.time() * 1000), "first_call_ms": first_call_ms}),
          flush=True)


if __name__ == "__main__":
    main()
