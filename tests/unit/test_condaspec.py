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
