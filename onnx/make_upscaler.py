"""Write the upscaler test fixtures: a tiny random-weight ESRGAN-like ×2 network as ONNX, and torch goldens.

The network is Real-ESRGAN's structure shrunk (basicsr's SRVGGNetCompact / RRDBNet tail): conv_first →
one residual block (conv, LeakyReLU 0.2, conv, + input) → conv_body (+ conv_first's output) → nearest ×2 →
conv_up, LeakyReLU → conv_hr, LeakyReLU → conv_last, plus the nearest ×2 upsampled input (SRVGGNetCompact's
`out += base`), so the output stays near the input's range and every weight still changes it. 16 features, 3×3
convolutions: a receptive field of ±6 input pixels (±4 before the upsample, ±3 output pixels after it), so tiles
with an overlap of 8 give exactly the untiled result.

  upscalers/tiny-x2.onnx          float32, input `input` [1,3,height,width] RGB in [0,1], output `output`
                                  [1,3,2*height,2*width]; TorchScript exporter (dynamo=False), opset 17
  upscalers/tiny-x2-fp16.onnx     the same network in float16 (input and output float16)
  upscalers/bad-scale-1.5x.onnx   one nearest Resize by 1.5 (onnx.helper): a model with no integer scale

Goldens (goldens/upscale_x2.safetensors), computed as the Rust upscaler is specified: RGB8 / 255 in, output
clamped to [0, 1], × 255, rounded half to even, u8:

  input          u8 [H, W, 3]      a seeded 40×24 image (smooth gradients + noise)
  output_x2      u8 [2H, 2W, 3]    one pass of the network
  output_x4      u8 [4H, 4W, 3]    a second pass over output_x2 (A1111's loop: each pass starts from 8-bit pixels)
  lanczos_x3     u8 [3H, 3W, 3]    output_x4 resized to 3W×3H by PIL's LANCZOS (factor 3 = two passes, then down)
  lanczos_up     u8 [60, 100, 3]   input resized up to 100×60 by PIL's LANCZOS (what a 1× model's factor 2.5 would do)
  output_float   f32 [1, 3, 2H, 2W] the network's raw output for `input` (before clamping)

Metadata: torch and PIL versions, the seed, the input size.

Usage: python make_upscaler.py [--out tests/fixtures]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common as c

SEED = 20240521
FEAT = 16
OPSET = 17
WIDTH, HEIGHT = 40, 24


def build_network():
    """The seeded tiny ×2 network (eval mode)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class TinyEsrgan(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_first = nn.Conv2d(3, FEAT, 3, 1, 1)
            self.body_conv1 = nn.Conv2d(FEAT, FEAT, 3, 1, 1)
            self.body_conv2 = nn.Conv2d(FEAT, FEAT, 3, 1, 1)
            self.conv_body = nn.Conv2d(FEAT, FEAT, 3, 1, 1)
            self.conv_up = nn.Conv2d(FEAT, FEAT, 3, 1, 1)
            self.conv_hr = nn.Conv2d(FEAT, FEAT, 3, 1, 1)
            self.conv_last = nn.Conv2d(FEAT, 3, 3, 1, 1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2)

        def forward(self, x):
            feat = self.conv_first(x)
            body = feat + self.body_conv2(self.lrelu(self.body_conv1(feat)))
            feat = feat + self.conv_body(body)
            feat = self.lrelu(self.conv_up(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
            out = self.conv_last(self.lrelu(self.conv_hr(feat)))
            return out + F.interpolate(x, scale_factor=2.0, mode="nearest")

    torch.manual_seed(SEED)
    net = TinyEsrgan().eval()
    with torch.no_grad():
        # The default init gives conv_last an output of about ±0.5; a quarter of that keeps most pixels unclamped.
        net.conv_last.weight.mul_(0.25)
        net.conv_last.bias.mul_(0.25)
    return net


def export(net, path: Path, half: bool) -> None:
    """TorchScript export with dynamic height/width, doc strings stripped (bytes depend on weights only)."""
    import onnx
    import torch

    module = net.half() if half else net
    dummy = torch.rand(1, 3, 16, 16, dtype=torch.float16 if half else torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp_file),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {2: "height", 3: "width"}, "output": {2: "out_height", 3: "out_width"}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp_file))
    model.doc_string = ""
    model.graph.doc_string = ""
    model.producer_version = ""
    for node in model.graph.node:
        node.doc_string = ""
    onnx.checker.check_model(model)
    c.write_bytes_if_changed(path, model.SerializeToString())


def bad_scale_model(path: Path) -> None:
    """A graph whose output is 1.5× its input (nearest Resize): no integer native scale."""
    import onnx
    from onnx import TensorProto, helper

    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, 1.5, 1.5])
    node = helper.make_node("Resize", ["input", "", "scales"], ["output"], mode="nearest")
    graph = helper.make_graph(
        [node],
        "bad_scale",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "out_height", "out_width"])],
        initializer=[scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_upscaler")
    model.ir_version = 8
    onnx.checker.check_model(model)
    c.write_bytes_if_changed(path, model.SerializeToString())


def test_image():
    """A seeded RGB8 image [H, W, 3]: gradients in each channel plus noise, some pixels at 0 and 255."""
    import torch

    g = torch.Generator().manual_seed(SEED)
    y = torch.linspace(0, 1, HEIGHT).view(HEIGHT, 1).expand(HEIGHT, WIDTH)
    x = torch.linspace(0, 1, WIDTH).view(1, WIDTH).expand(HEIGHT, WIDTH)
    base = torch.stack([x, y, 1 - (x + y) / 2], dim=-1)
    noisy = base * 1.2 - 0.1 + 0.15 * torch.randn(HEIGHT, WIDTH, 3, generator=g)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8)


def upscale_u8(net, image_u8):
    """One pass as the Rust upscaler does it: u8 HWC → [1,3,H,W] / 255 → net → clamp → ×255 → round → u8 HWC."""
    import torch

    x = image_u8.permute(2, 0, 1).unsqueeze(0).to(torch.float32) / 255.0
    with torch.no_grad():
        out = net(x)
    u8 = (out.clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).contiguous()
    return u8, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=c.FIXTURES)
    args = ap.parse_args()

    import numpy as np
    import PIL
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    folder = args.out / "upscalers"
    net = build_network()
    image = test_image()
    x2, raw = upscale_u8(net, image)
    x4, _ = upscale_u8(net, x2)
    lanczos = Image.fromarray(x4.numpy()).resize((3 * WIDTH, 3 * HEIGHT), Image.LANCZOS)
    up = Image.fromarray(image.numpy()).resize((100, 60), Image.LANCZOS)
    tensors = {
        "input": image,
        "output_x2": x2,
        "output_x4": x4,
        "lanczos_x3": torch.from_numpy(np.asarray(lanczos, dtype=np.uint8).copy()),
        "lanczos_up": torch.from_numpy(np.asarray(up, dtype=np.uint8).copy()),
        "output_float": raw.contiguous(),
    }
    meta = {
        "torch_version": torch.__version__,
        "pil_version": PIL.__version__,
        "seed": str(SEED),
        "width": str(WIDTH),
        "height": str(HEIGHT),
        "model": "upscalers/tiny-x2.onnx",
    }
    c.write_golden(args.out / "goldens" / "upscale_x2.safetensors", tensors, meta)

    export(net, folder / "tiny-x2.onnx", half=False)
    export(build_network(), folder / "tiny-x2-fp16.onnx", half=True)
    bad_scale_model(folder / "bad-scale-1.5x.onnx")
    check(folder, image, raw)


def check(folder: Path, image_u8, raw) -> None:
    """onnxruntime runs the exported graphs like torch: fp32 within 1e-5, fp16 within 2e-2, the bad model at 1.5×."""
    import numpy as np
    import onnxruntime as ort

    x = (image_u8.permute(2, 0, 1).unsqueeze(0).numpy().astype(np.float32)) / np.float32(255)
    sess = ort.InferenceSession(str(folder / "tiny-x2.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["output"], {"input": x})[0]
    assert got.shape == (1, 3, 2 * HEIGHT, 2 * WIDTH), got.shape
    assert np.abs(got - raw.numpy()).max() < 1e-5, np.abs(got - raw.numpy()).max()
    half = ort.InferenceSession(str(folder / "tiny-x2-fp16.onnx"), providers=["CPUExecutionProvider"])
    got16 = half.run(["output"], {"input": x.astype(np.float16)})[0].astype(np.float32)
    assert np.abs(got16 - raw.numpy()).max() < 2e-2, np.abs(got16 - raw.numpy()).max()
    bad = ort.InferenceSession(str(folder / "bad-scale-1.5x.onnx"), providers=["CPUExecutionProvider"])
    assert bad.run(["output"], {"input": x})[0].shape == (1, 3, 36, 60)
    unclamped = float(((raw >= 0) & (raw <= 1)).float().mean())
    print(f"upscalers: fp32 max |ort - torch| {np.abs(got - raw.numpy()).max():.2e}, fp16 "
          f"{np.abs(got16 - raw.numpy()).max():.2e}, {unclamped:.0%} of outputs inside [0, 1]")


if __name__ == "__main__":
    main()
