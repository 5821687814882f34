"""Write the fixtures of inpainting the masked area only (diffusers' `padding_mask_crop`, A1111's "inpaint area: only
masked"): two masks, the image operations' golden, the mask blur's golden (`data.mask_blur`) and three pipeline
goldens.

diffusers 0.42.1 StableDiffusionXLInpaintPipeline with padding_mask_crop=pad (VaeImageProcessor):
  1. crops_coords = mask_processor.get_crop_region(mask_image, width, height, pad): the bounding box of the mask's
     non-zero L pixels (no binarization), grown by `pad` (clipped to the image), then grown on one axis (Python
     int() and // on the float ratio) to the processing size's aspect ratio, shifted back inside the image
  2. the init image and the mask are cropped to crops_coords and resized with resize_mode "fill"
     (_resize_and_fill): Lanczos to fit inside width x height keeping the aspect ratio (integer //), centred in a
     black RGB canvas, the empty bands filled with resizes of the outermost rows / columns (Pillow boxes of zero
     height / width, e.g. resize((W, n), box=(0, 0, W, 0)): Lanczos taps of rows 0..2 around centre 0)
  3. the usual inpainting at width x height (make_inpaint.py: binarized mask, 4-channel UNet, blend per step)
  4. apply_overlay(mask_image, init image, image, crops_coords): the output is resized back to the crop's size with
     resize_mode "crop" (Lanczos to cover it, centred, the excess cut), pasted at the crop's corner on a black canvas
     of the init image's size, and the init image is composited over it with alpha = 255 - L(mask): Pillow's
     paste into a transparent "RGBa" image through the inverted mask (DIV255 blends), "RGBa" -> "RGBA"
     (255 v / a, truncated), then Image.alpha_composite's integer formula (7-bit coefficients)
  The reply has the init image's size; outside the mask it keeps the init image's pixels exactly.

Masks (tests/fixtures/inpaint/, mode L, for init_80x60.png; no random numbers):
  mask_crop_80x60.png   a disc (ellipse (46, 10)-(64, 28)) and a bar (50, 30)-(53, 41), blurred with Pillow's
                        GaussianBlur(2): 150 grey levels at the edges (the overlay blends them), non-zero pixels in
                        columns 41..69 and rows 5..46, 47 pixels fully white
  mask_strip_80x60.png  a 6-px wide column strip (x 12..17, y 2..57) and a 1-px row (y 30, x 8..70) with hard edges:
                        the crop region spans (nearly) the whole image on one axis, so "fill" resizes pad bands

Image-operations golden (tests/fixtures/goldens/mask_crop_ops.safetensors): per case k (OPS below): region_k
int64 [4] (x1, y1, x2, y2), init_k uint8 [H, W, 3] and mask_k uint8 [H, W] (the cropped, "fill"-resized init image
and the mask as the pipeline's processors make them, before / 255 and binarization), generated_k uint8 [H, W, 3] (a
deterministic pattern standing in for the generated image) and overlay_k uint8 [60, 80, 3]
(image_processor.apply_overlay of it). Metadata: ops (JSON list of [mask, width, height, pad]).

Mask-blur golden (tests/fixtures/goldens/mask_blur_ops.safetensors): diffusers' VaeImageProcessor.blur(image,
blur_factor=r), i.e. Pillow 13.0.0's image.filter(ImageFilter.GaussianBlur(r)) (ImagingGaussianBlur: three extended
box passes per axis in 24-bit fixed point), of each image in BLUR_IMAGES at each radius in BLUR_RADII (0, fractional,
and 33, larger than the small images): blur_<image>_<k> uint8 [H, W] (the L masks) or [H, W, 3] (RGB), and
input_<image> for the images made here (seeded numpy noise; the masks are the fixture PNGs). Metadata: images
(JSON {name: fixture path or ""}), radii (JSON list).

Pipeline goldens (tests/fixtures/goldens/<case>.safetensors), as make_inpaint.py's (Euler, cfg_neg's prompts,
guidance 5, seed 0, init_80x60.png) with padding_mask_crop: latents_step_<i> (callback_on_step_end's latents),
image_u8 [1, 60, 80, 3] (the overlaid PIL output). Metadata as make_inpaint.py's plus padding_mask_crop (and
mask_blur: the mask given to the pipeline is mask_processor.blur(mask, blur_factor=mask_blur), as diffusers' docs do
it, so the crop region, the resized mask and the overlay all see the blurred mask).

  case              mask                  width x height  pad  steps  strength  mask_blur
  inpaint_crop      mask_crop_80x60.png   64 x 64         4    5      0.8       -
  inpaint_crop_fill mask_strip_80x60.png  96 x 64         2    4      0.75      -
  inpaint_crop_blur mask_crop_80x60.png   64 x 64         4    4      0.8       4

Usage: python make_inpaint_crop.py [--model DIR] [--out tests/fixtures] [--cases inpaint_crop,...]
       (--out must hold img2img/init_80x60.png (make_img2img.py) already)
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import _common as c
import make_controlnet as cn
import make_img2img as i2i
import make_inpaint as inp

INIT = "init_80x60.png"
MASKS = ("mask_crop_80x60.png", "mask_strip_80x60.png")
OPS = (
    ("mask_crop_80x60.png", 64, 64, 4),  # square crop inside the image: no fill band
    ("mask_crop_80x60.png", 96, 64, 0),  # wider than the mask: grown horizontally
    ("mask_strip_80x60.png", 96, 64, 2),  # the whole image (80 x 60) for 96 x 64: fill columns left and right
    ("mask_strip_80x60.png", 64, 128, 0),  # 80 x 60 for 64 x 128: fill rows above and below
    ("mask_crop_80x60.png", 40, 64, 30),  # a large pad clipped to the image, grown and shifted back inside
)
BASE = dict(i2i.BASE_CASE, init_image=INIT)
CASES = {
    "inpaint_crop": dict(BASE, width=64, height=64, mask_image=MASKS[0], padding_mask_crop=4, steps=5, strength=0.8),
    "inpaint_crop_fill": dict(
        BASE, width=96, height=64, mask_image=MASKS[1], padding_mask_crop=2, steps=4, strength=0.75
    ),
    "inpaint_crop_blur": dict(
        BASE, width=64, height=64, mask_image=MASKS[0], padding_mask_crop=4, mask_blur=4, steps=4, strength=0.8
    ),
}
# The mask-blur golden: fixture masks (L) and seeded noise (RGB; the small ones are narrower than the large radii).
BLUR_IMAGES = {
    "mask_crop": "inpaint/mask_crop_80x60.png",
    "mask_strip": "inpaint/mask_strip_80x60.png",
    "noise_64x48": "",
    "noise_5x3": "",
    "noise_1x7": "",
}
# 1.3 and 8.7: _gaussian_blur_radius's float steps give box weights one unit (of 2^24) off what double math gives,
# and that changes bytes of the 64 x 48 noise; 33 is wider than the small images.
BLUR_RADII = (0, 0.5, 1, 1.3, 2, 4, 7.3, 8.7, 33)


def draw_mask_crop():
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("L", (80, 60), 0)
    d = ImageDraw.Draw(img)
    d.ellipse((46, 10, 64, 28), fill=255)
    d.rectangle((50, 30, 53, 41), fill=255)
    return img.filter(ImageFilter.GaussianBlur(2))


def draw_mask_strip():
    from PIL import Image, ImageDraw

    img = Image.new("L", (80, 60), 0)
    d = ImageDraw.Draw(img)
    d.rectangle((12, 2, 17, 57), fill=255)
    d.line((8, 30, 70, 30), fill=255, width=1)
    return img


def write_masks(folder: Path) -> None:
    for name, draw in zip(MASKS, (draw_mask_crop, draw_mask_strip)):
        buf = io.BytesIO()
        draw().save(buf, format="PNG", optimize=False)
        c.write_bytes_if_changed(folder / name, buf.getvalue())


def pattern(width: int, height: int):
    """A deterministic RGB image standing in for a generated one."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(7 * x + 3 * y) % 256, (5 * y + 11 * x * y) % 256, (255 - 4 * x) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def write_ops(folder: Path) -> None:
    """The image-operations golden (see the module docstring)."""
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    image_processor = VaeImageProcessor(vae_scale_factor=8)
    mask_processor = VaeImageProcessor(
        vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True
    )
    init = cn.load_image(folder / "img2img" / INIT)
    tensors = {}
    for k, (mask_name, W, H, pad) in enumerate(OPS):
        mask = inp.load_mask(folder / "inpaint" / mask_name)
        region = mask_processor.get_crop_region(mask, W, H, pad=pad)
        tensors[f"region_{k}"] = np.array(region, dtype=np.int64)
        filled = image_processor.resize(init.crop(region), H, W, resize_mode="fill").convert("RGB")
        tensors[f"init_{k}"] = np.asarray(filled)
        mask_filled = mask_processor.convert_to_grayscale(mask_processor.resize(mask.crop(region), H, W, "fill"))
        tensors[f"mask_{k}"] = np.asarray(mask_filled)
        # the processors' tensors are these bytes / 255 (and, for the init image, * 2 - 1)
        pre = image_processor.preprocess(init, height=H, width=W, crops_coords=region, resize_mode="fill")
        assert np.array_equal(pre[0].permute(1, 2, 0).numpy(), np.asarray(filled) / np.float32(127.5) - 1)
        pre_mask = mask_processor.preprocess(mask, height=H, width=W, crops_coords=region, resize_mode="fill")
        assert np.array_equal(pre_mask[0, 0].numpy(), (np.asarray(mask_filled) / np.float32(255) >= 0.5) * 1.0)
        generated = pattern(W, H)
        tensors[f"generated_{k}"] = np.asarray(generated)
        tensors[f"overlay_{k}"] = np.asarray(image_processor.apply_overlay(mask, init, generated, region))
        x1, y1, x2, y2 = region
        print(f"  ops {k}: {mask_name} {W}x{H} pad {pad}: region {region} ({x2 - x1}x{y2 - y1})", flush=True)
    c.write_safetensors(folder / "goldens" / "mask_crop_ops.safetensors", tensors, {"ops": json.dumps(OPS)})


def noise(name: str):
    """A seeded RGB noise image, `noise_<W>x<H>` (numpy RandomState seeded with W * 1000 + H)."""
    import numpy as np
    from PIL import Image

    w, h = (int(v) for v in name.removeprefix("noise_").split("x"))
    return Image.fromarray(np.random.RandomState(w * 1000 + h).randint(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def write_blur_ops(folder: Path) -> None:
    """The mask-blur golden (see the module docstring)."""
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    tensors = {}
    for name, path in BLUR_IMAGES.items():
        image = inp.load_mask(folder / path) if path else noise(name)
        if not path:
            tensors[f"input_{name}"] = np.asarray(image)
        for k, radius in enumerate(BLUR_RADII):
            tensors[f"blur_{name}_{k}"] = np.asarray(VaeImageProcessor.blur(image, blur_factor=radius))
        print(f"  blur {name} ({image.mode} {image.width}x{image.height}): radii {BLUR_RADII}", flush=True)
    meta = {"images": json.dumps(BLUR_IMAGES), "radii": json.dumps(BLUR_RADII)}
    c.write_safetensors(folder / "goldens" / "mask_blur_ops.safetensors", tensors, meta)


def case_mask(folder: Path, p: dict):
    """The case's mask as the pipeline gets it: the fixture, blurred by mask_processor.blur with `mask_blur`."""
    from diffusers.image_processor import VaeImageProcessor

    mask = inp.load_mask(folder / "inpaint" / p["mask_image"])
    return VaeImageProcessor.blur(mask, blur_factor=p["mask_blur"]) if "mask_blur" in p else mask


def run_case(pipe, folder: Path, name: str) -> tuple[dict, dict]:
    p = i2i.case_params(name, CASES)
    image = cn.load_image(folder / "img2img" / p["init_image"])
    call = inp.call_args(p, image, case_mask(folder, p), padding_mask_crop=p["padding_mask_crop"])
    t = {k: v.contiguous() for k, v in i2i.call_pipeline(pipe, p, call, output_type="pil").items()}
    meta = dict(i2i.case_meta(p), mask_image=p["mask_image"], padding_mask_crop=str(p["padding_mask_crop"]))
    if "mask_blur" in p:
        meta["mask_blur"] = repr(p["mask_blur"])
    return t, meta


def main() -> None:
    import numpy as np

    args, cases = c.fixtures_args(__doc__, CASES)
    assert (args.out / "img2img" / INIT).exists(), "run make_img2img.py first"
    write_masks(args.out / "inpaint")
    write_ops(args.out)
    write_blur_ops(args.out)
    pipe = inp.inpaint_pipeline(c.load_pipeline(args.model))
    init = np.asarray(cn.load_image(args.out / "img2img" / INIT)).astype(np.int64)
    for name in cases:
        tensors, meta = run_case(pipe, args.out, name)
        image = tensors["image_u8"][0].numpy().astype(np.int64)
        mask = np.asarray(case_mask(args.out, CASES[name]).convert("L"))
        kept = mask == 0
        assert image.shape == init.shape and np.array_equal(image[kept], init[kept]), name
        changed = np.abs(image - init)[mask >= 128]
        print(f"{name}: {len(steps := [k for k in tensors if k.startswith('latents_step_')])} evaluations;"
              f" where the mask is >= 128 |image - init| mean {changed.mean():.1f}/255; outside: equal", flush=True)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
