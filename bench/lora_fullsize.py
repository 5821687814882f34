"""A LoRA merged into the full-size fp16 SDXL by sdxlrt vs diffusers' fuse_lora, on CPU (issue 4 at real scale).

    python bench/lora_fullsize.py ROOT --lib target/release/libsdxlrt.so --ort $ORT_DYLIB_PATH [--size 256]
        [--device cuda]

ROOT is what `bench/gpu/make_model.py fill ROOT --device cpu` wrote (models/sdxl-fp16: fp16 graphs with external
data, diffusers names; sdxl-diffusers: the same weights). Writes onnx/make_lora.py's kohya_a LoRA (rank 4, every
UNet Transformer Linear and resnet/sampler conv, every CLIP q/k/v/out/fc Linear) for the full-size shapes into
ROOT/models/loras/, then in separate processes, one after the other:

- sdxlrt without and with the LoRA (one cached pipeline, so the preloaded plain model is evicted before the LoRA
  variant loads): the merged weights of external-data initializers are written to a temporary external-data file
  as they are merged (src/runtime/overrides.rs); reports the load time with the merge, peak RSS, and whether
  anything was left behind in the model folder or the temp folder;
- diffusers in float32 (the reference): load_lora_weights + fuse_lora, the same prompt, seed, size and steps.

Prints and writes ROOT/lora_fullsize.json: pixel differences sdxlrt+LoRA vs diffusers+LoRA (the claim) and vs
sdxlrt without the LoRA (the LoRA must change the image).

Memory: on the CPU, ONNX Runtime runs an fp16 graph through float32 copies of its weights (peak RSS 18.8 GiB for the
plain full-size model at 256²); the LoRA run needs about as much (see docs/benchmarks.md#lora-merge-issue-4).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "onnx"))

import worker as w  # noqa: E402

PREFIX = "@@LORA "


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_sdxlrt(args, with_lora: bool) -> dict:
    from types import SimpleNamespace

    w.LORAS = [{"name": "kohya_a", "weight": 1.0}] if with_lora else []
    model_dir = Path(args.root) / "models" / "sdxl-fp16"
    before = listing(model_dir)
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    # One cached pipeline: the plain model (preloaded by the worker) is evicted before the LoRA variant loads, so
    # the peak is one full-size UNet session, not two.
    options = {"max_cached_models": 1}
    if args.device != "cpu":
        options["device"] = args.device
    options = json.dumps(options)
    ns = SimpleNamespace(lib=args.lib, model_dir=str(model_dir), ort=args.ort, engine_options=options)
    contender = w.Sdxlrt(ns)
    contender.load()
    t0 = time.perf_counter()
    name = "sdxlrt-lora" if with_lora else "sdxlrt"
    result = contender.run(str(Path(args.root) / name))
    result["first_request_s"] = time.perf_counter() - t0
    result["left_in_model_folder"] = sorted(set(listing(model_dir)) - set(before))
    result["left_in_temp"] = sorted(set(os.listdir(tempfile.gettempdir())) - tmp_before)
    return result


def run_diffusers(args) -> dict:
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline

    t0 = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(Path(args.root) / "sdxl-diffusers"), torch_dtype=torch.float32)
    pipe.to("cuda" if args.device.startswith("cuda") else "cpu")
    pipe.load_lora_weights(str(Path(args.root) / "models" / "loras" / "kohya_a.safetensors"), adapter_name="a")
    pipe.fuse_lora(adapter_names=["a"], lora_scale=1.0)
    pipe.unload_lora_weights()
    load = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)
    np.save(str(Path(args.root) / "diffusers-lora.u8.npy"), w.to_u8(w.pipeline_image(pipe)))
    return {"load_and_fuse_s": load}


def make_lora(root: Path) -> None:
    import make_lora
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(root / "sdxl-diffusers"), torch_dtype=torch.float32)
    make_lora.build_loras(pipe, root / "models" / "loras")


def child(args, what: str) -> dict:
    cmd = [sys.executable, __file__, args.root, "--child", what, "--size", str(args.size), "--steps", str(args.steps)]
    cmd += ["--lib", args.lib or "", "--ort", args.ort or "", "--device", args.device]
    proc = subprocess.run(["/usr/bin/time", "-f", "@@RSS %M", *cmd], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    result = json.loads(lines[-1][len(PREFIX) :])
    rss = [x for x in proc.stderr.splitlines() if x.startswith("@@RSS ")]
    result["peak_rss_gib"] = round(int(rss[-1].split()[1]) / 2**20, 2) if rss else None
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--lib")
    ap.add_argument("--ort")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (sdxlrt and diffusers)")
    ap.add_argument("--child", choices=("make_lora", "sdxlrt", "sdxlrt-lora", "diffusers"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    w.STEPS, w.SIZE = args.steps, args.size
    root = Path(args.root)
    if args.child:
        if args.child == "make_lora":
            make_lora(root)
            result = {}
        elif args.child == "diffusers":
            result = run_diffusers(args)
        else:
            result = run_sdxlrt(args, args.child == "sdxlrt-lora")
        print(PREFIX + json.dumps(result), flush=True)
        return

    args.lib, args.ort = os.path.abspath(args.lib), os.path.abspath(args.ort)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": args.size, "steps": args.steps}
    report["device"] = args.device
    if not (root / "models" / "loras" / "kohya_a.safetensors").exists():
        child(args, "make_lora")
    for what in ("sdxlrt", "sdxlrt-lora", "diffusers"):
        report[what] = child(args, what)
        print(what, json.dumps(report[what])[:600], flush=True)
    from gpu.bench import compare

    report["sdxlrt-lora_vs_diffusers-lora"] = compare(root, "sdxlrt-lora", "diffusers-lora")
    report["sdxlrt-lora_vs_sdxlrt"] = compare(root, "sdxlrt-lora", "sdxlrt")
    (root / "lora_fullsize.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if "_vs_" in k}, indent=1))


if __name__ == "__main__":
    main()
