"""The reference servers the mirror is measured against: nginx (the physical limit) and olah (the peer).

Each is a child process of the harness, bound to 127.0.0.1 on a free port, stopped by the harness.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from testbed.mirror_server import free_port

OLAH_VENV = Path(os.environ.get("BENCH_OLAH_VENV", Path.home() / ".cache" / "hub-mirror-bench" / "olah-venv"))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class Nginx:
    """nginx in the foreground (`daemon off`) with sendfile, serving files from `root / "www"`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.www = root / "www"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()

    def start(self) -> Nginx:
        self.www.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name
        tmp = self.root / "tmp"
        conf = self.root / "nginx.conf"
        conf.write_text(
            f"""
daemon off;
{"user " + user + ";" if os.getuid() == 0 else ""}
worker_processes auto;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.www};
        location / {{ }}
    }}
}}
"""
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.root), "-c", str(conf), "-e", str(self.root / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)  # graceful: the master waits for its workers

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


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
