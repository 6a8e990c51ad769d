"""Output-dimension pruning during training (SymTorch's ``setup_pruning`` / ``prune`` /
``get_active_dimensions``).

A GNN's message is often given more dimensions than the law needs (16 where the force has 2).
:func:`prune_outputs` masks a target module's outputs down to the ``keep`` dimensions of
highest variance, gradually, on a schedule over the first part of training; the network learns
to carry the message in those. Then ``sfx.compile(..., outputs=pruner.outputs)`` distils just
them, and the masked ones stay zeros from the network::

    pruner = sfx.prune_outputs(model, "message", keep=2, steps=5000)
    for step in range(5000):
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.step(step)                   # or pruner.step(step, sample_inputs=x_val)
    sym = sfx.compile(model, ["message"], x, outputs=pruner.outputs)

The mask is a buffer of the target module (``sfx_output_mask``), so it is saved with the model's
``state_dict``, and a forward hook applies it; ``remove()`` takes both away.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import SymTorchFXError, nearest
from .graph.instrument import modes_kept

SCHEDULES = ("exponential", "linear", "cosine")
_ALIASES = {"exp": "exponential"}
#: the rate of the exponential schedule: 1 - e^-3 of the way after all its steps, rescaled to 1
EXP_RATE = 3.0
MASK = "sfx_output_mask"


def schedule(initial: int, keep: int, steps: int, end_fraction: float = 0.5,
             kind: str = "exponential") -> list[int]:
    """The number of dimensions kept at each of ``steps`` training steps: from ``initial`` down
    to ``keep``, reached after ``end_fraction`` of the steps and held after.

    ``"exponential"`` prunes most dimensions early (``1 - e^{-3 p}``, rescaled to reach 1),
    ``"linear"`` evenly, ``"cosine"`` slowly at first and at the end."""
    kind = _ALIASES.get(kind, kind)
    if kind not in SCHEDULES:
        raise SymTorchFXError(f"schedule={kind!r} is not one of {', '.join(SCHEDULES)}")
    if not (isinstance(steps, int) and steps >= 1):
        raise SymTorchFXError(f"steps must be a positive number of training steps, got "
                              f"{steps!r}")
    if not (isinstance(end_fraction, (int, float)) and 0 < end_fraction <= 1):
        raise SymTorchFXError(f"end_fraction must be in (0, 1] (the fraction of the steps "
                              f"by which pruning is done), got {end_fraction!r}")
    end = max(1, int(end_fraction * steps))
    drop = initial - keep
    out = []
    for step in range(steps):
        p = min(step / end, 1.0)
        if kind == "exponential":
            frac = (1 - math.exp(-EXP_RATE * p)) / (1 - math.exp(-EXP_RATE))
        elif kind == "linear":
            frac = p
        else:
            frac = 0.5 * (1 - math.cos(math.pi * p))
        out.append(max(initial - math.ceil(drop * frac - 1e-9), keep))
    return out


def _apply_mask(module: nn.Module, args, out):
    """The forward hook: record the output's statistics, then mask it."""
    if not isinstance(out, torch.Tensor):
        raise SymTorchFXError(f"prune_outputs: the target returns {type(out).__name__}; output "
                              "pruning needs a module that returns one tensor")
    mask = getattr(module, MASK, None)
    pruner = module.__dict__.get("_sfx_pruner")
    if mask is None or mask.numel() == 0:
        if out.ndim == 0:
            raise SymTorchFXError("prune_outputs: the target's output has no feature "
                                  "dimension to prune")
        mask = torch.ones(out.shape[-1], dtype=out.dtype, device=out.device)
        module._buffers[MASK] = mask
    if out.shape[-1] != mask.numel():
        raise SymTorchFXError(f"prune_outputs: the target's output has {out.shape[-1]} "
                              f"dimensions, but its mask has {mask.numel()}")
    if pruner is not None:
        pruner._observe(out)
    return out * mask.to(out.dtype)


class OutputPruning:
    """Prunes a target module's output dimensions during training (see the module docstring).

    Attributes:
        target: the module's qualified name in the model.
        keep: the number of dimensions kept in the end.
        plan: the number kept at each step (:func:`schedule`).
    """

    def __init__(self, model: nn.Module, target: str, keep: int, steps: int,
                 schedule_kind: str = "exponential", end_fraction: float = 0.5,
                 width: int | None = None):
        if not isinstance(model, nn.Module):
            raise SymTorchFXError(f"prune_outputs needs the model (an nn.Module), got "
                                  f"{type(model).__name__}")
        names = dict(model.named_modules())
        if not isinstance(target, str) or target not in names or target == "":
            raise SymTorchFXError(
                f"prune_outputs: {target!r} is not a submodule of {type(model).__name__}; "
                f"close names: {', '.join(nearest(str(target), [n for n in names if n]))}")
        if not (isinstance(keep, int) and keep >= 1):
            raise SymTorchFXError(f"keep must be a positive number of dimensions, got {keep!r}")
        self.model = model
        self.target = target
        self.module = names[target]
        if self.module.__dict__.get("_sfx_pruner") is not None:
            raise SymTorchFXError(f"{target!r} is already being pruned; call remove() on that "
                                  "pruner first")
        self.keep = keep
        self.steps = steps
        self.kind = schedule_kind
        self.end_fraction = end_fraction
        schedule(max(keep, 1), keep, steps, end_fraction, schedule_kind)  # checks the options
        self.plan: list[int] | None = None
        self._sum = self._sq = None
        self._n = 0
        self.module.__dict__["_sfx_pruner"] = self
        if width is not None:
            self._start(width)
        self._handle = self.module.register_forward_hook(_apply_mask)

    def _start(self, width: int) -> None:
        if self.keep > width:
            raise SymTorchFXError(f"keep={self.keep}, but {self.target!r} has only {width} "
                                  "output dimensions")
        if MASK not in self.module._buffers:
            p = next(self.module.parameters(), None)
            self.module.register_buffer(MASK, torch.ones(
                width, device=p.device if p is not None else None))
        self.plan = schedule(width, self.keep, self.steps, self.end_fraction, self.kind)

    @property
    def mask(self) -> torch.Tensor:
        m = self.module._buffers.get(MASK)
        if m is None:
            raise SymTorchFXError(f"prune_outputs: {self.target!r} has not run yet; run a "
                                  "batch through the model first")
        return m

    @property
    def width(self) -> int:
        """The number of output dimensions of the target."""
        return self.mask.numel()

    def _observe(self, out: torch.Tensor) -> None:
        with torch.no_grad():
            flat = out.detach().reshape(-1, out.shape[-1]).double()
            if self._sum is None or self._sum.numel() != flat.shape[1]:
                self._sum = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
                self._sq = torch.zeros_like(self._sum)
                self._n = 0
            self._sum += flat.sum(0)
            self._sq += (flat * flat).sum(0)
            self._n += len(flat)

    def importance(self, sample_inputs=None) -> torch.Tensor:
        """Each output dimension's standard deviation, before the mask: over ``sample_inputs``
        (a batch, or a tuple of positional inputs) run through the model without gradients, or
        else over everything the target computed since the last :meth:`step`."""
        if sample_inputs is not None:
            self._sum, self._n = None, 0
            with modes_kept(self.model), torch.no_grad():
                self.model.eval()
                if isinstance(sample_inputs, (tuple, list)):
                    self.model(*sample_inputs)
                else:
                    self.model(sample_inputs)
        if not self._n:
            raise SymTorchFXError(
                f"prune_outputs: nothing ran through {self.target!r} since the last step; pass "
                "step(step, sample_inputs=...) or call it after a forward pass")
        mean = self._sum / self._n
        var = (self._sq / self._n - mean * mean).clamp_min(0)
        return var.sqrt()

    def step(self, step: int, sample_inputs=None) -> list[int]:
        """Apply the schedule at training step ``step``: keep the dimensions of highest
        standard deviation (see :meth:`importance`), as many as the plan says. Returns the
        kept dimensions."""
        if self._handle is None:
            raise SymTorchFXError("this pruner was removed")
        if not isinstance(step, int) or step < 0:
            raise SymTorchFXError(f"step must be a training step number (0, 1, ...), got "
                                  f"{step!r}")
        std = self.importance(sample_inputs)
        if self.plan is None:
            self._start(std.numel())
        k = self.plan[min(step, len(self.plan) - 1)]
        with torch.no_grad():
            order = torch.argsort(std.to(self.mask.device), descending=True, stable=True)
            new = torch.zeros_like(self.mask)
            new[order[:k]] = 1
            self.mask.copy_(new)
        self._sum, self._n = None, 0
        return self.active_dimensions()

    def active_dimensions(self) -> list[int]:
        """The output dimensions the mask keeps, in increasing order."""
        return torch.nonzero(self.mask).flatten().tolist()

    @property
    def outputs(self) -> dict[str, list[int]]:
        """``{target: kept dimensions}``, for ``sfx.compile(..., outputs=pruner.outputs)``."""
        return {self.target: self.active_dimensions()}

    def remove(self) -> None:
        """Take the hook and the mask off the module (its outputs are no longer masked)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.module._buffers.pop(MASK, None)
        self.module.__dict__.pop("_sfx_pruner", None)

    def __repr__(self) -> str:
        kept = len(self.active_dimensions()) if MASK in self.module._buffers else "?"
        return (f"OutputPruning({self.target!r}, keep={self.keep}, kept now={kept}, "
                f"schedule={self.kind!r})")


def prune_outputs(model: nn.Module, target: str, keep: int, steps: int, *,
                  schedule: str = "exponential", end_fraction: float = 0.5,
                  width: int | None = None) -> OutputPruning:
    """Start pruning ``target``'s output dimensions (SymTorch's ``setup_pruning``).

    Args:
        model: the model being trained.
        target: the qualified name of the module whose outputs are pruned (``"message"``).
        keep: the number of output dimensions kept in the end.
        steps: the number of training steps; call ``step(i)`` at each (or every few).
        schedule: ``"exponential"`` (default, ``"exp"``), ``"linear"`` or ``"cosine"``.
        end_fraction: the fraction of ``steps`` after which only ``keep`` remain.
        width: the target's number of outputs (found on the first forward pass otherwise).
    """
    return OutputPruning(model, target, keep, steps, schedule, end_fraction, width)
