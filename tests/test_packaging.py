import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(tmp_path: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("jal-*.whl")
    return wheel


def test_the_wheel_carries_the_kernels_sources_and_not_the_data(tmp_path):
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {"jal/native/mc_conv2.cc", "jal/native/masked_conv2.cc", "jal/native/common.h"} <= set(names)
    assert not [n for n in names if n.startswith("data/") or n.endswith(".gz") or n.startswith("bin/")]
    assert wheel.stat().st_size < 1_000_000  # MNIST's 11 MB stay in the clone


@pytest.mark.slow
def test_the_installed_wheel_runs_without_the_clone(tmp_path):
    """A fresh virtual environment with the wheel alone (its dependencies seen from this one): no bin/, no data/."""
    wheel = build_wheel(tmp_path / "wheel")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # jax and the rest from this environment, behind the fresh one on its path; jal from the wheel alone.
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"  # not the clone: nothing of it on the path
    work.mkdir()
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.savez(work / "digits.npz", x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAL_MNIST_DIR")}

    def jal(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([venv / "bin" / "jal", *args], cwd=work, env=environment, capture_output=True, text=True)

    version = jal("--version")
    assert version.returncode == 0 and version.stdout.startswith("jal "), version.stderr
    located = subprocess.run([python, "-m", "jal", "--version"], cwd=work, env=environment, capture_output=True,
                             text=True)  # fmt: skip
    assert located.stdout == version.stdout
    where = subprocess.run([python, "-c", "import jal; print(jal.__file__)"], cwd=work, env=environment,
                           capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(site), where
    result = jal("run", "--data", "digits.npz", "--model", "mlp", "--pool-size", "200", "--initial", "10",
                 "--iterations", "1", "--mc-samples", "4", "--out", "run", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (work / "run" / "metrics.jsonl").read_text().count("\n") == 2
