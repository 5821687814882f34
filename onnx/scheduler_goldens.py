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

import numpy as np
from diffusers import EulerDiscreteScheduler

import _common as c
import _scheduler_goldens as sg

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    **c.SDXL_SCHEDULER_CONFIG,
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


def main():
    base_noise = sg.start()
    tensors = {}
    runs_meta = []
    for name, options, step_counts in RUNS:
        config_overrides, step_args = sg.split_options(options, STEP_ARGS)
        for steps in step_counts:
            run = f"{name}_{steps}"
            sched = sg.new_scheduler(EulerDiscreteScheduler, SDXL_CONFIG, config_overrides, steps)
            arrays, drawn = sg.drive(sched, base_noise, step_args)
            sg.add_run(tensors, runs_meta, run, arrays, drawn, options=options, steps=steps)

    # Training tables (float32, as torch builds them) to pin torch.linspace / torch.cumprod emulation bit for bit.
    for name, options in TABLES:
        sched = EulerDiscreteScheduler.from_config(SDXL_CONFIG, **options)
        tensors[f"tables/{name}/betas"] = sched.betas.numpy().astype(np.float32)
        tensors[f"tables/{name}/alphas_cumprod"] = sched.alphas_cumprod.numpy().astype(np.float32)
    tables_meta = [{"name": name, "options": options} for name, options in TABLES]

    meta = {
        "scheduler": "EulerDiscreteScheduler",
        "stand_in_model": "x * t / (t + 1) + 0.05 (float32), x = scale_model_input(sample, t)",
        "tables": tables_meta,
    }
    sg.write_outputs(__file__, "euler", tensors, runs_meta, meta)
    with open(os.path.join(sg.OUT, sg.MODEL_CONFIG), "w") as f:
        json.dump(SDXL_CONFIG, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
