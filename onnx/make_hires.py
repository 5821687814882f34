"""Write the hires-fix goldens (data.hires, A1111's "Hires. fix"): diffusers' SDXL text-to-image, the result upscaled,
then diffusers' SDXL img2img at the larger size, composed as sdxlrt runs it.

Goldens (tests/fixtures/goldens/<case>.safetensors), fp32, CPU, 1 thread, no watermark, from the torch tiny model
(build_tiny.py). Base case: goldens.py's cfg_neg (prompt, negative "blurry, low quality", guidance 5.0, seed 0).

  1. StableDiffusionXLPipeline(width, height, steps, generator=goldens.generators(seed, B)), output_type "latent"
     for the latent upscalers (the latents as the UNet sees them: diffusers returns them before the VAE's
     scaling_factor is undone), "pil" for the pixel upscalers (the latents after the last step recorded too).
  2. The upscale to the target (W2, H2):
       latent                 F.interpolate(latents, size=(H2 // 8, W2 // 8), mode="bilinear", align_corners=False,
                              antialias=False)   (A1111's "Latent")
       latent-nearest         mode="nearest"       (A1111's "Latent (nearest)")
       latent-nearest-exact   mode="nearest-exact" (A1111's "Latent (nearest-exact)")
       lanczos                every PIL image .resize((W2, H2), Image.LANCZOS)
       tiny-x2 (a model)      tests/fixtures/upscalers/tiny-x2.onnx run by onnxruntime (make_upscaler.py's network:
                              u8 / 255 in, output clamped, x 255, rounded half to even) until the image is at least
                              the target, then .resize((W2, H2), Image.LANCZOS) when the size differs; torch's
                              network on the same pixels is checked to be within 1/255 (the Rust upscaler is
                              onnxruntime too, so the golden uses its bytes)
  3. StableDiffusionXLImg2ImgPipeline on the same components (requires_aesthetics_score False) with image= the
     upscaled latents ([B,4,h2,w2]: prepare_latents takes 4-channel images as latents, no VAE, no posterior draw) or
     the upscaled PIL images (encoded, one posterior sample per generator), strength, num_inference_steps = the
     hires steps (the first pass's when the case gives none), num_images_per_prompt B, the same prompts, guidance
     and scheduler class, and FRESH generators goldens.generators(seed, B) (A1111's new ImageRNG with the same
     seeds for the hires pass). Its time ids are the target's (H2, W2, 0, 0, H2, W2).

  case                       upscaler              base      target    steps  hires steps  strength  scheduler
  hires_latent               latent                64x64     96x96     4      -            0.7 (default)
  hires_latent_nearest       latent-nearest        64x64     96x96     4      -            0.6
  hires_latent_nearest_exact latent-nearest-exact  64x64     96x96     4      -            0.6
  hires_latent_batch2        latent, batch 2       64x48     128x96    3      5            0.6       Euler a
  hires_latent_size          latent, width/height  64x64     128x96    4      6            0.5       DPM++ 2M (Karras)
  hires_lanczos              lanczos               64x64     96x96     4      -            0.6
  hires_lanczos_batch2       lanczos, batch 2      64x64     96x96     4      4            0.75      Euler a
  hires_model                tiny-x2               64x64     96x96     4      -            0.6

Tensors per case (float32 unless noted; B the batch; h, w and h2, w2 the two passes' latent sizes):
  latents_step_0 .. latents_step_{L-1} [B,4,h,w]         the first pass's latents after every loop iteration
  upscaled_latents [B,4,h2,w2]                           (latent upscalers) the interpolated latents
  first_image_u8 uint8 [B,H,W,3], upscaled_u8 uint8 [B,H2,W2,3]
                                                         (pixel upscalers) the first pass's images and the upscaled
  noise [B,4,h2,w2], noised_latents [B,4,h2,w2]          the second pass's add_noise noise and starting latents
  hires_timesteps [L2]                                   the timesteps the second pass evaluated
  hires_add_time_ids [1,6]                               its time ids (H2, W2, 0, 0, H2, W2)
  hires_latents_step_0 .. [B,4,h2,w2]                    its latents after every loop iteration
  image [B,H2,W2,3], image_u8 uint8                      the second pass's output ("np"; (image * 255).round())

Checks (asserted): the noise is what fresh generators draw (after each one's posterior sample for the pixel
upscalers); the second pass's time ids are the target's; re-seeding matters (the same case continuing the first
pass's generators changes image_u8 by >= 5/255 max) and the upscaler matters (latent: nearest instead of bilinear,
lanczos: bilinear resize instead; >= 2/255 max); both printed.

Metadata (strings): goldens.py's prompt, negative_prompt, guidance_scale, steps, seed, width, height, batch_size;
scheduler (class name, when not Euler) and scheduler_options (JSON); hires (the request's data.hires block, JSON).

Usage: python make_hires.py [--model DIR] [--out tests/fixtures] [--cases hires_latent,...]
"""

from __future__ import annotations

import json
from pathlib import Path

import _common as c
import goldens

BASE_CASE = goldens.CASES["cfg_neg"]
UPSCALER_MODEL = "tiny-x2"
CASES = {
    "hires_latent": dict(BASE_CASE, steps=4, hires=dict(upscaler="latent", scale=1.5)),
    "hires_latent_nearest": dict(BASE_CASE, steps=4, hires=dict(upscaler="latent-nearest", scale=1.5, strength=0.6)),
    "hires_latent_nearest_exact": dict(
        BASE_CASE, steps=4, hires=dict(upscaler="latent-nearest-exact", scale=1.5, strength=0.6)
    ),
    "hires_latent_batch2": dict(
        BASE_CASE,
        steps=3,
        width=64,
        height=48,
        batch_size=2,
        scheduler="EulerAncestralDiscreteScheduler",
        hires=dict(upscaler="latent", scale=2, steps=5, strength=0.6),
    ),
    "hires_latent_size": dict(
        BASE_CASE,
        steps=4,
        scheduler="DPMSolverMultistepScheduler",
        scheduler_options=dict(use_karras_sigmas=True),
        hires=dict(upscaler="latent", width=128, height=96, steps=6, strength=0.5),
    ),
    "hires_lanczos": dict(BASE_CASE, steps=4, hires=dict(upscaler="lanczos", scale=1.5, strength=0.6)),
    "hires_lanczos_batch2": dict(
        BASE_CASE,
        steps=4,
        batch_size=2,
        scheduler="EulerAncestralDiscreteScheduler",
        hires=dict(upscaler="lanczos", scale=1.5, steps=4, strength=0.75),
    ),
    "hires_model": dict(BASE_CASE, steps=4, hires=dict(upscaler=UPSCALER_MODEL, scale=1.5, strength=0.6)),
}
LATENT_MODES = {"latent": "bilinear", "latent-nearest": "nearest", "latent-nearest-exact": "nearest-exact"}
DEFAULT_STRENGTH = 0.7


def case_params(name: str) -> dict:
    return {"width": 64, "height": 64, "batch_size": 1, **CASES[name]}


def target_size(p: dict) -> tuple[int, int]:
    """(W2, H2): int(side x scale) rounded down to a multiple of 8, or the explicit width / height."""
    h = p["hires"]
    if "scale" in h:
        return int(p["width"] * h["scale"]) // 8 * 8, int(p["height"] * h["scale"]) // 8 * 8
    return h["width"], h["height"]


def onnx_upscale(folder: Path, image, size: tuple[int, int]):
    """A1111's upscale with a model as sdxlrt runs it: passes of the ONNX upscaler (u8 / 255 in, clamped, x 255,
    rounded half to even) until the image is at least `size`, then PIL's Lanczos to `size` when it differs.
    Returns the PIL image and the passes run."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from PIL import Image

    import make_upscaler

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(folder / "upscalers" / f"{UPSCALER_MODEL}.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    net = make_upscaler.build_network()
    u8 = np.asarray(image)
    passes = 0
    while u8.shape[1] < size[0] or u8.shape[0] < size[1]:
        x = (u8.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        new = np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)[0].transpose(1, 2, 0)
        theirs, _ = make_upscaler.upscale_u8(net, torch.from_numpy(u8.copy()))
        worst = int(np.abs(theirs.numpy().astype(int) - new.astype(int)).max())
        assert worst <= 1, worst
        u8 = np.ascontiguousarray(new)
        passes += 1
    img = Image.fromarray(u8, "RGB")
    if img.size != size:
        img = img.resize(size, Image.LANCZOS)
    return img, passes


def run_case(
    base,
    i2i,
    folder: Path,
    name: str,
    reseed: bool = True,
    wrong_upscale: bool = False,
    cases: dict | None = None,
    first_kwargs: dict | None = None,
    second_kwargs: dict | None = None,
) -> tuple[dict, dict]:
    """Run case `name` (of `cases`, default CASES); `reseed` False continues the first pass's generators (the "is
    re-seeding seen" check), `wrong_upscale` swaps the upscale for another (nearest for bilinear; bilinear for
    Lanczos). `first_kwargs` / `second_kwargs`: further arguments of the two pipeline calls (make_hires_controlnet.py's
    ControlNet units)."""
    import diffusers
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    p = {"width": 64, "height": 64, "batch_size": 1, **(CASES if cases is None else cases)[name]}
    h = p["hires"]
    B, H, W = p["batch_size"], p["height"], p["width"]
    W2, H2 = target_size(p)
    steps2 = h.get("steps") or p["steps"]
    strength = h.get("strength", DEFAULT_STRENGTH)
    latent_mode = LATENT_MODES.get(h["upscaler"])
    t: dict = {}

    def scheduler():
        cls = getattr(diffusers, p.get("scheduler", "EulerDiscreteScheduler"))
        return cls.from_config(base.scheduler.config, **p.get("scheduler_options", {}))

    def recorder(prefix):
        steps = []

        def on_step_end(_pipe, i, _t, kwargs):
            assert i == len(steps)
            t[f"{prefix}latents_step_{i}"] = kwargs["latents"].clone()
            steps.append(i)
            return kwargs

        return on_step_end

    common = dict(
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        guidance_scale=p["guidance_scale"],
        num_images_per_prompt=B,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    gens = goldens.generators(p["seed"], B)
    saved = base.scheduler
    base.scheduler = scheduler()
    try:
        with torch.no_grad():
            out = base(
                **common,
                width=W,
                height=H,
                num_inference_steps=p["steps"],
                generator=gens,
                output_type="latent" if latent_mode else "pil",
                callback_on_step_end=recorder(""),
                **(first_kwargs or {}),
            ).images
    finally:
        base.scheduler = saved
    if latent_mode:
        mode = "nearest" if wrong_upscale else latent_mode
        extra = {} if mode.startswith("nearest") else dict(align_corners=False)
        image = F.interpolate(out, size=(H2 // 8, W2 // 8), mode=mode, antialias=False, **extra)
        t["upscaled_latents"] = image.clone()
    else:
        t["first_image_u8"] = torch.from_numpy(np.stack([np.asarray(im) for im in out]))
        if h["upscaler"] == "lanczos":
            resample = Image.BILINEAR if wrong_upscale else Image.LANCZOS
            ups = [im.resize((W2, H2), resample) for im in out]
        else:
            ups = [onnx_upscale(folder, im, (W2, H2))[0] for im in out]
        t["upscaled_u8"] = torch.from_numpy(np.stack([np.asarray(im) for im in ups]))
        image = ups if B > 1 else ups[0]

    gens2 = goldens.generators(p["seed"], B) if reseed else gens
    i2i.scheduler = scheduler()
    added, unet = [], []
    sched = i2i.scheduler
    orig_add = sched.add_noise

    def add_noise(original, noise, timesteps):
        res = orig_add(original, noise, timesteps)
        added.append(dict(noise=noise.clone(), noised=res.clone()))
        return res

    def record_unet(_mod, args, kwargs):
        unet.append({"timestep": float(args[1]), "time_ids": kwargs["added_cond_kwargs"]["time_ids"]})

    sched.add_noise = add_noise
    hook = i2i.unet.register_forward_pre_hook(record_unet, with_kwargs=True)
    try:
        with torch.no_grad():
            final = i2i(
                **common,
                image=image,
                strength=strength,
                num_inference_steps=steps2,
                generator=gens2,
                output_type="np",
                callback_on_step_end=recorder("hires_"),
                **(second_kwargs or {}),
            ).images
    finally:
        hook.remove()
        i2i.scheduler = saved
    assert len(added) == 1
    t["noise"], t["noised_latents"] = added[0]["noise"], added[0]["noised"]
    t["hires_timesteps"] = torch.tensor([u["timestep"] for u in unet], dtype=torch.float32)
    tid = unet[0]["time_ids"]
    assert bool((tid == tid[:1]).all()) and tid[0].tolist() == [H2, W2, 0, 0, H2, W2], tid[0].tolist()
    t["hires_add_time_ids"] = tid[:1].clone()
    assert t["noise"].shape == (B, 4, H2 // 8, W2 // 8), t["noise"].shape
    if reseed:
        # the second pass's draws, from fresh generators: per generator its posterior sample (pixel upscalers), then
        # add_noise's noise
        fresh = goldens.generators(p["seed"], B)
        for i, g in enumerate(fresh if isinstance(fresh, list) else [fresh]):
            n = 1 if isinstance(fresh, list) else B
            if not latent_mode:
                randn_tensor((n, 4, H2 // 8, W2 // 8), generator=g)
            assert torch.equal(randn_tensor((n, 4, H2 // 8, W2 // 8), generator=g), t["noise"][i : i + n])
    t["image"] = torch.from_numpy(np.ascontiguousarray(final, dtype=np.float32))
    t["image_u8"] = torch.from_numpy((final * 255).round().astype("uint8"))
    meta = dict(
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        guidance_scale=repr(float(p["guidance_scale"])),
        steps=str(p["steps"]),
        seed=str(p["seed"]),
        width=str(W),
        height=str(H),
        batch_size=str(B),
        hires=json.dumps(h, sort_keys=True),
    )
    if "scheduler" in p:
        meta["scheduler"] = p["scheduler"]
    if "scheduler_options" in p:
        meta["scheduler_options"] = json.dumps(p["scheduler_options"], sort_keys=True)
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def main() -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    args, cases = c.fixtures_args(__doc__, CASES)
    base = c.load_pipeline(args.model)
    i2i = c.pipeline_from_base(base, StableDiffusionXLImg2ImgPipeline, requires_aesthetics_score=False)
    for name in cases:
        tensors, meta = run_case(base, i2i, args.out, name)
        shown = sorted(k for k in tensors if "latents_step_" not in k)
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        print(f"  {name}: hires timesteps {tensors['hires_timesteps'].tolist()}", flush=True)
        checks = (("not re-seeded", dict(reseed=False), 5), ("another upscale", dict(wrong_upscale=True), 2))
        for label, kwargs, bar in checks:
            if "wrong_upscale" in kwargs and CASES[name]["hires"]["upscaler"] not in ("latent", "lanczos"):
                continue
            other, _ = run_case(base, i2i, args.out, name, **kwargs)
            d = (tensors["image_u8"].int() - other["image_u8"].int()).abs()
            lat = float((tensors["noised_latents"] - other["noised_latents"]).abs().max())
            print(f"  {name}: {label}: image max {int(d.max())}/255, mean {float(d.float().mean()):.2f}/255; "
                  f"noised latents max |diff| {lat:.3g}", flush=True)
            assert int(d.max()) >= bar, (name, label, int(d.max()))
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
