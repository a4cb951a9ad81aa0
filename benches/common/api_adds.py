#!/usr/bin/env python3
"""Adds LUNs through the management API, all at once, and times each add.

    api_adds.py SOCKET IQN PARALLEL BACKING...

Sends one `POST /v1/targets/IQN/luns` with body {"backing": BACKING} per BACKING over the Unix
socket SOCKET (HTTP/1.1, one connection per request), at most PARALLEL in flight. Prints one
line per request to stdout, in the order given:

    start_unix end_unix latency_ms http_status lun

latency is from just before connecting to the last byte of the answer (the server answers 201
only once the LUN is open and serving); http_status is 0 and lun "-" when the request failed
before an answer (the error goes to stderr). A last line `# client_cpu_s N` gives the CPU
seconds this client used (user + system), interpreter start included. Used by
benches/control-plane.sh.
"""

import asyncio
import json
import resource
import sys
import time


async def add(sock, iqn, backing, gate):
    body = json.dumps({"backing": backing}).encode()
    request = (
        f"POST /v1/targets/{iqn}/luns HTTP/1.1\r\n"
        "Host: localhost\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    async with gate:
        start_unix, start = time.time(), time.perf_counter()
        status, lun = 0, "-"
        try:
            reader, writer = await asyncio.open_unix_connection(sock)
            writer.write(request)
            await writer.drain()
            answer = await reader.read()  # the server closes after the answer
            writer.close()
            head, _, payload = answer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status == 201:
                lun = str(json.loads(payload)["lun"])
            else:
                print(f"api_adds.py: {backing}: {status} {payload[:300]!r}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - reported and counted as a failure
            print(f"api_adds.py: {backing}: {e!r}", file=sys.stderr)
        end = time.perf_counter()
    return f"{start_unix:.6f} {start_unix + (end - start):.6f} {(end - start) * 1000:.3f} {status} {lun}"


async def main():
    sock, iqn, parallel, *backings = sys.argv[1:]
    gate = asyncio.Semaphore(int(parallel))
    lines = await asyncio.gather(*(add(sock, iqn, b, gate) for b in backings))
    print("\n".join(lines))
    used = resource.getrusage(resource.RUSAGE_SELF)
    print(f"# client_cpu_s {used.ru_utime + used.ru_stime:.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(main())
