"""Write diffusers' goldens of inpainting with the SDXL refiner (ensemble of experts), as diffusers' docs do it (also with
ControlNets on the base).

The documented recipe (diffusers 0.42.1, SDXL "refine image quality" with inpainting), with goldens.py's generators
(one, or a list of seed + i: the same objects for both calls):

  base = StableDiffusionXLInpaintPipeline(...base components...)
  refiner = StableDiffusionXLInpaintPipeline(...refiner components..., requires_aesthetics_score=True)
  lat = base(prompt, image=init, mask_image=mask, num_inference_steps=n, strength=s, denoising_end=f,
             output_type="latent", generator=g).images
  img = refiner(prompt, image=lat, mask_image=mask, num_inference_steps=n, strength=s, denoising_start=f,
                generator=g).images

on the torch tiny model's components: the base is make_inpaint.py's pipeline (4-channel UNet) or, for inpaint9_*,
make_inpaint_unet.py's 9-channel inpainting UNet (the fixture tests/fixtures/tiny-sdxl-inpaint-unet/); the refiner
is make_stages.build_refiner's (tests/fixtures/tiny-sdxl-refiner/) as an inpaint pipeline (requires_aesthetics_score,
no force_zeros_for_empty_prompt). Both calls get height / width and cfg_neg's prompts (negative "blurry, low
quality"), guidance 5.0, seed 0, init_64.png (make_img2img.py) and mask_64.png (make_inpaint.py) unless a case says
otherwise; each pipeline's scheduler is `cls.from_config(its config)` (Euler unless a case names another class).

  case                          base, scheduler             steps  strength  switch  evaluations base | refiner
  inpaint_refiner               4-ch, Euler                 5      0.8       0.6     601, 401 | 201, 1
  inpaint_refiner_euler_a_batch2  4-ch, EulerAncestral, batch 2 (seeds 0, 1)
                                                            5      0.8       0.6     601, 401 | 201, 1
  inpaint_refiner_dpmpp_2m      4-ch, DPMSolverMultistep    5      0.8       0.6     665, 499 | 333, 167
  inpaint_refiner_heun          4-ch, Heun                  5      0.8       0.6     601, 401, 401 | 401, 201, 201,
                                                                                     1, 1 (the refiner's count made
                                                                                     odd: it re-evaluates 401)
  inpaint9_refiner              9-ch, Euler                 5      0.8       0.6     601, 401 | 201, 1
  inpaint_refiner_blur          4-ch, Euler, mask_blur 4    5      0.8       0.6     601, 401 | 201, 1
  inpaint_refiner_crop          4-ch, Euler, init_80x60.png, mask_crop_80x60.png (make_inpaint_crop.py), 64x64,
                                padding_mask_crop 4         5      0.8       0.6     601, 401 | 201, 1
  inpaint_controlnet_refiner    4-ch ControlNet base, Euler, tiny-controlnet (control_64, 0.8, window 0.2-0.5)
                                                            5      0.8       0.6     601, 401 | 201, 1
  inpaint_controlnet_refiner_euler_a_batch2  ControlNet base, EulerAncestral, batch 2 (seeds 0, 1), tiny-controlnet
                                (control_64, 0.7, 0-0.5) + tiny-controlnet-b (control_64_b, 0.5, 0.25-1)
                                                            5      0.8       0.6     601, 401 | 201, 1
(the switch: discrete cut-off round(1000 - 0.6 x 1000) = 400; the base runs the timesteps >= 400 of those strength
leaves it, the refiner those < 400 of the whole schedule: denoising_start ignores strength)

What the two calls do (pipeline_stable_diffusion_xl_inpaint.py; asserted below):
  base: as make_inpaint.py / make_inpaint_unet.py document, but the loop runs timesteps[:num_inference_steps] (the
    ones >= the cut-off) and the 4-channel blend's last-step test `i < len(timesteps) - 1` is against that truncated
    list: after the base's last evaluation the unmasked latent cells are the CLEAN image latents, not latents noised
    to the refiner's first level. A 9-channel base does no blend.
  refiner (image= the base's 4-channel latents, denoising_start given so add_noise=False): image_processor.preprocess
    returns the latents as they are; prepare_latents takes image_latents = those latents (no VAE encode, no
    posterior draw), draws noise = randn_tensor([B,4,h,w], generator) (row i from generator i with a list) and starts
    from latents = image_latents; masked_image is None (the image is latents), so no masked-image encode or draw; the
    mask is made again from the same mask image at the same height / width. After every refiner step latents = (1 -
    mask_latents) x add_noise(image_latents, noise, timesteps[i + 1]) + mask_latents x latents, at its last step
    image_latents as they are. Time ids: (H, W, 0, 0, aesthetic_score 6.0), negative (H, W, 0, 0, 2.5).
  with ControlNets (inpaint_controlnet_refiner*): the base is StableDiffusionXLControlNetInpaintPipeline
    (make_inpaint_controlnet.py's, the same denoising_end and output_type "latent"; its draws, blend and truncation
    are the inpaint pipeline's), the refiner call is the same as without and gets no ControlNet. The base builds
    controlnet_keep over the timesteps strength leaves (4) BEFORE denoising_end truncates them (to the base's 2), so
    a window is cut by the switch: 0.2-0.5 gives scales 0, 0.8 (over the truncated list 0, 0; over all 5 steps,
    the base's at 1 and 2 of them, 0.8, 0); in the batch case unit a's 0-0.5 gives 0.7, 0.7 (over the truncated list
    or all 5: 0.7, 0), unit b's 0.25-1 gives 0, 0.5 (either way).
  mask_blur: the mask both calls get is make_inpaint_crop.case_mask's (mask_processor.blur(mask, blur_factor), as
    diffusers' docs blur it before the pipeline).
  padding_mask_crop: both calls refuse it with output_type "latent" / latent images (check_inputs: "The output type
    should be PIL when inpainting mask crop", "The image should be a PIL image"), so inpaint_refiner_crop composes
    diffusers' own steps around the recipe: crops_coords = mask_processor.get_crop_region(mask, W, H, pad), the init
    image and the mask cropped and resized with image_processor.resize / mask_processor.resize(resize_mode="fill")
    (what preprocess does with crops_coords; given at W x H, the calls' own resize returns them unchanged), the
    recipe on those, then image_processor.apply_overlay(mask, init image, the PIL output, crops_coords). Checked: the
    same composition around the base alone (output_type "pil") equals diffusers' base call with padding_mask_crop
    byte for byte.
Draws per generator, in order (every randn_tensor call in the VAE, pipeline and scheduler modules logged, redrawn from
fresh generators bit for bit, and the used generators' final states equal the fresh ones'):
  generator 0: the base's (image posterior, noise, masked-image posterior), step noise x the base's evaluations
               (Euler ancestral), then the refiner's noise, step noise x the refiner's evaluations
  generator i > 0: noise, step noise x base evaluations, refiner noise, step noise x refiner evaluations

Tensors per case (float32 unless noted; h, w = H/8, W/8; B the batch):
  noised_latents [B,4,h,w]         the base loop's starting latents
  mask_latents [1,1,h,w]           the latent mask (the same in both calls)
  image_latents [B,4,h,w]          the base's init image latents (4-channel base only)
  base_timesteps [Lb], refiner_timesteps [Lr]
  handed_over [B,4,h,w]            the base's output latents (= latents_step_{Lb-1}), the refiner's image_latents
  refiner_noise [B,4,h,w]          the refiner's prepare_latents randn (its blend's noise)
  refiner_add_time_ids [1,5], refiner_add_neg_time_ids [1,5]
  latents_step_0 .. latents_step_{Lb+Lr-1} [B,4,h,w]
                                   the latents each loop iteration ends with (after the blend), the base's then the
                                   refiner's (callback_on_step_end's)
  controlnet_scales [Lb,K]          (ControlNet cases) the scale each unit's forward got at each base evaluation
  image [B,H,W,3], image_u8 uint8 [B,H,W,3]
                                   the refiner's output (output_type "np"; image_u8 = (image * 255).round()); with
                                   padding_mask_crop only image_u8 [1,60,80,3], the overlaid PIL image
Metadata: make_inpaint.py's (goldens.py's keys, init_image, mask_image, strength, scheduler when not Euler), refiner
(tiny-sdxl-refiner), refiner_start (repr of the switch), base_steps (Lb); unet (inpaint9_*: the UNet's fixture
folder); padding_mask_crop; make_inpaint_controlnet.controlnet_meta's unit lists (controlnets, control_images,
conditioning_scales, control_guidance_start, control_guidance_end).

Checks (asserted): the draws above; the refiner's preprocessed image, image_latents and starting latents are the
handed-over latents; no VAE encode in the refiner call; the refiner's noise is its draw; every refiner step's blend
recomputed bit for bit from scheduler.step's output and a fresh scheduler's add_noise (begin index = the refiner's
first evaluation + i + 1), the last with handed_over itself; with a 4-channel base its last latents equal image_latents
where mask_latents is 0; the time ids; evaluations as the table says. With ControlNets (check_base_controlnets, as
make_inpaint_controlnet.py checks its pipeline): at each base evaluation each unit got the UNet's sample, timestep,
text conditioning and time ids and its control image repeated to every row, at conditioning_scale x controlnet_keep
over the timesteps strength leaves; ONNX vs torch on each unit's first active evaluation; the same recipe without the
ControlNets (the plain inpaint base) starts from the same latents and its image differs by >= 5/255 (measured: mean
3.1 / 12.5, max 51 / 183). Printed: how far the base's last latents would
be, in the unmasked cells, had it blended image latents noised to the refiner's first level (what testing the last
step against the whole schedule gives), and how much the refiner's blend with the handed-over latents differs from
one with the init image's latents (0 with a 4-channel base, whose handed-over latents are the clean image latents
outside the mask; the 9-channel base's are its own). Two runs write identical bytes.

Measured here: the whole-schedule last step would move them by up to 2.354 (Euler, Euler ancestral, Heun, crop: to
timestep 201's level) and 2.799 (DPM++ 2M: 333); handed-over vs init image latents outside the mask: 0 in every
4-channel case (so only inpaint9_refiner tells a refiner that blends the init image's latents from one that blends
the handed-over ones: the Rust test then fails by 10.5 at the refiner's first step).

Usage: python make_inpaint_refiner.py [--model DIR] [--out tests/fixtures] [--cases inpaint_refiner,...]
       (--out must hold tiny-sdxl/, tiny-sdxl-refiner/, controlnet/, img2img/ and inpaint/ already:
       make_stages.py, make_controlnet.py, make_img2img.py, make_inpaint.py, make_inpaint_crop.py)
"""

from __future__ import annotations

import json
from pathlib import Path

import _common as c
import goldens
import make_controlnet as cn
import make_img2img as i2i
import make_inpaint as mi
import make_inpaint_controlnet as mic
import make_inpaint_crop as mcr
import make_inpaint_unet as miu
import make_stages as stages

SWITCH = 0.6
REFINER = i2i.REFINER
BASE = dict(mi.BASE, steps=5, strength=0.8)  # cfg_neg's prompts, guidance, seed; init_64.png, mask_64.png
CASES = {
    "inpaint_refiner": dict(BASE),
    # ancestral: step noise on both stages, one generator per image, the refiner's noise after the base's draws
    "inpaint_refiner_euler_a_batch2": dict(BASE, batch_size=2, scheduler=mi.EULER_A),
    # multistep: the refiner's solver starts without the base's history
    "inpaint_refiner_dpmpp_2m": dict(BASE, scheduler="DPMSolverMultistepScheduler"),
    # second order: the refiner re-evaluates the switch timestep (its count made odd)
    "inpaint_refiner_heun": dict(BASE, scheduler="HeunDiscreteScheduler"),
    # a 9-channel inpainting base (no blend) hands over latents the refiner blends with
    "inpaint9_refiner": dict(BASE, unet=miu.UNET_DIR),
    # data.mask_blur: both stages get the blurred mask (diffusers' docs blur it with mask_processor.blur first)
    "inpaint_refiner_blur": dict(BASE, mask_blur=4),
    # only the mask's area, composed from diffusers' processors (the pipeline refuses it with latents)
    "inpaint_refiner_crop": dict(
        BASE, init_image="init_80x60.png", mask_image="mask_crop_80x60.png", padding_mask_crop=4
    ),
    # a ControlNet on the base only, its window cut by the switch: controlnet_keep over the 4 timesteps strength
    # leaves gives the base's 2 evaluations [0, 1] (over the truncated 2 it would be [0, 0], over all 5 [1, 0])
    "inpaint_controlnet_refiner": dict(
        BASE, **mic.UNIT_A, conditioning_scales=(0.8,), control_guidance_start=(0.2,), control_guidance_end=(0.5,)
    ),
    # two units, ancestral, batch 2: unit a's window [1, 1] over the 4 left ([1, 0] over the truncated 2 or all 5)
    "inpaint_controlnet_refiner_euler_a_batch2": dict(
        BASE, batch_size=2, scheduler=mi.EULER_A, controlnets=("tiny-controlnet", "tiny-controlnet-b"),
        control_images=("control_64.png", "control_64_b.png"), conditioning_scales=(0.7, 0.5),
        control_guidance_start=(0.0, 0.25), control_guidance_end=(0.5, 1.0),
    ),
}
EVALUATIONS = {  # base | refiner timesteps
    "inpaint_refiner": ([601, 401], [201, 1]),
    "inpaint_refiner_euler_a_batch2": ([601, 401], [201, 1]),
    "inpaint_refiner_dpmpp_2m": ([665, 499], [333, 167]),
    "inpaint_refiner_heun": ([601, 401, 401], [401, 201, 201, 1, 1]),
    "inpaint9_refiner": ([601, 401], [201, 1]),
    "inpaint_refiner_blur": ([601, 401], [201, 1]),
    "inpaint_refiner_crop": ([601, 401], [201, 1]),
    "inpaint_controlnet_refiner": ([601, 401], [201, 1]),
    "inpaint_controlnet_refiner_euler_a_batch2": ([601, 401], [201, 1]),
}


class Capture(mi.Capture):
    """make_inpaint.Capture, with a prepare_mask_latents record that takes a refiner call's masked_image None (the
    image is latents) and the `sample` of every UNet call."""

    def __enter__(self):
        super().__enter__()
        pipe = self.pipe
        orig = type(pipe).prepare_mask_latents.__get__(pipe)

        def prepare_mask_latents(mask, masked_image, *args, **kwargs):
            self.phase = "prepare_mask_latents"
            out = orig(mask, masked_image, *args, **kwargs)
            self.mask_calls.append(
                dict(mask_in=mask.clone(), masked_image=masked_image, mask=out[0].clone(), masked_image_latents=out[1])
            )
            self.phase = "loop"
            return out

        self._patch(pipe, "prepare_mask_latents", prepare_mask_latents)
        self.hooks.append(pipe.unet.register_forward_pre_hook(lambda mod, a: self.unet_samples.append(a[0].clone())))
        self.unet_samples = []
        return self


def crop_inputs(pipe, image, mask, p: dict):
    """padding_mask_crop's preprocessing done beforehand, with the pipeline's own processors: (crops_coords, the init
    image and the mask cropped and resized to W x H with resize_mode "fill")."""
    W, H = p["width"], p["height"]
    crops = pipe.mask_processor.get_crop_region(mask, W, H, pad=p["padding_mask_crop"])
    cut_image = pipe.image_processor.resize(image.crop(crops), H, W, resize_mode="fill")
    cut_mask = pipe.mask_processor.resize(mask.crop(crops), H, W, resize_mode="fill")
    return crops, cut_image, cut_mask


def overlay(pipe, mask, image, out, crops):
    """diffusers' ending with padding_mask_crop: the output (np in [0, 1]) as PIL images, the init image composited
    over them through the mask (image_processor.apply_overlay). Returns uint8 [B, H0, W0, 3]."""
    import numpy as np
    import torch

    pils = pipe.image_processor.numpy_to_pil(out)
    done = [pipe.image_processor.apply_overlay(mask, image, im, crops) for im in pils]
    return torch.from_numpy(np.stack([np.asarray(im) for im in done]))


def check_crop_composition(base, image, mask, p: dict) -> None:
    """The composition of crop_inputs and overlay around the base call alone equals diffusers' base call with
    padding_mask_crop (output_type "pil") byte for byte."""
    import torch

    q = {k: v for k, v in p.items() if k != "padding_mask_crop"}
    own = i2i.call_pipeline(base, q, mi.call_args(q, image, mask, padding_mask_crop=p["padding_mask_crop"]), "pil")
    crops, cut_image, cut_mask = crop_inputs(base, image, mask, p)
    composed = i2i.call_pipeline(base, q, mi.call_args(q, cut_image, cut_mask))
    got = overlay(base, mask, image, composed["image"].numpy(), crops)
    assert torch.equal(got, own["image_u8"]), (got.shape, own["image_u8"].shape)
    print(f"  crop composition: {list(got.shape)} equal to the pipeline's padding_mask_crop output", flush=True)


def run_case(bases: dict, refiner, folder: Path, name: str, with_controlnet: bool = True):
    """Run case `name` (the recipe: base with denoising_end, refiner with denoising_start on its latents; a case with
    ControlNets on bases["cn<K>"], the ControlNet inpaint pipeline, unless `with_controlnet` is False). Returns
    (tensors, metadata, [per unit the (inputs, outputs) of its first active evaluation])."""
    import diffusers
    import numpy as np
    import torch

    p = i2i.case_params(name, CASES)
    units = p.get("controlnets", ()) if with_controlnet else ()
    if units:
        p = mic.case_params(name, CASES)
    B, H, W = p["batch_size"], p["height"], p["width"]
    h, w = H // 8, W // 8
    rows = 2 * B
    K = len(units)
    base = bases[f"cn{K}"] if units else bases["9" if "unet" in p else "4"]
    nets = (list(base.controlnet.nets) if K > 1 else [base.controlnet]) if units else []
    nine = base.unet.config.in_channels == 9
    sched_cls = getattr(diffusers, p.get("scheduler", i2i.EULER))
    image, mask = cn.load_image(folder / "img2img" / p["init_image"]), mcr.case_mask(folder, p)
    if "padding_mask_crop" in p:
        check_crop_composition(base, image, mask, p)
        crops, image_in, mask_in = crop_inputs(base, image, mask, p)
    else:
        image_in, mask_in = image, mask
    controls = [cn.load_image(folder / "controlnet" / f) for f in p["control_images"]] if units else []

    saved = base.scheduler, refiner.scheduler
    base.scheduler = sched_cls.from_config(base.scheduler.config)
    refiner.scheduler = sched_cls.from_config(refiner.scheduler.config)
    steps: list = []

    def on_step_end(_pipe, i, _t, kwargs):
        steps.append(kwargs["latents"].clone())
        return kwargs

    generator = goldens.generators(p["seed"], B)  # the same object(s) for both calls
    common = dict(
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        guidance_scale=p["guidance_scale"],
        num_inference_steps=p["steps"],
        num_images_per_prompt=B,
        generator=generator,
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        mask_image=mask_in,
        height=H,
        width=W,
        strength=p["strength"],
    )
    try:
        with torch.no_grad():
            extra = mic.controlnet_args(p, controls) if units else {}
            with mic.Capture(base, sched_cls, nets) if units else Capture(base, sched_cls) as bcap:
                handed = base(**common, **extra, image=image_in, denoising_end=SWITCH, output_type="latent").images
            n_base = len(steps)
            with Capture(refiner, sched_cls) as rcap:
                out = refiner(**common, image=handed, denoising_start=SWITCH, output_type="np").images
    finally:
        base.scheduler, refiner.scheduler = saved
    t: dict = {}
    base_ts, ref_ts = [u["timestep"] for u in bcap.unet], [u["timestep"] for u in rcap.unet]
    assert (base_ts, ref_ts) == EVALUATIONS[name], (name, base_ts, ref_ts)
    t["base_timesteps"] = torch.tensor(base_ts, dtype=torch.float32)
    t["refiner_timesteps"] = torch.tensor(ref_ts, dtype=torch.float32)
    Lb, Lr = len(base_ts), len(ref_ts)
    assert n_base == Lb and len(steps) == Lb + Lr and torch.equal(handed, steps[Lb - 1])

    # the base: its start, its mask, its image latents (4-channel)
    assert len(bcap.prepared) == 1
    t["noised_latents"] = bcap.prepared[0][0]
    m = bcap.mask_calls[0]["mask"][:1].clone()
    t["mask_latents"] = m
    assert m.shape == (1, 1, h, w)
    keep = (m == 0).expand(B, 4, h, w)
    if not nine:
        image_latents = bcap.prepared[0][2]
        t["image_latents"] = image_latents
        # after the base's last evaluation the unmasked cells are the clean image latents (the truncated list)
        assert torch.equal(handed[keep], image_latents[keep]), name
        # what a last-step test against the whole schedule would have blended instead
        fresh = sched_cls.from_config(base.scheduler.config)
        fresh.set_timesteps(p["steps"])
        base_end = i2i.t_start(p) * fresh.order + Lb
        if hasattr(fresh, "set_begin_index"):
            fresh.set_begin_index(base_end)
        noised = fresh.add_noise(image_latents, bcap.prepared[0][1], fresh.timesteps[base_end : base_end + 1])
        print(f"  {name}: a whole-schedule last step would move the handed-over latents' unmasked cells by up to"
              f" {float((noised - image_latents)[keep].abs().max()):.3f}", flush=True)
    else:
        assert not bcap.loop_add_noise
    t["handed_over"] = handed.clone()
    firsts = check_base_controlnets(p, bcap, base, controls, mask, Lb, rows, t) if units else []

    # the refiner: the handed-over latents as image, image_latents and start; no encode; its noise is its draw
    assert len(rcap.preprocessed) == 1 and torch.equal(rcap.preprocessed[0], handed)
    assert not rcap.encoder_in and not rcap.moments and not rcap.posterior_noise
    assert len(rcap.prepared) == 1
    r_latents, r_noise, r_image_latents = rcap.prepared[0]
    assert torch.equal(r_latents, handed) and torch.equal(r_image_latents, handed)
    t["refiner_noise"] = r_noise
    assert len(rcap.mask_calls) == 1
    mc = rcap.mask_calls[0]
    assert mc["masked_image"] is None and mc["masked_image_latents"] is None
    assert torch.equal(mc["mask"][:1], m), "the refiner's mask is the base's"
    ref_draws = [d for d in rcap.draws if d["phase"] == "prepare_latents"]
    assert len(ref_draws) == 1 and ref_draws[0]["source"] == "pipeline" and torch.equal(ref_draws[0]["out"], r_noise)
    for s in rcap.unet_samples:
        assert s.shape == (rows, 4, h, w), s.shape

    # every refiner step: (1 - m) x add_noise(handed, refiner noise, timesteps[i + 1]) + m x step output
    fresh = sched_cls.from_config(refiner.scheduler.config)
    fresh.set_timesteps(p["steps"])
    r_first = len(fresh.timesteps) - Lr
    assert [float(x) for x in fresh.timesteps[r_first:]] == ref_ts
    assert len(rcap.steps) == Lr and len(rcap.loop_add_noise) == Lr - 1
    for i in range(Lr):
        if i < Lr - 1:
            an = rcap.loop_add_noise[i]
            assert torch.equal(an["original"], handed) and torch.equal(an["noise"], r_noise)
            assert an["timesteps"].tolist() == [ref_ts[i + 1]], (an["timesteps"], ref_ts)
            again = sched_cls.from_config(refiner.scheduler.config)
            again.set_timesteps(p["steps"])
            if hasattr(again, "set_begin_index"):
                again.set_begin_index(r_first + i + 1)
            assert torch.equal(again.add_noise(handed, r_noise, an["timesteps"]), an["out"])
            proper = an["out"]
        else:
            proper = handed
        assert torch.equal(steps[Lb + i], (1 - m) * proper + m * rcap.steps[i]), (name, i)
    # printed: the refiner's blend with the init image's latents instead of the handed-over ones
    if not nine:
        diff = float((handed - t["image_latents"])[keep].abs().max())
        print(f"  {name}: handed-over vs init image latents outside the mask: max |diff| {diff:.3g}", flush=True)

    # draws per generator: the base's, then the refiner's noise and step noise
    per = mi.redrawn(bcap.draws + rcap.draws, p["seed"], B, name)
    ancestral = sched_cls.__name__ == mi.EULER_A
    first = ["image posterior", "noise", "masked-image posterior"]
    for i in range(B):
        want = (first if i == 0 else ["noise"]) + ["step noise"] * (Lb if ancestral else 0)
        want += ["noise"] + ["step noise"] * (Lr if ancestral else 0)
        assert [d for d, _ in per[i]] == want, (name, i, [d for d, _ in per[i]])
    assert torch.equal(torch.cat([per[i][(len(per[i]) - (Lr if ancestral else 0) - 1)][1] for i in range(B)]), r_noise)

    tid = rcap.unet[0]["time_ids"]
    assert tid.shape == (rows, 5), tid.shape
    assert tid[0].tolist() == [H, W, 0, 0, 2.5] and tid[B].tolist() == [H, W, 0, 0, 6.0], tid
    t["refiner_add_neg_time_ids"], t["refiner_add_time_ids"] = tid[:1].clone(), tid[B : B + 1].clone()
    for i, lat in enumerate(steps):
        t[f"latents_step_{i}"] = lat
    if "padding_mask_crop" in p:
        t["image_u8"] = overlay(refiner, mask, image, out, crops)
    else:
        t["image"] = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
        t["image_u8"] = torch.from_numpy((out * 255).round().astype("uint8"))
    meta = dict(i2i.case_meta(p), mask_image=p["mask_image"], refiner=REFINER, refiner_start=repr(SWITCH))
    meta["base_steps"] = str(Lb)
    if "unet" in p:
        meta["unet"] = p["unet"]
    if "padding_mask_crop" in p:
        meta["padding_mask_crop"] = str(p["padding_mask_crop"])
    if "mask_blur" in p:
        meta["mask_blur"] = repr(p["mask_blur"])
    if units:
        meta.update(mic.controlnet_meta(p))
    return {k: v.detach().contiguous() for k, v in t.items()}, meta, firsts


def check_base_controlnets(p: dict, bcap, base, controls: list, mask, Lb: int, rows: int, t: dict) -> list:
    """The base's ControlNets (make_inpaint_controlnet.Capture's records): at the base's Lb evaluations each unit got
    the UNet's 4-channel sample, timestep, text conditioning and time ids and its control image repeated to every
    row, at the scale conditioning_scale x controlnet_keep[i], controlnet_keep built over the timesteps strength
    leaves (before denoising_end cuts the list). Sets t["controlnet_scales"] [Lb, K]; returns the units' first active
    evaluations (for make_controlnet.check_onnx)."""
    import torch

    K = len(controls)
    fresh = type(base.scheduler).from_config(base.scheduler.config)
    fresh.set_timesteps(p["steps"])
    left = len(fresh.timesteps) - i2i.t_start(p) * fresh.order
    windows = list(zip(p["control_guidance_start"], p["control_guidance_end"]))

    def scales(n: int, first: int = 0) -> list:
        """The scales at the base's evaluations with controlnet_keep over n timesteps, the base's first at `first`."""
        keep = [cn.controlnet_keep(n, s, e) for s, e in windows]
        return [[p["conditioning_scales"][k] * keep[k][first + i] for k in range(K)] for i in range(Lb)]

    got = [[bcap.cn_calls[k][i]["scale"] for k in range(K)] for i in range(Lb)]
    assert all(len(calls) == Lb for calls in bcap.cn_calls) and got == scales(left), (got, scales(left))
    # the switch cuts the window: over the truncated list, or over the whole schedule, the scales would differ
    truncated, whole = scales(Lb), scales(len(fresh.timesteps), len(fresh.timesteps) - left)
    assert truncated != got and whole != got, (got, truncated, whole)
    print(f"  ControlNet scales at the base's evaluations {got} (over the truncated list: {truncated}, over the whole"
          f" schedule: {whole})", flush=True)
    t["controlnet_scales"] = torch.tensor(got, dtype=torch.float32)
    firsts = []
    for k in range(K):
        pre = mic.expected_control(p, controls[k], mask)
        for i, rec in enumerate(bcap.cn_calls[k]):
            assert torch.equal(rec["sample"], bcap.samples[i][:, :4]), (k, i)
            assert rec["timestep"] == bcap.unet[i]["timestep"]
            assert torch.equal(rec["ehs"], bcap.unet_kwargs[i]["ehs"])
            assert torch.equal(rec["time_ids"], bcap.unet[i]["time_ids"])
            assert torch.equal(rec["cond"], pre.repeat(rows, 1, 1, 1)), (k, i)
        firsts.append(next(r["io"] for r in bcap.cn_calls[k] if "io" in r))
    return firsts


def main() -> None:
    args, cases = c.fixtures_args(__doc__, CASES)
    for folder, name in (("img2img", "init_64.png"), ("inpaint", "mask_crop_80x60.png"), (REFINER, "unet"),
                         ("controlnet", "tiny-controlnet")):
        assert (args.out / folder / name).exists(), f"{args.out / folder / name}: run the other make_*.py first"
    from diffusers import StableDiffusionXLControlNetInpaintPipeline as cn_pipeline
    from diffusers import StableDiffusionXLInpaintPipeline

    model = c.load_pipeline(args.model)
    refiner = mi.refiner_inpaint_pipeline(stages.build_refiner(model))
    nets = {n: cn.build_controlnet(model.unet, seed) for n, seed in cn.UNITS.items()}
    bases = {
        "4": mi.inpaint_pipeline(model),
        "9": i2i.img2img_pipeline(model, StableDiffusionXLInpaintPipeline, unet=miu.build_inpaint_unet(model)),
        # a list: the pipeline wraps it in a MultiControlNetModel
        "cn1": i2i.img2img_pipeline(model, cn_pipeline, controlnet=nets["tiny-controlnet"]),
        "cn2": i2i.img2img_pipeline(model, cn_pipeline, controlnet=[nets["tiny-controlnet"], nets["tiny-controlnet-b"]]),
    }
    for name in cases:
        tensors, meta, firsts = run_case(bases, refiner, args.out, name)
        shown = sorted(k for k in tensors if not k.startswith("latents_step_"))
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        if firsts:
            for unit, first in zip(json.loads(meta["controlnets"]), firsts):
                cn.check_onnx(args.out / "controlnet", name, unit, first)
            # the ControlNets must matter (a test that drops them must fail)
            without, _, _ = run_case(bases, refiner, args.out, name, with_controlnet=False)
            assert tensors["noised_latents"].equal(without["noised_latents"]), name
            mean, worst, lat = i2i.difference(tensors, without)
            print(f"  {name}: |image_u8 - without ControlNet|: mean {mean:.1f}/255, max {worst:.0f}/255; last latents"
                  f" max |diff| {lat:.3f}", flush=True)
            assert worst >= 5.0, (name, mean, worst)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
