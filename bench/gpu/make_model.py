"""Build the full-size random-weight SDXL for the GPU check (bench/gpu/run.sh), on the GPU machine's CPUs.

    python bench/gpu/make_model.py ROOT [--small] [--part plain|fused|ort]     (run the parts at once)

The real SDXL base architecture at full size from the public configs (onnx/build_bench.py's SDXL_UNET_CONFIG and
SDXL_VAE_CONFIG, CLIP-L with 12 layers, OpenCLIP bigG with 32, the full CLIP vocabulary from
tests/fixtures/clip-vocab-full), random weights from fixed seeds, no download. Writes:

    ROOT/models/sdxl-fp16/        onnx/export_onnx.py: fp16 graphs (VAE decoder kept fp32), no-fold, UNet with
                                  external data; what sdxlrt loads
    ROOT/models/sdxl-fp16-fused/  (--part fused) the same, UNet attention as MultiHeadAttention nodes
                                  (export_onnx.py --fused-attention), same fp16 weights
    ROOT/models/sdxl-fp16-ort/    (--part ort) the same, UNet through onnxruntime's stable-diffusion fusions
                                  (export_onnx.py --ort-optimize; its Python pass takes over 20 min at full size)
    ROOT/sdxl-diffusers/          the same weights as a diffusers folder in fp16 (VAE fp32): PyTorch eager loads it
    ROOT/READY, READY-FUSED, READY-ORT   written when each part is complete; ROOT/make_model*.json: timings

--small builds onnx/build_bench.py's bench model instead (to try the whole check on a CPU machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "onnx"))

import _common as c  # noqa: E402
import build_bench  # noqa: E402
import export_onnx  # noqa: E402

COMPONENTS = ("text_encoder", "text_encoder_2", "vae_decoder", "unet")  # the UNet last: the ort part copies the rest


def full_vocab_tokenizers(root: Path, folder: str) -> tuple[Path, Path]:
    """CLIP tokenizer folders with the full vocabulary: `tokenizer` pads with <|endoftext|>, `tokenizer_2` with "!"."""
    src = REPO / "tests" / "fixtures" / "clip-vocab-full"
    vocab = json.loads((src / "vocab.json").read_text(encoding="utf-8"))
    lines = (src / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    dirs = (root / folder / "tokenizer", root / folder / "tokenizer_2")
    c.write_tokenizer_folder(dirs[0], vocab, merges, c.EOS, with_tokenizer_json=False)
    c.write_tokenizer_folder(dirs[1], vocab, merges, "!", with_tokenizer_json=False)
    return dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--small", action="store_true", help="the bench model instead of full size (CPU trial runs)")
    ap.add_argument(
        "--part",
        choices=("plain", "fused", "ort"),
        default="plain",
        help="plain: the ONNX export and the diffusers folder (READY); fused: the UNet with MultiHeadAttention "
        "nodes (READY-FUSED); ort: the UNet through onnxruntime's fusion pass (READY-ORT; very slow at full "
        "size). Variants are meant to run in further processes at the same time",
    )
    args = ap.parse_args()

    import torch

    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    info: dict = {"small": args.small, "torch": torch.__version__, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    # each part its own copy: both run at once
    tokenizers = None if args.small else full_vocab_tokenizers(root, f"tokenizers-{args.part}")
    pipe, params, _ = build_bench.build_pipeline(full=not args.small, tokenizer_dirs=tokenizers)
    info["params"] = params
    info["build_s"] = round(time.perf_counter() - t0, 1)
    print(f"built in {info['build_s']} s: {params}", flush=True)

    plain = root / "models" / "sdxl-fp16"
    if args.part != "plain":
        return make_variant(root, plain, pipe, info, t0, args.part)
    not_a_folder = Path("<random weights>")  # export() then writes configs and tokenizers from `pipe`
    t1 = time.perf_counter()
    export_onnx.export(
        not_a_folder,
        plain,
        fp16=True,
        vae_fp32=True,
        tokenizer_json=False,
        components=COMPONENTS,
        pipe=pipe,
    )
    info["export_s"] = round(time.perf_counter() - t1, 1)
    print(f"exported {plain} in {info['export_s']} s", flush=True)

    # The same weights for PyTorch: fp16 except the VAE (diffusers upcasts the SDXL VAE anyway: force_upcast).
    t2 = time.perf_counter()
    pipe.to(torch.float16)
    pipe.vae.to(torch.float32)
    diffusers_dir = root / "sdxl-diffusers"
    if diffusers_dir.exists():
        shutil.rmtree(diffusers_dir)
    pipe.save_pretrained(str(diffusers_dir), safe_serialization=True)
    info["save_diffusers_s"] = round(time.perf_counter() - t2, 1)
    info["bytes"] = {str(f.relative_to(root)): f.stat().st_size for f in sorted(plain.rglob("*")) if f.is_file()}
    c.write_json(root / "make_model.json", info)
    (root / "READY").write_text("ready\n")
    print(f"READY after {time.perf_counter() - t0:.1f} s", flush=True)


VARIANTS = {
    # part: (folder, marker, how the UNet is traced and finished)
    "fused": ("sdxl-fp16-fused", "READY-FUSED", "export_onnx.py --fused-attention"),
    "ort": ("sdxl-fp16-ort", "READY-ORT", "export_onnx.py --ort-optimize"),
}


def make_variant(root: Path, plain: Path, pipe, info: dict, t0: float, part: str) -> None:
    """A UNet variant into ROOT/models/<folder>, the other graphs copied from the plain export once it is READY.
    The UNet is traced from fp16-rounded weights (exact in fp32), so it holds the same fp16 weights as the plain
    export and the diffusers folder."""
    import torch

    folder, marker, _ = VARIANTS[part]
    out = root / "models" / folder
    if out.exists():
        shutil.rmtree(out)
    unet = pipe.unet.to(torch.float16).to(torch.float32)
    if part == "fused":
        model = export_onnx.trace_unet_fused_attention(unet, fold=False)
        export_onnx.finish_graph(model, out / "unet" / "model.onnx", external=None, fp16=True)
    else:
        model = export_onnx.trace_unet_for_fusion(unet)
        export_onnx.finish_graph(model, out / "unet" / "model.onnx", external=None, fp16=True, ort_optimize=True)
    del model
    info[f"{part}_unet_s"] = round(time.perf_counter() - t0, 1)
    print(f"{part} UNet after {info[f'{part}_unet_s']} s; waiting for the plain export", flush=True)
    while not (root / "READY").exists():
        time.sleep(2)
    shutil.copytree(plain, out, ignore=shutil.ignore_patterns("model.onnx*"), dirs_exist_ok=True)
    for name in COMPONENTS[:-1]:
        for f in (plain / name).glob("model.onnx*"):
            shutil.copyfile(f, out / name / f.name)
    c.write_json(root / f"make_model-{part}.json", info)
    (root / marker).write_text("ready\n")
    print(f"{marker} after {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
