"""Compare the Triton projection with the reference on one device; prints one JSON line.

Run by the tests as `python -m tests.unit.engine.triton_check DEVICE` (with TRITON_INTERPRET=1
for CPU tensors), in its own process because Triton reads that setting at import.
"""

import json
import sys

import torch

from app.engine.fastfood import FastfoodProjection
from app.engine.fastfood_triton import TritonFastfoodProjection

CASES = [  # (d, D, max_tile): one tile per block; several sub-blocks per block; a 64x64 tile
    (100, 5000, 16384),
    (100, 5000, 256),
    (3000, 10000, 16384),
]


def main(device: str, cases=CASES) -> None:
    results = []
    for d, D, max_tile in cases:
        ref = FastfoodProjection(d, D, seed=7, device=device)
        fast = TritonFastfoodProjection(d, D, seed=7, device=device, max_tile=max_tile)
        gen = torch.Generator().manual_seed(d)
        x = torch.randn(d, generator=gen).to(device)
        y = torch.randn(D, generator=gen).to(device)
        want_f, got_f = ref.forward(x), fast.forward(x)
        want_t, got_t = ref.transpose(y), fast.transpose(y)
        results.append(
            {
                "case": [d, D, max_tile],
                "J": fast.J,
                "shape_ok": got_f.shape == (D,) and got_t.shape == (d,),
                "forward_err": ((got_f - want_f).abs().max() / want_f.abs().max()).item(),
                "transpose_err": ((got_t - want_t).abs().max() / want_t.abs().max()).item(),
                "adjoint_gap": abs(torch.dot(got_f, y).item() - torch.dot(x, got_t).item())
                / abs(torch.dot(got_f, y).item()),
                "state_bytes": fast.nbytes,
                "state_bytes_at_1000x_D": TritonFastfoodProjection(
                    d, 1000 * D, seed=7, device=device, max_tile=max_tile
                ).nbytes,
            }
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
