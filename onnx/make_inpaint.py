"""Write the inpainting fixtures: two masks and diffusers' SDXL inpainting goldens (the standard 4-channel UNet).

Masks (tests/fixtures/inpaint/; drawn with PIL, no random numbers; white = repaint, black = keep):

  mask_64.png      64x64 RGB (so the pipeline's grayscale conversion matters): a white rectangle, disc and
                   quadrilateral on the centre right (edges off the 8-px latent grid) and six 8x8 cells on the latent
                   grid (latent rows 3-5, columns 0-1) whose L lands either side of 0.5: grey 127 (keep), grey 128
                   (repaint), red (L 76, keep), green (L 150, repaint), (0, 168, 255) (L 128, repaint; its float luma
                   127.686 truncated gives 127) and (242, 45, 252) (L 127, keep; its float luma 127.501 rounded gives
                   128). 46.3 % of the pixels and 24 of the 64 latent cells (37.5 %) are masked.
  mask_80x60.png   80 wide x 60 high, mode L (a grayscale PNG), sharp edges: a triangle, two rectangles, 1-px lines,
                   and three features whose value at a latent sample point after the Lanczos resize to 96x64 falls on
                   the other side of 0.5 with another filter: a 1-px line on row 8 (Lanczos 145/255, bilinear 120,
                   nearest 0), a 1x4 white bar at column 26 (141; bilinear 106, bicubic 121, nearest 0) and a 1x4
                   black notch at column 66 in a white rectangle (114; bilinear 149, bicubic 134, nearest 255). With
                   init_80x60.png for 96x64: 31.1 % of the pixels, 32 of the 96 latent cells (33.3 %) masked.

The mask as diffusers 0.42.1 makes it (pipe.mask_processor = VaeImageProcessor(do_normalize=False, do_binarize=True,
do_convert_grayscale=True)), for a PIL mask with height / width given:
  1. resize to W x H with Pillow's Lanczos (Image.resize((W, H), Image.LANCZOS, reducing_gap=None)) in the PNG's own
     mode, BEFORE the grayscale conversion (Pillow returns a plain copy when the size is already W x H)
  2. convert("L"): Pillow's integer luma L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16 (equal to Pillow 13.0.0's
     for all 2^24 colours, checked once; the script asserts it for the mask's colours), neither round() nor trunc()
     of 0.299 R + 0.587 G + 0.114 B; an L image stays as it is
  3. float32 / 255, binarized: < 0.5 -> 0, >= 0.5 -> 1 (L <= 127 keeps, L >= 128 repaints): `mask` [1,1,H,W]
  4. masked_image = init_image * (mask < 0.5) (-0.0 where the init image is negative)
  5. the mask latents: torch.nn.functional.interpolate(mask, size=(H/8, W/8)), default mode "nearest", which takes
     pixel (8i, 8j): only the top-left pixel of each 8x8 block reaches the result
Pixels and latent cells (of the binarized mask / the mask latents) that change when a step is done otherwise:
  mask_64:    L as round(float luma) 64 / 1, trunc(float luma) 128 / 2, mean(R, G, B) 128 / 2, R 256 / 4;
              interpolate nearest-exact - / 8, bilinear - / 10, area - / 19 (the last two not 0 / 1)
  mask_80x60: resize bilinear 41 / 5, bicubic 5 / 2, nearest 43 / 5; interpolate nearest-exact - / 20, bilinear - / 22,
              area - / 40

Goldens (tests/fixtures/goldens/<case>.safetensors): diffusers' StableDiffusionXLInpaintPipeline (fp32, CPU, 1 thread,
no watermark, requires_aesthetics_score False, force_zeros_for_empty_prompt as the base model) on the torch tiny
model's components (make_img2img.img2img_pipeline), so the 4-channel UNet; its EulerDiscreteScheduler unless a case
names another class (`cls.from_config(pipe.scheduler.config)`). Base: goldens.py's cfg_neg (prompt, negative
"blurry, low quality", guidance 5.0, seed 0, 64x64, batch 1). Called with image= the init PNG (tests/fixtures/img2img/,
make_img2img.py's) as a PIL RGB image, mask_image= the mask PNG as Pillow opens it, height, width, strength, no
padding_mask_crop (the pipeline resizes both itself); generators as goldens.py (one, or a list of seed + i).

  case               scheduler                              steps  strength  evaluations (timesteps)
  inpaint            Euler                                  5      0.8       4 (601, 401, 201, 1)
  inpaint_full       Euler                                  4      1.0       4 (751, 501, 251, 1)
  inpaint_euler_a    EulerAncestralDiscreteScheduler        5      0.8       4 (601, 401, 201, 1)
  inpaint_ddim       DDIMScheduler                          5      0.8       4 (601, 401, 201, 1)
  inpaint_heun       HeunDiscreteScheduler                  5      0.8       7 (601, 401, 401, 201, 201, 1, 1)
  inpaint_dpmpp_2m   DPMSolverMultistepScheduler            5      0.8       4 (665, 499, 333, 167)
  inpaint_batch2     EulerAncestral, batch 2 (seeds 0, 1)   5      0.8       4 (601, 401, 201, 1)
  inpaint_resized    Euler, 96x64, init_80x60.png and       4      0.75      3 (501, 251, 1)
                     mask_80x60.png
  inpaint_on_refiner Euler, the tiny refiner alone          10     0.5       5 (401, 301, 201, 101, 1)
                     (StableDiffusionXLInpaintPipeline on make_stages.build_refiner's components,
                     requires_aesthetics_score: time ids (H, W, 0, 0, 6.0) / (H, W, 0, 0, 2.5), add_time_ids and
                     add_neg_time_ids [1,5]; metadata model "tiny-sdxl-refiner")
(timesteps as img2img, make_img2img.py: init = min(int(steps x strength), steps), t_start = steps - init, the loop over
timesteps[t_start x order :], set_begin_index(t_start x order))

What the pipeline does (4-channel UNet):
  prepare_latents: image_latents = scaling_factor x a posterior sample of init_image, encoded ONCE (the image has
    batch 1; with a list of generators _encode_vae_image loops over the image's batch, so only generator[0] draws),
    repeated to B rows; then noise = randn [B,4,h,w] (row i from generator i with a list); the starting latents are
    scheduler.add_noise(image_latents, noise, first timestep), or at strength 1.0 (is_strength_max) noise x
    init_noise_sigma (Euler, 4 steps: 4.2364140 = sqrt(sigma(751)^2 + 1)). At strength 1.0 the image is still
    encoded and its posterior drawn (return_image_latents is True for a 4-channel UNet). (img2img at strength 1.0
    starts from add_noise(image_latents, noise, first timestep) instead.)
  prepare_mask_latents: the mask latents (repeated to B, twice with CFG), and masked_image encoded with a second
    posterior draw (generator[0] only with a list); a 4-channel UNet never sees those latents: the draw only
    advances generator 0
  loop: the UNet gets the 4 latent channels only; after every scheduler.step call (also the first half of a Heun
    pair) latents = (1 - mask_latents) x init_latents_proper + mask_latents x latents, where init_latents_proper =
    scheduler.add_noise(image_latents, noise, tensor([timesteps[i + 1]])) (the next evaluation's noise level; index
    schedulers use their step index t_start x order + i + 1) and, at the last step, image_latents without noise: the
    final latents equal image_latents in every unmasked latent cell, and the kept region of the image is the VAE's
    decoding of them (no pixels of the init image are pasted back: only padding_mask_crop does that)
Draws per generator, in order (every randn_tensor call in the VAE, pipeline and scheduler modules logged, redrawn from
fresh generators bit for bit, and the used generators' final states equal the fresh ones': nothing else draws):
  batch 1 (one generator): image posterior [1,4,h,w], noise [1,4,h,w], masked-image posterior [1,4,h,w], then one
                           step noise [1,4,h,w] per evaluation with Euler ancestral (none with Euler, DDIM (eta 0),
                           Heun, DPM++ 2M); the same at strength 1.0
  batch 2 (list of two):   generator 0: image posterior, noise[0], masked-image posterior, step noise[0] x L;
                           generator 1: noise[1], step noise[1] x L (all [1,4,h,w]). image_latents' two rows are equal
                           (img2img_batch2 encodes the image once per generator instead)

Tensors per case (float32 unless noted; batch dimension kept; h, w = H/8, W/8):
  init_image [1,3,H,W]             image_processor.preprocess output (in [-1, 1])
  mask [1,1,H,W]                   mask_processor.preprocess output (0 / 1)
  mask_latents [1,1,h,w]           interpolate(mask, size=(h, w)), nearest (= mask[:, :, ::8, ::8])
  masked_image [1,3,H,W]           init_image * (mask < 0.5), the second encoder input
  encoder_moments [1,8,h,w]        the VAE encoder's output for init_image (mean || logvar: the ONNX vae_encoder's)
  encoder_noise [1,4,h,w]          the image posterior's randn
  image_latents [B,4,h,w]          scaling_factor x (mean + exp(0.5 x clamp(logvar, -30, 20)) x encoder_noise), repeated
  noise [B,4,h,w]                  prepare_latents' randn (the start's and every blend's noise)
  noised_latents [B,4,h,w]         the loop's starting latents
  masked_encoder_noise [1,4,h,w]   the masked image posterior's randn (only advances generator 0)
  timesteps [L]                    the UNet's evaluations
  add_time_ids [1,6]               (H, W, 0, 0, H, W)
  latents_step_0 .. latents_step_{L-1} [B,4,h,w]
                                   the latents each iteration ends with, after the blend (callback_on_step_end's)
  image [B,H,W,3]                  output_type "np", in [0, 1]; image_u8 uint8 [B,H,W,3]: (image * 255).round()
Metadata (strings): goldens.py's prompt, negative_prompt, guidance_scale (repr(float)), steps, seed, width, height,
batch_size; init_image (file name in tests/fixtures/img2img/), mask_image (file name in tests/fixtures/inpaint/),
strength (repr(float)), scheduler (class name, only when not Euler).

Checks (asserted): mask 0 / 1, masked_image, mask_latents (interpolate = mask[:, :, ::8, ::8]), the encoder's inputs
(init_image, then masked_image), image_latents from the moments and encoder_noise, the draws above, timesteps from a
fresh scheduler, noised_latents recomputed bit for bit (a fresh scheduler's add_noise, or noise x its
init_noise_sigma), every step's blend recomputed bit for bit from scheduler.step's output and the loop's add_noise
(itself recomputed by a fresh scheduler with begin index t_start x order + i + 1), the last latents = image_latents
where mask_latents is 0, the time ids; the ONNX vae_encoder vs torch's moments <= 1e-4 relative (5.4e-6; 4.2e-6 at
96x64); with batch 1 the img2img pipeline's moments, encoder_noise, image_latents, noise (and for strength < 1 the
starting latents) equal the inpaint pipeline's; the image differs from the same request on
StableDiffusionXLImg2ImgPipeline (no mask; make_img2img.run_case) by >= 2/255 on average; a mask made with another L
formula (inpaint) or resize filter (inpaint_resized) changes the image by >= 5/255 (max). Two runs write identical
bytes.

Measured here (/255): |image_u8 - the init pixels| inside / outside the pixel mask; |image_u8 - img2img| mean (max);
the last latents' max |diff| from img2img's:
  inpaint 70.1 / 59.2, 32.3 (196), 9.70   full 68.9 / 61.1, 32.6 (181), 17.2   euler_a 70.3 / 59.3, 34.9 (185), 10.9
  ddim 70.1 / 59.2, 32.3 (196), 9.70      heun 69.9 / 59.2, 32.3 (200), 9.62   dpmpp_2m 69.7 / 59.8, 32.5 (191), 12.2
  batch2 71.7 / 59.2, 38.7 (246), 10.9    resized 67.1 / 54.2, 34.1 (219), 6.44
The random tiny VAE keeps nothing of the init image (outside the mask the image is its decoding of image_latents, ~59
from the init pixels), and the tiny UNet's denoised latents end far from image_latents, hence the large difference
from img2img. inpaint_ddim ends within 0.04 of inpaint's latents (DDIM with eta 0 is Euler's ODE step in another
parametrization; the intermediate latents differ by up to 2.8). Masks a wrong conversion would make, |image_u8 diff|
mean (max): inpaint with round(float luma) (1 latent cell) 1.8 (41), trunc(float luma) (2 cells) 7.1 (109), mean(R,
G, B) (2 cells) 5.4 (109); inpaint_resized with a bilinear resize (5 cells) 7.1 (139), bicubic (2 cells) 4.8 (87),
nearest (5 cells) 7.1 (139).

Usage: python make_inpaint.py [--model DIR] [--out tests/fixtures] [--cases inpaint,...]
       (--out must hold tiny-sdxl/ and img2img/ (make_img2img.py's init images) already)
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import _common as c
import goldens
import make_controlnet as cn
import make_img2img as i2i

MASKS = ("mask_64.png", "mask_80x60.png")
EULER_A = "EulerAncestralDiscreteScheduler"

BASE = dict(i2i.BASE_CASE, init_image="init_64.png", mask_image="mask_64.png")  # cfg_neg's prompts, guidance, seed
CASES = {
    "inpaint": dict(BASE, steps=5, strength=0.8),
    # is_strength_max: the loop starts from noise x init_noise_sigma; the image is still encoded (for the blend)
    "inpaint_full": dict(BASE, steps=4, strength=1.0),
    "inpaint_euler_a": dict(BASE, steps=5, strength=0.8, scheduler=EULER_A),
    "inpaint_ddim": dict(BASE, steps=5, strength=0.8, scheduler="DDIMScheduler"),
    "inpaint_heun": dict(BASE, steps=5, strength=0.8, scheduler="HeunDiscreteScheduler"),
    "inpaint_dpmpp_2m": dict(BASE, steps=5, strength=0.8, scheduler="DPMSolverMultistepScheduler"),
    "inpaint_batch2": dict(BASE, batch_size=2, steps=5, strength=0.8, scheduler=EULER_A),
    # the pipeline resizes init_80x60.png and mask_80x60.png to 96x64 itself (height / width given)
    "inpaint_resized": dict(
        BASE, width=96, height=64, init_image="init_80x60.png", mask_image="mask_80x60.png", steps=4, strength=0.75
    ),
    # the refiner alone inpaints (the inpaint pipeline on make_stages.py's refiner: its time ids with the aesthetic
    # scores); 10 steps x 0.5 = 5 evaluations
    "inpaint_on_refiner": dict(BASE, steps=10, strength=0.5, model=i2i.REFINER),
}

# mask variants (mask_variants) whose effect on the image main() prints
SENSITIVITY = {
    "inpaint": ("L as round(float luma)", "L as trunc(float luma)", "L as mean(R, G, B)"),
    "inpaint_resized": ("bilinear resize", "bicubic resize", "nearest resize"),
}

# the generator draws, named by where randn_tensor was called and in which phase of the pipeline call
DRAWS = {
    ("posterior", "prepare_latents"): "image posterior",
    ("pipeline", "prepare_latents"): "noise",
    ("posterior", "prepare_mask_latents"): "masked-image posterior",
    ("scheduler", "loop"): "step noise",
}


# ---------------------------------------------------------------------------------------------------------------
# masks

# 8x8 cells on the latent grid of mask_64.png (torch's nearest interpolate samples pixel (8i, 8j)): colours whose L
# (Pillow: (19595 R + 38470 G + 7471 B + 0x8000) >> 16) lands either side of 0.5 x 255, with what the pipeline makes
# of them. (0, 168, 255): 0.299 R + 0.587 G + 0.114 B = 127.686, L 128 (truncating the float gives 127);
# (242, 45, 252): 127.501, L 127 (rounding the float gives 128).
THRESHOLD_CELLS = (
    ((127, 127, 127), 0),
    ((128, 128, 128), 1),
    ((255, 0, 0), 0),  # L 76
    ((0, 255, 0), 1),  # L 150
    ((0, 168, 255), 1),  # L 128
    ((242, 45, 252), 0),  # L 127
)


def draw_mask_64():
    """64x64 RGB, white = repaint: a rectangle, a disc and a quadrilateral on the centre right (edges off the 8-px
    grid), and THRESHOLD_CELLS in latent cells (3..5, 0..1) on the left."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (0, 0, 0))
    d = ImageDraw.Draw(img)
    white = (255, 255, 255)
    d.rectangle((26, 13, 50, 54), fill=white)
    d.ellipse((34, 6, 62, 34), fill=white)
    d.polygon([(50, 40), (63, 46), (63, 63), (44, 63)], fill=white)
    for k, (colour, _) in enumerate(THRESHOLD_CELLS):
        x, y = 8 * (k % 2), 24 + 8 * (k // 2)
        d.rectangle((x, y, x + 7, y + 7), fill=colour)
    return img


def draw_mask_80x60():
    """80 wide x 60 high, mode L, sharp edges: a triangle, two rectangles, 1-px lines, and features whose value at a
    latent sample point after the Lanczos resize to 96x64 lands on the other side of 0.5 with bilinear, bicubic or
    nearest: a 1-px white line on row 8 (Lanczos 145/255; bilinear 120), a 1x4 white bar at column 26 (141; bilinear
    106, bicubic 121) and a 1x4 black notch at column 66 in a white rectangle (114; bilinear 149, bicubic 134)."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (80, 60), 0)
    d = ImageDraw.Draw(img)
    d.polygon([(2, 59), (27, 29), (50, 59)], fill=255)
    d.rectangle((53, 14, 76, 29), fill=255)
    d.rectangle((4, 4, 17, 17), fill=255)
    d.rectangle((66, 20, 66, 23), fill=0)
    d.rectangle((26, 20, 26, 23), fill=255)
    d.line((56, 8, 79, 8), fill=255, width=1)
    d.line((60, 33, 60, 58), fill=255, width=1)
    d.rectangle((66, 40, 70, 56), fill=255)
    return img


def load_mask(path: Path):
    """The mask PNG as Pillow opens it (mode RGB or L, not converted: the pipeline converts)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        assert img.mode in ("RGB", "L"), (path, img.mode)
        return img.copy()


def mask_variants(img, W: int, H: int) -> tuple:
    """diffusers' binarized W x H mask (Lanczos resize, then L, / 255, >= 0.5 -> 1) and {name: the binarized mask
    with one step done differently: another L formula (RGB masks), another resize filter (resized masks)}."""
    import numpy as np
    from PIL import Image

    def binarize(resample=Image.LANCZOS, luma=None):
        r = img.resize((W, H), resample)
        a = np.asarray(r.convert("L")) if luma is None else luma(np.asarray(r.convert("RGB")).astype(np.float64))
        return ((a.astype(np.float32) / 255.0) >= 0.5).astype(np.float32)

    out = {}
    if img.mode == "RGB":
        weights = np.array([0.299, 0.587, 0.114])
        out["L as round(float luma)"] = binarize(luma=lambda x: np.floor(x @ weights + 0.5))
        out["L as trunc(float luma)"] = binarize(luma=lambda x: np.floor(x @ weights))
        out["L as mean(R, G, B)"] = binarize(luma=lambda x: x.mean(-1))
        out["L as R"] = binarize(luma=lambda x: x[..., 0])
    if img.size != (W, H):
        for name, rs in (("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC), ("nearest", Image.NEAREST)):
            out[f"{name} resize"] = binarize(resample=rs)
    return binarize(), out


def mask_changes(img, W: int, H: int) -> dict:
    """{variant: (pixels, latent cells) of the mask that change} for mask_variants' and for other interpolate modes
    to the latents' size (nearest-exact, bilinear, area) instead of nearest."""
    import torch

    F = torch.nn.functional
    ref, variants = mask_variants(img, W, H)
    t = torch.from_numpy(ref)[None, None]
    ref_lat = F.interpolate(t, size=(H // 8, W // 8))
    assert torch.equal(ref_lat, t[:, :, ::8, ::8])
    out = {}
    for name, b in variants.items():
        lat = F.interpolate(torch.from_numpy(b)[None, None], size=(H // 8, W // 8))
        out[name] = (int((b != ref).sum()), int((lat != ref_lat).sum()))
    for mode in ("nearest-exact", "bilinear", "area"):
        extra = {"align_corners": False} if mode == "bilinear" else {}
        x = F.interpolate(t, size=(H // 8, W // 8), mode=mode, **extra)
        out[f"interpolate {mode}"] = (0, int((x != ref_lat).sum()))
    return out


# ---------------------------------------------------------------------------------------------------------------
# pipeline and capture


def inpaint_pipeline(base):
    from diffusers import StableDiffusionXLInpaintPipeline

    return i2i.img2img_pipeline(base, StableDiffusionXLInpaintPipeline)


def refiner_inpaint_pipeline(refiner):
    """StableDiffusionXLInpaintPipeline on the components of make_stages.build_refiner's pipeline `refiner`."""
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe = StableDiffusionXLInpaintPipeline(
        **{k: v for k, v in refiner.components.items() if k not in ("image_encoder", "feature_extractor")},
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Capture(i2i.Capture):
    """make_img2img.Capture (the preprocessed init image, its VAE encoding and posterior randn, prepare_latents'
    add_noise, every UNet call), plus: the mask processor's output, prepare_latents' outputs (latents, noise,
    image_latents), prepare_mask_latents' mask and masked image in, its mask and masked image latents out and its
    encoder call, each loop step's scheduler.step output and add_noise, and every randn_tensor call in the VAE,
    pipeline and scheduler modules with its generator(s) and the phase of the call (prepare_latents,
    prepare_mask_latents, loop)."""

    def __init__(self, pipe, sched_cls):
        super().__init__(pipe)
        self.sched_cls = sched_cls
        self.masks, self.prepared, self.mask_calls, self.mask_encoder_in, self.mask_moments = [], [], [], [], []
        self.steps, self.loop_add_noise, self.draws = [], [], []
        self.phase = "setup"
        self.patched: list = []

    def _patch(self, obj, name: str, new) -> None:
        self.patched.append((obj, name, getattr(obj, name), name in vars(obj)))
        setattr(obj, name, new)

    def _logged(self, source: str, fn):
        @functools.wraps(fn)
        def randn(*args, **kwargs):
            out = fn(*args, **kwargs)
            gen = kwargs["generator"] if "generator" in kwargs else args[1]
            self.draws.append(dict(source=source, phase=self.phase, generator=gen, out=out.clone()))
            return out

        return randn

    def __enter__(self):
        import diffusers.models.autoencoders.vae as vae_module

        pipe, vae, cls = self.pipe, self.pipe.vae, self.sched_cls
        # randn logs first: make_img2img.Capture's posterior wrapper calls whatever vae_module.randn_tensor is now
        modules = {"posterior": vae_module, "pipeline": sys.modules[type(pipe).__module__]}
        modules["scheduler"] = sys.modules[cls.__module__]
        for source, mod in modules.items():
            if hasattr(mod, "randn_tensor"):
                self._patch(mod, "randn_tensor", self._logged(source, mod.randn_tensor))
        super().__enter__()

        inner_prepare = pipe.prepare_latents  # make_img2img.Capture's
        orig_prepare_mask = pipe.prepare_mask_latents
        orig_mask_preprocess = pipe.mask_processor.preprocess
        orig_step, orig_add_noise = cls.step, cls.add_noise

        def prepare_latents(*args, **kwargs):
            self.phase = "prepare_latents"
            out = inner_prepare(*args, **kwargs)
            self.prepared.append([x.clone() for x in out])
            self.phase = "between"
            return out

        def prepare_mask_latents(mask, masked_image, *args, **kwargs):
            self.phase = "prepare_mask_latents"
            hooks = [
                vae.encoder.register_forward_pre_hook(lambda mod, a: self.mask_encoder_in.append(a[0].clone())),
                vae.quant_conv.register_forward_hook(lambda mod, a, out: self.mask_moments.append(out.clone())),
            ]
            try:
                out = orig_prepare_mask(mask, masked_image, *args, **kwargs)
            finally:
                for h in hooks:
                    h.remove()
            self.mask_calls.append(
                dict(
                    mask_in=mask.clone(),
                    masked_image=masked_image.clone(),
                    mask=out[0].clone(),
                    masked_image_latents=out[1].clone(),
                )
            )
            self.phase = "loop"
            return out

        def mask_preprocess(*args, **kwargs):
            out = orig_mask_preprocess(*args, **kwargs)
            self.masks.append(out.clone())
            return out

        # functools.wraps keeps step's signature: prepare_extra_step_kwargs passes `generator` / `eta` only to a
        # step whose signature names them
        @functools.wraps(orig_step)
        def step(sched, *args, **kwargs):
            out = orig_step(sched, *args, **kwargs)
            self.steps.append((out[0] if isinstance(out, tuple) else out.prev_sample).clone())
            return out

        @functools.wraps(orig_add_noise)
        def add_noise(sched, original, noise, timesteps):
            out = orig_add_noise(sched, original, noise, timesteps)
            if self.phase == "loop":
                self.loop_add_noise.append(
                    dict(original=original.clone(), noise=noise.clone(), timesteps=timesteps.clone(), out=out.clone())
                )
            return out

        self._patch(pipe, "prepare_latents", prepare_latents)
        self._patch(pipe, "prepare_mask_latents", prepare_mask_latents)
        self._patch(pipe.mask_processor, "preprocess", mask_preprocess)
        self._patch(cls, "step", step)
        self._patch(cls, "add_noise", add_noise)
        return self

    def __exit__(self, *exc):
        for obj, name, orig, own in reversed(self.patched):
            if own:
                setattr(obj, name, orig)
            else:
                delattr(obj, name)
        self.patched = []
        return super().__exit__(*exc)


def draws_per_generator(draws: list, seed: int, batch: int) -> tuple[list, list]:
    """Split the logged randn_tensor calls per generator (a list of generators draws row i from generator i; a
    generator is known by its seed: goldens.generators' seed + i). Returns ([[(draw name, tensor), ...] per
    generator], [the generator objects the pipeline used])."""
    per: list = [[] for _ in range(batch)]
    used: list = [None] * batch
    for d in draws:
        name = DRAWS[(d["source"], d["phase"])]
        gens = d["generator"] if isinstance(d["generator"], list) else [d["generator"]]
        assert len(gens) == 1 or len(gens) == d["out"].shape[0], (name, len(gens), d["out"].shape)
        for r, g in enumerate(gens):
            i = g.initial_seed() - seed
            assert used[i] is None or used[i] is g
            used[i] = g
            per[i].append((name, d["out"] if len(gens) == 1 else d["out"][r : r + 1]))
    return per, used


def redrawn(draws: list, seed: int, B: int, name: str) -> dict:
    """The logged draws per generator (draws_per_generator), checked: each one redrawn bit for bit from fresh
    goldens.generators(seed, B), and the used generators' states afterwards equal the fresh ones' (no other draw
    took place)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    per, used = draws_per_generator(draws, seed, B)
    fresh_gens = goldens.generators(seed, B)
    fresh_gens = fresh_gens if isinstance(fresh_gens, list) else [fresh_gens]
    for i, g in enumerate(fresh_gens):
        for draw, x in per[i]:
            assert torch.equal(randn_tensor(x.shape, generator=g), x), (name, i, draw)
        assert torch.equal(g.get_state(), used[i].get_state()), (name, i)
    return per


def checked_draws(draws: list, p: dict, name: str, first_draws: list, n_step: int) -> list:
    """The logged draws per generator, redrawn and checked (redrawn), and their names in order: generator 0
    `first_draws`, the others "noise", then `n_step` "step noise" each."""
    B = p["batch_size"]
    per = redrawn(draws, p["seed"], B, name)
    for i in range(B):
        want = (first_draws if i == 0 else ["noise"]) + ["step noise"] * n_step
        assert [d for d, _ in per[i]] == want, (name, i, [d for d, _ in per[i]])
    return per


def call_args(p: dict, image, mask, **extra) -> dict:
    """The inpaint pipeline's call arguments besides make_img2img.call_pipeline's: image=, mask_image=, the case's
    height, width and strength, and `extra`."""
    return dict(image=image, mask_image=mask, height=p["height"], width=p["width"], strength=p["strength"], **extra)


# ---------------------------------------------------------------------------------------------------------------
# goldens


def run_case(pipes: dict, folder: Path, name: str) -> tuple[dict, dict, dict]:
    """Run case `name` on the inpaint pipeline; returns (tensors, metadata, {draw names per generator})."""
    import diffusers
    import torch

    p = i2i.case_params(name, CASES)
    B, H, W = p["batch_size"], p["height"], p["width"]
    h, w = H // 8, W // 8
    cfg = p["guidance_scale"] > 1.0
    on_refiner = p.get("model") == i2i.REFINER
    pipe = pipes["refiner_inpaint" if on_refiner else "inpaint"]
    sched_cls = getattr(diffusers, p.get("scheduler", i2i.EULER))
    image, mask = cn.load_image(folder / "img2img" / p["init_image"]), load_mask(folder / "inpaint" / p["mask_image"])
    call = call_args(p, image, mask)
    with Capture(pipe, sched_cls) as cap:
        t = i2i.call_pipeline(pipe, p, call)
    evaluated = [u["timestep"] for u in cap.unet]
    t["timesteps"] = torch.tensor(evaluated, dtype=torch.float32)
    L = len(evaluated)

    # the init image and the mask, preprocessed once each; masked_image = init_image * (mask < 0.5)
    assert len(cap.preprocessed) == 1 and cap.preprocessed[0].shape == (1, 3, H, W)
    t["init_image"] = cap.preprocessed[0]
    assert len(cap.masks) == 1 and cap.masks[0].shape == (1, 1, H, W), [m.shape for m in cap.masks]
    t["mask"] = cap.masks[0]
    assert bool(((t["mask"] == 0) | (t["mask"] == 1)).all())
    assert len(cap.mask_calls) == 1
    mc = cap.mask_calls[0]
    assert torch.equal(mc["mask_in"], t["mask"])
    t["masked_image"] = mc["masked_image"]
    assert torch.equal(t["masked_image"], t["init_image"] * (t["mask"] < 0.5))
    # the mask latents: nearest interpolate to h x w (= pixel (8i, 8j)), one row per image, twice with CFG
    ml = mc["mask"]
    assert ml.shape == ((2 * B if cfg else B), 1, h, w) and bool((ml == ml[:1]).all()), ml.shape
    t["mask_latents"] = ml[:1].clone()
    assert torch.equal(t["mask_latents"], torch.nn.functional.interpolate(t["mask"], size=(h, w)))
    assert torch.equal(t["mask_latents"], t["mask"][:, :, ::8, ::8])

    # the init image's encoding: once (batch 1 image), also with a list of generators (generator[0] only)
    assert len(cap.encoder_in) == len(cap.moments) == len(cap.posterior_noise) == 1
    assert torch.equal(cap.encoder_in[0], t["init_image"])
    t["encoder_moments"], t["encoder_noise"] = cap.moments[0], cap.posterior_noise[0]
    assert t["encoder_moments"].shape == (1, 8, h, w) and t["encoder_noise"].shape == (1, 4, h, w)
    assert len(cap.prepared) == 1
    t["noised_latents"], t["noise"], t["image_latents"] = cap.prepared[0]
    for k in ("image_latents", "noise", "noised_latents"):
        assert t[k].shape == (B, 4, h, w), (k, t[k].shape)
    mean, logvar = t["encoder_moments"].chunk(2, dim=1)
    sample = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * t["encoder_noise"]
    assert torch.equal(t["image_latents"], (pipe.vae.config.scaling_factor * sample).repeat(B, 1, 1, 1))
    # the masked image's encoding: only its posterior draw matters (a 4-channel UNet does not take its latents)
    assert len(cap.mask_encoder_in) == len(cap.mask_moments) == 1
    assert torch.equal(cap.mask_encoder_in[0], t["masked_image"])
    masked_draws = [d for d in cap.draws if d["phase"] == "prepare_mask_latents"]
    assert len(masked_draws) == 1 and masked_draws[0]["source"] == "posterior"
    t["masked_encoder_noise"] = masked_draws[0]["out"]
    assert t["masked_encoder_noise"].shape == (1, 4, h, w)

    # every draw, per generator, redrawn from fresh generators; afterwards the used generators' states equal the
    # fresh ones' (no other draw took place)
    n_step = L if sched_cls.__name__ == EULER_A else 0
    per = checked_draws(cap.draws, p, name, ["image posterior", "noise", "masked-image posterior"], n_step)
    assert torch.equal(per[0][0][1], t["encoder_noise"]) and torch.equal(per[0][2][1], t["masked_encoder_noise"])
    assert torch.equal(torch.cat([per[i][0 if i else 1][1] for i in range(B)]), t["noise"])

    # the loop's starting latents, from a fresh scheduler: add_noise(image_latents, noise, first timestep), or at
    # strength 1 noise x init_noise_sigma (no add_noise call)
    fresh = sched_cls.from_config(pipe.scheduler.config)
    fresh.set_timesteps(p["steps"])
    first = i2i.t_start(p) * fresh.order
    if hasattr(fresh, "set_begin_index"):
        fresh.set_begin_index(first)
    assert evaluated == [float(x) for x in fresh.timesteps[first:]], (evaluated, fresh.timesteps)
    n = p["steps"] - i2i.t_start(p)
    n_steps = sum(k.startswith("latents_step_") for k in t)
    assert L == len(cap.steps) == n_steps == (n if fresh.order == 1 else 2 * n - 1), (L, len(cap.steps), n_steps, n)
    if p["strength"] == 1.0:
        assert first == 0 and not cap.add_noise
        assert torch.equal(t["noised_latents"], t["noise"] * fresh.init_noise_sigma)
    else:
        assert len(cap.add_noise) == 1
        first_t = fresh.timesteps[first : first + 1].repeat(B)
        assert torch.equal(cap.add_noise[0]["timesteps"], first_t)
        assert torch.equal(fresh.add_noise(t["image_latents"], t["noise"], first_t), t["noised_latents"])

    # every step: latents = (1 - mask_latents) x add_noise(image_latents, noise, timesteps[i + 1]) + mask_latents x
    # the scheduler step's output; at the last step image_latents themselves (recomputed bit for bit)
    m = t["mask_latents"]
    assert len(cap.loop_add_noise) == L - 1
    for i in range(L):
        if i < L - 1:
            an = cap.loop_add_noise[i]
            assert torch.equal(an["original"], t["image_latents"]) and torch.equal(an["noise"], t["noise"])
            assert an["timesteps"].tolist() == [evaluated[i + 1]], (an["timesteps"], evaluated)
            blend_fresh = sched_cls.from_config(pipe.scheduler.config)
            blend_fresh.set_timesteps(p["steps"])
            if hasattr(blend_fresh, "set_begin_index"):
                blend_fresh.set_begin_index(first + i + 1)
            assert torch.equal(blend_fresh.add_noise(t["image_latents"], t["noise"], an["timesteps"]), an["out"])
            proper = an["out"]
        else:
            proper = t["image_latents"]
        assert torch.equal(t[f"latents_step_{i}"], (1 - m) * proper + m * cap.steps[i]), (name, i)
    last = t[f"latents_step_{L - 1}"]
    keep = (m == 0).expand_as(last)
    assert torch.equal(last[keep], t["image_latents"][keep])

    i2i.check_time_ids(t, cap.unet[0]["time_ids"], p, on_refiner)

    meta = dict(i2i.case_meta(p), mask_image=p["mask_image"])
    draws = {i: [d for d, _ in per[i]] for i in range(B)}
    return {k: v.detach().contiguous() for k, v in t.items()}, meta, draws


def run_with_mask(pipes: dict, folder: Path, name: str, mask) -> dict:
    """Case `name` with `mask` (a binarized H x W array, passed as an L image) instead of its mask file."""
    import numpy as np
    from PIL import Image

    p = i2i.case_params(name, CASES)
    image = cn.load_image(folder / "img2img" / p["init_image"])
    call = call_args(p, image, Image.fromarray((mask * 255).astype(np.uint8), "L"))
    return i2i.call_pipeline(pipes["inpaint"], p, call)


def compare_img2img(pipes: dict, folder: Path, name: str, tensors: dict) -> tuple[float, float, float]:
    """The same request on StableDiffusionXLImg2ImgPipeline (no mask; make_img2img.run_case, the init image resized
    with Lanczos beforehand): (mean, max) |image_u8 difference| in 1/255 and the last latents' max |difference|.
    With batch 1 its moments, posterior randn, image_latents, noise and (strength < 1) starting latents are the
    inpaint pipeline's, bit for bit."""
    import torch

    key = f"{name}/img2img"
    i2i.CASES[key] = {k: v for k, v in CASES[name].items() if k != "mask_image"}
    try:
        other, _, _ = i2i.run_case({"img2img": pipes["img2img"]}, pipes["refiner_img2img"], folder, key)
    finally:
        del i2i.CASES[key]
    if tensors["image_latents"].shape[0] == 1:
        for k in ("encoder_moments", "encoder_noise", "image_latents", "noise", "noised_latents"):
            # strength 1: img2img starts from add_noise(image_latents, noise, first timestep), inpaint from pure noise
            assert torch.equal(other[k], tensors[k]) != (k == "noised_latents" and CASES[name]["strength"] == 1.0), k
    return i2i.difference(tensors, other)


def pixel_stats(folder: Path, name: str, tensors: dict) -> tuple[float, float]:
    """Mean |image_u8 - the (resized) init image's pixels| in 1/255 inside and outside the pixel mask."""
    import numpy as np

    p = i2i.case_params(name, CASES)
    init = np.asarray(i2i.init_image(folder / "img2img", p)).astype(np.float64)
    diff = np.abs(tensors["image_u8"].numpy().astype(np.float64) - init)
    inside = tensors["mask"][0, 0].numpy() == 1
    return float(diff[:, inside].mean()), float(diff[:, ~inside].mean())


def main() -> None:
    import numpy as np
    from PIL import Image

    args, cases = c.fixtures_args(__doc__, CASES)
    for img in i2i.IMAGES:
        assert (args.out / "img2img" / img).exists(), f"{args.out / 'img2img' / img}: run make_img2img.py first"
    i2i.write_images(args.out / "inpaint", dict(zip(MASKS, (draw_mask_64, draw_mask_80x60))))
    for mask, (W, H) in zip(MASKS, ((64, 64), (96, 64))):
        img = load_mask(args.out / "inpaint" / mask)
        changes = mask_changes(img, W, H)
        ref, _ = mask_variants(img, W, H)
        # at least 30 % of the latent cells masked and 30 % kept; the threshold cells as THRESHOLD_CELLS says
        assert 0.3 <= float(ref[::8, ::8].mean()) <= 0.7, (mask, float(ref[::8, ::8].mean()))
        if img.mode == "RGB":
            colours = np.unique(np.asarray(img).reshape(-1, 3), axis=0)
            got = np.asarray(Image.fromarray(colours[None], "RGB").convert("L"))[0].astype(np.int64)
            c64 = colours.astype(np.int64)
            assert np.array_equal(got, (19595 * c64[:, 0] + 38470 * c64[:, 1] + 7471 * c64[:, 2] + 0x8000) >> 16)
        if mask == "mask_64.png":
            for k, (colour, want) in enumerate(THRESHOLD_CELLS):
                assert ref[24 + 8 * (k // 2), 8 * (k % 2)] == want and ref[24:48, :16].sum() == 3 * 64, colour
        print(f"  {mask} ({img.mode}) at {W}x{H}, changed (pixels, latent cells) by:", flush=True)
        for k, v in changes.items():
            print(f"    {k}: {v}", flush=True)
    base = c.load_pipeline(args.model)
    refiner = i2i.stages.build_refiner(base)
    pipes = {
        "inpaint": inpaint_pipeline(base),
        "img2img": i2i.img2img_pipeline(base),
        "refiner_inpaint": refiner_inpaint_pipeline(refiner),
        "refiner_img2img": refiner,
    }
    for name in cases:
        tensors, meta, draws = run_case(pipes, args.out, name)
        i2i.check_encoder(args.out / "tiny-sdxl", name, tensors)
        mean, worst, lat = compare_img2img(pipes, args.out, name, tensors)
        inside, outside = pixel_stats(args.out, name, tensors)
        m = tensors["mask_latents"]
        shown = sorted(k for k in tensors if not k.startswith("latents_step_"))
        print(f"{name}: {', '.join(f'{k}{list(tensors[k].shape)}' for k in shown)}", flush=True)
        print(
            f"  {name}: {len(tensors['timesteps'])} evaluations {[round(x, 6) for x in tensors['timesteps'].tolist()]};"
            f" draws per generator {draws}; pixel mask {float(tensors['mask'].mean()):.3f} masked, latent mask"
            f" {float(m.mean()):.3f}",
            flush=True,
        )
        print(
            f"  {name}: |image_u8 - init image| inside the mask {inside:.1f}/255, outside {outside:.1f}/255;"
            f" |image_u8 - img2img without mask|: mean {mean:.1f}/255, max {worst:.0f}/255; last latents max |diff|"
            f" {lat:.3f}",
            flush=True,
        )
        # the mask must change the result clearly (a test that ignores it must fail)
        assert mean >= 2.0, (name, mean)
        # masks a wrong L formula or resize filter would make (those that change latent cells) change the result
        if name in SENSITIVITY:
            p = i2i.case_params(name, CASES)
            ref, variants = mask_variants(load_mask(args.out / "inpaint" / p["mask_image"]), p["width"], p["height"])
            assert np.array_equal(ref, tensors["mask"][0, 0].numpy())
            for variant in SENSITIVITY[name]:
                other = run_with_mask(pipes, args.out, name, variants[variant])
                mean, worst, lat = i2i.difference(tensors, other)
                print(
                    f"  {name}: mask with {variant}: |image_u8 diff| mean {mean:.2f}/255, max {worst:.0f}/255;"
                    f" last latents max |diff| {lat:.3f}",
                    flush=True,
                )
                assert worst >= 5.0, (name, variant, mean, worst)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
