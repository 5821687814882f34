"""Build the "mini" tiny random-weight SDXL pipeline (real SDXL architecture, tiny sizes) in diffusers layout.

Components (all fp32, deterministic seeds):
  unet            UNet2DConditionModel, block_out_channels (16, 32), layers_per_block 2,
                  (DownBlock2D, CrossAttnDownBlock2D) / (CrossAttnUpBlock2D, UpBlock2D), attention_head_dim (2, 4),
                  transformer_layers_per_block (1, 2), linear projection, addition_embed_type "text_time",
                  addition_time_embed_dim 8, projection_class_embeddings_input_dim 80 (= 6*8 + 32),
                  cross_attention_dim 64 (= 32 + 32), norm_num_groups 8
  vae             AutoencoderKL with 4 blocks [16, 32, 32, 32] -> vae_scale_factor 8 like real SDXL,
                  latent_channels 4, scaling_factor 0.13025, force_upcast true
  text_encoder    CLIPTextModel, hidden 32, 5 layers, 4 heads, vocab 1000 (v1000 tokenizer), quick_gelu
  text_encoder_2  CLIPTextModelWithProjection, same sizes, gelu, projection_dim 32
  tokenizer(_2)   v1000 CLIP BPE (see make_tokenizer.py); tokenizer_2 pads with "!"
  scheduler       EulerDiscreteScheduler with the SDXL base scheduler_config

Every parameter that random init leaves constant (norm weights/biases, CLIP biases) gets seeded noise
(std 0.02), so a wrong weight mapping changes the output and the TorchScript exporter does not merge equal
initializers. text_encoder/model.safetensors is rewritten with `text_model.` keys (the layout of real SDXL
checkpoints; transformers 5 saves it without the prefix, which transformers 4 silently fails to load).

The output is byte-identical across runs.

Usage: python build_tiny.py [--out DIR]   (default: $SDXLRT_WORK/tiny-sdxl-diffusers, ~/.cache/sdxlrt/work/...)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _common as c

# The real SDXL base 1.0 scheduler config (_common.py); build_bench.py reads it as build_tiny.SDXL_SCHEDULER_CONFIG.
SDXL_SCHEDULER_CONFIG = c.SDXL_SCHEDULER_CONFIG

PERTURB_SEED = 1234
PERTURB_STD = 0.02


def perturb_constant_params(model, generator) -> int:
    """Add N(0, PERTURB_STD) noise to every parameter whose elements are all equal. Returns how many."""
    import torch

    n = 0
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.numel() > 0 and bool((p == p.reshape(-1)[0]).all()):
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * PERTURB_STD)
                n += 1
    return n


def text_config(hidden_act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        # legacy SDXL ids (bos 0 / eos 2 / pad 1): pooled output = hidden state at argmax(input_ids), which is
        # the eos position because eos (999) is the largest id of the v1000 vocab, as 49407 is in CLIP's.
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        max_position_embeddings=c.MAX_LENGTH,
        vocab_size=1000,
        hidden_act=hidden_act,
        projection_dim=32,
    )


def build_pipeline(tokenizer_dir: Path):
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[16, 32, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(text_config("quick_gelu"))
    torch.manual_seed(1)  # a different seed, so the two encoders do not share weights
    text_encoder_2 = CLIPTextModelWithProjection(text_config("gelu"))

    gen = torch.Generator("cpu").manual_seed(PERTURB_SEED)
    counts = {}
    models = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for name, model in models.items():
        counts[name] = perturb_constant_params(model, gen)
        model.eval()

    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tokenizer_dir / "tokenizer_2")),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    return pipe, counts


def rewrite_text_encoder_keys(path: Path) -> None:
    """Prefix CLIPTextModel keys with `text_model.` (the layout of real SDXL text_encoder checkpoints)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    fixed = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in tensors.items()}
    save_file(dict(sorted(fixed.items())), str(path), metadata=meta)


def build(out: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    c.write_model_tokenizers(out, with_tokenizer_json=True)
    pipe, counts = build_pipeline(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    # save_pretrained re-saved the tokenizers through transformers; put our canonical files back
    shutil.rmtree(out / "tokenizer")
    shutil.rmtree(out / "tokenizer_2")
    c.write_model_tokenizers(out, with_tokenizer_json=True)
    rewrite_text_encoder_keys(out / "text_encoder" / "model.safetensors")
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
    }
    return {"params": params, "perturbed": counts}


def check_loads(out: Path) -> None:
    """Reload the folder with diffusers and check every weight round-trips (catches a key-prefix mismatch)."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    pipe = StableDiffusionXLPipeline.from_pretrained(str(out))
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        file = "diffusion_pytorch_model.safetensors" if name in ("unet", "vae") else "model.safetensors"
        stored = load_file(str(out / name / file))
        sd = getattr(pipe, name).state_dict()
        for k, v in stored.items():
            key = k
            if key not in sd and key.startswith("text_model."):
                key = key[len("text_model.") :]
            assert key in sd, (name, k)
            assert torch.equal(sd[key], v), (name, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=c.TINY_DIFFUSERS)
    args = ap.parse_args()
    info = build(args.out)
    check_loads(args.out)
    print("built", args.out, info)


if __name__ == "__main__":
    main()
