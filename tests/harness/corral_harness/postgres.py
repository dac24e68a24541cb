"""A real PostgreSQL server for the cluster tests: Debian's binaries, `initdb` into a temporary
folder and `pg_ctl` on a loopback port, run as an unprivileged user when the suite runs as root
(PostgreSQL refuses to run as root). Password authentication (SCRAM) as in a real deployment."""
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from corral_harness.corral import free_port

PASSWORD = "corral-test-password"


def binaries() -> str | None:
    """The folder of initdb/pg_ctl: Debian's versioned folder, else PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Postgres:
    def __init__(self):
        bindir = binaries()
        if bindir is None:
            if os.environ.get("CI") == "true":
                pytest.fail("PostgreSQL is missing under CI (make test-system installs it)")
            pytest.skip("PostgreSQL not installed")
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="corral-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = free_port()
        self.user = "corral"
        self.database = "corral"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "nobody", "--"]
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD)
        if self.as_user:
            os.chown(pwfile, pwd.getpwnam("nobody").pw_uid, -1)
        self.run("initdb", "-D", self.data, "-U", self.user, "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        for attempt in range(3):
            try:
                self.start()
                break
            except subprocess.CalledProcessError:
                # Another process (another test run) took the port after free_port(): another one.
                taken = os.path.exists(self.log) and "already in use" in open(self.log).read()
                if not taken or attempt == 2:
                    raise
                self.port = free_port()
        subprocess.run([f"{bindir}/psql" if os.path.exists(f"{bindir}/psql") else "psql", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", self.user, "-d", "postgres", "-c", f"CREATE DATABASE {self.database}"],
                       check=True, capture_output=True, env={**os.environ, "PGPASSWORD": PASSWORD})

    def run(self, tool: str, *args: str):
        subprocess.run(self.as_user + [f"{self.bindir}/{tool}", *args], check=True, capture_output=True, cwd=self.root)

    def start(self):
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "start", "-o",
                 f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200")

    def stop(self, mode: str = "fast"):
        self.run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self):
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-m", "fast", "-w", "-t", "30", "restart", "-o",
                 f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200")

    @property
    def url(self) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def query(self, sql: str) -> str:
        psql = f"{self.bindir}/psql" if os.path.exists(f"{self.bindir}/psql") else "psql"
        return subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", self.database, "-At", "-c", sql],
                              check=True, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": PASSWORD}).stdout.strip()

    def close(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
