"""The reference servers the mirror is measured against: nginx (the physical limit) and olah (the peer).

Each is a child process of the harness, bound to 127.0.0.1 on a free port, stopped by the harness.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType

from testbed.mirror_server import free_port
from testbed.nginx import StaticNginx, stop_process, wait_port

OLAH_VENV = Path(os.environ.get("BENCH_OLAH_VENV", Path.home() / ".cache" / "hub-mirror-bench" / "olah-venv"))


# nginx, the physical limit: sendfile from a folder (testbed/nginx.py, shared with the load-balancer tests).
Nginx = StaticNginx


def ensure_olah() -> Path | None:
    """olah-cli from its own venv (never the project's), created on first use; None if it cannot be had."""
    cli = OLAH_VENV / "bin" / "olah-cli"
    if cli.exists():
        return cli
    try:
        OLAH_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(OLAH_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(OLAH_VENV / "bin" / "pip"), "install", "-q", "olah"], check=True, timeout=600, capture_output=True
        )
    except (subprocess.SubprocessError, OSError) as error:
        print(f"olah unavailable: {error}", file=sys.stderr)
        return None
    return cli if cli.exists() else None


class Olah:
    """olah-cli pointed at the emulator (hub and CDN origins) as its upstream, with its own cache dir."""

    def __init__(self, cli: Path, hub_url: str, cdn_url: str, root: Path) -> None:
        self.cli = cli
        self.hub_url = hub_url
        self.cdn_url = cdn_url
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Olah:
        self.root.mkdir(parents=True, exist_ok=True)
        netloc = f"127.0.0.1:{self.port}"
        args = [
            str(self.cli),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--hf-scheme",
            "http",
            "--hf-netloc",
            self.hub_url.split("//", 1)[1],
            "--hf-lfs-netloc",
            self.cdn_url.split("//", 1)[1],
            "--mirror-scheme",
            "http",
            "--mirror-netloc",
            netloc,
            "--mirror-lfs-netloc",
            netloc,
            "--repos-path",
            str(self.root / "repos"),
            "--log-path",
            str(self.root / "logs"),
        ]
        with (self.root / "olah.log").open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> Olah:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
