"""The LLM-arithmetic example's callable, offline: a stand-in completer answers the prompts
(the real run loads Gemma-3-270M; see examples/llm_arithmetic.py). It checks the path from a
prompt-answering callable to the distilled equation, with the real engine."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import sympy
from conftest import equivalent, fast_engine

import symtorch_fx as sfx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import llm_arithmetic as ex  # noqa: E402

_LAST = re.compile(r"(\d+) \+ (\d+) =\Z")


def stand_in(prompts: list[str]) -> list[str]:
    """Answers the last question of each prompt the way a model would: text, sometimes none."""
    out = []
    for p in prompts:
        a, b = map(int, _LAST.search(p).groups())
        out.append(" ?" if (a * 7 + b) % 23 == 0 else f" {a + b}\n12 + 1 = 13")
    return out


def test_prompts_hold_worked_examples_and_the_question():
    p = ex.prompt(4, 9, "+")
    assert p.endswith("\n4 + 9 =") and "12 + 7 = 19" in p
    assert ex.first_integer(" 13\n1 + 1 = 2") == 13 and np.isnan(ex.first_integer(" ?"))


def test_the_callable_distils_to_what_it_computes():
    numbers = ex.Arithmetic(stand_in, "+", batch=16)
    pairs = np.random.default_rng(0).integers(0, 100, (300, 2))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        sym = sfx.compile(numbers, sample_inputs=pairs, engine=fast_engine(),
                          variable_names=["a", "b"], executor="inline", progress=False)
    assert any("NaN or inf" in str(x.message) for x in w)  # the unanswered ones were dropped
    assert numbers.calls == len(numbers._memo)  # each pair asked once, however often asked
    a, b = sympy.symbols("a b")
    assert equivalent(sym.equations["function"][0].equation.expr, a + b)
    np.testing.assert_allclose(sym(pairs[:5]), pairs[:5].sum(1), atol=1e-6)
