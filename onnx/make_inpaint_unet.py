"""Write the 9-channel inpainting UNet fixture and diffusers' SDXL inpainting goldens made with it.

Model (tests/fixtures/tiny-sdxl-inpaint-unet/unet/: model.onnx, inline, + config.json; only the UNet: tests pair it
with tiny-sdxl's text encoders, tokenizers, VAE and scheduler, as diffusers/stable-diffusion-xl-1.0-inpainting-0.1
pairs its UNet with SDXL base's):

  the tiny UNet's config (build_tiny.py) with in_channels 9 (4 latents + 1 mask + 4 masked-image latents, diffusers'
  layout of an inpainting UNet), built under torch.manual_seed(UNET_SEED) (diffusers' / torch's default init, so
  conv_in weighs all 9 input channels alike), then build_tiny.perturb_constant_params with seed PERTURB_SEED +
  UNET_SEED; exported as export_onnx.py exports a UNet (no constant folding, initializers named after the
  parameters, fp32, opset 18): `sample` [B,9,height,width], the other inputs and `out_sample` [B,4,height,width] as
  the 4-channel UNet's. The ONNX graph is checked against torch on export_onnx's trace inputs.

Goldens (tests/fixtures/goldens/<case>.safetensors): diffusers 0.42.1's StableDiffusionXLInpaintPipeline (fp32, CPU,
1 thread, no watermark, requires_aesthetics_score False) on the torch tiny model's components with this UNet
(_common.pipeline_from_base(unet=)), called as make_inpaint.py calls it (init image from tests/fixtures/img2img/, mask
from tests/fixtures/inpaint/, height / width, strength, generators as goldens.py); cfg_neg's prompts, guidance 5.0,
seed 0, 64x64:

  case                scheduler                              steps  strength  evaluations (timesteps)
  inpaint9            Euler                                  5      0.8       4 (601, 401, 201, 1)
  inpaint9_full       Euler                                  4      1.0       4 (751, 501, 251, 1)
  inpaint9_batch2     EulerAncestral, batch 2 (seeds 0, 1)   5      0.8       4 (601, 401, 201, 1)
  inpaint9_dpmpp_2m   DPMSolverMultistepScheduler            5      0.8       4 (665, 499, 333, 167)
(all with init_64.png and mask_64.png; timesteps as img2img: make_img2img.py)

What the pipeline does with num_channels_unet == 9 (pipeline_stable_diffusion_xl_inpaint.py, verified by the checks
below):
  mask and masked_image: as make_inpaint.py documents (mask_processor, then masked_image = init_image * (mask < 0.5),
    -0.0 where the init image is negative)
  prepare_latents (return_image_latents False): the init image is encoded (its posterior drawn, generator[0] only
    with a list: the image has batch 1) ONLY when strength < 1 (`not is_strength_max`), for add_noise; then noise =
    randn [B,4,h,w] (row i from generator i); the starting latents are add_noise(image_latents, noise, first
    timestep), or at strength 1.0 noise x init_noise_sigma with the image never encoded
  prepare_mask_latents: the mask latents (nearest interpolate, repeated to B, twice with CFG) and masked_image_latents
    = scaling_factor x a posterior sample of masked_image (generator[0] only), repeated to B, twice with CFG
  loop: every UNet call gets cat([scheduler.scale_model_input(cat([latents] * 2), t), mask, masked_image_latents],
    dim=1): 9 channels, in that order; no blend after the scheduler step (the 4-channel path's only)
Draws per generator, in order (every randn_tensor call in the VAE, pipeline and scheduler modules logged, redrawn from
fresh generators bit for bit, and the used generators' final states equal the fresh ones'):
  strength < 1, generator 0: image posterior, noise[0], masked-image posterior, step noise[0] x L (Euler ancestral)
  strength 1.0, generator 0: noise[0], masked-image posterior (no image posterior: a different order from the
                             4-channel pipeline's, which encodes the image at any strength)
  generator i > 0:           noise[i], step noise[i] x L
(all [1,4,h,w]; L the evaluations; no step noise with Euler or DPM++ 2M)

Tensors per case (float32 unless noted; h, w = H/8, W/8; B the batch):
  init_image, mask, mask_latents, masked_image    as make_inpaint.py's
  encoder_moments [1,8,h,w], encoder_noise [1,4,h,w], image_latents [B,4,h,w]
                                   the init image's encoding (strength < 1 only; repeated to B)
  noise [B,4,h,w], noised_latents [B,4,h,w]
                                   prepare_latents' randn and the loop's starting latents
  masked_encoder_moments [1,8,h,w], masked_encoder_noise [1,4,h,w]
                                   the VAE encoder's output for masked_image and its posterior's randn
  masked_image_latents [1,4,h,w]   scaling_factor x (mean + exp(0.5 x clamp(logvar, -30, 20)) x masked_encoder_noise)
  timesteps [L], add_time_ids [1,6], latents_step_0 .. latents_step_{L-1} [B,4,h,w] (the scheduler's output: no
  blend), image [B,H,W,3], image_u8 uint8 [B,H,W,3]
Metadata: make_inpaint.py's (goldens.py's keys, init_image, mask_image, strength, scheduler when not Euler) and unet
(the fixture folder holding the UNet).

Checks (asserted): the draws above; the encoder inputs (init_image only when strength < 1, then masked_image);
image_latents and masked_image_latents from their moments and draws; every UNet call's sample is [2B,9,h,w] with
channel 4 the mask latents and channels 5..8 masked_image_latents in every row, and the first call's latent channels
are a fresh scheduler's scale_model_input of the starting latents (twice); the starting latents recomputed (a fresh
scheduler's add_noise, or noise x init_noise_sigma); no add_noise call in the loop and every latents_step_i is the
scheduler step's output; the timesteps from a fresh scheduler; the ONNX vae_encoder on masked_image (and init_image)
vs torch's moments <= 1e-4 relative; the init image matters: the same case with a flat grey init image changes the
image by >= 5/255 (max; at strength 1.0 the init image reaches the UNet only through masked_image_latents). Two runs
write identical bytes.

Measured here (printed): |image_u8 - with a grey init image| mean (max) /255, and the last latents' max |diff|:
  inpaint9 0.9 (6), 0.28   inpaint9_full 0.5 (6), 0.17   inpaint9_batch2 1.0 (8), 0.29   inpaint9_dpmpp_2m 0.7 (5), 0.27
The random tiny VAE decoder keeps little of any latent difference (make_inpaint.py: it keeps nothing of the init
image), so the images move by a few /255 while the latents, which the Rust tests check to 1e-4, move by 0.17 or more.
(Scaling conv_in's weights on the mask and masked-image channels by 4 or 10 moves the images by 13/255 at most:
not worth leaving diffusers' default init for.)

Usage: python make_inpaint_unet.py [--model DIR] [--out tests/fixtures] [--cases inpaint9,...]
       (--out must hold tiny-sdxl/, img2img/ and inpaint/ already: make_img2img.py, make_inpaint.py)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import _common as c
import make_img2img as i2i
import make_inpaint as mi

UNET_SEED = 41
UNET_DIR = "tiny-sdxl-inpaint-unet"  # tests/fixtures/<UNET_DIR>/unet/

BASE = mi.BASE  # cfg_neg's prompts, guidance, seed; init_64.png, mask_64.png
CASES = {
    "inpaint9": dict(BASE, steps=5, strength=0.8),
    # is_strength_max: the loop starts from noise x init_noise_sigma and the init image is never encoded
    "inpaint9_full": dict(BASE, steps=4, strength=1.0),
    "inpaint9_batch2": dict(BASE, batch_size=2, steps=5, strength=0.8, scheduler=mi.EULER_A),
    "inpaint9_dpmpp_2m": dict(BASE, steps=5, strength=0.8, scheduler="DPMSolverMultistepScheduler"),
}


# ---------------------------------------------------------------------------------------------------------------
# model


def build_inpaint_unet(base):
    """The tiny UNet's architecture with 9 input channels, its parameters drawn from UNET_SEED."""
    import torch
    from build_tiny import PERTURB_SEED, perturb_constant_params
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in dict(base.unet.config).items() if not k.startswith("_")}
    config["in_channels"] = 9
    torch.manual_seed(UNET_SEED)
    unet = UNet2DConditionModel(**config)
    perturb_constant_params(unet, torch.Generator("cpu").manual_seed(PERTURB_SEED + UNET_SEED))
    return unet.eval()


def export_unet(pipe, out: Path) -> None:
    """Export `pipe`'s UNet as export_onnx.py exports a UNet into out/UNET_DIR/unet/ (model.onnx + config.json)."""
    import export_onnx as e

    dst = out / UNET_DIR
    shutil.rmtree(dst, ignore_errors=True)
    spec = e.component_spec(pipe, "unet", None)
    e.export_graph(spec, dst / "unet" / "model.onnx", fold=False, external=None)
    e.write_component_config(pipe, "unet", None, dst)
    diff = e.check_graph(spec, dst / "unet" / "model.onnx")
    n_params = sum(p.numel() for p in pipe.unet.parameters())
    size = sum(f.stat().st_size for f in (dst / "unet").iterdir())
    print(f"  {UNET_DIR}: seed {UNET_SEED}, {n_params:,} parameters, {size:,} bytes, max |ORT - torch| {diff:.3g}")
    assert diff < 1e-4, diff


# ---------------------------------------------------------------------------------------------------------------
# goldens


class Capture(mi.Capture):
    """make_inpaint.Capture, plus the `sample` of every UNet call."""

    def __enter__(self):
        super().__enter__()
        self.samples = []
        self.hooks.append(self.pipe.unet.register_forward_pre_hook(lambda mod, a: self.samples.append(a[0].clone())))
        return self


def posterior_latents(pipe, moments, noise):
    """scaling_factor x (mean + exp(0.5 x clamp(logvar, -30, 20)) x noise), as _encode_vae_image computes it."""
    import torch

    mean, logvar = moments.chunk(2, dim=1)
    return pipe.vae.config.scaling_factor * (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise)


def fresh_scheduler(pipe, sched_cls, p: dict):
    """A new `sched_cls` on the pipeline's config, its timesteps set and its begin index at the first evaluation."""
    fresh = sched_cls.from_config(pipe.scheduler.config)
    fresh.set_timesteps(p["steps"])
    if hasattr(fresh, "set_begin_index"):
        fresh.set_begin_index(i2i.t_start(p) * fresh.order)
    return fresh


def run_case(pipe, folder: Path, name: str, grey: bool = False) -> tuple[dict, dict, dict]:
    """Run case `name` (`grey`: with a flat grey init image instead); returns (tensors, metadata, {draw names per
    generator})."""
    import diffusers
    import torch

    p = i2i.case_params(name, CASES)
    B, H, W = p["batch_size"], p["height"], p["width"]
    h, w = H // 8, W // 8
    rows = 2 * B if p["guidance_scale"] > 1.0 else B
    full = p["strength"] == 1.0
    sched_cls = getattr(diffusers, p.get("scheduler", i2i.EULER))
    image, mask = i2i.init_image(folder / "img2img", p, grey), mi.load_mask(folder / "inpaint" / p["mask_image"])
    call = mi.call_args(p, image, mask)
    with Capture(pipe, sched_cls) as cap:
        t = i2i.call_pipeline(pipe, p, call)
    evaluated = [u["timestep"] for u in cap.unet]
    t["timesteps"] = torch.tensor(evaluated, dtype=torch.float32)
    L = len(evaluated)

    # the init image and the mask, preprocessed once each; masked_image = init_image * (mask < 0.5)
    assert len(cap.preprocessed) == 1 and len(cap.masks) == 1 and len(cap.mask_calls) == 1
    t["init_image"], t["mask"] = cap.preprocessed[0], cap.masks[0]
    mc = cap.mask_calls[0]
    t["masked_image"] = mc["masked_image"]
    assert torch.equal(t["masked_image"], t["init_image"] * (t["mask"] < 0.5))
    ml = mc["mask"]
    assert ml.shape == (rows, 1, h, w) and bool((ml == ml[:1]).all()), ml.shape
    t["mask_latents"] = ml[:1].clone()
    assert torch.equal(t["mask_latents"], torch.nn.functional.interpolate(t["mask"], size=(h, w)))

    # the init image is encoded only for add_noise (strength < 1), once, with generator[0]
    assert len(cap.encoder_in) == len(cap.moments) == len(cap.posterior_noise) == (0 if full else 1)
    assert len(cap.prepared) == 1 and len(cap.prepared[0]) == 2  # (latents, noise): no image_latents returned
    t["noised_latents"], t["noise"] = cap.prepared[0]
    if not full:
        assert torch.equal(cap.encoder_in[0], t["init_image"])
        t["encoder_moments"], t["encoder_noise"] = cap.moments[0], cap.posterior_noise[0]
        t["image_latents"] = posterior_latents(pipe, t["encoder_moments"], t["encoder_noise"]).repeat(B, 1, 1, 1)
    # the masked image: encoded once with generator[0]; its latents repeated to every UNet row
    assert len(cap.mask_encoder_in) == len(cap.mask_moments) == 1
    assert torch.equal(cap.mask_encoder_in[0], t["masked_image"])
    t["masked_encoder_moments"] = cap.mask_moments[0]
    masked_draws = [d for d in cap.draws if d["phase"] == "prepare_mask_latents"]
    assert len(masked_draws) == 1 and masked_draws[0]["source"] == "posterior"
    t["masked_encoder_noise"] = masked_draws[0]["out"]
    t["masked_image_latents"] = posterior_latents(pipe, t["masked_encoder_moments"], t["masked_encoder_noise"])
    mil = mc["masked_image_latents"]
    assert mil.shape == (rows, 4, h, w) and torch.equal(mil, t["masked_image_latents"].repeat(rows, 1, 1, 1))

    # every draw, per generator, redrawn from fresh generators; no other draw took place
    n_step = L if sched_cls.__name__ == mi.EULER_A else 0
    first_draws = ([] if full else ["image posterior"]) + ["noise", "masked-image posterior"]
    per = mi.checked_draws(cap.draws, p, name, first_draws, n_step)
    noise_at = first_draws.index("noise")
    assert torch.equal(torch.cat([per[i][noise_at if i == 0 else 0][1] for i in range(B)]), t["noise"])

    # the starting latents, from a fresh scheduler
    fresh = fresh_scheduler(pipe, sched_cls, p)
    first = i2i.t_start(p) * fresh.order
    assert evaluated == [float(x) for x in fresh.timesteps[first:]], (evaluated, fresh.timesteps)
    if full:
        assert not cap.add_noise and torch.equal(t["noised_latents"], t["noise"] * fresh.init_noise_sigma)
    else:
        assert len(cap.add_noise) == 1 and torch.equal(cap.add_noise[0]["image_latents"], t["image_latents"])
        first_t = fresh.timesteps[first : first + 1].repeat(B)
        assert torch.equal(fresh.add_noise(t["image_latents"], t["noise"], first_t), t["noised_latents"])

    # the UNet's 9 channels: scaled latents (twice with CFG), the mask, the masked image's latents; no blend
    assert len(cap.samples) == L
    for s in cap.samples:
        assert s.shape == (rows, 9, h, w), s.shape
        assert torch.equal(s[:, 4:5], ml) and torch.equal(s[:, 5:], mil)
    scaled = fresh_scheduler(pipe, sched_cls, p).scale_model_input(
        torch.cat([t["noised_latents"]] * (rows // B)), fresh.timesteps[first]
    )
    assert torch.equal(cap.samples[0][:, :4], scaled)
    assert not cap.loop_add_noise and len(cap.steps) == L
    for i in range(L):
        assert torch.equal(t[f"latents_step_{i}"], cap.steps[i]), (name, i)

    tid = cap.unet[0]["time_ids"]
    assert tid.shape[0] == rows and tid[0].tolist() == [H, W, 0, 0, H, W], tid
    t["add_time_ids"] = tid[:1].clone()

    meta = dict(i2i.case_meta(p), mask_image=p["mask_image"], unet=UNET_DIR)
    draws = {i: [d for d, _ in per[i]] for i in range(B)}
    return {k: v.detach().contiguous() for k, v in t.items()}, meta, draws


def main() -> None:
    from diffusers import StableDiffusionXLInpaintPipeline

    args, cases = c.fixtures_args(__doc__, CASES)
    for folder, name in (("img2img", "init_64.png"), ("inpaint", "mask_64.png"), ("tiny-sdxl", "vae_encoder")):
        assert (args.out / folder / name).exists(), f"{args.out / folder / name}: run make_img2img.py / make_inpaint.py"
    base = c.load_pipeline(args.model)
    unet = build_inpaint_unet(base)
    pipe = i2i.img2img_pipeline(base, StableDiffusionXLInpaintPipeline, unet=unet)
    assert pipe.unet is unet and pipe.unet.config.in_channels == 9
    export_unet(pipe, args.out)
    for name in cases:
        tensors, meta, draws = run_case(pipe, args.out, name)
        if "encoder_moments" in tensors:
            i2i.check_encoder(args.out / "tiny-sdxl", name, tensors)
        masked = {"init_image": tensors["masked_image"], "encoder_moments": tensors["masked_encoder_moments"]}
        i2i.check_encoder(args.out / "tiny-sdxl", f"{name} (masked image)", masked)
        grey, _, _ = run_case(pipe, args.out, name, grey=True)
        mean, worst, lat = i2i.difference(tensors, grey)
        shown = sorted(k for k in tensors if not k.startswith("latents_step_"))
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        print(
            f"  {name}: {len(tensors['timesteps'])} evaluations {[round(x, 6) for x in tensors['timesteps'].tolist()]};"
            f" draws per generator {draws}; |image_u8 - with a grey init image|: mean {mean:.1f}/255, max"
            f" {worst:.0f}/255; last latents max |diff| {lat:.3f}",
            flush=True,
        )
        # the init image must matter, also at strength 1 where only the masked image's latents carry it
        assert worst >= 5.0, (name, mean, worst)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
