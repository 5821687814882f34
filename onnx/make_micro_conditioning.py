"""Write diffusers goldens for SDXL's size micro-conditioning: `original_size`, `crops_coords_top_left` and
`target_size` (the request's data.dimensions.original_size / crops_coords_top_left / target_size).

Goldens (tests/fixtures/goldens/<case>.safetensors), fp32, CPU, 1 thread, on the torch tiny model (build_tiny.py) and
make_stages.py's tiny refiner; goldens.py's cfg_neg prompts, guidance 5.0 and seed 0, 64x64, Euler; every call gets
original_size=(768, 1024), crops_coords_top_left=(32, 16), target_size=(1024, 1024) (diffusers' (height, width)
and (top, left) tuples; the request's {"width": 1024, "height": 768}, {"top": 32, "left": 16},
{"width": 1024, "height": 1024}):

  micro_conditioning           StableDiffusionXLPipeline, 5 steps: time ids (768, 1024, 32, 16, 1024, 1024) on both
                               the negative and the positive rows (no negative_original_size / negative_target_size,
                               so diffusers uses the positive ids for the negative rows)
  micro_conditioning_img2img   StableDiffusionXLImg2ImgPipeline (requires_aesthetics_score False) on
                               img2img/init_64.png, 5 steps, strength 0.6: the same ids on both rows (negative_original_size
                               and negative_target_size default to the positive ones, and this pipeline puts the
                               positive crop into the negative ids)
  micro_conditioning_refiner   make_stages.py's ensemble of experts (10 steps, base denoising_end 0.8, refiner
                               denoising_start 0.8), the three arguments given to both calls: the base as above, the
                               refiner (768, 1024, 32, 16, 6.0) positive and (768, 1024, 0, 0, 2.5) negative
                               (negative_crops_coords_top_left defaults to (0, 0))

Tensors: latents_step_<i> (every loop iteration; base then refiner), image [1,64,64,3], image_u8, add_time_ids /
add_neg_time_ids (the base UNet's rows) and, for the refiner case, make_stages.py's refiner tensors
(refiner_add_time_ids, refiner_add_neg_time_ids, ...). Metadata: goldens.py's keys, img2img's init_image and strength,
the refiner's keys, and micro_conditioning: the JSON object the request's data.dimensions gets.

Checks (asserted): the time ids each UNet got are the ones above; each case's image differs from the same request
without the three arguments by max >= 5/255 (so a request that ignores them fails the Rust tests).

Usage: python make_micro_conditioning.py [--model DIR] [--out tests/fixtures] [--cases micro_conditioning,...]
"""

from __future__ import annotations

import json

import _common as c
import goldens
import make_img2img as i2i
import make_stages as stages

ORIGINAL = (768, 1024)  # (height, width), as diffusers takes it
CROP = (32, 16)  # (top, left)
TARGET = (1024, 1024)
REQUEST = {
    "original_size": {"width": ORIGINAL[1], "height": ORIGINAL[0]},
    "crops_coords_top_left": {"top": CROP[0], "left": CROP[1]},
    "target_size": {"width": TARGET[1], "height": TARGET[0]},
}
KWARGS = dict(original_size=ORIGINAL, crops_coords_top_left=CROP, target_size=TARGET)

BASE = dict(goldens.CASES["cfg_neg"], width=64, height=64, batch_size=1)
CASES = {
    "micro_conditioning": dict(BASE, steps=5),
    "micro_conditioning_img2img": dict(BASE, steps=5, init_image="init_64.png", strength=0.6),
    "micro_conditioning_refiner": dict(BASE, steps=10, refiner="tiny-sdxl-refiner"),
}


def base_ids(p: dict, micro: bool) -> list:
    H, W = p["height"], p["width"]
    return [*ORIGINAL, *CROP, *TARGET] if micro else [H, W, 0, 0, H, W]


def run(pipes: dict, folder, name: str, micro: bool = True) -> tuple[dict, dict]:
    """Case `name` with the three arguments (`micro`) or without them; returns (tensors, metadata)."""
    import torch

    p = CASES[name]
    kwargs = KWARGS if micro else {}
    calls: list = []
    hook = pipes["base"].unet.register_forward_pre_hook(
        lambda mod, args, kw: calls.append(kw["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True
    )
    try:
        t, meta = i2i.call_case(pipes, folder, p, kwargs)
        if "refiner" in p and micro:
            want = [[*ORIGINAL, *CROP, 6.0], [*ORIGINAL, 0, 0, 2.5]]
            assert t["refiner_add_time_ids"][0].tolist() == want[0], t["refiner_add_time_ids"]
            assert t["refiner_add_neg_time_ids"][0].tolist() == want[1], t["refiner_add_neg_time_ids"]
    finally:
        hook.remove()
    tid = calls[0]
    assert all(torch.equal(x, tid) for x in calls), "the base's time ids change between calls"
    assert tid.tolist() == [base_ids(p, micro)] * 2, (name, tid.tolist())
    t["add_neg_time_ids"], t["add_time_ids"] = tid[:1].clone(), tid[1:].clone()
    meta["micro_conditioning"] = json.dumps(REQUEST)
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def main() -> None:
    args, cases = c.fixtures_args(__doc__, CASES)
    base = c.load_pipeline(args.model)
    pipes = {"base": base, "img2img": i2i.img2img_pipeline(base), "refiner": stages.build_refiner(base)}
    for name in cases:
        tensors, meta = run(pipes, args.out, name)
        plain, _ = run(pipes, args.out, name, micro=False)
        mean, worst, lat = i2i.difference(tensors, plain)
        n = sum(k.startswith("latents_step_") for k in tensors)
        print(
            f"{name}: {n} evaluations; |image_u8 - without the micro-conditioning|: mean {mean:.1f}/255, max"
            f" {worst:.0f}/255; last latents max |diff| {lat:.3f}",
            flush=True,
        )
        assert worst >= 5.0, (name, mean, worst)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
