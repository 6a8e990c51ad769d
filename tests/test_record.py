"""Recording: row layout, the bounded uniform reservoir, non-finite rows, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import symtorch_fx as sfx
from symtorch_fx.graph.instrument import Recorder


def test_leading_dims_flattened_and_inputs_concatenated():
    class Two(nn.Module):
        def forward(self, a, b):
            return torch.cat([a * b[..., :1], a.sum(-1, keepdim=True)], -1)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.two = Two()

        def forward(self, a, b):
            return self.two(a, b)

    prepared = sfx.prepare(M(), ["two"])
    a, b = torch.randn(3, 5, 2), torch.randn(3, 5, 4)
    prepared(a, b)
    rec = prepared._sfx_prepared.recorders["two"]
    X, Y = rec.data()
    assert X.shape == (15, 6) and Y.shape == (15, 3)
    np.testing.assert_allclose(X[:, :2], a.reshape(15, 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(X[:, 2:], b.reshape(15, 4).numpy(), rtol=1e-6)
    assert rec.input_names == ["a", "b"]
    assert sfx.api.feature_names(rec.input_names, rec.layout) == [
        "a0", "a1", "b0", "b1", "b2", "b3"]


def test_scalar_rows_and_outputs():
    rec = Recorder("r")
    x = torch.randn(100)
    rec(x, x * 2)
    X, Y = rec.data()
    assert X.shape == (100, 1) and Y.shape == (100, 1)
    assert rec.layout.inputs == (None,) and rec.layout.outputs is None


def test_reservoir_is_bounded_on_a_million_rows():
    rec = Recorder("r", max_samples=1000, seed=0)
    for start in range(0, 1_000_000, 100_000):
        idx = torch.arange(start, start + 100_000, dtype=torch.float32)
        rec(idx[:, None], idx[:, None])
        assert rec.features.shape == (1000, 1)  # memory is allocated once, never grows
    assert rec.n_rows == 1_000_000 and rec.n_kept == 1000
    X, _ = rec.data()
    assert len(np.unique(X)) == 1000
    # uniform over everything seen: the kept row indices look like a uniform sample
    u = np.sort(X[:, 0] / 1_000_000)
    ks = np.max(np.abs(u - (np.arange(1, 1001) / 1000)))
    assert ks < 0.06  # Kolmogorov-Smirnov distance; ~0.043 is the 5% critical value
    # not biased to the first or the last batches
    assert 0.4 < u.mean() < 0.6


def test_recording_memory_does_not_grow_with_data():
    def rss_mb():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096 / 2**20

    rec = Recorder("r", max_samples=10_000)
    batch = torch.randn(100_000, 8)
    rec(batch, batch[:, :2])
    base = rss_mb()
    for _ in range(20):  # 2M more rows
        rec(batch, batch[:, :2])
    assert rss_mb() - base < 50


def test_nonfinite_rows_dropped_and_counted():
    model = nn.Sequential(nn.Identity())
    prepared = sfx.prepare(model, ["0"])
    x = torch.randn(50, 2)
    x[:5, 0] = float("nan")
    x[5:7, 1] = float("inf")
    prepared(x)
    rec = prepared._sfx_prepared.recorders["0"]
    assert rec.n_nonfinite == 7 and rec.n_kept == 43


def test_all_rows_nonfinite_is_a_clear_error():
    prepared = sfx.prepare(nn.Sequential(nn.Identity()), ["0"])
    prepared(torch.full((10, 2), float("nan")))
    with pytest.raises(sfx.RecordingError, match="dropped because they contained NaN"):
        sfx.convert(prepared, progress=False)


def test_no_data_recorded_is_a_clear_error():
    prepared = sfx.prepare(nn.Sequential(nn.Linear(2, 1)), ["0"])
    with pytest.raises(sfx.RecordingError, match="Run data through the prepared model"):
        sfx.convert(prepared, progress=False)


def test_non_tensor_output_is_a_clear_error():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    prepared = sfx.prepare(M(), ["pair"])
    with pytest.raises(sfx.RecordingError, match="returned tuple, not a tensor"):
        prepared(torch.randn(3, 2))


def test_misaligned_input_is_a_clear_error():
    rec = Recorder("r")
    with pytest.raises(sfx.RecordingError, match="leading dimensions"):
        rec(torch.randn(4, 3), torch.randn(5, 1))


def test_changing_layout_is_a_clear_error():
    rec = Recorder("r")
    rec(torch.randn(4, 3), torch.randn(4, 1))
    with pytest.raises(sfx.RecordingError, match="different layout"):
        rec(torch.randn(4, 2), torch.randn(4, 1))


def test_recording_does_not_change_outputs_or_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    prepared = sfx.prepare(model, ["1"])
    x = torch.randn(20, 3)
    assert torch.equal(prepared(x), model(x))
    prepared(x).sum().backward()
    assert model[0].weight.grad is not None  # parameters are shared, gradients flow
