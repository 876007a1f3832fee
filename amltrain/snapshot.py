"""The source-directory snapshot: what Azure ML uploads for a run, made the same way for local runs.

Azure ML copies ``source_directory`` minus what ``.amlignore`` excludes (gitignore syntax; when there is
no ``.amlignore``, ``.gitignore`` is used), refuses snapshots over 300 MB or 2,000 files, and gives the
script a writable copy as its working directory. Local runs get exactly that copy, so a file the
cloud would not see is not seen locally either.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from .errors import ToolkitError

MAX_FILES = 2000
MAX_BYTES = 300 * 1024 * 1024
ALWAYS_IGNORED = (".git/",)


def ignore_file(source_dir: Path) -> Path | None:
    """The file whose rules apply: ``.amlignore``, else ``.gitignore``, else none."""
    return next((source_dir / n for n in (".amlignore", ".gitignore") if (source_dir / n).is_file()), None)


def ignore_patterns(source_dir: Path) -> list[str]:
    path = ignore_file(source_dir)
    if path is None:
        return list(ALWAYS_IGNORED)
    try:
        return [*ALWAYS_IGNORED, *path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"cannot read {path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}",
                           "it must be a readable UTF-8 text file of gitignore patterns") from None


def present(path: Path, check=Path.exists) -> bool:
    """``path.exists()`` (or ``is_file``, ``is_dir``) that takes a name the system refuses (too long, not
    searchable) as not there, instead of raising: the paths checked come from users."""
    try:
        return check(path)
    except OSError:
        return False


def script_path(source_dir: Path, script: str) -> str:
    """The job's script as the snapshot names it (relative, POSIX); refused when it is not inside the source
    directory, which is all Azure ML uploads. Both backends take the script from here."""
    path = Path(os.path.normpath(source_dir / os.path.expanduser(script)))
    if not path.is_relative_to(source_dir):
        raise ToolkitError(f"script {script} is outside the source directory {source_dir}",
                           "Azure ML uploads only job.source_dir: move the script into it, or set job.source_dir "
                           "to a folder that holds it")
    if not present(path, Path.is_file):
        raise ToolkitError(f"script {script} not found in source directory {source_dir}",
                           "the script path is relative to job.source_dir")
    return path.relative_to(source_dir).as_posix()


def check_script(source_dir: Path, script: str, names: tuple[str, ...]) -> None:
    """The script must be in the snapshot (``files``): what an ignore file excludes never reaches a cluster, so
    neither backend runs it."""
    if script and script not in names:
        rules = ignore_file(source_dir)
        raise ToolkitError(f"script {script} is excluded from the snapshot by {rules or 'the ignore rules'}",
                           f"Azure ML would not upload it either; change {rules.name if rules else 'the rules'}")


def files(source_dir: Path) -> tuple[str, ...]:
    """Relative POSIX paths of the files in the snapshot, sorted."""
    import pathspec

    patterns = ignore_patterns(source_dir)
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    # Skipping ignored folders keeps a walk past .venv/ or data/ fast; with negations ("!x") a file
    # inside an ignored folder's pattern may come back, so then every file is matched on its own.
    prune = not any(p.strip().startswith("!") for p in patterns)
    kept = []
    for top, dirs, names in os.walk(source_dir):
        rel_top = Path(top).relative_to(source_dir).as_posix()
        prefix = "" if rel_top == "." else rel_top + "/"
        dirs[:] = sorted(d for d in dirs if not (prune and spec.match_file(prefix + d + "/")) and d != ".git")
        kept.extend(prefix + n for n in sorted(names) if not spec.match_file(prefix + n))
    return tuple(sorted(kept))


def check_limits(source_dir: Path, names: tuple[str, ...]) -> int:
    """Refuse what Azure ML would refuse, before anything runs. Returns the snapshot size in bytes."""
    size = sum((source_dir / n).lstat().st_size for n in names)
    if len(names) > MAX_FILES or size > MAX_BYTES:
        raise ToolkitError(
            f"snapshot of {source_dir} has {len(names)} files, {size / 2**20:.1f} MB; "
            f"Azure ML allows {MAX_FILES} files and {MAX_BYTES // 2**20} MB",
            "exclude data, outputs and environments in .amlignore; pass data as --input")
    return size


def content_hash(source_dir: Path, names: tuple[str, ...]) -> str:
    """sha256 over the snapshot's file names and bytes: the identity of a baked code image."""
    digest = hashlib.sha256()
    for name in names:
        data = (source_dir / name).read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def reroot(archive: bytes, old_root: str, target: str, uid: int, gid: int) -> bytes:
    """The same files under ``target`` and owned by uid:gid: a snapshot taken out of an image, for a run."""
    old, new = old_root.strip("/"), target.strip("/")
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            if member.name != old and not member.name.startswith(old + "/"):
                continue
            member.name = new + member.name[len(old):]
            member.uid, member.gid, member.uname, member.gname = uid, gid, "", ""
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def tar_archive(source_dir: Path, names: tuple[str, ...], target: str, uid: int, gid: int,
                extra: dict[str, bytes] | None = None) -> bytes:
    """A tar of the snapshot rooted at ``target``, owned by uid:gid so the run can write in its copy;
    ``extra`` files (a Dockerfile) go at the top, beside ``target``."""
    buffer = io.BytesIO()

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    root = target.strip("/")
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        top = tarfile.TarInfo(root)
        top.type, top.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(owned(top))
        dirs_added = set()
        for name in names:
            parts = name.split("/")
            for depth in range(1, len(parts)):
                sub = "/".join(parts[:depth])
                if sub not in dirs_added:
                    dirs_added.add(sub)
                    tar.add(source_dir / sub, arcname=f"{root}/{sub}", recursive=False, filter=owned)
            tar.add(source_dir / name, arcname=f"{root}/{name}", recursive=False, filter=owned)
    return buffer.getvalue()


def files_archive(target: str, files: dict[str, bytes], uid: int, gid: int) -> bytes:
    """A tar of a few in-memory files in folder ``target``, readable by uid:gid only."""
    buffer = io.BytesIO()
    root = target.strip("/")
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        top = tarfile.TarInfo(root)
        top.type, top.mode, top.uid, top.gid = tarfile.DIRTYPE, 0o700, uid, gid
        tar.addfile(top)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
