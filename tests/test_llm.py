"""The LLM experiment in miniature: a tiny random Gemma3 (no download), its MLPs replaced by
PCA + equations, through both the module-swap path and the torch.compile backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import fast_engine

import symtorch_fx as sfx

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import llm_mlp_surrogates as llm  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    cfg = transformers.Gemma3TextConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        sliding_window=16)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 96, (12, 24))
    ids[:, 0] = 2  # <bos>
    return model, ids


def test_fx_cannot_trace_it_so_module_targets_swap(tiny):
    model, ids = tiny
    prepared = sfx.prepare(model, ["model.layers.*.mlp"])
    assert prepared._sfx_prepared.host.kind == "swap"


def test_surrogates_controls_and_measurements(tiny):
    model, ids = tiny
    prepared = sfx.prepare(model, llm.mlp_paths(model)[:2])
    with torch.no_grad():
        prepared(ids)
    sym = sfx.convert(prepared, reduce=sfx.PCA(inputs=6, outputs=3), selection="accuracy",
                      engine=fast_engine(generations=5, population_size=60),
                      executor="inline", progress=False)
    for path in llm.mlp_paths(model)[:2]:
        report = sym.equations[path]
        assert len(report) == 3 and report.variables == tuple(f"z{i}" for i in range(6))
        assert "pca: inputs 32 -> 6" in repr(report)
    mods = sym.symbolic_modules
    variants = {
        "symbolic": llm.swapped(model, mods),
        "pca": llm.swapped(model, {p: llm.PCAOnly(model.get_submodule(p), m.projection)
                                   for p, m in mods.items()}),
        "identity": llm.swapped(model, {p: llm.Identity() for p in mods}),
    }
    base = llm.perplexity(model, ids)
    assert 40 < base < 200  # a random model: about the vocabulary size
    rows = {r["variant"]: r for r in llm.measure({"original": model, **variants}, ids, ids[:2])}
    assert rows["original"]["ppl"] == pytest.approx(base)
    for name, row in rows.items():
        assert torch.isfinite(torch.tensor(row["ppl"])), name
        assert 0 < row["full_tok_s"] < row["stack_tok_s"], name  # the output layer costs time
        assert row["peak_mb"] >= 0, name
    # the original is untouched by building variants
    assert type(model.model.layers[0].mlp).__name__ == "Gemma3MLP"
    # the symbolic variant drops the replaced MLPs' weights
    assert llm.weight_mb(variants["symbolic"]) < llm.weight_mb(model)


def test_dynamo_backend_records_and_swaps_hf_mlps(tiny):
    model, ids = tiny
    torch._dynamo.reset()
    be = sfx.backend(targets=["model.layers.*.mlp"], compiler="eager",
                     reduce=sfx.PCA(inputs=4, outputs=2), selection="accuracy",
                     engine=fast_engine(generations=5, population_size=60), executor="inline",
                     progress=False)
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        ref = compiled(ids).logits
    assert sorted(be.recorders) == [f"model.layers.{i}.mlp" for i in range(3)]
    be.distill()
    with torch.no_grad():
        out = compiled(ids).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.equal(out, ref)
    torch._dynamo.reset()
