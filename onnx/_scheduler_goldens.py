"""Shared pieces of the scheduler parity golden writers (scheduler_goldens.py, scheduler_goldens_k.py,
scheduler_goldens_dpm.py): the output folder, the stand-in model, the pipeline-style loop that records every step,
and the safetensors + JSON sidecar writer.

Every run starts from torch.randn((1, 4, 4, 4)) drawn from seed 0 (times init_noise_sigma) and draws its step noise
from a generator seeded 1234; the noise a step drew is recorded by replaying the generator state before the step.
"""

import inspect
import json
import os
import sys

import diffusers
import numpy as np
import torch
from safetensors.numpy import save_file

import _common as c

OUT = str(c.FIXTURES / "schedulers")
# SDXL base 1.0's scheduler config, written by scheduler_goldens.py and read by the other two writers.
MODEL_CONFIG = "sdxl_scheduler_config.json"
SAMPLE_SHAPE = (1, 4, 4, 4)
SAMPLE_SEED = 0
NOISE_SEED = 1234


def start() -> torch.Tensor:
    """Pin torch to one thread, create OUT, and return the base sample (before * init_noise_sigma)."""
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    return torch.randn(SAMPLE_SHAPE, generator=torch.Generator("cpu").manual_seed(SAMPLE_SEED))


def load_model_config() -> dict:
    """The SDXL scheduler config that scheduler_goldens.py wrote into OUT."""
    with open(os.path.join(OUT, MODEL_CONFIG)) as f:
        return json.load(f)


def model(x, t):
    """The stand-in model `x * t / (t + 1) + 0.05` with t as float32 (float32 ops), recomputed bit-exactly in Rust."""
    t = t.to(torch.float32)
    return x * t / (t + 1) + 0.05


def new_scheduler(cls, config: dict, overrides: dict, steps: int):
    """`cls.from_config(config, **overrides)` after `set_timesteps(steps)`."""
    sched = cls.from_config(config, **overrides)
    sched.set_timesteps(steps)
    return sched


def split_options(options: dict, step_arg_names: tuple[str, ...]) -> tuple[dict, dict]:
    """Split a run's options into (scheduler config overrides, step() arguments)."""
    config_overrides = {k: v for k, v in options.items() if k not in step_arg_names}
    step_args = {k: v for k, v in options.items() if k in step_arg_names}
    return config_overrides, step_args


def drive(sched, base_noise, step_args: dict, with_sigmas: bool = True) -> tuple[dict, list[bool]]:
    """Run `sched` (after set_timesteps) like a pipeline over its timesteps.

    For every t: x = scale_model_input(sample, t); out = model(x, t); sample = step(out, t, sample, **step_args),
    with generator=<seed NOISE_SEED> when step takes one. Returns ({tensor name: float32 array}, per step whether it
    drew noise). Tensors: sample0, timesteps, sigmas (when with_sigmas), init_noise_sigma, scaled and prev (one row
    per step), noise (only when some step drew, one row per drawing step).
    """
    timesteps = sched.timesteps.clone()
    sample = base_noise * sched.init_noise_sigma
    gen = torch.Generator("cpu").manual_seed(NOISE_SEED)
    kwargs = dict(step_args)
    if "generator" in inspect.signature(sched.step).parameters:
        kwargs["generator"] = gen
    tensors = {"sample0": sample.numpy().reshape(-1).copy()}
    scaled_all, prev_all, noise_all, drawn = [], [], [], []
    for t in timesteps:
        x = sched.scale_model_input(sample, t)
        out = model(x, t)
        peek = torch.Generator("cpu")
        peek.set_state(gen.get_state())
        noise = torch.randn(out.shape, generator=peek)
        state_before = gen.get_state().clone()
        sample = sched.step(out, t, sample, **kwargs).prev_sample
        did_draw = not torch.equal(state_before, gen.get_state())
        drawn.append(did_draw)
        if did_draw:
            noise_all.append(noise.numpy().reshape(-1))
        scaled_all.append(x.numpy().reshape(-1))
        prev_all.append(sample.numpy().reshape(-1))
    tensors["timesteps"] = timesteps.numpy().astype(np.float32)
    if with_sigmas:
        tensors["sigmas"] = sched.sigmas.numpy().astype(np.float32)
    tensors["init_noise_sigma"] = np.array([float(sched.init_noise_sigma)], dtype=np.float32)
    tensors["scaled"] = np.stack(scaled_all).astype(np.float32)
    tensors["prev"] = np.stack(prev_all).astype(np.float32)
    if noise_all:
        tensors["noise"] = np.stack(noise_all).astype(np.float32)
    return tensors, drawn


def add_run(tensors: dict, runs_meta: list, run: str, arrays: dict, drawn: list[bool], **meta) -> None:
    """Store a run's arrays as `<run>/<name>` tensors and its sidecar entry (run, meta, noise_drawn)."""
    tensors.update({f"{run}/{k}": v for k, v in arrays.items()})
    runs_meta.append({"run": run, **meta, "noise_drawn": drawn})


def write_outputs(script: str, stem: str, tensors: dict, runs_meta: list, meta: dict) -> str:
    """Write OUT/<stem>.safetensors (sorted keys) and its sidecar OUT/<stem>.json; return the safetensors path.

    The sidecar holds the generating script, the library versions, the shared sample/noise settings, `runs` and
    the script's own `meta` entries (sorted keys, strict JSON).
    """
    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}
    path = os.path.join(OUT, f"{stem}.safetensors")
    save_file(tensors, path)
    os.chmod(path, 0o644)
    sidecar = {
        "generator": f"onnx/{os.path.basename(script)}",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "model_config": MODEL_CONFIG,
        "sample_shape": list(SAMPLE_SHAPE),
        "sample_seed": SAMPLE_SEED,
        "noise_seed": NOISE_SEED,
        "runs": runs_meta,
        **meta,
    }
    with open(os.path.join(OUT, f"{stem}.json"), "w") as f:
        json.dump(sidecar, f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")
    size = os.path.getsize(path)
    print(f"wrote {len(runs_meta)} runs, {len(tensors)} tensors, {stem}.safetensors {size} bytes", file=sys.stderr)
    return path
