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
