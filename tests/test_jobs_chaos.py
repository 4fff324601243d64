"""Three `ferrobatch work` processes on one PostgreSQL job, each reaching PostgreSQL through its
own loopback TCP proxy: one partitioned from the database for three leases and healed, one
SIGSTOPped for three leases and resumed, then PostgreSQL restarted (longer than a lease, as
seen by the workers). The job completes, every request ends once, no worker exits early, and
(from the fake server's log) no request is sent twice unless the partitioned or stopped
worker held it when its fault began: the restart alone re-sends nothing."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from _helpers import chat_jsonl, cli
from ferrobatch.jobs import JobStatus, JobStore
from ferrobatch.testing import FakeServer
from ferrobatch.testing.plugin import unavailable
from ferrobatch.testing.postgres import PostgresServer, PostgresUnavailable

LEASE = 2.0


class Proxy:
    """A loopback TCP proxy to `port` that can hold traffic (a partition: nothing crosses,
    connections stay open, and what was held goes through once healed, as TCP would)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.open = threading.Event()
        self.open.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def partition(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.open.set()
        self.listener.close()


def wait_for(what: str, cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_partition_sigstop_and_restart_every_request_ends_once(tmp_path: Path) -> None:
    try:
        pg = PostgresServer()
    except PostgresUnavailable as e:
        unavailable(e)
        raise
    n = 1500
    src = tmp_path / "in.jsonl"
    chat_jsonl(src, n)
    with pg, FakeServer(latency=0.05) as server:
        dsn = pg.create_database()
        sub = subprocess.run(
            cli("submit", str(src), "--store", dsn), capture_output=True, text=True
        )
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        store = JobStore(dsn)
        proxies = [Proxy(pg.port) for _ in range(3)]
        env = {**os.environ, "OPENAI_API_KEY": "k"}
        workers = []
        logs = []
        for p in proxies:
            via = dsn.replace(f":{pg.port}/", f":{p.port}/")
            log = (tmp_path / f"worker{p.port}.log").open("w")
            logs.append(log)
            args = ["--store", via, "--base-url", server.openai_base_url, "--concurrency", "2"]
            args += ["--lease-seconds", str(LEASE), "--until-idle", "--flush-interval", "0.05"]
            workers.append(subprocess.Popen(cli("work", *args), env=env, stderr=log))
        try:

            def done() -> int:
                return store.progress(job_id).done

            wait_for("the workers made no progress", lambda: done() >= n // 6)
            held: dict[str, int] = {}

            # 1. Worker 0 is cut off from PostgreSQL for three leases, then healed.
            ids_before = set(store.held_by(job_id))
            proxies[0].partition()
            time.sleep(0.3)
            held_now = store.held_by(job_id)
            time.sleep(3 * LEASE)
            # Its registration lapsed: its requests went back to the others.
            gone = ids_before - set(store.held_by(job_id))
            held.update({r: held_now.get(r, 0) for r in gone})
            proxies[0].heal()
            wait_for("no progress after the heal", lambda: done() >= n // 3)

            # 2. Worker 1 is stopped for three leases, then resumed.
            before = store.held_by(job_id)
            os.kill(workers[1].pid, signal.SIGSTOP)
            time.sleep(0.1)
            held_now = store.held_by(job_id)
            time.sleep(3 * LEASE)
            gone = set(before) - set(store.held_by(job_id))
            held.update({r: held_now.get(r, 0) for r in gone})
            os.kill(workers[1].pid, signal.SIGCONT)
            wait_for("no progress after SIGCONT", lambda: done() >= n // 2)

            # 3. PostgreSQL restarted: every worker is cut off at once, but leases count from
            # the database's start, so nobody's claims are taken over for it.
            pg.stop()
            time.sleep(2 * LEASE)  # longer than a lease
            pg.start()

            for w in workers:
                assert w.wait(timeout=180) == 0
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            for p in proxies:
                p.close()
            for log in logs:
                log.close()
        assert store.job(job_id).status is JobStatus.COMPLETED
        p = store.progress(job_id)
        assert (p.succeeded, p.failed, p.cancelled) == (n, 0, 0)
        results = store.results(job_id)
        assert len(results) == n and all(r.ok for r in results)
        sent = collections.Counter(
            r["body"]["messages"][-1]["content"] for r in server.requests("/chat/completions")
        )
        assert set(sent) == {f"item {i}" for i in range(n)}
        twice = sum(sent.values()) - n
        # Only what a faulted worker held when its fault began may have gone out twice.
        assert twice <= sum(held.values()), (twice, held)
        outages = "".join((tmp_path / f"worker{p.port}.log").read_text() for p in proxies)
        print(f"sent twice: {twice}; held at the faults: {held}")
        assert "waiting it out" in outages
