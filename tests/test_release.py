"""What a release must keep: the wheel built from this checkout installs offline and runs (the
docs/kaggle.md path), and it reloads the run directory and bundle an earlier version wrote
(tests/fixtures/format-v1), predicting what they predicted then."""

import shutil
import subprocess
import sys
import sysconfig
import venv

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, script_environment

from jaxpref.data import arena

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("release")]
FIXTURE = REPO / "tests" / "fixtures" / "format-v1"
TOLERANCE = 1e-5


def run(*argv, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=600,
        env=script_environment(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The bin/ directory of a fresh virtual environment holding the wheel of this checkout,
    installed with --no-index; its dependencies are the test environment's (a .pth line), so
    nothing is downloaded."""
    root = tmp_path_factory.mktemp("release")
    source = root / "source"
    shutil.copytree(REPO / "jaxpref", source / "jaxpref", ignore=shutil.ignore_patterns("__py*"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist",
        source, cwd=root)  # fmt: skip
    (wheel,) = (root / "dist").glob("jaxpref-*.whl")
    venv.create(root / "venv", with_pip=False)
    python = root / "venv" / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=root)
    dependencies = sysconfig.get_path("purelib")
    (root / purelib.stdout.strip() / "test-dependencies.pth").write_text(dependencies + "\n")
    run(*pip, "--python", python, "install", "--no-index", "--no-deps", wheel, cwd=root)
    return root / "venv" / "bin"


def test_the_wheel_runs_from_its_own_files(installed, tmp_path):
    version = run(installed / "jaxpref", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"jaxpref {installed_version()}"
    where = run(installed / "python", "-c", "import jaxpref.data.arena as d; print(d.__file__); "
                "print(d.DEFAULT_TRAIN_CSV); print(d.DEFAULT_TEST_CSV)", cwd=tmp_path)  # fmt: skip
    module, train_csv, test_csv = where.stdout.split()
    assert module.startswith(str(installed.parent)), module  # not this checkout's package
    assert len(pd.read_csv(train_csv)) == len(pd.read_csv(arena.DEFAULT_TRAIN_CSV))
    assert len(pd.read_csv(test_csv)) == 3


@pytest.mark.parametrize("saved", ["bundle", "run"])
def test_what_version_1_wrote_predicts_as_it_did(installed, saved, tmp_path):
    """`jaxpref infer` of the installed wheel on the committed bundle and run directory."""
    out = tmp_path / "submission.csv"
    run(installed / "jaxpref", "infer", "--devices", "cpu", "--run-dir", FIXTURE / saved,
        "--test-csv", FIXTURE / "rows.csv", "--output", out, cwd=tmp_path)  # fmt: skip
    recorded = pd.read_csv(FIXTURE / "predictions.csv", dtype={"id": str})
    produced = pd.read_csv(out, dtype={"id": str})
    assert produced["id"].tolist() == recorded["id"].tolist() and len(produced) == 24
    columns = list(arena.LABEL_COLUMNS)
    np.testing.assert_allclose(produced[columns], recorded[columns], atol=TOLERANCE)


def installed_version() -> str:
    from importlib.metadata import version

    return version("jaxpref")
