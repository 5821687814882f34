"""Shared helpers for the sdxlrt fixture and export tools.

Paths, the SDXL scheduler config, deterministic file writing, the CLIP byte-level BPE vocabulary builder, the CLIP
tokenizer folder writer, and the pieces the diffusers golden writers share (goldens.py, scheduler_pipeline_goldens.py,
make_lora.py; make_img2img.py, make_inpaint.py and make_controlnet.py: pipelines built on the base pipeline's
components, the --model / --out / --cases command line). Nothing here imports torch at module level (only inside
functions), so `make_tokenizer.py` stays fast.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
WORK = Path(os.environ.get("SDXLRT_WORK", str(Path.home() / ".cache" / "sdxlrt" / "work")))
TINY_DIFFUSERS = WORK / "tiny-sdxl-diffusers"

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
# Number of merges kept for the tiny "v1000" vocabulary: 256 byte chars + 256 "</w>" chars + 486 merges + 2 specials.
V1000_MERGES = 486
# Number of merges CLIP uses (49408 - 256 - 256 - 2), i.e. lines 1..48894 of bpe_simple_vocab_16e6.txt.
FULL_MERGES = 49152 - 256 - 2

# The real SDXL base 1.0 scheduler/scheduler_config.json without `_class_name`/`_diffusers_version` (keys a
# scheduler class does not know are dropped by diffusers). build_tiny.py's model and scheduler_goldens.py use it.
SDXL_SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

LONG_PROMPT = (
    "a highly detailed oil painting of an old lighthouse standing on a rocky cliff above a stormy sea at dusk, "
    "dramatic clouds rolling in from the horizon, waves crashing against the black rocks and throwing white spray "
    "high into the air, a small wooden fishing boat struggling through the swell with its lantern glowing, seagulls "
    "circling overhead, warm light pouring from the lighthouse windows, wet stone path leading up to a red door, "
    "wild grass bending in the wind, distant village lights along the coast, rain streaks in the cold air, "
    "cinematic composition, rich textures, volumetric light, muted blue and orange palette, painted in the style of "
    "the romantic era masters with visible brush strokes and a heavy varnish glow"
)


def write_bytes_if_changed(path: Path, data: bytes) -> None:
    """Write `data` to `path` (creating parents); leave the file untouched when it already has these bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_bytes() == data:
        return
    path.write_bytes(data)


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """Write JSON deterministically (UTF-8, no ASCII escaping, trailing newline)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    write_bytes_if_changed(path, (text + "\n").encode("utf-8"))


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable unicode char table of GPT-2/CLIP byte-level BPE.

    Printable Latin-1 bytes map to themselves, the remaining 68 bytes map to chr(256 + n) in byte order.
    The dict's insertion order (printable bytes first) is CLIP's vocabulary order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def open_clip_bpe_path() -> Path:
    """Path of the BPE merge list shipped with open_clip_torch (the same list OpenAI's CLIP uses)."""
    import open_clip  # imported lazily: only needed to locate the data file

    return Path(open_clip.__file__).resolve().parent / "bpe_simple_vocab_16e6.txt.gz"


def clip_bpe(n_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build CLIP's vocabulary from the first `n_merges` merges.

    Order (CLIP's): 256 byte chars, the same with "</w>", one token per merge (the concatenated pair),
    then <|startoftext|> and <|endoftext|>. With n_merges = FULL_MERGES this is the 49408-token CLIP vocab.
    Any prefix of the merge list still gives a valid BPE: every merge result is in the vocabulary.
    """
    with gzip.open(open_clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    # line 0 is a version header; merges follow, one "left right" pair per line.
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    assert len(merges) == n_merges and all(len(m) == 2 for m in merges)
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token in vocabulary"
    return vocab, merges


def _added_token(content: str) -> dict:
    # The AddedToken form real SDXL tokenizer configs use (openai/clip-vit-large-patch14 style).
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_vocab_merges(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Write vocab.json (one line, like openai's) and merges.txt (header `#version: 0.2`)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_if_changed(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    write_bytes_if_changed(folder / "merges.txt", text.encode("utf-8"))


def write_tokenizer_folder(
    folder: Path,
    vocab: dict[str, int],
    merges: list[tuple[str, str]],
    pad_token: str,
    with_tokenizer_json: bool = True,
) -> None:
    """Write a CLIP tokenizer folder in the layout SDXL repositories use.

    vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json (model_max_length 77), and
    optionally tokenizer.json (the `tokenizers` library format, built by transformers' CLIPTokenizer).
    `pad_token` is "<|endoftext|>" for `tokenizer/` and "!" for `tokenizer_2/` (as in SDXL base).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("tokenizer.json",):
        if (folder / stale).exists() and not with_tokenizer_json:
            (folder / stale).unlink()
    write_vocab_merges(folder, vocab, merges)
    special = {
        "bos_token": _added_token(BOS),
        "eos_token": _added_token(EOS),
        "pad_token": pad_token,
        "unk_token": _added_token(EOS),
    }
    write_json(folder / "special_tokens_map.json", special)
    config = {
        "add_prefix_space": False,
        "bos_token": _added_token(BOS),
        "do_lower_case": True,
        "eos_token": _added_token(EOS),
        "errors": "replace",
        "model_max_length": MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token(EOS),
    }
    write_json(folder / "tokenizer_config.json", config)
    if with_tokenizer_json:
        from transformers import CLIPTokenizer

        tok = CLIPTokenizer(
            vocab=dict(vocab),
            merges=[(a, b) for a, b in merges],
            pad_token=pad_token,
            model_max_length=MAX_LENGTH,
        )
        text = tok.backend_tokenizer.to_str(pretty=True)
        write_bytes_if_changed(folder / "tokenizer.json", (text + "\n").encode("utf-8"))


def write_model_tokenizers(model_dir: Path, with_tokenizer_json: bool = True) -> None:
    """Write the v1000 `tokenizer/` (pads with <|endoftext|>) and `tokenizer_2/` (pads with "!") into model_dir."""
    vocab, merges = clip_bpe(V1000_MERGES)
    write_tokenizer_folder(model_dir / "tokenizer", vocab, merges, EOS, with_tokenizer_json)
    write_tokenizer_folder(model_dir / "tokenizer_2", vocab, merges, "!", with_tokenizer_json)


_ST_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64", "int32": "I32", "uint8": "U8"}


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a .safetensors file with a deterministic header (sorted keys, `__metadata__` first).

    The safetensors library keeps metadata in a hash map, so its key order (and the file bytes) change from run to
    run; this writer follows the format spec: u64 little-endian header size, JSON header padded with spaces to a
    multiple of 8, then the tensors' little-endian bytes in header order. `tensors` maps names to numpy arrays.
    """
    import numpy as np

    header: dict = {}
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        dtype = _ST_DTYPES[arr.dtype.name]
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    write_bytes_if_changed(path, len(text).to_bytes(8, "little") + text + b"".join(blobs))


# ---------------------------------------------------------------------------------------------------------------
# diffusers pipeline goldens (goldens.py, scheduler_pipeline_goldens.py, make_img2img.py, make_inpaint.py,
# make_controlnet.py, ...); torch and diffusers are imported lazily.


def load_pipeline(model: Path):
    """StableDiffusionXLPipeline from the torch tiny model: fp32, no watermark, no progress bar, torch on 1 thread
    (the same reduction order on every run)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    torch.set_num_threads(1)
    pipe = StableDiffusionXLPipeline.from_pretrained(str(model), torch_dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_from_base(base, cls, **kwargs):
    """Pipeline class `cls` on the base pipeline's components: `base`'s vae, text_encoder(_2), tokenizer(_2), unet,
    scheduler and force_zeros_for_empty_prompt, no watermarker, progress bar off. `kwargs` are further constructor
    arguments (controlnet=, requires_aesthetics_score=) or replace a component of `base` (unet=)."""
    components = dict(
        vae=base.vae,
        text_encoder=base.text_encoder,
        text_encoder_2=base.text_encoder_2,
        tokenizer=base.tokenizer,
        tokenizer_2=base.tokenizer_2,
        unet=base.unet,
        scheduler=base.scheduler,
        force_zeros_for_empty_prompt=base.config.force_zeros_for_empty_prompt,
        add_watermarker=False,
    )
    pipe = cls(**{**components, **kwargs})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_pipeline(pipe, init_noise, **call_kwargs):
    """Run `pipe(**call_kwargs, output_type="np")` and record the latents after every loop iteration.

    Checks that the pipeline's initial latents (prepare_latents) are `init_noise * scheduler.init_noise_sigma`.
    Returns (the numpy image, the list of latents, one per loop iteration).
    """
    import torch

    orig_prepare = pipe.prepare_latents
    prepared = []

    def prepare_latents(*args, **kwargs):
        out = orig_prepare(*args, **kwargs)
        prepared.append(out)
        return out

    pipe.prepare_latents = prepare_latents
    steps: list = []

    def on_step_end(_pipe, i, _t, kwargs):
        assert i == len(steps)
        steps.append(kwargs["latents"].clone())
        return kwargs

    try:
        with torch.no_grad():
            image = pipe(
                **call_kwargs,
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            ).images
    finally:
        del pipe.prepare_latents
    assert torch.equal(prepared[0], init_noise * pipe.scheduler.init_noise_sigma)
    return image, steps


def check_safetensors(path: Path, tensors: dict, meta: dict) -> None:
    """Read a written golden back with the safetensors library and compare it with what was written."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == meta and set(f.keys()) == set(tensors)
        for k, v in tensors.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k


def write_golden(path: Path, tensors: dict, meta: dict) -> None:
    """Write one golden (torch tensors + string metadata) with write_safetensors and read it back."""
    write_safetensors(path, {k: v.numpy() for k, v in tensors.items()}, meta)
    check_safetensors(path, tensors, meta)


def report_diffs(report: dict, folder: Path, case: str, diffs: dict, width: int) -> None:
    """Record a verify case's {name: max |ORT - golden|} under (folder name, case) and print it as one line."""
    report[(folder.name, case)] = diffs
    print(f"{folder.name:18s} {case:{width}s} " + " ".join(f"{k}={v:.2g}" for k, v in diffs.items()), flush=True)


def goldens_main(doc: str, known_cases, write, verify) -> None:
    """Command line of the golden writers: `write(model, out, cases)`, or with --verify `verify(dirs, out, cases)`."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=TINY_DIFFUSERS, help="torch tiny SDXL (diffusers folder)")
    ap.add_argument("--out", type=Path, default=FIXTURES / "goldens")
    ap.add_argument("--verify", type=Path, nargs="+", metavar="ONNX_DIR", help="check ONNX folders against goldens")
    ap.add_argument("--cases", default=",".join(known_cases))
    args = ap.parse_args()
    cases = [s for s in args.cases.split(",") if s]
    for s in cases:
        if s not in known_cases:
            sys.exit(f"unknown case {s!r}; known: {', '.join(known_cases)}")
    if args.verify:
        verify(args.verify, args.out, cases)
    else:
        write(args.model, args.out, cases)


def fixtures_args(doc: str, known_cases):
    """Command line of the fixture writers with cases (make_img2img.py, make_inpaint.py, make_controlnet.py):
    --model (torch tiny SDXL, default TINY_DIFFUSERS), --out (the fixtures folder, default FIXTURES) and --cases
    (comma-separated names from `known_cases`, default all of them; an unknown name is a usage error).
    Returns (args, the cases)."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=TINY_DIFFUSERS, help="torch tiny SDXL (build_tiny.py)")
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--cases", default=",".join(known_cases))
    args = ap.parse_args()
    cases = [s for s in args.cases.split(",") if s]
    unknown = [s for s in cases if s not in known_cases]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(known_cases)}")
    return args, cases
