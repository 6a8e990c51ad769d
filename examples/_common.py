"""What the science examples share: command line, threads, timing, least squares, output paths.

The examples (``gnn_forces.py``, ``pinn_constants.py``, ``lorenz_latent.py``) are importable: each
has a ``Config`` with a ``FULL`` and a ``QUICK`` budget and a ``run(config)`` that returns what it
found, so the test suite runs the same code on small budgets (``tests/test_science.py``).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "out"


@contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch threads, then restore the previous setting.

    The networks here are small (widths 32 to 128): on 2 cores one thread trains them faster than
    two, because the parallel kernels spend more time synchronising than computing (and the
    symbolic-regression workers want the cores anyway).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Clock:
    """Wall time per named stage: ``with clock("train"): ...``."""

    def __init__(self):
        self.stages: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0



def stages(seconds: dict[str, float]) -> str:
    """``"95 s: train 44 s, distill 49 s"``."""
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    return f"{sum(seconds.values()):.0f} s: {parts}"


def linear_fit(y: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares ``y ~ basis @ coef + intercept``; returns ``(coef..., intercept)`` and R^2."""
    A = np.column_stack([basis, np.ones(len(y))])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    spread = float(y.var())
    return coef, 1.0 - float(resid.var()) / spread if spread > 0 else 0.0


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path) -> None:
    """Write ``fig`` as a 256-colour PNG, dithered: a third of the size of matplotlib's RGBA
    output (60-140 KB for these figures) with colour maps that still read as continuous."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE,
                                   dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def main(doc: str, full, quick, run, report, figure, png: str,
         subset: tuple[str, list[str]] | None = None) -> None:
    """The command line every example has: ``--quick`` (the test-suite budget), ``--seed``,
    ``--no-figure``, and ``--<subset> A B`` to run only some of the systems in
    ``config.<subset>``. Prints ``report(results)`` and the wall time; ``figure(results)``
    returns the matplotlib figure written to ``out/<png>``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="the small budget the test suite uses (seconds, not minutes)")
    p.add_argument("--seed", type=int, default=None, help="seed for data, training and search")
    p.add_argument("--no-figure", action="store_true", help="do not write the PNG figure")
    if subset is not None:
        p.add_argument(f"--{subset[0]}", nargs="+", choices=subset[1],
                       help="run only these (default: those of the chosen budget)")
    args = p.parse_args()
    cfg = quick if args.quick else full
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    if subset is not None and getattr(args, subset[0]):
        cfg = replace(cfg, **{subset[0]: tuple(getattr(args, subset[0]))})
    print(f"{doc.splitlines()[0]}\n{machine()}; {cfg}")
    t0 = time.perf_counter()
    results = run(cfg, progress=True)
    print(report(results))
    if not args.no_figure:
        OUT.mkdir(parents=True, exist_ok=True)
        fig = figure(results)
        fig.tight_layout()
        save_png(fig, OUT / png)
        pyplot().close(fig)
        print(f"\nfigure: {OUT / png}")
    print(f"total {time.perf_counter() - t0:.0f} s")


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPU cores, load average {load:.1f}"
