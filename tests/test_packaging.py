import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_kernels_sources_and_not_the_data(tmp_path):
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
    names = zipfile.ZipFile(wheel).namelist()
    assert {"jal/native/mc_conv2.cc", "jal/native/masked_conv2.cc", "jal/native/common.h"} <= set(names)
    assert not [n for n in names if n.startswith("data/") or n.endswith(".gz") or n.startswith("bin/")]
    assert wheel.stat().st_size < 1_000_000  # MNIST's 11 MB stay in the clone
