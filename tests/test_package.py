"""showtell installs as a package: the wheel carries the bundled model and the
``showtell`` command, and once installed (from the wheel, or editable as the
Makefile does) it imports and runs from a folder outside the checkout.

Builds run offline on a copy of the checkout (no build/ or egg-info left in
the worktree) with the test venv's setuptools; the throwaway venv sees the
test venv's packages through a .pth file, so torch is not installed again.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from packaging.requirements import Requirement  # comes with pip's and gradio's dependencies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join("showtell", "models", "showtell-flickr8k.pt")


def _pip(*args, python=None, timeout=120):
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    cmd += (["--python", python] if python else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"  # nothing may come from the network
    return env


def _where_showtell_imports_from(python: str, cwd) -> str:
    """The file ``import showtell`` would run in ``python`` started in ``cwd``
    (found without running it: importing torch takes seconds)."""
    done = subprocess.run([python, "-c", "import importlib.util; print(importlib.util.find_spec('showtell').origin)"],
                          cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The files a build reads, copied out of the worktree."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src)
    shutil.copytree(os.path.join(ROOT, "showtell"), src / "showtell",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(source), timeout=180)
    (whl,) = out.glob("showtell-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """An empty venv whose only extra packages are the test venv's (torch...)."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=60)
    python = str(path / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "test-venv-packages.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return path


def test_wheel_holds_the_bundled_model_the_command_and_the_dependencies(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = z.getinfo("showtell/models/showtell-flickr8k.pt")
        assert info.file_size == os.path.getsize(os.path.join(ROOT, MODEL))
        assert {"showtell/__init__.py", "showtell/__main__.py", "showtell/cli/__init__.py"} <= names
        assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = z.read(f"{dist}/entry_points.txt").decode()
        metadata = z.read(f"{dist}/METADATA").decode()
    assert "[console_scripts]" in entry_points and "showtell = showtell.cli:main" in entry_points
    assert "Version: 0.3.0" in metadata and "Requires-Python: >=3.10" in metadata
    # The runtime dependencies are requirements.txt's, line for line.
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        pins = [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]
    requires = [line[len("Requires-Dist: "):] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    base = [Requirement(r) for r in requires if "extra ==" not in r]
    assert sorted((r.name, r.specifier) for r in map(Requirement, pins)) == sorted((r.name, r.specifier) for r in base)
    evals = [Requirement(r) for r in requires if 'extra == "eval"' in r]
    assert [(r.name, str(r.specifier)) for r in evals] == [("pycocoevalcap", "==1.2")]


def test_installed_wheel_imports_and_runs_from_any_folder(wheel, venv, tmp_path):
    python = str(venv / "bin" / "python")
    _pip("install", "--no-deps", "--no-index", str(wheel), python=python)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    module_file = _where_showtell_imports_from(python, elsewhere)
    assert module_file.startswith(str(venv))  # the installed copy, with its model beside it:
    assert os.path.getsize(os.path.join(os.path.dirname(module_file), "models", "showtell-flickr8k.pt")) \
        == os.path.getsize(os.path.join(ROOT, MODEL))

    helped = subprocess.run([str(venv / "bin" / "showtell"), "--help"], cwd=elsewhere, env=_clean_env(),
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: showtell")
    for command in ("caption", "evaluate", "export", "train"):
        assert any(line.split()[:1] == [command] for line in helped.stdout.splitlines()), helped.stdout


def test_editable_install_as_the_makefile_does_it(source, venv, tmp_path):
    python = str(venv / "bin" / "python")
    _pip("install", "-e", str(source), "--no-deps", "--no-build-isolation", "--no-index", python=python, timeout=180)
    # The source tree itself, not a copy: edits take effect without reinstalling.
    assert _where_showtell_imports_from(python, tmp_path) == str(source / "showtell" / "__init__.py")
