"""Stage ``instrument``: Regions -> Recorder submodules that see every call of a region.

A :class:`Recorder` is a named submodule of the prepared model (``sfx_recorders.<region>``). It
receives a region's data inputs and output, returns the output untouched, and keeps a bounded,
uniform reservoir of (features, outputs) rows on the CPU:

* leading dimensions are flattened to rows; the last dimension of each input holds its features
  (an input shaped like the output's leading dims is one feature), inputs are concatenated;
* rows are chosen by reservoir sampling (Algorithm R), so memory stays at ``max_samples`` rows
  whatever the amount of data, and every row seen has the same chance to be kept;
* the acceptance test runs before any copy, so only kept rows leave the device, in chunks;
* rows with a non-finite value are dropped and counted (reported by ``convert``).
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import RecordingError
from ..kernels.lower import Layout

CHUNK_ROWS = 1 << 16


class Recorder(nn.Module):
    """Records (inputs, output) rows of one region. Call as ``recorder(*inputs, output)``.

    Args:
        region: the region's name (in messages).
        max_samples: the most rows kept: a uniform reservoir sample of all rows seen.
        seed: seeds the reservoir's draws.
    """

    def __init__(self, region: str, max_samples: int = 10_000, seed: int = 0):
        super().__init__()
        if not isinstance(max_samples, int) or max_samples < 1:
            raise RecordingError(f"max_samples must be a positive integer, got {max_samples!r}")
        self.region = region
        self.max_samples = max_samples
        self.enabled = True
        self._gen = torch.Generator().manual_seed(seed)
        #: set by ``sfx.run(..., mode="train")``: recording in training mode is intended
        self.train_mode_ok = False
        self._warned_training = False
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded."""
        self.features: torch.Tensor | None = None  # (max_samples, F) float64, CPU
        self.outputs: torch.Tensor | None = None  # (max_samples, K) float64, CPU
        self.n_rows = 0  # finite rows seen
        self.n_kept = 0
        self.n_nonfinite = 0
        self.n_calls = 0
        self.layout: Layout | None = None
        self.arg_mask: tuple[bool, ...] | None = None  # which call arguments are tensors
        self.out_dtype: torch.dtype | None = None
        self.device: torch.device | None = None  # where the region ran
        self.input_dtypes: tuple[torch.dtype, ...] = ()

    def extra_repr(self) -> str:
        return (f"region={self.region!r}, rows_seen={self.n_rows}, kept={self.n_kept}/"
                f"{self.max_samples}, nonfinite={self.n_nonfinite}")

    def forward(self, *args):
        """``recorder(*inputs, output)``: record the rows (unless disabled or inside
        ``torch.compile``) and return ``output`` unchanged. Warns once when it records in
        training mode unless ``sfx.run(mode="train")`` asked for that."""
        *inputs, out = args
        if self.enabled and not torch.compiler.is_compiling():
            if self.training and not self.train_mode_ok and not self._warned_training:
                self._warned_training = True
                warnings.warn(
                    f"symtorch_fx: recording {self.region!r} in training mode: dropout and "
                    "batch statistics change what is recorded. Call .eval() on the prepared "
                    "model, or record with sfx.run / sfx.compile (eval mode by default; "
                    "mode='train' to record in training mode on purpose)",
                    RuntimeWarning, stacklevel=2)
            with torch.no_grad():
                self.record(inputs, out)
        return out

    # ------------------------------------------------------------------------------------------

    def record(self, inputs, out) -> None:
        """Add the rows of one call: the tensor inputs' last dimensions concatenated as
        features, the output's as targets, the leading dimensions flattened into rows. Rows
        with NaN or inf are dropped and counted; a uniform reservoir keeps at most
        ``max_samples``. Raises :class:`RecordingError` for what cannot be recorded: an
        output that is not a tensor of at least one dimension; meta, sparse or complex
        tensors; no tensor input; inputs without the output's leading dimensions; a layout
        that changes between calls."""
        if not isinstance(out, torch.Tensor):
            raise RecordingError(
                f"target {self.region!r} returned {type(out).__name__}, not a tensor; symbolic "
                "distillation needs a region with one tensor output. Target the submodule or "
                "op pattern that produces the tensor you want replaced"
            )
        if out.ndim == 0:
            raise RecordingError(
                f"target {self.region!r} returned a 0-d tensor; a region must map rows to rows "
                "(an output with at least one dimension)"
            )
        for i, t in enumerate([*(a for a in inputs if isinstance(a, torch.Tensor)), out]):
            what = "the output" if t is out else f"input {i}"
            if t.device.type == "meta":
                raise RecordingError(
                    f"target {self.region!r}: {what} is on the meta device, which holds shapes "
                    "but no values; run real data (CPU or CUDA tensors) through the prepared "
                    "model")
            if t.layout != torch.strided:
                raise RecordingError(
                    f"target {self.region!r}: {what} is a {t.layout} tensor; pass dense tensors "
                    "(call .to_dense() on the input)")
            if t.is_complex():
                raise RecordingError(
                    f"target {self.region!r}: {what} is complex ({t.dtype}); equations are "
                    "distilled over real numbers: target a region with real inputs and "
                    "outputs, or split real and imaginary parts into features")
        lead = out.shape[:-1] if out.ndim >= 2 else out.shape
        k_out = out.shape[-1] if out.ndim >= 2 else None
        mask = tuple(isinstance(a, torch.Tensor) for a in inputs)
        data = [a for a in inputs if isinstance(a, torch.Tensor)]
        if not data:
            raise RecordingError(
                f"target {self.region!r} was called without tensor inputs; there is nothing to "
                "express its output in"
            )
        widths: list[int | None] = []
        for i, a in enumerate(data):
            if a.shape == lead:
                widths.append(None)
            elif a.ndim >= 1 and a.shape[:-1] == lead:
                widths.append(a.shape[-1])
            else:
                raise RecordingError(
                    f"target {self.region!r}: input {i} has shape {tuple(a.shape)} but the output "
                    f"has shape {tuple(out.shape)}; every input must have the output's leading "
                    f"dimensions {tuple(lead)} (plus a feature dimension). Target a region that "
                    "maps each row of its inputs to the same row of its output"
                )
        layout = Layout(tuple(widths), k_out)
        if self.layout is None:
            self.layout, self.arg_mask, self.out_dtype = layout, mask, out.dtype
            self.device = out.device
            self.input_dtypes = tuple(a.dtype for a in data)
        elif layout != self.layout or mask != self.arg_mask:
            raise RecordingError(
                f"target {self.region!r} was called with a different layout ({_show(layout)}) "
                f"than before ({_show(self.layout)}); one set of equations cannot serve both. "
                "Target each call site separately"
            )
        self.n_calls += 1
        rows = math.prod(lead)
        if rows == 0:
            return
        flat = [a.reshape(rows, -1) for a in data] + [out.reshape(rows, -1)]
        for start in range(0, rows, CHUNK_ROWS):
            self._add([f[start:min(rows, start + CHUNK_ROWS)] for f in flat])

    def _add(self, parts: list[torch.Tensor]) -> None:
        """``parts``: the chunk's input blocks and, last, its output block (rows aligned)."""
        m = parts[0].shape[0]
        # one reduction pass per block: a row sum is finite iff every value in the row is
        # (finite values large enough to overflow the sum are counted as non-finite too)
        finite = torch.isfinite(parts[0].sum(1, dtype=torch.float32))
        for p in parts[1:]:
            finite &= torch.isfinite(p.sum(1, dtype=torch.float32))
        good = finite.nonzero().squeeze(1).cpu() if not bool(finite.all()) else None
        if good is not None:
            self.n_nonfinite += m - good.numel()
            m = good.numel()
            if m == 0:
                return
        if self.features is None:
            n_feat = sum(p.shape[1] for p in parts[:-1])
            self.features = torch.empty(self.max_samples, n_feat, dtype=torch.float64)
            self.outputs = torch.empty(self.max_samples, parts[-1].shape[1], dtype=torch.float64)
        k = self.max_samples
        fill = min(k - self.n_kept, m)
        take = [torch.arange(fill)] if fill > 0 else []
        slots = [torch.arange(self.n_kept, self.n_kept + fill)] if fill > 0 else []
        rest = m - fill
        if rest > 0:
            # Algorithm R: row number t (1-based) replaces slot j ~ U{0..t-1} when j < k.
            t = torch.arange(self.n_rows + fill + 1, self.n_rows + m + 1, dtype=torch.float64)
            j = (torch.rand(rest, generator=self._gen, dtype=torch.float64) * t).long()
            accept = (j < k).nonzero().squeeze(1)
            if accept.numel():
                js = j[accept].numpy()
                # several rows of one chunk may land on one slot: the last one wins
                _, last = np.unique(js[::-1], return_index=True)
                keep = len(js) - 1 - last
                take.append(accept[torch.from_numpy(keep)] + fill)
                slots.append(torch.from_numpy(js[keep]))
        self.n_kept += max(fill, 0)
        self.n_rows += m
        if not take:
            return
        rows = torch.cat(take)
        if good is not None:
            rows = good[rows]
        dest = torch.cat(slots)
        idx = rows.to(parts[0].device)
        # only the kept rows leave the device
        self.features[dest] = torch.cat([p[idx] for p in parts[:-1]], 1).to("cpu", torch.float64)
        self.outputs[dest] = parts[-1][idx].to("cpu", torch.float64)

    # ------------------------------------------------------------------------------------------

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept rows as float64 arrays ``(X (n, F), Y (n, K))``."""
        if self.n_kept == 0:
            detail = (f" ({self.n_nonfinite} rows were dropped because they contained NaN or "
                      "inf)" if self.n_nonfinite else "")
            raise RecordingError(
                f"nothing was recorded for target {self.region!r}{detail}. Run data through the "
                "prepared model (prepared(x)) before converting, and check that the forward "
                "reaches this target"
            )
        return (self.features[: self.n_kept].numpy().copy(),
                self.outputs[: self.n_kept].numpy().copy())


@contextlib.contextmanager
def modes_kept(module: nn.Module):
    """Run the block with ``module`` in whatever modes it sets, then put every submodule's own
    training flag back (``module.train(was)`` would set all of them to the root's)."""
    modules = list(module.modules())
    flags = [m.training for m in modules]
    try:
        yield modules
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def _show(layout: Layout) -> str:
    ins = ", ".join("scalar" if w is None else str(w) for w in layout.inputs)
    return f"inputs [{ins}] -> outputs {layout.outputs or 'scalar'}"


# ----------------------------------------------------------------------------------------------
# inserting recorders


def insert_recorders(gm: fx.GraphModule, regions, recorders: dict[str, Recorder]) -> None:
    """Graph host: after each site's output node, a ``call_module`` to the region's Recorder."""
    by_name = {n.name: n for n in gm.graph.nodes}
    for region in regions:
        target = f"sfx_recorders.{region.slug}"
        gm.add_submodule(target, recorders[region.name])
        for site in region.sites:
            out = by_name[site.output]
            args = tuple(by_name[a] for a in site.inputs) + (out,)
            with gm.graph.inserting_after(out):
                rec = gm.graph.call_module(target, args)
            out.replace_all_uses_with(rec, delete_user_cb=lambda u, rec=rec: u is not rec)
    gm.graph.lint()
    gm.recompile()


class Tap(nn.Module):
    """Swap host: stands in for a target module while recording (``module`` is the original)."""

    def __init__(self, module: nn.Module, recorder: Recorder):
        super().__init__()
        self.module = module
        self.recorder = recorder

    def forward(self, *args, **kwargs):
        out = self.module(*args, **kwargs)
        self.recorder(*args, *kwargs.values(), out)
        return out
