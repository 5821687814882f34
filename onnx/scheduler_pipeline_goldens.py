"""Full-pipeline diffusers goldens per scheduler, on the tiny SDXL model.

`write` mode (default) runs diffusers' StableDiffusionXLPipeline (fp32, CPU, 1 thread, no watermark) on the torch
tiny model (build_tiny.py) with the pipeline's scheduler replaced by `<Class>.from_config(pipe.scheduler.config,
**options)`, for the cases in SCHEDULER_CASES, and writes tests/fixtures/goldens/sched_<short>.safetensors.

Every case: prompt "a photograph of an astronaut riding a horse", negative "blurry, low quality", guidance 5,
5 steps, seed 7, 64x64, batch 1, generator=torch.Generator("cpu").manual_seed(7). The pipeline passes that generator
to `scheduler.step`, so the stochastic schedulers (Euler a, KDPM2 a, SDE-DPM++) draw their step noise from it after
the initial latents.

Tensors per file:
  init_noise [1,4,8,8] float32         raw torch.randn output (the generator's first draw), before * init_noise_sigma
  timesteps [L] float32                scheduler.timesteps after set_timesteps, as float32 (the UNet's input dtype);
                                       L = 2*steps-1 for Heun/KDPM2/KDPM2 a, else steps
  sigmas [S] (the scheduler's dtype)   scheduler.sigmas, only for schedulers that have them (not DDIM)
  latents_step_0 .. latents_step_{L-1} [1,4,8,8] float32
                                       latents after every pipeline loop iteration (callback_on_step_end), i.e.
                                       one per UNet evaluation (two per step, minus one, for the 2nd-order ones)
  image_u8 uint8 [1,64,64,3]           (image * 255).round() of the output_type "np" image, as numpy_to_pil
Metadata (strings): prompt, negative_prompt, guidance_scale, steps (requested steps), seed, width, height,
batch_size (the keys of goldens.py), scheduler (class name), scheduler_options (JSON of the from_config overrides,
sorted keys), loop_iterations (L, the number of latents_step_* tensors).

`--verify DIR [DIR ...]` runs a plain onnxruntime loop (optimum-layout ONNX folder; the same diffusers scheduler does
the scheduler math, fed the golden generator sequence) and prints max |ORT - golden| over all latents and the image.

Usage: python scheduler_pipeline_goldens.py [--model DIR] [--out DIR] [--cases dpmpp_2m,...]
       python scheduler_pipeline_goldens.py --verify tests/fixtures/tiny-sdxl [--cases ...]
"""

from __future__ import annotations

import json
from pathlib import Path

import _common as c

PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
GUIDANCE = 5.0
STEPS = 5
SEED = 7
WIDTH = HEIGHT = 64
BATCH = 1

# short name -> (diffusers class name, from_config overrides)
SCHEDULER_CASES: dict[str, tuple[str, dict]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "ddim": ("DDIMScheduler", {}),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_single": ("DPMSolverSinglestepScheduler", {}),
    "kdpm2": ("KDPM2DiscreteScheduler", {}),
    "kdpm2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def options_json(options: dict) -> str:
    return json.dumps(options, sort_keys=True)


def make_scheduler(config, name: str):
    import diffusers.schedulers as schedulers

    cls_name, options = SCHEDULER_CASES[name]
    return getattr(schedulers, cls_name).from_config(config, **options)


def run_case(pipe, base_config, name: str) -> tuple[dict, dict]:
    """Run one scheduler case through diffusers; return (tensors, metadata)."""
    import numpy as np
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    cls_name, options = SCHEDULER_CASES[name]
    pipe.scheduler = make_scheduler(base_config, name)
    assert type(pipe.scheduler).__name__ == cls_name
    t: dict[str, torch.Tensor] = {}

    shape = (BATCH, 4, HEIGHT // pipe.vae_scale_factor, WIDTH // pipe.vae_scale_factor)
    t["init_noise"] = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(SEED), dtype=torch.float32)

    unet_timesteps: list[float] = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: unet_timesteps.append(float(args[1] if len(args) > 1 else kwargs["timestep"])),
        with_kwargs=True,
    )
    try:
        image, steps = c.run_pipeline(
            pipe,
            t["init_noise"],
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            guidance_scale=GUIDANCE,
            num_inference_steps=STEPS,
            width=WIDTH,
            height=HEIGHT,
            num_images_per_prompt=BATCH,
            generator=torch.Generator("cpu").manual_seed(SEED),
        )
    finally:
        hook.remove()
    sched = pipe.scheduler

    t["timesteps"] = sched.timesteps.to(torch.float32).clone()
    if hasattr(sched, "sigmas"):
        t["sigmas"] = sched.sigmas.clone()
    # the UNet ran once per loop iteration (CFG batches both halves), at exactly these timesteps
    assert unet_timesteps == [float(x) for x in t["timesteps"]], (unet_timesteps, t["timesteps"])
    n_loop = len(sched.timesteps)
    assert len(steps) == n_loop == (2 * STEPS - 1 if sched.order == 2 else STEPS), (name, len(steps), sched.order)
    for i, lat in enumerate(steps):
        t[f"latents_step_{i}"] = lat
    t["image_u8"] = torch.from_numpy((image * 255).round().astype(np.uint8))

    meta = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "guidance_scale": repr(float(GUIDANCE)),
        "steps": str(STEPS),
        "seed": str(SEED),
        "width": str(WIDTH),
        "height": str(HEIGHT),
        "batch_size": str(BATCH),
        "scheduler": cls_name,
        "scheduler_options": options_json(options),
        "loop_iterations": str(n_loop),
    }
    tensors = {k: v.detach().contiguous() for k, v in t.items()}
    return tensors, meta


def write_goldens(model: Path, out: Path, cases: list[str]) -> None:
    pipe = c.load_pipeline(model)
    base_config = pipe.scheduler.config
    out.mkdir(parents=True, exist_ok=True)
    for name in cases:
        tensors, meta = run_case(pipe, base_config, name)
        path = out / f"sched_{name}.safetensors"
        c.write_golden(path, tensors, meta)
        sig = tensors.get("sigmas")
        print(
            f"sched_{name}: {meta['scheduler']} {meta['scheduler_options']} loop_iterations={meta['loop_iterations']}"
            f" sigmas={'-' if sig is None else f'{sig.dtype}{list(sig.shape)}'} {path.stat().st_size} bytes",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------------------------
# plain onnxruntime loop, any scheduler (StableDiffusionXLPipeline.__call__ for text-to-image, as goldens.OrtSdxl)


def verify(folders: list[Path], goldens: Path, cases: list[str]) -> dict:
    import inspect

    import numpy as np
    import torch
    from diffusers.utils.torch_utils import randn_tensor
    from safetensors.numpy import load_file

    from goldens import OrtSdxl

    report = {}
    for folder in folders:
        ort_pipe = OrtSdxl(folder)
        base_config = ort_pipe.sched.config
        p = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, width=WIDTH, height=HEIGHT)
        _, (ehs, te, tid) = ort_pipe.condition(p, BATCH)
        for name in cases:
            g = load_file(str(goldens / f"sched_{name}.safetensors"))
            sched = make_scheduler(base_config, name)
            sched.set_timesteps(STEPS)
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(0)
            gen = torch.Generator("cpu").manual_seed(SEED)
            noise = randn_tensor(g["init_noise"].shape, generator=gen, dtype=torch.float32)
            step_kw = {"generator": gen} if "generator" in inspect.signature(sched.step).parameters else {}
            diffs = {"init_noise": float(np.abs(noise.numpy() - g["init_noise"]).max())}
            diffs["timesteps"] = float(np.abs(sched.timesteps.numpy().astype(np.float32) - g["timesteps"]).max())
            if "sigmas" in g:
                diffs["sigmas"] = float(np.abs(sched.sigmas.numpy() - g["sigmas"]).max())
            latents = noise * sched.init_noise_sigma
            lat_diff = 0.0
            for i, t in enumerate(sched.timesteps):
                x = sched.scale_model_input(torch.cat([latents] * 2), t)
                e_u, e_c = ort_pipe.unet(x, t, ehs, te, tid).chunk(2)
                eps = e_u + GUIDANCE * (e_c - e_u)
                latents = sched.step(eps, t, latents, **step_kw, return_dict=False)[0]
                lat_diff = max(lat_diff, float(np.abs(latents.numpy() - g[f"latents_step_{i}"]).max()))
            assert i + 1 == sum(1 for k in g if k.startswith("latents_step_"))
            _, img_u8 = ort_pipe.decode(latents)
            diffs["latents"] = lat_diff
            diffs["image_u8"] = int(np.abs(img_u8.astype(np.int32) - g["image_u8"].astype(np.int32)).max())
            c.report_diffs(report, folder, name, diffs, 20)
    return report


def main() -> None:
    c.goldens_main(__doc__, list(SCHEDULER_CASES), write_goldens, verify)


if __name__ == "__main__":
    main()
