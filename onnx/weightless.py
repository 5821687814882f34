"""Weight-less ONNX exports, filled with weights later (bench/gpu/make_model.py).

A full-size SDXL export spends minutes serializing, converting and writing gigabytes of weights; the graph alone is
a few megabytes. `export_graphs` traces every graph with `export_params=False` (parameters become graph inputs named
after their state-dict keys), turns those inputs into initializers that point into `model.onnx_data` at fixed
offsets, and converts the graph to float16 the same way export_onnx.py does, all without any weight bytes. `fill`
later writes a model's actual weights into `model.onnx_data` at those offsets, by name, in each initializer's own
element type, so the graph runs exactly the weights a PyTorch model holds (torch's own fp16 rounding).

Offsets follow the sorted initializer names, so two exports of the same module (the plain and the fused-attention
UNet) share one data file when their weight sets are equal; `fill` then hard-links it instead of writing it twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import export_onnx as e

DATA_NAME = "model.onnx_data"
ALIGN = 4096  # page-aligned tensors: ONNX Runtime can map them


def params_to_initializers(model, input_names: list[str]) -> None:
    """Graph inputs other than `input_names` (the parameters) become data-less initializers of the same name,
    element type and shape; `assign_offsets` points them into the data file."""
    from onnx import TensorProto

    params = [i for i in model.graph.input if i.name not in input_names]
    for vi in params:
        t = vi.type.tensor_type
        init = model.graph.initializer.add()
        init.name = vi.name
        init.data_type = t.elem_type
        init.dims.extend(d.dim_value for d in t.shape.dim)
        init.data_location = TensorProto.EXTERNAL
    keep = [i for i in model.graph.input if i.name in input_names]
    del model.graph.input[:]
    model.graph.input.extend(keep)


def element_size(data_type: int) -> int:
    import numpy as np
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def assign_offsets(model) -> int:
    """Point every data-less initializer into DATA_NAME (sorted by name, ALIGN-aligned). Returns the file size."""
    from onnx import TensorProto

    external = sorted((i for i in model.graph.initializer if i.data_location == TensorProto.EXTERNAL),
                      key=lambda i: i.name)
    offset = 0
    for init in external:
        n = 1
        for d in init.dims:
            n *= d
        length = n * element_size(init.data_type)
        del init.external_data[:]
        for key, value in (("location", DATA_NAME), ("offset", str(offset)), ("length", str(length))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
        offset += (length + ALIGN - 1) // ALIGN * ALIGN
    return offset


def trace(spec, fold: bool = False, custom_opsets: dict[str, int] | None = None):
    """`spec` traced without its weights; returns a float32 ModelProto with data-less initializers."""
    model = e.trace_graph(spec, fold, custom_opsets, export_params=False)
    params_to_initializers(model, spec.input_names)
    if spec.rename is not None:
        e.rename_initializers(model, spec.rename)
    return model


def convert16(model):
    """export_onnx.convert16 on data-less initializers: the converter only flips their element type, but builds each
    one's value info from its data, so it is told to use the dims instead."""
    from onnx import helper
    from onnxruntime.transformers import float16

    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda t: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    try:
        return e.convert16(model)
    finally:
        float16.make_value_info_from_tensor = original


def finish(model, out_file: Path, fp16: bool) -> int:
    """Convert to float16 like export_onnx.finish_graph (initializers only change type: they hold no data yet),
    assign offsets and save the graph. Returns the size `fill` will give the data file."""
    import onnx

    if fp16:
        model = convert16(model)
    e.strip_noise(model)
    size = assign_offsets(model)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_file))
    return size


def export_graphs(pipe, out: Path, components: tuple[str, ...], fp16: bool, vae_fp32: bool,
                  fused_unet: Path | None = None) -> dict[str, int]:
    """export_onnx.export's folder (configs, tokenizers, graphs) without weights; with `fused_unet`, also the UNet
    with MultiHeadAttention nodes there (fused_unet/unet/model.onnx). Returns {graph file: data bytes}."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    e.write_configs(pipe, None, out)
    for name in ("tokenizer", "tokenizer_2"):
        e.copy_tokenizer(pipe, None, name, out, with_json=False)
    sizes = {}
    for component in components:
        spec = e.component_spec(pipe, component, torch.int64)
        half = fp16 and not (vae_fp32 and component.startswith("vae"))
        out_file = out / component / "model.onnx"
        sizes[str(out_file)] = finish(trace(spec), out_file, half)
        e.write_component_config(pipe, component, None, out)
        print(f"  {component}: {out_file} (weights to fill: {sizes[str(out_file)]} bytes)", flush=True)
    if fused_unet is not None:
        model = e.trace_unet_fused_attention(pipe, False, trace=trace)
        out_file = fused_unet / "unet" / "model.onnx"
        sizes[str(out_file)] = finish(model, out_file, fp16)
        print(f"  fused unet: {out_file}", flush=True)
    return sizes


def layout(model) -> list[tuple[str, int, int, int]]:
    """(name, data type, offset, length) of every initializer stored in DATA_NAME."""
    from onnx import TensorProto

    rows = []
    for init in model.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        ext = {x.key: x.value for x in init.external_data}
        if ext.get("location") != DATA_NAME:
            raise ValueError(f"{init.name}: external data in {ext.get('location')!r}, not {DATA_NAME}")
        rows.append((init.name, init.data_type, int(ext["offset"]), int(ext["length"])))
    return sorted(rows, key=lambda r: r[2])


def fill(model_file: Path, tensors: dict, done: dict | None = None) -> str:
    """Write `tensors` ({initializer name: torch tensor}) into model_file's DATA_NAME, each cast to its
    initializer's element type. Every initializer must find a tensor of its exact shape. `done` ({layout: data
    file}, updated) lets a second graph with the same layout hard-link the file instead. Returns "written"/"linked".
    """
    import numpy as np
    import onnx
    import torch
    from onnx import helper

    model = onnx.load(str(model_file), load_external_data=False)
    rows = layout(model)
    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    data = model_file.with_name(DATA_NAME)
    if data.exists():
        data.unlink()
    key = tuple(rows)
    if done is not None and key in done:
        os.link(done[key], data)
        return "linked"
    missing = [name for name, *_ in rows if name not in tensors]
    if missing:
        raise KeyError(f"{model_file}: no weights for {len(missing)} initializers, e.g. {missing[:3]}")
    with open(data, "wb") as f:
        for name, data_type, offset, length in rows:
            t = tensors[name].detach()
            if tuple(t.shape) != dims[name]:
                raise ValueError(f"{model_file}: {name} has shape {tuple(t.shape)}, the graph wants {dims[name]}")
            np_type = helper.tensor_dtype_to_np_dtype(data_type)
            torch_type = getattr(torch, np.dtype(np_type).name)
            raw = t.to(torch_type).contiguous().cpu().numpy().tobytes()
            if len(raw) != length:
                raise ValueError(f"{model_file}: {name} is {len(raw)} bytes, the graph wants {length}")
            f.seek(offset)
            f.write(raw)
        f.truncate(max((o + n for _, _, o, n in rows), default=0))
    if done is not None:
        done[key] = data
    return "written"
