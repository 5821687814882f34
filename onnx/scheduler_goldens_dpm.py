"""Write scheduler parity goldens for the Rust DPM-Solver family from the installed diffusers.

Usage (from the repository root, with the project's Python venv):

    python onnx/scheduler_goldens_dpm.py

Writes, under tests/fixtures/schedulers/:
  dpm_family.safetensors  float32 tensors, per run `<run>/...`:
                            timesteps, sigmas, init_noise_sigma, sample0 (initial sample),
                            prev (step output per step), noise (the noise each step drew, only for SDE runs)
  dpm_family.json         sidecar: versions, and per run its class, overrides, step count and which steps drew noise;
                          plus `unit_loops`: diffusers' own unit-test full loops recomputed with this diffusers version

Each run is <Class>.from_config(sdxl_config, **options) with set_timesteps(steps), driven like a pipeline:
x = scale_model_input(sample, t) (the identity for these classes, checked here); out = model(x, t);
sample = step(out, t, sample, generator=gen) after set_begin_index(0). The stand-in model is `x * t / (t + 1) + 0.05` (float32 ops, t the
int64 timestep), so Rust recomputes it bit-exactly. Deterministic: the initial sample is torch.randn((1, 4, 4, 4)) from
seed 0, SDE noise comes from seed 1234. Re-running produces the same bytes. The SDXL model config is the one
onnx/scheduler_goldens.py writes (sdxl_scheduler_config.json).
"""

import sys

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler

import _scheduler_goldens as sg

CLASSES = {
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "DPMSolverSinglestepScheduler": DPMSolverSinglestepScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
}

M, S, U = "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "UniPCMultistepScheduler"
SMIN = {"final_sigmas_type": "sigma_min"}

# (run name, class, options, step counts)
RUNS = [
    # DPMSolverMultistepScheduler ("DPM++ 2M" and friends)
    ("m_default", M, {}, [1, 4, 20, 30]),
    ("m_karras", M, {"use_karras_sigmas": True}, [1, 4, 20, 30]),
    ("m_order3", M, {"solver_order": 3}, [1, 4, 20]),
    ("m_sde_karras", M, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, [1, 4, 20]),
    ("m_sde", M, {"algorithm_type": "sde-dpmsolver++"}, [4, 20]),
    ("m_sde_heun", M, {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, [4]),
    ("m_sde_order3", M, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, [20]),
    ("m_order1", M, {"solver_order": 1}, [4]),
    ("m_heun", M, {"solver_type": "heun"}, [4]),
    ("m_no_lower_order_final", M, {"lower_order_final": False}, [4, 20]),
    ("m_no_lof_sigma_min", M, {"lower_order_final": False, **SMIN}, [4, 20]),
    ("m_euler_at_final", M, {"euler_at_final": True, **SMIN}, [4, 20]),
    ("m_sigma_min", M, dict(SMIN), [4, 20]),
    ("m_v_prediction", M, {"prediction_type": "v_prediction"}, [4, 20]),
    ("m_sample_prediction", M, {"prediction_type": "sample"}, [4]),
    ("m_trailing", M, {"timestep_spacing": "trailing"}, [1, 4, 20]),
    ("m_linspace", M, {"timestep_spacing": "linspace"}, [4]),
    ("m_exponential", M, {"use_exponential_sigmas": True}, [4, 20]),
    ("m_lu_lambdas", M, {"use_lu_lambdas": True}, [4]),
    ("m_zero_snr_trailing", M, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, [4, 20]),
    ("m_dpmsolver", M, {"algorithm_type": "dpmsolver", **SMIN}, [4, 20]),
    ("m_dpmsolver_order3", M, {"algorithm_type": "dpmsolver", "solver_order": 3, **SMIN}, [20]),
    ("m_dpmsolver_heun", M, {"algorithm_type": "dpmsolver", "solver_type": "heun", **SMIN}, [4]),
    ("m_sde_dpmsolver", M, {"algorithm_type": "sde-dpmsolver", **SMIN}, [4]),
    ("m_sde_dpmsolver_heun", M, {"algorithm_type": "sde-dpmsolver", "solver_type": "heun", **SMIN}, [4]),
    ("m_thresholding", M, {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}, [4]),
    # cosine + Karras: fractional timesteps are truncated, not rounded; the first timestep repeats (see begin_index)
    ("m_cosine_karras_clipped", M,
     {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True, "lambda_min_clipped": -5.1}, [4]),
    ("m_cosine_linspace_clipped", M,
     {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace", "lambda_min_clipped": -5.1}, [4]),
    # DPMSolverSinglestepScheduler ("DPM++ SDE" in diffusers' table)
    ("s_default", S, {}, [1, 4, 20, 30]),
    ("s_order3", S, {"solver_order": 3}, [1, 4, 20]),
    ("s_order1", S, {"solver_order": 1}, [4]),
    ("s_karras", S, {"use_karras_sigmas": True}, [4, 20]),
    ("s_sde", S, {"algorithm_type": "sde-dpmsolver++"}, [4, 20]),
    ("s_sde_order3_heun", S, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"}, [6]),
    ("s_heun", S, {"solver_type": "heun"}, [4]),
    ("s_order3_heun", S, {"solver_order": 3, "solver_type": "heun"}, [6, 20]),
    ("s_no_lof_sigma_min", S, {"lower_order_final": False, **SMIN}, [4, 20]),
    ("s_order3_no_lof_sigma_min", S, {"solver_order": 3, "lower_order_final": False, **SMIN}, [6, 20]),
    ("s_lof_sigma_min", S, {"lower_order_final": True, **SMIN}, [5]),
    ("s_v_prediction", S, {"prediction_type": "v_prediction"}, [4]),
    ("s_exponential", S, {"use_exponential_sigmas": True}, [4]),
    ("s_dpmsolver", S, {"algorithm_type": "dpmsolver", **SMIN}, [4, 20]),
    ("s_dpmsolver_order3", S, {"algorithm_type": "dpmsolver", "solver_order": 3, **SMIN}, [6]),
    ("s_thresholding", S, {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}, [4]),
    # UniPCMultistepScheduler ("UniPC"). bh1, predict_x0=False and lower_order_final=False need
    # final_sigmas_type="sigma_min": with "zero"
    # diffusers 0.42.1 returns NaN from the last step (inf * 0), which sdxlrt rejects up front.
    ("u_default", U, {}, [1, 4, 20, 30]),
    ("u_order3", U, {"solver_order": 3}, [1, 4, 20]),
    ("u_order1", U, {"solver_order": 1}, [4]),
    ("u_bh1", U, {"solver_type": "bh1", **SMIN}, [4, 20]),
    ("u_bh1_order3", U, {"solver_type": "bh1", "solver_order": 3, **SMIN}, [20]),
    ("u_bh2_sigma_min", U, dict(SMIN), [4]),
    ("u_karras", U, {"use_karras_sigmas": True}, [4, 20]),
    ("u_karras_sigma_min", U, {"use_karras_sigmas": True, **SMIN}, [4]),
    ("u_exponential", U, {"use_exponential_sigmas": True}, [4]),
    ("u_v_prediction", U, {"prediction_type": "v_prediction"}, [4, 20]),
    ("u_trailing", U, {"timestep_spacing": "trailing"}, [4]),
    ("u_linspace", U, {"timestep_spacing": "linspace"}, [4]),
    ("u_predict_eps", U, {"predict_x0": False, **SMIN}, [4, 20]),
    ("u_predict_eps_order3", U, {"predict_x0": False, "solver_order": 3, **SMIN}, [20]),
    ("u_no_lower_order_final", U, {"lower_order_final": False, **SMIN}, [4, 20]),
    ("u_disable_corrector", U, {"disable_corrector": [0, 2]}, [4]),
    ("u_zero_snr_trailing", U, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, [4]),
    ("u_thresholding", U, {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}, [4]),
    ("u_sample_prediction", U, {"prediction_type": "sample"}, [4]),
]


def dummy_sample_deter():
    # diffusers tests/schedulers/test_schedulers.py SchedulerCommonTest.dummy_sample_deter
    num_elems = 4 * 3 * 8 * 8
    sample = torch.arange(num_elems).reshape(3, 8, 8, 4) / num_elems
    return sample.permute(3, 0, 1, 2)


def dummy_noise_deter():
    num_elems = 4 * 3 * 8 * 8
    sample = torch.arange(num_elems).flip(-1).reshape(3, 8, 8, 4) / num_elems
    return sample.permute(3, 0, 1, 2)


def unit_loop(cls, config, steps=10, start=0, add_noise=False):
    """diffusers' SchedulerCommonTest-style full loop with dummy_model (`sample * t / (t + 1)`)."""
    sched = cls(**config)
    sched.set_timesteps(steps)
    sample = dummy_sample_deter()
    timesteps = sched.timesteps[start:]
    if add_noise:
        sample = sched.add_noise(sample, dummy_noise_deter(), timesteps[:1])
    for t in timesteps:
        sample = sched.step(sample * t / (t + 1), t, sample).prev_sample
    return {"sum": float(torch.sum(torch.abs(sample))), "mean": float(torch.mean(torch.abs(sample)))}


TEST_BASE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}
MULTI_TEST = {**TEST_BASE, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
              "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
              "lower_order_final": False}
SINGLE_TEST = {**TEST_BASE, "solver_order": 2, "prediction_type": "epsilon", "thresholding": False,
               "sample_max_value": 1.0, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
               "lambda_min_clipped": -float("inf"), "variance_type": None}
UNIPC_TEST = {**TEST_BASE, "solver_order": 2, "solver_type": "bh2", "final_sigmas_type": "sigma_min"}

# (name, class, config, loop kwargs): the full loops of tests/schedulers/test_scheduler_{dpm_multi,dpm_single,unipc}.py
UNIT_LOOPS = [
    ("multi_no_noise", M, MULTI_TEST, {}),
    ("multi_thres", M, {**MULTI_TEST, "thresholding": True, "dynamic_thresholding_ratio": 0.87,
                        "sample_max_value": 0.5}, {}),
    ("multi_v_prediction", M, {**MULTI_TEST, "prediction_type": "v_prediction"}, {}),
    ("multi_karras", M, {**MULTI_TEST, "use_karras_sigmas": True}, {}),
    ("multi_lu_lambdas", M, {**MULTI_TEST, "use_lu_lambdas": True}, {}),
    ("single_no_noise", S, SINGLE_TEST, {}),
    ("single_v_prediction", S, {**SINGLE_TEST, "prediction_type": "v_prediction"}, {}),
    ("single_uneven", S, SINGLE_TEST, {"steps": 50, "start": 3}),
    ("unipc_no_noise", U, UNIPC_TEST, {}),
    ("unipc_karras", U, {**UNIPC_TEST, "use_karras_sigmas": True}, {}),
    ("unipc_v_prediction", U, {**UNIPC_TEST, "prediction_type": "v_prediction"}, {}),
    ("unipc_karras_v_prediction", U, {**UNIPC_TEST, "prediction_type": "v_prediction", "use_karras_sigmas": True}, {}),
    ("unipc_with_noise", U, UNIPC_TEST, {"start": 8, "add_noise": True}),
]


def main():
    base_noise = sg.start()
    sdxl_config = sg.load_model_config()
    tensors = {}
    runs_meta = []
    for name, cls_name, options, step_counts in RUNS:
        cls = CLASSES[cls_name]
        for steps in step_counts:
            run = f"{name}_{steps}"
            sched = sg.new_scheduler(cls, sdxl_config, options, steps)
            # Step by index like the Rust API (diffusers' img2img path); without it, a repeated first timestep makes
            # index_for_timestep start at the second occurrence.
            sched.set_begin_index(0)
            arrays, drawn = sg.drive(sched, base_noise, {})
            # scale_model_input is the identity for these classes: every step's input is the previous output.
            scaled = arrays.pop("scaled")
            inputs = np.concatenate([arrays["sample0"][None], arrays["prev"][:-1]])
            assert np.array_equal(scaled, inputs), f"{run}: scale_model_input is not the identity"
            assert np.isfinite(arrays["prev"]).all(), f"{run}: diffusers produced non-finite values"
            sg.add_run(tensors, runs_meta, run, arrays, drawn, options=options, steps=steps, **{"class": cls_name})

    loops = {}
    for name, cls_name, config, kwargs in UNIT_LOOPS:
        result = unit_loop(CLASSES[cls_name], config, **kwargs)
        # Strict JSON: -inf as the text "-Infinity" (which scheduler configs accept).
        config = {k: ("-Infinity" if v == -float("inf") else v) for k, v in config.items()}
        loops[name] = {"class": cls_name, "config": config, **kwargs, **result}

    meta = {
        "stand_in_model": "x * t / (t + 1) + 0.05 (float32), x = scale_model_input(sample, t)",
        "unit_loops": loops,
    }
    sg.write_outputs(__file__, "dpm_family", tensors, runs_meta, meta)
    for name, v in loops.items():
        print(f"  {name}: sum {v['sum']:.4f} mean {v['mean']:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
