"""Run the fake server until interrupted: `python -m ferrobatch.testing --port 8000`.

It prints one line, `ferrobatch fake server: http://127.0.0.1:PORT`, once it is listening.
"""

from __future__ import annotations

import argparse
import signal
import threading

from ferrobatch.testing import FakeServer


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m ferrobatch.testing", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    p.add_argument("--dimensions", type=int, default=1536)
    p.add_argument("--api-key", default=None, help="require this key")
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        dimensions=args.dimensions,
        api_key=args.api_key,
    ) as server:
        print(f"ferrobatch fake server: {server.url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
