"""A first look at recurrentkit: the same cells under different routing policies.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import torch

import recurrentkit as rk


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 4, 8)  # (T, B, I)
    for routing in rk.routing.POLICIES:
        stack = rk.Stack([rk.GRUCell(8, 16), rk.GRUCell(16, 16)], routing=routing).eval()
        y, state = stack(x)  # (T, B, 16)
        leak = rk.causality_violation(stack, x)
        print(f"{routing:12s} output {tuple(y.shape)}  causal={leak == 0.0}  (leak {leak:.3g})")


if __name__ == "__main__":
    main()
