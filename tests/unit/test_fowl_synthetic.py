"""The smoke dataset: deterministic, the ImageFolder layout the training job expects, written atomically."""

import hashlib
import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("fowl_synthetic", ROOT / "train/fowl_synthetic.py")
fowl_synthetic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fowl_synthetic)


def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path):
    a = fowl_synthetic.generate(tmp_path / "a", train_per_class=3, val_per_class=2, size=32, seed=7)
    b = fowl_synthetic.generate(tmp_path / "b", train_per_class=3, val_per_class=2, size=32, seed=7)
    assert digest(a) == digest(b)
    assert digest(a) != digest(fowl_synthetic.generate(tmp_path / "c", train_per_class=3, val_per_class=2,
                                                       size=32, seed=8))


def test_layout_is_an_image_folder_with_both_classes(tmp_path):
    out = fowl_synthetic.generate(tmp_path / "fowl", train_per_class=2, val_per_class=1, size=32)
    counts = {(split, cls): len(list((out / split / cls).glob("*.png")))
              for split in ("train", "val") for cls in ("chickens", "turkeys")}
    assert counts == {("train", "chickens"): 2, ("train", "turkeys"): 2, ("val", "chickens"): 1,
                      ("val", "turkeys"): 1}
    assert [p.name for p in tmp_path.iterdir()] == ["fowl"]  # no temporary folder left beside it


def test_an_existing_dataset_is_not_overwritten(tmp_path):
    out = fowl_synthetic.generate(tmp_path / "fowl", train_per_class=1, val_per_class=1, size=16)
    with pytest.raises(FileExistsError):
        fowl_synthetic.generate(out, train_per_class=1, val_per_class=1, size=16)
