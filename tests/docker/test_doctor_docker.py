"""`invoke doctor` against the real engine: all well with CI's settings; a base nobody can pull fails it."""

from __future__ import annotations

from amltrain import doctor
from tests.docker.conftest import invoke


def test_doctor_passes_where_the_configured_targets_can_build(docker_client):
    result = invoke("doctor", timeout=300)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(line.startswith("[  ok] docker engine: reachable, version ") for line in lines), result.stdout
    assert any(line.startswith("[  ok] base image (cpu)") for line in lines), result.stdout


def test_a_base_that_cannot_be_pulled_fails_doctor_with_the_fix(docker_client):
    base = "127.0.0.1:9/amltrain/no-such-base:1"  # port 9 (discard): nothing answers there
    result = invoke("doctor", env={"INVOKE_IMAGES_CPU_BASE_IMAGE": base}, timeout=300)
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "base image (cpu)" in line)
    assert line.startswith("[FAIL]") and "registry unreachable" in line and "invoke standin-base" in line


def test_the_engine_client_builds_with_buildkit_the_configured_cli():
    assert doctor.buildkit_check("/usr/bin/docker").status == doctor.OK
    assert doctor.buildkit_check("/nonexistent/docker").status == doctor.FAIL


def test_a_tag_its_registry_does_not_have_is_named_as_such(docker_client, tmp_path):
    """A real registry (Debian's docker-registry, no auth, on loopback) that answers: no such manifest."""
    import subprocess
    import time
    import urllib.request

    from .local_registry import binaries_or_skip, free_port

    binary = binaries_or_skip()["docker-registry"]
    address = f"127.0.0.1:{free_port()}"
    (tmp_path / "config.yml").write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
                                         f"http:\n  addr: {address}\n")
    registry = subprocess.Popen([binary, "serve", str(tmp_path / "config.yml")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        base = f"{address}/amltrain/no-such-base:20990101"
        result = invoke("doctor", env={"INVOKE_IMAGES_CPU_BASE_IMAGE": base}, timeout=300)
    finally:
        registry.terminate()
        registry.wait(timeout=10)
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "base image (cpu)" in line)
    assert line.startswith(f"[FAIL] base image (cpu): tag {base} does not exist in its registry"), line
    assert "choose a tag that exists in images.cpu.base_image" in line
