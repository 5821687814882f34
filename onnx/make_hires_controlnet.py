"""Write the goldens of hires fix with ControlNet (data.hires + data.controlnet): make_hires.py's two passes with
diffusers' ControlNet pipelines, as A1111 + sd-webui-controlnet run them.

  1. First pass: StableDiffusionXLControlNetPipeline (make_controlnet.controlnet_pipeline on the torch tiny model,
     make_controlnet.py's tiny ControlNets rebuilt from their seeds) at the request's size, image= the control
     images as PIL images loaded from tests/fixtures/controlnet/ (the pipeline resizes them to width x height with
     Lanczos), output_type "latent" / "pil" as make_hires.py.
  2. The upscale, as make_hires.py.
  3. Second pass: StableDiffusionXLControlNetImg2ImgPipeline (requires_aesthetics_score False) with height=H2,
     width=W2 and control_image= the SAME PIL images as sent (the pipeline resizes each to W2 x H2 from the
     original: sd-webui-controlnet's get_control makes the hires pass's control image from the one preprocessed map,
     not from the first pass's resized copy), the same conditioning scales, guidance windows and guess_mode; FRESH
     generators goldens.generators(seed, B). The windows are over the second pass's own evaluations (that pipeline
     builds controlnet_keep over the timesteps left after strength).
  A pass the units sit out (data.hires.controlnet "first" / "second", sd-webui-controlnet's hr_option "Low res
  only" / "High res only") runs make_hires.py's plain pipeline instead (StableDiffusionXLPipeline /
  StableDiffusionXLImg2ImgPipeline).

Base case: make_hires.py's (goldens.py's cfg_neg: guidance 5.0, seed 0), 64x64, 4 steps, Euler, unless listed.

  case                        upscaler  target  hires steps  strength  units                         passes
  hires_controlnet_latent     latent    96x96   -            0.7       A 0.8                         both
  hires_controlnet_lanczos    lanczos   96x96   -            0.6       A 0.8                         both
  hires_controlnet_multi      latent    96x96   -            0.7       A 0.7 + B 0.5                 both
  hires_controlnet_first      latent    96x96   -            0.7       A 0.8                         first
  hires_controlnet_second     latent    96x96   -            0.7       A 0.8                         second
  hires_controlnet_guess      latent    96x96   -            0.7       A 0.8, guess_mode             both
  hires_controlnet_window     latent    96x96   10           0.6       A 1.0, window 0.25-0.75       both
  hires_controlnet_batch2     latent    96x96   -            0.7       A 0.9, batch 2, Euler a       both

  A: tiny-controlnet + control_80x60.png (80x60: resized to 64x64 for the first pass and to 96x96 from the
     original for the second, so re-resizing the first pass's copy differs); B: tiny-controlnet-b + control_64_b.png.
  hires_controlnet_window: the first pass keeps evaluations [0, 1, 1, 0] of 4; the second runs int(10 x 0.6) = 6
  and keeps [0, 0, 1, 1, 0, 0] of those (over the whole 10-step list it would be [1, 1, 1, 0, 0, 0]).

Tensors and metadata: make_hires.py's, plus make_controlnet.py's unit metadata (controlnets, control_images,
conditioning_scales, control_guidance_start, control_guidance_end, guess_mode) and, per pass that ran ControlNets,
controlnet_scales [L,K] / hires_controlnet_scales [L2,K] (the conditioning scale each unit's forward got at each
evaluation) and control_image_<k> [1,3,H,W] / hires_control_image_<k> [1,3,H2,W2] (unit k's control image as the
pipeline prepared it, in [0, 1]). data.hires.controlnet is in the hires metadata when not "both".

Checks (asserted, and printed): the second pass's control images are the originals resized (not the first pass's
copy); each case differs from the same request without the second pass's ControlNets (or, for "second", without
the first pass's) by >= 2/255 max, and "first" / "second" from the same request with "both" too; how much re-resizing
the first pass's control image instead changes the single-unit cases is printed.

Usage: python make_hires_controlnet.py [--model DIR] [--out tests/fixtures] [--cases hires_controlnet_latent,...]
       (--out must hold controlnet/ (make_controlnet.py's) and upscalers/ already)
"""

from __future__ import annotations

import json
from pathlib import Path

import _common as c
import make_controlnet as cn
import make_hires as mh

UNIT_A = dict(controlnets=("tiny-controlnet",), control_images=("control_80x60.png",), conditioning_scales=(0.8,))
BASE = dict(mh.BASE_CASE, steps=4)
CASES = {
    "hires_controlnet_latent": dict(BASE, **UNIT_A, hires=dict(upscaler="latent", scale=1.5)),
    "hires_controlnet_lanczos": dict(BASE, **UNIT_A, hires=dict(upscaler="lanczos", scale=1.5, strength=0.6)),
    "hires_controlnet_multi": dict(
        BASE,
        controlnets=("tiny-controlnet", "tiny-controlnet-b"),
        control_images=("control_80x60.png", "control_64_b.png"),
        conditioning_scales=(0.7, 0.5),
        hires=dict(upscaler="latent", scale=1.5),
    ),
    "hires_controlnet_first": dict(BASE, **UNIT_A, hires=dict(upscaler="latent", scale=1.5, controlnet="first")),
    "hires_controlnet_second": dict(BASE, **UNIT_A, hires=dict(upscaler="latent", scale=1.5, controlnet="second")),
    "hires_controlnet_guess": dict(BASE, **UNIT_A, guess_mode=True, hires=dict(upscaler="latent", scale=1.5)),
    "hires_controlnet_window": dict(
        BASE,
        **dict(UNIT_A, conditioning_scales=(1.0,)),
        control_guidance_start=0.25,
        control_guidance_end=0.75,
        hires=dict(upscaler="latent", scale=1.5, steps=10, strength=0.6),
    ),
    "hires_controlnet_batch2": dict(
        BASE,
        **dict(UNIT_A, conditioning_scales=(0.9,)),
        batch_size=2,
        scheduler="EulerAncestralDiscreteScheduler",
        hires=dict(upscaler="latent", scale=1.5),
    ),
}


def passes(p: dict) -> tuple[bool, bool]:
    """Whether the units condition the first and the second pass (data.hires.controlnet)."""
    choice = p["hires"].get("controlnet", "both")
    return choice != "second", choice != "first"


def unit_kwargs(p: dict, images: list, second: bool) -> dict:
    """The ControlNet arguments of one pass's call: the control images (`image=` for text-to-image, `control_image=`
    with the target's height / width for image-to-image), scales, windows and guess mode."""
    one = len(images) == 1
    scales = list(p["conditioning_scales"])
    kwargs = dict(
        controlnet_conditioning_scale=scales[0] if one else scales,
        control_guidance_start=p.get("control_guidance_start", 0.0),
        control_guidance_end=p.get("control_guidance_end", 1.0),
        guess_mode=bool(p.get("guess_mode", False)),
    )
    kwargs["control_image" if second else "image"] = images[0] if one else images
    if second:
        W2, H2 = mh.target_size(p)
        kwargs.update(width=W2, height=H2)
    return kwargs


def recorder(pipe, rows: list):
    """Record every ControlNet forward's conditioning scale and control image (one list per call, one entry per
    unit) on `pipe`'s ControlNet(s); returns a function that removes the hooks."""
    nets = pipe.controlnet.nets if hasattr(pipe.controlnet, "nets") else [pipe.controlnet]
    hooks = []
    for k, net in enumerate(nets):

        def hook(_mod, args, kwargs, k=k):
            if k == 0:
                rows.append([])
            rows[-1].append((float(kwargs["conditioning_scale"]), kwargs["controlnet_cond"][:1].clone()))

        hooks.append(net.register_forward_pre_hook(hook, with_kwargs=True))
    return lambda: [h.remove() for h in hooks]


def run_case(pipes: dict, folder: Path, name: str, cases: dict | None = None, hr_from_first: bool = False):
    """Case `name` (of `cases`, default CASES). `hr_from_first`: give the second pass the first pass's resized
    control images instead of the originals (the check that the original is what it resizes)."""
    from PIL import Image

    cases = CASES if cases is None else cases
    p = {"width": 64, "height": 64, "batch_size": 1, **cases[name]}
    first, second = passes(p)
    images = [cn.load_image(folder / "controlnet" / f) for f in p["control_images"]]
    hr_images = images
    if hr_from_first:
        hr_images = [im.resize((p["width"], p["height"]), Image.LANCZOS) if im.size != (p["width"], p["height"])
                     else im for im in images]
    base = pipes["t2i_cn"] if first else pipes["t2i"]
    i2i = pipes["i2i_cn"] if second else pipes["i2i"]
    # both ControlNet pipelines share the nets: one recorder, its rows split after the run (one per loop iteration)
    rows: list = []
    undo = [recorder(pipes["t2i_cn"], rows)]
    try:
        tensors, meta = mh.run_case(
            base,
            i2i,
            folder,
            name,
            cases=cases,
            first_kwargs=unit_kwargs(p, images, False) if first else None,
            second_kwargs=unit_kwargs(p, hr_images, True) if second else None,
        )
    finally:
        for u in undo:
            u()
    import torch

    n_first = sum(k.startswith("latents_step_") for k in tensors) if first else 0
    rows1, rows2 = rows[:n_first], rows[n_first:]
    assert len(rows2) == (sum(k.startswith("hires_latents_step_") for k in tensors) if second else 0), len(rows)
    for prefix, rows in (("", rows1), ("hires_", rows2)):
        if not rows:
            continue
        tensors[f"{prefix}controlnet_scales"] = torch.tensor([[s for s, _ in r] for r in rows], dtype=torch.float32)
        for k, (_, image) in enumerate(rows[0]):
            tensors[f"{prefix}control_image_{k}"] = image.float().contiguous()
    K = len(p["controlnets"])
    meta.update(
        controlnets=json.dumps(list(p["controlnets"])),
        control_images=json.dumps(list(p["control_images"])),
        conditioning_scales=json.dumps([float(s) for s in p["conditioning_scales"]]),
        control_guidance_start=json.dumps([float(p.get("control_guidance_start", 0.0))] * K),
        control_guidance_end=json.dumps([float(p.get("control_guidance_end", 1.0))] * K),
    )
    if p.get("guess_mode"):
        meta["guess_mode"] = "true"
    return tensors, meta


def without(name: str, drop: str) -> dict:
    """Case `name` with its units dropped from the pass `drop` ("first" or "second")."""
    p = dict(CASES[name])
    keep = {"first": "second", "second": "first"}[drop]
    p["hires"] = dict(p["hires"], controlnet=keep)
    return {name: p}


def max_diff(a: dict, b: dict) -> int:
    return int((a["image_u8"].int() - b["image_u8"].int()).abs().max())


def main() -> None:
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    args, cases = c.fixtures_args(__doc__, CASES)
    base = c.load_pipeline(args.model)
    nets = {n: cn.build_controlnet(base.unet, seed, pooled=n in cn.POOLED) for n, seed in cn.UNITS.items()}
    i2i = c.pipeline_from_base(base, StableDiffusionXLImg2ImgPipeline, requires_aesthetics_score=False)
    for name in cases:
        p = CASES[name]
        units = [nets[n] for n in p["controlnets"]]
        controlnet = units[0] if len(units) == 1 else list(units)
        pipes = dict(
            t2i=base,
            i2i=i2i,
            t2i_cn=cn.controlnet_pipeline(base, units),
            i2i_cn=c.pipeline_from_base(
                base, StableDiffusionXLControlNetImg2ImgPipeline, requires_aesthetics_score=False,
                controlnet=controlnet,
            ),
        )
        tensors, meta = run_case(pipes, args.out, name)
        shown = sorted(k for k in tensors if "latents_step_" not in k)
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        for prefix in ("", "hires_"):
            if f"{prefix}controlnet_scales" in tensors:
                print(f"  {name}: {prefix}controlnet_scales {tensors[f'{prefix}controlnet_scales'].tolist()}",
                      flush=True)
        first, second = passes({"hires": p["hires"]})
        if second:
            from PIL import Image
            import numpy as np

            W2, H2 = mh.target_size({"width": 64, "height": 64, **p})
            for k, f in enumerate(p["control_images"]):
                im = cn.load_image(args.out / "controlnet" / f)
                want = np.asarray(im.resize((W2, H2), Image.LANCZOS) if im.size != (W2, H2) else im)
                got = (tensors[f"hires_control_image_{k}"][0].permute(1, 2, 0).numpy() * 255).round()
                assert np.array_equal(got.astype(np.uint8), want), (name, k)
        # the ControlNets of each pass must matter
        for drop, present in (("second", second and first), ("first", first and second)):
            if not present:
                continue
            other, _ = run_case(pipes, args.out, name, cases=without(name, drop))
            d = max_diff(tensors, other)
            print(f"  {name}: without the {drop} pass's ControlNets: image max {d}/255", flush=True)
            assert d >= 2, (name, drop, d)
        if first != second:  # "first" / "second": against the same request with both
            other, _ = run_case(pipes, args.out, name, cases={name: dict(p, hires=dict(p["hires"], controlnet="both"))})
            d = max_diff(tensors, other)
            print(f"  {name}: with both passes' ControlNets: image max {d}/255", flush=True)
            assert d >= 2, (name, d)
        if second and len(p["controlnets"]) == 1 and p["control_images"][0] == "control_80x60.png":
            other, _ = run_case(pipes, args.out, name, hr_from_first=True)
            d = max_diff(tensors, other)
            lat = float((tensors["image"] - other["image"]).abs().max())
            print(f"  {name}: second pass's control image re-resized from the first's: image max {d}/255 "
                  f"(float {lat:.3g})", flush=True)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
