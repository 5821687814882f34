"""Write diffusers goldens for the tiny SDXL model, and check an onnxruntime loop against them.

`write` mode (default) runs diffusers' StableDiffusionXLPipeline (fp32, CPU, 1 thread, no watermark) on the torch
tiny model (build_tiny.py) and writes tests/fixtures/goldens/<case>.safetensors plus cfg_neg.png.

Tensors per case (float32 unless noted; the batch dimension is kept):
  input_ids, input_ids_2               int64 [1,77]  positive prompt, tokenizer / tokenizer_2
  negative_input_ids, negative_input_ids_2
                                       int64 [1,77]  only when a negative prompt string is given
  prompt_embeds [1,77,64], pooled_prompt_embeds [1,32]
  negative_prompt_embeds [1,77,64], negative_pooled_prompt_embeds [1,32]
                                       only with CFG (zeros when negative_prompt is None)
                                       (all four: per prompt, before the num_images_per_prompt repeat)
  add_time_ids [1,6]                   (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
  init_noise [B,4,h/8,w/8]             raw torch.randn output, before * init_noise_sigma
  timesteps [N], sigmas [N+1]          scheduler state after set_timesteps
  latents_step_0 .. latents_step_{N-1} [B,4,h/8,w/8]  latents after each scheduler step
  image [B,H,W,3]                      output_type "np", in [0,1]
  image_u8 uint8 [B,H,W,3]             (image * 255).round(), as diffusers' numpy_to_pil
Metadata (strings): prompt, negative_prompt (absent when None), prompt_2 / negative_prompt_2 (the bigG encoder's
texts, only in the case that sets them), guidance_scale, steps, seed, width, height, batch_size.
Seeds: generator=torch.Generator("cpu").manual_seed(seed); batch > 1: a list of generators seed+i, one per image.

`--verify DIR [DIR ...]` runs a plain onnxruntime loop (optimum-layout ONNX folder; diffusers'
EulerDiscreteScheduler does the scheduler math) with the golden's init_noise and prints max |ORT - golden| for the
embeddings, every step's latents and the image.

Usage: python goldens.py [--model DIR] [--out DIR]
       python goldens.py --verify tests/fixtures/tiny-sdxl tests/fixtures/tiny-sdxl-folded [--cases cfg_neg,...]
"""

from __future__ import annotations

from pathlib import Path

import _common as c

CASES = {
    "cfg_neg": dict(
        prompt="a photograph of an astronaut riding a horse",
        negative_prompt="blurry, low quality",
        guidance_scale=5.0,
        steps=5,
        seed=0,
    ),
    "cfg_zero_neg": dict(prompt="a red cube on a table", negative_prompt=None, guidance_scale=7.0, steps=4, seed=42),
    "empty_neg": dict(prompt="a cat", negative_prompt="", guidance_scale=5.0, steps=3, seed=7),
    "no_cfg": dict(prompt="a dog", negative_prompt=None, guidance_scale=1.0, steps=3, seed=3),
    "batch2_wide": dict(
        prompt="a mountain lake at dawn",
        negative_prompt="fog",
        guidance_scale=6.0,
        steps=3,
        seed=11,
        batch_size=2,
        width=96,
        height=64,
    ),
    "long_prompt": dict(prompt=c.LONG_PROMPT, negative_prompt=None, guidance_scale=5.0, steps=2, seed=5),
    "big_seed": dict(prompt="a boat", negative_prompt=None, guidance_scale=5.0, steps=2, seed=4294967301),
    "prompt_2": dict(
        prompt="a cat",
        prompt_2="an oil painting of a harbour",
        negative_prompt="blurry",
        negative_prompt_2="text, watermark",
        guidance_scale=5.0,
        steps=2,
        seed=9,
    ),
}


def second_prompts(p: dict) -> tuple[str, str | None]:
    """The texts tokenizer_2 / text_encoder_2 get: `prompt_2 or prompt`, `negative_prompt_2 or negative_prompt`
    (diffusers' encode_prompt)."""
    return p.get("prompt_2") or p["prompt"], p.get("negative_prompt_2") or p["negative_prompt"]


def case_params(name: str) -> dict:
    p = {"width": 64, "height": 64, "batch_size": 1, **CASES[name]}
    return p


def generators(seed: int, batch: int):
    import torch

    if batch == 1:
        return torch.Generator("cpu").manual_seed(seed)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def run_case(pipe, name: str, call_kwargs: dict | None = None) -> tuple[dict, dict]:
    """Run one case through diffusers; return (tensors, metadata). `call_kwargs`: more arguments for the pipeline
    call (make_controlnet.py's control images and scales)."""
    import numpy as np
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    p = case_params(name)
    B, H, W = p["batch_size"], p["height"], p["width"]
    cfg = p["guidance_scale"] > 1.0
    t: dict[str, torch.Tensor] = {}

    # token ids: exactly the tokenizer call of StableDiffusionXLPipeline.encode_prompt
    def ids(tok, text):
        enc = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return enc.input_ids

    prompt_2, negative_2 = second_prompts(p)
    t["input_ids"] = ids(pipe.tokenizer, p["prompt"])
    t["input_ids_2"] = ids(pipe.tokenizer_2, prompt_2)
    if cfg and p["negative_prompt"] is not None:
        t["negative_input_ids"] = ids(pipe.tokenizer, p["negative_prompt"])
        t["negative_input_ids_2"] = ids(pipe.tokenizer_2, negative_2)

    # record what the text encoders actually received, to prove the ids above are the pipeline's
    seen_ids: list[torch.Tensor] = []
    def record_ids(_mod, args, kwargs):
        seen_ids.append(args[0] if args else kwargs["input_ids"])

    encoders = (pipe.text_encoder, pipe.text_encoder_2)
    hooks = [m.register_forward_pre_hook(record_ids, with_kwargs=True) for m in encoders]
    unet_calls: list[dict] = []
    hooks.append(
        pipe.unet.register_forward_pre_hook(
            lambda mod, args, kwargs: unet_calls.append(
                {"timestep": args[1] if len(args) > 1 else kwargs["timestep"], **kwargs["added_cond_kwargs"]}
            ),
            with_kwargs=True,
        )
    )

    # per-prompt embeddings (num_images_per_prompt=1): diffusers' encode_prompt
    pe, npe, ppe, nppe = pipe.encode_prompt(
        prompt=p["prompt"],
        device=torch.device("cpu"),
        num_images_per_prompt=1,
        do_classifier_free_guidance=cfg,
        negative_prompt=p["negative_prompt"],
        prompt_2=p.get("prompt_2"),
        negative_prompt_2=p.get("negative_prompt_2"),
    )
    expect_seen = [t["input_ids"], t["input_ids_2"]]
    if "negative_input_ids" in t:
        expect_seen += [t["negative_input_ids"], t["negative_input_ids_2"]]
    assert len(seen_ids) == len(expect_seen) and all(torch.equal(a, b) for a, b in zip(seen_ids, expect_seen))
    t["prompt_embeds"] = pe
    t["pooled_prompt_embeds"] = ppe
    if cfg:
        t["negative_prompt_embeds"] = npe
        t["negative_pooled_prompt_embeds"] = nppe
        if p["negative_prompt"] is None:
            assert not npe.any() and not nppe.any()

    # the raw initial noise: the pipeline's first draw from the generator(s) (prepare_latents -> randn_tensor)
    shape = (B, 4, H // pipe.vae_scale_factor, W // pipe.vae_scale_factor)
    t["init_noise"] = randn_tensor(shape, generator=generators(p["seed"], B), dtype=torch.float32)
    try:
        image, steps = c.run_pipeline(
            pipe,
            t["init_noise"],
            prompt=p["prompt"],
            negative_prompt=p["negative_prompt"],
            prompt_2=p.get("prompt_2"),
            negative_prompt_2=p.get("negative_prompt_2"),
            guidance_scale=p["guidance_scale"],
            num_inference_steps=p["steps"],
            width=W,
            height=H,
            num_images_per_prompt=B,
            generator=generators(p["seed"], B),
            **(call_kwargs or {}),
        )
    finally:
        for h in hooks:
            h.remove()

    time_ids = unet_calls[0]["time_ids"]
    assert time_ids.shape[0] == (2 * B if cfg else B) and bool((time_ids == time_ids[:1]).all())
    t["add_time_ids"] = time_ids[:1].clone()
    t["timesteps"] = pipe.scheduler.timesteps.to(torch.float32).clone()
    t["sigmas"] = pipe.scheduler.sigmas.to(torch.float32).clone()
    assert [float(u["timestep"]) for u in unet_calls] == [float(x) for x in t["timesteps"]]
    # one loop iteration per timestep: steps, or 2 * steps - 1 for a second-order scheduler (Heun)
    assert len(steps) == len(t["timesteps"]) == (p["steps"] if pipe.scheduler.order == 1 else 2 * p["steps"] - 1)
    for i, lat in enumerate(steps):
        t[f"latents_step_{i}"] = lat
    t["image"] = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t["image_u8"] = torch.from_numpy((image * 255).round().astype("uint8"))

    meta = {
        "prompt": p["prompt"],
        "guidance_scale": repr(float(p["guidance_scale"])),
        "steps": str(p["steps"]),
        "seed": str(p["seed"]),
        "width": str(W),
        "height": str(H),
        "batch_size": str(B),
    }
    if p["negative_prompt"] is not None:
        meta["negative_prompt"] = p["negative_prompt"]
    for key in ("prompt_2", "negative_prompt_2"):
        if p.get(key) is not None:
            meta[key] = p[key]
    tensors = {k: v.detach().contiguous() for k, v in t.items()}
    return tensors, meta


def write_goldens(model: Path, out: Path, cases: list[str]) -> None:
    from PIL import Image

    pipe = c.load_pipeline(model)
    out.mkdir(parents=True, exist_ok=True)
    for name in cases:
        tensors, meta = run_case(pipe, name)
        c.write_golden(out / f"{name}.safetensors", tensors, meta)
        if name == "cfg_neg":
            Image.fromarray(tensors["image_u8"][0].numpy()).save(str(out / "cfg_neg.png"), optimize=False)
        shown = sorted(k for k in tensors if not k.startswith("latents_step_"))
        shapes = ", ".join(f"{k}{list(tensors[k].shape)}" for k in shown)
        print(f"{name}: {shapes}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# plain onnxruntime loop (a port of StableDiffusionXLPipeline.__call__ for text-to-image)


class OrtSdxl:
    def __init__(self, folder: Path):
        import onnxruntime as ort
        from diffusers import EulerDiscreteScheduler
        from transformers import CLIPTokenizer

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = {
            name: ort.InferenceSession(str(folder / name / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            for name in ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
        }
        self.tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
        self.tok2 = CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2"))
        self.sched = EulerDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
        import json

        self.scaling = json.loads((folder / "vae_decoder" / "config.json").read_text())["scaling_factor"]

    def encode(self, tok, sess, text):
        import numpy as np

        ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="np").input_ids
        dtype = np.int32 if sess.get_inputs()[0].type == "tensor(int32)" else np.int64
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input_ids": ids.astype(dtype)})))
        n = sum(1 for k in outs if k.startswith("hidden_states."))
        return ids, outs[f"hidden_states.{n - 2}"], outs

    def condition(self, p: dict, B: int) -> tuple[dict, tuple]:
        """Encode the prompts of case parameters `p` for a batch of B images.

        Returns ({name: array} of the token ids, embeddings and add_time_ids, comparable with the golden tensors),
        and the UNet's (encoder_hidden_states, text_embeds, time_ids) inputs (negative half first with CFG).
        """
        import numpy as np

        cfg = p["guidance_scale"] > 1.0
        r = {}
        ids1, h1, _ = self.encode(self.tok, self.sess["text_encoder"], p["prompt"])
        prompt_2, negative_2 = second_prompts(p)
        ids2, h2, o2 = self.encode(self.tok2, self.sess["text_encoder_2"], prompt_2)
        r["input_ids"], r["input_ids_2"] = ids1, ids2
        r["prompt_embeds"] = np.concatenate([h1, h2], axis=-1)
        r["pooled_prompt_embeds"] = o2["text_embeds"]
        if cfg:
            if p["negative_prompt"] is None:  # force_zeros_for_empty_prompt
                r["negative_prompt_embeds"] = np.zeros_like(r["prompt_embeds"])
                r["negative_pooled_prompt_embeds"] = np.zeros_like(r["pooled_prompt_embeds"])
            else:
                nid1, nh1, _ = self.encode(self.tok, self.sess["text_encoder"], p["negative_prompt"])
                nid2, nh2, no2 = self.encode(self.tok2, self.sess["text_encoder_2"], negative_2)
                r["negative_input_ids"], r["negative_input_ids_2"] = nid1, nid2
                r["negative_prompt_embeds"] = np.concatenate([nh1, nh2], axis=-1)
                r["negative_pooled_prompt_embeds"] = no2["text_embeds"]
        H, W = p["height"], p["width"]
        time_ids = np.array([[H, W, 0, 0, H, W]], dtype=np.float32)
        r["add_time_ids"] = time_ids
        rep = lambda x: np.repeat(x, B, axis=0)  # noqa: E731
        if cfg:
            ehs = np.concatenate([rep(r["negative_prompt_embeds"]), rep(r["prompt_embeds"])])
            te = np.concatenate([rep(r["negative_pooled_prompt_embeds"]), rep(r["pooled_prompt_embeds"])])
            tid = np.repeat(time_ids, 2 * B, axis=0)
        else:
            ehs, te, tid = rep(r["prompt_embeds"]), rep(r["pooled_prompt_embeds"]), np.repeat(time_ids, B, axis=0)
        return r, (ehs, te, tid)

    def run(self, p: dict, init_noise):
        """Returns {name: array} comparable with the golden tensors."""
        import numpy as np
        import torch

        cfg = p["guidance_scale"] > 1.0
        r, (ehs, te, tid) = self.condition(p, init_noise.shape[0])
        sched = self.sched
        sched.set_timesteps(p["steps"])
        r["timesteps"] = sched.timesteps.numpy().astype(np.float32)
        r["sigmas"] = sched.sigmas.numpy().astype(np.float32)
        latents = torch.from_numpy(init_noise) * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x = torch.cat([latents] * 2) if cfg else latents
            eps = self.unet(sched.scale_model_input(x, t), t, ehs, te, tid)
            if cfg:
                e_u, e_c = eps.chunk(2)
                eps = e_u + p["guidance_scale"] * (e_c - e_u)
            latents = sched.step(eps, t, latents, return_dict=False)[0]
            r[f"latents_step_{i}"] = latents.numpy()
        r["image"], r["image_u8"] = self.decode(latents)
        return r

    def unet(self, x, t, ehs, te, tid):
        """One UNet evaluation: the noise prediction (torch) for the scaled latents x at timestep t."""
        import numpy as np
        import torch

        feeds = {
            "sample": x.numpy().astype(np.float32),
            "timestep": np.array(float(t), dtype=np.float32),
            "encoder_hidden_states": ehs,
            "text_embeds": te,
            "time_ids": tid,
        }
        return torch.from_numpy(self.sess["unet"].run(None, feeds)[0])

    def decode(self, latents):
        """VAE decode like the pipeline's output_type "np": (image in [0,1] NHWC, (image * 255).round() as uint8)."""
        import numpy as np

        img = self.sess["vae_decoder"].run(None, {"latent_sample": (latents / self.scaling).numpy()})[0]
        img = np.clip(img / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
        return img, (img * 255).round().astype(np.uint8)


def verify(folders: list[Path], goldens: Path, cases: list[str]) -> dict:
    import numpy as np
    from safetensors.numpy import load_file

    report = {}
    for folder in folders:
        ort_pipe = OrtSdxl(folder)
        for name in cases:
            g = load_file(str(goldens / f"{name}.safetensors"))
            r = ort_pipe.run(case_params(name), g["init_noise"])
            assert set(r) == set(g) - {"init_noise"}, sorted(set(r) ^ (set(g) - {"init_noise"}))
            diffs = {}
            for k in sorted(r):
                a, b = r[k], g[k]
                assert a.shape == b.shape, (k, a.shape, b.shape)
                if k.endswith("input_ids") or k.endswith("input_ids_2"):
                    assert np.array_equal(a.astype(np.int64), b), k
                    continue
                diffs[k] = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
            lat = max(v for k, v in diffs.items() if k.startswith("latents_step_"))
            emb = max(diffs[k] for k in diffs if "embeds" in k)
            line = {
                "embeds": emb,
                "latents": lat,
                "image": diffs["image"],
                "image_u8": diffs["image_u8"],
                "timesteps": diffs["timesteps"],
                "sigmas": diffs["sigmas"],
            }
            c.report_diffs(report, folder, name, line, 13)
    return report


def main() -> None:
    c.goldens_main(__doc__, list(CASES), write_goldens, verify)


if __name__ == "__main__":
    main()
