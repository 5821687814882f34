"""Write the ControlNet fixtures: three tiny seeded SDXL ControlNets, control images, and their diffusers goldens.

Models (tests/fixtures/controlnet/<name>/: model.onnx + config.json, written by export_onnx.py's --controlnet export
of the saved diffusers folder, so the inputs / outputs are those documented there):

  tiny-controlnet/     ControlNetModel.from_unet(the tiny UNet of build_tiny.py), default
                       conditioning_embedding_out_channels (16, 32, 96, 256): three stride-2 convolutions, i.e. the
                       control image is 8x the latent size (the tiny VAE's scale factor, like real SDXL). Then EVERY
                       parameter is re-drawn from torch.Generator().manual_seed(31), the zero-initialized ones too
                       (controlnet_down_blocks.*, controlnet_mid_block, controlnet_cond_embedding.conv_out), so the
                       residuals are far from zero and no weight equals the UNet's: Linear / Conv2d weights normal
                       with std 1/sqrt(fan_in), x 2 in the conditioning embedding's convolutions before conv_out
                       (COND_GAIN: without it the SiLU stack shrinks the image's signal and the control image hardly
                       matters), biases std 0.1 x the same gain, GroupNorm / LayerNorm weights 1 + std 0.1 and
                       biases std 0.1.
                       642,688 parameters; 6 down residuals + mid, at 64x64 (latents 8x8): [B,16,8,8] x3,
                       [B,16,4,4], [B,32,4,4] x2; mid [B,32,4,4]
  tiny-controlnet-b/   the same architecture, seed 32 (for multi-ControlNet)
  tiny-controlnet-pool/ the same architecture, seed 33, its config saying global_pool_conditions (as the shuffle
                       ControlNets'): ControlNetModel.forward averages its residuals over height and width, which the
                       export keeps (ReduceMean: residuals [B,C,1,1]); diffusers' text-to-image and image-to-image
                       ControlNet pipelines turn guess mode on when it is the first unit

Control images (drawn with PIL / numpy, no random numbers), PNG RGB, in tests/fixtures/controlnet/:

  control_64.png       64x64, canny-like: 1-px white edges on black (circle, lines), grey edges (128, 192, 64) and
                       one orange polyline (R != B, so a channel-order swap changes the result)
  control_64_b.png     64x64, depth / normal-map-like: smooth gradients and a shaded sphere, R, G, B different
  control_80x60.png    80 wide x 60 high, sharp coloured shapes and a 4-px checker (so the resize matters); used for a
                       96x64 request: diffusers resizes it to 96x64 with PIL's Lanczos (VaeImageProcessor.resize)

Goldens (tests/fixtures/goldens/<case>.safetensors): diffusers' StableDiffusionXLControlNetPipeline (fp32, CPU, 1
thread, no watermark) on the torch tiny model, built from the base pipeline's components; goldens.py's cfg_neg as the
base case (prompt, negative, guidance 5, 5 steps Euler, seed 0, 64x64) run through goldens.run_case, so every tensor
and metadata key of goldens.py is there (controlnet_refiner: make_stages.py's refiner golden keys instead, below).
The control image is passed as the PIL image loaded from the PNG, so diffusers' own preprocessing runs (resize to
width x height with Lanczos, / 255, no normalization).

  controlnet               cfg_neg + tiny-controlnet, control_64.png, controlnet_conditioning_scale 0.8
  controlnet_resized       the same at width 96, height 64 with control_80x60.png (resized to 96x64), scale 1.0
  controlnet_multi         two units (MultiControlNetModel): tiny-controlnet + control_64.png at 0.7 and
                           tiny-controlnet-b + control_64_b.png at 0.5
  controlnet_window        HeunDiscreteScheduler (9 evaluations for 5 steps), control_guidance_start 0.25,
                           control_guidance_end 0.75, scale 1.0: the ControlNet counts at evaluations 3, 4, 5 only
                           (0-based)
  controlnet_batch2_nocfg  batch_size 2 (one generator per image, seeds 0 and 1), guidance_scale 1.0, no negative
                           prompt, scale 0.9
  controlnet_refiner       make_stages.py's `refiner` case (10 Euler steps, the ensemble of experts run by
                           make_stages.run_refiner) with StableDiffusionXLControlNetPipeline as the base:
                           tiny-controlnet, control_64.png, scale 0.8, denoising_end 0.8, output_type "latent" (8
                           steps, all with the ControlNet); then the tiny refiner (make_stages.build_refiner, the
                           torch model of tests/fixtures/tiny-sdxl-refiner/) without ControlNet, denoising_start 0.8
                           (2 steps), same prompts, guidance and generator object. Its tensors and metadata are those
                           of make_stages.py's refiner goldens (init_noise, base_timesteps [8], refiner_timesteps [2],
                           refiner_*prompt_embeds, refiner_add_*time_ids, latents_step_0..9 = 8 base then 2 refiner
                           steps, image, image_u8; refiner, refiner_start, base_steps, ...), not goldens.py's, plus
                           the ControlNet ones below (controlnet_scales: the 8 base evaluations). diffusers builds
                           controlnet_keep over the whole timestep list (10) before denoising_end cuts it
                           (pipeline_controlnet_sd_xl.py steps 7.1 and 8.1): a guidance window is relative to all 10.

  controlnet_guess         controlnet with guess_mode=True: the ControlNet on the conditional half only (batch 1,
                           control image not doubled), zeros for the unconditional half, residuals x
                           torch.logspace(-1, 0, 7) x 0.8
  controlnet_guess_nocfg   guess_mode=True, guidance_scale 1.0, no negative prompt, scale 0.9 (only the weights
                           change); controlnet_batch2_nocfg's first image is the same request without guess mode
  controlnet_guess_multi   controlnet_multi with guess_mode=True (one flag for both units)
  controlnet_guess_window  controlnet_window with guess_mode=True (the window still applies)
  controlnet_pool          tiny-controlnet-pool + control_64_b.png at 0.9, guess_mode not passed: the pipeline turns it
                           on (nets[0].config.global_pool_conditions); the pooled unit's scale is not log-weighted
  controlnet_pool_second   tiny-controlnet + control_64.png at 0.7 and tiny-controlnet-pool + control_64_b.png at 1.0:
                           no guess mode (only the first unit's config counts); the pooled [B,C,1,1] residuals are
                           broadcast onto the first unit's in MultiControlNetModel's sum
  (guess_mode: metadata "guess_mode" = "true"; the checks below expect the ControlNet's inputs at batch B without
  CFG doubling whenever the pipeline ran in guess mode)

Extra tensors (float32):
  control_image_<k> [1,3,H,W]      unit k's preprocessed control image, as VaeImageProcessor.preprocess returned it
                                   (before prepare_image's repeat_interleave(batch) and the CFG concatenation)
  cn_down_0 .. cn_down_{n-1}, cn_mid
                                   unit 0's outputs at the first evaluation, as the pipeline got them (already times
                                   its conditioning scale; batch kept: [2B,...] with CFG, negative half first)
  controlnet_scales [L,K]          the conditioning_scale each unit's forward got at each of the L evaluations
                                   (controlnet_conditioning_scale x diffusers' controlnet_keep)
Extra metadata (strings; JSON lists, one entry per unit in unit order): controlnets (folder names), control_images
(file names), conditioning_scales, control_guidance_start, control_guidance_end; scheduler (class name) when not Euler.

Measured here: mean |image_u8 with ControlNet - the same request without| (printed by this script; max in brackets):
  controlnet 13.7/255 (103), controlnet_resized 14.2/255 (144), controlnet_multi 13.9/255 (111),
  controlnet_window 3.0/255 (34; the ControlNet acts in 3 of 9 evaluations), controlnet_batch2_nocfg 13.3/255 (98),
  controlnet_refiner 13.2/255 (109; "without" is make_stages.py's `refiner` golden, reproduced bit for bit);
  0 or 255 pixels 2.8-4.1 % with the ControlNet, 3.1-4.2 % without. The control image itself matters: a black image
  instead changes `controlnet` by 9.9/255 (mean), B and R swapped by 1.1/255 (max 20/255); a bilinear resize instead
  of Lanczos changes `controlnet_resized` by up to 7/255; a keep window off by one evaluation moves
  `controlnet_window`'s latents by 0.57 or more.
The script checks each exported ONNX ControlNet against torch on the inputs the pipeline gave it (its first
evaluation with a conditioning scale other than 0): max |diff| / max(1, max |torch|) <= 1e-4 (1.9e-6 here); in guess
mode an unpooled graph gets conditioning_scale 1 and its outputs are multiplied by logspace(-1, 0, 7) x the scale,
as sdxlrt does. Guess-mode cases change the image by 4.9-22.9/255 (mean) against the same request without a
ControlNet, the pooled ones by 13.6-28.9/255.

Usage: python make_controlnet.py [--model DIR] [--out tests/fixtures] [--cases controlnet,...]
       (model: build_tiny.py's output)
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import _common as c
import goldens
import make_stages as stages

UNITS = {"tiny-controlnet": 31, "tiny-controlnet-b": 32, "tiny-controlnet-pool": 33}  # folder name -> seed
# units whose config says global_pool_conditions (diffusers: spatially averaged residuals, guess mode when first)
POOLED = {"tiny-controlnet-pool"}
# Linear / Conv2d weights: normal, std 1/sqrt(fan_in) x gain; the zero-initialized output convolutions' gain:
HEAD_GAIN = 1.0
# the gain of the conditioning embedding's convolutions before conv_out (SiLU between them; at 1 the image's signal
# fades through the 7 layers and the control image hardly changes the result)
COND_GAIN = 2.0
NORM_STD = 0.1  # GroupNorm / LayerNorm: weight 1 + NORM_STD * randn, bias NORM_STD * randn
BIAS_STD = 0.1  # Linear / Conv2d biases: BIAS_STD * randn (x the module's gain)

IMAGES = ("control_64.png", "control_64_b.png", "control_80x60.png")
BASE_CASE = goldens.CASES["cfg_neg"]
UNIT_A = dict(controlnets=("tiny-controlnet",), control_images=("control_64.png",))
CASES = {
    "controlnet": dict(BASE_CASE, **UNIT_A, conditioning_scales=(0.8,)),
    "controlnet_resized": dict(
        BASE_CASE,
        width=96,
        height=64,
        controlnets=("tiny-controlnet",),
        control_images=("control_80x60.png",),
        conditioning_scales=(1.0,),
    ),
    "controlnet_multi": dict(
        BASE_CASE,
        controlnets=("tiny-controlnet", "tiny-controlnet-b"),
        control_images=("control_64.png", "control_64_b.png"),
        conditioning_scales=(0.7, 0.5),
    ),
    # second order: 2N-1 evaluations, and diffusers' controlnet_keep is computed per evaluation
    "controlnet_window": dict(
        BASE_CASE,
        **UNIT_A,
        conditioning_scales=(1.0,),
        scheduler="HeunDiscreteScheduler",
        control_guidance_start=0.25,
        control_guidance_end=0.75,
    ),
    "controlnet_batch2_nocfg": dict(
        BASE_CASE, **UNIT_A, conditioning_scales=(0.9,), negative_prompt=None, guidance_scale=1.0, batch_size=2
    ),
    # make_stages.py's `refiner` (10 Euler steps, base denoising_end 0.8 -> tiny refiner denoising_start 0.8) with
    # the ControlNet on the base's 8 steps; the refiner gets none
    "controlnet_refiner": dict(stages.CASES["refiner"], **UNIT_A, conditioning_scales=(0.8,)),
    # guess_mode=True: the ControlNet on the conditional half only (zeros for the unconditional one), its residuals
    # x logspace(-1, 0, 7) x conditioning_scale
    "controlnet_guess": dict(BASE_CASE, **UNIT_A, conditioning_scales=(0.8,), guess_mode=True),
    "controlnet_guess_nocfg": dict(
        BASE_CASE, **UNIT_A, conditioning_scales=(0.9,), negative_prompt=None, guidance_scale=1.0, guess_mode=True
    ),
    "controlnet_guess_multi": dict(
        BASE_CASE,
        controlnets=("tiny-controlnet", "tiny-controlnet-b"),
        control_images=("control_64.png", "control_64_b.png"),
        conditioning_scales=(0.7, 0.5),
        guess_mode=True,
    ),
    "controlnet_guess_window": dict(
        BASE_CASE,
        **UNIT_A,
        conditioning_scales=(1.0,),
        scheduler="HeunDiscreteScheduler",
        control_guidance_start=0.25,
        control_guidance_end=0.75,
        guess_mode=True,
    ),
    # global_pool_conditions: guess mode without asking (the first unit's config), residuals spatially averaged
    "controlnet_pool": dict(
        BASE_CASE, controlnets=("tiny-controlnet-pool",), control_images=("control_64_b.png",), conditioning_scales=(0.9,)
    ),
    # a pooled second unit: no guess mode (only the first unit's config counts), its [B,C,1,1] residuals broadcast
    # onto the first unit's
    "controlnet_pool_second": dict(
        BASE_CASE,
        controlnets=("tiny-controlnet", "tiny-controlnet-pool"),
        control_images=("control_64.png", "control_64_b.png"),
        conditioning_scales=(0.7, 1.0),
    ),
}
# the keys of a case that describe its ControlNet units (not goldens.py's / make_stages.py's)
UNIT_KEYS = (
    "controlnets",
    "control_images",
    "conditioning_scales",
    "control_guidance_start",
    "control_guidance_end",
    "guess_mode",
)


# ---------------------------------------------------------------------------------------------------------------
# models


def build_controlnet(unet, seed: int, pooled: bool = False):
    """ControlNetModel.from_unet(unet) with every parameter re-drawn from torch.Generator().manual_seed(seed);
    `pooled`: its config says global_pool_conditions (the parameters are the same)."""
    import torch
    from diffusers import ControlNetModel
    from torch import nn

    cn = ControlNetModel.from_unet(unet)
    if pooled:
        cn.register_to_config(global_pool_conditions=True)
    heads = {cn.controlnet_cond_embedding.conv_out, cn.controlnet_mid_block, *cn.controlnet_down_blocks}
    embedding = {cn.controlnet_cond_embedding.conv_in, *cn.controlnet_cond_embedding.blocks}
    g = torch.Generator("cpu").manual_seed(seed)
    drawn = set()
    with torch.no_grad():
        for _, module in cn.named_modules():
            params = dict(module.named_parameters(recurse=False))
            if not params:
                continue
            w, b = params.pop("weight"), params.pop("bias", None)
            assert not params, f"unexpected parameters {list(params)} in {type(module).__name__}"
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                w.copy_(1.0 + NORM_STD * torch.randn(w.shape, generator=g))
                if b is not None:
                    b.copy_(NORM_STD * torch.randn(b.shape, generator=g))
            elif isinstance(module, (nn.Linear, nn.Conv2d)):
                gain = HEAD_GAIN if module in heads else COND_GAIN if module in embedding else 1.0
                w.copy_(torch.randn(w.shape, generator=g) * (gain / math.sqrt(w[0].numel())))
                if b is not None:
                    b.copy_(torch.randn(b.shape, generator=g) * (gain * BIAS_STD))
            else:
                raise TypeError(f"no init rule for {type(module).__name__}")
            drawn.update(id(p) for p in (w, b) if p is not None)
    assert drawn == {id(p) for p in cn.parameters()}, "some parameters were not re-drawn"
    return cn.eval()


def export_units(base, out: Path, work: Path) -> dict:
    """Build, save (diffusers folder in `work`) and export (out/controlnet/<name>/) both ControlNets."""
    import shutil

    import export_onnx as e

    units = {}
    for name, seed in UNITS.items():
        cn = build_controlnet(base.unet, seed, pooled=name in POOLED)
        src = work / "controlnet-diffusers" / name
        shutil.rmtree(src, ignore_errors=True)
        cn.save_pretrained(str(src), safe_serialization=True)
        dst = out / "controlnet" / name
        shutil.rmtree(dst, ignore_errors=True)
        diff = e.export_controlnet(src, dst, check=True)
        assert diff < 1e-4, diff
        n_params = sum(p.numel() for p in cn.parameters())
        size = sum(f.stat().st_size for f in dst.iterdir())
        print(f"  {name}: seed {seed}, {n_params:,} parameters, {size:,} bytes", flush=True)
        units[name] = cn
    return units


# ---------------------------------------------------------------------------------------------------------------
# control images


def draw_control_64():
    """Canny-like edges: white, grey and one orange line on black."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((8, 6, 40, 38), outline=(255, 255, 255), width=1)
    d.line((2, 60, 61, 44), fill=(255, 255, 255), width=1)
    d.line((20, 2, 20, 30), fill=(255, 255, 255), width=1)
    d.rectangle((36, 30, 58, 54), outline=(128, 128, 128), width=1)
    d.line((4, 4, 30, 58), fill=(192, 192, 192), width=1)
    d.line([(42, 4), (50, 16), (61, 6)], fill=(255, 160, 32), width=1)
    d.point([(x, 50) for x in range(6, 31, 3)], fill=(64, 64, 64))
    return img


def draw_control_64_b():
    """Depth / normal-map-like: smooth gradients and a shaded sphere, different in R, G and B."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64] / 63.0
    depth = 0.15 + 0.55 * y
    r2 = (x - 0.62) ** 2 + (y - 0.4) ** 2
    sphere = np.sqrt(np.clip(0.3**2 - r2, 0.0, None)) / 0.3
    depth = np.where(r2 < 0.3**2, np.maximum(depth, 0.45 + 0.55 * sphere), depth)
    rgb = np.stack([depth, 0.8 * depth + 0.2 * x, depth * (1.0 - 0.6 * x)], axis=-1)
    return Image.fromarray(np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")


def draw_control_80x60():
    """Sharp coloured shapes and a 4-px checker on black, 80 wide x 60 high."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (80, 60), (0, 0, 0))
    d = ImageDraw.Draw(img)
    for i in range(6):
        for j in range(6):
            if (i + j) % 2 == 0:
                d.rectangle((52 + 4 * i, 4 + 4 * j, 55 + 4 * i, 7 + 4 * j), fill=(255, 255, 255))
    d.line((6, 54, 30, 8), fill=(255, 0, 0), width=2)
    d.line((30, 8, 46, 40), fill=(0, 255, 0), width=2)
    d.line((10, 30, 70, 44), fill=(0, 96, 255), width=1)
    d.ellipse((8, 36, 24, 52), fill=(255, 200, 0))
    d.rectangle((56, 40, 74, 56), outline=(160, 160, 160), width=1)
    return img


def write_images(folder: Path) -> None:
    for name, draw in zip(IMAGES, (draw_control_64, draw_control_64_b, draw_control_80x60)):
        buf = io.BytesIO()
        draw().save(buf, format="PNG", optimize=False)
        c.write_bytes_if_changed(folder / name, buf.getvalue())


def load_image(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        assert img.mode == "RGB", (path, img.mode)
        return img.copy()


# ---------------------------------------------------------------------------------------------------------------
# goldens


def case_params(name: str) -> dict:
    defaults = {"width": 64, "height": 64, "batch_size": 1, "control_guidance_start": 0.0, "control_guidance_end": 1.0}
    return {**defaults, **CASES[name]}


def controlnet_keep(n_evals: int, start: float, end: float) -> list[float]:
    """diffusers' controlnet_keep (pipeline_controlnet_sd_xl.py, step 7.1), per loop iteration. n_evals: the length of
    the whole timestep list, also with denoising_end (diffusers builds controlnet_keep before step 8.1 cuts the list,
    so a refiner case keeps the first base-step entries of the full list's)."""
    return [1.0 - float(i / n_evals < start or (i + 1) / n_evals > end) for i in range(n_evals)]


def schedule_evaluations(p: dict) -> int:
    """Loop iterations of the whole schedule of case parameters `p`: steps, or 2 steps - 1 for a second-order
    scheduler (Heun)."""
    import diffusers

    order = getattr(diffusers, p.get("scheduler", "EulerDiscreteScheduler")).order
    return p["steps"] if order == 1 else 2 * p["steps"] - 1


def controlnet_pipeline(base, nets):
    """StableDiffusionXLControlNetPipeline with the ControlNets `nets` (one: that model, more: a MultiControlNetModel)
    on the base pipeline's components (_common.pipeline_from_base); bench/worker.py builds its pipeline with it."""
    from diffusers import StableDiffusionXLControlNetPipeline

    controlnet = nets[0] if len(nets) == 1 else list(nets)
    return c.pipeline_from_base(base, StableDiffusionXLControlNetPipeline, controlnet=controlnet)


def run_golden_case(pipe, name: str, p: dict, call_kwargs: dict | None = None) -> tuple[dict, dict]:
    """goldens.run_case on `pipe` with case `name` = goldens.py's keys of `p` (and `pipe.scheduler` swapped for
    p["scheduler"])."""
    import diffusers

    saved_cases, saved_scheduler = dict(goldens.CASES), pipe.scheduler
    goldens.CASES[name] = {k: v for k, v in p.items() if k not in (*UNIT_KEYS, "scheduler")}
    if "scheduler" in p:
        pipe.scheduler = getattr(diffusers, p["scheduler"]).from_config(pipe.scheduler.config)
    try:
        return goldens.run_case(pipe, name, call_kwargs=call_kwargs)
    finally:
        pipe.scheduler = saved_scheduler
        goldens.CASES.clear()
        goldens.CASES.update(saved_cases)


def run_request(pipe, refiner, name: str, p: dict, call_kwargs: dict | None = None) -> tuple[dict, dict]:
    """Case `name` (parameters `p`) on `pipe`: goldens.run_case (run_golden_case), or for a case with a refiner
    make_stages.py's ensemble of experts (run_refiner) with `pipe` as the base and `call_kwargs` for its call only."""
    if "refiner" not in p:
        return run_golden_case(pipe, name, p, call_kwargs)
    assert refiner is not None and p["refiner"] == "tiny-sdxl-refiner", p["refiner"]
    return stages.run_refiner(pipe, refiner, {k: v for k, v in p.items() if k not in UNIT_KEYS}, call_kwargs)


def controlnet_io(a: dict, scale: float, output) -> tuple[dict, list]:
    """One ControlNetModel.forward call's inputs, named as the ONNX ControlNet takes them, and its outputs (down
    residuals, then mid), cloned (MultiControlNetModel adds the next unit's residuals in place). `a`: the call's
    bound arguments; `scale`: its conditioning scale."""
    import torch

    inputs = {
        "sample": a["sample"].clone(),
        "timestep": torch.as_tensor(a["timestep"]).clone(),
        "encoder_hidden_states": a["encoder_hidden_states"].clone(),
        "controlnet_cond": a["controlnet_cond"].clone(),
        "conditioning_scale": torch.tensor(scale, dtype=torch.float32),
        "text_embeds": a["added_cond_kwargs"]["text_embeds"].clone(),
        "time_ids": a["added_cond_kwargs"]["time_ids"].clone(),
    }
    down, mid = output
    return inputs, [d.clone() for d in down] + [mid.clone()]


def controlnet_case(base, units: dict, images: Path, name: str, refiner=None) -> tuple[dict, dict, list]:
    """Run case `name` (`refiner`: make_stages.build_refiner's pipeline, for a case with a refiner); returns
    (tensors, metadata, per unit the (inputs, outputs) of its first evaluation with a conditioning scale other than
    0)."""
    import inspect

    import torch
    from diffusers import ControlNetModel

    p = case_params(name)
    nets = [units[n] for n in p["controlnets"]]
    K, B = len(nets), p["batch_size"]
    cfg = p["guidance_scale"] > 1.0
    scales = [float(s) for s in p["conditioning_scales"]]
    pil = [load_image(images / f) for f in p["control_images"]]
    pipe = controlnet_pipeline(base, nets)
    call = dict(
        image=pil[0] if K == 1 else pil,
        controlnet_conditioning_scale=scales[0] if K == 1 else scales,
        control_guidance_start=p["control_guidance_start"],
        control_guidance_end=p["control_guidance_end"],
    )
    if "guess_mode" in p:
        call["guess_mode"] = p["guess_mode"]
    # diffusers' ControlNet and ControlNet img2img pipelines: guess_mode or the first unit's global_pool_conditions
    guess = bool(p.get("guess_mode")) or bool(nets[0].config.global_pool_conditions)

    preprocessed: list = []
    orig_preprocess = pipe.control_image_processor.preprocess

    def preprocess(*args, **kwargs):
        out = orig_preprocess(*args, **kwargs)
        preprocessed.append(out.clone())
        return out

    pipe.control_image_processor.preprocess = preprocess
    calls: list[list] = [[] for _ in nets]
    signature = inspect.signature(ControlNetModel.forward)

    def recorder(k):
        def hook(module, args, kwargs, output):
            a = signature.bind(module, *args, **kwargs).arguments
            rec = {"scale": float(a["conditioning_scale"])}
            # inputs and outputs of the first evaluation (the golden's), and of the first with a scale other than 0
            # (the ONNX check's); cloned: MultiControlNetModel adds the next unit's residuals in place
            if not calls[k] or (rec["scale"] != 0.0 and not any(r["scale"] != 0.0 for r in calls[k])):
                rec["inputs"], rec["outputs"] = controlnet_io(a, rec["scale"], output)
                assert bool(a.get("guess_mode")) == guess and a["return_dict"] is False
            calls[k].append(rec)

        return hook

    hooks = [net.register_forward_hook(recorder(k), with_kwargs=True) for k, net in enumerate(nets)]
    try:
        tensors, meta = run_request(pipe, refiner, name, p, call)
    finally:
        for h in hooks:
            h.remove()
        del pipe.control_image_processor.preprocess

    # L: the ControlNet's evaluations = the base loop's iterations (with a refiner: before its denoising_end);
    # controlnet_keep is diffusers' over the whole schedule, cut to those
    L = len(tensors["base_timesteps" if "refiner" in p else "timesteps"])
    assert len(preprocessed) == K and all(len(u) == L for u in calls), (len(preprocessed), [len(u) for u in calls])
    n_evals = schedule_evaluations(p)
    assert L == n_evals if "refiner" not in p else L < n_evals, (L, n_evals)
    keep = controlnet_keep(n_evals, p["control_guidance_start"], p["control_guidance_end"])[:L]
    got_scales = [[u[i]["scale"] for u in calls] for i in range(L)]
    assert got_scales == [[s * kp for s in scales] for kp in keep], (got_scales, keep)
    for k in range(K):
        image = preprocessed[k]
        assert image.shape == (1, 3, p["height"], p["width"]) and image.dtype == torch.float32
        # prepare_image: repeat_interleave(batch) then, with CFG (not in guess mode), the same images again for the
        # negative half
        fed = torch.cat([image.repeat_interleave(B, dim=0)] * (2 if cfg and not guess else 1))
        assert torch.equal(calls[k][0]["inputs"]["controlnet_cond"], fed), k
        tensors[f"control_image_{k}"] = image
    first = calls[0][0]["outputs"]
    for j, d in enumerate(first[:-1]):
        tensors[f"cn_down_{j}"] = d
    tensors["cn_mid"] = first[-1]
    tensors["controlnet_scales"] = torch.tensor(got_scales, dtype=torch.float32)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}

    meta["controlnets"] = json.dumps(list(p["controlnets"]))
    meta["control_images"] = json.dumps(list(p["control_images"]))
    meta["conditioning_scales"] = json.dumps(scales)
    meta["control_guidance_start"] = json.dumps([float(p["control_guidance_start"])] * K)
    meta["control_guidance_end"] = json.dumps([float(p["control_guidance_end"])] * K)
    if "scheduler" in p:
        meta["scheduler"] = p["scheduler"]
    if p.get("guess_mode"):
        meta["guess_mode"] = "true"
    active = [next(r for r in u if r["scale"] != 0.0) for u in calls]
    return tensors, meta, [(r["inputs"], r["outputs"]) for r in active]


def image_difference(base, refiner, name: str, with_cn: dict) -> dict:
    """How much the ControlNet changes the image: the same request on the base pipeline (a refiner case: then the
    refiner; this is make_stages.py's golden of the same case), compared."""
    import numpy as np

    tensors, _ = run_request(base, refiner, name, case_params(name))
    a = with_cn["image_u8"].numpy().astype(np.float64)
    b = tensors["image_u8"].numpy().astype(np.float64)
    image = with_cn["image"].numpy()
    assert np.isfinite(image).all()
    return {
        "mean_diff": float(np.abs(a - b).mean() / 255.0),
        "max_diff": float(np.abs(a - b).max() / 255.0),
        "clipped_cn": float(((a == 0) | (a == 255)).mean()),
        "clipped_base": float(((b == 0) | (b == 255)).mean()),
    }


def check_onnx(folder: Path, name: str, unit: str, first: tuple, guess: bool = False) -> float:
    """onnxruntime on the exported graph vs torch, on the inputs the pipeline gave one unit (`first`). `guess`: torch
    ran in guess mode; a unit without global_pool_conditions then scaled its residuals by
    logspace(-1, 0, n) x conditioning_scale, which the graph (exported with guess_mode=False) does not: it gets
    conditioning_scale 1 and its outputs are multiplied by those scales here, as sdxlrt does."""
    import numpy as np
    import onnxruntime as ort
    import torch

    inputs, outputs = first
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(folder / unit / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    feed = {k: v.numpy().astype(np.float32) for k, v in inputs.items()}
    pooled = json.loads((folder / unit / "config.json").read_text()).get("global_pool_conditions", False)
    if guess and not pooled:
        feed["conditioning_scale"] = np.array(1.0, dtype=np.float32)
    got = sess.run(None, feed)
    if guess and not pooled:
        scales = (torch.logspace(-1, 0, len(got)) * float(inputs["conditioning_scale"])).numpy()
        got = [g * s for g, s in zip(got, scales)]
    assert len(got) == len(outputs)
    worst = 0.0
    for g, w in zip(got, outputs):
        w = w.numpy()
        assert g.shape == w.shape, (g.shape, w.shape)
        worst = max(worst, float(np.abs(g.astype(np.float64) - w).max() / max(1.0, float(np.abs(w).max()))))
    print(f"  {name} / {unit}: ORT vs torch, max |diff| / max(1, max |torch|) = {worst:.3g}", flush=True)
    assert worst <= 1e-4, worst
    return worst


def main() -> None:
    args, cases = c.fixtures_args(__doc__, CASES)
    folder = args.out / "controlnet"
    base = c.load_pipeline(args.model)
    units = export_units(base, args.out, c.WORK)
    write_images(folder)
    # the tiny refiner (make_stages.py's torch pipeline: the weights of tests/fixtures/tiny-sdxl-refiner/)
    refiner = stages.build_refiner(base) if any("refiner" in CASES[s] for s in cases) else None
    for name in cases:
        tensors, meta, firsts = controlnet_case(base, units, folder, name, refiner)
        guess = bool(CASES[name].get("guess_mode")) or CASES[name]["controlnets"][0] in POOLED
        for unit, first in zip(CASES[name]["controlnets"], firsts):
            check_onnx(folder, name, unit, first, guess)
        d = image_difference(base, refiner, name, tensors)
        shapes = ", ".join(f"{k}{list(tensors[k].shape)}" for k in sorted(tensors) if k.startswith(("cn_", "control")))
        print(f"{name}: {shapes}", flush=True)
        mean, worst = d["mean_diff"] * 255, d["max_diff"] * 255
        print(
            f"  {name}: mean |with - without ControlNet| = {mean:.1f}/255 (max {worst:.0f}),"
            f" clipped pixels {d['clipped_cn']:.1%} (without: {d['clipped_base']:.1%})",
            flush=True,
        )
        # the ControlNet must change the image clearly (a test that drops it must fail), without saturating it
        # (guess mode: the unconditional half gets no residuals and the down residuals 0.1x to 1x, so less)
        low = name.endswith("window") or "guess" in name or "pool" in name
        assert mean >= (2.0 if low else 10.0) and d["clipped_cn"] < 0.1, d
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
