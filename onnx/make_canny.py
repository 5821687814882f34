"""Write the Canny preprocessor's goldens: small RGB images and OpenCV's edge maps of them.

sdxlrt's `preprocessor: "canny"` (src/image/canny.rs) must give the bytes diffusers' docs and ONNX Runtime's SDXL
demo make a canny control image with: `cv2.Canny(np.array(rgb_image), low, high)` (apertureSize 3, L2gradient
False) on the 3-channel uint8 image, the one channel then stacked three times. This script runs exactly that call.

  controlnet/canny/<name>.png               the RGB inputs (8-bit RGB PNG):
      photo_67x45     a natural-ish picture: gradients, noise, filled shapes, a thin line; the channels disagree
      flat_32x24      flat blocks with sharp steps and a single noisy spot: most of it has no gradient at all
      ties_24x16      steps whose gradient |dx| + |dy| is exactly 100 or 200, so 100/200 thresholds tie, and steps
                      where two channels tie in magnitude but not in direction
      channels_40x30  each channel its own pattern (R vertical bands, G horizontal bands, B a diagonal ramp)
      channel_ties_24x18  R = s(x) + s(y)/2 and G = s(x) - s(y)/2 for a staircase s: R and G have the same
                      |dx| + |dy| everywhere but mirrored directions, so the first channel's winning a tie decides
                      which diagonal non-maximum suppression looks along
      thin_1x9, thin_9x2, pixel_1x1   degenerate sizes (the border is replicated)
  controlnet/canny/<name>_<low>_<high>.png  cv2.Canny's output (8-bit greyscale PNG, 0 or 255) for each threshold
                                            pair: 100/200 (the docs' defaults), 100/100, 0/0, 300/600, 50.7/120.2
                                            and 99/199 (just below the ties)
  controlnet/canny/cases.json               [{"input", "low_threshold", "high_threshold", "edges"}], the list the
                                            Rust tests walk, and the OpenCV version

OpenCV swaps the thresholds when low > high; sdxlrt refuses that request, so no such case is written.

Usage: python make_canny.py [--out tests/fixtures]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SEED = 20261203
THRESHOLDS = [(100, 200), (100, 100), (0, 0), (300, 600), (50.7, 120.2), (99, 199)]


def photo(rng: np.random.Generator) -> np.ndarray:
    h, w = 45, 67
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([xx * 3.1 + 20, yy * 4.2 + 10, 128 + 60 * np.sin(xx / 5.0 + yy / 7.0)], axis=2)
    img += rng.normal(0, 6, img.shape)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    img = np.ascontiguousarray(img)
    cv2.circle(img, (20, 22), 11, (250, 40, 30), -1)
    cv2.rectangle(img, (38, 6), (60, 30), (10, 200, 90), -1)
    cv2.line(img, (2, 40), (64, 33), (255, 255, 255), 1)
    cv2.ellipse(img, (50, 36), (9, 5), 30, 0, 360, (90, 90, 250), -1)
    return img


def flat(rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, :] = (40, 40, 40)
    img[4:20, 5:15] = (200, 40, 40)
    img[10:22, 18:30] = (40, 40, 200)
    img[2:6, 20:28] = (41, 42, 40)
    img[14:17, 8:11] = rng.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    return img


def ties() -> np.ndarray:
    img = np.zeros((16, 24, 3), np.uint8)
    # Vertical steps of 25 (|dx| = 100 on both sides of the step) and 50 (|dx| = 200), grey.
    for x0, v in [(0, 0), (6, 25), (12, 75), (18, 125)]:
        img[:8, x0:] = v
    # Below: R steps left to right, G steps top to bottom by the same amount, so at the corner where both change
    # the two channels' magnitudes tie and the first (R) decides the direction.
    img[8:, :, 0] = np.where(np.arange(24) >= 12, 50, 0)[None, :]
    img[8:, :, 1] = np.where(np.arange(8) >= 4, 50, 0)[:, None]
    img[8:, :, 2] = 25
    return img


def channels() -> np.ndarray:
    h, w = 30, 40
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.where((xx // 5) % 2 == 0, 30, 220)
    g = np.where((yy // 6) % 2 == 0, 200, 60)
    b = (xx * 4 + yy * 5) % 256
    return np.stack([r, g, b], axis=2).astype(np.uint8)


def channel_ties() -> np.ndarray:
    h, w = 18, 24
    yy, xx = np.mgrid[0:h, 0:w]
    step = lambda t: 25 * (t // 3)  # noqa: E731
    r = step(xx) + step(yy) // 2
    g = step(xx) - step(yy) // 2 + 64
    return np.stack([r, g, np.full_like(r, 90)], axis=2).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures")
    args = ap.parse_args()
    folder = args.out / "controlnet" / "canny"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    inputs = {
        "photo_67x45": photo(rng),
        "flat_32x24": flat(rng),
        "ties_24x16": ties(),
        "channels_40x30": channels(),
        "channel_ties_24x18": channel_ties(),
        "thin_1x9": rng.integers(0, 256, (9, 1, 3), dtype=np.uint8),
        "thin_9x2": rng.integers(0, 256, (2, 9, 3), dtype=np.uint8),
        "pixel_1x1": np.array([[[200, 10, 90]]], np.uint8),
    }
    cases = []
    for name, img in inputs.items():
        Image.fromarray(img, "RGB").save(folder / f"{name}.png")
        # What is compared is what a PNG round trip gives back.
        rgb = np.array(Image.open(folder / f"{name}.png").convert("RGB"))
        assert np.array_equal(rgb, img), name
        for low, high in THRESHOLDS:
            edges = cv2.Canny(rgb, low, high)
            assert edges.shape == img.shape[:2] and set(np.unique(edges)) <= {0, 255}, name
            out = f"{name}_{low}_{high}.png"
            Image.fromarray(edges, "L").save(folder / out)
            cases.append({"input": f"{name}.png", "low_threshold": low, "high_threshold": high, "edges": out})
    doc = {"opencv": cv2.__version__, "call": "cv2.Canny(rgb_uint8_hwc, low_threshold, high_threshold)", "cases": cases}
    (folder / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(inputs)} inputs and {len(cases)} edge maps to {folder} (OpenCV {cv2.__version__})")


if __name__ == "__main__":
    main()
