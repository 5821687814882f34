"""Rebuild CLIP's byte-level BPE tokenizer from open_clip's merge list and write tokenizer fixtures.

Outputs (under tests/fixtures/ unless --fixtures says otherwise):
  clip-vocab-full/{vocab.json, merges.txt}   the real 49408-token CLIP vocabulary (as SDXL ships it)
  tiny-sdxl/tokenizer/, tiny-sdxl/tokenizer_2/
                                             the v1000 tokenizer of the tiny model (first 486 merges, bos 998,
                                             eos 999); tokenizer/ pads with <|endoftext|>, tokenizer_2/ with "!"
  tokenizer_ids.json                         expected ids from transformers' CLIPTokenizer, called the way
                                             diffusers' SDXL pipeline calls it (padding="max_length",
                                             max_length=77, truncation=True)

tokenizer_ids.json layout:
  {"max_length": 77, "prompts": [...],
   "full_eos_pad": {prompt: [77 ids]}, "full_bang_pad": ..., "v1000_eos_pad": ..., "v1000_bang_pad": ...,
   "full_eos_pad_untruncated_len": {prompt: n}, ...   (length of the unpadded, untruncated encoding incl. bos/eos)
   "full_eos_pad_untruncated": {prompt: [ids]}, ...  (that encoding itself)}
Note: with pad_token "!" the tokenizer registers "!" as a special token, so a "!" typed in the prompt encodes as
the bare "!" (id 0) instead of "!</w>" (id 256): the *_bang_pad styles differ from *_eos_pad there, as with
real SDXL's tokenizer_2.

Usage: python make_tokenizer.py [--fixtures DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _common as c

PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "Hello, World! It's a TEST... (masterpiece:1.2), [best quality]; don't we'll they're",
    "3 cats and 42 dogs in 2024, 1080p, f/2.8",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u6771\u4eac \U0001f431\U0001f680 \u00f1 Stra\u00dfe",
    "  lots   of\twhitespace \n\n here  ",
    "A PHOTO OF A DOG",
    "before <|endoftext|> after",
    c.LONG_PROMPT,
    "",
]

STYLES = {  # style name -> (vocabulary, pad token)
    "full_eos_pad": ("full", c.EOS),
    "full_bang_pad": ("full", "!"),
    "v1000_eos_pad": ("v1000", c.EOS),
    "v1000_bang_pad": ("v1000", "!"),
}


def load_tokenizer(folder: Path, pad_token: str):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, model_max_length=c.MAX_LENGTH)


def encode_padded(tok, prompt: str) -> list[int]:
    # diffusers StableDiffusionXLPipeline.encode_prompt: tokenizer(prompt, padding="max_length",
    # max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return list(tok(prompt, padding="max_length", max_length=c.MAX_LENGTH, truncation=True).input_ids)


def encode_full(tok, prompt: str) -> list[int]:
    # diffusers' "untruncated_ids" check: padding="longest", no truncation
    return list(tok(prompt, padding="longest").input_ids)


def dump_compact(obj: dict) -> str:
    """JSON with one line per top-level key and, inside dicts, one line per prompt."""
    import json

    def enc(v):
        return json.dumps(v, ensure_ascii=False)

    lines = []
    for k, v in obj.items():
        if isinstance(v, dict):
            inner = ",\n".join(f"    {enc(p)}: {enc(x)}" for p, x in v.items())
            lines.append(f"  {enc(k)}: {{\n{inner}\n  }}")
        else:
            lines.append(f"  {enc(k)}: {enc(v)}")
    text = "{\n" + ",\n".join(lines) + "\n}\n"
    assert json.loads(text) == obj
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=c.FIXTURES)
    args = ap.parse_args()
    fx: Path = args.fixtures

    full_vocab, full_merges = c.clip_bpe(c.FULL_MERGES)
    assert len(full_vocab) == 49408
    c.write_vocab_merges(fx / "clip-vocab-full", full_vocab, full_merges)
    c.write_model_tokenizers(fx / "tiny-sdxl", with_tokenizer_json=True)

    out: dict = {"max_length": c.MAX_LENGTH, "prompts": PROMPTS}
    with tempfile.TemporaryDirectory() as tmp:
        # vocabulary folders loaded the way real SDXL folders load: vocab.json + merges.txt only
        folders = {"full": fx / "clip-vocab-full", "v1000": Path(tmp) / "v1000"}
        shutil.copytree(fx / "tiny-sdxl" / "tokenizer", folders["v1000"])
        (folders["v1000"] / "tokenizer.json").unlink()
        for style, (vocab_name, pad) in STYLES.items():
            tok = load_tokenizer(folders[vocab_name], pad)
            ids = {p: encode_padded(tok, p) for p in PROMPTS}
            full = {p: encode_full(tok, p) for p in PROMPTS}
            for p in PROMPTS:
                assert len(ids[p]) == c.MAX_LENGTH
                n = min(len(full[p]), c.MAX_LENGTH)
                # truncation keeps the first 76 tokens and re-appends eos
                assert ids[p][: n - 1] == full[p][: n - 1] and ids[p][n - 1] == full[p][-1]
            out[style] = ids
            out[style + "_untruncated_len"] = {p: len(full[p]) for p in PROMPTS}
            out[style + "_untruncated"] = full

        # cross-checks: the tokenizer.json written into the model folders gives the same ids
        for sub, pad in (("tokenizer", c.EOS), ("tokenizer_2", "!")):
            style = "v1000_eos_pad" if pad == c.EOS else "v1000_bang_pad"
            tok = load_tokenizer(fx / "tiny-sdxl" / sub, pad)
            assert tok.pad_token_id == (999 if pad == c.EOS else 0)
            for p in PROMPTS:
                assert encode_padded(tok, p) == out[style][p], (sub, p)
        # and the full vocabulary agrees with open_clip's reference tokenizer (which has no special-token
        # handling inside the text, so skip the prompt with a literal <|endoftext|>)
        from open_clip.tokenizer import SimpleTokenizer

        ref = SimpleTokenizer()
        for p in PROMPTS:
            if "<|endoftext|>" in p:
                continue
            want = [49406] + ref.encode(p) + [49407]
            assert out["full_eos_pad_untruncated"][p] == want, (p, out["full_eos_pad_untruncated"][p], want)

    lengths = {p[:30]: out["full_eos_pad_untruncated_len"][p] for p in PROMPTS}
    c.write_bytes_if_changed(fx / "tokenizer_ids.json", dump_compact(out).encode("utf-8"))
    print("wrote", fx / "tokenizer_ids.json", "untruncated lengths (full vocab):", lengths)


if __name__ == "__main__":
    main()
