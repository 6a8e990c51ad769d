"""How often one transformed search puts the law on its own front, plain against scaled.

Each search is a single ``run_job`` of the default Operon engine (75 generations for a
transformed search) on a Feynman law's trained network (``feynman_fidelity``'s, cached), judged
like the benchmark's exact form: does the front of that search's candidates alone hold an
equation of the law's form? The numbers in ``RESULTS.md`` ("Why scaled, and why only the second
search") come from the default run::

    python benchmarks/transform_probe.py                 # 6 laws x plain/scaled x 4 seeds
    python benchmarks/transform_probe.py --laws I.48.2 --seeds 200 201

Two searches run at once (one per core on a 2-core box); 48 searches take about 5 minutes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import multiprocessing
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import feynman_fidelity as ff  # noqa: E402
import feynman_suite  # noqa: E402

import symtorch_fx as sfx  # noqa: E402
from symtorch_fx.search import distill as _distill  # noqa: E402
from symtorch_fx.search.transforms import TRANSFORMS  # noqa: E402

#: law -> the transform whose plain and scaled searches are compared
LAWS = {"I.10.7": "inverse_square", "I.15.1": "inverse_square", "I.34.14": "inverse_square",
        "I.48.2": "inverse_square", "I.6.2": "log", "I.6.2b": "log"}
TRAIN_ROWS = 6144  # the rest of the benchmark's 8192 rows score the candidates


@functools.lru_cache(maxsize=1)
def suite() -> list:
    return feynman_suite.load()[0]  # read once, before the workers fork


def one(spec: tuple[str, str, int]) -> dict:
    name, transform, seed = spec
    laws = suite()
    index = [law.name for law in laws].index(name)
    law = laws[index]
    model, _ = ff.train_net(law, index)
    X, _ = ff.law_data(law, index)
    with torch.no_grad():
        Y = model(X)[:, 0].double().numpy()
    X = X.double().numpy()
    t = TRANSFORMS[transform]
    Xt, Yt = X[:TRAIN_ROWS], Y[:TRAIN_ROWS]
    job = _distill.Job("net", 0, 0, Xt, Yt, [f"x{k}" for k in range(X.shape[1])], seed,
                       transform=transform, sign=t.sign(Yt), prune=True)
    start = time.perf_counter()
    searched = _distill.run_job(sfx.Operon(transforms=()), job)
    seconds = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        front, _ = _distill.build_front(searched.candidates, list(law.symbols), Xt, Yt,
                                        X[TRAIN_ROWS:], Y[TRAIN_ROWS:], X)
    hit = next((e for e in front if ff.score(e.expr, law)["exact"]), None)
    return {"law": name, "transform": transform, "seed": seed, "scale": searched.monomial,
            "seconds": round(seconds, 1),
            "law_on_front": None if hit is None else [hit.complexity, hit.text(4)]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--laws", nargs="*", default=list(LAWS), choices=list(LAWS))
    p.add_argument("--seeds", nargs="*", type=int, default=[200, 201, 202, 203])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    suite()
    specs = [(law, t, seed) for law in args.laws for t in (LAWS[law], "scaled_" + LAWS[law])
             for seed in args.seeds]
    hits: dict[tuple[str, str], list[bool]] = {}
    scales: dict[str, str] = {}
    with cf.ProcessPoolExecutor(args.workers,
                                mp_context=multiprocessing.get_context("fork")) as ex:
        for r in ex.map(one, specs):
            print(json.dumps(r), flush=True)
            hits.setdefault((r["law"], r["transform"]), []).append(r["law_on_front"] is not None)
            if r["scale"]:
                scales[r["law"]] = r["scale"]
    print("\n| law | transform | scale found | plain | scaled |\n|---|---|---|---|---|")
    for law in args.laws:
        plain, scaled = hits[(law, LAWS[law])], hits[(law, "scaled_" + LAWS[law])]
        print(f"| {law} | {LAWS[law]} | `{scales.get(law)}` | {sum(plain)}/{len(plain)} "
              f"| {sum(scaled)}/{len(scaled)} |")


if __name__ == "__main__":
    main()
