"""A TCP proxy that delays every byte by a fixed time each way: mounts "on
other hosts" for the contention case (bench/contention.py), on a machine
whose kernel has no netem qdisc (`tc qdisc add ... netem` answers "Specified
qdisc kind is unknown").

    python -m bench.delayproxy LISTEN_PORT TARGET_PORT DELAY_MS

listens on 127.0.0.1:LISTEN_PORT and forwards each connection to
127.0.0.1:TARGET_PORT; bytes read from either side are written to the other
DELAY_MS later, in order (one queue and one writer task per direction), so a
request-response round trip costs 2 x DELAY_MS more. Prints "ready" once
listening; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: collections.deque = collections.deque()
    ready = asyncio.Event()
    done = False

    async def send() -> None:
        while True:
            while not queue:
                if done:
                    writer.close()
                    return
                ready.clear()
                await ready.wait()
            due, data = queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            queue.append((loop.time() + delay, data))
            ready.set()
    except ConnectionError:
        pass
    finally:
        done = True
        ready.set()
        try:
            await sender
        except ConnectionError:
            pass


async def main(listen: int, target: int, delay_ms: float) -> None:
    delay = delay_ms / 1000

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(_pipe(cr, sw, delay), _pipe(sr, cw, delay), return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
