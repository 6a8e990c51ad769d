"""Local symbolic explanations (SLIME): an equation that stands in for a black box near one input.

LIME explains a prediction with a linear model fitted to the black box on samples around the
input. SLIME (Fong & Motani, 2025) fits an equation instead, by symbolic regression, so curvature
and interactions near the input show up in the explanation. :func:`explain` does this with the
engines of the distillation pass:

1. neighbourhood: the ``neighbours`` rows of ``X`` nearest to ``x0`` (by ``nn_metric``, by
   default the Euclidean distance in units of each feature's standard deviation over ``X``), plus
   ``synthetic`` Gaussian perturbations of ``x0`` whose per-feature variance is, by default, the
   neighbours' variance. Features that do not vary among the neighbours stay at ``x0``'s value
   and are not variables of the equation;
2. the black box is called on all samples at once (in batches of ``batch_size`` rows), with
   torch tensors or numpy arrays as ``X`` is a tensor or an array (see :func:`explain`);
3. proximity weights ``exp(-d^2 / kernel_width^2)``, with ``d`` the distance to ``x0`` in units of
   the perturbation's standard deviation per feature and ``kernel_width^2`` by default the mean
   ``d^2`` of the real neighbours; the real neighbours' weights are multiplied by
   ``real_weighting`` (default 1: real and synthetic samples count alike);
4. a weighted symbolic regression on a training split (``engine.search(..., weights=w)``); the
   constants of every candidate are then refitted by weighted least squares on all training rows
   (see below); candidates are scored by their *proximity-weighted* MSE on held-out samples;
5. candidates that give NaN/inf, or values far outside the black box's range (a pole of a fitted
   division), anywhere on ``PROBES`` fresh perturbations are dropped: an explanation must hold
   on the whole neighbourhood, not only on the samples. The rest form the Pareto front, and a
   selection rule (``search.select``) picks the equation.

On weights: ``Operon`` has no per-row weights, so it searches on rows resampled in proportion to
their weights (``_engine.resample_by_weight``). For a fixed equation the loss on such a sample is
an unbiased estimate of the weighted loss, so the search ranks structures correctly on average;
but a resample of n rows repeats some rows and drops others (about a third of them for nearly
equal weights), so constants fitted to it carry extra resampling noise. Refitting each
candidate's constants on every training row with the true weights removes that noise and makes the
final fit a proper weighted least-squares fit whatever the engine (PySR gets the weights natively;
the refit then only polishes).

The explanation can stand in for the black box near ``x0`` in a model: :meth:`Explanation.as_module`
(one output) and :func:`stand_in` (one explanation per output) make a ``SymbolicModule`` of it.
"""

from __future__ import annotations

import itertools
import re
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import sympy
import torch
import torch.nn as nn

from .errors import EquationSyntaxError, SymTorchFXError
from .expr.equations import Equation, ParetoFront
from .expr.grammar import (
    constant_symbol,
    parse,
    reserved,
    substitute,
    templatize,
    tidy,
    to_text,
    variable,
)
from .graph.rewrite import SymbolicModule
from .kernels.lower import Layout, one_torch_thread, torch_function
from .search import select as rules
from .search.distill import Job, build_front, pareto, run_jobs, split_rows
from .search.engine import default_restarts
from .search.least_squares import levenberg_marquardt, squared_norm
from .search.operon import Operon

TASKS = ("auto", "regression", "classification")

#: squared relative precision below which two fits of the black box count as equally exact
NOISE_FLOOR = 1e-12

#: fresh perturbations on which every candidate must stay finite and tame (see ``_tame``)
PROBES = 4096
#: how far (in ranges of the black box's values on the samples) a candidate may go beyond that
#: range on the probes. Measured on Friedman 2 (20 points, every front): smooth candidates
#: reach at most 0.62 ranges beyond, the black box itself 0.38, a candidate with a pole 28
TAME_SPANS = 2.0

#: the search budget of ``explain`` when no engine is given (a few seconds per explanation)
# the engine SLIME vs LIME was measured with (benchmarks/RESULTS.md): one search of 2000
# proximity-resampled rows, a smaller budget than convert's
DEFAULT_ENGINE = dict(population_size=400, generations=75, max_length=20, max_rows=2000,
                      restarts=1)


def explain(
    f: Callable | nn.Module,
    X,
    x0,
    *,
    neighbours: int = 50,
    synthetic: int = 450,
    variance=None,
    kernel_width: float | None = None,
    real_weighting: float = 1.0,
    nn_metric: str | Callable = "euclidean",
    task: str = "auto",
    output: int | None = None,
    logits: bool = False,
    engine=None,
    selection="auto",
    validation: float = 0.25,
    refit: bool = True,
    restarts: int | None = None,
    executor=None,
    feature_names: Sequence[str] | None = None,
    device=None,
    batch_size: int = 4096,
    seed: int = 0,
) -> Explanation:
    """Explain the black box ``f`` near ``x0`` with an equation (SLIME).

    Args:
        f: the black box, mapping a batch ``(n, D)`` to ``(n,)`` or ``(n, K)``. It is called
            on batches of up to ``batch_size`` rows, never row by row, under ``no_grad`` when
            it gets tensors, and may return numpy arrays or tensors. What it gets is decided by
            what it is and by the type of ``X``:

            * an ``nn.Module``: torch tensors on its own device and in its own floating dtype
              (those of ``X`` when it has no floating parameters or buffers and ``X`` is a
              tensor; ``device=`` overrides the device);
            * any other callable, when ``X`` is a torch tensor: torch tensors on ``X``'s device
              and in ``X``'s dtype (the default float dtype for an integer ``X``);
            * any other callable, when ``X`` is a numpy array (or a list): float64 numpy arrays,
              or torch tensors on ``device`` (default float dtype) when ``device`` is given.

            ``x0``'s type does not matter. Internally samples are float64 numpy arrays (the
            attributes of the :class:`Explanation` are), cast to what ``f`` gets per batch.
        X: data, ``(N, D)``, a numpy array or a torch tensor (on any device): where the real
            neighbours of ``x0`` come from.
        x0: the input to explain, ``(D,)`` (or ``(1, D)``), an array or a tensor.
        neighbours: how many nearest rows of ``X`` join the samples (``J``).
        synthetic: how many Gaussian perturbations of ``x0`` join the samples (``M``).
        variance: the per-feature variance of the perturbations: a number or ``D`` numbers
            (default: the neighbours' variance, feature by feature).
        kernel_width: width of the proximity kernel ``exp(-d^2 / kernel_width^2)``, ``d`` in
            units of the perturbations' standard deviation (default: the root-mean-square ``d``
            of the neighbours; ``sqrt`` of the number of varying features without neighbours).
        real_weighting: how much a real neighbour (a row of ``X``) weighs in the fit relative
            to a synthetic sample at the same distance from ``x0``: the real neighbours'
            proximity weights are multiplied by it (SymTorch's option of that name, with its
            default 1.0: real and synthetic samples count alike). Above 1 the equation follows
            the black box on the data more closely, below 1 on the perturbations. The weights
            are those of the search, the refit and the held-out score (``weights``). Unlike
            SymTorch, where every real neighbour has the flat weight ``real_weighting``, a real
            neighbour here keeps its proximity weight too, so distant neighbours count less.
            It has no effect when all samples are real or all synthetic.
        nn_metric: the distance that picks the ``neighbours`` nearest rows of ``X`` (it does not
            change the proximity weights): ``"euclidean"`` (or ``"l2"``; the default) and
            ``"manhattan"`` (or ``"l1"``, ``"cityblock"``) in units of each feature's standard
            deviation over ``X``, so features of any scale count alike; ``"cosine"``: one minus
            the cosine of the angle between a row and ``x0``, on the raw values (about the
            origin; a zero row is at distance 1); or a callable ``(x0, X) -> distances`` that
            gets ``x0`` ``(D,)`` and ``X`` ``(N, D)`` as ``X`` was given (torch tensors on its
            device for a tensor ``X``, float64 numpy arrays otherwise) and returns ``N`` finite
            numbers (array or tensor), smaller meaning nearer. Ties go to the earlier row.
        task: ``"regression"`` explains output ``output`` of ``f``; ``"classification"``
            explains the probability of one class, by default the class ``f`` predicts at ``x0``;
            ``"auto"``: regression for one output, classification when the outputs are
            probabilities (non-negative rows summing to 1).
        output: the output column (regression) or class (classification) to explain.
        logits: ``f`` returns logits: a softmax turns them into probabilities first.
        engine: ``sfx.Operon(...)`` (default: ``Operon(**DEFAULT_ENGINE)``) or ``sfx.PySR(...)``.
        selection: how the equation is picked from the front (see ``search.select``). ``"auto"``:
            the highest score ``-dlog(loss)/dcomplexity`` among equations within 1.5x of the
            best held-out loss (PySR's ``"best"``, except that losses below the black box's
            float precision count as equal, so an exact law beats longer exact fits);
            also ``"best"``, ``"accuracy"``, ``"score"``, a complexity, a callable.
        validation: the fraction of samples held out to score candidates.
        refit: refit every candidate's constants by weighted least squares (see module doc).
        restarts: independent searches whose candidates are pooled (``executor`` runs them);
            None: the engine's own default (1 for the default engine).
        feature_names: names of the ``D`` features (made into valid equation names).
        device: give ``f`` torch tensors on this device (see ``f``).
        batch_size: rows per call of ``f``.
        seed: seeds the perturbations, the split and the searches.
    """
    start = time.perf_counter()
    like = _torch_like(X)
    X, x0 = _check_data(X, x0)
    n_rows, D = X.shape
    _check_counts(neighbours, synthetic, n_rows, variance)
    real_weighting = _check_real_weighting(real_weighting, neighbours, synthetic)
    metric = _check_metric(nn_metric)
    if task not in TASKS:
        raise SymTorchFXError(f"task={task!r}: use one of {', '.join(TASKS)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SymTorchFXError(f"batch_size must be a positive integer, got {batch_size!r}")
    if restarts is not None and (not isinstance(restarts, int) or restarts < 1):
        raise SymTorchFXError(f"restarts must be a positive integer, got {restarts!r}")
    if isinstance(selection, str) and selection not in rules.RULES:
        raise SymTorchFXError(
            f"unknown selection {selection!r}; use one of {', '.join(rules.RULES)}, a "
            "complexity (int) or a callable front -> index"
        )
    names = _feature_names(feature_names, D)
    engine = Operon(**DEFAULT_ENGINE) if engine is None else engine
    if not hasattr(engine, "search"):
        raise SymTorchFXError(
            f"engine must be an Engine such as sfx.Operon() or sfx.PySR(), got {engine!r}"
        )
    engine.check()
    if restarts is None:
        restarts = default_restarts(engine)
    black_box = BlackBox(f, batch_size, device, like)
    rng = np.random.default_rng(seed)

    # neighbourhood
    near = _nearest(X, x0, neighbours, metric, like)
    var = _variance(variance, X[near], D)
    features = np.flatnonzero(var > 0)
    if len(features) == 0:
        raise SymTorchFXError(
            f"none of the {D} features varies among the {neighbours} nearest neighbours of x0, "
            "so there is no neighbourhood to explain; pass more neighbours= or a variance="
        )
    sd = np.sqrt(var)
    fake = x0 + rng.standard_normal((synthetic, D)) * sd
    Z = np.concatenate([X[near], fake])
    d2 = _sq_distance(Z, x0, sd, features)
    if kernel_width is None:
        width2 = float(np.mean(d2[:neighbours])) if neighbours else float(len(features))
        width2 = width2 if width2 > 0 else float(len(features))
    else:
        if not (isinstance(kernel_width, (int, float)) and np.isfinite(kernel_width)
                and kernel_width > 0):
            raise SymTorchFXError(f"kernel_width must be a positive number, got {kernel_width!r}")
        width2 = float(kernel_width) ** 2
    w = np.exp(-d2 / width2)
    w[:neighbours] *= real_weighting  # the real neighbours come first

    # the black box, on x0 and every sample in one batched pass
    t0 = time.perf_counter()
    Y = black_box(np.concatenate([x0[None], Z]))
    t_box = time.perf_counter() - t0
    task, output, output_name, column, stands_for = _target(Y, task, output, logits)
    Y = column(Y)
    y0, y = float(Y[0]), Y[1:]

    # search, refit, front, choice
    train, val = split_rows(len(Z), validation, seed)
    if w[val].sum() <= 0 or w[train].sum() <= 0:
        raise SymTorchFXError(
            "every proximity weight underflowed to 0: the kernel is far too narrow for the "
            "samples; pass a larger kernel_width="
        )
    Zf = Z[:, features]
    var_names = [names[k] for k in features]
    symbols = [variable(n) for n in var_names]
    jobs = [Job("explain", output, r, Zf[train], y[train], var_names,
                seed=int(np.random.SeedSequence([seed, r]).generate_state(1)[0]), weights=w[train])
            for r in range(restarts)]
    t0 = time.perf_counter()
    texts = [t for s in run_jobs(engine, jobs, executor=executor, progress=False)
             for t in s.candidates]
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    if refit:
        texts = refit_constants(texts, symbols, Zf[train], y[train], w[train])
    # fresh draws from the perturbation distribution (no black-box calls): an equation must
    # stay finite and within reach of the black box's values on them, not only on the samples
    probe = (x0 + rng.standard_normal((PROBES, D)) * sd)[:, features]
    with one_torch_thread():
        _, scored = build_front(texts, symbols, Zf[train], y[train], Zf[val], y[val],
                                np.concatenate([Zf, probe]), w_train=w[train], w_val=w[val])
        usable = [e for e in scored if e.finite and _tame(e, probe, y)]
    front = ParetoFront("explain", output_name, pareto(usable),
                        info={"engine": repr(engine), "unusable": len(scored) - len(usable)})
    # the black box is the truth here, known up to float rounding: with this floor as its
    # "noise", "auto" takes the highest score among equations within 1.5x of the best loss
    # (PySR's rule), counting losses below the floor as equal
    rules.apply(front, selection, noise=NOISE_FLOOR * float(np.average(y**2, weights=w)),
                warn_far=False)
    t_front = time.perf_counter() - t0

    return Explanation(
        front=front, x0=x0, value=y0, feature_names=names, features=features, task=task,
        output=output, samples=Z, targets=y, weights=w, held_out=_mask(val, len(Z)),
        n_real=len(near), std=sd, kernel_width=float(np.sqrt(width2)),
        black_box=_Explained(black_box, column),
        neighbour_rows=near, real_weighting=real_weighting, nn_metric=nn_metric,
        stand_in={"column": stands_for, "outputs": black_box.out_columns,
                  "dtype": black_box.out_dtype, "device": black_box.out_device},
        seconds={"black_box": t_box, "search": t_search, "front": t_front,
                 "total": time.perf_counter() - start},
    )


class Explanation:
    """A local symbolic explanation of a black box at one input, made by :func:`explain`.

    Attributes:
        equation: the chosen :class:`Equation` (``loss``: proximity-weighted held-out MSE).
        front: the :class:`ParetoFront` it was chosen from (``select`` picks another).
        x0, value: the explained input and the black box's explained output there.
        task, output: ``"regression"`` / ``"classification"`` and the output column or class.
        feature_names: the names of all ``D`` features; ``features``: the indices of those that
            vary near ``x0`` (the equation's possible variables).
        samples, targets, weights: every sample (real neighbours first), the black box's output
            on it, its weight in the fit (the proximity weight, times ``real_weighting`` for the
            real neighbours); ``held_out`` marks the samples the front was scored on.
        n_real, neighbour_rows: how many real neighbours there are, and their row indices in
            ``X`` (nearest first, by ``nn_metric``); ``samples[:n_real]`` are those rows.
        real_weighting, nn_metric: as passed to :func:`explain`.
        std, kernel_width: the perturbations' standard deviation per feature, the kernel width.
        seconds: wall time of the black-box calls, the search, the front, and in total.

    The attributes are float64 numpy arrays whatever ``X`` was; :meth:`predict` answers in the
    type it is given, and :meth:`as_module` gives the equation as a torch module that can stand
    in for ``f`` near ``x0``.
    """

    def __init__(self, *, front, x0, value, feature_names, features, task, output, samples,
                 targets, weights, held_out, n_real, std, kernel_width, black_box, seconds,
                 neighbour_rows=None, real_weighting=1.0, nn_metric="euclidean",
                 stand_in=None):
        self.front = front
        self.x0 = x0
        self.value = value
        self.feature_names = list(feature_names)
        self.features = features
        self.task = task
        self.output = output
        self.samples = samples
        self.targets = targets
        self.weights = weights
        self.held_out = held_out
        self.n_real = n_real
        self.std = std
        self.kernel_width = kernel_width
        self.black_box = black_box
        self.seconds = seconds
        self.neighbour_rows = (np.arange(0) if neighbour_rows is None
                               else np.asarray(neighbour_rows))
        self.real_weighting = real_weighting
        self.nn_metric = nn_metric
        self._stand_in = stand_in

    @property
    def equation(self) -> Equation:
        return self.front.equation

    @property
    def variables(self) -> list[str]:
        """The features the chosen equation uses."""
        used = {s.name for s in self.equation.expr.free_symbols}
        return [self.feature_names[k] for k in self.features if self.feature_names[k] in used]

    def predict(self, Z):
        """The equation on rows ``Z`` of shape ``(n, D)`` (or one row ``(D,)``), computed in
        float64: a numpy array for numpy rows (or lists), a tensor for tensor rows (on ``Z``'s
        device, in its floating dtype; not differentiable, see :meth:`as_module` for that).
        Returns shape ``(n,)``."""
        like = _torch_like(Z)
        Z = _as_array(Z, "Z")
        if Z.ndim == 1:
            Z = Z[None]
        if Z.ndim != 2 or Z.shape[1] != len(self.feature_names):
            raise SymTorchFXError(
                f"predict needs rows of {len(self.feature_names)} features (shape (n, "
                f"{len(self.feature_names)})), got shape {Z.shape}"
            )
        y = self.equation(Z[:, self.features])
        if like is None:
            return y
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        return torch.as_tensor(y, dtype=dtype, device=like.device)

    def as_module(self, dtype: torch.dtype | None = None, kernel: str = "auto") -> nn.Module:
        """The equation as a torch module that stands in for ``f`` near ``x0``: it takes what
        ``f`` takes, ``(..., D)`` tensors, and returns what ``f`` returns, ``(...,)`` or
        ``(..., 1)`` as ``f`` did (so this needs ``f`` to have one output; for ``K`` outputs,
        explain each and use :func:`stand_in`). It is valid near ``x0`` only: features that did
        not vary among the neighbours are not variables, as if they stayed at ``x0``'s values.

        It is a :class:`symtorch_fx.SymbolicModule` (region ``"slime"``): the equation is lowered
        by the pass's own code generator (no ``eval`` of text), its constants are a trainable
        parameter, ``kernel`` picks how it runs (``"auto"``, ``"torch"``, ...), and
        ``.equations()`` gives the equation back. It is on the device where ``f``'s outputs
        were, and returns ``dtype`` (default: the dtype of ``f``'s outputs). To put it in a model
        in place of the block ``f`` and back (SymTorch's ``switch_to_symbolic`` /
        ``switch_to_block``)::

            block = model.get_submodule("encoder.mlp")
            model.set_submodule("encoder.mlp", exp.as_module())  # the equation, near x0
            ...
            model.set_submodule("encoder.mlp", block)            # the block itself again
        """
        return stand_in([self], dtype=dtype, kernel=kernel)

    @property
    def fidelity(self) -> dict[str, float]:
        """Proximity-weighted R^2 and MSE of the equation against the black box on the
        held-out samples."""
        m = self.held_out
        w = self.weights[m] / self.weights[m].sum()
        y, pred = self.targets[m], self.predict(self.samples[m])
        mse = float(np.sum(w * (pred - y) ** 2))
        var = float(np.sum(w * (y - np.sum(w * y)) ** 2))
        return {"r2": 1.0 - mse / var if var > 0 else float("nan"), "mse": mse}

    def select(self, rule) -> Explanation:
        """Choose another equation from the front by ``rule`` (as ``selection=``)."""
        rules.apply(self.front, rule)
        return self

    def latex(self, digits: int = 4) -> str:
        return self.equation.latex(digits)

    def __str__(self) -> str:  # print(exp): the whole report, as the README promises
        return repr(self)

    def __repr__(self) -> str:
        fid = self.fidelity
        what = ("probability of class " if self.task == "classification" else "output ")
        return (
            f"SLIME explanation of the {what}{self.output} near x0 (f(x0) = {self.value:.4g})\n"
            f"  {self.front.output} ~ {self.equation.text(4)}\n"
            f"  complexity {self.equation.complexity}, held-out weighted R^2 {fid['r2']:.4f}, "
            f"weighted MSE {fid['mse']:.3e}\n"
            f"  {self.n_real} real neighbours + {len(self.samples) - self.n_real} perturbations;"
            f" {len(self.features)} of {len(self.feature_names)} features vary near x0\n"
            + repr(self.front)
        )

    def plot(self, feature: int | str | None = None, points: int = 200):
        """Two panels: the equation against the black box on the held-out samples (shaded by
        proximity weight), and both along ``feature`` through ``x0`` (default: the feature the
        equation is most sensitive to, per standard deviation of the neighbourhood) with the
        other features at ``x0``. Returns the matplotlib ``Figure``. Needs matplotlib."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                f"Explanation.plot needs matplotlib ({e}); install it with "
                "`pip install matplotlib`"
            ) from e
        k = self._feature_index(feature)
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
        m = self.held_out
        y, pred = self.targets[m], self.predict(self.samples[m])
        ax0.scatter(y, pred, c=self.weights[m], cmap="viridis", s=12, vmin=0, vmax=1)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax0.plot([lo, hi], [lo, hi], color="0.5", lw=1)
        ax0.set_xlabel("black box")
        ax0.set_ylabel("equation")
        ax0.set_title(f"held-out samples (weighted $R^2$ = {self.fidelity['r2']:.3f})")

        grid = self.x0[k] + np.linspace(-3, 3, points) * self.std[k]
        rows = np.repeat(self.x0[None], points, 0)
        rows[:, k] = grid
        name = self.feature_names[k]
        ax1.scatter(self.samples[:, k], self.targets, c=self.weights, cmap="viridis", s=6,
                    alpha=0.4, vmin=0, vmax=1, label="samples (other features vary)")
        ax1.plot(grid, self.black_box(rows), color="k", lw=2, label="black box")
        ax1.plot(grid, self.predict(rows), color="C1", lw=2, ls="--", label="equation")
        ax1.axvline(self.x0[k], color="0.5", lw=1)
        ax1.set_xlabel(name)
        ax1.set_title(f"through the explained point, along {name}")
        ax1.legend(fontsize="small")
        fig.suptitle(f"{self.front.output} ~ ${self.latex(3)}$", fontsize="medium")
        fig.tight_layout()
        return fig

    def _feature_index(self, feature) -> int:
        if feature is None:
            used = [k for k in self.features if self.feature_names[k] in
                    {s.name for s in self.equation.expr.free_symbols}]
            if not used:
                return int(self.features[0])
            eps = 1e-3 * self.std
            sens = []
            for k in used:
                lo, hi = self.x0.copy(), self.x0.copy()
                lo[k] -= eps[k]
                hi[k] += eps[k]
                d = self.predict(np.stack([lo, hi]))
                sens.append(abs(d[1] - d[0]) / 2e-3)
            return int(used[int(np.nanargmax(sens))])
        if isinstance(feature, str):
            if feature not in self.feature_names:
                raise SymTorchFXError(
                    f"no feature is named {feature!r}; features: {', '.join(self.feature_names)}"
                )
            return self.feature_names.index(feature)
        if isinstance(feature, (int, np.integer)) and 0 <= feature < len(self.feature_names):
            return int(feature)
        raise SymTorchFXError(
            f"feature={feature!r}: give a feature name or an index below {len(self.feature_names)}"
        )


# ----------------------------------------------------------------------------------------------
# the explanation in place of the black box


def stand_in(explanations, *, dtype: torch.dtype | None = None,
             kernel: str = "auto") -> nn.Module:
    """One torch module standing in for the black box ``f`` near ``x0``, made of one
    explanation per output of ``f``, all at the same ``x0`` (SymTorch's
    ``switch_to_symbolic(SLIME=True)``)::

        exps = [sfx.explain(block, X, x0, task="regression", output=k) for k in range(K)]
        module = sfx.slime.stand_in(exps)   # (..., D) -> (..., K), like the block

    The module takes ``(..., D)`` tensors and returns what ``f`` returned, ``(...,)`` or
    ``(..., K)``, output ``k`` computed by the explanation of output ``k`` (any order in the
    list). For a classifier that returns probabilities, explain each class; the explanation of
    class 0 of a one-probability classifier stands for ``1 - p``. An explanation of a class
    probability computed from logits (``logits=True``) stands for no output of ``f``: explain
    each logit with ``task="regression", output=k`` instead. See
    :meth:`Explanation.as_module` (one explanation) for what the module is and how to swap it
    into a model and back.
    """
    exps = [explanations] if isinstance(explanations, Explanation) else explanations
    try:
        exps = list(exps)
    except TypeError:
        exps = None
    if not exps or not all(isinstance(e, Explanation) for e in exps):
        raise SymTorchFXError(
            "stand_in needs a list of explanations, one per output of f (sfx.explain(...) for "
            f"each output); got {type(explanations).__name__}"
        )
    first = exps[0]
    for e in exps[1:]:
        if e.feature_names != first.feature_names or not np.array_equal(e.x0, first.x0):
            raise SymTorchFXError(
                "the explanations are not all at the same x0 with the same features; a stand-in "
                "holds near one point: explain every output of f at the same x0 (same X and "
                "feature_names)"
            )
    for e in exps:
        if e._stand_in is None or e._stand_in["column"] is None:
            raise SymTorchFXError(
                f"the explanation of the probability of class {e.output} was made from logits "
                "(logits=True), so it stands for no output of f, which returns logits; to stand "
                "in for f, explain each logit: sfx.explain(f, X, x0, task='regression', "
                "output=k) for every k"
            )
    shapes = {e._stand_in["outputs"] for e in exps}
    if len(shapes) > 1:
        raise SymTorchFXError(
            "the explanations are of black boxes with different output shapes; give the "
            "explanations of the outputs of one f"
        )
    outputs = shapes.pop()
    K = 1 if outputs is None else outputs
    by_column: dict[int, sympy.Expr] = {}
    for e in exps:
        j, a, b = e._stand_in["column"]
        if j in by_column:
            raise SymTorchFXError(
                f"two explanations stand for output {j} of f; give one per output"
            )
        by_column[j] = e.equation.expr if (a, b) == (0.0, 1.0) else a + b * e.equation.expr
    missing = [j for j in range(K) if j not in by_column]
    if missing:
        raise SymTorchFXError(
            f"f returns {K} outputs, and no explanation stands for output(s) {missing}; a "
            f"stand-in for f needs one per output: sfx.slime.stand_in([sfx.explain(f, X, x0, "
            f"task='regression', output=k) for k in range({K})])"
        )
    if dtype is None:
        dtype = first._stand_in["dtype"]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise SymTorchFXError(f"dtype must be a floating torch dtype such as torch.float32, got "
                              f"{dtype!r}")
    equations = [by_column[j] for j in range(K)]
    module = SymbolicModule("slime", Layout((len(first.feature_names),), outputs),
                            tuple(first.feature_names), (True,), dtype, equations, kernel)
    if dtype == torch.float64:  # constants keep the dtype of the parameter they replace
        module.constants = nn.Parameter(torch.zeros(0, dtype=torch.float64))
        module.set_equations(equations)
    return module.to(first._stand_in["device"])


# ----------------------------------------------------------------------------------------------
# the black box


class BlackBox:
    """``f`` as a function of float64 rows ``(n, D)`` -> float64 outputs ``(n, K)``, in batches.

    What ``f`` gets (see :func:`explain`): a module tensors on its own device and dtype; another
    callable tensors like ``like`` (``X`` when it is a tensor) or on ``device``, else numpy
    arrays. Outputs may be arrays or tensors; non-finite outputs are an error. The first batch
    records the shape, dtype and device of ``f``'s outputs (``out_columns``: ``None`` for
    ``(n,)``, ``K`` for ``(n, K)``), which a stand-in module reproduces.
    """

    def __init__(self, f, batch_size: int, device=None, like: torch.Tensor | None = None):
        if not callable(f):
            raise SymTorchFXError(
                f"f must be a callable or an nn.Module mapping a batch (n, D) to outputs (n,) or "
                f"(n, K); got {type(f).__name__}"
            )
        self.f = f
        self.batch_size = batch_size
        self.calls = 0
        self.module = isinstance(f, nn.Module)
        self.torch_in = self.module or device is not None or like is not None
        self.dtype = torch.get_default_dtype()
        self.device = torch.device("cpu")
        why = "X is a numpy array"
        if like is not None:
            self.dtype = like.dtype if like.is_floating_point() else self.dtype
            self.device = like.device
            why = "X is a torch tensor"
        if self.module:
            p = next((t for t in itertools.chain(f.parameters(), f.buffers())
                      if t.is_floating_point()), None)
            if p is not None:
                self.dtype = p.dtype
                self.device = p.device
            if f.training:
                warnings.warn(
                    f"the module {type(f).__name__} is in training mode, so dropout and batch "
                    "norm make its outputs depend on the batch; call .eval() on it first",
                    stacklevel=3,
                )
        if device is not None:
            self.device = torch.device(device)
            why = "device= was given" if like is None else why
        if not self.torch_in:
            self.given = "float64 numpy arrays, because X is a numpy array"
            self.fix = ("if f takes torch tensors, pass X as a torch tensor (torch.as_tensor(X), "
                        "on the device f needs) or pass device=")
        else:
            self.given = f"torch tensors ({self.dtype} on {self.device}), because {why}"
            self.fix = ("if f takes numpy arrays, pass X as a numpy array (X.cpu().numpy()) and "
                        "no device=")
        self.out_columns: int | None = None
        self.out_dtype = torch.float64
        self.out_device = torch.device("cpu")

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        outs = [self._batch(Z[i:i + self.batch_size]) for i in range(0, len(Z), self.batch_size)]
        Y = np.concatenate(outs)
        bad = ~np.isfinite(Y).all(1)
        if bad.any():
            where = "at x0 itself" if bad[0] else f"first at the sample {Z[np.argmax(bad)]!r}"
            raise SymTorchFXError(
                f"the black box returned NaN or inf for {int(bad.sum())} of {len(Z)} inputs "
                f"({where}); an explanation needs finite outputs near x0. Check f there, or "
                "keep the samples closer to x0 with a smaller variance="
            )
        return Y

    def _batch(self, chunk: np.ndarray) -> np.ndarray:
        self.calls += 1
        first = self.calls == 1
        try:
            if self.torch_in:
                x = torch.as_tensor(chunk, dtype=self.dtype, device=self.device)
                with torch.no_grad():
                    out = self.f(x)
            else:
                out = self.f(chunk)
        except (TypeError, AttributeError) as e:
            if not first or self.module:
                raise
            raise SymTorchFXError(
                f"f raised {type(e).__name__} on its first batch ({e}); it was given "
                f"{self.given}: {self.fix}"
            ) from e
        dtype, device = torch.float64, torch.device("cpu")
        if isinstance(out, torch.Tensor):
            dtype, device = out.dtype, out.device
            out = out.detach().to("cpu", torch.float64).numpy()
        elif isinstance(out, np.ndarray):
            dtype = _torch_dtype(out.dtype)
        try:
            out = np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise SymTorchFXError(
                f"f returned a {type(out).__name__} that is not an array of numbers ({e}); it "
                "must return an array or tensor of shape (n,) or (n, K)"
            ) from e
        columns = None if out.ndim == 1 else (out.shape[1] if out.ndim == 2 else -1)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != len(chunk):
            raise SymTorchFXError(
                f"f returned shape {out.shape} for a batch of {len(chunk)} rows; it must map a "
                f"batch (n, {chunk.shape[1]}) to (n,) or (n, K) (explain calls f on batches, "
                "not on single rows)"
            )
        if first:
            self.out_columns = columns
            self.out_dtype = dtype if dtype.is_floating_point else torch.float64
            self.out_device = device
        return out


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy floating dtype; float64 for anything else."""
    if np.issubdtype(dtype, np.floating):
        try:
            return torch.from_numpy(np.zeros(0, dtype)).dtype
        except TypeError:  # a float numpy has and torch lacks (float128)
            pass
    return torch.float64


def _softmax(Y: np.ndarray) -> np.ndarray:
    e = np.exp(Y - Y.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _is_probability(Y: np.ndarray) -> bool:
    return bool(np.all(Y >= -1e-6) and np.all(Y <= 1 + 1e-6)
                and np.all(np.abs(Y.sum(1) - 1) <= 1e-3))


class _Column:
    """The explained value from the black box's outputs ``R``: column ``k`` (``1 - R[:, k]``
    with ``flip``, of the softmax with ``softmax``). A class, so explanations pickle."""

    def __init__(self, k: int, flip: bool = False, softmax: bool = False):
        self.k, self.flip, self.softmax = k, flip, softmax

    def __call__(self, R: np.ndarray) -> np.ndarray:
        v = (_softmax(R) if self.softmax else R)[:, self.k]
        return 1.0 - v if self.flip else v


class _Explained:
    """The explained value as a function of rows: ``column(black_box(rows))``."""

    def __init__(self, black_box, column):
        self.black_box, self.column = black_box, column

    def __call__(self, rows):
        return self.column(self.black_box(rows))


def _target(Y: np.ndarray, task: str, output, logits: bool):
    """Which output of f is explained: (task, output index, output name, column, stands_for),
    where ``column`` maps f's raw outputs (n, K) to the explained values (n,), and
    ``stands_for`` is ``(j, a, b)`` when f's output column ``j`` is ``a + b * value`` (None when
    no column of f is an affine function of the explained value: the softmax of logits)."""
    K = Y.shape[1]
    if logits:
        if K < 2:
            raise SymTorchFXError("logits=True needs f to return one logit per class (K >= 2)")
        if task == "regression":
            raise SymTorchFXError("logits=True explains a class probability: use "
                                  "task='classification' (or 'auto')")
        task = "classification"
        probs = _softmax(Y)
    else:
        probs = Y
    if task == "auto":
        if K == 1:
            task = "regression"
        elif _is_probability(Y):
            task = "classification"
        else:
            raise SymTorchFXError(
                f"f returns {K} outputs that are not probabilities: pass task='regression' and "
                "output=k to explain output k, or task='classification' with logits=True if f "
                "returns logits"
            )
    if task == "regression":
        if output is None:
            if K > 1:
                raise SymTorchFXError(
                    f"f returns {K} outputs; pass output=k to choose which one to explain"
                )
            output = 0
        _check_output(output, K, "output")
        k = int(output)
        return task, k, ("y" if K == 1 else f"y{k}"), _Column(k), (k, 0.0, 1.0)
    if K == 1:  # one probability: that of class 1 of two
        if not _is_probability(np.concatenate([1 - Y, Y], 1)):
            raise SymTorchFXError(
                "task='classification' with one output needs it to be the probability of class 1 "
                "(values in [0, 1]); pass logits=True with one logit per class for logits"
            )
        output = (1 if Y[0, 0] >= 0.5 else 0) if output is None else output
        _check_output(output, 2, "class")
        k = int(output)
        if k == 1:
            return task, k, "p1", _Column(0), (0, 0.0, 1.0)
        return task, k, "p0", _Column(0, flip=True), (0, 1.0, -1.0)
    if not _is_probability(probs):
        raise SymTorchFXError(
            f"task='classification' needs f to return class probabilities (rows of {K} "
            "non-negative numbers summing to 1); pass logits=True if it returns logits"
        )
    output = int(np.argmax(probs[0])) if output is None else output
    _check_output(output, K, "class")
    k = int(output)
    if logits:  # the explained value is no output of f: a stand-in cannot be made from it
        return task, k, f"p{k}", _Column(k, softmax=True), None
    return task, k, f"p{k}", _Column(k), (k, 0.0, 1.0)


def _check_output(output, K: int, what: str) -> None:
    if isinstance(output, bool) or not isinstance(output, (int, np.integer)) \
            or not 0 <= output < K:
        raise SymTorchFXError(
            f"{what} {output!r} does not exist: f returns {K} outputs (0..{K - 1})"
        )


# ----------------------------------------------------------------------------------------------
# neighbourhood


def _as_array(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):  # float64 first: numpy has no bfloat16
        a = a.detach().to("cpu", torch.float64 if a.is_floating_point() else a.dtype).numpy()
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SymTorchFXError(f"{name} must be an array of numbers ({e})") from e


def _check_data(X, x0) -> tuple[np.ndarray, np.ndarray]:
    X = _as_array(X, "X")
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise SymTorchFXError(f"X must be a 2-d array of rows (N, D), got shape {X.shape}")
    x0 = _as_array(x0, "x0")
    if x0.ndim == 2 and x0.shape[0] == 1:
        x0 = x0[0]
    if x0.ndim != 1 or x0.shape[0] != X.shape[1]:
        raise SymTorchFXError(
            f"x0 has shape {x0.shape} but X has {X.shape[1]} features per row: x0 must be one "
            f"row of {X.shape[1]} features"
        )
    if not np.isfinite(X).all():
        raise SymTorchFXError(f"X has {int((~np.isfinite(X)).any(1).sum())} rows with NaN or inf; "
                              "drop or impute them first")
    if not np.isfinite(x0).all():
        raise SymTorchFXError("x0 contains NaN or inf")
    return np.ascontiguousarray(X), x0.copy()


def _check_counts(neighbours, synthetic, n_rows: int, variance) -> None:
    for name, v in (("neighbours", neighbours), ("synthetic", synthetic)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise SymTorchFXError(f"{name} must be a non-negative integer, got {v!r}")
    if neighbours > n_rows:
        raise SymTorchFXError(
            f"neighbours={neighbours} but X has only {n_rows} rows; pass neighbours <= {n_rows} "
            "(or more data)"
        )
    if variance is None and neighbours < 2:
        raise SymTorchFXError(
            f"neighbours={neighbours}: the perturbations' variance comes from the neighbours, "
            "which needs at least 2 of them; pass more neighbours or variance="
        )
    if neighbours + synthetic < 10:
        raise SymTorchFXError(
            f"{neighbours} neighbours + {synthetic} synthetic samples are too few to fit and "
            "score equations; use at least 10 in all (hundreds give useful explanations)"
        )


def _torch_like(a) -> torch.Tensor | None:
    """``a`` when it is a tensor (its device and dtype are what a torch callable gets)."""
    return a.detach() if isinstance(a, torch.Tensor) else None


def _check_real_weighting(real_weighting, neighbours: int, synthetic: int) -> float:
    if isinstance(real_weighting, bool) or not isinstance(
            real_weighting, (int, float, np.integer, np.floating)) or not (
            np.isfinite(real_weighting) and real_weighting > 0):
        raise SymTorchFXError(
            f"real_weighting must be a positive finite number (the weight of a real neighbour "
            f"relative to a synthetic sample; 1.0 weighs them alike), got {real_weighting!r}"
        )
    if real_weighting != 1 and (neighbours == 0 or synthetic == 0):
        warnings.warn(
            f"real_weighting={real_weighting!r} has no effect with {neighbours} real neighbours "
            f"and {synthetic} synthetic samples: it weighs one kind against the other, so it "
            "needs both (neighbours > 0 and synthetic > 0)",
            stacklevel=3,
        )
    return float(real_weighting)


#: the names ``nn_metric`` takes, and the distance each stands for
METRICS = {"euclidean": "euclidean", "l2": "euclidean", "manhattan": "manhattan",
           "l1": "manhattan", "cityblock": "manhattan", "cosine": "cosine"}


def _check_metric(metric):
    if callable(metric):
        return metric
    if isinstance(metric, str) and metric.lower() in METRICS:
        return METRICS[metric.lower()]
    raise SymTorchFXError(
        f"nn_metric={metric!r} is not a distance explain knows: use one of "
        f"{', '.join(repr(m) for m in METRICS)}, or a callable (x0, X) -> distances of the N "
        "rows of X to x0"
    )


def _distances(X: np.ndarray, x0: np.ndarray, metric, like: torch.Tensor | None) -> np.ndarray:
    """The distance of every row of ``X`` to ``x0`` by ``metric`` (see ``explain``'s
    ``nn_metric``); squared for ``"euclidean"`` (the same order)."""
    if metric in ("euclidean", "manhattan"):
        s = X.std(0)
        s[s == 0] = 1.0
        z = (X - x0) / s
        return np.sum(z**2, 1) if metric == "euclidean" else np.sum(np.abs(z), 1)
    if metric == "cosine":
        n0 = float(np.linalg.norm(x0))
        if n0 == 0:
            raise SymTorchFXError(
                "nn_metric='cosine' measures angles about the origin, and x0 is the origin (all "
                "zeros), so every row is equally far; use nn_metric='euclidean'"
            )
        n = np.linalg.norm(X, axis=1)
        with np.errstate(all="ignore"):
            cos = np.where(n > 0, (X @ x0) / (n * n0), 0.0)
        return 1.0 - np.clip(cos, -1.0, 1.0)
    N = len(X)
    if like is None:
        args = (x0.copy(), X.copy())
    else:
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        args = (torch.as_tensor(x0, dtype=dtype, device=like.device),
                torch.as_tensor(X, dtype=dtype, device=like.device))
    with torch.no_grad():
        d = metric(*args)
    name = getattr(metric, "__name__", type(metric).__name__)
    try:
        d = _as_array(d, "the distances")
    except SymTorchFXError as e:
        raise SymTorchFXError(
            f"nn_metric {name} returned {type(d).__name__}, not distances ({e}); it must return "
            f"one number per row of X: an array or tensor of shape ({N},)"
        ) from e
    if d.shape != (N,):
        raise SymTorchFXError(
            f"nn_metric {name} returned shape {d.shape} for X of {N} rows; it must return one "
            f"distance per row, shape ({N},) (it is called once, as metric(x0, X), with x0 of "
            f"shape ({len(x0)},) and X of shape {X.shape})"
        )
    if not np.isfinite(d).all():
        raise SymTorchFXError(
            f"nn_metric {name} returned NaN or inf for {int((~np.isfinite(d)).sum())} of {N} "
            "rows; it must return finite distances (check it on rows like x0, or on zero rows)"
        )
    return d


def _nearest(X: np.ndarray, x0: np.ndarray, k: int, metric="euclidean",
             like: torch.Tensor | None = None) -> np.ndarray:
    """Indices of the ``k`` rows nearest to ``x0`` by ``metric``, nearest first (ties: the
    earlier row)."""
    if k == 0:
        return np.arange(0)
    return np.argsort(_distances(X, x0, metric, like), kind="stable")[:k]


def _variance(variance, near: np.ndarray, D: int) -> np.ndarray:
    if variance is None:
        var = near.var(0)
        # features equal on every neighbour (up to float rounding) do not vary
        var[var <= (1e-12 * (np.abs(near).max(0) + 1e-300)) ** 2] = 0.0
        return var
    var = _as_array(variance, "variance")
    var = np.broadcast_to(var, (D,)).copy() if var.ndim == 0 else var
    if var.shape != (D,) or not np.isfinite(var).all() or np.any(var < 0):
        raise SymTorchFXError(
            f"variance must be one non-negative number or {D} of them (one per feature), got "
            f"shape {var.shape}"
        )
    return var


def _sq_distance(Z: np.ndarray, x0: np.ndarray, sd: np.ndarray, features: np.ndarray):
    return np.sum(((Z[:, features] - x0[features]) / sd[features]) ** 2, 1)


def _tame(eq: Equation, probe: np.ndarray, y: np.ndarray) -> bool:
    """Whether ``eq`` stays finite and within ``TAME_SPANS`` times the range of the black box's
    values on the samples beyond that range, on every probe row. A pole of a fitted division
    inside the neighbourhood gives finite but wild values there."""
    lo, hi = float(y.min()), float(y.max())
    span = (hi - lo) or max(abs(lo), 1.0)
    with np.errstate(all="ignore"):
        v = eq(probe)
    return bool(np.all(np.isfinite(v)) and v.min() >= lo - TAME_SPANS * span
                and v.max() <= hi + TAME_SPANS * span)


def _mask(idx: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros(n, bool)
    m[idx] = True
    return m


def _feature_names(names, D: int) -> list[str]:
    if names is None:
        return [f"x{k}" for k in range(D)]
    names = [str(n) for n in names]
    if len(names) != D:
        raise SymTorchFXError(f"{len(names)} feature_names for {D} features; give one per feature")
    out: list[str] = []
    for k, n in enumerate(names):
        s = re.sub(r"[^A-Za-z0-9_]+", "_", n).strip("_") or f"x{k}"
        if s[0].isdigit():
            s = "x_" + s
        if reserved(s):
            s += "_"
        while s in out:
            s += "_"
        out.append(s)
    return out


# ----------------------------------------------------------------------------------------------
# weighted refit of constants


def refit_constants(texts: list[str], symbols: list[sympy.Symbol], X: np.ndarray, y: np.ndarray,
                    w: np.ndarray, max_iter: int = 30) -> list[str]:
    """The candidates, each followed by a copy whose numeric constants are refitted by weighted
    least squares when that lowers the weighted loss. Both go to the front, which keeps, per
    complexity, the one better on held-out rows.

    The fit is Levenberg-Marquardt from the engine's values. The Jacobian is exact: sympy
    differentiates the equation by each constant, and one generated torch function computes the
    equation and all its derivatives together (common subexpressions shared). Equations whose
    derivatives cannot be lowered (``max``, ``floor``, ...) are left as they are.
    """
    by_name = {s.name: s for s in symbols}
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
    yv = np.asarray(y, np.float64)
    sw = np.sqrt(np.asarray(w, np.float64) / np.sum(w))
    out = []
    with one_torch_thread():
        for text in dict.fromkeys(texts):
            out.append(text)
            try:
                template, values = templatize(tidy(parse(text, by_name)))
                if not values:
                    continue
                consts = [constant_symbol(j) for j in range(len(values))]
                exprs = [template] + [sympy.diff(template, cj) for cj in consts]
                fn = torch_function(exprs, Layout((X.shape[1],), len(exprs)), symbols,
                                    len(values))
            except (EquationSyntaxError, SymTorchFXError, TypeError, ValueError):
                continue  # not parseable (build_front reports it) or derivatives not lowerable

            values = np.asarray(values, np.float64)
            fit = _Residuals(fn, x, yv, sw)
            before = squared_norm(fit.residual(values))
            try:
                c, loss = levenberg_marquardt(fit.residual, fit.jacobian, values, max_iter)
            except Exception:  # noqa: BLE001 - a refit is a polish: on failure keep the original
                continue
            if loss < before:
                out.append(to_text(substitute(template, c.tolist())))
    return out


class _Residuals:
    """Weighted residuals of an equation and their exact Jacobian, from one generated function
    that computes the equation and its derivatives by each constant (last point memoized)."""

    def __init__(self, fn, x: torch.Tensor, y: np.ndarray, sw: np.ndarray):
        self.fn, self.x, self.y, self.sw = fn, x, y, sw
        self._at: bytes | None = None
        self._G: np.ndarray | None = None

    def _values(self, c: np.ndarray) -> np.ndarray:
        key = c.tobytes()
        if key != self._at:
            with np.errstate(all="ignore"):
                self._G = self.fn(self.x, torch.from_numpy(np.ascontiguousarray(c))).numpy()
            self._at = key
        return self._G

    def residual(self, c: np.ndarray) -> np.ndarray:
        return self.sw * (self._values(c)[:, 0] - self.y)

    def jacobian(self, c: np.ndarray) -> np.ndarray:
        return self.sw[:, None] * self._values(c)[:, 1:]
