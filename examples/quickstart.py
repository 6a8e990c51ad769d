"""Quickstart: train a small MLP on a hidden law, distill it, and put the equation in its place.

    python examples/quickstart.py

Runs on the embedded Operon engine in about 35 s on 2 CPU cores.
"""

import time

import torch
import torch.nn as nn

import symtorch_fx as sfx

torch.manual_seed(0)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(),
                                 nn.Linear(64, 1))

    def forward(self, x):
        return self.mlp(x)


# 1. a network learns y = x0*x1 + sin(x0) from data
X = torch.rand(4096, 2) * 4 - 2
Y = X[:, :1] * X[:, 1:] + torch.sin(X[:, :1])
model = Model()
opt = torch.optim.Adam(model.parameters(), 3e-3)
for step in range(2000):
    idx = torch.randint(0, len(X), (512,))
    loss = ((model(X[idx]) - Y[idx]) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"network trained, MSE {loss.item():.2e}")

# 2. record the MLP on data, distill an equation for it, rewrite the model around it
t0 = time.perf_counter()
sym = sfx.compile(model.eval(), targets=["mlp"], sample_inputs=X.split(1024))
print(f"distilled in {time.perf_counter() - t0:.1f} s\n")
print(sym.equations["mlp"][0])  # the Pareto front, the chosen equation marked '>'
print("\nchosen:", sym.equations["mlp"][0].equation)

# 3. the symbolic model runs in the network's place; the original comes back bit for bit
with torch.no_grad():
    err = ((sym(X) - model(X)) ** 2).mean().item()
    print(f"symbolic vs network MSE: {err:.2e}")
    assert torch.equal(sfx.restore(sym)(X), model(X))
