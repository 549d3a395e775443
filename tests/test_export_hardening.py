"""Export hardening: non-finite weights, opset and IR bounds, all-or-none writes (also under
SIGKILL), calibrated random inits, inlined forms, lost function bodies, metadata."""

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
import pytest
import torch
from conftest import assert_outputs_depend_on_input, binary_conv_inputs, write_image_tree
from test_bench import assert_one_line_error
from test_fold import SMALL

from xnorpipe.checkpoint import save_checkpoint
from xnorpipe.deploy import ir
from xnorpipe.deploy import onnx as deploy_onnx
from xnorpipe.deploy.fold import fold_model
from xnorpipe.deploy.forms import FORMS, MIN_OPSET
from xnorpipe.deploy.onnx import versions
from xnorpipe.deploy.packing import pack_weights
from xnorpipe.deploy.reference import xnor_conv2d
from xnorpipe.errors import XnorpipeError
from xnorpipe.models import build_model
from xnorpipe.sources import calibrate_batchnorm, calibration_tag, load_source_model, synthetic_calibration_images

ROOT = Path(__file__).resolve().parents[1]
ARCH = "nin_xnornet"
CFG = SMALL[ARCH][0]


def cli(*args, **popen):
    env = {k: v for k, v in os.environ.items() if k not in ("XNORPIPE_DEBUG", "XNORPIPE_DATA")}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env, **popen)


def small_checkpoint(path: Path, seed: int, edit=None) -> Path:
    """A nin_xnornet checkpoint at SMALL widths (fast to fold), weights drawn from `seed`."""
    torch.manual_seed(seed)
    model = build_model(ARCH, CFG)
    if edit is not None:
        edit(model)
    save_checkpoint(path, {"arch": ARCH, "cfg": model.cfg, "groups": model.groups, "epoch": 1, "best_acc1": 10.0,
                           "model": model.state_dict()})
    return path


def session(m: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def images(n: int, seed: int = 0) -> np.ndarray:
    """Normalised synthetic images (the random-init calibration's kind), NCHW float32."""
    from xnorpipe.bench import normalised_images

    return normalised_images(synthetic_calibration_images(seed=100 + seed, n=n))


@pytest.fixture(scope="module")
def deploys():
    """Both binary archs at SMALL widths, BN calibrated on synthetic images, then a third of the
    gammas negated (gamma < 0 channels): logits that depend on the input."""
    out = {}
    for arch in ("nin_xnornet", "nin_gc_xnornet"):
        torch.manual_seed(11)
        model = calibrate_batchnorm(build_model(arch, *SMALL[arch]), synthetic_calibration_images(seed=7))
        g = torch.Generator().manual_seed(11)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data[torch.rand(m.num_features, generator=g) < 1 / 3] *= -1
        out[arch] = fold_model(model, arch=arch, metadata={"xnorpipe.checkpoint_sha256": "cd" * 32})
    return out


# ------------------------------------------------------------------ 1. non-finite weights


def _tensor(model, name):
    return dict([*model.named_parameters(), *model.named_buffers()])[name]


@pytest.mark.parametrize("name, value", [("features.4.bn.running_var", np.nan), ("features.1.conv.weight", np.inf),
                                         ("features.0.bn.bias", -np.inf), ("features.0.conv.weight", np.nan)])
def test_fold_refuses_nonfinite_naming_layer_and_tensor(name, value):
    model = build_model(ARCH, CFG).eval()
    with torch.no_grad():
        _tensor(model, name).view(-1)[3] = float(value)
    with pytest.raises(XnorpipeError) as e:
        fold_model(model, arch=ARCH)
    msg = str(e.value)
    layer, _, tensor = name.rpartition(".")
    assert "\n" not in msg and f"layer {layer} (" in msg and f"tensor {tensor}:" in msg and "--allow-nonfinite" in msg
    assert ("1 NaN and 0 inf" if np.isnan(value) else "0 NaN and 1 inf") in msg
    deploy = fold_model(model, arch=ARCH, allow_nonfinite=True)
    assert deploy.metadata["xnorpipe.nonfinite"] == name
    assert "xnorpipe.nonfinite" not in fold_model(build_model(ARCH, CFG).eval(), arch=ARCH).metadata


def test_fold_refuses_a_fold_that_is_not_finite():
    """A negative running_var is finite, but folds to NaN weights: refused, naming the layer."""
    model = build_model(ARCH, CFG).eval()
    model.features[0].bn.running_var[2] = -1.0
    with pytest.raises(XnorpipeError, match=r"^layer features\.0\.conv: folded weight, bias not finite .*"
                       "--allow-nonfinite"):
        fold_model(model, arch=ARCH)
    assert fold_model(model, arch=ARCH, allow_nonfinite=True).metadata["xnorpipe.nonfinite"].startswith(
        "layer features.0.conv: folded weight, bias")


def test_export_cli_refuses_nonfinite_unless_allowed(tmp_path):
    def poison(model):
        model.features[4].bn.running_var[0] = float("nan")

    ckpt = small_checkpoint(tmp_path / "nan.pth.tar", 1, poison)
    out = tmp_path / "out"
    r = cli("export", "--arch", ARCH, "--checkpoint", ckpt, "-o", out)
    assert_one_line_error(r, "non-finite", "layer features.4.bn (BatchNorm2d), tensor running_var", "--allow-nonfinite")
    assert not out.exists()
    r = cli("export", "--arch", ARCH, "--checkpoint", ckpt, "-o", out, "--form", "packed", "--allow-nonfinite")
    assert r.returncode == 0, r.stderr
    assert "warning: exported non-finite values (--allow-nonfinite): features.4.bn.running_var" in r.stdout
    meta = deploy_onnx.model_metadata(onnx.load(str(out / f"{ARCH}.packed.onnx")))
    assert meta["xnorpipe.nonfinite"] == "features.4.bn.running_var"


# ----------------------------------------------------------------- 2. and 3. opset, IR version


def test_opset_is_bounded_by_onnx_and_onnxruntime(deploys, tmp_path):
    onnx_max, ort_max = deploy_onnx.supported_opsets()
    assert onnx_max == onnx.defs.onnx_opset_version() and ort_max is not None
    high = min(onnx_max, ort_max)
    assert versions._ort_loads_opset(ort, high)
    if ort_max < onnx_max:  # ORT's own bound: it refuses the next opset that onnx knows
        assert not versions._ort_loads_opset(ort, ort_max + 1)
    deploy = deploys[ARCH]
    x = images(3)
    for form in FORMS:
        assert deploy_onnx.opset_range(form) == (MIN_OPSET[form], high)
        m = deploy_onnx.build_onnx(deploy, form, opset=high)  # the highest allowed: checked and runs
        deploy_onnx.check_onnx(m)
        want = session(deploy_onnx.build_onnx(deploy, form)).run(None, {"input": x})[0]
        np.testing.assert_allclose(session(m).run(None, {"input": x})[0], want, rtol=1e-5, atol=1e-5)
        with pytest.raises(XnorpipeError, match=rf"opset {high + 1} is beyond .* choose --opset {MIN_OPSET[form]} "
                                                rf"to {high}$"):
            deploy_onnx.build_onnx(deploy, form, opset=high + 1)
    ckpt = small_checkpoint(tmp_path / "a.pth.tar", 1)
    r = cli("export", "--arch", ARCH, "--checkpoint", ckpt, "--opset", 99, "-o", tmp_path / "out")
    assert_one_line_error(r, "opset 99", f"onnx {onnx.__version__}", "onnxruntime", f"choose --opset 17 to {high}")
    assert not (tmp_path / "out").exists()


def test_each_form_gets_the_lowest_ir_version_it_needs(deploys):
    """IR 8 has model-local functions, IR 9 their attribute defaults; ORT <= 1.16 refuses IR 10."""
    deploy = deploys[ARCH]
    want = {"portable": 8, "packed": 9, "packed-bits": 9, "packed-inline": 8, "packed-bits-inline": 8}
    assert set(want) == set(FORMS)
    for form, ir_version in want.items():
        m = deploy_onnx.build_onnx(deploy, form)
        assert m.ir_version == ir_version, form
        deploy_onnx.check_onnx(onnx.load_from_string(m.SerializeToString()))
    assert deploy_onnx.build_onnx(deploy, "packed", opset=21).ir_version == 10  # opset 21 came with IR 10


def test_function_attribute_defaults_survive_at_ir9():
    """A call that sets only kernel_shape: the function's defaults (strides 1, pads 0, dilations
    1, group 1, relu 0) are stored at IR 9 and applied by ORT and by our inlining."""
    rng = np.random.default_rng(0)
    layer = ir.BinaryConv(weight_bits=pack_weights(rng.random((6, 40, 3, 3)) < 0.5),
                          threshold=rng.standard_normal(40).astype(np.float32), scale=np.full(6, 0.5, np.float32),
                          bias=rng.standard_normal(6).astype(np.float32), kernel_shape=(3, 3))
    m = deploy_onnx.single_node_model(deploy_onnx.OP_NAME, (2, 40, 7, 7), binary_conv_inputs(layer),
                                      deploy_onnx.layer_attrs(layer))
    node = m.graph.node[0]
    kept = [a for a in node.attribute if a.name == "kernel_shape"]
    del node.attribute[:]
    node.attribute.extend(kept)
    assert m.ir_version == 9
    m = onnx.load_from_string(m.SerializeToString())
    defaults = {a.name: onnx.helper.get_attribute_value(a) for a in m.functions[0].attribute_proto}
    assert defaults == {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 1, "relu": 0}
    deploy_onnx.check_onnx(m)
    x = rng.standard_normal((2, 40, 7, 7)).astype(np.float32)
    want = xnor_conv2d(torch.from_numpy(x), layer.weight_bits, torch.from_numpy(layer.threshold),
                       torch.from_numpy(layer.scale), torch.from_numpy(layer.bias), strides=(1, 1),
                       pads=(0, 0, 0, 0), dilations=(1, 1), group=1, relu=False).numpy()
    assert (want < 0).any()  # relu 0 applied: negative outputs stay
    np.testing.assert_array_equal(session(m).run(None, {"X": x})[0], want)
    # onnx.inliner alone drops the unset attributes; inline_functions spells the defaults out first
    inlined = deploy_onnx.inline_functions(m, "packed-inline")
    np.testing.assert_array_equal(session(inlined).run(None, {"X": x})[0], want)


# ---------------------------------------------------------------------- 4. all or none


def _forms_in(out: Path) -> dict[str, str]:
    """form file -> checkpoint sha256 of every export of ARCH in `out` (each must load whole)."""
    return {p.name: deploy_onnx.model_metadata(deploy_onnx.load_onnx(p))["xnorpipe.checkpoint_sha256"]
            for p in sorted(out.glob(f"{ARCH}.*.onnx"))}


def test_export_removes_the_forms_of_another_checkpoint(deploys, tmp_path):
    a = deploys[ARCH]
    b = ir.DeployModel(a.arch, a.nodes, metadata={"xnorpipe.checkpoint_sha256": "ef" * 32})
    deploy_onnx.export(a, FORMS, tmp_path)
    notes = []
    deploy_onnx.export(b, ["packed"], tmp_path, note=notes.append)
    assert _forms_in(tmp_path) == {f"{ARCH}.packed.onnx": "ef" * 32}
    assert len(notes) == 4 and all("exported from another checkpoint" in n for n in notes)
    deploy_onnx.export(b, ["portable"], tmp_path, note=notes.append)  # same source: packed stays
    assert _forms_in(tmp_path) == {f"{ARCH}.packed.onnx": "ef" * 32, f"{ARCH}.portable.onnx": "ef" * 32}
    assert len(notes) == 4 and sorted(p.name for p in tmp_path.iterdir()) == [f"{ARCH}.packed.onnx",
                                                                            f"{ARCH}.portable.onnx"]


def test_failed_write_leaves_the_old_forms_and_no_temp(deploys, tmp_path):
    """A real write failure (RLIMIT_FSIZE: the portable temp cannot grow past the limit) after
    two temps were written: every temp goes, the old set stays."""
    a = deploys[ARCH]
    deploy_onnx.export(a, FORMS, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ckpt = small_checkpoint(tmp_path.parent / "b.pth.tar", 2)
    sizes = {f: len(deploy_onnx.build_onnx(a, f).SerializeToString()) for f in ("packed", "packed-bits", "portable")}
    limit = (sizes["portable"] + max(sizes["packed"], sizes["packed-bits"])) // 2
    assert sizes["packed"] < limit < sizes["portable"]
    script = ("import sys; from xnorpipe.sources import load_source_model; from xnorpipe.deploy.fold import "
              "fold_model; from xnorpipe.deploy.onnx import export\n"
              f"m, meta = load_source_model({ARCH!r}, {str(ckpt)!r})\n"
              f"export(fold_model(m, arch={ARCH!r}, metadata=meta), ['packed', 'packed-bits', 'portable'], "
              f"{str(tmp_path)!r})")

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       preexec_fn=limit_file_size)
    assert r.returncode != 0 and "file too large writing" in r.stderr and f"{ARCH}.portable.onnx" in r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_sigkill_at_any_point_never_mixes_checkpoints(tmp_path):
    """Re-exports of two checkpoints in turn, each SIGKILLed at a random point of its write
    phase (after its first temp file appears): the forms on disk always come from one checkpoint
    and each loads whole; the next export completes the set and clears the debris."""
    ckpts = [small_checkpoint(tmp_path / f"{seed}.pth.tar", seed) for seed in (1, 2)]
    out = tmp_path / "exports"
    env = {k: v for k, v in os.environ.items() if k not in ("XNORPIPE_DEBUG", "XNORPIPE_DATA")}

    def start(ckpt):
        return subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "export", "--arch", ARCH, "--checkpoint",
                                 str(ckpt), "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)

    def temps() -> bool:
        return out.is_dir() and any(p.suffix == ".tmp" for p in out.iterdir())

    def wait_for_writing(proc):
        while proc.poll() is None and not temps():
            time.sleep(0.0005)

    proc = start(ckpts[0])  # a complete run into the empty folder: how long writing takes, from
    wait_for_writing(proc)  # the first temp until every form is in place
    began = time.monotonic()
    while proc.poll() is None and (temps() or len(list(out.glob(f"{ARCH}.*.onnx"))) < len(FORMS)):
        time.sleep(0.0005)
    writing = time.monotonic() - began
    assert proc.wait(timeout=300) == 0
    assert len(_forms_in(out)) == len(FORMS)
    rng = np.random.default_rng(0)
    killed = 0
    for i in range(5):
        proc = start(ckpts[(i + 1) % 2])
        wait_for_writing(proc)
        time.sleep(rng.uniform(0, 1.2 * writing))
        proc.kill()
        killed += proc.wait(timeout=300) == -signal.SIGKILL
        assert len(set(_forms_in(out).values())) <= 1, _forms_in(out)
    print(f"write phase {writing * 1e3:.0f} ms; {killed} of 5 runs killed while running")
    r = cli("export", "--arch", ARCH, "--checkpoint", ckpts[1], "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{ARCH}.{f}.onnx" for f in FORMS)
    assert len(set(_forms_in(out).values())) == 1


# --------------------------------------------------------- 5. random init: calibrated BatchNorm


def test_random_init_is_calibrated_on_data_or_synthetic_images(tmp_path):
    tree = write_image_tree(tmp_path / "tree", n_train=3, n_test=1)  # 30 training images
    synthetic, meta = load_source_model("nin", random_init=True)
    calibrated, meta_data = load_source_model("nin", random_init=True, data=tree.path)
    again, _ = load_source_model("nin", random_init=True, data=tree.path)
    assert meta["xnorpipe.random_calibration"] == "synthetic:0"
    assert meta_data["xnorpipe.random_calibration"] == calibration_tag(tree.train_images, tree.path)
    assert meta_data["xnorpipe.random_calibration"].startswith("data:")
    bn = [m.features[0].bn for m in (synthetic, calibrated, again)]
    assert torch.equal(bn[1].running_mean, bn[2].running_mean) and torch.equal(bn[1].running_var, bn[2].running_var)
    assert not torch.allclose(bn[0].running_mean, bn[1].running_mean)
    assert int(bn[1].num_batches_tracked) == 2  # 30 images in batches of 16
    with torch.no_grad():
        assert_outputs_depend_on_input(calibrated(torch.from_numpy(images(8))).numpy())


def test_bench_rebuilds_a_calibrated_random_init_reference(tmp_path):
    from xnorpipe.bench import normalised_images, prepare_sources

    tree = write_image_tree(tmp_path / "tree", n_train=3, n_test=1)
    other = write_image_tree(tmp_path / "other", n_train=2, n_test=1)
    model, meta = load_source_model(ARCH, random_init=True, data=tree.path)
    packed = deploy_onnx.export(fold_model(model, arch=ARCH, metadata=meta), ["packed"], tmp_path / "out")[0].path
    for data, note in ((None, "pass that dataset as --data"), (other.path, "other images than --data's")):
        sources = prepare_sources(onnx_path=str(packed), engines=["ort"], data=data)
        assert sources.reference is None and any(note in n and "parity is skipped" in n for n in sources.notes)
    sources = prepare_sources(onnx_path=str(packed), engines=["ort"], data=tree.path)
    assert sources.notes == []
    for a, b in zip(sources.reference.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = normalised_images(tree.test_images)
    with torch.no_grad():
        want = sources.reference(torch.from_numpy(x)).numpy()
    assert_outputs_depend_on_input(want)
    # parity as the contract states it: an untrained net's bit can flip where PyTorch's and ORT's
    # float rounding straddle a threshold, so not every logit matches to 1e-4
    got = session(onnx.load(str(packed))).run(None, {"input": x})[0]
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9 and np.median(np.abs(got - want)) <= 1e-5


# ------------------------------------------------------------------------ 6. inlined forms


def test_every_packing_body_ors_its_bit_planes():
    """OpenVINO sums int32 in float32: packing must not be a ReduceSum (nor any sum)."""
    functions = deploy_onnx.functions_for(deploy_onnx.CONV_OPS + deploy_onnx.BIT_OPS)
    packing = {f.name for f in functions if any(n.op_type == "BitwiseOr" for n in f.node)}
    assert packing == {"Binarize", "BitMaxPool", "ConvIntegerBinarize"}
    for f in functions:
        assert not {n.op_type for n in f.node} & {"ReduceSum", "Sum", "CumSum"}, f.name
        assert sum(n.op_type == "BitwiseOr" for n in f.node) in (0, 5)  # a 5-level tree over 32 planes


@pytest.mark.parametrize("arch", ["nin_xnornet", "nin_gc_xnornet"])
def test_inlined_forms_are_standard_ops_and_equal_the_function_forms(arch, deploys):
    from onnx.reference import ReferenceEvaluator

    deploy = deploys[arch]
    x = images(5, seed=1)
    for form, base in (("packed-inline", "packed"), ("packed-bits-inline", "packed-bits")):
        m, ref = deploy_onnx.build_onnx(deploy, form), deploy_onnx.build_onnx(deploy, base)
        deploy_onnx.check_onnx(m)
        assert not m.functions and [(o.domain, o.version) for o in m.opset_import] == [("", 18)]
        assert {n.domain for n in m.graph.node} == {""}
        assert deploy_onnx.model_metadata(m) == {**deploy_onnx.model_metadata(ref), "xnorpipe.form": form}
        bits = {t.name: t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT32}
        assert bits and all(t.SerializeToString() == bits[t.name].SerializeToString()
                            for t in ref.graph.initializer if t.name.endswith("weight_bits"))
        want = session(ref).run(None, {"input": x})[0]
        assert_outputs_depend_on_input(want)
        np.testing.assert_array_equal(session(m).run(None, {"input": x})[0], want)  # stock ORT, exactly
        np.testing.assert_allclose(session(m, optimize=True).run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-4)
        got = ReferenceEvaluator(m).run(None, {"input": x[:2]})[0]  # slow: a tiny input
        np.testing.assert_array_equal(got.argmax(1), want[:2].argmax(1))
        np.testing.assert_allclose(got, want[:2], rtol=1e-5, atol=1e-5)


def test_openvino_runs_the_inlined_packed_bits_form(deploys, tmp_path):
    """Where OpenVINO is installed (not a dependency): the inlined packed-bits model computes
    what OpenVINO computes for the portable model (the integer-sum packing did not)."""
    ov = pytest.importorskip("openvino")
    deploy = deploys[ARCH]
    x = images(8, seed=2)
    core = ov.Core()
    outs = {}
    for form in ("portable", "packed-inline", "packed-bits-inline"):
        path = tmp_path / f"{form}.onnx"
        onnx.save(deploy_onnx.build_onnx(deploy, form), str(path))
        compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        outs[form] = np.asarray(compiled([x])[0])
    assert_outputs_depend_on_input(outs["portable"])
    for form in ("packed-inline", "packed-bits-inline"):
        np.testing.assert_array_equal(outs[form].argmax(1), outs["portable"].argmax(1))
        np.testing.assert_allclose(outs[form], outs["portable"], rtol=1e-5, atol=1e-5)


# -------------------------------------------------- 7. functions lost by onnx.version_converter


def test_version_converter_drops_functions_and_load_onnx_says_so(deploys, tmp_path):
    from xnorpipe.runtime.ort_engine import OrtEngine

    deploy = deploys[ARCH]
    converted = onnx.version_converter.convert_version(deploy_onnx.build_onnx(deploy, "packed"), 19)
    assert not converted.functions  # what the converter does; the checker does not notice
    onnx.checker.check_model(converted, full_check=True)
    path = tmp_path / "converted.onnx"
    onnx.save(converted, str(path))
    for load in (lambda: deploy_onnx.load_onnx(path), lambda: OrtEngine(onnx_path=str(path))):
        with pytest.raises(XnorpipeError) as e:
            load()
        msg = str(e.value)
        assert "\n" not in msg and "xnorpipe::XnorConv2d" in msg and "version_converter" in msg
    assert deploy_onnx.load_onnx(path, custom_op_library=True).graph.node  # the library supplies the ops
    # the inlined form has nothing to lose: it converts and still computes the same
    inlined = deploy_onnx.build_onnx(deploy, "packed-inline")
    converted = onnx.version_converter.convert_version(inlined, 19)
    path = tmp_path / "inlined.onnx"
    onnx.save(converted, str(path))
    x = images(4)
    np.testing.assert_allclose(OrtEngine(onnx_path=str(path), optimization="none")(x),
                               session(inlined).run(None, {"input": x})[0], rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------- 8. metadata


def test_metadata_states_the_input_convention_and_functions_cite_the_repo_contract(deploys):
    m = deploy_onnx.build_onnx(deploys[ARCH], "packed-bits")
    meta = deploy_onnx.model_metadata(m)
    assert meta["xnorpipe.input"] == "RGB uint8 / 255, then (x - mean) / std, NCHW float32"
    assert meta["xnorpipe.layout"] == "NCHW" and len(json.loads(meta["xnorpipe.mean"])) == 3
    assert len(m.functions) == 7
    for f in m.functions:
        assert "(docs/XNORCONV2D.md)" in f.doc_string and "shared/" not in f.doc_string, f.name
    assert (ROOT / "docs" / "XNORCONV2D.md").is_file()

