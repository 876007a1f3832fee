"""A real OCI registry on loopback with basic auth: the stand-in for ACR in the push tests.

Debian's ``docker-registry`` (the CNCF distribution registry) with an htpasswd file made by ``htpasswd -B``
(bcrypt, which the registry requires); ``.ci/run`` installs both. Each test session starts its own instance on
a free 127.0.0.1 port with its own storage and log, so a test can count what reached the registry. dockerd
talks plain HTTP to 127.0.0.0/8 registries without any configuration. Missing binaries skip the tests on a
laptop and fail them in CI.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils"}
CONFIG = """version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: {address}
auth:
  htpasswd:
    realm: amltrain-test
    path: {htpasswd}
"""
READ_ONLY = """  maintenance:
    readonly:
      enabled: true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalRegistry:
    address: str
    users: dict[str, str]
    log: Path
    process: subprocess.Popen

    def requests_matching(self, pattern: str) -> int:
        """How many requests in the access log match ``pattern`` (e.g. blob upload starts)."""
        return len(re.findall(pattern, self.log.read_text(errors="replace")))

    def blob_uploads(self) -> int:
        return self.requests_matching(r'"POST /v2/[^ ]+/blobs/uploads/')

    def manifest_digest(self, repository: str, tag: str) -> str:
        user, password = next(iter(self.users.items()))
        request = urllib.request.Request(f"http://{self.address}/v2/{repository}/manifests/{tag}", method="HEAD")
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        request.add_header("Accept", "application/vnd.docker.distribution.manifest.v2+json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.headers.get("Docker-Content-Digest", "")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return ""
            raise


def binaries_or_skip() -> dict[str, str]:
    found = {name: shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else "")
             for name in BINARIES}
    missing = [f"{name} (Debian package {BINARIES[name]})" for name, path in found.items() if not path]
    if missing:
        message = f"a local registry needs {', '.join(missing)}: apt-get install docker-registry apache2-utils"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def start(folder: Path, users: dict[str, str], read_only: bool = False) -> LocalRegistry:
    """``read_only``: the registry refuses every upload (its maintenance mode), answering everything else."""
    found = binaries_or_skip()
    folder.mkdir(parents=True, exist_ok=True)
    entries = [subprocess.run([found["htpasswd"], "-Bbn", user, password], check=True, capture_output=True,
                              text=True).stdout.strip() for user, password in users.items()]
    (folder / "htpasswd").write_text("\n".join(entries) + "\n")
    address = f"127.0.0.1:{free_port()}"
    config = CONFIG.format(root=folder / "data", address=address, htpasswd=folder / "htpasswd")
    if read_only:
        config = config.replace(f"    rootdirectory: {folder / 'data'}\n",
                                f"    rootdirectory: {folder / 'data'}\n{READ_ONLY}")
    (folder / "config.yml").write_text(config)
    log = folder / "registry.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([found["docker-registry"], "serve", str(folder / "config.yml")],
                                   stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"docker-registry exited {process.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=2)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # up, and asking for credentials
                return LocalRegistry(address, users, log, process)
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"docker-registry did not answer on {address}: {log.read_text()[-2000:]}")


def stop(registry: LocalRegistry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.process.kill()


class DroppingProxy:
    """A loopback TCP proxy in front of a registry that drops one connection, once: the first whose request
    bytes match ``pattern`` (e.g. the push's manifest PUT), closed before that request reaches the registry, as
    a network that fails mid-push would. Everything else is passed through untouched; on 127.0.0.1, dockerd
    talks plain HTTP to it as it does to the registry."""

    def __init__(self, upstream: str, pattern: bytes):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.pattern = re.compile(pattern)
        self.dropped = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source, sink, requests: bool) -> None:
        seen = b""  # the end of what came before, for a match split between two reads
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if requests:
                    window, seen = seen + data, (seen + data)[-512:]
                    with self._lock:
                        drop = not self.dropped and self.pattern.search(window) is not None
                        self.dropped += drop
                    if drop:
                        break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side gone: so is the other, as with a lost connection
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
