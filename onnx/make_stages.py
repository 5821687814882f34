"""Write the fixtures of the models a request can name besides its base model, and their diffusers goldens.

Models (made from the torch tiny model of build_tiny.py; real architectures, tiny sizes, fixed seeds):

  tests/fixtures/vae/tiny-vae-b/          a second VAE decoder (`data.models.vae`): the tiny VAE's architecture with
                                          other random weights, scaling_factor 0.2 instead of 0.13025 and
                                          per-channel latents_mean / latents_std, as model.onnx + config.json (an
                                          exported vae_decoder/ folder, renamed)
  tests/fixtures/tiny-sdxl-refiner/       a tiny SDXL refiner (`data.models.refiner`) in optimum's layout: the
                                          refiner's architecture (UNet conditioned on text_encoder_2 only, 5 time
                                          ids with the aesthetic score; requires_aesthetics_score, no
                                          force_zeros_for_empty_prompt) with its own random UNet; text_encoder_2,
                                          tokenizer_2 and VAE (decoder and encoder: a refiner also refines an
                                          image alone, make_img2img.py's img2img_on_refiner*) are the base
                                          model's, as in Stability's release

Goldens (tests/fixtures/goldens/<case>.safetensors, the tensors and metadata of goldens.py plus the ones below):

  custom_vae        goldens.py's cfg_neg with the pipeline's VAE replaced by tiny-vae-b (diffusers `vae=`)
  vae_tiled         cfg_neg at 128 x 96 in 3 steps with diffusers' tiled VAE decode (`vae.enable_tiling()`)
  refiner           diffusers' ensemble of experts: the base pipeline with denoising_end=0.8 and output_type
                    "latent", then StableDiffusionXLImg2ImgPipeline (the refiner) on those latents with
                    denoising_start=0.8, the same prompts, steps, guidance and generator object
  refiner_euler_a   the same with EulerAncestralDiscreteScheduler on both (the refiner's step noise continues the
                    base run's generator)
  refiner_heun, refiner_dpmpp_2m
                    the same with Heun (second order) and DPM-Solver++ 2M (multistep) on both
  refiner_batch2    refiner_euler_a with two images (one generator per image, as goldens.py)
  refiner_scores    refiner with aesthetic_score 7.5 and negative_aesthetic_score 1.5

Refiner goldens add: refiner_prompt_embeds [1,77,32], refiner_pooled_prompt_embeds [1,32] (and the negative
ones), refiner_add_time_ids [1,5] / refiner_add_neg_time_ids [1,5], base_timesteps, refiner_timesteps,
latents_step_<i> for every base step then every refiner step (one sequence), and `refiner_start` metadata.
make_controlnet.py's `controlnet_refiner` runs the same ensemble (run_refiner, build_refiner) with a ControlNet
pipeline as the base.

Usage: python make_stages.py [--model DIR] [--out tests/fixtures]   (model: build_tiny.py's output)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _common as c
import goldens

VAE_B_SEED = 5
VAE_B_SCALING = 0.2
VAE_B_LATENTS_MEAN = (0.1, -0.2, 0.05, 0.3)
VAE_B_LATENTS_STD = (0.9, 1.1, 0.8, 1.2)
REFINER_SEED = 2
REFINER_START = 0.8

BASE_CASE = goldens.CASES["cfg_neg"]  # custom_vae is cfg_neg with another VAE
CASES = {
    "custom_vae": dict(BASE_CASE, vae="tiny-vae-b"),
    # 128 x 96: the tiny VAE's 64-pixel tiles (8 latents, overlap 25 %) at rows 0, 6 and columns 0, 6, 12 (latents)
    "vae_tiled": dict(BASE_CASE, steps=3, width=128, height=96, vae_tiling=True),
    # 10 steps: 8 on the base, 2 on the refiner
    "refiner": dict(BASE_CASE, steps=10, refiner="tiny-sdxl-refiner"),
    "refiner_euler_a": dict(
        BASE_CASE, steps=10, refiner="tiny-sdxl-refiner", scheduler="EulerAncestralDiscreteScheduler"
    ),
    # second order: 19 evaluations, the refiner's count made odd (diffusers' get_timesteps)
    "refiner_heun": dict(BASE_CASE, steps=10, refiner="tiny-sdxl-refiner", scheduler="HeunDiscreteScheduler"),
    # multistep: the refiner's solver starts without the base's history
    "refiner_dpmpp_2m": dict(
        BASE_CASE, steps=10, refiner="tiny-sdxl-refiner", scheduler="DPMSolverMultistepScheduler"
    ),
    # two images, one generator each, handed from the base to the refiner call
    "refiner_batch2": dict(
        BASE_CASE, steps=10, refiner="tiny-sdxl-refiner", scheduler="EulerAncestralDiscreteScheduler", batch_size=2
    ),
    # the refiner's aesthetic scores (A1111's refiner score settings, ComfyUI's ascore) instead of 6 / 2.5
    "refiner_scores": dict(
        BASE_CASE, steps=10, refiner="tiny-sdxl-refiner", aesthetic_score=7.5, negative_aesthetic_score=1.5
    ),
}


def build_vae_b(base):
    """The tiny VAE's architecture with other weights and another scaling factor."""
    import torch
    from build_tiny import PERTURB_SEED, perturb_constant_params
    from diffusers import AutoencoderKL

    config = {k: v for k, v in dict(base.vae.config).items() if not k.startswith("_")}
    config["scaling_factor"] = VAE_B_SCALING
    # per-channel latent statistics (Playground v2.5's VAE has them): diffusers decodes latents · std / scaling + mean
    config["latents_mean"] = list(VAE_B_LATENTS_MEAN)
    config["latents_std"] = list(VAE_B_LATENTS_STD)
    torch.manual_seed(VAE_B_SEED)
    vae = AutoencoderKL(**config)
    perturb_constant_params(vae, torch.Generator("cpu").manual_seed(PERTURB_SEED + VAE_B_SEED))
    return vae.eval()


def build_refiner(base):
    """A tiny refiner pipeline sharing the base's text_encoder_2, tokenizer_2, VAE and scheduler config."""
    import torch
    from build_tiny import PERTURB_SEED, perturb_constant_params
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel

    te2 = base.text_encoder_2
    time_dim = base.unet.config.addition_time_embed_dim
    torch.manual_seed(REFINER_SEED)
    # the base UNet's architecture, conditioned the refiner's way: on text_encoder_2 only, and 5 time ids (original
    # size, crop, aesthetic score) + the pooled text
    config = {k: v for k, v in dict(base.unet.config).items() if not k.startswith("_")}
    config["projection_class_embeddings_input_dim"] = 5 * time_dim + te2.config.projection_dim
    config["cross_attention_dim"] = te2.config.hidden_size
    unet = UNet2DConditionModel(**config)
    perturb_constant_params(unet, torch.Generator("cpu").manual_seed(PERTURB_SEED + REFINER_SEED))
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=te2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet.eval(),
        scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_models(base, vae_b, refiner, model: Path, out: Path, work: Path) -> None:
    import export_onnx as e

    # the VAE: exported as the vae_decoder of a pipeline that has it, then the folder renamed
    base_vae = base.vae
    base.vae = vae_b
    try:
        tmp = Path(tempfile.mkdtemp(dir=work))
        spec = e.component_spec(base, "vae_decoder", None)
        e.export_graph(spec, tmp / "vae_decoder" / "model.onnx", fold=False, external=None)
        e.write_component_config(base, "vae_decoder", None, tmp)
        print(f"  tiny-vae-b: max |ORT - torch| = {e.check_graph(spec, tmp / 'vae_decoder' / 'model.onnx'):.3g}")
    finally:
        base.vae = base_vae
    dst = out / "vae" / "tiny-vae-b"
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp / "vae_decoder"), str(dst))
    shutil.rmtree(tmp)

    src = work / "tiny-sdxl-refiner-diffusers"
    shutil.rmtree(src, ignore_errors=True)
    refiner.save_pretrained(str(src), safe_serialization=True)
    # save_pretrained re-saved the tokenizer through transformers; use the base model's canonical files
    shutil.rmtree(src / "tokenizer_2")
    shutil.copytree(model / "tokenizer_2", src / "tokenizer_2")
    dst = out / "tiny-sdxl-refiner"
    shutil.rmtree(dst, ignore_errors=True)
    e.export(src, dst, components=("text_encoder_2", "unet", "vae_decoder", "vae_encoder"), check=True, pipe=refiner)


def refiner_case(base, refiner, name: str) -> tuple[dict, dict]:
    """diffusers' ensemble of experts for case `name`: tensors and metadata of the golden."""
    return run_refiner(base, refiner, {"width": 64, "height": 64, "batch_size": 1, **CASES[name]})


def run_refiner(
    base,
    refiner,
    p: dict,
    base_kwargs: dict | None = None,
    base_size: dict | None = None,
    init_noise: bool = True,
    refiner_kwargs: dict | None = None,
) -> tuple[dict, dict]:
    """diffusers' ensemble of experts for the case parameters `p` (keys of CASES' refiner cases, with width, height
    and batch_size): the base pipeline `base` with denoising_end=REFINER_START and output_type "latent", then
    `refiner` with denoising_start=REFINER_START on those latents, the same prompts, steps, guidance and generator
    object. `base_kwargs`: more arguments for the base call only (make_controlnet.py's control images and scales;
    `base` is then a StableDiffusionXLControlNetPipeline; make_img2img.py's init image and strength). `base_size`:
    the base call's size arguments (default width and height from `p`; {} for an img2img base, which takes none).
    `init_noise`: record the raw initial noise (a txt2img base's first draw; an img2img base has none).
    `refiner_kwargs`: more arguments for the refiner call (make_micro_conditioning.py's sizes). Returns the
    golden's tensors and metadata (every item of `p` as a string, plus refiner_start and base_steps)."""
    import diffusers
    import numpy as np
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    B, H, W = p["batch_size"], p["height"], p["width"]
    saved = base.scheduler, refiner.scheduler
    if "scheduler" in p:
        cls = getattr(diffusers, p["scheduler"])
        base.scheduler = cls.from_config(base.scheduler.config)
        refiner.scheduler = cls.from_config(refiner.scheduler.config)
    t: dict = {}
    steps: list = []

    def on_step_end(_pipe, i, _t, kwargs):
        steps.append(kwargs["latents"].clone())
        return kwargs

    common = dict(
        prompt=p["prompt"],
        negative_prompt=p["negative_prompt"],
        guidance_scale=p["guidance_scale"],
        num_inference_steps=p["steps"],
        num_images_per_prompt=B,
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    unet_calls: list = []
    base_calls: list = []
    def record_refiner(_mod, args, kwargs):
        ehs = kwargs["encoder_hidden_states"]
        unet_calls.append({"timestep": args[1], "encoder_hidden_states": ehs, **kwargs["added_cond_kwargs"]})

    hooks = [
        refiner.unet.register_forward_pre_hook(record_refiner, with_kwargs=True),
        # the base's timesteps as its UNet got them (an img2img base starts inside the scheduler's list)
        base.unet.register_forward_pre_hook(lambda mod, args: base_calls.append(float(args[1]))),
    ]
    try:
        if init_noise:
            t["init_noise"] = randn_tensor((B, 4, H // 8, W // 8), generator=goldens.generators(p["seed"], B))
        generator = goldens.generators(p["seed"], B)  # the same object(s) for both calls
        with torch.no_grad():
            latents = base(
                **common,
                **(base_kwargs or {}),
                **(dict(width=W, height=H) if base_size is None else base_size),
                denoising_end=REFINER_START,
                output_type="latent",
                generator=generator,
            ).images
            n_base = len(steps)
            assert len(base_calls) == n_base, (len(base_calls), n_base)
            t["base_timesteps"] = torch.tensor(base_calls, dtype=torch.float32)
            scores = {k: p[k] for k in ("aesthetic_score", "negative_aesthetic_score") if k in p}
            image = refiner(
                **common,
                **scores,
                **(refiner_kwargs or {}),
                image=latents,
                denoising_start=REFINER_START,
                output_type="np",
                generator=generator,
            ).images
    finally:
        for h in hooks:
            h.remove()
        base.scheduler, refiner.scheduler = saved
    t["refiner_timesteps"] = torch.tensor([float(u["timestep"]) for u in unet_calls], dtype=torch.float32)
    ehs, te, tid = unet_calls[0]["encoder_hidden_states"], unet_calls[0]["text_embeds"], unet_calls[0]["time_ids"]
    # the base's last latents are what it hands over (a base with no step hands over its initial latents)
    assert ehs.shape[0] == 2 * B and (n_base == 0 or torch.equal(latents, steps[n_base - 1]))
    t["refiner_negative_prompt_embeds"], t["refiner_prompt_embeds"] = ehs[:1].clone(), ehs[B : B + 1].clone()
    t["refiner_negative_pooled_prompt_embeds"] = te[:1].clone()
    t["refiner_pooled_prompt_embeds"] = te[B : B + 1].clone()
    t["refiner_add_neg_time_ids"], t["refiner_add_time_ids"] = tid[:1].clone(), tid[B : B + 1].clone()
    for i, lat in enumerate(steps):
        t[f"latents_step_{i}"] = lat
    t["image"] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t["image_u8"] = torch.from_numpy((image * 255).round().astype("uint8"))
    meta = {k: str(v) for k, v in p.items() if k not in ("guidance_scale",)}
    meta["guidance_scale"] = repr(float(p["guidance_scale"]))
    meta["refiner_start"] = repr(REFINER_START)
    meta["base_steps"] = str(n_base)
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def decode_case(base, vae_b, name: str) -> tuple[dict, dict]:
    """goldens.py's pipeline run for case `name` with another VAE (`vae`) or diffusers' tiled VAE decode
    (`vae_tiling`: `pipe.vae.enable_tiling()`)."""
    p = CASES[name]
    saved_vae, saved_cases = base.vae, dict(goldens.CASES)
    if "vae" in p:
        base.vae = vae_b
    if p.get("vae_tiling"):
        base.vae.enable_tiling()
    goldens.CASES[name] = {k: v for k, v in p.items() if k not in ("vae", "vae_tiling")}
    try:
        tensors, meta = goldens.run_case(base, name)
    finally:
        base.vae.disable_tiling()
        base.vae = saved_vae
        goldens.CASES.clear()
        goldens.CASES.update(saved_cases)
    for key in ("vae", "vae_tiling"):
        if key in p:
            meta[key] = str(p[key]).lower()
    return tensors, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=c.TINY_DIFFUSERS, help="torch tiny SDXL (build_tiny.py)")
    ap.add_argument("--out", type=Path, default=c.FIXTURES)
    args = ap.parse_args()
    base = c.load_pipeline(args.model)
    vae_b = build_vae_b(base)
    refiner = build_refiner(base)
    export_models(base, vae_b, refiner, args.model, args.out, c.WORK)
    for name in CASES:
        if "refiner" not in CASES[name]:
            tensors, meta = decode_case(base, vae_b, name)
        else:
            tensors, meta = refiner_case(base, refiner, name)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)
        print(f"{name}: {sorted(k for k in tensors if not k.startswith('latents_step_'))}", flush=True)


if __name__ == "__main__":
    main()
