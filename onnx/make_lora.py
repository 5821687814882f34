"""Write the LoRA test fixtures for the tiny SDXL model, and diffusers goldens of images made with them.

LoRA files (tests/fixtures/loras/), random A/B with fixed seeds, targets = kohya's defaults plus LoCon convolutions:
every Linear inside the UNet's Transformer2DModels (proj_in, proj_out, attn1/attn2 to_q/to_k/to_v/to_out.0,
ff.net.0.proj, ff.net.2), every resnet conv1/conv2/conv_shortcut, the down/up-sampler convs, and the CLIP
q/k/v/out_proj, fc1, fc2 of both text encoders.

  kohya_a.safetensors   LoRA "a" in kohya's SDXL format: SGM/LDM block names (lora_unet_input_blocks_4_1_...,
                        resnets as in_layers_2/out_layers_3/skip_connection, input_blocks_3_0_op, output_blocks_2_2_conv),
                        lora_te1_/lora_te2_ text encoders, .lora_down/.lora_up/.alpha; rank 4, alpha 2 (scale 0.5)
                        with lora_up stored x2, so the delta equals peft_a's.
  peft_a.safetensors    the same LoRA "a" in diffusers/PEFT format (unet.<module>.lora_A/B.weight,
                        text_encoder.<module>..., text_encoder_2.<module>...), no alpha (scale 1).
  peft_b.safetensors    LoRA "b" (PEFT format, rank 2): UNet attention Linears and text_encoder_2 only (text_encoder
                        untouched, so a pipeline with only "b" can share the text_encoder session).
  peft_dora.safetensors DoRA in PEFT format (rank 2): the UNet's Transformer Linears with lora_A/lora_B and a
                        lora_magnitude_vector per module (the merged weight's row norms, perturbed by ±20 %).
  peft_bias.safetensors PEFT LoRA with lora_bias=True (rank 2): lora_A/lora_B and lora_B.bias on every target of
                        kohya_a that has a bias (UNet Linears and convs, text_encoder's; not the bias-free to_q/k/v).

Goldens (tests/fixtures/goldens/lora_*.safetensors, the same tensors and metadata as goldens.py writes, with the
prompt of goldens.py's cfg_neg case and 3 steps), made by diffusers' load_lora_weights + set_adapters + fuse_lora
(then unload_lora_weights, so the run uses the fused weights) on the torch tiny model:

  lora_kohya   kohya_a at 1.0                  lora_peft   peft_a at 1.0
  lora_two     kohya_a at 0.7 and peft_b at -0.3
  lora_split   kohya_a with UNet weight 0.5 and text-encoder weight 1.5 (set_adapters with a per-component dict)
  lora_dora    peft_dora at 0.8                lora_bias   peft_bias at 0.9

Metadata adds `loras` (JSON: [{"file", "weight", "unet_weight", "text_encoder_weight"}]).

Usage: python make_lora.py [--model DIR] [--out tests/fixtures]   (model: build_tiny.py's output)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common as c
import goldens

RANK_A = 4
ALPHA_A = 2.0
RANK_B = 2
LPB = 2  # layers_per_block of the tiny UNet (and of SDXL)

BASE_CASE = dict(
    prompt="a photograph of an astronaut riding a horse",
    negative_prompt="blurry, low quality",
    guidance_scale=5.0,
    steps=3,
    seed=0,
)

CASES = {
    "lora_kohya": [dict(file="kohya_a", weight=1.0)],
    "lora_peft": [dict(file="peft_a", weight=1.0)],
    "lora_two": [dict(file="kohya_a", weight=0.7), dict(file="peft_b", weight=-0.3)],
    "lora_split": [dict(file="kohya_a", weight=1.0, unet_weight=0.5, text_encoder_weight=1.5)],
    "lora_dora": [dict(file="peft_dora", weight=0.8)],
    "lora_bias": [dict(file="peft_bias", weight=0.9)],
}


def unet_targets(unet, with_convs: bool) -> list[str]:
    import torch

    out = []
    for name, mod in unet.named_modules():
        if ".attentions." in name and isinstance(mod, torch.nn.Linear):
            out.append(name)
        elif with_convs and isinstance(mod, torch.nn.Conv2d):
            if ".resnets." in name or "samplers." in name:
                out.append(name)
    return sorted(out)


def te_targets(te) -> list[str]:
    import torch

    keys = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    out = [n for n, m in te.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in keys]
    # transformers 5 CLIPTextModel has no `text_model.` prefix; the checkpoints and kohya keys do.
    return sorted(n if n.startswith("text_model.") else "text_model." + n for n in out)


def module_of(model, name: str):
    for n, m in model.named_modules():
        if n == name or "text_model." + n == name:
            return m
    raise KeyError(name)


def sgm_name(module: str, up_has_attn: dict[int, bool]) -> str:
    """diffusers UNet module name -> the SGM/LDM name kohya's SDXL trainer uses (inverse of diffusers'
    `_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key`)."""
    resnet = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
              "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}
    p = module.split(".")
    if p[0] in ("down_blocks", "up_blocks"):
        i, kind, j, rest = int(p[1]), p[2], int(p[3]), p[4:]
        if kind == "resnets":
            rest = [resnet.get(rest[0], rest[0])] + rest[1:]
        if p[0] == "down_blocks":
            if kind == "downsamplers":
                return f"input_blocks.{(LPB + 1) * (i + 1)}.0.op"
            return f"input_blocks.{(LPB + 1) * i + j + 1}.{1 if kind == 'attentions' else 0}." + ".".join(rest)
        if kind == "upsamplers":
            return f"output_blocks.{(LPB + 1) * i + LPB}.{2 if up_has_attn[i] else 1}.conv"
        return f"output_blocks.{(LPB + 1) * i + j}.{1 if kind == 'attentions' else 0}." + ".".join(rest)
    if p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), p[3:]
        if kind == "resnets":
            rest = [resnet.get(rest[0], rest[0])] + rest[1:]
            return f"middle_block.{2 * j}." + ".".join(rest)
        return "middle_block.1." + ".".join(rest)
    raise ValueError(module)


def make_pair(mod, rank: int, gen, up_gain: float):
    """Random (down, up) for a Linear or Conv2d: down [r, in(, kh, kw)], up [out, r(, 1, 1)]."""
    import torch

    if isinstance(mod, torch.nn.Conv2d):
        out_c, in_c, kh, kw = mod.weight.shape
        down = torch.randn((rank, in_c, kh, kw), generator=gen) / (in_c * kh * kw) ** 0.5
        up = torch.randn((out_c, rank, 1, 1), generator=gen) * up_gain / rank**0.5
    else:
        out_f, in_f = mod.weight.shape
        down = torch.randn((rank, in_f), generator=gen) / in_f**0.5
        up = torch.randn((out_f, rank), generator=gen) * up_gain / rank**0.5
    return down.contiguous(), up.contiguous()


def build_loras(pipe, out_dir: Path) -> None:
    import torch

    up_has_attn = {i: hasattr(b, "attentions") for i, b in enumerate(pipe.unet.up_blocks)}
    gen = torch.Generator("cpu").manual_seed(4242)
    kohya, peft_a = {}, {}
    meta_k = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK_A), "ss_network_alpha": str(ALPHA_A)}
    for comp, model, prefix in (
        ("unet", pipe.unet, "lora_unet_"),
        ("text_encoder", pipe.text_encoder, "lora_te1_"),
        ("text_encoder_2", pipe.text_encoder_2, "lora_te2_"),
    ):
        names = unet_targets(model, True) if comp == "unet" else te_targets(model)
        for name in names:
            down, up = make_pair(module_of(model, name), RANK_A, gen, 0.6)
            peft_a[f"{comp}.{name}.lora_A.weight"] = down
            peft_a[f"{comp}.{name}.lora_B.weight"] = up
            kname = prefix + (sgm_name(name, up_has_attn) if comp == "unet" else name).replace(".", "_")
            kohya[f"{kname}.lora_down.weight"] = down
            kohya[f"{kname}.lora_up.weight"] = up * (RANK_A / ALPHA_A)
            kohya[f"{kname}.alpha"] = torch.tensor(ALPHA_A)
    gen = torch.Generator("cpu").manual_seed(777)
    peft_b = {}
    for comp, model in (("unet", pipe.unet), ("text_encoder_2", pipe.text_encoder_2)):
        names = unet_targets(model, False) if comp == "unet" else te_targets(model)
        for name in names:
            down, up = make_pair(module_of(model, name), RANK_B, gen, 0.8)
            peft_b[f"{comp}.{name}.lora_A.weight"] = down
            peft_b[f"{comp}.{name}.lora_B.weight"] = up
    gen = torch.Generator("cpu").manual_seed(999)
    dora = {}
    for name in unet_targets(pipe.unet, False):
        mod = module_of(pipe.unet, name)
        down, up = make_pair(mod, RANK_B, gen, 0.8)
        norm = torch.linalg.norm(mod.weight.detach() + up @ down, dim=1)
        dora[f"unet.{name}.lora_A.weight"] = down
        dora[f"unet.{name}.lora_B.weight"] = up
        dora[f"unet.{name}.lora_magnitude_vector"] = norm * (1 + 0.2 * torch.randn(norm.shape, generator=gen))
    gen = torch.Generator("cpu").manual_seed(2468)
    bias = {}
    for comp, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        names = unet_targets(model, True) if comp == "unet" else te_targets(model)
        for name in names:
            mod = module_of(model, name)
            if mod.bias is None:  # PEFT's lora_bias needs a base bias to merge into
                continue
            down, up = make_pair(mod, RANK_B, gen, 0.8)
            bias[f"{comp}.{name}.lora_A.weight"] = down
            bias[f"{comp}.{name}.lora_B.weight"] = up
            bias[f"{comp}.{name}.lora_B.bias"] = torch.randn(mod.bias.shape, generator=gen) * 0.2
    out_dir.mkdir(parents=True, exist_ok=True)
    np = lambda d: {k: v.numpy() for k, v in d.items()}  # noqa: E731
    c.write_safetensors(out_dir / "kohya_a.safetensors", np(kohya), meta_k)
    c.write_safetensors(out_dir / "peft_a.safetensors", np(peft_a))
    c.write_safetensors(out_dir / "peft_b.safetensors", np(peft_b))
    c.write_safetensors(out_dir / "peft_dora.safetensors", np(dora))
    c.write_safetensors(out_dir / "peft_bias.safetensors", np(bias))
    print(
        f"kohya_a: {len(kohya)} tensors; peft_a: {len(peft_a)}; peft_b: {len(peft_b)}; dora: {len(dora)}; "
        f"bias: {len(bias)}",
        flush=True,
    )


def write_goldens(model: Path, fixtures: Path) -> None:
    import torch

    lora_dir = fixtures / "loras"
    for case, loras in CASES.items():
        pipe = c.load_pipeline(model)
        base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        names, weights = [], []
        for i, l in enumerate(loras):
            name = f"{l['file']}_{i}"
            pipe.load_lora_weights(str(lora_dir / f"{l['file']}.safetensors"), adapter_name=name)
            names.append(name)
            if "unet_weight" in l:
                te = l["text_encoder_weight"]
                weights.append({"unet": l["unet_weight"], "text_encoder": te, "text_encoder_2": te})
            else:
                weights.append(l["weight"])
        pipe.set_adapters(names, adapter_weights=weights)
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
        changed = sum(1 for k, v in pipe.unet.state_dict().items() if not torch.equal(v, base[k]))
        goldens.CASES[case] = BASE_CASE
        tensors, meta = goldens.run_case(pipe, case)
        meta["loras"] = json.dumps(loras)
        c.write_golden(fixtures / "goldens" / f"{case}.safetensors", tensors, meta)
        print(f"{case}: {changed} UNet tensors changed; image mean {float(tensors['image'].mean()):.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=c.TINY_DIFFUSERS, help="torch tiny SDXL (diffusers folder)")
    ap.add_argument("--out", type=Path, default=c.FIXTURES, help="fixtures folder (gets loras/ and goldens/)")
    args = ap.parse_args()
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    build_loras(pipe, args.out / "loras")
    write_goldens(args.model, args.out)


if __name__ == "__main__":
    main()
