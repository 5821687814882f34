"""The job of `cargo bench --bench lora_merge` done by PEFT, the way diffusers' `fuse_lora` does it: the alternative a
Python service uses, timed on the same machine (issue 4's merge-speed figure, side by side).

    python bench/lora_merge_torch.py [--threads 2] [--rank 32] [--runs 3]

Builds the SDXL base UNet and both CLIP text encoders at full size from the public configs (onnx/build_bench.py),
random weights, float16; adds a rank-32 LoRA with PEFT (`inject_adapter_in_model`, as diffusers' `load_lora_weights` does;
`init_lora_weights=False`: random A and B)
on every attention and feed-forward Linear of the UNet's transformers and every CLIP q/k/v/out_proj/fc1/fc2 — the
same 722 + 72 + 192 Linears and 2.92 B base parameters as the Rust bench (checked) — then times merging it into the
weights as diffusers' `fuse_lora` does (`merge()` on every PEFT LoRA layer: on the CPU, B · A in float32, cast to
float16, added to the weight), per part, median of `--runs` (each run merges into the weights as built: `unmerge()`
between runs, not timed). Wall and process CPU time; torch uses `--threads` threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "onnx"))

import build_bench  # noqa: E402

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
CLIP_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
# What benches/lora_merge.rs merges: (Linears, base parameters) per part.
RUST_BENCH = {"unet": (722, 2208), "text_encoder": (72, 85), "text_encoder_2": (192, 629)}


def build(rank: int):
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    models = {
        "unet": UNet2DConditionModel.from_config(build_bench.SDXL_UNET_CONFIG),
        "text_encoder": CLIPTextModel(
            build_bench.clip_config(768, 12, 3072, "quick_gelu", 768, 12, build_bench.FULL_VOCAB)
        ),
        "text_encoder_2": CLIPTextModelWithProjection(
            build_bench.clip_config(1280, 20, 5120, "gelu", 1280, 32, build_bench.FULL_VOCAB)
        ),
    }
    for name, model in models.items():
        model.to(torch.float16).eval()
        targets = UNET_TARGETS if name == "unet" else CLIP_TARGETS
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
        inject_adapter_in_model(config, model)  # what diffusers' load_lora_weights does per component
    return models


def lora_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    models = build(args.rank)
    print(f"built in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {args.threads} threads", flush=True)
    total_wall = total_cpu = 0.0
    total_gflop = 0.0
    for name, model in models.items():
        layers = lora_layers(model)
        params = sum(layer.get_base_layer().weight.numel() for layer in layers)
        want = RUST_BENCH[name]
        got = (len(layers), round(params / 1e6))
        if args.rank == 32 and got != want:
            raise SystemExit(f"{name}: {got} (Linears, M params) differ from the Rust bench's {want}")
        walls, cpus = [], []
        for _ in range(args.runs):
            w, c = time.perf_counter(), time.process_time()
            for layer in layers:
                layer.merge()
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
            for layer in layers:
                layer.unmerge()
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        gflop = 2.0 * args.rank * params / 1e9
        total_wall, total_cpu, total_gflop = total_wall + wall, total_cpu + cpu, total_gflop + gflop
        runs = ", ".join(f"{x:.3f}" for x in walls)
        print(
            f"{name:>15}: {len(layers):4d} Linears, {params / 1e6:5.0f} M params, {gflop:6.1f} GFLOP: "
            f"wall {wall:.3f} s (runs {runs}), CPU {cpu:.3f} s",
            flush=True,
        )
    print(f"{'total':>15}: {total_gflop:.1f} GFLOP: wall {total_wall:.3f} s, CPU {total_cpu:.3f} s", flush=True)


if __name__ == "__main__":
    main()
