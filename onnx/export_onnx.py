"""Export a Stable Diffusion XL pipeline to ONNX in optimum's folder layout, for sdxlrt.

Input: a diffusers SDXL folder (model_index.json, unet/, vae/, text_encoder/, ...) or a single-file checkpoint
(.safetensors / .ckpt, loaded with StableDiffusionXLPipeline.from_single_file).

Output layout (the one `optimum-cli export onnx --task text-to-image` writes):
  model_index.json                 copied from the diffusers pipeline
  scheduler/scheduler_config.json
  text_encoder/model.onnx, config.json     input_ids -> last_hidden_state, pooler_output, hidden_states.0..N
  text_encoder_2/model.onnx, config.json   input_ids -> text_embeds, last_hidden_state, hidden_states.0..N
  tokenizer/, tokenizer_2/                  vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json
                                            (+ tokenizer.json unless --no-tokenizer-json)
  unet/model.onnx, config.json     sample, timestep (f32 scalar []), encoder_hidden_states, text_embeds, time_ids
                                   -> out_sample
  vae_decoder/model.onnx, config.json      latent_sample -> sample
  vae_encoder/model.onnx, config.json      sample -> latent_parameters (mean and logvar, concatenated on dim 1)

All graphs: TorchScript exporter (dynamo=False), opset 18, dynamic batch / sequence / spatial axes.
By default constant folding is OFF, so initializer names are the diffusers/transformers parameter names in torch
layout (what a LoRA merge needs); `--fold` gives optimum's default (Linear weights renamed onnx::MatMul_N and
stored transposed). CLIPTextModel initializers get the `text_model.` prefix of real checkpoints.
Graph bytes are deterministic: the same weights and options give the same files. Copied configs (model_index.json,
scheduler_config.json, each config.json) lose `_name_or_path`, the path a model was loaded from that diffusers'
save_pretrained writes, so no file depends on where the source lay.

ControlNet (`--controlnet`): SRC is a diffusers SDXL ControlNetModel folder (config.json +
diffusion_pytorch_model[.fp16].safetensors); OUT gets
  model.onnx [model.onnx_data], config.json (the ControlNetModel's, copied)
    inputs   sample [B,4,h,w], timestep (f32 scalar [], as the UNet's), encoder_hidden_states [B,S,D],
             controlnet_cond [B,3,H,W] (the control image in [0,1], RGB, H = 8h), conditioning_scale (f32 scalar []),
             text_embeds [B,P], time_ids [B,6]
    outputs  down_block_res_sample_0 .. down_block_res_sample_{n-1} (ControlNetModel.forward's
             down_block_res_samples, in order), mid_block_res_sample; all already multiplied by conditioning_scale
  = ControlNetModel.forward(..., added_cond_kwargs={text_embeds, time_ids}, guess_mode=False, return_dict=False).
  --fold, --fp16 (timestep and conditioning_scale stay float32), --external-data controlnet, --check and
  --fused-attention apply to it as to the UNet.

Examples:
  python export_onnx.py /path/to/sdxl-diffusers-folder /path/to/out
  python export_onnx.py sd_xl_base_1.0.safetensors out --config /path/to/sdxl-diffusers-folder --fp16
  python export_onnx.py tiny-sdxl-diffusers out --external-data unet --check
  python export_onnx.py --controlnet /path/to/controlnet-canny-sdxl-1.0 /path/to/out/controlnet-canny --check
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import _common as c

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")
# float inputs that stay float32 in --fp16 graphs (scalars)
FLOAT32_INPUTS = ("timestep", "conditioning_scale")
# SDXL base time ids: original size, crop top-left, target size
SDXL_TIME_IDS = 6
OPSET = 18
TWO_GB = 2**31
# graphs with more tensor bytes than this cannot be serialized as one protobuf (2 GB limit, minus headroom)
LARGE_MODEL_BYTES = TWO_GB - (64 << 20)
# onnx external data: tensors smaller than this stay inline in model.onnx
EXTERNAL_SIZE_THRESHOLD = 1024


# ---------------------------------------------------------------------------------------------------------------
# loading


def load_pipeline(src: Path, config: str | None, local_files_only: bool):
    import torch
    from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

    if src.is_dir():
        # the class model_index.json names: StableDiffusionXLPipeline, or StableDiffusionXLImg2ImgPipeline for a
        # refiner (no text_encoder / tokenizer; export it with --components text_encoder_2,unet,vae_decoder)
        return DiffusionPipeline.from_pretrained(str(src), torch_dtype=torch.float32)
    if src.suffix not in (".safetensors", ".ckpt"):
        sys.exit(f"error: {src} is neither a diffusers folder nor a .safetensors/.ckpt checkpoint")
    # Single-file checkpoints (SGM/LDM key layout) are converted by diffusers. It needs the diffusers configs of the
    # matching model: from `config` (a local diffusers SDXL folder, or a hub repo id when online), else diffusers
    # guesses the repo from the checkpoint's keys and downloads the configs.
    kwargs = {"torch_dtype": torch.float32, "local_files_only": local_files_only}
    if config:
        kwargs["config"] = config
    return StableDiffusionXLPipeline.from_single_file(str(src), **kwargs)


def load_controlnet(src: Path):
    """A diffusers ControlNetModel folder, in float32 (a folder with only the fp16 variant's weights is upcast)."""
    import torch
    from diffusers import ControlNetModel

    if not (src / "config.json").is_file():
        sys.exit(f"error: {src} is not a diffusers ControlNetModel folder (no config.json)")
    plain = any((src / f"diffusion_pytorch_model.{ext}").exists() for ext in ("safetensors", "bin"))
    variant = None if plain or not any(src.glob("diffusion_pytorch_model.fp16.*")) else "fp16"
    model = ControlNetModel.from_pretrained(str(src), torch_dtype=torch.float32, variant=variant)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# per-graph export specs


class Spec:
    """What to export for one graph: module, patched forward, example inputs, names and dynamic axes."""

    def __init__(self, module, forward, args, input_names, output_names, dynamic_axes, rename=None):
        self.module = module
        self.forward = forward
        self.args = args
        self.input_names = input_names
        self.output_names = output_names
        self.dynamic_axes = dynamic_axes
        self.rename = rename  # optional fn(initializer name) -> name


def text_encoder_spec(te, with_projection: bool, ids_dtype, batch: int = 2):
    import torch

    n_hidden = te.config.num_hidden_layers + 1
    seq = te.config.max_position_embeddings
    ids = torch.randint(0, te.config.vocab_size - 1, (batch, seq), generator=torch.Generator().manual_seed(0))
    ids[:, -1] = te.config.vocab_size - 1
    ids = ids.to(ids_dtype)
    orig = te.forward

    if with_projection:
        # optimum: CLIPTextModelWithProjection -> text_embeds, last_hidden_state, hidden_states.*
        def forward(input_ids):
            out = orig(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            return (out.text_embeds, out.last_hidden_state, *out.hidden_states)

        outputs = ["text_embeds", "last_hidden_state"]
    else:
        # optimum: CLIPTextModel -> last_hidden_state, pooler_output, hidden_states.*
        def forward(input_ids):
            out = orig(input_ids=input_ids, output_hidden_states=True, return_dict=True)
            return (out.last_hidden_state, out.pooler_output, *out.hidden_states)

        outputs = ["last_hidden_state", "pooler_output"]
    hidden = [f"hidden_states.{i}" for i in range(n_hidden)]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}}
    for name in outputs + hidden:
        pooled = name in ("text_embeds", "pooler_output")
        axes[name] = {0: "batch_size"} if pooled else {0: "batch_size", 1: "sequence_length"}

    rename = None
    if not any(k.startswith("text_model.") for k in te.state_dict()):
        # transformers 5 CLIPTextModel has no `text_model.` prefix in its state dict; real checkpoints do.
        keys = set(te.state_dict())

        def rename(name):
            return "text_model." + name if name in keys else name

    return Spec(te, forward, (ids,), ["input_ids"], outputs + hidden, axes, rename)


def unet_up_factor(unet) -> int:
    return 2 ** (len(unet.config.block_out_channels) - 1)


def unet_spec(unet, text_embeds_dim: int, batch: int = 2):
    """`text_embeds_dim`: the pooled text embedding's width (text_encoder_2's projection_dim); the rest of
    `projection_class_embeddings_input_dim` is the time ids (6 for a base model, 5 for a refiner)."""
    import torch

    g = torch.Generator().manual_seed(0)
    up = unet_up_factor(unet)
    # latent sizes must be multiples of the up factor (the trace bakes forward_upsample_size=False)
    size = max(up, min(int(unet.config.sample_size), 64) // up * up)
    sample = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    timestep = torch.tensor(999.0, dtype=torch.float32)
    ehs = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    n_ids = (unet.config.projection_class_embeddings_input_dim - text_embeds_dim) // unet.config.addition_time_embed_dim
    if n_ids not in (5, 6):
        sys.exit(f"error: the UNet's added-condition sizes give {n_ids} time ids (expected 6, or 5 for a refiner)")
    text_embeds = torch.randn(batch, text_embeds_dim, generator=g)
    # base: original size, crop, target size; refiner: original size, crop, aesthetic score
    ids = [size * 8.0, size * 8.0, 0.0, 0.0] + ([size * 8.0, size * 8.0] if n_ids == 6 else [6.0])
    time_ids = torch.tensor([ids] * batch)
    orig = unet.forward

    def forward(sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        return orig(
            sample,
            timestep,
            encoder_hidden_states,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            return_dict=False,
        )[0]

    axes = {
        "sample": {0: "batch_size", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
        "text_embeds": {0: "batch_size"},
        "time_ids": {0: "batch_size"},
        "out_sample": {0: "batch_size", 2: "height", 3: "width"},
    }
    return Spec(
        unet,
        forward,
        (sample, timestep, ehs, text_embeds, time_ids),
        ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"],
        ["out_sample"],
        axes,
    )


def controlnet_text_embeds_dim(controlnet) -> int:
    """The pooled text embedding's width a ControlNet expects: its added-condition input minus the 6 time ids (an SDXL
    ControlNet goes with the base model; 1280 for the real ones)."""
    cfg = controlnet.config
    if cfg.addition_embed_type != "text_time":
        sys.exit(f"error: not an SDXL ControlNet (addition_embed_type {cfg.addition_embed_type!r}, not 'text_time')")
    return cfg.projection_class_embeddings_input_dim - SDXL_TIME_IDS * cfg.addition_time_embed_dim


def controlnet_spec(controlnet, text_embeds_dim: int, batch: int = 2):
    """A diffusers SDXL ControlNetModel: the UNet's inputs plus `controlnet_cond` (the control image in [0, 1]) and
    `conditioning_scale` (a float32 scalar like `timestep`) -> the scaled down-block residuals and mid-block residual.
    `text_embeds_dim`: the pooled text embedding's width (text_encoder_2's projection_dim); the rest of
    `projection_class_embeddings_input_dim` must be 6 time ids."""
    import torch

    cfg = controlnet.config
    n_ids = (cfg.projection_class_embeddings_input_dim - text_embeds_dim) // cfg.addition_time_embed_dim
    if cfg.addition_embed_type != "text_time" or n_ids != SDXL_TIME_IDS:
        sys.exit(f"error: the ControlNet's added-condition sizes give {n_ids} time ids (expected 6, an SDXL base's)")
    g = torch.Generator().manual_seed(0)
    up = 2 ** (len(cfg.block_out_channels) - 1)
    # the control image is downsampled by the conditioning embedding's stride-2 convolutions (8, the VAE's factor)
    cond_factor = 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
    # a small non-square latent (multiples of the down factor), so a swapped height / width shows in --check
    h = max(up, 8 // up * up)
    w = h + up
    sample = torch.randn(batch, cfg.in_channels, h, w, generator=g)
    timestep = torch.tensor(601.0, dtype=torch.float32)
    ehs = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g)
    cond = torch.rand(batch, cfg.conditioning_channels, h * cond_factor, w * cond_factor, generator=g)
    scale = torch.tensor(0.75, dtype=torch.float32)
    text_embeds = torch.randn(batch, text_embeds_dim, generator=g)
    H, W = float(h * cond_factor), float(w * cond_factor)
    time_ids = torch.tensor([[H, W, 0.0, 0.0, H, W]] * batch)
    orig = controlnet.forward

    def forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, text_embeds, time_ids):
        down, mid = orig(
            sample,
            timestep,
            encoder_hidden_states,
            controlnet_cond,
            conditioning_scale=conditioning_scale,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            guess_mode=False,
            return_dict=False,
        )
        return (*down, mid)

    args = (sample, timestep, ehs, cond, scale, text_embeds, time_ids)
    with torch.no_grad():
        outs = forward(*args)
    n = len(outs) - 1
    names = [f"down_block_res_sample_{j}" for j in range(n)] + ["mid_block_res_sample"]
    axes = {
        "sample": {0: "batch_size", 2: "height", 3: "width"},
        "encoder_hidden_states": {0: "batch_size", 1: "sequence_length"},
        "controlnet_cond": {0: "batch_size", 2: "image_height", 3: "image_width"},
        "text_embeds": {0: "batch_size"},
        "time_ids": {0: "batch_size"},
    }
    for name, out in zip(names, outs):
        f = h // out.shape[2]  # the residual's downsampling factor: 1, 2, 4, ...
        axes[name] = {0: "batch_size", 2: "height" if f == 1 else f"height/{f}", 3: "width" if f == 1 else f"width/{f}"}
    inputs = ["sample", "timestep", "encoder_hidden_states", "controlnet_cond", "conditioning_scale"]
    inputs += ["text_embeds", "time_ids"]
    return Spec(controlnet, forward, args, inputs, names, axes)


def vae_decoder_spec(vae, batch: int = 2):
    import torch

    latent = torch.randn(batch, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))

    def forward(latent_sample):
        # diffusers AutoencoderKL.decode: post_quant_conv + decoder (the caller divides by scaling_factor first)
        return vae.decode(latent_sample, return_dict=False)[0]

    axes = {
        "latent_sample": {0: "batch_size", 2: "latent_height", 3: "latent_width"},
        "sample": {0: "batch_size", 2: "height", 3: "width"},
    }
    return Spec(vae, forward, (latent,), ["latent_sample"], ["sample"], axes)


def vae_encoder_spec(vae, batch: int = 2):
    import torch

    image = torch.rand(batch, vae.config.in_channels, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def forward(sample):
        # optimum-onnx: encoder + quant_conv, output the posterior parameters (mean || logvar)
        return vae.encode(sample, return_dict=False)[0].parameters

    axes = {
        "sample": {0: "batch_size", 2: "sample_height", 3: "sample_width"},
        "latent_parameters": {0: "batch_size", 2: "latent_height", 3: "latent_width"},
    }
    return Spec(vae, forward, (image,), ["sample"], ["latent_parameters"], axes)


# ---------------------------------------------------------------------------------------------------------------
# export + ONNX post-processing


def rename_initializers(model, rename) -> None:
    """Rename initializers (and every reference to them) with `rename(name) -> name`."""
    mapping = {}
    for init in model.graph.initializer:
        new = rename(init.name)
        if new != init.name:
            mapping[init.name] = new
            init.name = new
    if not mapping:
        return

    def fix_graph(graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
            for attr in node.attribute:
                if attr.g is not None and attr.HasField("g"):
                    fix_graph(attr.g)
                for sub in attr.graphs:
                    fix_graph(sub)
        for vi in list(graph.value_info) + list(graph.input):
            if vi.name in mapping:
                vi.name = mapping[vi.name]

    fix_graph(model.graph)


def strip_noise(model) -> None:
    """Remove doc strings (stack traces) so the bytes only depend on the graph and weights."""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""


def tensor_bytes(model) -> int:
    import numpy as np
    from onnx import helper

    total = 0
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if len(init.dims) else 1
        total += n * np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total


def save_onnx(model, path: Path, external: bool) -> None:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + "_data")
    for stale in (path, data):
        if stale.exists():
            stale.unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=EXTERNAL_SIZE_THRESHOLD,
            convert_attribute=False,
        )
    else:
        onnx.save_model(model, str(path))


def to_fp16(model):
    """Convert a float32 graph to float16 with onnxruntime's converter (inputs/outputs too, except `timestep`).

    Tracing the model in float16 on CPU gives graphs with mixed float/float16 nodes that ORT rejects, so the
    fp32 trace is converted instead. Initializer names are kept, so --no-fold names still match the parameters.
    """
    if tensor_bytes(model) > LARGE_MODEL_BYTES:
        # onnx.shape_inference.infer_shapes cannot serialize a > 2 GB proto: infer through files instead
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "inferred.onnx"
            save_onnx(model, src, external=True)
            onnx.shape_inference.infer_shapes_path(str(src), str(dst))
            model = onnx.load(str(dst), load_external_data=False)
            onnx.external_data_helper.load_external_data_for_model(model, tmp)
        return convert16(model, disable_shape_infer=True)
    return convert16(model)


def convert16(model, disable_shape_infer: bool = False):
    """onnxruntime's float16 conversion of an in-memory graph (< 2 GB), `timestep` (and a ControlNet's
    `conditioning_scale`) kept float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    keep = [i.name for i in model.graph.input if i.name in FLOAT32_INPUTS]
    model = convert_float_to_float16(model, keep_io_types=keep, disable_shape_infer=disable_shape_infer)
    topological_sort(model.graph)  # the converter appends the input Cast nodes at the end
    return model


def topological_sort(graph) -> None:
    """Stable topological sort of graph.node (keeps the original order where it is already valid)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise RuntimeError("graph has a cycle or a missing input")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)


def trace_graph(spec: Spec, fold: bool, custom_opsets: dict[str, int] | None = None, export_params: bool = True):
    """Trace `spec` with the TorchScript exporter; returns the float32 ModelProto with diffusers' names.
    Without `export_params` the parameters are graph inputs named after their state-dict keys (no rename applied;
    onnx/weightless.py)."""
    import onnx
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        spec.module.forward = spec.forward
        try:
            with torch.no_grad():
                torch.onnx.export(
                    spec.module,
                    spec.args,
                    str(tmp_file),
                    input_names=spec.input_names,
                    output_names=spec.output_names,
                    dynamic_axes=spec.dynamic_axes,
                    opset_version=OPSET,
                    do_constant_folding=fold,
                    custom_opsets=custom_opsets,
                    export_params=export_params,
                    dynamo=False,
                )
        finally:
            del spec.module.forward  # back to the class's forward
        model = onnx.load(str(tmp_file), load_external_data=True)
    if spec.rename is not None and export_params:
        rename_initializers(model, spec.rename)
    return model


def trace_fused_attention(spec: Spec, fold: bool, trace=trace_graph):
    """`spec` (a UNet or ControlNet) with its module's attention cores as com.microsoft MultiHeadAttention nodes
    (onnx/fused_attention.py), traced by `trace(spec, fold, custom_opsets)`."""
    from fused_attention import DOMAIN, FusedAttnProcessor

    module = spec.module
    saved = module.attn_processors
    module.set_attn_processor(FusedAttnProcessor())
    try:
        return trace(spec, fold, custom_opsets={DOMAIN: 1})
    finally:
        module.set_attn_processor(saved)


def trace_unet_fused_attention(pipe, fold: bool, trace=trace_graph):
    """The UNet of `pipe` with its attention cores as com.microsoft MultiHeadAttention nodes, traced by
    `trace(spec, fold, custom_opsets)`."""
    return trace_fused_attention(component_spec(pipe, "unet", None), fold, trace)


def trace_unet_for_fusion(pipe):
    """The UNet of `pipe` traced the way onnxruntime's fusions expect it, as onnxruntime's own stable-diffusion demo exports
    it: constant folding (weights as initializers, not behind Transpose/Unsqueeze nodes) and diffusers' classic
    attention processor instead of scaled_dot_product_attention (whose trace no attention fusion matches)."""
    from diffusers.models.attention_processor import AttnProcessor

    unet = pipe.unet
    saved = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    try:
        return trace_graph(component_spec(pipe, "unet", None), fold=True)
    finally:
        unet.set_attn_processor(saved)


def ort_optimize_unet(model, fp16: bool):
    """onnxruntime's stable-diffusion UNet fusions, as its optimize_pipeline.py applies them (before fp16
    conversion): fused multi-head attention (packed QKV/KV in fp16), GroupNorm(+SiLU) in NHWC, BiasSplitGelu,
    BiasAdd; then the fp16 conversion through onnxruntime's OnnxModel, whose symbolic shape inference knows the fused
    (com.microsoft) operators. `timestep` stays float32 as in every fp16 export here.

    The fused graph runs only on the CUDA execution provider (GroupNorm, BiasSplitGelu and BiasAdd have no CPU
    kernels), and packed QKV weights are new initializers, so LoRA keys no longer find their targets in it.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    options = FusionOptions("unet")
    options.enable_packed_kv = fp16 and options.enable_packed_kv
    options.enable_packed_qkv = fp16 and options.enable_packed_qkv
    optimized = optimize_by_fusion(model, model_type="unet", num_heads=0, hidden_size=0, optimization_options=options)
    print(f"    onnxruntime fusions: {optimized.get_fused_operator_statistics()}", flush=True)
    fused = optimized.model
    if not any(o.domain == "com.microsoft" for o in fused.opset_import):
        fused.opset_import.add(domain="com.microsoft", version=1)
    if fp16:
        keep = [i.name for i in fused.graph.input if i.name == "timestep"]
        optimized.convert_float_to_float16(keep_io_types=keep)
        topological_sort(optimized.model.graph)
    return optimized.model


def finish_graph(model, out_file: Path, external: bool | None, fp16: bool = False, ort_optimize: bool = False):
    """Optionally fuse (UNet) and convert to float16, then save. external=None: auto (> 2 GB). Consumes `model`."""
    import onnx

    if ort_optimize:
        model = ort_optimize_unet(model, fp16)
    elif fp16:
        model = to_fp16(model)
    strip_noise(model)
    if external is None:
        external = tensor_bytes(model) > LARGE_MODEL_BYTES
    if not external:
        onnx.checker.check_model(model)
    save_onnx(model, out_file, external)
    if external:
        onnx.checker.check_model(str(out_file))


def export_graph(spec: Spec, out_file: Path, fold: bool, external: bool | None, fp16: bool = False) -> None:
    """Trace `spec`, post-process and save it. external=None: auto (> 2 GB)."""
    finish_graph(trace_graph(spec, fold), out_file, external, fp16)


# ---------------------------------------------------------------------------------------------------------------
# non-graph files


def copy_tokenizer(pipe, src: Path | None, name: str, out: Path, with_json: bool) -> None:
    """Write out/<name>/: copied from the diffusers folder when it has vocab.json + merges.txt, else rebuilt from
    the loaded tokenizer (single-file input, or a folder with only tokenizer.json)."""
    import json

    dst = out / name
    if dst.exists():
        shutil.rmtree(dst)
    src_dir = src / name if src is not None else None
    if src_dir is not None and (src_dir / "vocab.json").exists() and (src_dir / "merges.txt").exists():
        dst.mkdir(parents=True)
        for f in sorted(src_dir.iterdir()):
            if f.is_file() and (with_json or f.name != "tokenizer.json"):
                shutil.copyfile(f, dst / f.name)
        if with_json and not (dst / "tokenizer.json").exists():
            from transformers import CLIPTokenizer

            text = CLIPTokenizer.from_pretrained(str(dst)).backend_tokenizer.to_str(pretty=True)
            c.write_bytes_if_changed(dst / "tokenizer.json", (text + "\n").encode("utf-8"))
        return
    tok = getattr(pipe, name)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        sys.exit(f"error: {name} is not a byte-level BPE (CLIP) tokenizer")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    c.write_tokenizer_folder(dst, model["vocab"], merges, str(tok.pad_token), with_json)


def drop_name_or_path(path: Path) -> None:
    """Remove `_name_or_path` from the JSON config at `path`, if it has one (the folder or file a model was loaded
    from: diffusers keeps it in a loaded model's config and save_pretrained writes it, so a machine path would end up
    in the export and its bytes would depend on where the source lay). A file without it is left as it is; one with
    it is rewritten in diffusers' own format (indent 2, sorted keys, trailing newline) minus that key."""
    import json

    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config, dict) and "_name_or_path" in config:
        del config["_name_or_path"]
        c.write_json(path, dict(sorted(config.items())))


def copy_config(src: Path, dst: Path) -> None:
    """Copy a config file byte for byte, less `_name_or_path` (drop_name_or_path)."""
    shutil.copyfile(src, dst)
    drop_name_or_path(dst)


def write_configs(pipe, src: Path | None, out: Path) -> None:
    if src is not None and src.is_dir():
        copy_config(src / "model_index.json", out / "model_index.json")
        (out / "scheduler").mkdir(exist_ok=True)
        copy_config(src / "scheduler" / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")
    else:
        pipe.save_config(str(out))
        pipe.scheduler.save_config(str(out / "scheduler"))
        drop_name_or_path(out / "model_index.json")
        drop_name_or_path(out / "scheduler" / "scheduler_config.json")


def write_component_config(pipe, component: str, src: Path | None, out: Path) -> None:
    """config.json next to each graph: copied from the diffusers folder, else written from the model config; either
    way without `_name_or_path`."""
    dst = out / component
    dst.mkdir(parents=True, exist_ok=True)
    source_dir = {"vae_decoder": "vae", "vae_encoder": "vae"}.get(component, component)
    if src is not None and (src / source_dir / "config.json").exists():
        copy_config(src / source_dir / "config.json", dst / "config.json")
        return
    model = getattr(pipe, source_dir)
    if component.startswith("text_encoder"):
        config = model.config.to_diff_dict()
    else:
        import diffusers

        config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
        config.update({"_class_name": type(model).__name__, "_diffusers_version": diffusers.__version__})
    config = {k: v for k, v in config.items() if k != "_name_or_path"}
    c.write_json(dst / "config.json", dict(sorted(config.items())))


def write_controlnet_config(controlnet, src: Path | None, out: Path) -> None:
    """out/config.json: the ControlNet folder's config.json, copied (less `_name_or_path`), else written from the
    model's config."""
    if src is not None and (src / "config.json").is_file():
        copy_config(src / "config.json", out / "config.json")
        return
    import diffusers

    config = {k: v for k, v in dict(controlnet.config).items() if not k.startswith("_")}
    config.update({"_class_name": type(controlnet).__name__, "_diffusers_version": diffusers.__version__})
    c.write_json(out / "config.json", dict(sorted(config.items())))


# ---------------------------------------------------------------------------------------------------------------
# check: ORT vs torch on the example inputs


def check_graph(spec: Spec, out_file: Path) -> float:
    import numpy as np
    import onnxruntime as ort
    import torch

    spec.module.forward = spec.forward
    try:
        with torch.no_grad():
            want = spec.module(*spec.args)
    finally:
        del spec.module.forward
    if isinstance(want, torch.Tensor):
        want = (want,)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(out_file), opts, providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()}
    feeds = {}
    for n, a in zip(spec.input_names, spec.args):
        x = a.numpy()
        feeds[n] = x.astype(np.float16) if types[n] == "tensor(float16)" else x
    got = sess.run(spec.output_names, feeds)
    return max(float(np.abs(g.astype(np.float64) - w.double().numpy()).max()) for g, w in zip(got, want))


# ---------------------------------------------------------------------------------------------------------------


def component_spec(pipe, component: str, ids_dtype) -> Spec:
    """The Spec that exports `component` of `pipe`."""
    if component == "text_encoder":
        return text_encoder_spec(pipe.text_encoder, False, ids_dtype)
    if component == "text_encoder_2":
        return text_encoder_spec(pipe.text_encoder_2, True, ids_dtype)
    if component == "unet":
        return unet_spec(pipe.unet, pipe.text_encoder_2.config.projection_dim)
    if component == "vae_decoder":
        return vae_decoder_spec(pipe.vae)
    if component == "vae_encoder":
        return vae_encoder_spec(pipe.vae)
    raise ValueError(component)


def export(
    src: Path,
    out: Path,
    fp16: bool = False,
    fold: bool = False,
    external: set[str] | None = None,
    int32_ids: bool = False,
    tokenizer_json: bool = True,
    components: tuple[str, ...] = COMPONENTS,
    check: bool = False,
    config: str | None = None,
    local_files_only: bool = False,
    vae_fp32: bool = False,
    pipe=None,
    ort_optimize: bool = False,
    fused_attention: bool = False,
) -> dict[str, float]:
    """Export `src` into `out`. Returns {component: max |ORT - torch|} when `check`."""
    import torch

    external = external or set()
    if pipe is None:
        pipe = load_pipeline(src, config, local_files_only)
    ids_dtype = torch.int32 if int32_ids else torch.int64
    out.mkdir(parents=True, exist_ok=True)
    write_configs(pipe, src if src.is_dir() else None, out)
    for name in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, name, None) is None:  # a refiner has no first tokenizer
            continue
        copy_tokenizer(pipe, src if src.is_dir() else None, name, out, tokenizer_json)

    results = {}
    for component in components:
        spec = component_spec(pipe, component, ids_dtype)
        out_file = out / component / "model.onnx"
        ext = True if component in external else None
        half = fp16 and not (vae_fp32 and component.startswith("vae"))
        if ort_optimize and component == "unet":
            finish_graph(trace_unet_for_fusion(pipe), out_file, ext, half, ort_optimize=True)
        elif fused_attention and component == "unet":
            finish_graph(trace_unet_fused_attention(pipe, fold), out_file, ext, half)
        else:
            export_graph(spec, out_file, fold, ext, half)
        write_component_config(pipe, component, src if src.is_dir() else None, out)
        if check:
            results[component] = check_graph(spec, out_file)
            print(f"  {component}: max |ORT - torch| = {results[component]:.3g}", flush=True)
        else:
            print(f"  {component}: {out_file}", flush=True)
    return results


def export_controlnet(
    src: Path | None,
    out: Path,
    fp16: bool = False,
    fold: bool = False,
    external: bool | None = None,
    check: bool = False,
    fused_attention: bool = False,
    controlnet=None,
) -> float | None:
    """Export a diffusers SDXL ControlNetModel (the folder `src`, or the loaded `controlnet`) as out/model.onnx +
    out/config.json. external=None: external data only over 2 GB. Returns max |ORT - torch| when `check`."""
    if controlnet is None:
        controlnet = load_controlnet(src)
    spec = controlnet_spec(controlnet, controlnet_text_embeds_dim(controlnet))
    out.mkdir(parents=True, exist_ok=True)
    out_file = out / "model.onnx"
    model = trace_fused_attention(spec, fold) if fused_attention else trace_graph(spec, fold)
    finish_graph(model, out_file, external, fp16)
    write_controlnet_config(controlnet, src, out)
    if not check:
        print(f"  controlnet: {out_file}", flush=True)
        return None
    diff = check_graph(spec, out_file)
    print(f"  controlnet: max |ORT - torch| = {diff:.3g}", flush=True)
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="diffusers SDXL folder or single-file .safetensors/.ckpt checkpoint")
    ap.add_argument("out", type=Path, help="output folder (optimum layout)")
    ap.add_argument(
        "--controlnet",
        action="store_true",
        help="SRC is a diffusers SDXL ControlNetModel folder: write OUT/model.onnx + OUT/config.json",
    )
    ap.add_argument(
        "--fp16", action="store_true", help="float16 weights and float inputs/outputs (timestep stays float32)"
    )
    ap.add_argument(
        "--vae-fp32",
        action="store_true",
        help="with --fp16: keep the VAE in float32 (the SDXL 1.0 VAE overflows in fp16)",
    )
    fold = ap.add_mutually_exclusive_group()
    fold.add_argument("--fold", dest="fold", action="store_true", help="constant folding (optimum's default)")
    fold.add_argument(
        "--no-fold",
        dest="fold",
        action="store_false",
        help="no constant folding: initializers keep parameter names (default)",
    )
    ap.set_defaults(fold=False)
    ap.add_argument(
        "--external-data",
        default="",
        metavar="COMPONENTS",
        help="comma-separated graphs to save as model.onnx + model.onnx_data (automatic for graphs over 2 GB)",
    )
    ap.add_argument("--int32-input-ids", action="store_true", help="int32 input_ids (like old diffusers exports)")
    ap.add_argument(
        "--no-tokenizer-json",
        action="store_true",
        help="tokenizer folders without tokenizer.json (vocab.json + merges.txt)",
    )
    ap.add_argument("--components", help="comma-separated subset of " + ",".join(COMPONENTS) + " (default: all)")
    ap.add_argument("--config", help="single-file input only: diffusers folder (or repo id) with the pipeline configs")
    ap.add_argument("--local-files-only", action="store_true", help="single-file input only: never download configs")
    ap.add_argument("--check", action="store_true", help="compare each graph with torch in onnxruntime")
    ap.add_argument(
        "--ort-optimize",
        action="store_true",
        help="trace the UNet for onnxruntime's stable-diffusion fusions (constant folding, classic attention) and "
        "fuse it: CUDA execution provider only; LoRA keys do not reach packed QKV weights",
    )
    ap.add_argument(
        "--fused-attention",
        action="store_true",
        help="UNet attention cores as com.microsoft MultiHeadAttention nodes (CPU and CUDA execution providers; "
        "parameter names unchanged, so LoRA merging works)",
    )
    args = ap.parse_args()

    external = {s for s in args.external_data.split(",") if s}
    if args.controlnet:
        pipeline_only = {
            "--vae-fp32": args.vae_fp32,
            "--int32-input-ids": args.int32_input_ids,
            "--no-tokenizer-json": args.no_tokenizer_json,
            "--components": args.components is not None,
            "--config": args.config is not None,
            "--local-files-only": args.local_files_only,
            "--ort-optimize": args.ort_optimize,
        }
        bad = [k for k, v in pipeline_only.items() if v]
        if bad:
            sys.exit(f"error: {', '.join(bad)} do not apply to --controlnet")
        if external - {"controlnet"}:
            sys.exit("error: with --controlnet, --external-data takes only 'controlnet'")
    components = tuple(s for s in (args.components or ",".join(COMPONENTS)).split(",") if s)
    for s in (set() if args.controlnet else external) | set(components):
        if s not in COMPONENTS:
            sys.exit(f"error: unknown component {s!r} (expected one of {', '.join(COMPONENTS)})")
    if args.vae_fp32 and not args.fp16:
        sys.exit("error: --vae-fp32 only makes sense with --fp16")
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    print(f"exporting {args.src} -> {args.out}", flush=True)
    if args.controlnet:
        export_controlnet(
            args.src,
            args.out,
            fp16=args.fp16,
            fold=args.fold,
            external=True if external else None,
            check=args.check,
            fused_attention=args.fused_attention,
        )
        return
    export(
        args.src,
        args.out,
        fp16=args.fp16,
        fold=args.fold,
        external=external,
        int32_ids=args.int32_input_ids,
        tokenizer_json=not args.no_tokenizer_json,
        components=components,
        check=args.check,
        config=args.config,
        local_files_only=args.local_files_only,
        vae_fp32=args.vae_fp32,
        ort_optimize=args.ort_optimize,
        fused_attention=args.fused_attention,
    )


if __name__ == "__main__":
    main()
