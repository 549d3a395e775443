"""The CLI shell: help without heavy imports, one-line errors, the cli.py shim, atomic writes."""

import subprocess
import sys
from pathlib import Path

import pytest

from xnorpipe.utils import atomic_path, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_shim_and_module_are_the_same_cli():
    a, b = run("cli.py", "--help"), run("-m", "xnorpipe.cli", "--help")
    assert a.returncode == 0 and a.stdout == b.stdout
    for name in ["train", "eval", "info", "export", "bench", "build-engine"]:
        assert name in a.stdout


def test_version():
    r = run("cli.py", "--version")
    assert r.returncode == 0 and "xnorpipe" in r.stdout


def test_bad_option_is_one_line_without_traceback():
    r = run("cli.py", "info", "--arch", "nin", "--bogus")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--bogus" in r.stderr


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_has_normal_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
