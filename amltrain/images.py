"""Content-addressed training images: the tag is a hash of everything that determines the image.

``build_request`` is pure (what ``invoke build --dry-run`` prints); ``build`` skips all work when the
tag already exists, otherwise drives ``docker build`` through the CLI, because BuildKit's secret and
cache mounts are not available through docker-py's classic builder. Proxy and mirror settings travel
as BuildKit secrets, so they never reach a layer, a build arg or ``docker history``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import engine, snapshot
from .errors import ToolkitError, cut
from .masking import mask_url_credentials
from .spec import BuildSettings, ImageSpec

STAGE = "deps"
# Files the Dockerfiles bind-mount into the dependency step: they determine the image as much as the spec.
HELPERS = ("conda/install-deps.sh", "image-helpers/install-horovod.sh", "amltrain/condaspec.py")
CONTENT_LABEL = "amltrain.content-hash"
# The Dockerfiles bind-mount this context folder into the install step; build.wheelhouse is linked into it.
WHEELHOUSE = ".wheelhouse"
WHEELHOUSE_IN_BUILD = "/tmp/amltrain/wheelhouse"
WHEEL_SUFFIXES = (".whl", ".tar.gz", ".zip")
# Where `invoke build --bake` puts the source-directory snapshot in a code image.
CODE_ROOT = "/opt/amltrain/code"
CODE_BASE_ID_LABEL = "amltrain.code-base-id"
# What Azure ML runs. Not part of the content hash: every image ever built here is for it, so the tags of images
# built before the flag was passed stay valid (an older image of another architecture is rebuilt, see ``build``).
PLATFORM = "linux/amd64"


def build_args(spec: ImageSpec) -> dict[str, str]:
    return {
        "BASE_IMAGE": spec.base_image,
        "CONDA_SPEC": spec.conda_spec.relative_to(spec.context).as_posix(),
        "TORCH_INDEX_URL": spec.torch_index_url,
        "SYSTEM_PACKAGES": " ".join(spec.system_packages),
        "HOROVOD_VERSION": spec.horovod_version,
        "HOROVOD_SHA256": spec.horovod_sha256,
        "HOROVOD_GPU_OPERATIONS": spec.horovod_gpu_operations,
    }


def content_hash(spec: ImageSpec) -> str:
    """sha256 over the Dockerfile, the conda spec, the build helpers, the base reference and the build args."""
    digest = hashlib.sha256()

    def feed(name: str, data: bytes) -> None:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)

    feed("dockerfile", spec.dockerfile.read_bytes())
    feed("conda", spec.conda_spec.read_bytes())
    for helper in HELPERS:
        feed(helper, (spec.context / helper).read_bytes())
    feed("stage", STAGE.encode())
    for key, value in sorted(build_args(spec).items()):
        feed(f"arg:{key}", value.encode())
    return digest.hexdigest()


def image_ref(spec: ImageSpec) -> str:
    return f"{spec.repository}:{spec.target}-{content_hash(spec)[:12]}"


def pip_conf(settings: BuildSettings) -> str:
    """pip's configuration for the build (a secret: mirror URLs may carry credentials)."""
    lines = []
    find_links = settings.pip_find_links + ((WHEELHOUSE_IN_BUILD,) if settings.wheelhouse else ())
    if settings.pip_index_url:
        lines.append(f"index-url = {settings.pip_index_url}")
    for key, values in (("extra-index-url", settings.pip_extra_index_urls),
                        ("find-links", find_links),
                        ("trusted-host", settings.pip_trusted_hosts)):
        if values:
            lines.append(f"{key} = " + "\n    ".join(values))
    return "[global]\n" + "\n".join(lines) + "\n" if lines else ""


@dataclass(frozen=True)
class BuildRequest:
    image: str
    content_hash: str
    argv: tuple[str, ...]  # SECRETS_DIR stands for a private temporary folder made at build time
    secrets: dict  # secret id -> host file, or the text written to SECRETS_DIR/<id>
    spec: ImageSpec
    wheelhouse: str = ""  # host folder linked into <context>/.wheelhouse for the build

    def render(self) -> str:
        lines = [f"image: {self.image}", f"content hash: {self.content_hash}",
                 "command: DOCKER_BUILDKIT=1 " + mask_url_credentials(" ".join(self.argv))]
        for sid, value in self.secrets.items():
            if isinstance(value, Path):
                lines.append(f"secret {sid}: file {value}")
            else:
                lines.append(f"secret {sid}: generated, masked:")
                lines.extend("    " + line for line in mask_url_credentials(value).splitlines())
        if self.wheelhouse:
            lines.append(f"wheelhouse: {self.wheelhouse} -> {WHEELHOUSE}/ in the context, "
                         f"mounted at {WHEELHOUSE_IN_BUILD}")
        return "\n".join(lines)


def build_request(spec: ImageSpec, settings: BuildSettings) -> BuildRequest:
    digest = content_hash(spec)
    image = f"{spec.repository}:{spec.target}-{digest[:12]}"
    secrets: dict = {}
    conf = pip_conf(settings)
    if conf:
        secrets["pip.conf"] = conf
    if settings.ca_bundle:
        secrets["ca-bundle"] = Path(settings.ca_bundle)
    argv = [settings.docker_cli, "build", "--progress", "plain", "--platform", PLATFORM, "--file",
            str(spec.dockerfile), "--target", STAGE, "--tag", image]
    for key, value in build_args(spec).items():
        argv += ["--build-arg", f"{key}={value}"]
    argv += ["--label", f"{CONTENT_LABEL}={digest}", "--label", f"amltrain.target={spec.target}"]
    for ref in settings.cache_from:
        argv += ["--cache-from", ref]
    for ref in settings.cache_to:
        argv += ["--cache-to", ref]
    if settings.cache_to:  # buildx builders other than the engine's own keep the image to themselves otherwise
        argv.append("--load")
    for sid, value in secrets.items():
        src = value if isinstance(value, Path) else f"SECRETS_DIR/{sid}"
        argv += ["--secret", f"id={sid},src={src}"]
    argv.append(str(spec.context))
    return BuildRequest(image=image, content_hash=digest, argv=tuple(argv), secrets=secrets, spec=spec,
                        wheelhouse=settings.wheelhouse)


def build_state(request: BuildRequest) -> str:
    """For --dry-run: whether a build would do any work (asks the engine, changes nothing)."""
    try:
        client = engine.connect()
        exists = engine.image_exists(client, request.image)
    except ToolkitError:
        return "unknown (Docker engine not reachable)"
    if exists and not on_local_base(client, request.image, request.spec.base_image):
        return f"built on an earlier {request.spec.base_image}: a build would run"
    return "built: nothing to do" if exists else "not built: a build would run"


# The steps of the Dockerfiles, as `docker history` shows them, by what their command runs.
STEP_NAMES = (("install-deps.sh", "Python dependencies"), ("install-horovod.sh", "Horovod"),
              ("SYSTEM_PACKAGES", "system packages"))


@dataclass(frozen=True)
class ImageWeight:
    """What an image weighs, and how much of it the Dockerfile's own steps add over the base."""

    total: int
    added: int | None  # None: the base is not in the local image store, so its share is unknown
    steps: tuple[tuple[str, int], ...] = ()  # the added steps that wrote data, heaviest first

    def render(self) -> str:
        line = f"size {human_size(self.total)}"
        if self.added is None:
            return line + " (the base is not in the local image store: its share is unknown)"
        parts = ", ".join(f"{name} {human_size(size)}" for name, size in self.steps)
        return line + f"; layers added over the base {human_size(self.added)}" + (f" ({parts})" if parts else "")


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def step_name(created_by: str) -> str:
    for marker, name in STEP_NAMES:
        if marker in created_by:
            return name
    return cut(" ".join(created_by.replace("/bin/sh -c #(nop)", "").split()), 40)


def image_weight(client, image: str, base: str) -> ImageWeight:
    """From the engine's layer history: the base's entries are the oldest ones of the image's."""
    built, base_image = client.images.get(image), engine.local_image(client, base)
    total = int(built.attrs.get("Size") or 0)
    if base_image is None:
        return ImageWeight(total, None)
    history = built.history()  # newest first
    own = history[: max(0, len(history) - len(base_image.history()))]
    steps = sorted(((step_name(entry.get("CreatedBy", "")), int(entry.get("Size") or 0)) for entry in own
                    if entry.get("Size")), key=lambda step: -step[1])
    return ImageWeight(total, sum(size for _, size in steps), tuple(steps))


def emulation_note(engine_arch: str) -> str:
    """The one line an engine on another architecture gets: the image is still built for Azure ML's platform."""
    if engine_arch.lower() in ("amd64", "x86_64", ""):
        return ""
    return (f"note: this Docker engine runs on {engine_arch}: building {PLATFORM} (what Azure ML runs) under "
            "emulation, which is slower")


def is_platform_image(client, ref: str) -> bool:
    """The image exists and is built for PLATFORM (one built for the host's arm64 before would not run on Azure)."""
    if not engine.image_exists(client, ref):
        return False
    attrs = client.images.get(ref).attrs
    return f"{attrs.get('Os', 'linux')}/{attrs.get('Architecture', '')}" == PLATFORM


def on_local_base(client, ref: str, base: str) -> bool:
    """Whether the image was built on the base as it is now. A base made on this machine (the stand-in) keeps its
    name when it is remade, so the name in the content hash cannot tell; its layers can. A base that is not in the
    local image store (pulled by BuildKit only, or never pulled) counts as unchanged: its tag is the contract."""
    base_image = engine.local_image(client, base)
    if base_image is None:
        return True
    base_layers = base_image.attrs.get("RootFS", {}).get("Layers", [])
    layers = client.images.get(ref).attrs.get("RootFS", {}).get("Layers", [])
    return layers[:len(base_layers)] == base_layers


def build(request: BuildRequest, *, no_cache: bool = False) -> bool:
    """Build the image unless its tag exists for PLATFORM, on the base as it is now. Returns True when it built,
    False when up to date."""
    client = engine.connect()
    if not no_cache and is_platform_image(client, request.image):
        if on_local_base(client, request.image, request.spec.base_image):
            return False
        print(f"note: {request.image} was built on an earlier {request.spec.base_image} (remade since): rebuilding",
              flush=True)
    note = emulation_note(str(client.version().get("Arch", "")))
    if note:
        print(note, flush=True)
    with tempfile.TemporaryDirectory(prefix="amltrain-secrets-") as secrets_dir:
        for sid, value in request.secrets.items():
            if not isinstance(value, Path):
                path = Path(secrets_dir, sid)
                path.write_text(value)
                path.chmod(0o600)
        argv = [a.replace("SECRETS_DIR", secrets_dir) for a in request.argv]
        if no_cache:
            argv.insert(2, "--no-cache")
        with _linked_wheelhouse(request):
            _run_build(argv, request)
    return True


@contextlib.contextmanager
def _linked_wheelhouse(request: BuildRequest):
    """Make build.wheelhouse visible in the context's .wheelhouse for the build, and only for it.

    BuildKit cannot mount a host folder outside the context; hard links cost nothing (copies across
    file systems). They are removed afterwards, whatever happens.
    """
    folder = request.spec.context / WHEELHOUSE
    folder.mkdir(exist_ok=True)
    for stale in folder.iterdir():  # left by a build that was killed before it could clean up
        if stale.name.endswith(WHEEL_SUFFIXES):
            stale.unlink()
    linked = []
    try:
        if request.wheelhouse:
            for source in sorted(Path(request.wheelhouse).iterdir()):
                if source.is_file() and source.name.endswith(WHEEL_SUFFIXES):
                    target = folder / source.name
                    try:
                        os.link(source, target)
                    except OSError:
                        shutil.copy2(source, target)
                    linked.append(target)
        yield
    finally:
        for target in linked:
            target.unlink(missing_ok=True)


def _run_build(argv: list[str], request: BuildRequest) -> None:
    env = {**os.environ, "DOCKER_BUILDKIT": "1"}
    tail: collections.deque[str] = collections.deque(maxlen=60)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                errors="replace")
    except FileNotFoundError:
        raise ToolkitError(f"docker CLI {argv[0]!r} not found", "set docker.cli to a docker client") from None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip())
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise ToolkitError(f"build of {request.image} interrupted; nothing was tagged", exit_code=130) from None
    if code != 0:
        raise diagnose_build_failure(list(tail), request, code)


def diagnose_build_failure(tail: list[str], request: BuildRequest, code: int) -> ToolkitError:
    """One line that says why the build failed and what to do."""
    text = "\n".join(tail)
    base = request.spec.base_image
    target = request.spec.target
    if "buildx component is missing" in text or "requires BuildKit" in text:
        return ToolkitError(f"docker CLI {request.argv[0]} cannot run BuildKit builds",
                            "set docker.cli (INVOKE_DOCKER_CLI) to a client with BuildKit, e.g. /usr/bin/docker")
    pull_markers = ("failed to resolve source metadata", "pull access denied", "failed to do request",
                    "no such host", "manifest unknown", "not found: manifest", "failed to authorize")
    if base in text and any(m in text for m in pull_markers) or "failed to create LLB definition" in text:
        return ToolkitError(
            f"base image {base} cannot be pulled",
            f"point the build at another base: INVOKE_IMAGES_{target.upper()}_BASE_IMAGE=IMAGE or "
            f"images.{target}.base_image in invoke.yaml (offline: `invoke standin-base`, see README)")
    # Our install script's own "error: ..." line says most; then BuildKit's error lines; then the last line.
    ours = [m.group(1) for line in tail if (m := re.match(r"#\d+ [\d.]+ (error: .*)", line))]
    errors = [line for line in tail if line.startswith("error:") or "ERROR" in line or "failed to solve" in line]
    detail = (ours or errors or tail or ["no output"])[-1]
    return ToolkitError(f"docker build of {request.image} failed (exit {code}): {cut(detail)}", exit_code=code or 1)


@dataclass(frozen=True)
class CodeBuildRequest:
    """An immutable image: the dependency image plus a snapshot of the source directory at CODE_ROOT.

    Tagged ``<dependency image>-code-<12 hex of the snapshot hash>``: unchanged code is never rebuilt.
    """

    image: str
    base: str
    source_dir: Path
    files: tuple[str, ...]
    content_hash: str
    docker_cli: str

    def dockerfile(self) -> str:
        return f"FROM {self.base}\nCOPY code/ {CODE_ROOT}/\n"

    def render(self) -> str:
        return "\n".join([f"code image: {self.image}", f"snapshot: {self.source_dir} ({len(self.files)} files) "
                          f"-> {CODE_ROOT}", "dockerfile: " + self.dockerfile().replace("\n", "; ").strip("; ")])


def code_build_request(base: str, source_dir: Path, files: tuple[str, ...], docker_cli: str) -> CodeBuildRequest:
    digest = snapshot.content_hash(source_dir, files)
    return CodeBuildRequest(image=f"{base}-code-{digest[:12]}", base=base, source_dir=source_dir, files=files,
                            content_hash=digest, docker_cli=docker_cli)


def build_code(request: CodeBuildRequest) -> bool:
    """Build the code image unless its tag exists (the dependency image must exist). True when it built."""
    client = engine.connect()
    if not engine.image_exists(client, request.base):
        raise ToolkitError(f"image {request.base} is not built", "build the dependency image first")
    base_id = client.images.get(request.base).id
    if engine.image_exists(client, request.image):
        if client.images.get(request.image).labels.get(CODE_BASE_ID_LABEL) == base_id:
            _tag(client, request.image, latest_code_ref(request.base))
            return False
        # same code, but the dependency image under that tag was rebuilt (--no-cache): bake again on it
    dockerfile = request.dockerfile().encode()
    context = snapshot.tar_archive(request.source_dir, request.files, "code", 0, 0, {"Dockerfile": dockerfile})
    argv = [request.docker_cli, "build", "--progress", "plain", "--platform", PLATFORM, "--tag", request.image,
            "--label", f"amltrain.code-hash={request.content_hash}", "--label", f"amltrain.code-base={request.base}",
            "--label", f"{CODE_BASE_ID_LABEL}={base_id}", "-"]
    result = subprocess.run(argv, input=context, capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).decode(errors="replace").splitlines() or ["no output"]
        raise ToolkitError(f"building code image {request.image} failed: {cut(lines[-1])}")
    _tag(client, request.image, latest_code_ref(request.base))
    return True


def _tag(client, image: str, ref: str) -> None:
    repository, _, tag = ref.rpartition(":")
    client.images.get(image).tag(repository, tag=tag)



def latest_code_ref(base: str) -> str:
    """A moving tag on the code image last baked on ``base``: what ``run-local --baked`` runs, even after the
    working tree has moved on (the content-addressed tag of the current tree may not exist)."""
    return f"{base}-code-latest"


def latest_code_image(base: str) -> str:
    """The content-addressed tag that ``<base>-code-latest`` points at now (resolved once, so a bake running
    meanwhile cannot change what a run uses, and request.json names the code that ran)."""
    client = engine.connect()
    ref = latest_code_ref(base)
    if not engine.image_exists(client, ref):
        raise ToolkitError(f"no code image baked on {base}", "run `invoke build --bake` first")
    tags = sorted(t for t in client.images.get(ref).tags if t.startswith(f"{base}-code-") and t != ref)
    return tags[0] if tags else ref


def stale_images(repository: str, keep: set[str]) -> list[str]:
    """Tags of ``repository`` that no current target uses: what each change of Dockerfile, spec or code
    leaves behind (content-addressed tags are never overwritten). ``keep`` holds the current references."""
    client = engine.connect()
    keep = set(keep)
    for ref in list(keep):  # a -code-latest keeps the content tag it points at
        if ref.endswith("-code-latest") and engine.image_exists(client, ref):
            keep.update(client.images.get(ref).tags)
    tags = [tag for image in client.images.list(name=repository) for tag in image.tags]
    return sorted(tag for tag in tags if tag.rpartition(":")[0] == repository and tag not in keep)


def remove_images(refs: list[str]) -> None:
    client = engine.connect()
    for ref in refs:
        client.images.remove(ref)
