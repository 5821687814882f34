"""Write the live-preview goldens (data.output.preview): diffusers' StableDiffusionXLPipeline on the tiny model with
every step's latents, the scheduler's x0 estimate, and the previews sdxlrt must produce from them.

Goldens (tests/fixtures/goldens/<case>.safetensors), fp32, CPU, 1 thread, no watermark, from the torch tiny model
(build_tiny.py). Base case: goldens.py's cfg_neg (prompt, negative "blurry, low quality", guidance 5.0, seed 0),
64x64 (latents 8x8), 4 steps, the base model's scheduler config with the case's class:

  case              scheduler                        batch  x0 taken from
  preview_euler     EulerDiscreteScheduler           1      step(...).pred_original_sample
  preview_euler_a   EulerAncestralDiscreteScheduler  1      step(...).pred_original_sample
  preview_ddim      DDIMScheduler                    1      step(...).pred_original_sample
  preview_dpmpp_2m  DPMSolverMultistepScheduler      1      convert_model_output(...) (dpmsolver++: the data
                                                            prediction; diffusers' step output has no x0)
  preview_unipc     UniPCMultistepScheduler          1      convert_model_output(...) (predict_x0: the same)
  preview_heun      HeunDiscreteScheduler            1      step(...).pred_original_sample of the evaluation that
                                                            completes the step (corrector; the last step's lone
                                                            first-order evaluation)
  preview_batch2    EulerDiscreteScheduler           2      step(...).pred_original_sample

Reports: sdxlrt reports denoising step s (1-based) after the evaluation where diffusers' progress bar ticks
(`i == len(timesteps) - 1 or (i + 1) % scheduler.order == 0`; one evaluation per step except for Heun).

Tensors per case (B the batch, h = w = 8; s = 1..steps):
  report_evals int64 [steps]                 the evaluation index after which step s is reported
  latents_{s} [B,4,h,w]                      the latents after that evaluation (callback_on_step_end's "latents")
  denoised_{s} [B,4,h,w]                     the x0 estimate of that evaluation (see the table)
  l2r_denoised_{s}, l2r_noisy_{s} uint8 [B,h,w,3]
                                             ComfyUI's SDXL latent2rgb of denoised_{s} / latents_{s} in numpy
                                             float32: v = latent^T . latent_rgb_factors + latent_rgb_factors_bias,
                                             uint8(clip((v + 1) / 2, 0, 1) * 255) truncated (comfy/latent_formats.py
                                             class SDXL, latent_preview.py's Latent2RGBPreviewer and
                                             preview_to_image)
  vae_denoised_{s}, vae_noisy_{s} uint8 [B,64,64,3]
                                             (preview_euler only) vae.decode(x / scaling_factor) then
                                             VaeImageProcessor.postprocess(output_type="np"), (x * 255).round()
  image_u8 uint8 [B,64,64,3]                 the pipeline's output

Checks (asserted): the last step's vae_noisy equals image_u8 (the preview of the last step is the image); the
first step's x0 differs from its latents by > 0.05 (so a "noisy instead of denoised" bug shows); every step's gap
is printed.

Metadata (strings): prompt, negative_prompt, guidance_scale, steps, seed, width, height, batch_size, scheduler.

Usage: python make_preview.py [--model DIR] [--out tests/fixtures] [--cases preview_euler,...]
"""

from __future__ import annotations

import functools
from pathlib import Path

import _common as c
import goldens
import make_img2img as i2i

BASE_CASE = dict(goldens.CASES["cfg_neg"], steps=4)
CASES = {
    "preview_euler": dict(BASE_CASE, scheduler="EulerDiscreteScheduler", vae=True),
    "preview_euler_a": dict(BASE_CASE, scheduler="EulerAncestralDiscreteScheduler"),
    "preview_ddim": dict(BASE_CASE, scheduler="DDIMScheduler"),
    "preview_dpmpp_2m": dict(BASE_CASE, scheduler="DPMSolverMultistepScheduler"),
    "preview_unipc": dict(BASE_CASE, scheduler="UniPCMultistepScheduler"),
    "preview_heun": dict(BASE_CASE, scheduler="HeunDiscreteScheduler"),
    "preview_batch2": dict(BASE_CASE, scheduler="EulerDiscreteScheduler", batch_size=2),
}
# comfy/latent_formats.py, class SDXL.
LATENT_RGB_FACTORS = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
LATENT_RGB_BIAS = [0.1084, -0.0175, -0.0011]
CONVERTING = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


def latent2rgb(latents):
    """[B,4,h,w] float32 -> uint8 [B,h,w,3], ComfyUI's formula in numpy float32."""
    import numpy as np

    f = np.asarray(LATENT_RGB_FACTORS, dtype=np.float32)
    b = np.asarray(LATENT_RGB_BIAS, dtype=np.float32)
    x = latents.numpy().astype(np.float32)
    v = np.einsum("bchw,ck->bhwk", x, f).astype(np.float32) + b
    return (np.clip((v + np.float32(1.0)) / np.float32(2.0), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def vae_u8(pipe, latents):
    """diffusers' decode of `latents` as the pipeline's final decode runs it, as uint8 [B,H,W,3]."""
    import numpy as np
    import torch

    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="np")
    return (image * 255).round().astype(np.uint8)


def run_case(pipe, name: str) -> tuple[dict, dict]:
    import diffusers
    import numpy as np
    import torch

    p = {"width": 64, "height": 64, "batch_size": 1, **CASES[name]}
    B = p["batch_size"]
    saved = pipe.scheduler
    sched = getattr(diffusers, p["scheduler"]).from_config(saved.config)
    pipe.scheduler = sched
    evals: list[dict] = []
    converted: list = []
    orig_step = sched.step
    if p["scheduler"] in CONVERTING:
        orig_convert = sched.convert_model_output

        def convert(*args, **kwargs):
            out = orig_convert(*args, **kwargs)
            converted.append(out.clone())
            return out

        sched.convert_model_output = convert

    # functools.wraps keeps step's signature visible: the pipeline passes `generator` (and `eta`) only to a step
    # whose signature has them, and Euler a without its generator would draw from torch's global RNG.
    @functools.wraps(orig_step)
    def step(*args, return_dict=True, **kwargs):
        out = orig_step(*args, return_dict=True, **kwargs)
        x0 = converted[-1] if p["scheduler"] in CONVERTING else out.pred_original_sample
        evals.append({"x0": x0.clone()})
        return out if return_dict else (out.prev_sample,)

    sched.step = step

    def on_step_end(_pipe, i, _t, kwargs):
        assert i == len(evals) - 1
        evals[i]["latents"] = kwargs["latents"].clone()
        return kwargs

    try:
        with torch.no_grad():
            image = pipe(
                prompt=p["prompt"],
                negative_prompt=p["negative_prompt"],
                guidance_scale=p["guidance_scale"],
                num_images_per_prompt=B,
                width=p["width"],
                height=p["height"],
                num_inference_steps=p["steps"],
                generator=goldens.generators(p["seed"], B),
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            ).images
    finally:
        pipe.scheduler = saved
    n = len(evals)
    ticks = [i for i in range(n) if i == n - 1 or (i + 1) % sched.order == 0]
    assert len(ticks) == p["steps"], (ticks, p["steps"])
    t: dict = {"report_evals": torch.tensor(ticks, dtype=torch.int64)}
    for s, i in enumerate(ticks, start=1):
        lat, x0 = evals[i]["latents"], evals[i]["x0"]
        gap = float((lat - x0).abs().max())
        print(f"  {name}: step {s}: max |latents - denoised| {gap:.3g}", flush=True)
        if s == 1:
            assert gap > 0.05, (name, gap)
        t[f"latents_{s}"], t[f"denoised_{s}"] = lat, x0
        t[f"l2r_noisy_{s}"] = torch.from_numpy(latent2rgb(lat))
        t[f"l2r_denoised_{s}"] = torch.from_numpy(latent2rgb(x0))
        if p.get("vae"):
            t[f"vae_noisy_{s}"] = torch.from_numpy(vae_u8(pipe, lat))
            t[f"vae_denoised_{s}"] = torch.from_numpy(vae_u8(pipe, x0))
    t["image_u8"] = torch.from_numpy((image * 255).round().astype(np.uint8))
    if p.get("vae"):
        assert torch.equal(t[f"vae_noisy_{p['steps']}"], t["image_u8"]), name
    meta = i2i.case_meta(p)
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def main() -> None:
    args, cases = c.fixtures_args(__doc__, CASES)
    pipe = c.load_pipeline(args.model)
    for name in cases:
        tensors, meta = run_case(pipe, name)
        print(f"{name}: report evals {tensors['report_evals'].tolist()}", flush=True)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
