"""Write diffusers goldens for `guidance_rescale` (the request's data.hyperparameters.guidance_rescale): diffusers'
`rescale_noise_cfg`, the guided noise prediction pulled toward the conditional prediction's standard deviation per
image, at every UNet evaluation.

Goldens (tests/fixtures/goldens/<case>.safetensors), fp32, CPU, 1 thread, on the torch tiny model (build_tiny.py) and
make_stages.py's tiny refiner; goldens.py's cfg_neg prompts, guidance 5.0 and seed 0, 64x64; every call gets
guidance_rescale=0.7:

  guidance_rescale           StableDiffusionXLPipeline, Euler, 5 steps
  guidance_rescale_batch2    StableDiffusionXLPipeline, DPMSolverMultistepScheduler, 5 steps, batch 2 (seeds 0, 1;
                             the standard deviations are per image)
  guidance_rescale_heun      StableDiffusionXLPipeline, HeunDiscreteScheduler, 4 steps (7 evaluations, each rescaled)
  guidance_rescale_img2img   StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score False) on
                             img2img/init_64.png, Euler, 5 steps, strength 0.6
  guidance_rescale_inpaint   StableDiffusionXLInpaintPipeline (make_inpaint.py's) on img2img/init_64.png and
                             inpaint/mask_64.png, Euler, 5 steps, strength 0.8
  guidance_rescale_refiner   make_stages.py's ensemble of experts (10 steps, base denoising_end 0.8, refiner
                             denoising_start 0.8), guidance_rescale given to both calls

Tensors: latents_step_<i> (every loop iteration; base then refiner), image, image_u8, and for the refiner case
make_stages.py's refiner tensors. Metadata: goldens.py's keys (img2img's init_image and strength, make_inpaint.py's
mask_image, the refiner's keys) and guidance_rescale ("0.7").

Checks (asserted): each case's last latents differ from the same request's without guidance_rescale by max >= 0.01,
100 x the tests' latent tolerance (so a request that ignores it fails the Rust tests; on the tiny model's random
weights the conditional and guided predictions have similar spreads, so the images move by only 4-6/255).

Usage: python make_guidance_rescale.py [--model DIR] [--out tests/fixtures] [--cases guidance_rescale,...]
"""

from __future__ import annotations

import _common as c
import goldens
import make_img2img as i2i
import make_inpaint as inp
import make_stages as stages

PHI = 0.7
BASE = dict(goldens.CASES["cfg_neg"], width=64, height=64, batch_size=1)
CASES = {
    "guidance_rescale": dict(BASE, steps=5),
    "guidance_rescale_batch2": dict(BASE, steps=5, batch_size=2, scheduler="DPMSolverMultistepScheduler"),
    "guidance_rescale_heun": dict(BASE, steps=4, scheduler="HeunDiscreteScheduler"),
    "guidance_rescale_img2img": dict(BASE, steps=5, init_image="init_64.png", strength=0.6),
    "guidance_rescale_inpaint": dict(
        BASE, steps=5, init_image="init_64.png", mask_image="mask_64.png", strength=0.8
    ),
    "guidance_rescale_refiner": dict(BASE, steps=10, refiner="tiny-sdxl-refiner"),
}


def run(pipes: dict, folder, name: str, phi: float) -> tuple[dict, dict]:
    """Case `name` with guidance_rescale=`phi`; returns (tensors, metadata)."""
    p = CASES[name]
    kwargs = dict(guidance_rescale=phi)
    if "mask_image" in p:
        image = inp.cn.load_image(folder / "img2img" / p["init_image"])
        mask = inp.load_mask(folder / "inpaint" / p["mask_image"])
        t = i2i.call_pipeline(pipes["inpaint"], p, inp.call_args(p, image, mask, **kwargs))
        meta = dict(i2i.case_meta(p), mask_image=p["mask_image"])
    else:
        t, meta = i2i.call_case(pipes, folder, p, kwargs)
    meta["guidance_rescale"] = repr(PHI)
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def main() -> None:
    args, cases = c.fixtures_args(__doc__, CASES)
    base = c.load_pipeline(args.model)
    pipes = {
        "base": base,
        "img2img": i2i.img2img_pipeline(base),
        "inpaint": inp.inpaint_pipeline(base),
        "refiner": stages.build_refiner(base),
    }
    for name in cases:
        tensors, meta = run(pipes, args.out, name, PHI)
        plain, _ = run(pipes, args.out, name, 0.0)
        mean, worst, lat = i2i.difference(tensors, plain)
        n = sum(k.startswith("latents_step_") for k in tensors)
        print(
            f"{name}: {n} evaluations; |image_u8 - without guidance_rescale|: mean {mean:.1f}/255, max"
            f" {worst:.0f}/255; last latents max |diff| {lat:.3f}",
            flush=True,
        )
        assert lat >= 0.01, (name, lat)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
