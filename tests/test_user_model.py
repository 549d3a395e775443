"""A model the project has never seen, in the user's own file, through the same commands as the
seed's NINs: `--arch FILE.py:NAME` trains, exports and benches with parity. Code a checkpoint or
an ONNX file names is never imported."""

from __future__ import annotations

import json
import textwrap

from click.testing import CliRunner
from conftest import require_ort_library

from xnorpipe.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from xnorpipe.cli import cli
from xnorpipe.deploy import onnx as deploy_onnx

USER_MODEL = textwrap.dedent('''
    import torch
    import torch.nn as nn

    from xnorpipe.models import register_model
    from xnorpipe.nn import BinaryActivation, BinaryConv2d


    class TinyBiReal(nn.Module):
        def __init__(self, width, num_classes):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
            self.units = nn.ModuleList(
                nn.Sequential(BinaryActivation(), BinaryConv2d(width, width, 3, padding=1, bias=False),
                              nn.BatchNorm2d(width))
                for _ in range(3))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.stem(x)
            for unit in self.units:
                x = unit(x) + x
            return self.fc(torch.flatten(self.pool(x), 1))


    @register_model("{name}", input_shape=(3, 32, 32), binary=True, epochs=2, lr=0.1)
    def tiny_bireal(*, width: int = 16, num_classes: int = 10):
        return TinyBiReal(width, num_classes)
''')


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, match: str) -> None:
    """A clean exit with one error line (xnorpipe's entry point drops click's usage block around
    a usage error, which CliRunner keeps)."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and match in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_user_model_trains_exports_and_benches(train_tree, tmp_path):
    require_ort_library()
    source = tmp_path / "my_models.py"
    source.write_text(USER_MODEL.format(name="tiny_bireal_a"))
    arch = f"{source}:tiny_bireal_a"
    r = invoke("train", "--arch", arch, "--data", train_tree.path, "--epochs", 2, "--batch-size", 20,
               "--out", tmp_path / "ck", "--deterministic", "-q", "--no-plot")
    assert r.exit_code == 0, r.output
    best = checkpoint_path(arch, tmp_path / "ck", best=True)
    assert best.name == "cifar10_tiny_bireal_a_best.pth.tar"
    assert load_checkpoint(best).arch == arch
    r = invoke("export", "--arch", arch, "--checkpoint", best, "--out", tmp_path / "ex")
    assert r.exit_code == 0, r.output
    files = sorted(p.name for p in (tmp_path / "ex").glob("*.onnx"))
    assert files == sorted(f"tiny_bireal_a.{form}.onnx" for form in deploy_onnx.FORMS)
    m = deploy_onnx.load_onnx(tmp_path / "ex" / "tiny_bireal_a.packed-bits.onnx")
    assert deploy_onnx.count_custom_nodes(m) == 3
    r = invoke("bench", "--arch", arch, "--checkpoint", best, "--engine", "torch,ort,ort-xnor", "--data",
               train_tree.path, "--batch-size", 10, "--iters", 2, "--warmup", 0, "--json")
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["engine"] for row in rows] == ["torch", "ort", "ort-xnor"]
    for row in rows:
        # Float layers may round differently between runtimes and flip a bit whose input lies
        # within rounding of 0 (a sign without BN on the residual stream), moving some logits by
        # ~1e-3 (docs/XNORCONV2D.md, parity); the binary layers' exactness is tests/test_zoo.py's.
        assert row["agreement"] >= 98.0, row
        assert row["median_abs_diff"] < 1e-5, row


def test_user_model_errors_are_one_line(tmp_path):
    one_line_error(invoke("info", "--arch", tmp_path / "missing.py:net"), "no file")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no luck')\n")
    one_line_error(invoke("info", "--arch", f"{broken}:net"), "importing")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    one_line_error(invoke("info", "--arch", f"{empty}:net"), "registers no model 'net'")
    one_line_error(invoke("info", "--arch", "no_such_arch"), "is not one of")


def test_code_a_checkpoint_names_is_not_imported(tmp_path, monkeypatch, train_tree):
    """A checkpoint whose arch names a file: that file must not run unless --arch names it."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    (tmp_path / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    path = tmp_path / "evil.pth.tar"
    save_checkpoint(path, {"arch": "evil.py:net", "model_kwargs": {}, "epoch": 1, "best_acc1": 0.0, "model": {}})
    one_line_error(invoke("eval", "--checkpoint", path, "--data", train_tree.path),
                   "is a model in user code: pass --arch evil.py:net")
    one_line_error(invoke("export", "--arch", "nin_xnornet", "--checkpoint", path, "--out", tmp_path / "x"),
                   "checkpoint is for arch 'evil.py:net'")
    assert not marker.exists()
