"""Write scheduler parity goldens for the Rust k-diffusion-family and DDIM schedulers from the installed diffusers.

Usage (from the repository root, with the project's Python venv):

    python onnx/scheduler_goldens_k.py

Writes, under tests/fixtures/schedulers/:
  k_family.safetensors  float32 tensors, per run `<run>/...`:
                          timesteps, sigmas (diffusers' `scheduler.sigmas`, interleaved for Heun/KDPM2; absent for
                          DDIM), init_noise_sigma, sample0 (initial latents * init_noise_sigma), scaled
                          (scale_model_input output per UNet evaluation), prev (step output per evaluation), noise (the
                          noise tensors the run drew, in order; only for runs that draw)
  k_family.json         sidecar: versions, and per run its class, overrides, step count and which evaluations drew

Each run is <Class>.from_config(sdxl_config, **options) with set_timesteps(steps), driven like a pipeline: for every
t in scheduler.timesteps: x = scale_model_input(sample, t); out = model(x, t); sample = step(out, t, sample, ...).
The stand-in model is `x * t / (t + 1) + 0.05` with t as float32 (float32 ops), so Rust recomputes it bit-exactly.
The initial sample is torch.randn((1, 4, 4, 4)) from seed 0 (as onnx/scheduler_goldens.py); step noise comes from a
generator seeded 1234 and is recorded by replaying the generator state before each step. DDIM's `eta` is a step
argument. Deterministic: re-running produces the same bytes. The SDXL model config is the one
onnx/scheduler_goldens.py writes (sdxl_scheduler_config.json).
"""

import inspect
import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
)
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "schedulers")

CLASSES = {
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DDIMScheduler": DDIMScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "KDPM2DiscreteScheduler": KDPM2DiscreteScheduler,
    "KDPM2AncestralDiscreteScheduler": KDPM2AncestralDiscreteScheduler,
}
SHORT = {
    "EulerAncestralDiscreteScheduler": "euler_a",
    "DDIMScheduler": "ddim",
    "LMSDiscreteScheduler": "lms",
    "HeunDiscreteScheduler": "heun",
    "KDPM2DiscreteScheduler": "kdpm2",
    "KDPM2AncestralDiscreteScheduler": "kdpm2_a",
}
STEP_ARGS = ("eta",)
FULL = [1, 4, 20]
SHORT_STEPS = [1, 4]

# (class, run name, options: config overrides and/or step arguments, step counts)
RUNS = [
    ("EulerAncestralDiscreteScheduler", "default", {}, [1, 4, 20, 30]),
    ("EulerAncestralDiscreteScheduler", "trailing", {"timestep_spacing": "trailing"}, SHORT_STEPS),
    ("EulerAncestralDiscreteScheduler", "linspace", {"timestep_spacing": "linspace"}, SHORT_STEPS),
    ("EulerAncestralDiscreteScheduler", "v_prediction", {"prediction_type": "v_prediction"}, SHORT_STEPS),
    (
        "EulerAncestralDiscreteScheduler",
        "zero_snr_trailing",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        SHORT_STEPS,
    ),
    ("DDIMScheduler", "default", {}, FULL),
    ("DDIMScheduler", "trailing", {"timestep_spacing": "trailing"}, SHORT_STEPS),
    ("DDIMScheduler", "linspace", {"timestep_spacing": "linspace"}, SHORT_STEPS),
    ("DDIMScheduler", "v_prediction", {"prediction_type": "v_prediction"}, SHORT_STEPS),
    ("DDIMScheduler", "sample_prediction", {"prediction_type": "sample"}, [4]),
    (
        "DDIMScheduler",
        "zero_snr_trailing",
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        SHORT_STEPS,
    ),
    ("DDIMScheduler", "eta", {"eta": 1.0}, FULL),
    ("DDIMScheduler", "eta_half_alpha_one", {"eta": 0.5, "set_alpha_to_one": True}, [4]),
    ("DDIMScheduler", "clip", {"clip_sample": True, "clip_sample_range": 1.5}, [4]),
    ("DDIMScheduler", "thresholding", {"thresholding": True, "sample_max_value": 1.5}, [4]),
    ("LMSDiscreteScheduler", "default", {}, FULL),
    ("LMSDiscreteScheduler", "karras", {"use_karras_sigmas": True}, FULL),
    ("LMSDiscreteScheduler", "exponential", {"use_exponential_sigmas": True}, [4]),
    ("LMSDiscreteScheduler", "trailing", {"timestep_spacing": "trailing"}, SHORT_STEPS),
    ("LMSDiscreteScheduler", "linspace", {"timestep_spacing": "linspace"}, SHORT_STEPS),
    ("LMSDiscreteScheduler", "v_prediction", {"prediction_type": "v_prediction"}, SHORT_STEPS),
    ("LMSDiscreteScheduler", "sample_prediction", {"prediction_type": "sample"}, [4]),
    ("HeunDiscreteScheduler", "default", {}, FULL),
    ("HeunDiscreteScheduler", "karras", {"use_karras_sigmas": True}, SHORT_STEPS),
    ("HeunDiscreteScheduler", "exponential", {"use_exponential_sigmas": True}, [4]),
    ("HeunDiscreteScheduler", "trailing", {"timestep_spacing": "trailing"}, SHORT_STEPS),
    ("HeunDiscreteScheduler", "linspace", {"timestep_spacing": "linspace"}, SHORT_STEPS),
    ("HeunDiscreteScheduler", "v_prediction", {"prediction_type": "v_prediction"}, SHORT_STEPS),
    ("HeunDiscreteScheduler", "clip_sample", {"clip_sample": True, "clip_sample_range": 2.0}, [4]),
    ("HeunDiscreteScheduler", "exp_betas", {"beta_schedule": "exp"}, [4]),
    ("KDPM2DiscreteScheduler", "default", {}, FULL),
    ("KDPM2DiscreteScheduler", "karras", {"use_karras_sigmas": True}, SHORT_STEPS),
    ("KDPM2DiscreteScheduler", "exponential", {"use_exponential_sigmas": True}, [4]),
    ("KDPM2DiscreteScheduler", "trailing", {"timestep_spacing": "trailing"}, SHORT_STEPS),
    ("KDPM2DiscreteScheduler", "linspace", {"timestep_spacing": "linspace"}, SHORT_STEPS),
    ("KDPM2DiscreteScheduler", "v_prediction", {"prediction_type": "v_prediction"}, SHORT_STEPS),
    ("KDPM2AncestralDiscreteScheduler", "default", {}, FULL),
    ("KDPM2AncestralDiscreteScheduler", "karras", {"use_karras_sigmas": True}, SHORT_STEPS),
    ("KDPM2AncestralDiscreteScheduler", "exponential", {"use_exponential_sigmas": True}, [4]),
    ("KDPM2AncestralDiscreteScheduler", "trailing", {"timestep_spacing": "trailing"}, SHORT_STEPS),
    ("KDPM2AncestralDiscreteScheduler", "linspace", {"timestep_spacing": "linspace"}, SHORT_STEPS),
    ("KDPM2AncestralDiscreteScheduler", "v_prediction", {"prediction_type": "v_prediction"}, SHORT_STEPS),
]


def model(x, t):
    t = t.to(torch.float32)
    return x * t / (t + 1) + 0.05


def main():
    torch.set_num_threads(1)
    with open(os.path.join(OUT, "sdxl_scheduler_config.json")) as f:
        sdxl_config = json.load(f)
    tensors = {}
    runs_meta = []
    base_noise = torch.randn((1, 4, 4, 4), generator=torch.Generator("cpu").manual_seed(0))
    for class_name, name, options, step_counts in RUNS:
        cls = CLASSES[class_name]
        config_overrides = {k: v for k, v in options.items() if k not in STEP_ARGS}
        step_args = {k: v for k, v in options.items() if k in STEP_ARGS}
        for steps in step_counts:
            run = f"{SHORT[class_name]}/{name}_{steps}"
            sched = cls.from_config(sdxl_config, **config_overrides)
            sched.set_timesteps(steps)
            timesteps = sched.timesteps.clone()
            sample = base_noise * sched.init_noise_sigma
            gen = torch.Generator("cpu").manual_seed(1234)
            scaled_all, prev_all, noise_all, drawn = [], [], [], []
            tensors[f"{run}/sample0"] = sample.numpy().reshape(-1).copy()
            for t in timesteps:
                x = sched.scale_model_input(sample, t)
                out = model(x, t)
                peek = torch.Generator("cpu")
                peek.set_state(gen.get_state())
                noise = torch.randn(out.shape, generator=peek)
                state_before = gen.get_state().clone()
                kwargs = dict(step_args)
                if "generator" in inspect.signature(sched.step).parameters:
                    kwargs["generator"] = gen
                sample = sched.step(out, t, sample, **kwargs).prev_sample
                did_draw = not torch.equal(state_before, gen.get_state())
                drawn.append(did_draw)
                if did_draw:
                    noise_all.append(noise.numpy().reshape(-1))
                scaled_all.append(x.numpy().reshape(-1))
                prev_all.append(sample.numpy().reshape(-1))
            tensors[f"{run}/timesteps"] = timesteps.numpy().astype(np.float32)
            if class_name != "DDIMScheduler":
                tensors[f"{run}/sigmas"] = sched.sigmas.numpy().astype(np.float32)
            tensors[f"{run}/init_noise_sigma"] = np.array([float(sched.init_noise_sigma)], dtype=np.float32)
            tensors[f"{run}/scaled"] = np.stack(scaled_all).astype(np.float32)
            tensors[f"{run}/prev"] = np.stack(prev_all).astype(np.float32)
            if noise_all:
                tensors[f"{run}/noise"] = np.stack(noise_all).astype(np.float32)
            runs_meta.append(
                {"run": run, "class": class_name, "options": options, "steps": steps, "noise_drawn": drawn}
            )

    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}
    path = os.path.join(OUT, "k_family.safetensors")
    save_file(tensors, path)
    os.chmod(path, 0o644)
    meta = {
        "generator": "onnx/scheduler_goldens_k.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "model_config": "sdxl_scheduler_config.json",
        "sample_shape": [1, 4, 4, 4],
        "sample_seed": 0,
        "noise_seed": 1234,
        "stand_in_model": "x * t / (t + 1) + 0.05 (float32, t as float32), x = scale_model_input(sample, t)",
        "runs": runs_meta,
    }
    with open(os.path.join(OUT, "k_family.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    size = os.path.getsize(path)
    print(f"wrote {len(runs_meta)} runs, {len(tensors)} tensors, k_family.safetensors {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
