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

from diffusers import (
    DDIMScheduler,
    EulerAncestralDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
)

import _scheduler_goldens as sg

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


def main():
    base_noise = sg.start()
    sdxl_config = sg.load_model_config()
    tensors = {}
    runs_meta = []
    for class_name, name, options, step_counts in RUNS:
        cls = CLASSES[class_name]
        config_overrides, step_args = sg.split_options(options, STEP_ARGS)
        for steps in step_counts:
            run = f"{SHORT[class_name]}/{name}_{steps}"
            sched = sg.new_scheduler(cls, sdxl_config, config_overrides, steps)
            arrays, drawn = sg.drive(sched, base_noise, step_args, with_sigmas=class_name != "DDIMScheduler")
            sg.add_run(tensors, runs_meta, run, arrays, drawn, options=options, steps=steps, **{"class": class_name})

    stand_in = "x * t / (t + 1) + 0.05 (float32, t as float32), x = scale_model_input(sample, t)"
    sg.write_outputs(__file__, "k_family", tensors, runs_meta, {"stand_in_model": stand_in})


if __name__ == "__main__":
    main()
