"""`PostgresServer`: a throwaway PostgreSQL on a free loopback port, for tests of job stores
shared by workers on many hosts. It runs the installed `initdb` and `pg_ctl` (Debian package
`postgresql`) on a data directory in a temporary directory (trust authentication, no fsync),
and is stopped and removed on exit. Run as root, the server runs as the `postgres` user the
Debian package creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

from ferrobatch.testing._service import Service, free_port

__all__ = ["PostgresServer", "PostgresUnavailable"]

_PACKAGE = "Debian package: postgresql"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def _bin_dir() -> str:
    found = shutil.which("pg_ctl")
    if found is not None:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailable(f"initdb and pg_ctl are not installed ({_PACKAGE})")
    return os.path.dirname(versions[-1])


class PostgresServer(Service):
    """`with PostgresServer() as pg: JobStore(pg.create_database())`.

    `stop()` shuts it down at once (an outage, as clients see one) and `start()` brings it
    back on the same port with the same data.
    """

    def __init__(self) -> None:
        self._bin = _bin_dir()
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    f"running as root needs the postgres user ({_PACKAGE})"
                ) from None
            self._as = ["runuser", "-u", "postgres", "--"]
        self._dir = tempfile.mkdtemp(prefix="ferrobatch-pg-")
        if self._as:
            shutil.chown(self._dir, "postgres", "postgres")
        self.data = os.path.join(self._dir, "data")
        self.port = free_port()
        self.user = "ferrobatch"
        self._run(
            "initdb",
            "-D",
            self.data,
            "-U",
            self.user,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start()

    def _run(self, tool: str, *args: str) -> str:
        out = subprocess.run(
            [*self._as, os.path.join(self._bin, tool), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    @property
    def dsn(self) -> str:
        """`postgresql://ferrobatch@127.0.0.1:PORT/postgres`."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def create_database(self) -> str:
        """A new empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        opts = f"-p {self.port} -h 127.0.0.1 -k {self._dir} -F"
        log = os.path.join(self._dir, "server.log")
        self._run("pg_ctl", "start", "-w", "-t", "30", "-D", self.data, "-o", opts, "-l", log)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Shut it down at once (`pg_ctl stop -m immediate`)."""
        try:
            self._run("pg_ctl", "stop", "-w", "-D", self.data, "-m", "immediate")
        except RuntimeError:
            pass  # not running

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
