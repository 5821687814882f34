"""Write scheduler parity goldens for the Rust schedulers from the installed diffusers.

Usage (from the repository root, with the project's Python venv):

    python onnx/scheduler_goldens.py

Writes, under tests/fixtures/schedulers/:
  sdxl_scheduler_config.json  SDXL base 1.0's scheduler/scheduler_config.json (the model config every run starts from)
  euler.safetensors           float32 tensors, per run `<run>/...`:
                                timesteps, sigmas, init_noise_sigma, sample0 (initial latents * init_noise_sigma),
                                scaled (scale_model_input output per step), prev (step output per step),
                                noise (the noise each step drew, only for runs that draw)
                              and `tables/<name>/{betas,alphas_cumprod}` training tables for a few beta schedules
  euler.json                  sidecar: versions, the model config, and per run its overrides, step count and which
                              steps drew noise

Each run is EulerDiscreteScheduler.from_config(sdxl_config, **options) with set_timesteps(steps), driven like a
pipeline: x = scale_model_input(sample, t); out = model(x, t); sample = step(out, t, sample, **step_args). The
stand-in model is `x * t / (t + 1) + 0.05` (float32 ops), so Rust recomputes it bit-exactly. Deterministic: the
initial sample is torch.randn((1, 4, 4, 4)) from seed 0, churn noise comes from seed 1234. Re-running produces the
same bytes.
"""

import json
import os
import sys

import diffusers
import numpy as np
import torch
from diffusers import EulerDiscreteScheduler
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "schedulers")

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

STEP_ARGS = ("s_churn", "s_tmin", "s_tmax", "s_noise")

# (run name, options: scheduler config overrides and/or step arguments, step counts)
RUNS = [
    ("default", {}, [1, 4, 20, 30]),
    ("karras", {"use_karras_sigmas": True}, [1, 4, 20, 30]),
    ("exponential", {"use_exponential_sigmas": True}, [1, 4, 20]),
    ("trailing", {"timestep_spacing": "trailing"}, [1, 4, 20]),
    ("linspace", {"timestep_spacing": "linspace"}, [1, 4, 20]),
    ("v_prediction", {"prediction_type": "v_prediction"}, [1, 4, 20]),
    ("zero_snr_trailing", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, [1, 4, 20]),
    ("final_sigma_min", {"final_sigmas_type": "sigma_min"}, [1, 4, 20]),
    ("log_linear", {"interpolation_type": "log_linear"}, [1, 4, 20]),
    ("churn", {"s_churn": 2.0}, [1, 4, 20]),
    ("churn_window", {"s_churn": 10.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.003}, [4, 20]),
    ("karras_min_max", {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0}, [4]),
    ("continuous_v", {"timestep_type": "continuous", "prediction_type": "v_prediction"}, [4]),
    ("sample_prediction", {"prediction_type": "sample"}, [4]),
    ("cosine_linspace", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"}, [4]),
    ("linear_betas", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, [4]),
]

# (table name, config overrides) for the training-table goldens `tables/<name>/{betas,alphas_cumprod}`.
TABLES = [
    ("scaled_linear", {}),
    ("linear_1100", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1100}),
    ("squaredcos_cap_v2", {"beta_schedule": "squaredcos_cap_v2"}),
    ("scaled_linear_zero_snr", {"rescale_betas_zero_snr": True}),
]


def model(x, t):
    return x * t / (t + 1) + 0.05


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    runs_meta = []
    base_noise = torch.randn((1, 4, 4, 4), generator=torch.Generator("cpu").manual_seed(0))
    for name, options, step_counts in RUNS:
        config_overrides = {k: v for k, v in options.items() if k not in STEP_ARGS}
        step_args = {k: v for k, v in options.items() if k in STEP_ARGS}
        for steps in step_counts:
            run = f"{name}_{steps}"
            sched = EulerDiscreteScheduler.from_config(SDXL_CONFIG, **config_overrides)
            sched.set_timesteps(steps)
            sample = base_noise * sched.init_noise_sigma
            gen = torch.Generator("cpu").manual_seed(1234)
            scaled_all, prev_all, noise_all, drawn = [], [], [], []
            tensors[f"{run}/sample0"] = sample.numpy().reshape(-1).copy()
            for t in sched.timesteps:
                x = sched.scale_model_input(sample, t)
                out = model(x, t)
                peek = torch.Generator("cpu")
                peek.set_state(gen.get_state())
                noise = torch.randn(out.shape, generator=peek)
                state_before = gen.get_state().clone()
                sample = sched.step(out, t, sample, generator=gen, **step_args).prev_sample
                did_draw = not torch.equal(state_before, gen.get_state())
                drawn.append(did_draw)
                if did_draw:
                    noise_all.append(noise.numpy().reshape(-1))
                scaled_all.append(x.numpy().reshape(-1))
                prev_all.append(sample.numpy().reshape(-1))
            tensors[f"{run}/timesteps"] = sched.timesteps.numpy().astype(np.float32)
            tensors[f"{run}/sigmas"] = sched.sigmas.numpy().astype(np.float32)
            tensors[f"{run}/init_noise_sigma"] = np.array([float(sched.init_noise_sigma)], dtype=np.float32)
            tensors[f"{run}/scaled"] = np.stack(scaled_all).astype(np.float32)
            tensors[f"{run}/prev"] = np.stack(prev_all).astype(np.float32)
            if noise_all:
                tensors[f"{run}/noise"] = np.stack(noise_all).astype(np.float32)
            runs_meta.append({"run": run, "options": options, "steps": steps, "noise_drawn": drawn})

    # Training tables (float32, as torch builds them) to pin torch.linspace / torch.cumprod emulation bit for bit.
    for name, options in TABLES:
        sched = EulerDiscreteScheduler.from_config(SDXL_CONFIG, **options)
        tensors[f"tables/{name}/betas"] = sched.betas.numpy().astype(np.float32)
        tensors[f"tables/{name}/alphas_cumprod"] = sched.alphas_cumprod.numpy().astype(np.float32)
    tables_meta = [{"name": name, "options": options} for name, options in TABLES]

    tensors = {k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(OUT, "euler.safetensors"))
    os.chmod(os.path.join(OUT, "euler.safetensors"), 0o644)
    meta = {
        "generator": "onnx/scheduler_goldens.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "scheduler": "EulerDiscreteScheduler",
        "model_config": "sdxl_scheduler_config.json",
        "sample_shape": [1, 4, 4, 4],
        "sample_seed": 0,
        "noise_seed": 1234,
        "stand_in_model": "x * t / (t + 1) + 0.05 (float32), x = scale_model_input(sample, t)",
        "runs": runs_meta,
        "tables": tables_meta,
    }
    with open(os.path.join(OUT, "euler.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(OUT, "sdxl_scheduler_config.json"), "w") as f:
        json.dump(SDXL_CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")
    size = os.path.getsize(os.path.join(OUT, "euler.safetensors"))
    print(f"wrote {len(runs_meta)} runs, {len(tensors)} tensors, euler.safetensors {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
