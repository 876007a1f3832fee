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
