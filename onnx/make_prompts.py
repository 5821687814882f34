"""Write goldens for data.prompt_syntax "weighted": A1111's emphasis syntax and prompts longer than 77 tokens,
encoded with compel's per-token-weight API and run through diffusers' StableDiffusionXLPipeline.

The reference, step by step (fp32, CPU, 1 thread, the torch tiny model of build_tiny.py):
  1. The A1111 prompt's parse (modules/prompt_parser.py parse_prompt_attention) is written out below as
     (text, weight) pieces, BREAK splitting them into segments; the Rust parser's unit tests check that parse on
     A1111's own docstring examples.
  2. compel 2.5.1 (`Compel([tokenizer, tokenizer_2], [text_encoder, text_encoder_2],
     returned_embeddings_type=PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED, requires_pooled=[False, True],
     truncate_long_prompts=False, split_long_text_mode=SplitLongTextMode.BRUTAL)`); for each segment and each of its
     two EmbeddingsProviders: `get_token_ids_and_expand_weights(texts, weights)` (each piece tokenized alone, chunks
     of 75 tokens, bos/eos, padded with the tokenizer's pad token) then `build_weighted_embedding_tensor` (each chunk
     encoded alone, z_empty + (z - z_empty) * w where w != 1); the providers joined on the last axis, the segments on
     the sequence axis (what compel's `.and()` conjunction does), the prompt and negative prompt padded to the same
     length with `Compel._pad_conditioning_tensors_to_same_length` and the providers' `empty_z`.
     Pooled: text_encoder_2's text_embeds of the first chunk (compel's get_pooled_embeddings encodes the first 77
     tokens), unweighted.
     Weights below 1 use the same interpolation (ComfyUI's behaviour). compel's default `DownweightMode.MASK`
     additionally blends in re-encodings with the piece masked out by the attention mask; our exported text
     encoders take no attention mask, and A1111/ComfyUI users expect the interpolation, so that step is not used
     (the script prints how far the MASK result is, for the record).
  3. StableDiffusionXLPipeline(prompt_embeds=, pooled_prompt_embeds=, negative_prompt_embeds=,
     negative_pooled_prompt_embeds=) (negative None: diffusers' zeros of the prompt's shape), goldens.generators.

Cross-checks (asserted): where every weight is >= 1, the embeddings equal compel's own
`build_conditioning_tensor_for_conjunction` of the same Fragments (its high-level path); a BREAK-free prompt's pooled
equals compel's `get_pooled_embeddings`; each case's image differs from the plain (truncating, literal) diffusers
call of the same A1111 text by >= 5/255, so a request that ignores the syntax fails the Rust tests.

Goldens (tests/fixtures/goldens/<case>.safetensors):
  prompts_long      a 5-chunk prompt (319 tokens with the tiny model's 1000-token vocabulary) (one weighted piece in its last chunk), a short negative prompt (padded)
  prompts_weights   weights > 1 and < 1, nested brackets, an escaped bracket; negative "blurry"
  prompts_break     BREAK; no negative prompt (zeros of the 2-chunk shape)
  prompts_refiner   the ensemble of experts with make_stages.py's tiny refiner (base to 0.8, then the refiner), the
                    5-chunk prompt and a weighted negative prompt: the base's embeddings from the two-encoder compel, the
                    refiner's from a compel of its text_encoder_2 alone (requires_pooled=True)
  prompts_embeds    text path only: prompt_embeds_<k> / pooled_prompt_embeds_<k> of EMBED_PROMPTS
Tensors: latents_step_<i>, image, image_u8, prompt_embeds, pooled_prompt_embeds (and negative_* when given).
Metadata: goldens.py's keys with prompt = the A1111 text, prompt_syntax "weighted", chunks; prompts_embeds: prompts
(a JSON list).

Usage: python make_prompts.py [--model DIR] [--out tests/fixtures] [--cases prompts_long,...]
"""

from __future__ import annotations

import json

import _common as c
import goldens

X = 1.1  # A1111's round-bracket multiplier; its square one is 1 / 1.1
SQ = 1 / 1.1

# Each case: the A1111 text the request sends, and its parse as segments (split at BREAK) of (text, weight) pieces,
# the weights multiplied in A1111's order.
LONG_TAIL = ", (golden frame:1.3)"
CASES = {
    "prompts_long": dict(
        prompt=c.LONG_PROMPT + LONG_TAIL,
        segments=[[(c.LONG_PROMPT + ", ", 1.0), ("golden frame", 1.0 * 1.3)]],
        negative_prompt="blurry, low quality",
        negative_segments=[[("blurry, low quality", 1.0)]],
        guidance_scale=5.0,
        steps=3,
        seed=21,
        chunks=5,
    ),
    "prompts_weights": dict(
        prompt=r"a (red:1.4) cube on a [[wooden]] table, ((studio (light:1.2))), (fog:0.6) \(test\)",
        segments=[[
            ("a ", 1.0),
            ("red", 1.0 * 1.4),
            (" cube on a ", 1.0),
            ("wooden", 1.0 * SQ * SQ),
            (" table, ", 1.0),
            ("studio ", 1.0 * X * X),
            ("light", 1.0 * 1.2 * X * X),
            (", ", 1.0),
            ("fog", 1.0 * 0.6),
            (" (test)", 1.0),
        ]],
        negative_prompt="blurry",
        negative_segments=[[("blurry", 1.0)]],
        guidance_scale=5.0,
        steps=3,
        seed=22,
        chunks=1,
    ),
    "prompts_break": dict(
        prompt="a red cube on a table BREAK a blue sphere in the (night sky:1.2)",
        segments=[[("a red cube on a table", 1.0)], [("a blue sphere in the ", 1.0), ("night sky", 1.0 * 1.2)]],
        negative_prompt=None,
        guidance_scale=5.0,
        steps=3,
        seed=23,
        chunks=2,
    ),
}
# The ensemble of experts (make_stages.py's run_refiner: base to 0.8, then the tiny refiner), each stage's encoders
# given the weighted embeddings: the base's two, the refiner's text_encoder_2 through its own compel.
REFINER_CASE = dict(
    prompt=CASES["prompts_long"]["prompt"],
    segments=CASES["prompts_long"]["segments"],
    negative_prompt="blurry, (low quality:1.2)",
    negative_segments=[[("blurry, ", 1.0), ("low quality", 1.0 * 1.2)]],
    guidance_scale=5.0,
    steps=10,
    seed=24,
    chunks=5,
)
# prompts_embeds: (A1111 text, segments) for the text path alone.
EMBED_PROMPTS = [
    ("a photograph of an astronaut riding a horse", [[("a photograph of an astronaut riding a horse", 1.0)]]),
    ("", [[("", 1.0)]]),
    ("[a] (b:0.3) ((c))", [[("a", 1.0 * SQ), (" ", 1.0), ("b", 1.0 * 0.3), (" ", 1.0), ("c", 1.0 * X * X)]]),
    (CASES["prompts_long"]["prompt"], CASES["prompts_long"]["segments"]),
    ("BREAK x BREAK", [[("", 1.0)], [("x", 1.0)]]),
]
ALL_CASES = [*CASES, "prompts_refiner", "prompts_embeds"]


def make_compel(pipe):
    from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode

    return Compel(
        tokenizer=[pipe.tokenizer, pipe.tokenizer_2],
        text_encoder=[pipe.text_encoder, pipe.text_encoder_2],
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=[False, True],
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.BRUTAL,
    )


def make_refiner_compel(refiner):
    """compel for the refiner's one encoder (tokenizer_2 / text_encoder_2), pooled from it."""
    from compel import Compel, ReturnedEmbeddingsType, SplitLongTextMode

    return Compel(
        tokenizer=refiner.tokenizer_2,
        text_encoder=refiner.text_encoder_2,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=True,
        truncate_long_prompts=False,
        split_long_text_mode=SplitLongTextMode.BRUTAL,
    )


def providers_of(compel) -> list:
    """compel's EmbeddingsProviders: both of an SDXL base's, or the refiner's one."""
    cp = compel.conditioning_provider
    return getattr(cp, "embedding_providers", [cp])


def encode(compel, pipe, segments) -> tuple:
    """(prompt_embeds [1, 77 n, D], pooled [1, 32], chunk count) of `segments` (see the module docstring); pooled
    from the last provider's encoder (text_encoder_2)."""
    import torch

    providers = providers_of(compel)
    parts, first_ids = [], None
    with torch.no_grad():
        for seg in segments:
            texts, weights = [t for t, _ in seg], [w for _, w in seg]
            per_provider = []
            for k, p in enumerate(providers):
                ids, w, mask = p.get_token_ids_and_expand_weights(texts, weights, device="cpu")
                per_provider.append(p.build_weighted_embedding_tensor(ids, w, mask))
                if k == len(providers) - 1 and first_ids is None:
                    first_ids = ids[: p.max_token_count]
            parts.append(torch.cat(per_provider, dim=-1))
        embeds = torch.cat(parts, dim=1)
        pooled = providers[-1].text_encoder(first_ids.unsqueeze(0), output_hidden_states=True).text_embeds
        if all(w >= 1 for seg in segments for _, w in seg):
            from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

            conj = Conjunction([FlattenedPrompt([Fragment(t, w) for t, w in seg]) for seg in segments])
            high, _ = compel.build_conditioning_tensor_for_conjunction(conj)
            assert torch.equal(high, embeds), "compel's high-level path differs"
        if len(segments) == 1:
            joined = " ".join(t for t, _ in segments[0])
            assert torch.equal(compel.conditioning_provider.get_pooled_embeddings([joined]), pooled), "pooled"
    return embeds, pooled, embeds.shape[1] // 77


def empty_z(compel):
    import torch

    return torch.cat([p.empty_z for p in providers_of(compel)], dim=-1)


def run(pipe, compel, name: str) -> tuple[dict, dict]:
    import torch
    from compel import Compel

    p = dict(width=64, height=64, batch_size=1, **CASES[name])
    pe, pp, chunks = encode(compel, pipe, p["segments"])
    call = dict(prompt_embeds=pe, pooled_prompt_embeds=pp)
    t = {"prompt_embeds": pe, "pooled_prompt_embeds": pp}
    if p["negative_prompt"] is not None:
        ne, npool, _ = encode(compel, pipe, p["negative_segments"])
        pe, ne = Compel._pad_conditioning_tensors_to_same_length([pe, ne], emptystring_conditioning=empty_z(compel))
        call.update(prompt_embeds=pe, negative_prompt_embeds=ne, negative_pooled_prompt_embeds=npool)
        t.update(prompt_embeds=pe, negative_prompt_embeds=ne, negative_pooled_prompt_embeds=npool)
    chunks = t["prompt_embeds"].shape[1] // 77
    assert chunks == p["chunks"], (name, chunks)
    t.update(call_pipeline(pipe, p, call))
    meta = dict(
        prompt=p["prompt"],
        guidance_scale=repr(float(p["guidance_scale"])),
        steps=str(p["steps"]),
        seed=str(p["seed"]),
        width=str(p["width"]),
        height=str(p["height"]),
        batch_size="1",
        prompt_syntax="weighted",
        chunks=str(chunks),
    )
    if p["negative_prompt"] is not None:
        meta["negative_prompt"] = p["negative_prompt"]
    plain = call_pipeline(pipe, p, dict(prompt=p["prompt"], negative_prompt=p["negative_prompt"]))
    worst = (t["image_u8"].int() - plain["image_u8"].int()).abs().max().item()
    print(f"{name}: {chunks} chunks; |image_u8 - plain diffusers|max {worst}/255", flush=True)
    assert worst >= 5, (name, worst)
    if any(w < 1 for seg in p["segments"] for _, w in seg):
        masked = compel_mask_default(pipe, p["segments"])
        print(f"{name}: compel's default DownweightMode.MASK embeddings differ by max {(masked - t['prompt_embeds'][:, :masked.shape[1]]).abs().max().item():.3g}")
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def compel_mask_default(pipe, segments):
    """compel's default (DownweightMode.MASK) embeddings of one-segment `segments`, for the record only."""
    import torch
    from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

    compel = make_compel(pipe)
    conj = Conjunction([FlattenedPrompt([Fragment(t, w) for t, w in seg]) for seg in segments])
    with torch.no_grad():
        return compel.build_conditioning_tensor_for_conjunction(conj)[0]


def call_pipeline(pipe, p: dict, call: dict) -> dict:
    """`pipe(**call)` with case `p`'s guidance, steps, size and generator: latents_step_<i>, image, image_u8."""
    import numpy as np
    import torch

    steps: list = []

    def on_step_end(_pipe, i, _t, kwargs):
        assert i == len(steps)
        steps.append(kwargs["latents"].clone())
        return kwargs

    with torch.no_grad():
        out = pipe(
            **call,
            guidance_scale=p["guidance_scale"],
            num_inference_steps=p["steps"],
            width=p["width"],
            height=p["height"],
            generator=goldens.generators(p["seed"], 1),
            output_type="np",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
    t = {f"latents_step_{i}": lat for i, lat in enumerate(steps)}
    t["image"] = torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
    t["image_u8"] = torch.from_numpy((out * 255).round().astype(np.uint8))
    return t


def padded_pair(compel, pipe, p: dict) -> dict:
    """The prompt_embeds / pooled / negative arguments of case `p` for one pipeline, padded to the same length."""
    from compel import Compel

    pe, pp, _ = encode(compel, pipe, p["segments"])
    ne, npool, _ = encode(compel, pipe, p["negative_segments"])
    pe, ne = Compel._pad_conditioning_tensors_to_same_length([pe, ne], emptystring_conditioning=empty_z(compel))
    return dict(prompt_embeds=pe, pooled_prompt_embeds=pp, negative_prompt_embeds=ne, negative_pooled_prompt_embeds=npool)


def refiner_case(pipe, compel, refiner) -> tuple[dict, dict]:
    import make_stages as stages

    p = dict(REFINER_CASE, width=64, height=64, batch_size=1)
    base_args = padded_pair(compel, pipe, p)
    refiner_args = padded_pair(make_refiner_compel(refiner), refiner, p)
    assert base_args["prompt_embeds"].shape[1] == 77 * p["chunks"] == refiner_args["prompt_embeds"].shape[1]
    run = dict(width=64, height=64, batch_size=1, guidance_scale=p["guidance_scale"], steps=p["steps"], seed=p["seed"])
    t, _ = stages.run_refiner(pipe, refiner, dict(run, prompt=None, negative_prompt=None), base_kwargs=base_args,
                              refiner_kwargs=refiner_args)
    plain, _ = stages.run_refiner(pipe, refiner, dict(run, prompt=p["prompt"], negative_prompt=p["negative_prompt"]))
    worst = (t["image_u8"].int() - plain["image_u8"].int()).abs().max().item()
    print(f"prompts_refiner: {p['chunks']} chunks; |image_u8 - plain diffusers|max {worst}/255", flush=True)
    assert worst >= 5, worst
    meta = {k: str(run[k]) for k in ("steps", "seed", "width", "height", "batch_size")}
    meta.update(prompt=p["prompt"], negative_prompt=p["negative_prompt"], guidance_scale=repr(float(p["guidance_scale"])),
                prompt_syntax="weighted", chunks=str(p["chunks"]), refiner="tiny-sdxl-refiner",
                refiner_start=repr(stages.REFINER_START))
    for k, v in base_args.items():
        t[k] = v
    return {k: v.detach().contiguous() for k, v in t.items()}, meta


def embeds_case(pipe, compel) -> tuple[dict, dict]:
    t = {}
    for k, (_, segments) in enumerate(EMBED_PROMPTS):
        pe, pp, _ = encode(compel, pipe, segments)
        t[f"prompt_embeds_{k}"], t[f"pooled_prompt_embeds_{k}"] = pe.contiguous(), pp.contiguous()
    return t, {"prompts": json.dumps([text for text, _ in EMBED_PROMPTS]), "prompt_syntax": "weighted"}


def main() -> None:
    args, cases = c.fixtures_args(__doc__, ALL_CASES)
    pipe = c.load_pipeline(args.model)
    compel = make_compel(pipe)
    for name in cases:
        if name == "prompts_refiner":
            import make_stages as stages

            tensors, meta = refiner_case(pipe, compel, stages.build_refiner(pipe))
        elif name == "prompts_embeds":
            tensors, meta = embeds_case(pipe, compel)
        else:
            tensors, meta = run(pipe, compel, name)
        c.write_golden(args.out / "goldens" / f"{name}.safetensors", tensors, meta)


if __name__ == "__main__":
    main()
