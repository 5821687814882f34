"""Write the goldens of inpainting with ControlNets: diffusers 0.42.1's StableDiffusionXLControlNetInpaintPipeline
(pipelines/controlnet/pipeline_controlnet_inpaint_sd_xl.py; fp32, CPU, 1 thread, no watermark,
requires_aesthetics_score False) on the torch tiny model's components (make_img2img.img2img_pipeline), with
make_controlnet.py's tiny ControlNets (rebuilt from their seeds by make_controlnet.build_controlnet; the script runs
tests/fixtures/controlnet/<unit>/model.onnx on the inputs the pipeline gave the torch ones) and, for inpaint9_*,
make_inpaint_unet.py's 9-channel UNet. No new fixture files besides the goldens: the init images (img2img/), masks
(inpaint/) and control images (controlnet/) are make_img2img.py's, make_inpaint.py's / make_inpaint_crop.py's and
make_controlnet.py's.

What this pipeline does that make_inpaint.py's StableDiffusionXLInpaintPipeline does not (read side by side; checked
below on every case):
  - the ControlNet(s) run before every UNet call on the 4-channel scaled latents (`control_model_input` =
    `latent_model_input` before the 9-channel concatenation), with the UNet's text conditioning and time ids; their
    residuals x conditioning scale x controlnet_keep[i] are summed (MultiControlNetModel) and added to the UNet's
  - controlnet_keep is built over the timesteps LEFT after strength (get_timesteps), as the ControlNet img2img
    pipeline does (make_img2img.py's img2img_controlnet), not over the whole schedule
  - the control image: control_image_processor.preprocess(image, height, width, crops_coords, resize_mode): resized
    to width x height with Lanczos (no normalization: [0, 1]), or with padding_mask_crop cropped to the mask's crop
    region (the init image's and mask's crops_coords, in the control image's own pixels) and resized with
    resize_mode "fill", exactly as the init image is; repeated to the batch, twice with CFG
  - the image processor converts to RGB (do_convert_rgb=True; the inpaint pipeline's does not): the same for RGB PNGs
  - everything else is the inpaint pipeline's: prepare_latents (image posterior with generator[0], noise,
    is_strength_max: noise x init_noise_sigma), prepare_mask_latents (the masked image's posterior, generator[0]),
    the draws per generator, the timesteps, the blend after every step with a 4-channel UNet, the 9-channel UNet's
    input, the time ids (H, W, 0, 0, H, W), the default strength 0.9999, apply_overlay with padding_mask_crop
  - guess_mode (inpaint_controlnet_guess): as in the text-to-image pipeline, but this pipeline has no
    `guess_mode = guess_mode or global_pool_conditions` line: a pooled ControlNet (inpaint_controlnet_pool) is run
    on both halves, its residuals only pooled

Cases (base: make_inpaint.py's BASE, i.e. goldens.py's cfg_neg: prompt, negative "blurry, low quality", guidance 5,
seed 0, init_64.png, mask_64.png, 64x64):

  case                          UNet  scheduler        steps strength  units (image, scale, window)
  inpaint_controlnet            4-ch  Euler            5     0.8       tiny-controlnet (control_64, 0.8, 0.2-0.8):
                                                                       4 evaluations, keep [0, 1, 1, 0] (over the
                                                                       whole 5-step list it would be [0, 1, 1, 1])
  inpaint_controlnet_full       4-ch  Euler            4     1.0       tiny-controlnet (control_64, 1.0, 0-1)
  inpaint_controlnet_batch2     4-ch  Euler ancestral  5     0.8       batch 2 (seeds 0, 1), two units:
                                                                       tiny-controlnet (control_64, 0.7, 0-1) and
                                                                       tiny-controlnet-b (control_64_b, 0.5, 0.3-1)
  inpaint9_controlnet           9-ch  Euler            5     0.8       tiny-controlnet (control_64, 0.8, 0-1)
  inpaint_controlnet_crop       4-ch  Euler            5     0.8       init_80x60, mask_crop_80x60 (mode L, blurred
                                                                       edges), padding_mask_crop 4 at 64x64 (region
                                                                       (30, 1, 80, 51)), tiny-controlnet
                                                                       (control_80x60, 0.9, 0-1): the control image
                                                                       is cut to the region and "fill"-resized
  inpaint_controlnet_guess      4-ch  Euler            5     0.8       inpaint_controlnet with guess_mode=True
  inpaint_controlnet_pool       4-ch  Euler            5     0.8       tiny-controlnet-pool (control_64_b, 0.9,
                                                                       0-1), guess_mode not passed: no guess mode

Tensors per case (float32 unless noted): latents_step_0 .. latents_step_{L-1} (callback_on_step_end's latents, after
the blend), image [B,H,W,3] and image_u8 uint8 (output_type "np"; the crop case: output_type "pil", only image_u8
[1,60,80,3], the overlaid output), noised_latents [B,4,h,w] (the loop's start), timesteps [L], mask_latents
[1,1,h,w], add_time_ids [1,6], control_image_<k> [1,3,H,W] (unit k's preprocessed control image) and
controlnet_scales [L,K] (the scale each unit's forward got at each evaluation).
Metadata: make_inpaint.py's (make_img2img.case_meta + mask_image), make_controlnet.py's unit keys (controlnets,
control_images, conditioning_scales, control_guidance_start, control_guidance_end: JSON lists), unet
(tiny-sdxl-inpaint-unet) for inpaint9_*, padding_mask_crop for the crop case.

Checks (asserted): each unit's forward got the 4-channel scaled latents (for inpaint9_controlnet the UNet's sample's
first 4 channels; for a 4-channel UNet the UNet's sample itself), the UNet's text conditioning and time ids, the
control image (its preprocessed tensor repeated to 2B rows), the scale conditioning_scale x controlnet_keep over the L
evaluations left (make_controlnet.controlnet_keep(L, ...)); the control image's preprocessing equals Pillow's Lanczos
to W x H (or crop + VaeImageProcessor.resize "fill") / 255; the draws per generator are the inpaint pipeline's
(make_inpaint.checked_draws); the same request on the inpaint pipeline without ControlNet (make_inpaint.py's /
make_inpaint_unet.py's pipeline) starts from the same latents bit for bit and its image differs by >= 5/255 (max);
the ONNX ControlNets vs torch on the first active evaluation's inputs <= 1e-4 relative. Two runs write identical
bytes.

Usage: python make_inpaint_controlnet.py [--model DIR] [--out tests/fixtures] [--cases inpaint_controlnet,...]
       (--out must hold tiny-sdxl/, controlnet/, img2img/, inpaint/ and tiny-sdxl-inpaint-unet/ already:
       make_controlnet.py, make_img2img.py, make_inpaint.py, make_inpaint_unet.py, make_inpaint_crop.py)
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import _common as c
import make_controlnet as cn
import make_img2img as i2i
import make_inpaint as mi
import make_inpaint_unet as mu

UNIT_A = dict(controlnets=("tiny-controlnet",), control_images=("control_64.png",))
CASES = {
    "inpaint_controlnet": dict(
        mi.BASE, steps=5, strength=0.8, **UNIT_A, conditioning_scales=(0.8,), control_guidance_start=(0.2,),
        control_guidance_end=(0.8,),
    ),
    "inpaint_controlnet_full": dict(mi.BASE, steps=4, strength=1.0, **UNIT_A, conditioning_scales=(1.0,)),
    "inpaint_controlnet_batch2": dict(
        mi.BASE, batch_size=2, steps=5, strength=0.8, scheduler=mi.EULER_A,
        controlnets=("tiny-controlnet", "tiny-controlnet-b"), control_images=("control_64.png", "control_64_b.png"),
        conditioning_scales=(0.7, 0.5), control_guidance_start=(0.0, 0.3), control_guidance_end=(1.0, 1.0),
    ),
    "inpaint9_controlnet": dict(mi.BASE, steps=5, strength=0.8, **UNIT_A, conditioning_scales=(0.8,), unet=mu.UNET_DIR),
    "inpaint_controlnet_crop": dict(
        mi.BASE, init_image="init_80x60.png", mask_image="mask_crop_80x60.png", padding_mask_crop=4, steps=5,
        strength=0.8, controlnets=("tiny-controlnet",), control_images=("control_80x60.png",),
        conditioning_scales=(0.9,),
    ),
    # guess_mode=True: the ControlNet on the conditional half only, residuals x logspace(-1, 0, 7) x scale
    "inpaint_controlnet_guess": dict(
        mi.BASE, steps=5, strength=0.8, **UNIT_A, conditioning_scales=(0.8,), control_guidance_start=(0.2,),
        control_guidance_end=(0.8,), guess_mode=True,
    ),
    # a pooled (global_pool_conditions) ControlNet, guess_mode not asked: this pipeline, unlike the text-to-image and
    # image-to-image ones, does not turn guess mode on for it (no `guess_mode or global_pool_conditions` line), so
    # the ControlNet sees both halves and only pools its residuals
    "inpaint_controlnet_pool": dict(
        mi.BASE, steps=5, strength=0.8, controlnets=("tiny-controlnet-pool",), control_images=("control_64_b.png",),
        conditioning_scales=(0.9,),
    ),
}


def case_params(name: str, cases: dict | None = None) -> dict:
    """make_img2img.case_params with the units' default windows (0 to 1); `cases` defaults to CASES."""
    p = i2i.case_params(name, CASES if cases is None else cases)
    K = len(p["controlnets"])
    p.setdefault("control_guidance_start", (0.0,) * K)
    p.setdefault("control_guidance_end", (1.0,) * K)
    return p


class Capture(mi.Capture):
    """make_inpaint.Capture, plus every UNet call's sample, the control image processor's outputs and every
    ControlNet forward's arguments (sample, timestep, text conditioning, control image, scale) per unit."""

    def __init__(self, pipe, sched_cls, nets):
        super().__init__(pipe, sched_cls)
        self.nets = nets

    def __enter__(self):
        from diffusers import ControlNetModel

        super().__enter__()
        self.samples, self.control, self.cn_calls = [], [], [[] for _ in self.nets]
        self.unet_kwargs = []
        pipe = self.pipe

        def unet_pre(_mod, args, kwargs):
            self.samples.append(args[0].clone())
            self.unet_kwargs.append(dict(ehs=kwargs["encoder_hidden_states"].clone()))

        self.hooks.append(pipe.unet.register_forward_pre_hook(unet_pre, with_kwargs=True))
        if not self.nets:
            return self  # the plain inpaint pipeline
        orig = pipe.control_image_processor.preprocess

        def control_preprocess(*args, **kwargs):
            out = orig(*args, **kwargs)
            self.control.append(dict(out=out.clone(), kwargs=dict(kwargs)))
            return out

        self._patch(pipe.control_image_processor, "preprocess", control_preprocess)
        signature = inspect.signature(ControlNetModel.forward)

        def recorder(k):
            def hook(module, args, kwargs, output):
                a = signature.bind(module, *args, **kwargs).arguments
                rec = {"scale": float(a["conditioning_scale"]), "sample": a["sample"].clone(),
                       "timestep": float(a["timestep"]), "cond": a["controlnet_cond"].clone(),
                       "ehs": a["encoder_hidden_states"].clone(),
                       "time_ids": a["added_cond_kwargs"]["time_ids"].clone(),
                       "guess_mode": bool(a.get("guess_mode"))}
                if rec["scale"] != 0.0 and not any(r["scale"] != 0.0 for r in self.cn_calls[k]):
                    rec["io"] = cn.controlnet_io(a, rec["scale"], output)
                self.cn_calls[k].append(rec)

            return hook

        self.hooks += [net.register_forward_hook(recorder(k), with_kwargs=True) for k, net in enumerate(self.nets)]
        return self


def load_inputs(folder: Path, p: dict):
    image = cn.load_image(folder / "img2img" / p["init_image"])
    mask = mi.load_mask(folder / "inpaint" / p["mask_image"])
    controls = [cn.load_image(folder / "controlnet" / f) for f in p["control_images"]]
    return image, mask, controls


def controlnet_args(p: dict, controls: list) -> dict:
    """The pipeline call's ControlNet arguments for case parameters `p` (case_params'): one unit as scalars, more as
    lists (a MultiControlNetModel)."""
    K = len(controls)
    return dict(
        control_image=controls[0] if K == 1 else controls,
        controlnet_conditioning_scale=p["conditioning_scales"][0] if K == 1 else list(p["conditioning_scales"]),
        control_guidance_start=p["control_guidance_start"][0] if K == 1 else list(p["control_guidance_start"]),
        control_guidance_end=p["control_guidance_end"][0] if K == 1 else list(p["control_guidance_end"]),
        **({"guess_mode": p["guess_mode"]} if "guess_mode" in p else {}),
    )


def controlnet_meta(p: dict) -> dict:
    """The golden metadata of the ControlNet units of case parameters `p` (JSON lists, as the Rust tests read them)."""
    meta = dict(
        controlnets=json.dumps(list(p["controlnets"])),
        control_images=json.dumps(list(p["control_images"])),
        conditioning_scales=json.dumps([float(s) for s in p["conditioning_scales"]]),
        control_guidance_start=json.dumps([float(s) for s in p["control_guidance_start"]]),
        control_guidance_end=json.dumps([float(s) for s in p["control_guidance_end"]]),
    )
    if p.get("guess_mode"):
        meta["guess_mode"] = "true"
    return meta


def call_args(p: dict, image, mask, controls: list | None) -> dict:
    extra = {"padding_mask_crop": p["padding_mask_crop"]} if "padding_mask_crop" in p else {}
    if controls is not None:
        extra.update(controlnet_args(p, controls))
    return mi.call_args(p, image, mask, **extra)


def expected_control(p: dict, control, mask):
    """The control image as it should reach the ControlNet, made here without the pipeline: Pillow's Lanczos to
    W x H (or, with padding_mask_crop, cut to get_crop_region's box and VaeImageProcessor.resize "fill"), / 255."""
    import numpy as np
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    W, H = p["width"], p["height"]
    if "padding_mask_crop" in p:
        proc = VaeImageProcessor(vae_scale_factor=8)
        region = proc.get_crop_region(mask, W, H, pad=p["padding_mask_crop"])
        img = proc.resize(control.crop(region), H, W, resize_mode="fill")
    else:
        img = control if control.size == (W, H) else control.resize((W, H), Image.LANCZOS)
    a = np.asarray(img.convert("RGB")).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def run_case(pipes: dict, nets: dict, folder: Path, name: str, with_controlnet: bool = True):
    """Run case `name` on the ControlNet inpaint pipeline (or, `with_controlnet` False, the plain inpaint pipeline);
    returns (tensors, metadata, [per unit the (inputs, outputs) of its first active evaluation])."""
    import diffusers
    import torch

    p = case_params(name)
    B, H, W = p["batch_size"], p["height"], p["width"]
    h, w = H // 8, W // 8
    rows = 2 * B if p["guidance_scale"] > 1.0 else B
    nine = "unet" in p
    sched_cls = getattr(diffusers, p.get("scheduler", i2i.EULER))
    units = [nets[n] for n in p["controlnets"]]
    K = len(units)
    if with_controlnet:
        pipe = pipes[("controlnet", nine, tuple(p["controlnets"]))]
    else:
        pipe = pipes[("plain", nine)]
        units = []
    image, mask, controls = load_inputs(folder, p)
    call = call_args(p, image, mask, controls if with_controlnet else None)
    crop = "padding_mask_crop" in p
    with Capture(pipe, sched_cls, units) as cap:
        t = i2i.call_pipeline(pipe, p, call, output_type="pil" if crop else "np")
    evaluated = [u["timestep"] for u in cap.unet]
    L = len(evaluated)
    t["timesteps"] = torch.tensor(evaluated, dtype=torch.float32)
    assert len(cap.prepared) == 1
    t["noised_latents"], t["noise"] = cap.prepared[0][0], cap.prepared[0][1]
    assert t["noised_latents"].shape == (B, 4, h, w)
    ml = cap.mask_calls[0]["mask"]
    t["mask_latents"] = ml[:1].clone()
    tid = cap.unet[0]["time_ids"]
    assert tid.shape[0] == rows and bool((tid == tid[:1]).all()) and tid[0].tolist() == [H, W, 0, 0, H, W], tid
    t["add_time_ids"] = tid[:1].clone()
    # the draws per generator: the inpaint pipeline's (make_inpaint.checked_draws redraws them from fresh
    # generators and checks that nothing else drew)
    full = p["strength"] == 1.0
    first_draws = ([] if (full and nine) else ["image posterior"]) + ["noise", "masked-image posterior"]
    n_step = L if sched_cls.__name__ == mi.EULER_A else 0
    per = mi.checked_draws(cap.draws, p, name, first_draws, n_step)
    # the 4-channel UNet blends after every step (make_inpaint.py's rule, recomputed from scheduler.step's output);
    # the 9-channel UNet takes the latents, the mask and the masked image's latents, and no blend
    assert len(cap.samples) == L and len(cap.steps) == L
    for i, s in enumerate(cap.samples):
        assert s.shape == (rows, 9 if nine else 4, h, w), s.shape
    if nine:
        assert not cap.loop_add_noise
        assert all(torch.equal(t[f"latents_step_{i}"], cap.steps[i]) for i in range(L))
    else:
        m = t["mask_latents"]
        for i in range(L):
            proper = cap.loop_add_noise[i]["out"] if i < L - 1 else cap.prepared[0][2]
            assert torch.equal(t[f"latents_step_{i}"], (1 - m) * proper + m * cap.steps[i]), (name, i)

    meta = dict(i2i.case_meta(p), mask_image=p["mask_image"])
    if nine:
        meta["unet"] = p["unet"]
    if crop:
        meta["padding_mask_crop"] = str(p["padding_mask_crop"])
    firsts = []
    if with_controlnet:
        keep = [cn.controlnet_keep(L, s, e) for s, e in zip(p["control_guidance_start"], p["control_guidance_end"])]
        scales = [[p["conditioning_scales"][k] * keep[k][i] for k in range(K)] for i in range(L)]
        got = [[cap.cn_calls[k][i]["scale"] for k in range(K)] for i in range(L)]
        assert all(len(calls) == L for calls in cap.cn_calls) and got == scales, (got, scales)
        t["controlnet_scales"] = torch.tensor(got, dtype=torch.float32)
        assert len(cap.control) == K
        for k in range(K):
            pre = cap.control[k]["out"]
            assert pre.shape == (1, 3, H, W)
            assert torch.equal(pre, expected_control(p, controls[k], mask)), (name, k)
            t[f"control_image_{k}"] = pre
            # guess mode with CFG: the conditional half's rows only (this pipeline: guess_mode as asked, whatever
            # the ControlNet's global_pool_conditions)
            half = rows - B if p.get("guess_mode") and rows == 2 * B else 0
            for i, rec in enumerate(cap.cn_calls[k]):
                assert rec["guess_mode"] == bool(p.get("guess_mode")), (name, k, i)
                # the ControlNet gets the 4 scaled latent channels (the 9-channel UNet's first 4), the UNet's
                # timestep, text conditioning and time ids, and the control image repeated to every row
                assert torch.equal(rec["sample"], cap.samples[i][half:, :4]), (name, k, i)
                assert rec["timestep"] == evaluated[i]
                assert torch.equal(rec["ehs"], cap.unet_kwargs[i]["ehs"][half:])
                assert torch.equal(rec["time_ids"], cap.unet[i]["time_ids"][half:])
                assert torch.equal(rec["cond"], pre.repeat(rows - half, 1, 1, 1)), (name, k, i)
            firsts.append(next(r["io"] for r in cap.cn_calls[k] if "io" in r))
        meta.update(controlnet_meta(p))
    del t["noise"]  # checked above (checked_draws); the tests need the latents, not the draws
    return {k: v.detach().contiguous() for k, v in t.items()}, meta, firsts


def main() -> None:
    from diffusers import StableDiffusionXLControlNetInpaintPipeline, StableDiffusionXLInpaintPipeline

    args, cases = c.fixtures_args(__doc__, CASES)
    for folder, name in (("controlnet", "tiny-controlnet"), ("img2img", "init_64.png"), ("inpaint", "mask_64.png"),
                         ("inpaint", "mask_crop_80x60.png"), (mu.UNET_DIR, "unet")):
        assert (args.out / folder / name).exists(), f"{args.out / folder / name}: run the other make_*.py first"
    base = c.load_pipeline(args.model)
    nets = {n: cn.build_controlnet(base.unet, seed, pooled=n in cn.POOLED) for n, seed in cn.UNITS.items()}
    unet9 = mu.build_inpaint_unet(base)
    pipes = {}
    for nine in (False, True):
        unet = {"unet": unet9} if nine else {}
        pipes[("plain", nine)] = i2i.img2img_pipeline(base, StableDiffusionXLInpaintPipeline, **unet)
        for units in {tuple(CASES[name]["controlnets"]) for name in cases}:
            # more than one: a list, which the pipeline wraps in a MultiControlNetModel
            controlnet = nets[units[0]] if len(units) == 1 else [nets[u] for u in units]
            pipes[("controlnet", nine, units)] = i2i.img2img_pipeline(
                base, StableDiffusionXLControlNetInpaintPipeline, controlnet=controlnet, **unet
            )
    for name in cases:
        p = case_params(name)
        tensors, meta, firsts = run_case(pipes, nets, args.out, name)
        for unit, first in zip(p["controlnets"], firsts):
            cn.check_onnx(args.out / "controlnet", name, unit, first, bool(p.get("guess_mode")))
        without, _, _ = run_case(pipes, nets, args.out, name, with_controlnet=False)
        assert "noised_latents" not in tensors or tensors["noised_latents"].equal(without["noised_latents"]), name
        mean, worst, lat = i2i.difference(tensors, without)
        shown = sorted(k for k in tensors if not k.startswith("latents_step_"))
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        print(
            f"  {name}: {len(tensors['timesteps'])} evaluations, scales {tensors['controlnet_scales'].tolist()};"
            f" |image_u8 - without ControlNet|: mean {mean:.1f}/255, max {worst:.0f}/255; last latents max |diff|"
            f" {lat:.3f}",
            flush=True,
        )
        # the ControlNet must matter (a test that drops it must fail)
        assert worst >= 5.0, (name, mean, worst)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
