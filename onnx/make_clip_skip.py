"""Write diffusers goldens for `clip_skip` (the request's data.hyperparameters.clip_skip): both text encoders'
hidden states taken from layer -(clip_skip + 2) instead of SDXL's penultimate one, for the prompt AND the negative
prompt.

diffusers 0.42.1's SDXL `encode_prompt` applies `clip_skip` to the prompt only; its negative prompt keeps
`hidden_states[-2]`, so guidance subtracts embeddings of two different layers (the defect diffusers PRs #13796 and
#13973 describe). sdxlrt skips the same layers on both halves, as ComfyUI's CLIPSetLastLayer does; these goldens run
diffusers' pipelines with `encode_prompt` wrapped (`both_halves`) so that the negative prompt is encoded through
diffusers' own positive path with the same `clip_skip` (the fix those PRs make). The pooled embeddings (the last
layer's projection) are unchanged, which the wrapper asserts.

Goldens (tests/fixtures/goldens/<case>.safetensors), fp32, CPU, 1 thread, on the torch tiny model (build_tiny.py,
5 layers per encoder: clip_skip 0-4) and make_stages.py's tiny refiner; goldens.py's cfg_neg prompts, guidance 5.0,
seed 0, 64x64, Euler:

  clip_skip              StableDiffusionXLPipeline, 5 steps, clip_skip 1
  clip_skip_3_batch2     StableDiffusionXLPipeline, 4 steps, clip_skip 3, batch 2 (seeds 0, 1)
  clip_skip_img2img      StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score False) on img2img/init_64.png,
                         5 steps, strength 0.6, clip_skip 2
  clip_skip_refiner      make_stages.py's ensemble of experts (10 steps, base denoising_end 0.8, refiner
                         denoising_start 0.8), clip_skip 1 given to both calls (the refiner's one encoder skips too)

Tensors: latents_step_<i>, image, image_u8 (and the refiner case's make_stages.py tensors). Metadata: goldens.py's
keys (img2img's init_image and strength, the refiner's keys) and clip_skip.

Checks (asserted): each case's last latents differ by max >= 0.01 (100 x the tests' latent tolerance) both from the
same request without clip_skip and from diffusers' unwrapped pipeline (negative prompt at the penultimate layer), so
a request that ignores clip_skip, or applies it to the prompt only, fails the Rust tests.

Usage: python make_clip_skip.py [--model DIR] [--out tests/fixtures] [--cases clip_skip,...]
"""

from __future__ import annotations

import contextlib

import _common as c
import goldens
import make_img2img as i2i
import make_stages as stages

BASE = dict(goldens.CASES["cfg_neg"], width=64, height=64, batch_size=1)
CASES = {
    "clip_skip": dict(BASE, steps=5, clip_skip=1),
    "clip_skip_3_batch2": dict(BASE, steps=4, clip_skip=3, batch_size=2),
    "clip_skip_img2img": dict(BASE, steps=5, clip_skip=2, init_image="init_64.png", strength=0.6),
    "clip_skip_refiner": dict(BASE, steps=10, clip_skip=1, refiner="tiny-sdxl-refiner"),
}


@contextlib.contextmanager
def both_halves(pipes: list):
    """Wrap each pipeline's `encode_prompt` so that, with `clip_skip` and guidance, the negative prompt is encoded
    through the positive path with the same `clip_skip` (instead of diffusers' `hidden_states[-2]`)."""
    import torch

    saved = [p.encode_prompt for p in pipes]

    def wrap(original):
        def encode_prompt(**kw):
            embeds, negative, pooled, negative_pooled = original(**kw)
            if kw.get("clip_skip") is None or not kw.get("do_classifier_free_guidance") or negative is None:
                return embeds, negative, pooled, negative_pooled
            text = kw.get("negative_prompt") or ""
            again, _, again_pooled, _ = original(
                prompt=text,
                prompt_2=kw.get("negative_prompt_2") or text,
                device=kw.get("device"),
                num_images_per_prompt=kw["num_images_per_prompt"],
                do_classifier_free_guidance=False,
                clip_skip=kw["clip_skip"],
            )
            assert torch.equal(again_pooled, negative_pooled), "the pooled embedding depends on clip_skip"
            return embeds, again, pooled, negative_pooled

        return encode_prompt

    for p in pipes:
        p.encode_prompt = wrap(p.encode_prompt)
    try:
        yield
    finally:
        for p, original in zip(pipes, saved):
            p.encode_prompt = original


def run(pipes: dict, folder, name: str, skip: int | None, fixed: bool = True) -> tuple[dict, dict]:
    """Case `name` with clip_skip=`skip` (None: left out), the negative prompt skipped too when `fixed`."""
    p = dict(CASES[name])
    kwargs = dict(clip_skip=skip)
    wrapped = [pipes["base"], pipes["img2img"], pipes["refiner"]] if fixed else []
    with both_halves(wrapped):
        t, meta = i2i.call_case(pipes, folder, p, kwargs)
    meta["clip_skip"] = str(CASES[name]["clip_skip"])
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def main() -> None:
    args, cases = c.fixtures_args(__doc__, CASES)
    base = c.load_pipeline(args.model)
    pipes = {"base": base, "img2img": i2i.img2img_pipeline(base), "refiner": stages.build_refiner(base)}
    for name in cases:
        tensors, meta = run(pipes, args.out, name, CASES[name]["clip_skip"])
        plain, _ = run(pipes, args.out, name, None)
        one_sided, _ = run(pipes, args.out, name, CASES[name]["clip_skip"], fixed=False)
        mean, worst, lat = i2i.difference(tensors, plain)
        _, worst_one, lat_one = i2i.difference(tensors, one_sided)
        n = sum(k.startswith("latents_step_") for k in tensors)
        print(
            f"{name}: {n} evaluations; |image_u8 - without clip_skip|: mean {mean:.1f}/255, max {worst:.0f}/255,"
            f" last latents {lat:.3f}; - diffusers' prompt-only skip: max {worst_one:.0f}/255, latents {lat_one:.3f}",
            flush=True,
        )
        assert lat >= 0.01 and lat_one >= 0.01, (name, lat, lat_one)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
