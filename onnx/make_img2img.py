"""Write the image-to-image fixtures: two init images and diffusers' SDXL img2img goldens.

Init images (tests/fixtures/img2img/; drawn with PIL / numpy, no random numbers; PNG RGB):

  init_64.png          64x64, picture-like: smooth gradients different in R, G and B (a horizontal / vertical ramp, a
                       soft bright spot in B) under sharp coloured shapes (red square, yellow disc, green triangle, a
                       white 2-px line, a dark blue frame), so a channel-order swap changes the result
  init_80x60.png       80 wide x 60 high, other content with fine detail: a diagonal gradient, a 4-px black / white
                       checker, 1-px lines, an orange disc, a purple block; used for a 96x64 request, so the resize
                       matters

Goldens (tests/fixtures/goldens/<case>.safetensors): diffusers' StableDiffusionXLImg2ImgPipeline (fp32, CPU, 1 thread,
no watermark, requires_aesthetics_score False, force_zeros_for_empty_prompt as the base model) built from the torch
tiny model's components (build_tiny.py), its EulerDiscreteScheduler unless a case names another class (then
`cls.from_config(pipe.scheduler.config)`). Base case: goldens.py's cfg_neg (prompt, negative "blurry, low quality",
guidance 5.0, seed 0, 64x64, batch 1). The init image is passed as the PIL image loaded from the PNG; the img2img
pipeline takes no width / height, so a case whose size differs from its image's gets the image already resized with
Pillow's Lanczos (`img.resize((W, H), Image.LANCZOS)`), which the script checks equals what diffusers'
`image_processor.preprocess(img, height=H, width=W)` makes of the original. Generators as goldens.py: one
torch.Generator("cpu").manual_seed(seed) for batch 1, a list of seed + i for batch > 1.

diffusers' get_timesteps: init = min(int(steps x strength), steps) (float64 product, truncated), t_start = steps - init;
the loop runs over the scheduler's timesteps[t_start x order :] (scheduler.set_begin_index(t_start x order)), and the
starting latents are scheduler.add_noise(image_latents, noise, that list's first timestep).

  case                  scheduler                        steps  strength  evaluations (timesteps)
  img2img               Euler                            5      0.6       3 (401, 201, 1)
  img2img_euler_a       EulerAncestralDiscreteScheduler  6      0.5       3 (333, 167, 1)
  img2img_ddim          DDIMScheduler                    6      0.5       3 (333, 167, 1)
  img2img_dpmpp_2m      DPMSolverMultistepScheduler      6      0.5       3 (427, 285, 143)
  img2img_dpmpp_single  DPMSolverSinglestepScheduler     6      0.5       3 (500, 333, 166)
  img2img_unipc         UniPCMultistepScheduler          6      0.5       3 (427, 285, 143)
  img2img_lms           LMSDiscreteScheduler             6      0.5       3 (333, 167, 1)
  img2img_heun          HeunDiscreteScheduler            6      0.5       5 (333, 167, 167, 1, 1)
  img2img_kdpm2         KDPM2DiscreteScheduler           6      0.5       5 (333, 243.545, 167, 21.442, 1)
  img2img_kdpm2_a       KDPM2AncestralDiscreteScheduler  6      0.5       5 (333, 167, 167, 0.99999797, 1)
  img2img_resized       Euler, 96x64, init_80x60.png     4      0.75      3 (501, 251, 1)
  img2img_batch2        EulerAncestral, batch 2          5      0.7       3 (401, 201, 1); 5 x 0.7 = 3.5 -> 3
  img2img_full          Euler                            3      1.0       3 (667, 334, 1): leading spacing, so even
                                                                          strength 1 starts at 667, not 999
  img2img_low_strength  Euler                            25     0.12      3 (81, 41, 1); 25 x 0.12 = 3.0 in float64,
                                                                          2.99999993 with 0.12 as a float32 (-> 2)
  img2img_controlnet    Euler + tiny-controlnet          5      0.8       4 (601, 401, 201, 1)
  img2img_controlnet_guess  the same with guess_mode=True (the ControlNet on the conditional half only, residuals
                        x logspace(-1, 0, 7) x 0.8; metadata guess_mode "true")
  img2img_refiner       Euler, then the tiny refiner     10     0.6       4 + 2 (501, 401, 301, 201 | 101, 1)
  img2img_refiner_full  Euler, then the tiny refiner     10     1.0       8 + 2 (901, …, 201 | 101, 1)
  img2img_refiner_base_no_step
                        Euler, then the tiny refiner     10     0.15      0 + 2 (| 101, 1): init noised at 1
  img2img_vae_tiled     Euler, 128x96, init_64.png,      4      0.75      3 (501, 251, 1)
                        vae.enable_tiling()
  img2img_on_refiner    Euler, the tiny refiner alone    10     0.3       3 (201, 101, 1)
  img2img_on_refiner_batch2
                        EulerAncestral, the tiny         6      0.5       3 (333, 167, 1)
                        refiner alone, batch 2

(The second-order schedulers' lists start at index 2 x t_start = 6, the second entry of the pair at 333 in Heun's
list; 2 (steps - t_start) - 1 evaluations. DPMSolverSinglestepScheduler logs that it sets lower_order_final=True.)

img2img_controlnet: StableDiffusionXLControlNetImg2ImgPipeline with make_controlnet.py's tiny-controlnet (rebuilt by
make_controlnet.build_controlnet from seed 31; the script runs tests/fixtures/controlnet/tiny-controlnet/model.onnx on
the inputs the pipeline gave the torch ControlNet and requires max |diff| / max(1, max |torch|) <= 1e-4), control image
tests/fixtures/controlnet/control_64.png (`control_image=`), init_64.png (`image=`), controlnet_conditioning_scale
0.8, control_guidance_start 0.3, control_guidance_end 1.0. This pipeline computes controlnet_keep over the TRUNCATED
list (the 4 evaluations left after strength), not over all 5 steps as the text-to-image ControlNet pipeline does:
keep = [0, 0, 1, 1] (i / 4 < 0.3 for i = 0, 1), so controlnet_scales = [0, 0, 0.8, 0.8] (over the whole list and cut
it would be [0, 0.8, 0.8, 0.8]). time ids' original size is the control image's size.
img2img_refiner: make_stages.py's ensemble of experts (make_stages.run_refiner, make_stages.build_refiner: the torch
model of tests/fixtures/tiny-sdxl-refiner/) with the img2img pipeline as the base: image=init_64.png, strength 0.6,
10 steps, denoising_end 0.8, output_type "latent" (of the 6 timesteps left after strength, the 4 >= 200), then the
refiner with denoising_start 0.8 on those latents (timesteps < 200: 101, 1), same prompts, guidance and generator
object. img2img_refiner_full: the same at strength 1 (the base runs the schedule's first 8 timesteps).
img2img_refiner_base_no_step: strength 0.15 leaves the base one timestep (1), below the switch; diffusers' img2img
pipeline noises the init latents at that timestep before it cuts its list at denoising_end, so the base runs no step
and hands over the init latents noised at 1; the refiner (add_noise False with denoising_start) denoises them from 101.
img2img_on_refiner, img2img_on_refiner_batch2: the refiner alone refines the init image (the common "refine an
existing image" use): StableDiffusionXLImg2ImgPipeline built from make_stages.build_refiner's components (the torch
model of tests/fixtures/tiny-sdxl-refiner/, requires_aesthetics_score True, text_encoder_2 only, the base model's
VAE), default aesthetic scores: time ids (H, W, 0, 0, 6.0) on the positive rows and (H, W, 0, 0, 2.5) on the negative
ones (add_time_ids, add_neg_time_ids [1,5]); metadata model "tiny-sdxl-refiner".
img2img_vae_tiled: `pipe.vae.enable_tiling()` for the call (disabled after), so diffusers' AutoencoderKL.encode runs
_tiled_encode (the image is larger than the tiny VAE's sample_size 64 both ways): 64-px pixel tiles every 48 px, rows
at 0 and 48, columns at 0, 48 and 96 (the last 32 px wide), each through encoder + quant_conv alone, the moments
blended over int(8 x 0.25) = 2 latent lines with the tile above and to the left (blend_v, blend_h) and each tile's
top-left 6 x 6 kept; the decode is tiled too (tiled_decode, as make_stages.py's vae_tiled).

Tensors per case (float32 unless noted; batch dimension kept; h, w = H/8, W/8):
  init_image [1,3,H,W]              the preprocessed init image the pipeline encoded (VaeImageProcessor.preprocess:
                                    / 255, * 2 - 1: in [-1, 1])
  encoder_moments [E,8,h,w]         the VAE encoder's output (quant_conv's: mean and logvar concatenated on dim 1,
                                    the ONNX vae_encoder's `latent_parameters`; with tiling, AutoencoderKL._encode's:
                                    the tiles' moments blended and joined); E = 1, or B with a list of generators
                                    (diffusers then encodes image[i:i+1] once per generator; the rows are equal)
  encoder_noise [B,4,h,w]           the randn the posterior sample drew (DiagonalGaussianDistribution.sample)
  image_latents [B,4,h,w]           scaling_factor * (mean + exp(0.5 * clamp(logvar, -30, 20)) * encoder_noise),
                                    checked bit for bit (the tiny VAE has no latents_mean / latents_std)
  noise [B,4,h,w]                   the randn add_noise used
  noised_latents [B,4,h,w]          the loop's starting latents: scheduler.add_noise(image_latents, noise, first
                                    timestep), checked bit for bit against a fresh scheduler with the same begin index
  timesteps [L]                     the timesteps the UNet was evaluated at (img2img_refiner: base_timesteps [4] and
                                    refiner_timesteps [2] instead, as make_stages.py's refiner goldens)
  add_time_ids [1,6]                the base UNet's time ids (H, W, 0, 0, H, W: original and target size are the
                                    latents' size x 8)
  latents_step_0 .. latents_step_{L-1} [B,4,h,w]
                                    latents after every loop iteration (img2img_refiner: the base's 4, then the
                                    refiner's 2)
  image [B,H,W,3]                   output_type "np", in [0,1]
  image_u8 uint8 [B,H,W,3]          (image * 255).round()
  img2img_controlnet adds control_image_0 [1,3,H,W] (the preprocessed control image, in [0, 1]) and
  controlnet_scales [L,1] (the conditioning scale the ControlNet's forward got at each evaluation);
  img2img_vae_tiled adds encoder_moments_untiled [1,8,h,w] (encoder + quant_conv on the whole image: what an
  untiled encode gives);
  img2img_refiner adds make_stages.py's refiner tensors (refiner_prompt_embeds [1,77,32],
  refiner_pooled_prompt_embeds [1,32], the negative ones, refiner_add_time_ids / refiner_add_neg_time_ids [1,5]).
Generator draws (checked by redrawing from fresh generators): per generator, first the posterior's randn (shape
[1,4,h,w] per image with a list of generators, [B,4,h,w] with one), then add_noise's, then (ancestral schedulers) the
step noise. With batch 2 (list of generators) generator i draws encoder_noise[i], then noise[i], then its image's step
noise: the same order per image as batch 1.

Metadata (strings): goldens.py's prompt, negative_prompt, guidance_scale (repr(float)), steps, seed, width, height,
batch_size; init_image (file name in tests/fixtures/img2img/), strength (repr(float)), scheduler (class name, only when
not Euler); img2img_controlnet: make_controlnet.py's controlnets, control_images, conditioning_scales,
control_guidance_start, control_guidance_end (JSON lists, one entry per unit); img2img_refiner: refiner,
refiner_start, base_steps (make_stages.py's); img2img_vae_tiled: vae_tiling "true" (make_stages.py's key; the Rust
engine option of that name).

Checks (asserted): the ONNX vae_encoder (tests/fixtures/tiny-sdxl/vae_encoder/model.onnx, onnxruntime) on init_image
vs torch's encoder_moments (encoder_moments_untiled for img2img_vae_tiled): max |diff| / max(1, max |torch|) <= 1e-4
(5.4e-6 at 64x64, 4.2e-6 at 96x64, 8.1e-6 at 128x96 here); the encoder ran once per encode, or with tiling once per
tile on exactly the tile's pixels (img2img_vae_tiled: 6 tiles), and the posterior got quant_conv's output (untiled)
or the blended moments (tiled), which differ from encoder_moments_untiled by max > 0.1 (1.45 here, mean 0.143); the
init image matters: the same request with a flat grey (128, 128, 128) init image instead changes image_u8 by at least
5/255 (max) and 0.5/255 (mean; 5/255 for img2img_low_strength); img2img_full only prints it; the ControlNet matters
(img2img_controlnet without it: max >= 5/255).

Measured here, |image_u8 - the same request with the grey init image|, mean (max), and the last latents' max |diff|:
  img2img 1.5 (14) 0.21, euler_a 1.9 (21), ddim 2.0 (20), dpmpp_2m 1.4 (13), dpmpp_single 1.0 (11), unipc 1.4 (13),
  lms 2.0 (17), heun 2.0 (19), kdpm2 2.0 (17), kdpm2_a 1.8 (22), resized 0.9 (9) 0.17, batch2 1.3 (17), full 0.5 (5)
  0.21, low_strength 8.0 (73) 0.24, controlnet 0.7 (6) 0.21, refiner 1.0 (10) 0.20, vae_tiled 0.8 (7) 0.11,
  on_refiner 3.6 (46) 0.16, on_refiner_batch2 1.8 (19) 0.21 (all /255;
  latents 0.20-0.22 where not given). The tiny model keeps little of the init image in the pixels: its random VAE's
  posterior has std ~1.06 (logvar ~0) while the mean moves by ~0.2 between init_64 and grey, and x 0.13025 that is
  ~0.03 in the latents against noise of sigma ~1-5; the last latents still differ by ~0.2, which the random decoder
  maps to a few /255. Lower strength keeps more (img2img_low_strength). Other sensitivities: R and B of init_64
  swapped change img2img by 1.4/255 (max 12, latents 0.14); a bilinear resize instead of Lanczos changes
  img2img_resized by 0.13/255 (max 2, latents 0.028); controlnet_keep over the whole 5-step list ([0, 0.8, 0.8, 0.8])
  changes img2img_controlnet by 3.3/255 (max 26, latents 0.68); dropping the ControlNet changes it by 3.1/255 (max 26,
  latents 0.67).

Usage: python make_img2img.py [--model DIR] [--out tests/fixtures] [--cases img2img,...]
       (model: build_tiny.py's output; --out must hold tiny-sdxl/ and controlnet/ (make_controlnet.py's) already)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import _common as c
import goldens
import make_controlnet as cn
import make_stages as stages

IMAGES = ("init_64.png", "init_80x60.png")
GREY = (128, 128, 128)  # the flat init image of the "does the init image matter" comparison
EULER = "EulerDiscreteScheduler"
REFINER = "tiny-sdxl-refiner"  # make_stages.py's refiner fixture

BASE_CASE = goldens.CASES["cfg_neg"]  # prompt, negative "blurry, low quality", guidance 5, seed 0
INIT_64 = dict(BASE_CASE, init_image="init_64.png")
SCHEDULERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_single": "DPMSolverSinglestepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "kdpm2": "KDPM2DiscreteScheduler",
    "kdpm2_a": "KDPM2AncestralDiscreteScheduler",
}
CASES = {
    # 5 steps x 0.6: 3 evaluations from the scheduler's 3rd timestep (t_start 2)
    "img2img": dict(INIT_64, steps=5, strength=0.6),
    **{f"img2img_{k}": dict(INIT_64, steps=6, strength=0.5, scheduler=v) for k, v in SCHEDULERS.items()},
    # init_80x60.png resized to 96x64 with Pillow's Lanczos before the pipeline (which takes no width / height)
    "img2img_resized": dict(INIT_64, width=96, height=64, init_image="init_80x60.png", steps=4, strength=0.75),
    "img2img_batch2": dict(INIT_64, batch_size=2, scheduler="EulerAncestralDiscreteScheduler", steps=5, strength=0.7),
    "img2img_full": dict(INIT_64, steps=3, strength=1.0),
    # 25 x 0.12 = 3.0 in float64 (3 evaluations, at timesteps 81, 41, 1); read as a float32, 0.12 x 25 < 3 gives 2.
    # Little noise over the init image: the case where the init image changes the result most
    "img2img_low_strength": dict(INIT_64, steps=25, strength=0.12),
    # StableDiffusionXLControlNetImg2ImgPipeline: controlnet_keep over the 4 evaluations left after strength
    "img2img_controlnet": dict(
        INIT_64,
        steps=5,
        strength=0.8,
        controlnets=("tiny-controlnet",),
        control_images=("control_64.png",),
        conditioning_scales=(0.8,),
        control_guidance_start=0.3,
        control_guidance_end=1.0,
    ),
    # the same with guess_mode=True: the ControlNet on the conditional half only, residuals x logspace(-1, 0, 7)
    "img2img_controlnet_guess": dict(
        INIT_64,
        steps=5,
        strength=0.8,
        controlnets=("tiny-controlnet",),
        control_images=("control_64.png",),
        conditioning_scales=(0.8,),
        control_guidance_start=0.3,
        control_guidance_end=1.0,
        guess_mode=True,
    ),
    # ensemble of experts with img2img as the base: 10 steps x 0.6 = 6 evaluations, 4 before denoising_end 0.8
    "img2img_refiner": dict(INIT_64, steps=10, strength=0.6, refiner="tiny-sdxl-refiner"),
    # strength 1 with a refiner: the base starts at the schedule's first timestep
    "img2img_refiner_full": dict(INIT_64, steps=10, strength=1.0, refiner="tiny-sdxl-refiner"),
    # the base gets no step: strength 0.15 leaves one timestep (1), below the switch (200); the base hands over the
    # init latents noised at 1 and the refiner denoises them from its first timestep (101), adding no noise
    "img2img_refiner_base_no_step": dict(INIT_64, steps=10, strength=0.15, refiner="tiny-sdxl-refiner"),
    # the refiner alone as an image-to-image model (StableDiffusionXLImg2ImgPipeline on the refiner's components, the
    # usual "refine an image" use): its text_encoder_2 only, time ids (h, w, 0, 0, aesthetic score 6 / 2.5);
    # 10 steps x 0.3 = 3 evaluations
    "img2img_on_refiner": dict(INIT_64, steps=10, strength=0.3, model=REFINER),
    # ancestral: the refiner's step noise per generator, after each generator's posterior and add_noise draws
    "img2img_on_refiner_batch2": dict(
        INIT_64, steps=6, strength=0.5, model=REFINER, batch_size=2, scheduler="EulerAncestralDiscreteScheduler"
    ),
    # vae.enable_tiling(): init_64.png resized to 128x96, larger than the tiny VAE's 64-px tiles both ways, so the
    # encode runs 2 x 3 overlapping pixel tiles (and the decode 2 x 3 latent tiles)
    "img2img_vae_tiled": dict(INIT_64, width=128, height=96, steps=4, strength=0.75, vae_tiling=True),
}
# goldens.py's keys of a case (the rest is img2img's, the ControlNet's or the refiner's)
GOLDEN_KEYS = ("prompt", "negative_prompt", "guidance_scale", "steps", "seed", "width", "height", "batch_size")


# ---------------------------------------------------------------------------------------------------------------
# init images


def draw_init_64():
    """Picture-like: smooth gradients in R, G and B (different in each), sharp coloured shapes on top."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:64, 0:64] / 63.0
    r2 = (x - 0.3) ** 2 + (y - 0.25) ** 2
    sky = np.stack([0.25 + 0.6 * x * (1.0 - y), 0.35 + 0.4 * y, 0.9 - 0.5 * y + 0.3 * np.exp(-r2 / 0.05)], axis=-1)
    img = Image.fromarray(np.rint(np.clip(sky, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    d.rectangle((6, 40, 26, 58), fill=(200, 40, 30))
    d.ellipse((36, 8, 56, 28), fill=(250, 210, 40))
    d.polygon([(30, 60), (46, 34), (62, 60)], fill=(30, 120, 60))
    d.line((0, 36, 63, 30), fill=(255, 255, 255), width=2)
    d.rectangle((10, 10, 18, 18), outline=(20, 20, 90), width=2)
    return img


def draw_init_80x60():
    """80 wide x 60 high: a diagonal gradient, a 4-px checker, thin lines and a disc (the resize matters)."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:60, 0:80]
    t = (x + y) / 138.0
    rgb = np.stack([0.8 - 0.5 * t, 0.2 + 0.6 * t, 0.5 + 0.3 * np.cos(6.0 * t)], axis=-1)
    img = Image.fromarray(np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for i in range(7):
        for j in range(6):
            colour = (240, 240, 220) if (i + j) % 2 == 0 else (20, 30, 60)
            d.rectangle((4 + 4 * i, 6 + 4 * j, 7 + 4 * i, 9 + 4 * j), fill=colour)
    d.ellipse((48, 8, 72, 32), fill=(230, 90, 20))
    d.line((36, 56, 78, 38), fill=(0, 0, 0), width=1)
    d.line((40, 4, 44, 58), fill=(255, 255, 0), width=1)
    d.rectangle((8, 40, 30, 54), fill=(90, 40, 160))
    return img


def write_images(folder: Path, drawings: dict | None = None) -> None:
    """Write PNGs {file name: function returning a PIL image} (default: the init images) into `folder`."""
    if drawings is None:
        drawings = dict(zip(IMAGES, (draw_init_64, draw_init_80x60)))
    for name, draw in drawings.items():
        buf = io.BytesIO()
        draw().save(buf, format="PNG", optimize=False)
        c.write_bytes_if_changed(folder / name, buf.getvalue())


def init_image(folder: Path, p: dict, grey: bool = False):
    """The PIL image the pipeline gets for case parameters `p`: the init image file (or a flat grey image of its
    size), resized to width x height with Pillow's Lanczos when the sizes differ."""
    from PIL import Image

    img = cn.load_image(folder / p["init_image"])
    if grey:
        img = Image.new("RGB", img.size, GREY)
    if img.size != (p["width"], p["height"]):
        img = img.resize((p["width"], p["height"]), Image.LANCZOS)
    return img


# ---------------------------------------------------------------------------------------------------------------
# pipelines


def img2img_pipeline(base, cls=None, **kwargs):
    """StableDiffusionXLImg2ImgPipeline (or `cls`, a pipeline class with the same constructor arguments, e.g.
    StableDiffusionXLInpaintPipeline, or StableDiffusionXLControlNetImg2ImgPipeline with controlnet= in `kwargs`) on
    the base pipeline's components (_common.pipeline_from_base), requires_aesthetics_score False."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    cls = cls or StableDiffusionXLImg2ImgPipeline
    return c.pipeline_from_base(base, cls, requires_aesthetics_score=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# goldens


def case_params(name: str, cases: dict | None = None) -> dict:
    return {"width": 64, "height": 64, "batch_size": 1, **(CASES if cases is None else cases)[name]}


def case_meta(p: dict) -> dict:
    """The metadata of case parameters `p`: goldens.py's keys, init_image and strength (when `p` has an init image),
    scheduler (when not Euler)."""
    meta = dict(
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        guidance_scale=repr(float(p["guidance_scale"])),
        steps=str(p["steps"]),
        seed=str(p["seed"]),
        width=str(p["width"]),
        height=str(p["height"]),
        batch_size=str(p["batch_size"]),
    )
    if "init_image" in p:
        meta.update(init_image=p["init_image"], strength=repr(float(p["strength"])))
    if "scheduler" in p:
        meta["scheduler"] = p["scheduler"]
    if p.get("vae_tiling"):
        meta["vae_tiling"] = "true"
    if "model" in p:
        meta["model"] = p["model"]
    return meta


def call_case(pipes: dict, folder: Path, p: dict, kwargs: dict) -> tuple[dict, dict]:
    """Case parameters `p` with the further call arguments `kwargs`, on the pipeline its keys ask for: make_stages.py's
    ensemble of experts (`p["refiner"]`; `kwargs` to both calls) on pipes["base"] and pipes["refiner"],
    image-to-image (`p["init_image"]`, from `folder`/img2img) on pipes["img2img"], else text-to-image on
    pipes["base"]. Returns (tensors, metadata)."""
    if "refiner" in p:
        return stages.run_refiner(pipes["base"], pipes["refiner"], p, base_kwargs=kwargs, refiner_kwargs=kwargs)
    if "init_image" in p:
        image = init_image(folder / "img2img", p)
        return call_pipeline(pipes["img2img"], p, dict(image=image, strength=p["strength"], **kwargs)), case_meta(p)
    return call_pipeline(pipes["base"], p, dict(width=p["width"], height=p["height"], **kwargs)), case_meta(p)


def call_pipeline(pipe, p: dict, call: dict, output_type: str = "np") -> dict:
    """Run case parameters `p` (prompts, guidance, steps, batch, goldens.generators) on `pipe` with the further call
    arguments `call`, the pipeline's scheduler replaced by `cls.from_config(its config)` for the call when `p` names
    a class; returns latents_step_<i> (the latents each loop iteration ends with, as callback_on_step_end sees them),
    image (output_type "np") and image_u8 ((image * 255).round()); with output_type "pil" (what the pipeline's
    apply_overlay needs) only image_u8, the PIL images' bytes."""
    import diffusers
    import numpy as np
    import torch

    saved = pipe.scheduler
    steps: list = []

    def on_step_end(_pipe, i, _t, kwargs):
        assert i == len(steps)
        steps.append(kwargs["latents"].clone())
        return kwargs

    if "scheduler" in p:
        pipe.scheduler = getattr(diffusers, p["scheduler"]).from_config(pipe.scheduler.config)
    try:
        with torch.no_grad():
            out = pipe(
                prompt=p["prompt"],
                negative_prompt=p["negative_prompt"],
                guidance_scale=p["guidance_scale"],
                num_inference_steps=p["steps"],
                num_images_per_prompt=p["batch_size"],
                generator=goldens.generators(p["seed"], p["batch_size"]),
                output_type=output_type,
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                **call,
            ).images
    finally:
        pipe.scheduler = saved
    t = {f"latents_step_{i}": lat for i, lat in enumerate(steps)}
    if output_type == "pil":
        t["image_u8"] = torch.from_numpy(np.stack([np.asarray(im) for im in out]))
        return t
    t["image"] = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    t["image_u8"] = torch.from_numpy((out * 255).round().astype("uint8"))
    return t


def encoder_tiles(vae, x) -> list:
    """The pixel tiles AutoencoderKL._tiled_encode gives the encoder, row by row: tile_sample_min_size squares (cut
    at the image's edges) every int(tile_sample_min_size * (1 - tile_overlap_factor)) pixels."""
    size = vae.tile_sample_min_size
    stride = int(size * (1 - vae.tile_overlap_factor))
    rows, cols = range(0, x.shape[2], stride), range(0, x.shape[3], stride)
    return [x[:, :, i : i + size, j : j + size] for i in rows for j in cols]


def t_start(p: dict) -> int:
    """diffusers' get_timesteps: the first step left after `strength` (times the scheduler's order in the list)."""
    return p["steps"] - min(int(p["steps"] * p["strength"]), p["steps"])


class Capture:
    """Records, while installed on an img2img pipeline, what the pipeline did with its init image: the preprocessed
    image, the VAE encoder's inputs and moments per encoder call (per tile with tiling), the moments the posterior
    got (`AutoencoderKL._encode`'s output: tiles blended), the posterior's randn, add_noise's inputs and output, every
    UNet call's timestep and time ids (and a ControlNet's scales and control image)."""

    def __init__(self, pipe, net=None):
        self.pipe, self.net = pipe, net
        self.preprocessed, self.control, self.encoder_in, self.moments, self.posterior_noise = [], [], [], [], []
        self.encoded = []
        self.add_noise, self.unet, self.cn_calls = [], [], []

    def __enter__(self):
        import inspect

        import diffusers.models.autoencoders.vae as vae_module
        import torch

        pipe, vae = self.pipe, self.pipe.vae
        self.orig_preprocess = pipe.image_processor.preprocess
        self.orig_prepare = pipe.prepare_latents
        orig_randn = vae_module.randn_tensor

        def preprocess(*args, **kwargs):
            out = self.orig_preprocess(*args, **kwargs)
            self.preprocessed.append(out.clone())
            return out

        def posterior_randn(*args, **kwargs):
            out = orig_randn(*args, **kwargs)
            self.posterior_noise.append(out.clone())
            return out

        def prepare_latents(*args, **kwargs):
            sched = pipe.scheduler
            orig_add = sched.add_noise

            def add_noise(original, noise, timesteps):
                out = orig_add(original, noise, timesteps)
                self.add_noise.append(dict(image_latents=original.clone(), noise=noise.clone(),
                                           timesteps=timesteps.clone(), noised=out.clone(), scheduler=sched))
                return out

            orig_encode = vae._encode

            def encode(x):
                out = orig_encode(x)
                self.encoded.append(out.clone())
                return out

            hooks = [
                vae.encoder.register_forward_pre_hook(lambda mod, a: self.encoder_in.append(a[0].clone())),
                vae.quant_conv.register_forward_hook(lambda mod, a, out: self.moments.append(out.clone())),
            ]
            sched.add_noise = add_noise
            vae_module.randn_tensor = posterior_randn
            vae._encode = encode
            try:
                return self.orig_prepare(*args, **kwargs)
            finally:
                del vae._encode
                vae_module.randn_tensor = orig_randn
                del sched.add_noise
                for h in hooks:
                    h.remove()

        def record_unet(_mod, args, kwargs):
            self.unet.append({"timestep": float(args[1]), "time_ids": kwargs["added_cond_kwargs"]["time_ids"]})

        pipe.image_processor.preprocess = preprocess
        pipe.prepare_latents = prepare_latents
        self.hooks = [pipe.unet.register_forward_pre_hook(record_unet, with_kwargs=True)]
        if self.net is not None:
            from diffusers import ControlNetModel

            self.orig_control = pipe.control_image_processor.preprocess
            signature = inspect.signature(ControlNetModel.forward)

            def control_preprocess(*args, **kwargs):
                out = self.orig_control(*args, **kwargs)
                self.control.append(out.clone())
                return out

            def record_cn(module, args, kwargs, output):
                a = signature.bind(module, *args, **kwargs).arguments
                rec = {"scale": float(a["conditioning_scale"])}
                # the first evaluation with a scale other than 0: the ONNX check's inputs and outputs
                if rec["scale"] != 0.0 and not any(r["scale"] != 0.0 for r in self.cn_calls):
                    rec["inputs"], rec["outputs"] = cn.controlnet_io(a, rec["scale"], output)
                self.cn_calls.append(rec)

            pipe.control_image_processor.preprocess = control_preprocess
            self.hooks.append(self.net.register_forward_hook(record_cn, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        del self.pipe.image_processor.preprocess
        del self.pipe.prepare_latents
        if self.net is not None:
            del self.pipe.control_image_processor.preprocess
        return False


def run_case(pipes: dict, refiner, folder: Path, name: str, grey: bool = False) -> tuple[dict, dict, list]:
    """Run case `name` (`grey`: with a flat grey init image instead); returns (tensors, metadata, the ControlNet's
    (inputs, outputs) at its first active evaluation, or [])."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    p = case_params(name)
    B, H, W = p["batch_size"], p["height"], p["width"]
    h, w = H // 8, W // 8
    cfg = p["guidance_scale"] > 1.0
    image = init_image(folder / "img2img", p, grey)
    net = pipes["controlnet"].controlnet if "controlnets" in p else None
    on_refiner = p.get("model") == REFINER
    pipe = refiner if on_refiner else pipes["controlnet" if net is not None else "img2img"]
    call = dict(image=image, strength=p["strength"])
    if net is not None:
        assert p["controlnets"] == ("tiny-controlnet",), p["controlnets"]
        call.update(
            control_image=cn.load_image(folder / "controlnet" / p["control_images"][0]),
            controlnet_conditioning_scale=p["conditioning_scales"][0],
            control_guidance_start=p["control_guidance_start"],
            control_guidance_end=p["control_guidance_end"],
        )
        if "guess_mode" in p:
            call["guess_mode"] = p["guess_mode"]
    meta: dict = {}
    tiled = bool(p.get("vae_tiling"))
    if tiled:
        pipe.vae.enable_tiling()
    try:
        with Capture(pipe, net) as cap:
            if "refiner" in p:
                assert p["refiner"] == "tiny-sdxl-refiner" and "scheduler" not in p
                golden = {k: v for k, v in p.items() if k in (*GOLDEN_KEYS, "refiner")}
                t, meta = stages.run_refiner(pipe, refiner, golden, call, base_size={}, init_noise=False)
            else:
                t = call_pipeline(pipe, p, call)
                t["timesteps"] = torch.tensor([u["timestep"] for u in cap.unet], dtype=torch.float32)
    finally:
        pipe.vae.disable_tiling()

    # the init image: preprocessed once ([1,3,H,W] in [-1,1]); encoded once per generator (batch 2 with a list of
    # generators: image[i:i+1] with generator[i]) or once for the batch; each encode runs the encoder once, or with
    # tiling once per tile (encoder_tiles), and hands the posterior the moments (tiled: blended and cropped)
    assert len(cap.preprocessed) == 1 and cap.preprocessed[0].shape == (1, 3, H, W), [x.shape for x in cap.preprocessed]
    t["init_image"] = cap.preprocessed[0]
    tiles = encoder_tiles(pipe.vae, t["init_image"]) if tiled else [t["init_image"]]
    assert len(cap.encoded) == len(cap.posterior_noise) == (B if B > 1 else 1)
    assert len(cap.encoder_in) == len(cap.moments) == len(cap.encoded) * len(tiles), (len(cap.encoder_in), len(tiles))
    assert all(torch.equal(x, tiles[k % len(tiles)]) for k, x in enumerate(cap.encoder_in))
    if tiled:
        assert len(tiles) > 1
        # the untiled encode of the same image, for the check that tiling changes the moments (main)
        with torch.no_grad():
            t["encoder_moments_untiled"] = pipe.vae.quant_conv(pipe.vae.encoder(t["init_image"]))
    else:
        assert all(torch.equal(x, m) for x, m in zip(cap.encoded, cap.moments))
    t["encoder_moments"] = torch.cat(cap.encoded)
    t["encoder_noise"] = torch.cat(cap.posterior_noise)
    assert len(cap.add_noise) == 1
    an = cap.add_noise[0]
    t["image_latents"], t["noise"], t["noised_latents"] = an["image_latents"], an["noise"], an["noised"]
    for k in ("encoder_noise", "image_latents", "noise", "noised_latents"):
        assert t[k].shape == (B, 4, h, w), (k, t[k].shape)
    assert t["encoder_moments"].shape[1:] == (8, h, w)

    # image_latents = scaling_factor * (mean + exp(0.5 * clamp(logvar, -30, 20)) * encoder_noise)
    mean, logvar = t["encoder_moments"].chunk(2, dim=1)
    sample = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * t["encoder_noise"]
    assert torch.equal(t["image_latents"], pipe.vae.config.scaling_factor * sample)
    # the draws, from fresh generators: per generator (per image) the posterior's randn, then add_noise's
    gens = goldens.generators(p["seed"], B)
    for i, g in enumerate(gens if isinstance(gens, list) else [gens]):
        n = 1 if isinstance(gens, list) else B
        assert torch.equal(randn_tensor((n, 4, h, w), generator=g), t["encoder_noise"][i : i + n])
        assert torch.equal(randn_tensor((n, 4, h, w), generator=g), t["noise"][i : i + n])
    # noised_latents = add_noise(image_latents, noise, first timestep), recomputed by a fresh scheduler
    sched_cls = type(an["scheduler"])
    fresh = sched_cls.from_config(an["scheduler"].config)
    fresh.set_timesteps(p["steps"])
    first = t_start(p) * fresh.order
    if hasattr(fresh, "set_begin_index"):
        fresh.set_begin_index(first)
    assert torch.equal(an["timesteps"], fresh.timesteps[first : first + 1].repeat(B)), (an["timesteps"], first)
    assert torch.equal(fresh.add_noise(t["image_latents"], t["noise"], an["timesteps"]), t["noised_latents"])

    # evaluations: the scheduler's timesteps from t_start * order on (with a refiner: until denoising_end)
    evaluated = [u["timestep"] for u in cap.unet]
    if "refiner" in p:
        L = int(meta["base_steps"])
        assert t["base_timesteps"].tolist() == evaluated and len(evaluated) == L
        assert len(t["refiner_timesteps"]) + L == sum(k.startswith("latents_step_") for k in t)
    else:
        L = len(evaluated)
        n = p["steps"] - t_start(p)
        n_steps = sum(k.startswith("latents_step_") for k in t)
        assert L == n_steps == (n if fresh.order == 1 else 2 * n - 1), (L, n_steps, n)
        assert evaluated == [float(x) for x in fresh.timesteps[first:]]
    if cap.unet:  # a base with no step before the switch never calls its UNet
        check_time_ids(t, cap.unet[0]["time_ids"], p, on_refiner)

    firsts = []
    if net is not None:
        K = 1
        keep = cn.controlnet_keep(L, p["control_guidance_start"], p["control_guidance_end"])  # over the L left
        got = [[r["scale"]] for r in cap.cn_calls]
        assert got == [[p["conditioning_scales"][0] * k] for k in keep], (got, keep)
        assert len(cap.control) == K and cap.control[0].shape == (1, 3, H, W)
        t["control_image_0"] = cap.control[0]
        t["controlnet_scales"] = torch.tensor(got, dtype=torch.float32)
        active = next(r for r in cap.cn_calls if r["scale"] != 0.0)
        firsts = [(active["inputs"], active["outputs"])]
        meta["controlnets"] = json.dumps(list(p["controlnets"]))
        meta["control_images"] = json.dumps(list(p["control_images"]))
        meta["conditioning_scales"] = json.dumps([float(s) for s in p["conditioning_scales"]])
        meta["control_guidance_start"] = json.dumps([float(p["control_guidance_start"])] * K)
        meta["control_guidance_end"] = json.dumps([float(p["control_guidance_end"])] * K)
        if p.get("guess_mode"):
            meta["guess_mode"] = "true"
            # guess mode: the ControlNet saw the conditional half only (batch B, not 2B)
            assert active["inputs"]["sample"].shape[0] == B, active["inputs"]["sample"].shape

    meta.update(case_meta(p))
    assert p.get("scheduler", EULER) == sched_cls.__name__, (p.get("scheduler"), sched_cls.__name__)
    return {k: v.detach().contiguous() for k, v in t.items()}, meta, firsts


def check_time_ids(t: dict, tid, p: dict, on_refiner: bool) -> None:
    """Assert the time ids `tid` a UNet call got for case parameters `p` and record them in `t`: a base model's
    (orig_h, orig_w, crop_top, crop_left, target_h, target_w), the same on every row (add_time_ids); a refiner's
    (orig_h, orig_w, crop_top, crop_left, aesthetic score), 2.5 on the negative rows and 6.0 on the positive ones
    (add_neg_time_ids, add_time_ids)."""
    B, H, W = p["batch_size"], p["height"], p["width"]
    cfg = p["guidance_scale"] > 1.0
    assert tid.shape[0] == (2 * B if cfg else B)
    if on_refiner:
        assert cfg and tid[:B].tolist() == [[H, W, 0, 0, 2.5]] * B and tid[B:].tolist() == [[H, W, 0, 0, 6.0]] * B
        t["add_neg_time_ids"] = tid[:1].clone()
        t["add_time_ids"] = tid[B : B + 1].clone()
    else:
        assert bool((tid == tid[:1]).all()) and tid[0].tolist() == [H, W, 0, 0, H, W], tid[0].tolist()
        t["add_time_ids"] = tid[:1].clone()


def check_resize(pipe, folder: Path) -> None:
    """The resized case's init image (Pillow's Lanczos before the pipeline) is what diffusers' preprocess makes of
    the original with height / width."""
    import torch
    from PIL import Image

    for name in CASES:
        p = case_params(name)
        img = cn.load_image(folder / p["init_image"])
        if img.size == (p["width"], p["height"]):
            continue
        ours = pipe.image_processor.preprocess(img.resize((p["width"], p["height"]), Image.LANCZOS))
        theirs = pipe.image_processor.preprocess(img, height=p["height"], width=p["width"])
        assert torch.equal(ours, theirs), name
        print(f"  {name}: Lanczos resize {img.size} -> {(p['width'], p['height'])} = diffusers' preprocess", flush=True)


def check_encoder(model: Path, name: str, tensors: dict) -> float:
    """onnxruntime's vae_encoder on the golden's init_image vs the torch moments (of the untiled encode for a tiled
    case: encoder_moments_untiled)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model / "vae_encoder" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"sample": tensors["init_image"].numpy()})[0]
    want = tensors.get("encoder_moments_untiled", tensors["encoder_moments"]).numpy()
    assert got.shape == (1, *want.shape[1:]), (got.shape, want.shape)
    worst = float(np.abs(got.astype(np.float64) - want).max() / max(1.0, float(np.abs(want).max())))
    print(f"  {name}: vae_encoder ORT vs torch, max |diff| / max(1, max |torch|) = {worst:.3g}", flush=True)
    assert worst <= 1e-4, worst
    return worst


def difference(a: dict, b: dict) -> tuple[float, float, float]:
    """(mean, max) |image_u8 a - image_u8 b| in 1/255, and max |difference| of the last latents."""
    import numpy as np

    x = a["image_u8"].numpy().astype(np.float64)
    y = b["image_u8"].numpy().astype(np.float64)
    last = f"latents_step_{sum(k.startswith('latents_step_') for k in a) - 1}"
    lat = float((a[last] - b[last]).abs().max())
    return float(np.abs(x - y).mean()), float(np.abs(x - y).max()), lat


def main() -> None:
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

    args, cases = c.fixtures_args(__doc__, CASES)
    write_images(args.out / "img2img")
    base = c.load_pipeline(args.model)
    # the ControlNet of tests/fixtures/controlnet/tiny-controlnet/ (make_controlnet.py rebuilds it from its seed; the
    # ONNX check below runs that file on the inputs this pipeline gave the torch one)
    net = cn.build_controlnet(base.unet, cn.UNITS["tiny-controlnet"])
    pipes = {
        "img2img": img2img_pipeline(base),
        "controlnet": img2img_pipeline(base, StableDiffusionXLControlNetImg2ImgPipeline, controlnet=net),
    }
    refiner = stages.build_refiner(base)
    check_resize(pipes["img2img"], args.out / "img2img")
    for name in cases:
        p = case_params(name)
        tensors, meta, firsts = run_case(pipes, refiner, args.out, name)
        grey, _, _ = run_case(pipes, refiner, args.out, name, grey=True)
        check_encoder(args.out / "tiny-sdxl", name, tensors)
        if "encoder_moments_untiled" in tensors:
            # tiling must change the moments clearly (a tiled encode that runs untiled must fail the Rust tests)
            diff = (tensors["encoder_moments"] - tensors["encoder_moments_untiled"]).abs()
            print(f"  {name}: tiled vs untiled moments: max |diff| {diff.max():.3g}, mean {diff.mean():.3g}",
                  flush=True)
            assert float(diff.max()) > 0.1, float(diff.max())
        for first in firsts:
            cn.check_onnx(args.out / "controlnet", name, "tiny-controlnet", first, bool(p.get("guess_mode")))
        mean, worst, lat = difference(tensors, grey)
        if "refiner" in p:
            n_evals = f"{len(tensors['base_timesteps'])} + {len(tensors['refiner_timesteps'])}"
        else:
            n_evals = str(len(tensors["timesteps"]))
        shown = sorted(k for k in tensors if not k.startswith("latents_step_"))
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        print(
            f"  {name}: {n_evals} evaluations; |image_u8 - with a grey init image|: mean {mean:.1f}/255, max"
            f" {worst:.0f}/255; last latents max |diff| {lat:.3f}",
            flush=True,
        )
        # the init image must change the result clearly (a test that ignores it must fail: the Rust tests allow 1/255);
        # the tiny model keeps little of it after a few evaluations at high noise, so the bar is max 5/255, mean
        # 0.5/255, and mean 5/255 for the low-strength case; strength 1.0: printed only
        if p["strength"] < 1.0:
            assert worst >= 5.0 and mean >= (5.0 if p["strength"] < 0.2 else 0.5), (name, mean, worst)
        if "controlnets" in p:
            # and the ControlNet must matter: the same request on the img2img pipeline
            plain = dict(CASES[name])
            for k in cn.UNIT_KEYS:
                plain.pop(k, None)
            CASES[f"{name}/no-controlnet"] = plain
            try:
                without, _, _ = run_case(pipes, refiner, args.out, f"{name}/no-controlnet")
            finally:
                del CASES[f"{name}/no-controlnet"]
            mean, worst, lat = difference(tensors, without)
            print(
                f"  {name}: |image_u8 - without ControlNet|: mean {mean:.1f}/255, max {worst:.0f}/255;"
                f" last latents max |diff| {lat:.3f}",
                flush=True,
            )
            assert worst >= 5.0, (name, mean, worst)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
