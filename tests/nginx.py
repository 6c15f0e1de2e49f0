"""A real nginx for deployment tests, configured from ``docs/deployment.md``.

``docs_site_config()`` extracts the nginx configuration the deployment guide
shows (the ```` ```nginx ```` block after the ``<!-- tested-nginx-config -->``
marker), and ``site_config()`` points it at a test server: the upstream port,
the listen ports, a throw-away certificate and static directory. Each
substitution must match exactly once, so a change to the documented config
that the test can't follow fails loudly instead of testing something else.

``run_nginx()`` runs nginx in the foreground (``daemon off``) with a generated
main config in a temporary directory (``-p``/``-c``, error log there too).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_program
from tests.servers import ROOT, wait_for_port

NGINX = "/usr/sbin/nginx"
DOC = ROOT / "docs" / "deployment.md"
MARKER = "<!-- tested-nginx-config -->"


def require_nginx() -> None:
    require_program(NGINX, "apt-get install -y nginx")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together while chosen, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def docs_site_config() -> str:
    """The nginx config block of the deployment guide, verbatim."""
    text = DOC.read_text()
    found = re.search(re.escape(MARKER) + r"\s*```nginx\n(.*?)```", text, re.DOTALL)
    if found is None:
        raise AssertionError(f"{DOC} has no ```nginx block after {MARKER}")
    return found.group(1)


def _substitute(config: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, config, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"the documented nginx config should match {pattern!r} once, matched {count} times")
    return new


@dataclass
class Site:
    directory: Path
    http_port: int
    https_port: int
    certificate: Path
    static_root: Path


def make_site(directory: Path) -> Site:
    """Ports, a self-signed certificate for 127.0.0.1 and a static directory under ``directory``.

    The key is ECDSA P-256, what certbot issues by default (since 2.0): an RSA-2048 handshake costs
    nginx ~10x the CPU, which the flood tests would measure instead of the limits.
    """
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    static_root = directory / "static"
    static_root.mkdir()
    http_port, https_port = free_ports(2)
    return Site(directory, http_port, https_port, certificate, static_root)


def site_config(site: Site, upstream_port: int, config: str | None = None) -> str:
    """The documented config (or ``config``) aimed at ``upstream_port`` and ``site``'s ports and files."""
    config = docs_site_config() if config is None else config
    config = _substitute(config, r"^(\s*server\s+)127\.0\.0\.1:8000;", rf"\g<1>127.0.0.1:{upstream_port};")
    config = _substitute(config, r"^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{site.http_port};")
    config = _substitute(config, r"^(\s*listen\s+)443 ssl;", rf"\g<1>127.0.0.1:{site.https_port} ssl;")
    config = _substitute(config, r"^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{site.certificate};")
    config = _substitute(config, r"^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{site.directory / 'key.pem'};")
    config = _substitute(config, r"^(\s*alias\s+)/srv/chat/static/;", rf"\g<1>{site.static_root}/;")
    # The redirect to https keeps the documented port 443 out: send it to the test's https port.
    return _substitute(
        config, r"return 301 https://\$host\$request_uri;", f"return 301 https://$host:{site.https_port}$request_uri;"
    )


def with_header_timeout(config: str, timeout: str) -> str:
    """``config`` with its ``client_header_timeout`` set to ``timeout`` (tests wait less than production)."""
    return _substitute(config, r"^(\s*client_header_timeout\s+)\S+;", rf"\g<1>{timeout};")


def with_read_timeout(config: str, timeout: str) -> str:
    """``config`` with its ``proxy_read_timeout`` set to ``timeout``."""
    return _substitute(config, r"^(\s*proxy_read_timeout\s+)\S+;", rf"\g<1>{timeout};")


def without_upgrade_headers(config: str) -> str:
    """``config`` with the lines that pass the WebSocket upgrade removed: the classic mistake."""
    config = _substitute(config, r"^\s*proxy_set_header\s+Upgrade\s.*\n", "")
    return _substitute(config, r"^\s*proxy_set_header\s+Connection\s.*\n", "")


_MAIN = """\
daemon off;
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 2048; }}
http {{
    include /etc/nginx/mime.types;
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/site.conf;
}}
"""


@dataclass
class Nginx:
    site: Site
    process: subprocess.Popen[bytes]

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.site.https_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.site.https_port}"

    @property
    def error_log(self) -> str:
        path = self.site.directory / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def run_nginx(site: Site, config: str) -> Iterator[Nginx]:
    """Run nginx with ``config`` as its only site for the with-block; stops it at exit."""
    require_nginx()
    directory = site.directory
    (directory / "site.conf").write_text(config)
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would run as nobody: no access to tmp
    (directory / "nginx.conf").write_text(_MAIN.format(dir=directory, user=user))
    test = subprocess.run(
        [NGINX, "-t", "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(directory / "error.log")],
        capture_output=True,
        text=True,
    )
    if test.returncode != 0:
        raise AssertionError(f"nginx rejects the config:\n{test.stderr}\n{config}")
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(directory / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    nginx = Nginx(site, process)
    try:
        wait_for_port(site.https_port, process)
        wait_for_port(site.http_port, process)
        yield nginx
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@contextlib.contextmanager
def site_directory() -> Iterator[Site]:
    """A fresh ``Site`` in a temporary directory, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="tether-nginx-"))
    try:
        yield make_site(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
