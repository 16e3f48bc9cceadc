"""The services a team shares, started for a test on 127.0.0.1 and always stopped: a PostgreSQL server in a
temporary data folder, and an `mlflow server` on it that serves artifacts and can be restarted on its port."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.pipeline.smoke_project import BIN_DIR, background, free_port, wait_healthy

NOBODY = 65534  # PostgreSQL refuses to run as root: as root, its processes run as nobody


def _as_postgres_user() -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if os.getuid() == 0 else []


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), None)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install PostgreSQL (Debian: apt install postgresql)")
    return str(found)


@contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL server with an `mlflow` database; yields its SQLAlchemy URI (psycopg2 driver)."""
    folder = Path(tempfile.mkdtemp(prefix="rlhf-postgres-"))  # not under pytest's root-only tmp: nobody must reach it
    folder.chmod(0o777)
    if os.getuid() == 0:
        os.chown(folder, NOBODY, NOBODY)
    try:
        user = _as_postgres_user()
        initdb = [*user, _pg_tool("initdb"), "-D", str(folder / "data"), "-U", "mlflow", "--auth=trust", "-E", "UTF8"]
        subprocess.run(initdb, check=True, capture_output=True, cwd=folder)
        port = free_port()
        server = [*user, _pg_tool("postgres"), "-D", str(folder / "data"), "-h", "127.0.0.1", "-p", str(port)]
        with background([*server, "-k", str(folder)], folder, dict(os.environ), folder / "postgres.log") as process:
            createdb = [_pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"]
            for _ in range(60):
                if subprocess.run(createdb, capture_output=True).returncode == 0:
                    break
                assert process.poll() is None, (folder / "postgres.log").read_text()
                subprocess.run(["sleep", "0.5"])
            else:
                raise TimeoutError((folder / "postgres.log").read_text())
            yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a backend store with served artifacts; `stop` and `start` keep its port."""

    def __init__(self, backend_uri: str, folder: Path, env: dict[str, str]) -> None:
        self.backend_uri, self.folder, self.env = backend_uri, folder, env
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._running: ExitStack | None = None

    def start(self) -> None:
        command = [
            str(BIN_DIR / "mlflow"), "server", "--backend-store-uri", self.backend_uri, "--serve-artifacts",
            "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        self._running = ExitStack()
        log = self.folder / "mlflow-server.log"
        process = self._running.enter_context(background(command, self.folder, self.env, log))
        wait_healthy(f"{self.uri}/health", process, log, timeout=120)

    def stop(self) -> None:
        if self._running is not None:
            self._running.close()
            self._running = None
