"""The model to deploy: a trained checkpoint, or a random init with calibrated BatchNorm.

A random init's BatchNorm statistics are the init's (mean 0, variance 1), and on a binary net
they make every image give the same logits (the thresholds lie outside the activations' range),
so a parity check on such a model proves nothing. `load_source_model` therefore calibrates the
running statistics of a random init on a few batches: the first training images of `data`
when given, else a fixed synthetic set. Both are deterministic, and the exports record which
(`xnorpipe.random_calibration`), so `xnorpipe bench` rebuilds exactly the same reference.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from xnorpipe.errors import XnorpipeError

RANDOM_INIT_SEED = 0
CALIBRATION_SEED = 0
CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 16  # four batches


def synthetic_calibration_images(seed: int = CALIBRATION_SEED, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """uint8 [n, 32, 32, 3]: smooth random colour fields plus pixel noise, so that neighbouring
    pixels correlate as in photographs (independent noise would calibrate a narrower spread)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n, 3, 4, 4)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    noisy = smooth.numpy() + rng.normal(0, 24, (n, 3, 32, 32)).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def data_calibration_images(data: str | os.PathLike, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """The first `n` training images of a CIFAR-10 dataset (any form `--data` takes)."""
    from xnorpipe.data import load_cifar10

    images = load_cifar10(data, progress=False).train_images[:n]
    if len(images) == 0:
        raise XnorpipeError(f"{data}: no training images to calibrate BatchNorm on")
    return np.ascontiguousarray(images)


def calibration_tag(images: np.ndarray, data: str | os.PathLike | None) -> str:
    """`synthetic:<seed>`, or `data:<sha256 of the calibration images' bytes>`: the images that
    matter, whatever the data's format (tarball, tree, pickles) or file name."""
    if data is None:
        return f"synthetic:{CALIBRATION_SEED}"
    return "data:" + hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).hexdigest()


def calibrate_batchnorm(model: nn.Module, images: np.ndarray, batch_size: int = CALIBRATION_BATCH,
                        image_size: tuple[int, int] | None = None) -> nn.Module:
    """Replace every BatchNorm's running statistics by their cumulative average over `images`
    (uint8 NHWC, resized to `image_size` when given and normalised, as in training). Only
    BatchNorm runs in train mode; no gradient."""
    from xnorpipe.data import normalize, resize_batch, to_tensor

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    model.eval()
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
        bn.train()
    try:
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                batch = to_tensor(images[i:i + batch_size])
                if image_size is not None:
                    batch = resize_batch(batch, image_size)
                model(normalize(batch))
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.eval()
    return model


def fold_arch(model: nn.Module, arch: str, **kwargs):
    """`deploy.fold.fold_model` of a registered arch's model, traced on the arch's input shape."""
    from xnorpipe.deploy.fold import fold_model
    from xnorpipe.models import get_model_spec

    return fold_model(model, arch=arch, input_shape=get_model_spec(arch).input_shape, **kwargs)


def model_kwargs_from_metadata(meta: dict[str, str]) -> dict:
    """The builder arguments a random-init export records (`xnorpipe.model_kwargs`, JSON), checked
    as plain values like a checkpoint's (a file's metadata is untrusted input)."""
    import json

    from xnorpipe.models import plain_model_kwargs

    text = meta.get("xnorpipe.model_kwargs")
    if text is None:
        return {}
    try:
        kwargs = json.loads(text)
    except (ValueError, RecursionError):
        raise XnorpipeError("the ONNX file's xnorpipe.model_kwargs is not JSON") from None
    return plain_model_kwargs(kwargs, "the ONNX file's xnorpipe.model_kwargs")


def load_source_model(arch: str, checkpoint: str | os.PathLike | None = None, random_init: bool = False,
                      data: str | os.PathLike | None = None,
                      model_kwargs: dict | None = None) -> tuple[nn.Module, dict[str, str]]:
    """The model to deploy (eval mode) and the provenance metadata for its exports.

    `random_init` builds `arch` (with the builder arguments `model_kwargs`) under a fixed seed
    and calibrates its BatchNorm statistics on `data` (else the synthetic set), so a random-init
    export can be rebuilt (e.g. by `xnorpipe bench` for parity) from its metadata. `data` is not
    used for a checkpoint, nor `model_kwargs`: a checkpoint records its model's arguments.
    """
    import json

    from xnorpipe.checkpoint import default_checkpoint, load_checkpoint
    from xnorpipe.models import build_model, get_model_spec
    from xnorpipe.utils import sha256_file

    if random_init:
        if checkpoint is not None:
            raise XnorpipeError("--random-init and --checkpoint exclude each other")
        images = synthetic_calibration_images() if data is None else data_calibration_images(data)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = build_model(arch, **(model_kwargs or {}))
        calibrate_batchnorm(model, images, image_size=get_model_spec(arch).image_size)
        meta = {"xnorpipe.random_init": "true", "xnorpipe.random_seed": str(RANDOM_INIT_SEED),
                "xnorpipe.random_calibration": calibration_tag(images, data),
                "xnorpipe.checkpoint_sha256": "none"}
        if model_kwargs:
            meta["xnorpipe.model_kwargs"] = json.dumps(model_kwargs, sort_keys=True)
        return model, meta
    if model_kwargs:
        raise XnorpipeError("--model-arg applies to --random-init: a checkpoint records its model's arguments")
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(arch)
    if not path.is_file():
        raise XnorpipeError(f"checkpoint not found: {path} (train one with `xnorpipe train --arch {arch}`, "
                            "pass --checkpoint, or use --random-init)")
    ckpt = load_checkpoint(path, arch)
    return ckpt.build_model(), {"xnorpipe.random_init": "false",
                                "xnorpipe.checkpoint": path.name,
                                "xnorpipe.checkpoint_sha256": sha256_file(path)}
