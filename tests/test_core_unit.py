"""The C++ unit test of plugins/core (every popcount path vs the reference, bit-exact; the bit
ops; ConvBinarize and AvgPoolBinarize vs float64), built with CMake and run once."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_core_unit_test_passes(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    build = tmp_path / "core"
    configure = subprocess.run(
        [cmake, "-S", str(ROOT / "plugins"), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
         "-DXNORPIPE_CORE_ONLY=ON"], capture_output=True, text=True, timeout=300)
    assert configure.returncode == 0, configure.stdout[-2000:] + configure.stderr[-2000:]
    compiled = subprocess.run([cmake, "--build", str(build), "--target", "xnorpipe_core_test", "-j", "2"],
                              capture_output=True, text=True, timeout=900)
    assert compiled.returncode == 0, compiled.stdout[-3000:] + compiled.stderr[-3000:]
    run = subprocess.run([str(build / "core" / "xnorpipe_core_test")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    m = re.search(r"(\d+) cases, (\d+) failures", run.stdout)
    assert m and int(m.group(1)) > 5000 and int(m.group(2)) == 0, run.stdout[-2000:]
