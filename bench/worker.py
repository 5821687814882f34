"""One benchmark contender in a long-lived process, driven by bench/run.py over stdin/stdout (JSON lines).

    python worker.py sdxlrt    --model-dir DIR --lib target/release/libsdxlrt.so --ort LIBONNXRUNTIME
    python worker.py optimum   --model-dir DIR          (venv-opt: optimum-onnx ORTStableDiffusionXLPipeline)
    python worker.py diffusers --model-dir DIR          (venv-onnx: diffusers StableDiffusionXLPipeline, PyTorch CPU)
    ... --controlnet JSON   every image with one ControlNet: {"name": folder under models_root/controlnet/ (sdxlrt),
                            "diffusers_dir": its diffusers ControlNetModel folder (diffusers), "image": control image
                            file, "scale": conditioning scale}. sdxlrt: the request's data.controlnet; diffusers:
                            StableDiffusionXLControlNetPipeline from the base pipeline's components + the ControlNet.

Commands (one JSON object per line on stdin), replies on stdout as lines starting with REPLY_PREFIX:
    {"cmd": "load"}                      -> {"load_s", "rss_kib", ...}   engine/pipeline creation until ready to run
    {"cmd": "run", "save": PATH|null}    -> {"wall_s", "stages": {...}, "rss_kib", "hwm_kib"}; saves the image
                                            (uint8 HWC, and float32 HWC in [0,1] where the contender has it) to
                                            PATH.u8.npy / PATH.f32.npy
    {"cmd": "quit"}                      -> {"hwm_kib"} and exit
The first line the worker prints is {"ready": true, "import_s": ...} once its imports are done.
Only one worker computes at any moment (the driver waits for each reply), so the contenders never share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
REPLY_PREFIX = "@@BENCH "

# The fixed generation parameters (run.py passes them; these are the benchmark's values).
PROMPT = "a photo of a cat"
SEED = 0
STEPS = 8
GUIDANCE = 5.0
SIZE = 512
# LoRAs of every sdxlrt request: [{"name": ..., "weight": ...}] (bench/lora_fullsize.py)
LORAS: list[dict] = []
# the ControlNet of every image (--controlnet), or None
CONTROLNET: dict | None = None


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reply(obj: dict) -> None:
    obj.setdefault("rss_kib", proc_status_kib("VmRSS"))
    obj.setdefault("hwm_kib", proc_status_kib("VmHWM"))
    sys.stdout.write(REPLY_PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def to_u8(image_f32):
    """diffusers' numpy_to_pil: (x * 255).round().astype(uint8) on the [0,1] float image."""
    import numpy as np

    return (image_f32 * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# (a) sdxlrt through the C ABI


class Sdxlrt:
    def __init__(self, args):
        import ctypes as C

        self.C = C

        class Image(C.Structure):
            _fields_ = [
                ("width", C.c_uint32),
                ("height", C.c_uint32),
                ("stride", C.c_uint32),
                ("channels", C.c_uint32),
                ("seed", C.c_uint64),
                ("data", C.POINTER(C.c_uint8)),
            ]

        class Batch(C.Structure):
            _fields_ = [("count", C.c_size_t), ("images", C.POINTER(Image))]

        self.Batch = Batch
        lib = C.CDLL(os.path.abspath(args.lib))
        lib.sdxl_version.restype = C.c_char_p
        lib.sdxl_last_error.restype = C.c_char_p
        lib.sdxl_engine_create.argtypes = [C.c_char_p, C.POINTER(C.c_void_p)]
        lib.sdxl_engine_create.restype = C.c_uint32
        lib.sdxl_engine_free.argtypes = [C.c_void_p]
        lib.sdxl_engine_free.restype = None
        lib.sdxl_generate.argtypes = [C.c_void_p, C.c_char_p, C.c_void_p, C.c_void_p, C.POINTER(C.c_void_p)]
        lib.sdxl_generate.restype = C.c_uint32
        lib.sdxl_generate_images.argtypes = [
            C.c_void_p,
            C.c_char_p,
            C.c_void_p,
            C.c_void_p,
            C.POINTER(C.c_void_p),
            C.POINTER(C.POINTER(Batch)),
        ]
        lib.sdxl_generate_images.restype = C.c_uint32
        lib.sdxl_string_free.argtypes = [C.c_void_p]
        lib.sdxl_string_free.restype = None
        lib.sdxl_image_batch_free.argtypes = [C.POINTER(Batch)]
        lib.sdxl_image_batch_free.restype = None
        self.lib = lib
        self.models_root = os.path.dirname(os.path.abspath(args.model_dir))
        self.model = os.path.basename(os.path.abspath(args.model_dir))
        self.ort = os.path.abspath(args.ort) if args.ort else None
        self.extra_options = json.loads(args.engine_options)
        self.engine = None
        self.n = 0

    def _call(self, request: dict) -> dict:
        C = self.C
        out = C.c_void_p()
        status = self.lib.sdxl_generate(self.engine, json.dumps(request).encode(), None, None, C.byref(out))
        text = C.string_at(out.value).decode() if out.value else "null"
        if out.value:
            self.lib.sdxl_string_free(out)
        if status != 0:
            raise RuntimeError(f"sdxl_generate status {status}: {self.lib.sdxl_last_error()!r} {text}")
        return json.loads(text)

    def load(self) -> dict:
        C = self.C
        options = {"models_root": self.models_root, "default_model": self.model}
        if self.ort:
            options["onnxruntime_path"] = self.ort
        options.update(self.extra_options)
        t0 = time.perf_counter()
        engine = C.c_void_p()
        status = self.lib.sdxl_engine_create(json.dumps(options).encode(), C.byref(engine))
        if status != 0:
            raise RuntimeError(f"sdxl_engine_create status {status}: {self.lib.sdxl_last_error()!r}")
        self.engine = engine
        t1 = time.perf_counter()
        extra = {}
        if CONTROLNET is None:
            pre = self._call(
                {"message_type": "preload_model", "request_id": "preload", "data": {"model_name": self.model}}
            )
            t2 = time.perf_counter()
            preload_s = t2 - t1
        else:
            # preload_model loads the plain model; a ControlNet request needs the model's ControlNet variant (a UNet
            # with residual inputs) and the ControlNet's session, which only a ControlNet request loads: one 1-step
            # 64x64 request with the same ControlNet (the control image resized), whose own model_load_time (sdxlrt's
            # measure of loading, not computing) counts as preload
            pre = self._call(self._request(steps=1, size=64, request_id="prime"))
            t2 = time.perf_counter()
            preload_s = pre["data"]["processing_metrics"]["model_load_time"]
            extra = {"prime_wall_s": t2 - t1, "prime_metrics": pre["data"]["processing_metrics"]}
            pre = {"data": {"primed": True}}
        status_msg = self._call({"message_type": "status", "request_id": "status"})
        return {
            "load_s": (t1 - t0) + preload_s,
            "engine_create_s": t1 - t0,
            "preload_s": preload_s,
            **extra,
            "preload_reply": pre.get("data"),
            "status": status_msg.get("data"),
            "version": self.lib.sdxl_version().decode(),
            "engine_options": options,
        }

    def _request(self, steps: int, size: int, request_id: str) -> dict:
        request = {
            "message_type": "inference_request",
            "request_id": request_id,
            "data": {
                "prompt": PROMPT,
                "models": {"base": self.model},
                "hyperparameters": {"num_inference_steps": steps, "guidance_scale": GUIDANCE, "seed": SEED},
                "dimensions": {"width": size, "height": size},
                "scheduler": "EulerDiscreteScheduler",
            },
        }
        if LORAS:
            request["data"]["lora"] = {"enabled": True, "models": LORAS}
        if CONTROLNET is not None:
            unit = {
                "type": "canny",
                "model_path": CONTROLNET["name"],
                "control_image": os.path.abspath(CONTROLNET["image"]),
                "conditioning_scale": CONTROLNET["scale"],
            }
            request["data"]["controlnet"] = {"enabled": True, "models": [unit]}
        return request

    def run(self, save: str | None) -> dict:
        import numpy as np

        C = self.C
        self.n += 1
        request = self._request(STEPS, SIZE, f"bench-{self.n}")
        body = json.dumps(request).encode()
        out = C.c_void_p()
        batch = C.POINTER(self.Batch)()
        t0 = time.perf_counter()
        status = self.lib.sdxl_generate_images(self.engine, body, None, None, C.byref(out), C.byref(batch))
        wall = time.perf_counter() - t0
        text = C.string_at(out.value).decode() if out.value else "null"
        if out.value:
            self.lib.sdxl_string_free(out)
        if status != 0:
            raise RuntimeError(f"sdxl_generate_images status {status}: {self.lib.sdxl_last_error()!r} {text}")
        resp = json.loads(text)
        img = batch.contents.images[0]
        h, w, stride = img.height, img.width, img.stride
        raw = np.ctypeslib.as_array(img.data, shape=(h * stride,)).copy()
        self.lib.sdxl_image_batch_free(batch)
        u8 = raw.reshape(h, stride)[:, : w * 3].reshape(h, w, 3)
        if save:
            np.save(save + ".u8.npy", u8)
        m = resp["data"]["processing_metrics"]
        image_data = resp["data"]["generated_images"][0].get("image_data")
        return {
            "wall_s": wall,
            "stages": {
                "text_encoding": m["text_encoding_time"],
                "denoising": m["denoising_time"],
                "vae_decode": m["vae_decode_time"],
                "encode_save": m["encode_save_time"],
                "inference": m["inference_time"],
                "total_reported": m["total_time"],
                "model_load": m["model_load_time"],
                "onnxruntime": m.get("onnxruntime_time"),
            },
            "unet_evaluations": m["unet_evaluations"],
            "controlnets": resp["data"]["generated_images"][0]["metadata"].get("controlnets"),
            "peak_memory_reported": m.get("peak_memory"),
            "image_data_chars": len(image_data) if image_data else 0,
            "warnings": resp.get("warnings"),
        }


# ---------------------------------------------------------------------------------------------------------------
# (b) optimum-onnx and (c) diffusers: the same diffusers pipeline call, timed per component


class TimedSession:
    """Proxy for an onnxruntime.InferenceSession that adds the time spent in run() to a counter."""

    def __init__(self, session, name: str, acc: dict):
        self._session = session
        self._name = name
        self._acc = acc

    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._acc[self._name] = self._acc.get(self._name, 0.0) + time.perf_counter() - t0
            self._acc[self._name + "_calls"] = self._acc.get(self._name + "_calls", 0) + 1

    def __getattr__(self, item):
        return getattr(self._session, item)


def timed(fn, name: str, acc: dict):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
            acc[name + "_calls"] = acc.get(name + "_calls", 0) + 1

    return wrapper


def pipeline_image(pipe, steps: int | None = None, **kwargs):
    """One image from a diffusers-style pipeline with the fixed prompt, seed, guidance and size (STEPS unless
    `steps`), as float32 HWC in [0, 1]. `kwargs` go to the pipeline call."""
    import numpy as np
    import torch

    out = pipe(
        prompt=PROMPT,
        num_inference_steps=steps or STEPS,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="np",
        **kwargs,
    )
    return np.asarray(out.images[0], dtype=np.float32)


class DiffusersLike:
    """Common call for optimum's ORT pipeline and diffusers' torch pipeline (both diffusers pipelines)."""

    pipe = None
    acc: dict
    call_kwargs: dict = {}

    def run(self, save: str | None) -> dict:
        import numpy as np

        self.acc.clear()
        t0 = time.perf_counter()
        f32 = pipeline_image(self.pipe, **self.call_kwargs)
        wall = time.perf_counter() - t0
        if save:
            np.save(save + ".f32.npy", f32)
            np.save(save + ".u8.npy", to_u8(f32))
        stages = {k: v for k, v in self.acc.items() if not k.endswith("_calls")}
        calls = {k[: -len("_calls")]: v for k, v in self.acc.items() if k.endswith("_calls")}
        return {"wall_s": wall, "stages": stages, "calls": calls}


class Optimum(DiffusersLike):
    def __init__(self, args):
        import onnxruntime  # noqa: F401
        import optimum.onnxruntime  # noqa: F401

        self.model_dir = args.model_dir
        self.acc = {}

    def load(self) -> dict:
        import onnxruntime
        import optimum.version
        from optimum.onnxruntime import ORTStableDiffusionXLPipeline

        t0 = time.perf_counter()
        pipe = ORTStableDiffusionXLPipeline.from_pretrained(self.model_dir, provider="CPUExecutionProvider")
        load = time.perf_counter() - t0
        pipe.set_progress_bar_config(disable=True)
        for name in ("text_encoder", "text_encoder_2", "unet", "vae_decoder"):
            part = getattr(pipe, name)
            part.session = TimedSession(part.session, name, self.acc)
        self.pipe = pipe
        return {
            "load_s": load,
            "ort_version": onnxruntime.__version__,
            "optimum_version": optimum.version.__version__,
            "watermarker": getattr(pipe, "watermark", None) is not None,
        }


class Diffusers(DiffusersLike):
    def __init__(self, args):
        import diffusers  # noqa: F401
        import torch  # noqa: F401

        self.model_dir = args.model_dir
        self.acc = {}

    def load(self) -> dict:
        import diffusers
        import torch
        from diffusers import StableDiffusionXLPipeline

        t0 = time.perf_counter()
        pipe = StableDiffusionXLPipeline.from_pretrained(self.model_dir, torch_dtype=torch.float32)
        extra = {}
        if CONTROLNET is not None:
            from diffusers import ControlNetModel
            from PIL import Image

            controlnet = ControlNetModel.from_pretrained(CONTROLNET["diffusers_dir"], torch_dtype=torch.float32)
            # the goldens' construction: the base pipeline's components + the ControlNet
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "onnx"))
            from make_controlnet import controlnet_pipeline

            pipe = controlnet_pipeline(pipe, [controlnet])
            with Image.open(CONTROLNET["image"]) as img:
                img.load()
                image = img.convert("RGB")
            # the PIL image, so diffusers' own preprocessing runs (a resize only if the size differs, / 255)
            self.call_kwargs = {"image": image, "controlnet_conditioning_scale": CONTROLNET["scale"]}
            extra["pipeline"] = type(pipe).__name__
        load = time.perf_counter() - t0
        pipe.set_progress_bar_config(disable=True)
        for name in ("text_encoder", "text_encoder_2", "unet") + (("controlnet",) if CONTROLNET is not None else ()):
            module = getattr(pipe, name)
            module.forward = timed(module.forward, name, self.acc)
        pipe.vae.decode = timed(pipe.vae.decode, "vae_decoder", self.acc)
        self.pipe = pipe
        return {
            **extra,
            "load_s": load,
            "torch_version": torch.__version__,
            "diffusers_version": diffusers.__version__,
            "torch_threads": torch.get_num_threads(),
            "attn_processor": type(next(iter(pipe.unet.attn_processors.values()))).__name__,
            "watermarker": getattr(pipe, "watermark", None) is not None,
        }


def main() -> None:
    global PROMPT, SEED, STEPS, GUIDANCE, SIZE, CONTROLNET
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["sdxlrt", "optimum", "diffusers"])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--lib", help="sdxlrt: path of libsdxlrt.so")
    ap.add_argument("--ort", help="sdxlrt: path of libonnxruntime.so (engine option onnxruntime_path)")
    ap.add_argument("--engine-options", default="{}", help="sdxlrt: extra engine options (JSON object)")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--guidance", type=float, default=GUIDANCE)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--controlnet", help="JSON: one ControlNet for every image (see the module docstring)")
    args = ap.parse_args()
    PROMPT, SEED, STEPS, GUIDANCE, SIZE = args.prompt, args.seed, args.steps, args.guidance, args.size
    CONTROLNET = json.loads(args.controlnet) if args.controlnet else None
    if CONTROLNET is not None and args.mode == "optimum":
        ap.error("--controlnet: optimum-onnx has no SDXL ControlNet pipeline")
    worker = {"sdxlrt": Sdxlrt, "optimum": Optimum, "diffusers": Diffusers}[args.mode](args)
    reply({"ready": True, "import_s": time.perf_counter() - T_START, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "load":
                reply(worker.load())
            elif cmd["cmd"] == "run":
                reply(worker.run(cmd.get("save")))
            elif cmd["cmd"] == "quit":
                reply({"bye": True})
                return
            else:
                reply({"error": f"unknown command {cmd['cmd']!r}"})
        except Exception as e:  # report to the driver instead of dying silently
            import traceback

            reply({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})


if __name__ == "__main__":
    main()
