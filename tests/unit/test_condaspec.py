import pytest

from amltrain import condaspec


def test_pip_section_and_conda_packages_are_split():
    spec = condaspec.parse("dependencies:\n  - python=3.10\n  - pip>=23\n  - libjpeg-turbo\n"
                           "  - pip:\n    - torch==2.14.1\n    - ' mlflow-skinny '\n")
    assert spec.conda_packages == ("libjpeg-turbo",)
    assert spec.pip_requirements == ("torch==2.14.1", "mlflow-skinny")


def test_project_specs_install_with_pip_alone():
    for flavour in ("cpu", "gpu"):
        spec = condaspec.load(f"conda/{flavour}.yml")
        assert spec.conda_packages == ()
        assert any(r.startswith("torch==") for r in spec.pip_requirements)


@pytest.mark.parametrize("text, message", [
    ("dependencies: [", "not valid YAML at line"),
    ("name: x\n", "no 'dependencies:' list"),
    ("- a\n", "no 'dependencies:' list"),
    ("dependencies:\n  - {conda: x}\n", "neither a package nor a 'pip:' list"),
    ("dependencies:\n  - pip: [1]\n", "not a requirement string"),
])
def test_bad_specs_give_one_clear_message(text, message):
    with pytest.raises(condaspec.CondaSpecError, match=message):
        condaspec.parse(text, "x.yml")


def test_script_prints_requirements(tmp_path, capsys):
    path = tmp_path / "env.yml"
    path.write_text("dependencies:\n  - gcc\n  - pip:\n    - six\n")
    assert condaspec.main([str(path), "pip"]) == 0
    assert capsys.readouterr().out == "six\n"
    assert condaspec.main([str(path), "conda"]) == 0
    assert capsys.readouterr().out == "gcc\n"
    assert condaspec.main([str(tmp_path / "missing.yml"), "pip"]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("constraint, version, ok", [
    (">=3.10", (3, 11, 7), True),
    (">=3.12", (3, 11, 7), False),
    ("=3.10", (3, 10, 14), True),
    ("=3.10", (3, 11, 0), False),
    ("3.11.*", (3, 11, 2), True),
    (">=3.10,<3.12", (3, 12, 1), False),
    (">=3.10, <3.13", (3, 12, 1), True),
    ("!=3.11.*", (3, 11, 7), False),
    (">3.10", (3, 10, 14), True),
    ("<=3.10", (3, 10, 14), False),
    ("==3.10.14", (3, 10, 14), True),
    ("3.10.*=*_cpython", (3, 10, 14), True),
    ("", (3, 9, 0), True),
])
def test_python_constraints_are_checked_against_the_base_interpreter(constraint, version, ok):
    assert condaspec.python_satisfies(constraint, version) is ok


def test_unreadable_python_constraint_is_refused_on_the_host():
    with pytest.raises(condaspec.CondaSpecError, match="not understood"):
        condaspec.parse("dependencies:\n  - python~=3.10\n", "x.yml")


def test_check_python_fails_in_one_line_when_the_base_does_not_match(tmp_path, capsys):
    path = tmp_path / "env.yml"
    path.write_text("channels: [conda-forge]\ndependencies:\n  - python>=99\n")
    assert condaspec.main([str(path), "check-python"]) == 1
    assert "asks for python>=99, the base image has 3." in capsys.readouterr().err
    assert condaspec.main([str(path), "channels"]) == 0
    assert capsys.readouterr().out == "conda-forge\n"
