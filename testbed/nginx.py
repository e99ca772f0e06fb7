"""nginx in the foreground with a generated config: a static file server (bench) or a load balancer in front of
several mirror replicas (tests/test_load_balancer.py).

Each nginx is a child process bound to 127.0.0.1 on a free port, with its config, pid file, logs and temp
directories under a folder of its own, and stopped by the harness that started it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from testbed.mirror_server import free_port


def nginx_binary() -> str | None:
    """The nginx executable (Debian installs it in /usr/sbin, often not on a user's PATH), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


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


class NginxProcess:
    """nginx with `daemon off`; subclasses write what goes inside its `http` block (`http_config`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return nginx_binary() is not None

    def http_config(self) -> str:
        raise NotImplementedError

    def config(self) -> str:
        tmp = self.root / "tmp"
        # As root, nginx's workers would switch to `nobody`, who cannot read the files under root.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.getuid() == 0 else ""
        return f"""
daemon off;
{user}
worker_processes auto;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{self.http_config()}
}}
"""

    def start(self) -> NginxProcess:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.root), "-c", str(conf), "-e", str(self.root / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, self.proc)
        return self

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)  # graceful: the master waits for its workers

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class StaticNginx(NginxProcess):
    """nginx serving files from `root / "www"` with sendfile: the physical limit the bench compares with."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.www = root / "www"

    def start(self) -> StaticNginx:
        self.www.mkdir(parents=True, exist_ok=True)
        super().start()
        return self

    def http_config(self) -> str:
        return f"""
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.www};
        location / {{ }}
    }}
"""


# The access log of the load balancer: which replica answered, and every replica tried on the way.
ACCESS_FORMAT = (
    "log_format balancer '$request_method $request_uri $status $body_bytes_sent '\n"
    "                        'upstream=$upstream_addr upstream_status=$upstream_status rt=$request_time';"
)


def balancer_config(listen: str, replicas: list[str], *, fail_timeout: int = 2) -> str:
    """The `http`-level config of nginx in front of mirror replicas (the example in docs/deploy.md).

    `replicas` are `host:port` of each `hub-mirror serve`; `listen` is nginx's own address.
    """
    servers = "\n".join(f"        server {r} max_fails=1 fail_timeout={fail_timeout}s;" for r in replicas)
    return f"""
    upstream hub_mirror {{
{servers}
        keepalive 32;                   # idle connections kept open to the replicas, per worker
    }}
    server {{
        listen {listen};
        client_max_body_size 1m;        # clients only send small JSON bodies (paths-info, admin)

        proxy_http_version 1.1;         # keep-alive to the replicas ...
        proxy_set_header Connection ""; # ... so do not forward the client's "Connection: close"
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;

        # Stream: each byte goes on as it arrives (memory bounded per connection, clients following
        # a fill get its bytes at once); never spool multi-GB files to nginx's disk.
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_max_temp_file_size 0;

        # Replica down or restarting (connection refused or reset before an answer), stuck, or
        # answering 502/503: the request goes to the next replica. GET and HEAD are idempotent,
        # so this is always safe for them; nginx never retries once a response has begun.
        proxy_next_upstream error timeout http_502 http_503;
        proxy_next_upstream_tries 3;
        proxy_next_upstream_timeout 60s;
        proxy_connect_timeout 2s;
        # A client may wait while a replica fetches a file's first bytes, and downloads last long.
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;

        location / {{
            proxy_pass http://hub_mirror;
        }}
        # paths-info is a POST that only reads, so it may be retried like a GET. Other POSTs (the
        # admin API) change state: they go to a second replica only when the first never got them.
        location ~ ^/api/[^/]+/.+/paths-info/ {{
            proxy_pass http://hub_mirror;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
        }}
    }}
"""


class LoadBalancer(NginxProcess):
    """nginx round-robin over mirror replicas (`host:port` each), with an access log of who answered."""

    def __init__(self, root: Path, replicas: list[str], *, fail_timeout: int = 2) -> None:
        super().__init__(root)
        self.replicas = replicas
        self.fail_timeout = fail_timeout

    def start(self) -> LoadBalancer:
        super().start()
        return self

    def http_config(self) -> str:
        listen = f"127.0.0.1:{self.port}"
        access = f"    {ACCESS_FORMAT}\n    access_log {self.root}/access.log balancer;\n"
        return access + balancer_config(listen, self.replicas, fail_timeout=self.fail_timeout)

    def access_log(self) -> list[str]:
        path = self.root / "access.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []
