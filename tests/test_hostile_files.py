"""A ``.sfx`` file is data from anywhere: it never runs code, loads fast or is refused, never
gives a silently wrong model, and every refusal is a SerializationError naming file and field."""

from __future__ import annotations

import builtins
import copy
import json
import os
import random
import re
import time

import pytest
import torch
import torch.nn as nn
from conftest import Candidates, ExactLaw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import symtorch_fx as sfx

LAW = "0.5 + 2*x0*x1"
PAYLOAD = 'a") if exec("import builtins; builtins.SFX_PWNED = 1") else getattr(self, "lin'


Law = ExactLaw


class Host(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Law()

    def forward(self, x):
        return self.body(x) * 3


X = torch.linspace(-1, 1, 512).reshape(256, 2)
#: seconds a load may take here: enough to catch a hang or a quadratic blowup on a busy CI box
#: (the goal, under a second for any 1 MB file, is measured by benchmarks/load_time.py)
BOUND = 5.0


@pytest.fixture(scope="module")
def saved_doc(tmp_path_factory) -> dict:
    sym = sfx.compile(Host(), targets=["body"], sample_inputs=[X], engine=Candidates([LAW]),
                      selection="accuracy", restarts=1, transforms=(), prune=False,
                      executor="inline", progress=False)
    path = tmp_path_factory.mktemp("sfx") / "law.sfx"
    sfx.save(sym, path)
    return json.loads(path.read_text())


def _load(doc, tmp_path, name="m.sfx", raw: bytes | None = None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return sfx.load(path, Host()), str(path)


def _refused(doc, tmp_path, *words, raw=None):
    with pytest.raises(sfx.SerializationError) as info:
        sym, path = _load(doc, tmp_path, raw=raw)
        sym(X)  # a file that fits no model may be found out on the first call
    msg = str(info.value)
    assert "m.sfx" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_a_saved_file_loads_and_computes_its_equations(saved_doc, tmp_path):
    sym, _ = _load(saved_doc, tmp_path)
    assert torch.allclose(sym(X), Host()(X), atol=1e-5)


@pytest.mark.parametrize("field,value", [
    ("name", PAYLOAD), ("module", PAYLOAD), ("name", "enc/0"), ("name", "a b"), ("name", 7),
])
def test_names_that_could_reach_generated_code_are_refused(saved_doc, tmp_path, field, value):
    doc = copy.deepcopy(saved_doc)
    doc["regions"][0][field] = value
    _refused(doc, tmp_path, repr(field) if field == "module" else "name")
    assert not hasattr(builtins, "SFX_PWNED")


def test_module_names_a_model_itself_has_never_reach_generated_code():
    """Module names come from the model too, and torch.nn allows quotes in them; torch.fx would
    write them into source unescaped, so such a model is not traced (its module targets are
    swapped in their parent instead)."""
    name = PAYLOAD.replace(".", "_")

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_module(name, Law())

        def forward(self, x):
            return self._modules[name](x) * 3

    sym = sfx.compile(Odd(), targets=[name], sample_inputs=[X], engine=Candidates([LAW]),
                      selection="accuracy", restarts=1, transforms=(), prune=False,
                      executor="inline", progress=False)
    assert torch.allclose(sym(X), Host()(X), atol=1e-5)
    assert not hasattr(builtins, "SFX_PWNED")
    assert list(sym.sfx_symbolic._modules) == [re.sub(r"[^A-Za-z0-9_]", "_", name)]


class Diff(nn.Module):
    def forward(self, x):
        return x[..., :1] - x[..., 1:]


def test_regions_whose_names_read_alike_get_their_own_modules():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList([Law()])
            self.enc_0 = Diff()

        def forward(self, x):
            return self.enc[0](x) + 10 * self.enc_0(x)

    model = Two()
    sym = sfx.compile(model, targets=["enc.0", "enc_0"], sample_inputs=[X],
                      engine=Candidates([LAW, "x0 - x1"]), selection="accuracy", restarts=1,
                      transforms=(), prune=False, executor="inline", progress=False)
    assert sorted(sym.sfx_symbolic._modules) == ["enc_0", "enc_0_2"]
    assert torch.allclose(sym(X), model(X), atol=1e-5)


@pytest.mark.parametrize("text,word", [
    ("x0 + 9^9^9", "range"), ("9^9^7 * x0", "range"), ("acos(2) + x0", "real"),
    ("(-1)^(1/3) * x1", "real"), ("10^5000 + x0", "range"), ("x0 / 0", "zero"),
    ("__import__('os')", "character"), ("exec(x0)", "function"), ("c0 + x0", "unknown name"),
])
def test_equations_outside_the_grammar_are_refused_at_once(saved_doc, tmp_path, text, word):
    doc = copy.deepcopy(saved_doc)
    doc["regions"][0]["fronts"][0]["equations"][0]["expr"] = text
    t0 = time.perf_counter()
    _refused(doc, tmp_path, "expr", word)
    assert time.perf_counter() - t0 < BOUND


def test_long_equations_load_or_are_refused_in_time(saved_doc, tmp_path):
    for n in (1000, 4000, 40_000):
        doc = copy.deepcopy(saved_doc)
        doc["regions"][0]["fronts"][0]["equations"][0]["expr"] = " + ".join(
            f"{k}.5*x0*x1" for k in range(n))
        t0 = time.perf_counter()
        try:
            _load(doc, tmp_path)
        except sfx.SerializationError as e:
            assert "m.sfx" in str(e)
        assert time.perf_counter() - t0 < BOUND, n


@pytest.mark.parametrize("kind", ["many equations", "one equation", "deep numbers",
                                  "heavy chosen"])
def test_a_megabyte_file_loads_or_is_refused_in_bounded_time(saved_doc, tmp_path, kind):
    rng = random.Random(0)
    doc = copy.deepcopy(saved_doc)
    front = doc["regions"][0]["fronts"][0]

    def term():
        f = rng.choice(["sin", "exp", "cos", "sqrtabs", "log1p", "tanh"])
        return f"{rng.uniform(-3, 3):.6f}*{f}({rng.uniform(-2, 2):.5f}*x0 + x1)"

    eqs, size = [], 0
    while size < 1_000_000:
        if kind == "one equation":
            text = " + ".join(term() for _ in range(40_000))
        elif kind == "deep numbers":
            text = "x0*" + "sin(" * 90 + "1.5" + ")" * 90
        else:
            text = " + ".join(term() for _ in range(rng.randint(1, 5)))
        eqs.append({"expr": text, "complexity": 9, "loss": 0.5})
        size += len(text) + 50
    front["equations"] = eqs + front["equations"]
    front["chosen"] = len(front["equations"]) - 1
    if kind == "heavy chosen":  # the one equation built as sympy at load: all functions
        front["equations"] = [{"expr": " + ".join(term() for _ in range(1_500)), "loss": 0.1}]
        front["chosen"] = 0
    t0 = time.perf_counter()
    try:
        sym, _ = _load(doc, tmp_path)
        assert torch.allclose(sym(X), Host()(X), atol=1e-5)  # the chosen law runs
    except sfx.SerializationError as e:
        assert "m.sfx" in str(e)
    assert time.perf_counter() - t0 < BOUND


def test_a_variable_named_like_a_constant_is_a_variable(saved_doc, tmp_path):
    doc = copy.deepcopy(saved_doc)
    region = doc["regions"][0]
    region["variables"] = ["c0", "x1"]
    region["fronts"][0]["equations"] = [{"expr": "0.5 + c0*x1", "complexity": 5, "loss": 0.0}]
    region["fronts"][0]["chosen"] = 0
    sym, _ = _load(doc, tmp_path)
    x = torch.tensor([[2.0, 3.0], [4.0, 2.5]])
    assert torch.allclose(sym(x), 3 * torch.tensor([[6.5], [10.5]]))


@pytest.mark.parametrize("variables", [["pi", "x1"], ["sin", "x1"], ["x0", "x0"], ["x-0", "x1"],
                                       ["x0", 3]])
def test_reserved_or_malformed_variable_names_are_refused(saved_doc, tmp_path, variables):
    doc = copy.deepcopy(saved_doc)
    doc["regions"][0]["variables"] = variables
    _refused(doc, tmp_path, "variables")


def test_an_output_count_that_does_not_fit_the_target_is_refused(saved_doc, tmp_path):
    doc = copy.deepcopy(saved_doc)
    region = doc["regions"][0]
    region["layout"]["outputs"] = 2
    region["fronts"].append(copy.deepcopy(region["fronts"][0]))
    region["fronts"][1]["output"] = "y1"
    _refused(doc, tmp_path, "body")


def test_an_input_width_that_does_not_fit_the_target_is_refused(saved_doc, tmp_path):
    doc = copy.deepcopy(saved_doc)
    region = doc["regions"][0]
    region["layout"]["inputs"] = [3]
    region["variables"] = ["x0", "x1", "x2"]
    _refused(doc, tmp_path, "body")


@pytest.mark.parametrize("mutate,word", [
    (lambda d: d["regions"].__setitem__(0, "region"), "regions[0]"),
    (lambda d: d["regions"][0].__setitem__("layout", [2]), "layout"),
    (lambda d: d["regions"][0].__setitem__("fronts", {"a": 1}), "fronts"),
    (lambda d: d["regions"][0]["fronts"][0].__setitem__("equations", "x0"), "equations"),
    (lambda d: d["regions"][0]["fronts"][0]["equations"][0].__setitem__("loss", "low"), "loss"),
    (lambda d: d["regions"][0]["fronts"][0]["equations"][0].__setitem__("loss", [1]), "loss"),
    (lambda d: d["regions"][0]["fronts"][0].__setitem__("chosen", True), "chosen"),
    (lambda d: d["regions"][0]["fronts"][0].__setitem__("chosen", 99), "chosen"),
    (lambda d: d["regions"][0]["fronts"][0].__setitem__("output", "y; 1"), "output"),
    (lambda d: d["regions"][0].__setitem__("kernel", "x'); import os"), "kernel"),
    (lambda d: d["regions"][0].__setitem__("out_dtype", "float128"), "out_dtype"),
    (lambda d: d["regions"][0].__setitem__("mode", 1), "mode"),
    (lambda d: d["regions"][0].__setitem__("arg_mask", [1]), "arg_mask"),
    (lambda d: d.__setitem__("host", ["graph"]), "host"),
    (lambda d: d["regions"].append(copy.deepcopy(d["regions"][0])), "more than once"),
])
def test_malformed_fields_are_named(saved_doc, tmp_path, mutate, word):
    doc = copy.deepcopy(saved_doc)
    mutate(doc)
    _refused(doc, tmp_path, word)


@pytest.mark.parametrize("raw,word", [
    (b"\xff\xfe{\x00", "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON"),
    (b'{"format": "symtorch_fx", "version": 1, "x": NaN}', "JSON"),
    (b"", "JSON"),
    (b'"just a string"', "format"),
])
def test_files_that_are_not_ours_are_refused(tmp_path, raw, word):
    _refused(None, tmp_path, word, raw=raw)


def test_paths_that_are_not_regular_files_are_refused(saved_doc, tmp_path):
    fifo = tmp_path / "pipe.sfx"
    os.mkfifo(fifo)  # opening it would block until someone writes
    t0 = time.perf_counter()
    with pytest.raises(sfx.SerializationError, match="regular file"):
        sfx.load(fifo, Host())
    assert time.perf_counter() - t0 < BOUND
    with pytest.raises(sfx.SerializationError, match="regular file"):
        sfx.load(tmp_path, Host())
    with pytest.raises(sfx.SerializationError, match="path"):
        sfx.load(42, Host())
    with pytest.raises(sfx.SerializationError, match="cannot read"):
        sfx.load(tmp_path / "missing.sfx", Host())


def test_an_output_dtype_that_does_not_fit_the_target_is_refused(saved_doc, tmp_path):
    doc = copy.deepcopy(saved_doc)
    doc["regions"][0]["out_dtype"] = "int8"
    _refused(doc, tmp_path, "body", "int8")


def test_a_region_wider_than_any_layer_is_refused(saved_doc, tmp_path):
    doc = copy.deepcopy(saved_doc)
    doc["regions"][0]["layout"]["inputs"] = [1 << 20]
    _refused(doc, tmp_path, "layout")


# ----------------------------------------------------------------------------------------------
# the fuzzer: random and mutated documents


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from([PAYLOAD, "x0 + 9^9^9", "acos(2)", "(-1)^(1/3)", "10^5000", "c0", "pi",
                     "enc.0", "enc_0", "", "#1", "x0*x1", "sin(x0)^2", "exp(exp(exp(9)))",
                     "symbolic", "neural", "cpp", "torch", "float64", "inf", "nan", "-inf",
                     "x0 " * 10_000]),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


def _check_load(doc, tmp_path):
    t0 = time.perf_counter()
    try:
        sym, _ = _load(doc, tmp_path)
        y = sym(X[:8])
    except sfx.SerializationError as e:
        assert "m.sfx" in str(e)
        return
    finally:
        assert time.perf_counter() - t0 < BOUND
        assert not hasattr(builtins, "SFX_PWNED")
    res = sym.equations
    (name,) = list(res)
    eq = res[name].fronts[0].equation
    want = Host()(X[:8]) if sym.modes[name] == "neural" else 3 * torch.as_tensor(
        eq(X[:8].double().numpy()), dtype=torch.float32)[:, None]
    assert torch.allclose(y.reshape(want.shape).float(), want, rtol=1e-4, atol=1e-4)


def _mutate(node, data, allowed=lambda path: True) -> None:
    """Replace or delete one to three fields of ``node`` (in place), at paths ``allowed``."""
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(node) if p and allowed(p)]
        path = data.draw(st.sampled_from(paths))
        parent = node
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_JSON)


def _mutate_and_load(saved_doc, tmp_path, data) -> None:
    """Replace or delete one to three fields of a saved document, anywhere, then load it."""
    doc = copy.deepcopy(saved_doc)
    _mutate(doc, data)
    _check_load(doc, tmp_path)


FUZZ = dict(deadline=None, suppress_health_check=list(HealthCheck))


@settings(max_examples=60, **FUZZ)
@given(data=st.data())
def test_fuzz_mutated_documents(saved_doc, tmp_path, data):
    _mutate_and_load(saved_doc, tmp_path, data)


@settings(max_examples=40, **FUZZ)
@given(doc=_JSON, with_header=st.booleans())
def test_fuzz_random_documents(tmp_path, doc, with_header):
    if with_header and isinstance(doc, dict):  # past the header check, into the fields
        doc = {"format": "symtorch_fx", "version": 1, **doc}
    _check_load(doc, tmp_path)


@pytest.mark.slow
@settings(max_examples=2000, **FUZZ)
@given(data=st.data())
def test_fuzz_soak(saved_doc, tmp_path, data):
    _mutate_and_load(saved_doc, tmp_path, data)


class TwoOut(nn.Module):
    """Two outputs; the file distils the first over a derived feature."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return torch.cat([0.5 + 2 * (x[:, :1] * x[:, 1:]), self.lin(x)], -1)


@pytest.fixture(scope="module")
def featured_doc(tmp_path_factory) -> dict:
    model = nn.Sequential(TwoOut())
    sym = sfx.compile(model, targets=["0"], sample_inputs=[X], engine=Candidates(["0.5 + 2*p"]),
                      selection="accuracy", restarts=1, transforms=(), prune=False,
                      executor="inline", progress=False, outputs=[0], features={"p": "x0*x1"})
    path = tmp_path_factory.mktemp("sfx") / "feat.sfx"
    sfx.save(sym, path)
    return json.loads(path.read_text())


FEATURE_FUZZ = int(os.environ.get("SFX_FUZZ_EXAMPLES", "40"))


@settings(max_examples=FEATURE_FUZZ, **FUZZ)
@given(data=st.data())
def test_fuzz_documents_with_features_and_some_outputs(featured_doc, tmp_path, data):
    """The fields of derived features and distilled outputs, mutated: a load is refused with
    the file named, or computes finite outputs of the right shape, in bounded time."""
    doc = copy.deepcopy(featured_doc)
    _mutate(doc["regions"][0], data, lambda path: path[0] in (
        "features", "inputs", "distilled_outputs", "variables", "fronts", "layout"))
    p = tmp_path / "m.sfx"
    p.write_text(json.dumps(doc))
    model = nn.Sequential(TwoOut())
    t0 = time.perf_counter()
    try:
        y = sfx.load(p, model)(X[:8])
    except sfx.SerializationError as e:
        assert "m.sfx" in str(e)
    else:
        assert y.shape == (8, 2)
    finally:
        assert time.perf_counter() - t0 < BOUND
        assert not hasattr(builtins, "SFX_PWNED")


def test_a_featured_file_round_trips(featured_doc, tmp_path):
    p = tmp_path / "m.sfx"
    p.write_text(json.dumps(featured_doc))
    model = nn.Sequential(TwoOut())
    with torch.no_grad():
        torch.testing.assert_close(sfx.load(p, model)(X), model(X))
