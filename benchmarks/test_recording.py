"""Recording overhead: forward time of the prepared model / forward time of the plain model.

    python -m pytest benchmarks/test_recording.py --benchmark-enable

A 4-layer MLP (width 256, batch 4096 rows). Targets: the whole MLP body (one region), and every
hidden activation (4 regions). The reservoir is full before timing, so the steady state (the
acceptance test on every row, a few rows copied) is what is measured.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import symtorch_fx as sfx

torch.set_num_threads(2)


class MLP4(nn.Module):
    def __init__(self, d=32, width=256):
        super().__init__()
        layers, k = [], d
        for _ in range(4):
            layers += [nn.Linear(k, width), nn.SiLU()]
            k = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x))


MODEL = MLP4().eval()
X = torch.randn(4096, 32)
PREPARED = {
    "plain": MODEL,
    "one region (body)": sfx.prepare(MODEL, ["body"]),
    "four regions (SiLU)": sfx.prepare(MODEL, [nn.SiLU]),
}
for m in PREPARED.values():  # fill the reservoirs: time the steady state
    with torch.no_grad():
        for _ in range(5):
            m(X)


@pytest.mark.parametrize("name", list(PREPARED))
def test_forward(benchmark, name):
    model = PREPARED[name]
    benchmark.group = "recording overhead, 4-layer MLP, 4096 rows"

    def run():
        with torch.no_grad():
            return model(X)

    out = benchmark(run)
    assert out.shape == (4096, 1)
