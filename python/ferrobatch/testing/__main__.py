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
    p.add_argument(
        "--error-style",
        choices=["openai", "pydantic"],
        default="openai",
        help="answer errors as OpenAI does, or as a FastAPI/pydantic server does",
    )
    args = p.parse_args()
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    if hasattr(signal, "pthread_sigmask"):
        # Block the signals and wait for one in the kernel: the server exits the moment one
        # arrives, whatever the main thread was doing.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with FakeServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        dimensions=args.dimensions,
        api_key=args.api_key,
        error_style=args.error_style,
    ) as server:
        print(f"ferrobatch fake server: {server.url}", flush=True)
        if hasattr(signal, "sigwait"):
            signal.sigwait(stop_signals)
        else:  # pragma: no cover - Windows
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                while not stop.wait(0.2):
                    pass
            except KeyboardInterrupt:
                pass


if __name__ == "__main__":
    main()
