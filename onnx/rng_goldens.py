"""Goldens for src/rng.rs: torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)), float32.

Writes tests/fixtures/rng/randn_goldens.safetensors (run from the repo root with the project venv's python):

    python onnx/rng_goldens.py [OUT]

Keys (all tensors 1-D, row-major values of the drawn tensor):
* ``full/s{seed}/{shape}`` f32: every value of a small draw, e.g. ``full/s42/1x4x7x9``.
* ``sum/s{seed}/{shape}/{name}``: large draws, stored compactly. ``head``/``tail`` f32 (first/last 64 values),
  ``strided`` f32 (every 997th value), ``bits`` u64 [2] = [sum of the u32 bit patterns, sum of bits*(index+1)],
  both modulo 2**64: any changed, missing or permuted value changes them.
* ``interleaved/s{seed}/{k}_{shape}`` f32: draws k = 0, 1, 2, ... made in order on ONE generator
  (randn(3), randn(1,4,8,8), randn(5), randn(1,4,7,9)), which exercises the cached second Box-Muller value.
* ``batch/s{first}/{shape}`` f32: diffusers ``randn_tensor(shape, generator=[manual_seed(first + i) ...])``.

The values are exact for x86-64 torch wheels (AVX2/AVX512 kernels); see shared research tiny_fixtures.md section 6.
"""

import os
import sys

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from safetensors.numpy import save_file

SEEDS = [0, 1, 42, 2**31 - 1, 2**32 + 7, 123456789]
FULL_SHAPES = [(1, 4, 8, 8), (1, 4, 7, 9), (16,), (17,), (3,), (5,), (2, 4, 8, 12), (1,), (15,), (31,)]
SUM_SHAPES = [(1, 4, 128, 128), (1, 4, 127, 129)]
INTERLEAVED = [(3,), (1, 4, 8, 8), (5,), (1, 4, 7, 9)]
BATCH_CASES = [(42, (2, 4, 8, 12)), (7, (2, 4, 7, 9)), (2**32 - 1, (2, 4, 8, 8)), (5, (2, 3))]


def name(shape):
    return "x".join(str(d) for d in shape)


def draw(seed, shape):
    g = torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).numpy().reshape(-1)


def bit_sums(values):
    bits = values.view(np.uint32).astype(np.uint64)
    idx = np.arange(1, bits.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return np.array([bits.sum(dtype=np.uint64), (bits * idx).sum(dtype=np.uint64)], dtype=np.uint64)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/rng/randn_goldens.safetensors"
    t = {}
    for seed in SEEDS:
        for shape in FULL_SHAPES:
            t[f"full/s{seed}/{name(shape)}"] = draw(seed, shape)
        for shape in SUM_SHAPES:
            v = draw(seed, shape)
            key = f"sum/s{seed}/{name(shape)}"
            t[f"{key}/head"] = v[:64].copy()
            t[f"{key}/tail"] = v[-64:].copy()
            t[f"{key}/strided"] = v[::997].copy()
            t[f"{key}/bits"] = bit_sums(v)
    for seed in [0, 42, 2**32 + 7]:
        g = torch.Generator("cpu").manual_seed(seed)
        for k, shape in enumerate(INTERLEAVED):
            t[f"interleaved/s{seed}/{k}_{name(shape)}"] = torch.randn(shape, generator=g).numpy().reshape(-1)
    for first, shape in BATCH_CASES:
        gens = [torch.Generator("cpu").manual_seed(first + i) for i in range(shape[0])]
        v = randn_tensor(shape, generator=gens, device=torch.device("cpu"), dtype=torch.float32)
        t[f"batch/s{first}/{name(shape)}"] = v.numpy().reshape(-1).copy()

    # manual_seed keeps only the low 32 bits (mt19937 init_genrand(seed & 0xffffffff)).
    assert np.array_equal(draw(2**32 + 5, (1, 4, 8, 8)), draw(5, (1, 4, 8, 8)))
    assert np.array_equal(draw(2**32 + 5, (3,)), draw(5, (3,)))

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    meta = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, out, metadata=meta)
    print(f"wrote {out}: {len(t)} tensors, {os.path.getsize(out)} bytes, {meta}")


if __name__ == "__main__":
    main()
