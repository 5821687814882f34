"""The full-size random-weight SDXL for the GPU check (bench/gpu/run.sh), in two steps so the GPU machine only
writes weights:

    python bench/gpu/make_model.py graphs GRAPHS [--small]              (anywhere: ~10 MB of graphs, no weights)
    python bench/gpu/make_model.py fill GRAPHS ROOT [--small] [--device cuda]    (on the GPU machine: ~1 minute)

The real SDXL base architecture at full size from the public configs (onnx/build_bench.py's SDXL_UNET_CONFIG and
SDXL_VAE_CONFIG, CLIP-L with 12 layers, OpenCLIP bigG with 32, the full CLIP vocabulary from
tests/fixtures/clip-vocab-full). `graphs` traces every graph without its weights (onnx/weightless.py): fp16 graphs
(VAE decoder fp32) with diffusers' parameter names, as onnx/export_onnx.py --fp16 --vae-fp32 writes them, plus the
UNet with MultiHeadAttention nodes (export_onnx.py --fused-attention). `fill` builds the same architecture with
random weights from fixed seeds (on the GPU: seconds instead of minutes), writes them into the graphs' data files by
name, and saves the same weights as a diffusers folder:

    ROOT/models/sdxl-fp16/        what sdxlrt loads (READY)
    ROOT/models/sdxl-fp16-fused/  the same weights, UNet attention as MultiHeadAttention (READY-FUSED; its data
                                  files are hard links to the plain export's)
    ROOT/sdxl-diffusers/          the same weights for PyTorch eager: fp16, VAE fp32
    ROOT/make_model.json          timings

--small uses onnx/build_bench.py's bench model instead (to try the whole check on a CPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "onnx"))

import _common as c  # noqa: E402
import build_bench  # noqa: E402
import export_onnx  # noqa: E402
import weightless  # noqa: E402

COMPONENTS = ("text_encoder", "text_encoder_2", "vae_decoder", "unet")
PLAIN, FUSED = "models/sdxl-fp16", "models/sdxl-fp16-fused"


def full_vocab_tokenizers(root: Path) -> tuple[Path, Path]:
    """CLIP tokenizer folders with the full vocabulary: `tokenizer` pads with <|endoftext|>, `tokenizer_2` with "!"."""
    src = REPO / "tests" / "fixtures" / "clip-vocab-full"
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    lines = (src / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    dirs = (root / "tokenizer", root / "tokenizer_2")
    c.write_tokenizer_folder(dirs[0], vocab, merges, c.EOS, with_tokenizer_json=False)
    c.write_tokenizer_folder(dirs[1], vocab, merges, "!", with_tokenizer_json=False)
    return dirs


def build(root: Path, small: bool, device: str, info: dict):
    t0 = time.perf_counter()
    tokenizers = None if small else full_vocab_tokenizers(root / "tokenizers")
    pipe, params, _ = build_bench.build_pipeline(full=not small, tokenizer_dirs=tokenizers, device=device)
    info.update(params=params, build_s=round(time.perf_counter() - t0, 1))
    print(f"built on {device} in {info['build_s']} s: {params}", flush=True)
    return pipe


def graphs(out: Path, small: bool) -> None:
    import torch

    info: dict = {"small": small, "torch": torch.__version__}
    if out.exists():
        shutil.rmtree(out)
    pipe = build(out, small, "cpu", info)
    t = time.perf_counter()
    info["data_bytes"] = weightless.export_graphs(
        pipe, out / PLAIN, COMPONENTS, fp16=True, vae_fp32=True, fused_unet=out / FUSED
    )
    info["export_s"] = round(time.perf_counter() - t, 1)
    shutil.rmtree(out / "tokenizers", ignore_errors=True)
    c.write_json(out / "graphs.json", info)
    print(f"graphs in {out} after {info['export_s']} s", flush=True)


def fill(src: Path, root: Path, small: bool, device: str) -> None:
    import torch

    t0 = time.perf_counter()
    info: dict = {"small": small, "torch": torch.__version__, "device": device}
    for marker in ("READY", "READY-FUSED"):
        (root / marker).unlink(missing_ok=True)
    for folder in (PLAIN, FUSED, "sdxl-diffusers"):
        shutil.rmtree(root / folder, ignore_errors=True)
    shutil.copytree(src / PLAIN, root / PLAIN)
    pipe = build(root, small, device, info)

    t = time.perf_counter()
    done: dict = {}
    unet_tensors = None
    for component in COMPONENTS:
        spec = export_onnx.component_spec(pipe, component, torch.int64)
        rename = spec.rename or (lambda name: name)
        tensors = {rename(k): v for k, v in spec.module.state_dict().items()}
        how = weightless.fill(root / PLAIN / component / "model.onnx", tensors, done)
        print(f"  {component}: {how}", flush=True)
        unet_tensors = tensors if component == "unet" else unet_tensors
    info["fill_s"] = round(time.perf_counter() - t, 1)

    # the fused export: its own UNet graph, everything else (data files included) hard links to the plain one's
    for f in (root / PLAIN).rglob("*"):
        dst = root / FUSED / f.relative_to(root / PLAIN)
        if f.is_dir() or dst.exists() or (dst.parent.name == "unet" and f.name == "model.onnx"):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dst)
    fused_unet = root / FUSED / "unet" / "model.onnx"
    shutil.copyfile(src / FUSED / "unet" / "model.onnx", fused_unet)
    print(f"  fused unet: {weightless.fill(fused_unet, unet_tensors, done)}", flush=True)
    del unet_tensors

    t = time.perf_counter()
    pipe.to(torch.float16)
    pipe.vae.to(torch.float32)
    pipe.save_pretrained(str(root / "sdxl-diffusers"), safe_serialization=True)
    info["save_diffusers_s"] = round(time.perf_counter() - t, 1)
    files = sorted(f for f in (root / PLAIN).rglob("*") if f.is_file())
    info["bytes"] = {str(f.relative_to(root)): f.stat().st_size for f in files}
    info["total_s"] = round(time.perf_counter() - t0, 1)
    c.write_json(root / "make_model.json", info)
    (root / "READY").write_text("ready\n")
    (root / "READY-FUSED").write_text("ready\n")
    print(f"READY after {info['total_s']} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("graphs", help="the graphs without weights")
    g.add_argument("out", type=Path)
    f = sub.add_parser("fill", help="random weights into a copy of the graphs, and the diffusers folder")
    f.add_argument("graphs", type=Path)
    f.add_argument("root", type=Path)
    f.add_argument("--device", default="cuda", help="where the random weights are made (default %(default)s)")
    for p in (g, f):
        p.add_argument("--small", action="store_true", help="the bench model instead of full size (CPU trials)")
    args = ap.parse_args()
    if args.command == "graphs":
        graphs(args.out, args.small)
    else:
        args.root.mkdir(parents=True, exist_ok=True)
        fill(args.graphs, args.root, args.small, args.device)


if __name__ == "__main__":
    main()
