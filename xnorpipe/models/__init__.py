"""Model registry: `build_model(arch, cfg=None, groups=None)`; names in ARCHS."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch.nn as nn

from xnorpipe.models import nin as _nin


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., nn.Module]
    cfg: tuple[int, ...]
    groups: tuple[int, ...]
    binary: bool
    # The seed's recipe for this arch (docs/SEED.md).
    epochs: int
    lr: float


ARCHS: dict[str, ArchSpec] = {
    s.name: s
    for s in [
        ArchSpec("nin", _nin.nin, tuple(_nin.NIN_CFG), tuple(_nin.NIN_GROUPS), False, 200, 0.1),
        ArchSpec("nin_gc", _nin.nin_gc, tuple(_nin.NIN_GC_CFG), tuple(_nin.NIN_GC_GROUPS), False, 200, 0.1),
        # lr 0.1: the seed's README says 0.01 but its training log for 82.75 % shows 0.1.
        ArchSpec("nin_xnornet", _nin.nin_xnornet, tuple(_nin.NIN_CFG), tuple(_nin.NIN_GROUPS), True, 200, 0.1),
        ArchSpec("nin_gc_xnornet", _nin.nin_gc_xnornet, tuple(_nin.NIN_GC_CFG), tuple(_nin.NIN_GC_GROUPS), True,
                 150, 0.1),
    ]
}


def build_model(arch: str, cfg: Sequence[int] | None = None,
                groups: Sequence[int] | None = None) -> nn.Module:
    """Build `arch` with the seed's cfg/groups unless given."""
    from xnorpipe.errors import XnorpipeError

    spec = ARCHS.get(arch)
    if spec is None:
        raise XnorpipeError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    try:
        return spec.builder(list(cfg) if cfg else None, list(groups) if groups else None)
    except ValueError as e:
        raise XnorpipeError(f"{arch}: {e}") from None
