"""GPU check: sdxlrt (C ABI, CUDA execution provider) vs PyTorch eager (diffusers) on the same full-size SDXL weights.

    python bench/gpu/bench.py ROOT --lib libsdxlrt.so --ort libonnxruntime.so.1.31.1 --out DIR
        [--device cuda] [--size 1024] [--steps 30] [--runs 3] [--short-steps 3]
        [--contenders sdxlrt,torch,sdxlrt-as-exported,sdxlrt-subpixel,sdxlrt-fused,sdxlrt-fused-nhwc,sdxlrt-fused-lean]

ROOT is what bench/gpu/make_model.py wrote. Each contender runs alone in its own process (never two on the GPU at
once) while this driver samples the GPU's used memory with nvidia-smi every 50 ms. Each loads, runs one warm-up
image, then `--runs` timed images (prompt, seed, scheduler, guidance, size fixed), and reports:

- per CFG step: sdxlrt's denoising time / steps (UNet batch 2 + guidance + scheduler step + host copies), PyTorch's
  median interval between step-end callbacks (with a device synchronize in the callback), and PyTorch's UNet alone
  (batch 2, CUDA events, median of 20 after warm-up);
- end to end: wall time of one image (text encoders, 30 steps, VAE decode to RGB8), median of the timed runs;
- load: engine creation + model preload (sdxlrt) / from_pretrained + .to(device) (PyTorch);
- peak GPU memory: nvidia-smi's used memory during the process minus before it (and torch's own
  max_memory_allocated for PyTorch);
- the first timed image of each, compared pixel by pixel with PyTorch's, and one more image of `--short-steps`
  steps each: a short run shows whether the graphs agree with PyTorch before a long run's fp16 rounding has been
  amplified step after step (a random full-size UNet is a chaotic map).

Contenders: sdxlrt (plain fp16 export; sdxlrt fuses its UNet and VAE attention into MultiHeadAttention at load, the
engine's default), sdxlrt-as-exported (the same files run as exported: engine option fuse_attention false),
sdxlrt-subpixel (engine option subpixel_upsample true: the fp32 VAE's upsample convolutions as four 2×2 phase
convolutions, the CPU default), sdxlrt-fused (the UNet exported with MultiHeadAttention, export_onnx.py --fused-attention: flash / memory-efficient
kernels), sdxlrt-fused-nhwc (+ cuda.prefer_nhwc), sdxlrt-fused-lean (+ cuda.conv_max_workspace false: less cuDNN
workspace), torch (diffusers, scaled_dot_product_attention, fp16 with the VAE in fp32), torch-fp32 (the same in
float32: the reference that tells which of two disagreeing fp16 pipelines strays). The torch workers also save the
prompt conditioning, compared between them.

Results: DIR/gpu_bench.json and DIR/gpu_bench.md. Worker mode (internal): --worker NAME.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import worker as w  # noqa: E402  (bench/worker.py: the sdxlrt ctypes contender and the fixed prompt/seed)

RESULT_PREFIX = "@@GPU "
MODELS = {
    "sdxlrt": "models/sdxl-fp16",
    "sdxlrt-as-exported": "models/sdxl-fp16",
    "sdxlrt-subpixel": "models/sdxl-fp16",
    "sdxlrt-fused": "models/sdxl-fp16-fused",
    "sdxlrt-fused-nhwc": "models/sdxl-fp16-fused",
    "sdxlrt-fused-lean": "models/sdxl-fp16-fused",
    "torch": "sdxl-diffusers",
    "torch-fp32": "sdxl-diffusers",
}
READY = {name: "READY-FUSED" if "fused" in name else "READY" for name in MODELS}
# engine options of a contender, on top of {"device": ...} and --engine-options
OPTIONS = {
    "sdxlrt-as-exported": {"fuse_attention": False},
    "sdxlrt-subpixel": {"subpixel_upsample": True},
    "sdxlrt-fused-nhwc": {"cuda": {"prefer_nhwc": True}},
    "sdxlrt-fused-lean": {"cuda": {"conv_max_workspace": False}},
}


def configure(args) -> None:
    w.STEPS, w.SIZE = args.steps, args.size


# ---------------------------------------------------------------------------------------------------------------
# workers (one process each)


def run_sdxlrt(args, model_dir: Path) -> dict:
    options = {"device": args.device} if args.device != "cpu" else {}
    if args.engine_options:
        options.update(json.loads(args.engine_options))
    options.update(OPTIONS.get(args.worker, {}))
    ns = SimpleNamespace(lib=args.lib, model_dir=str(model_dir), ort=args.ort, engine_options=json.dumps(options))
    contender = w.Sdxlrt(ns)
    load = contender.load()
    loaded_at = time.time()
    provider = load["status"].get("execution_provider")
    runs, started_at = [], None
    for i in range(args.runs + 1):
        save = str(Path(args.out) / f"{args.worker}") if i == 1 else None
        if i == 1:
            started_at = time.time()
        runs.append(contender.run(save))
    timed = runs[1:]
    if args.short_steps:
        w.STEPS = args.short_steps
        contender.run(str(Path(args.out) / f"{args.worker}-short"))
        w.STEPS = args.steps
    per_step = [r["stages"]["denoising"] / args.steps for r in timed]
    return {
        "timeline": {"loaded_at": loaded_at, "started_at": started_at},
        "load_s": load["load_s"],
        "execution_provider": provider,
        "engine_options": load["engine_options"],
        "onnxruntime": load["status"].get("onnxruntime"),
        "warmup_wall_s": runs[0]["wall_s"],
        "wall_s": [r["wall_s"] for r in timed],
        "step_s": per_step,
        "stages": timed[0]["stages"],
        "unet_evaluations": timed[0]["unet_evaluations"],
        "reported_peak_memory": timed[0]["peak_memory_reported"],
    }


def run_torch(args, model_dir: Path) -> dict:
    import diffusers
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    device = "cuda" if args.device.startswith("cuda") else "cpu"
    dtype = torch.float16 if device == "cuda" and args.worker == "torch" else torch.float32
    t0 = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir), torch_dtype=dtype)
    # The VAE as saved (fp32, like sdxlrt's vae_decoder); the fp16 latents are cast on the way in.
    pipe.vae = AutoencoderKL.from_pretrained(str(model_dir / "vae"), torch_dtype=torch.float32)
    pipe.vae.post_quant_conv.register_forward_pre_hook(lambda _m, inputs: tuple(x.float() for x in inputs))
    pipe.to(device)
    if device == "cuda":
        torch.cuda.synchronize()
    load = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    stamps: list[float] = []

    def on_step_end(_pipe, _i, _t, kwargs):
        sync()
        stamps.append(time.perf_counter())
        return kwargs

    walls, steps = [], []
    for i in range(args.runs + 1):
        stamps.clear()
        if device == "cuda" and i == 1:
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        image = w.pipeline_image(pipe, callback_on_step_end=on_step_end)
        sync()
        wall = time.perf_counter() - t
        if i == 1:
            np.save(str(Path(args.out) / f"{args.worker}.u8.npy"), w.to_u8(image))
        if i >= 1:
            walls.append(wall)
            steps.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])))
    peak_alloc = torch.cuda.max_memory_allocated() if device == "cuda" else None
    if args.short_steps:
        image = w.pipeline_image(pipe, steps=args.short_steps)
        np.save(str(Path(args.out) / f"{args.worker}-short.u8.npy"), w.to_u8(image))
    with torch.inference_mode():
        cond = pipe.encode_prompt(w.PROMPT, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled", "negative_pooled")
    np.savez(Path(args.out) / f"{args.worker}-cond.npz", **{n: c.float().cpu().numpy() for n, c in zip(names, cond)})
    unet = pipe.unet
    result = {
        "load_s": load,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "dtype": str(dtype),
        "attn_processor": type(next(iter(unet.attn_processors.values()))).__name__,
        "wall_s": walls,
        "step_s": steps,
        "torch_peak_allocated_bytes": peak_alloc,
    }
    if device != "cuda":
        return result

    # The UNet alone at batch 2 (one CFG step), same shapes as the pipeline's.
    lat = args.size // 8
    g = torch.Generator("cpu").manual_seed(0)
    sample = torch.randn(2, 4, lat, lat, generator=g).to(device, dtype)
    ehs = torch.randn(2, 77, 2048, generator=g).to(device, dtype)
    embeds = torch.randn(2, 1280, generator=g).to(device, dtype)
    time_ids = torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]] * 2, dtype=dtype, device=device)
    t_step = torch.tensor(999.0, device=device)
    cond = {"text_embeds": embeds, "time_ids": time_ids}
    unet_times = []
    with torch.inference_mode():
        for i in range(23):
            sync()
            t = time.perf_counter()
            unet(sample, t_step, ehs, added_cond_kwargs=cond, return_dict=False)
            sync()
            if i >= 3:
                unet_times.append(time.perf_counter() - t)
    result["unet_only_step_s"] = statistics.median(unet_times)
    return result


def worker_main(args) -> None:
    configure(args)
    model_dir = Path(args.root) / MODELS[args.worker]
    result = run_torch(args, model_dir) if args.worker.startswith("torch") else run_sdxlrt(args, model_dir)
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# driver


class GpuMemory:
    """Samples nvidia-smi's memory.used (MiB) of the first GPU every 50 ms; no-op without nvidia-smi."""

    def __init__(self):
        self.samples: list[tuple[float, int]] = []  # (time.time(), MiB)
        self.proc = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "50", "-i", "0"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
        except FileNotFoundError:
            self.proc = None
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.time(), int(line)))

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()


def used_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out.split()[0])
    except (FileNotFoundError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


def contender(args, name: str) -> dict:
    base = used_mib()
    cmd = [sys.executable, __file__, args.root, "--worker", name] + passthrough(args)
    t0 = time.perf_counter()
    with GpuMemory() as mem:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        return {"error": f"exit {proc.returncode}", "log_tail": tail, "process_s": time.perf_counter() - t0}
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["process_s"] = time.perf_counter() - t0
    if base is not None and mem.samples:
        result["gpu_peak_used_mib"] = max(m for _, m in mem.samples) - base
        if result.get("timeline", {}).get("started_at"):
            result["gpu_mib_by_stage"] = by_stage(mem.samples, base, result["timeline"], result["stages"])
    return result


def by_stage(samples, base: int, timeline: dict, stages: dict) -> dict:
    """GPU memory (MiB above the process's start) after loading, and the peak during each stage of the first timed
    image, from the sampled timeline and the stage durations sdxlrt reports (the stages run back to back)."""
    loaded = [m for t, m in samples if t <= timeline["loaded_at"]]
    out = {"after_load": (loaded[-1] - base) if loaded else None}
    t = timeline["started_at"]
    for stage in ("text_encoding", "denoising", "vae_decode"):
        end = t + stages[stage] + 0.05
        window = [m for ts, m in samples if t <= ts <= end]
        out[stage] = (max(window) - base) if window else None
        t = end
    return out


def passthrough(args) -> list[str]:
    out = ["--device", args.device, "--size", str(args.size), "--steps", str(args.steps), "--runs", str(args.runs)]
    out += ["--short-steps", str(args.short_steps)]
    out += ["--out", args.out]
    if args.lib:
        out += ["--lib", args.lib]
    if args.ort:
        out += ["--ort", args.ort]
    if args.engine_options:
        out += ["--engine-options", args.engine_options]
    return out


def compare(out: Path, a: str, b: str) -> dict | None:
    import numpy as np

    fa, fb = out / f"{a}.u8.npy", out / f"{b}.u8.npy"
    if not (fa.exists() and fb.exists()):
        return None
    x, y = np.load(fa).astype(np.int16), np.load(fb).astype(np.int16)
    if x.shape != y.shape:
        return {"shape_mismatch": [list(x.shape), list(y.shape)]}
    d = np.abs(x - y)
    return {"max_abs_255": int(d.max()), "mean_abs_255": float(d.mean()), "within_1": float((d <= 1).mean())}


def compare_conditioning(fa: Path, fb: Path) -> dict | None:
    """max |a - b| / max |b| of each prompt conditioning tensor, and whether `a` holds non-finite values."""
    import numpy as np

    if not (fa.exists() and fb.exists()):
        return None
    a, b = np.load(fa), np.load(fb)
    out = {}
    for name in b.files:
        x, y = a[name], b[name]
        out[name] = {
            "rel_max_diff": float(np.nanmax(np.abs(x - y)) / max(float(np.abs(y).max()), 1e-30)),
            "non_finite": int((~np.isfinite(x)).sum()),
            "max_abs": float(np.abs(y).max()),
        }
    return out


def med(xs):
    return statistics.median(xs) if xs else None


def markdown(results: dict, meta: dict) -> str:
    rows = [
        "| contender | per CFG step (ms) | UNet alone (ms) | end to end (s) | load (s) | peak GPU MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | | | |")
            continue
        step = med(r.get("step_s", []))
        unet = r.get("unet_only_step_s")
        rows.append(
            f"| {name} | {step * 1e3:.1f} | {'' if unet is None else f'{unet * 1e3:.1f}'} | "
            f"{med(r['wall_s']):.3f} | {r['load_s']:.1f} | {r.get('gpu_peak_used_mib', '')} |"
        )
    return "\n".join([f"GPU check, {meta['date']}, {meta['gpu']}", "", *rows, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    ap.add_argument("--lib", help="libsdxlrt.so")
    ap.add_argument("--ort", help="libonnxruntime.so of the GPU build")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--short-steps", type=int, default=3, help="steps of the extra parity image (0: none)")
    ap.add_argument(
        "--contenders", default="sdxlrt,torch,sdxlrt-as-exported,sdxlrt-subpixel,sdxlrt-fused,sdxlrt-fused-nhwc,sdxlrt-fused-lean"
    )
    ap.add_argument("--wait", type=float, default=0, help="seconds to wait for a model make_model.py is still building")
    ap.add_argument("--engine-options", default="", help="extra sdxlrt engine options (JSON object)")
    ap.add_argument("--timeout", type=float, default=400, help="seconds per contender process")
    ap.add_argument("--worker", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.lib = os.path.abspath(args.lib) if args.lib else None
    args.ort = os.path.abspath(args.ort) if args.ort else None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker_main(args)
        return

    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip() if used_mib() is not None else "no GPU (CPU trial)"
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "gpu": gpu, "args": vars(args)}
    results = {}
    deadline = time.monotonic() + args.wait
    for name in [n for n in args.contenders.split(",") if n]:
        marker = Path(args.root) / READY[name]
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(2)
        if not marker.exists():
            results[name] = {"error": f"{marker} missing: the model is not built"}
            continue
        print(f"== {name}", flush=True)
        results[name] = contender(args, name)
        print(json.dumps(results[name], indent=1)[:2500], flush=True)
        out = Path(args.out)
        (out / "gpu_bench.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    out = Path(args.out)
    ours = [n for n in results if not n.startswith("torch")]
    images = {}
    for suffix in ("", "-short"):
        pairs = [(a, ref) for a in ours for ref in ("torch", "torch-fp32", "sdxlrt") if a != ref]
        for a, b in pairs + [("torch", "torch-fp32")]:
            if (out / f"{a}{suffix}.u8.npy").exists() and (out / f"{b}{suffix}.u8.npy").exists():
                images[f"{a}{suffix}_vs_{b}"] = compare(out, a + suffix, b + suffix)
    cond = compare_conditioning(out / "torch-cond.npz", out / "torch-fp32-cond.npz")
    images["conditioning_torch_vs_torch-fp32"] = cond
    report = {"meta": meta, "results": results, "images": images}
    (Path(args.out) / "gpu_bench.json").write_text(json.dumps(report, indent=1))
    md = markdown(results, meta) + "\nimages: " + json.dumps(images) + "\n"
    (Path(args.out) / "gpu_bench.md").write_text(md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
