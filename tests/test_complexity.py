"""`xnorpipe info`: the seed's counts, the binary MACs it omitted, sizes."""

import json

import pytest
from click.testing import CliRunner

from xnorpipe.cli import cli

SEED = {  # arch: (params, seed MAC string, exact binary MACs)
    "nin": ("969.82 k", "0.23 GMac", 0),
    "nin_gc": ("722.46 k", "0.2 GMac", 0),
    "nin_xnornet": ("674.91 k", "17.26 MMac", 132_554_752),
    "nin_gc_xnornet": ("589.85 k", "24.71 MMac", 138_412_032),
}


@pytest.mark.parametrize("arch", sorted(SEED))
def test_info_json_matches_seed(arch):
    result = CliRunner().invoke(cli, ["info", "--arch", arch, "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    params, macs, binary = SEED[arch]
    assert d["arch"] == arch
    assert d["params_seed"] == params and d["macs_seed_str"] == macs
    assert d["binary_macs"] == binary
    assert f"{round(d['binary_macs'] / 1e6, 2)}" in {"0.0", "132.55", "138.41"}
    assert isinstance(d["params"], int) and isinstance(d["macs_seed"], int)
    if binary:
        assert d["packed_bytes"] * 8 < d["float32_bytes"]


def test_info_table_and_errors():
    r = CliRunner().invoke(cli, ["info", "--arch", "nin_xnornet"])
    assert r.exit_code == 0 and "132,554,752" in r.output and "17.26 MMac" in r.output
    r = CliRunner().invoke(cli, ["info"])
    assert r.exit_code != 0 and "--arch" in r.output
    r = CliRunner().invoke(cli, ["info", "--checkpoint", "/nonexistent.pth.tar"])
    assert r.exit_code != 0 and "not found" in r.output
