"""Build the "bench" SDXL: the real SDXL architecture shrunk to run on 2 CPU cores in seconds per step, random weights.

This is the model bench/run.py times (sdxlrt vs optimum-onnx vs diffusers). It is regenerated, never committed
(1.4 GB diffusers folder + 1.4 GB ONNX export). One command:

    PY=$(onnx/setup_venv.sh) && $PY onnx/build_bench.py          # ~3-5 min on 2 cores, ~6 GB peak RAM

Output (default root $SDXLRT_BENCH_DIR, else ~/.cache/sdxlrt/bench):
    <root>/bench-sdxl-diffusers/   diffusers folder (safetensors): contender C (diffusers/PyTorch) loads it
    <root>/models/bench-sdxl/      no-fold ONNX export in optimum's layout (onnx/export_onnx.py): sdxlrt
                                   (models_root = <root>/models) and optimum-onnx load it
    <root>/models/bench-sdxl/BUILD_INFO.json   configs, parameter counts, versions, file sizes and sha256

Components (cpu_perf_anchors.md §1):
  unet            stabilityai/stable-diffusion-xl-base-1.0 unet/config.json with two changes: block_out_channels
                  [320,640,1280] -> [160,320,640] and transformer_layers_per_block [1,2,10] -> [1,1,2]. Every input
                  shape is real SDXL's (cross_attention_dim 2048, 2816 add-embedding input); heads stay [5,10,20], so
                  a head is 32 wide instead of 64. 232,322,884 parameters.
  vae             the real SDXL VAE config, not shrunk (83,653,863 parameters); its decoder is ~45 % of an image here.
  text_encoder    CLIPTextModel at real CLIP-L width (768, 12 heads, 3072, quick_gelu), 2 layers, vocab 1000
  text_encoder_2  CLIPTextModelWithProjection at real bigG width (1280, 20 heads, 5120, gelu, projection 1280),
                  2 layers, vocab 1000
  tokenizer(_2)   the v1000 tokenizers of tests/fixtures/tiny-sdxl (copied); tokenizer_2 pads with "!"
  scheduler       EulerDiscreteScheduler with the SDXL base config
Seeds: torch.manual_seed(0) before the UNet, the VAE and text_encoder, 1 before text_encoder_2; then every parameter
that random init leaves constant gets N(0, 0.02) noise from a generator seeded 1234 (build_tiny.py's
perturb_constant_params), so a wrong weight mapping changes the image.

With --controlnet (after the model) or --controlnet-only (from an existing <root>/bench-sdxl-diffusers), the bench
ControlNet for `bench/run.py --controlnet`:
    <root>/bench-controlnet-diffusers/              ControlNetModel.from_unet(the bench UNet), then every parameter
                                                    re-drawn from seed 33 by onnx/make_controlnet.py's
                                                    build_controlnet (the rules of its tiny ControlNets); diffusers
                                                    loads it
    <root>/models/controlnet/bench-controlnet/      export_onnx.py --controlnet of that folder (model.onnx +
                                                    config.json + BUILD_INFO.json): sdxlrt's `model_path`
                                                    "bench-controlnet"
    <root>/bench-controlnet-control.png             the control image, 512x512 RGB, canny-like edges drawn with PIL
                                                    (no random numbers)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import _common as c
import build_tiny
import export_onnx

BENCH_ROOT = Path(os.environ.get("SDXLRT_BENCH_DIR", str(Path.home() / ".cache" / "sdxlrt" / "bench")))
MODEL_NAME = "bench-sdxl"
CONTROLNET_NAME = "bench-controlnet"
CONTROLNET_SEED = 33
CONTROL_IMAGE = "bench-controlnet-control.png"
FIXTURE = c.FIXTURES / "tiny-sdxl"

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, with BENCH_CHANGES applied on top.
SDXL_UNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}
BENCH_CHANGES = {"block_out_channels": [160, 320, 640], "transformer_layers_per_block": [1, 1, 2]}
FULL_VOCAB = 49408

# stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (unchanged)
SDXL_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def clip_config(
    hidden: int, heads: int, intermediate: int, act: str, projection: int, layers: int = 2, vocab: int = 1000
):
    """Real CLIP-L / OpenCLIP bigG widths and SDXL's legacy ids (eos_token_id 2); the bench model keeps 2 layers and
    the v1000 vocabulary, the full-size model (bench/gpu) the real depth and vocabulary."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=hidden,
        intermediate_size=intermediate,
        layer_norm_eps=1e-05,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        max_position_embeddings=c.MAX_LENGTH,
        vocab_size=vocab,
        hidden_act=act,
        projection_dim=projection,
    )


def build_pipeline(full: bool = False, tokenizer_dirs: tuple[Path, Path] | None = None, device: str = "cpu"):
    """The bench model, or with `full` the real SDXL base architecture at full size (UNet 2.57 B parameters, CLIP-L
    with 12 layers, bigG with 32, the full CLIP vocabulary of `tokenizer_dirs`), random weights made on `device`
    (the same seeds give other numbers on a GPU than on the CPU)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet_config = SDXL_UNET_CONFIG if full else {**SDXL_UNET_CONFIG, **BENCH_CHANGES}
    depth = (12, 32) if full else (2, 2)
    vocab = FULL_VOCAB if full else 1000
    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(unet_config)
        torch.manual_seed(0)
        vae = AutoencoderKL.from_config(SDXL_VAE_CONFIG)
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(clip_config(768, 12, 3072, "quick_gelu", 768, depth[0], vocab))
        torch.manual_seed(1)  # a different seed, so the two encoders do not share weights
        text_encoder_2 = CLIPTextModelWithProjection(clip_config(1280, 20, 5120, "gelu", 1280, depth[1], vocab))

    gen = torch.Generator("cpu").manual_seed(build_tiny.PERTURB_SEED)
    models = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    perturbed = {}
    for name, model in models.items():
        perturbed[name] = build_tiny.perturb_constant_params(model, gen)
        model.eval()
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dirs[0] if tokenizer_dirs else FIXTURE / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(
            str(tokenizer_dirs[1] if tokenizer_dirs else FIXTURE / "tokenizer_2")
        ),
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(build_tiny.SDXL_SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    return pipe, params, perturbed


def copy_fixture_tokenizers(folder: Path) -> None:
    for name in ("tokenizer", "tokenizer_2"):
        dst = folder / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(FIXTURE / name, dst)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def draw_control_512():
    """Canny-like edges at 512x512: white, grey and orange lines, circles and boxes on black (the bench's control
    image; make_controlnet.py's control_64.png drawn at the bench size, with more shapes and 2-3 px lines)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (512, 512), (0, 0, 0))
    d = ImageDraw.Draw(img)
    d.ellipse((64, 48, 320, 304), outline=(255, 255, 255), width=3)
    d.ellipse((140, 120, 244, 224), outline=(255, 255, 255), width=2)
    d.line((16, 480, 488, 352), fill=(255, 255, 255), width=3)
    d.line((160, 16, 160, 240), fill=(255, 255, 255), width=2)
    d.rectangle((288, 240, 464, 432), outline=(128, 128, 128), width=3)
    d.rectangle((320, 280, 420, 400), outline=(255, 255, 255), width=2)
    d.line((32, 32, 240, 464), fill=(192, 192, 192), width=2)
    d.line([(336, 32), (400, 128), (488, 48)], fill=(255, 160, 32), width=3)
    d.polygon([(40, 380), (120, 300), (200, 420)], outline=(255, 255, 255), width=2)
    for x in range(48, 248, 24):
        d.ellipse((x, 396, x + 6, 402), fill=(64, 64, 64))
    return img


def build_controlnet(root: Path) -> dict:
    """The bench ControlNet from the bench UNet in <root>/bench-sdxl-diffusers (see the module docstring)."""
    import io

    import torch
    from diffusers import UNet2DConditionModel

    import make_controlnet

    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_pretrained(str(root / "bench-sdxl-diffusers" / "unet"), torch_dtype=torch.float32)
    cn = make_controlnet.build_controlnet(unet, CONTROLNET_SEED)
    del unet
    src = root / f"{CONTROLNET_NAME}-diffusers"
    shutil.rmtree(src, ignore_errors=True)
    cn.save_pretrained(str(src), safe_serialization=True)
    n_params = sum(p.numel() for p in cn.parameters())
    del cn
    dst = root / "models" / "controlnet" / CONTROLNET_NAME
    shutil.rmtree(dst, ignore_errors=True)
    t1 = time.perf_counter()
    diff = export_onnx.export_controlnet(src, dst, check=True)
    # absolute max |ORT - torch| of export_onnx's check inputs (the residuals of random weights are O(1-10))
    if diff > 1e-3:
        sys.exit(f"error: the exported ControlNet differs from torch by {diff:.3g}")
    buf = io.BytesIO()
    draw_control_512().save(buf, format="PNG", optimize=False)
    c.write_bytes_if_changed(root / CONTROL_IMAGE, buf.getvalue())
    info = {
        "controlnet": CONTROLNET_NAME,
        "from": "ControlNetModel.from_unet(bench-sdxl-diffusers/unet), every parameter re-drawn by "
        f"onnx/make_controlnet.py build_controlnet, seed {CONTROLNET_SEED}",
        "params": n_params,
        "onnx_vs_torch_max_abs_diff": diff,
        "export": "onnx/export_onnx.py --controlnet defaults (no constant folding, fp32)",
        "export_seconds": round(time.perf_counter() - t1, 1),
        "control_image": str(root / CONTROL_IMAGE),
        "control_image_sha256": sha256(root / CONTROL_IMAGE),
        "files": {
            f.name: {"bytes": f.stat().st_size, "sha256": sha256(f)}
            for f in sorted(dst.iterdir())
            if f.is_file() and f.name != "BUILD_INFO.json"
        },
    }
    c.write_json(dst / "BUILD_INFO.json", info)
    print(
        f"built {src} and {dst} ({n_params:,} parameters, ORT vs torch {diff:.3g}) and {root / CONTROL_IMAGE} in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=BENCH_ROOT, help="output root (default %(default)s)")
    ap.add_argument("--skip-diffusers", action="store_true", help="reuse an existing diffusers folder; export only")
    ap.add_argument(
        "--controlnet", action="store_true", help="then also build the bench ControlNet (bench/run.py --controlnet)"
    )
    ap.add_argument(
        "--controlnet-only",
        action="store_true",
        help="build only the bench ControlNet, from the existing <root>/bench-sdxl-diffusers",
    )
    args = ap.parse_args()

    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    if args.controlnet_only:
        if not (args.root / "bench-sdxl-diffusers" / "unet" / "config.json").exists():
            sys.exit(f"error: --controlnet-only needs {args.root / 'bench-sdxl-diffusers'} (run without it first)")
        build_controlnet(args.root)
        return
    diffusers_dir = args.root / "bench-sdxl-diffusers"
    onnx_dir = args.root / "models" / MODEL_NAME
    info = {
        "model": MODEL_NAME,
        "unet_config": {**SDXL_UNET_CONFIG, **BENCH_CHANGES},
        "unet_changes_from_sdxl_base": BENCH_CHANGES,
        "vae_config": SDXL_VAE_CONFIG,
        "text_encoders": "CLIP-L width (768/12/3072, quick_gelu) and bigG width (1280/20/5120, gelu, proj 1280), "
        "2 layers each, vocab 1000 (tests/fixtures/tiny-sdxl tokenizers)",
        "seeds": "manual_seed 0 before unet, vae, text_encoder; 1 before text_encoder_2; "
        f"constant params perturbed N(0,{build_tiny.PERTURB_STD}) seed {build_tiny.PERTURB_SEED}",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "export": "onnx/export_onnx.py defaults: TorchScript, opset 18, no constant folding, fp32",
    }

    t0 = time.perf_counter()
    if not args.skip_diffusers:
        if diffusers_dir.exists():
            shutil.rmtree(diffusers_dir)
        diffusers_dir.mkdir(parents=True)
        pipe, params, perturbed = build_pipeline()
        pipe.save_pretrained(str(diffusers_dir), safe_serialization=True)
        del pipe
        # save_pretrained re-saved the tokenizers through transformers: put the fixture's files back
        copy_fixture_tokenizers(diffusers_dir)
        # transformers 5 saves CLIPTextModel without the `text_model.` prefix, which transformers 4.57 (optimum's
        # venv) silently re-initializes: rewrite it in the layout of real SDXL checkpoints
        build_tiny.rewrite_text_encoder_keys(diffusers_dir / "text_encoder" / "model.safetensors")
        info["params"] = params
        info["perturbed_tensors"] = perturbed
        print(f"built {diffusers_dir} in {time.perf_counter() - t0:.1f} s: {params}", flush=True)
    elif not (diffusers_dir / "model_index.json").exists():
        sys.exit(f"error: --skip-diffusers but {diffusers_dir} has no model_index.json")

    t1 = time.perf_counter()
    print(f"exporting {diffusers_dir} -> {onnx_dir}", flush=True)
    export_onnx.export(diffusers_dir, onnx_dir)
    info["export_seconds"] = round(time.perf_counter() - t1, 1)
    files = {}
    for f in sorted(onnx_dir.rglob("*")):
        if f.is_file() and f.name != "BUILD_INFO.json":
            files[str(f.relative_to(onnx_dir))] = {"bytes": f.stat().st_size, "sha256": sha256(f)}
    info["files"] = files
    c.write_json(onnx_dir / "BUILD_INFO.json", info)
    print(f"exported in {info['export_seconds']} s; total {time.perf_counter() - t0:.1f} s", flush=True)
    for name, meta in files.items():
        if name.endswith(".onnx") or name.endswith("_data"):
            print(f"  {name}: {meta['bytes']:,} bytes", flush=True)
    if args.controlnet:
        build_controlnet(args.root)


if __name__ == "__main__":
    main()
