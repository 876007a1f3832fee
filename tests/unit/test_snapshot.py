import io
import tarfile

import pytest

from amltrain import snapshot
from amltrain.errors import ToolkitError


@pytest.fixture
def source(tmp_path):
    for name in ("train/a.py", "train/sub/b.py", "outputs/old.pt", "data/x.bin", ".git/HEAD", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    return tmp_path


def test_amlignore_is_honoured_and_git_is_never_sent(source):
    (source / ".amlignore").write_text("outputs/\ndata/\n*.txt\n")
    assert snapshot.files(source) == (".amlignore", "train/a.py", "train/sub/b.py")


def test_gitignore_is_used_when_there_is_no_amlignore(source):
    (source / ".gitignore").write_text("data/\n")
    assert "data/x.bin" not in snapshot.files(source)
    assert "outputs/old.pt" in snapshot.files(source)


def test_amlignore_wins_over_gitignore(source):
    (source / ".gitignore").write_text("train/\n")
    (source / ".amlignore").write_text("data/\n")
    names = snapshot.files(source)
    assert "train/a.py" in names and "data/x.bin" not in names


def test_negation_and_nested_patterns(source):
    (source / ".amlignore").write_text("train/**\n!train/a.py\n")
    names = snapshot.files(source)
    assert "train/a.py" in names and "train/sub/b.py" not in names


def test_limits_are_azure_mls(source, monkeypatch):
    names = snapshot.files(source)
    assert snapshot.check_limits(source, names) > 0
    monkeypatch.setattr(snapshot, "MAX_FILES", 2)
    with pytest.raises(ToolkitError, match="Azure ML allows 2 files"):
        snapshot.check_limits(source, names)


def test_archive_is_owned_by_the_run_user_and_rooted_at_the_workdir(source):
    names = ("train/a.py", "train/sub/b.py")
    data = snapshot.tar_archive(source, names, "/mnt/azureml/wd", 1234, 99)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"mnt/azureml/wd", "mnt/azureml/wd/train", "mnt/azureml/wd/train/sub",
                            "mnt/azureml/wd/train/a.py", "mnt/azureml/wd/train/sub/b.py"}
    assert {(m.uid, m.gid) for m in members.values()} == {(1234, 99)}
    assert members["mnt/azureml/wd"].isdir()


def test_reroot_moves_an_image_folder_to_the_workdir_and_hands_it_over(source):
    baked = snapshot.tar_archive(source, ("train/a.py",), "code", 0, 0, {"Dockerfile": b"FROM x\n"})
    moved = snapshot.reroot(baked, "code", "/mnt/azureml/wd", 1234, 99)
    with tarfile.open(fileobj=io.BytesIO(moved)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["mnt/azureml/wd/train/a.py"]).read() == b"train/a.py"
    assert set(members) == {"mnt/azureml/wd", "mnt/azureml/wd/train", "mnt/azureml/wd/train/a.py"}
    assert {(m.uid, m.gid) for m in members.values()} == {(1234, 99)}
