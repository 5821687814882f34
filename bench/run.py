"""sdxlrt vs optimum-onnx vs diffusers on CPU: same weights, same request, interleaved, identical images.

    eval "$(bench/setup_venvs.sh)"                  # once: venvs (BENCH_PY, BENCH_OPT_PY)
    $BENCH_PY onnx/build_bench.py                   # once: the bench SDXL (~/.cache/sdxlrt/bench, not committed)
    cargo build --release --lib                     # target/release/libsdxlrt.so
    $BENCH_PY bench/run.py                          # the benchmark (~8 min on 2 cores with 3 rounds)
    $BENCH_PY bench/run.py --model tiny --rounds 2  # smoke run on tests/fixtures/tiny-sdxl at 64x64 (~1 min)

Contenders, each in its own long-lived process (bench/worker.py), loaded once:
    sdxlrt     the C ABI (ctypes on libsdxlrt.so): sdxl_engine_create + a preload_model message, then
               sdxl_generate_images. ONNX Runtime = the libonnxruntime.so of the optimum venv's onnxruntime wheel
               (engine option onnxruntime_path), so sdxlrt and optimum run the same ONNX Runtime release, from the
               same wheel, on the same ONNX files.
    optimum    optimum-onnx ORTStableDiffusionXLPipeline.from_pretrained(ONNX folder, CPUExecutionProvider), venv-opt
    diffusers  diffusers StableDiffusionXLPipeline (PyTorch fp32, CPU) on the diffusers folder the ONNX was exported
               from, venv-onnx
Request: "a photo of a cat", no negative prompt, seed 0, 8 Euler steps, guidance 5, 512x512, batch 1.

Sequence: warm the page cache (read every model file); --load-rounds fresh processes per contender, interleaved,
that only load (time to ready, RSS); then one process per contender under /usr/bin/time -v: load, one warm-up image
each, then --rounds rounds of (sdxlrt, optimum, diffusers), 1 s pause before each image. Only one process computes at
any moment. Images: the warm-up images are compared pairwise (uint8 max |diff|, float max |diff| where both have
floats), and every timed image is compared with its contender's warm-up image.

With --controlnet every contender runs the same request with one ControlNet (onnx/build_bench.py --controlnet:
ControlNetModel.from_unet(the bench UNet), random weights; the 512x512 edge image; --controlnet-scale 0.8): sdxlrt
through the request's data.controlnet, diffusers through StableDiffusionXLControlNetPipeline built from the bench
pipeline's components + the ControlNet (optimum-onnx has no SDXL ControlNet pipeline). Two more contenders exist then,
sdxlrt_plain and diffusers_plain: the same library / pipeline without the ControlNet, in the same interleaved rounds,
so the summary shows what the ControlNet costs per step in each.

    $BENCH_PY onnx/build_bench.py --controlnet-only        # once, after the bench model (~35 s)
    $BENCH_PY bench/run.py --controlnet --contenders sdxlrt,sdxlrt_plain,diffusers,diffusers_plain

Results: bench/runs/<date>-<host>[-<label>]/ (results.json, summary.md, env.txt, time_<contender>.txt); images
(.npy) under ~/.cache/sdxlrt/bench/images/<same name>/ (not committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOME_CACHE = Path.home() / ".cache" / "sdxlrt"
BENCH_ROOT = Path(os.environ.get("SDXLRT_BENCH_DIR", str(HOME_CACHE / "bench")))
VENV_ONNX = Path(os.environ.get("SDXLRT_ONNX_VENV", str(HOME_CACHE / "venv-onnx")))
VENV_OPT = Path(os.environ.get("SDXLRT_OPT_VENV", str(HOME_CACHE / "venv-opt")))
REPLY_PREFIX = "@@BENCH "
CONTENDERS = ("sdxlrt", "optimum", "diffusers")
# with --controlnet: the same contenders without the ControlNet, for its cost
PLAIN = ("sdxlrt_plain", "diffusers_plain")

MODELS = {
    # name: (ONNX folder, diffusers folder, default size)
    "bench": (BENCH_ROOT / "models" / "bench-sdxl", BENCH_ROOT / "bench-sdxl-diffusers", 512),
    "tiny": (
        REPO / "tests" / "fixtures" / "tiny-sdxl",
        Path(os.environ.get("SDXLRT_WORK", str(HOME_CACHE / "work"))) / "tiny-sdxl-diffusers",
        64,
    ),
}
# model -> (ControlNet folder name under <models_root>/controlnet/ for sdxlrt, its diffusers folder, control image)
CONTROLNETS = {
    "bench": (
        "bench-controlnet",
        BENCH_ROOT / "bench-controlnet-diffusers",
        BENCH_ROOT / "bench-controlnet-control.png",
    ),
    "tiny": (
        "tiny-controlnet",
        Path(os.environ.get("SDXLRT_WORK", str(HOME_CACHE / "work"))) / "controlnet-diffusers" / "tiny-controlnet",
        REPO / "tests" / "fixtures" / "controlnet" / "control_64.png",
    ),
}


class Worker:
    """A contender's process; request/reply over its stdin/stdout."""

    def __init__(self, name: str, cmd: list[str], env: dict, log_path: Path, time_file: Path | None):
        self.name = name
        if time_file is not None:
            cmd = ["/usr/bin/time", "-v", "-o", str(time_file)] + cmd
        self.log = open(log_path, "a")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, bufsize=1
        )
        self.ready = self._read()
        self.spawn_to_ready_s = time.perf_counter() - t0

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name}: worker exited (rc {self.proc.wait()}); see {self.log.name}")
            if line.startswith(REPLY_PREFIX):
                reply = json.loads(line[len(REPLY_PREFIX) :])
                if "error" in reply:
                    raise RuntimeError(f"{self.name}: {reply['error']}\n{reply.get('traceback', '')}")
                return reply
            self.log.write(line)  # library prints on stdout go to the log

    def ask(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def quit(self) -> dict:
        reply = self.ask({"cmd": "quit"})
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.log.close()
        return reply


def worker_cmd(name: str, args, onnx_dir: Path, diffusers_dir: Path, ort_lib: str) -> tuple[list[str], dict]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    gen = [
        "--prompt",
        args.prompt,
        "--seed",
        str(args.seed),
        "--steps",
        str(args.steps),
        "--guidance",
        str(args.guidance),
        "--size",
        str(args.size),
    ]
    if args.controlnet and not name.endswith("_plain"):
        gen += ["--controlnet", json.dumps(args.controlnet)]
    script = str(HERE / "worker.py")
    if name.startswith("sdxlrt"):
        py = str(VENV_ONNX / "bin" / "python")  # only numpy + ctypes are used
        extra = ["--engine-options", args.variants[name]] if name in args.variants else []
        cmd = [py, script, "sdxlrt", "--model-dir", str(onnx_dir), "--lib", args.lib, "--ort", ort_lib]
        return cmd + extra + gen, env
    if name == "optimum":
        return [str(VENV_OPT / "bin" / "python"), script, "optimum", "--model-dir", str(onnx_dir)] + gen, env
    return [str(VENV_ONNX / "bin" / "python"), script, "diffusers", "--model-dir", str(diffusers_dir)] + gen, env


def parse_time_v(path: Path) -> dict:
    out = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.strip()
        for key, name in (
            ("Maximum resident set size (kbytes):", "max_rss_kib"),
            ("Elapsed (wall clock) time (h:mm:ss or m:ss):", "elapsed"),
            ("User time (seconds):", "user_s"),
            ("System time (seconds):", "sys_s"),
            ("Major (requiring I/O) page faults:", "major_faults"),
            ("Minor (reclaiming a frame) page faults:", "minor_faults"),
        ):
            if line.startswith(key):
                v = line[len(key) :].strip()
                out[name] = v if name == "elapsed" else float(v) if "." in v else int(v)
    return out


def warm_page_cache(*dirs: Path) -> float:
    t0 = time.perf_counter()
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass
    return time.perf_counter() - t0


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    except Exception as e:  # informational only
        return f"({cmd}: {e})"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def image_diff(a_path: str, b_path: str) -> dict:
    a, b = np.load(a_path + ".u8.npy"), np.load(b_path + ".u8.npy")
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    out = {"u8_max": int(d.max()), "u8_pixels_differing": int((d.max(axis=-1) > 0).sum()), "u8_mean": float(d.mean())}
    fa, fb = a_path + ".f32.npy", b_path + ".f32.npy"
    if os.path.exists(fa) and os.path.exists(fb):
        out["f32_max"] = float(np.abs(np.load(fa).astype(np.float64) - np.load(fb)).max())
    return out


def fmt_s(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="bench")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of (sdxlrt, optimum, diffusers), ≥ 1")
    ap.add_argument("--load-rounds", type=int, default=3, help="fresh-process load measurements per contender")
    ap.add_argument("--contenders", default=",".join(CONTENDERS), help="order within a round (variants included)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra sdxlrt contender with these engine options, e.g. "
        "sdxlrt_arena_all='{\"cpu_memory_arena\": \"all\"}' (NAME must start with sdxlrt_; add it to --contenders "
        "or it is appended)",
    )
    ap.add_argument(
        "--controlnet",
        action="store_true",
        help="every image with the model's ControlNet (bench: onnx/build_bench.py --controlnet); contenders "
        "sdxlrt_plain / diffusers_plain run without it",
    )
    ap.add_argument("--controlnet-scale", type=float, default=0.8, help="its conditioning scale (default 0.8)")
    ap.add_argument("--prompt", default="a photo of a cat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--size", type=int, help="width = height (default 512 for bench, 64 for tiny)")
    ap.add_argument("--lib", default=str(REPO / "target" / "release" / "libsdxlrt.so"))
    ap.add_argument("--lib-source", default="", help="what --lib was built from (recorded, e.g. 'git archive <commit>')")
    ap.add_argument("--ort", help="libonnxruntime for sdxlrt (default: the optimum venv's)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds of idle before each image")
    ap.add_argument("--label", default="", help="suffix of the results folder name")
    ap.add_argument("--out", type=Path, help="results folder (default bench/runs/<date>-<host>[-label])")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1 (the summary compares timed images)")

    onnx_dir, diffusers_dir, default_size = MODELS[args.model]
    args.size = args.size or default_size
    contenders = [c for c in args.contenders.split(",") if c]
    args.variants = {}
    for v in args.variant:
        vname, _, vjson = v.partition("=")
        if not vname.startswith("sdxlrt_") or not isinstance(json.loads(vjson or "null"), dict):
            sys.exit(f"error: --variant {v!r}: expected sdxlrt_NAME=JSON-object")
        args.variants[vname] = vjson
        if vname not in contenders:
            contenders.append(vname)
    for c in contenders:
        if c not in CONTENDERS and c not in args.variants and not (args.controlnet and c in PLAIN):
            sys.exit(f"error: unknown contender {c!r}" + (" (sdxlrt_plain / diffusers_plain need --controlnet)"
                                                          if c in PLAIN else ""))
    for d in (onnx_dir, diffusers_dir):
        if not (d / "model_index.json").exists():
            sys.exit(f"error: {d} is not a model folder (build it: onnx/build_bench.py, or onnx/build_tiny.py)")
    args.controlnet = None if not args.controlnet else dict(
        zip(("name", "diffusers_dir", "image"), map(str, CONTROLNETS[args.model])), scale=args.controlnet_scale
    )
    cn_dirs: list[Path] = []
    if args.controlnet:
        if "optimum" in contenders:
            sys.exit("error: --controlnet: optimum-onnx has no SDXL ControlNet pipeline (leave it out of --contenders)")
        cn_dirs = [onnx_dir.parent / "controlnet" / args.controlnet["name"], Path(args.controlnet["diffusers_dir"])]
        for f in (cn_dirs[0] / "model.onnx", cn_dirs[1] / "config.json", Path(args.controlnet["image"])):
            if not f.exists():
                sys.exit(f"error: {f} missing (build it: onnx/build_bench.py --controlnet-only, or "
                         "onnx/make_controlnet.py)")
    if any(c.startswith("sdxlrt") for c in contenders) and not os.path.exists(args.lib):
        sys.exit(f"error: {args.lib} missing: cargo build --release --lib")
    ort_glob = VENV_OPT / "lib" / "python3*" / "site-packages" / "onnxruntime" / "capi" / "libonnxruntime.so*"
    ort_lib = args.ort or next(iter(sorted(glob.glob(str(ort_glob)))), "")
    if any(c.startswith("sdxlrt") for c in contenders) and not ort_lib:
        sys.exit("error: no libonnxruntime.so in the optimum venv: run bench/setup_venvs.sh, or pass --ort")

    started = dt.datetime.now(dt.timezone.utc)
    host = socket.gethostname()
    name = f"{started:%Y-%m-%d}-{host}" + (f"-{args.label}" if args.label else "")
    out = args.out or HERE / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    img_dir = BENCH_ROOT / "images" / out.name
    img_dir.mkdir(parents=True, exist_ok=True)
    log_path = out / "workers.log"
    command = " ".join([sys.executable, *sys.argv])
    print(f"results -> {out}\nimages  -> {img_dir}", flush=True)

    env_txt = "\n".join(
        [
            f"date: {started.isoformat()}",
            f"command: {command}",
            f"host: {host}  {platform.platform()}",
            f"nproc: {sh('nproc')}",
            "lscpu:\n" + sh("lscpu | grep -E 'Model name|^CPU\\(s\\)|Thread|Core|Socket|MHz|L2|L3|BogoMIPS|Flags' | "
                             "sed -E 's/(Flags:).*/\\1 (avx512f: '$(grep -c avx512f /proc/cpuinfo)' cpus, amx_tile: '"
                             "$(grep -c amx_tile /proc/cpuinfo)' cpus)/'"),
            "memory:\n" + sh("free -m"),
            f"load average at start: {sh('cat /proc/loadavg')}",
            f"git: {sh(f'git -C {REPO} rev-parse --short HEAD')} (dirty files: {sh(f'git -C {REPO} status --porcelain | wc -l')})",
            f"libsdxlrt: {args.lib} (built {sh(f'stat -c %y {args.lib}')}; "
            f"source: {args.lib_source or 'the working tree above'})",
            f"onnxruntime for sdxlrt: {ort_lib}",
            "venv-onnx: " + sh(f"{VENV_ONNX}/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|diffusers|transformers|onnxruntime|numpy) '"),
            f"controlnet: {json.dumps(args.controlnet)}",
            "venv-opt: " + sh(f"{VENV_OPT}/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|diffusers|transformers|onnxruntime|optimum|optimum-onnx|numpy) '"),
        ]
    )
    (out / "env.txt").write_text(env_txt + "\n")
    (out / "command.txt").write_text(command + "\n")

    results: dict = {
        "started": started.isoformat(),
        "command": command,
        "model": args.model,
        "onnx_dir": str(onnx_dir),
        "diffusers_dir": str(diffusers_dir),
        "request": {"prompt": args.prompt, "negative_prompt": None, "seed": args.seed, "steps": args.steps,
                    "guidance": args.guidance, "width": args.size, "height": args.size, "scheduler": "EulerDiscrete",
                    "controlnet": args.controlnet},
        "contenders": contenders,
        "variants": args.variants,
        "rounds": args.rounds,
        "ort_lib_for_sdxlrt": ort_lib,
        "lib": args.lib,
        "lib_source": args.lib_source or "working tree",
    }
    results["page_cache_warm_s"] = warm_page_cache(onnx_dir, diffusers_dir, *cn_dirs)

    # 1. load only, in fresh processes, interleaved
    loads: dict = {c: [] for c in contenders}
    for r in range(args.load_rounds):
        for c in contenders:
            cmd, env = worker_cmd(c, args, onnx_dir, diffusers_dir, ort_lib)
            w = Worker(c, cmd, env, log_path, None)
            info = w.ask({"cmd": "load"})
            bye = w.quit()
            rec = {
                "spawn_to_ready_s": w.spawn_to_ready_s,
                "import_s": w.ready["import_s"],
                "load_s": info["load_s"],
                "rss_after_load_kib": info["rss_kib"],
                "hwm_after_load_kib": bye["hwm_kib"],
            }
            for k in ("engine_create_s", "preload_s", "prime_wall_s"):
                if k in info:
                    rec[k] = info[k]
            loads[c].append(rec)
            print(f"load round {r}: {c}: ready after {rec['spawn_to_ready_s']:.2f} s, load {rec['load_s']:.2f} s", flush=True)
            time.sleep(args.pause)
    results["load_rounds"] = loads

    # 2. long-lived workers: load, warm-up, interleaved rounds
    workers: dict = {}
    info: dict = {}
    for c in contenders:
        cmd, env = worker_cmd(c, args, onnx_dir, diffusers_dir, ort_lib)
        workers[c] = Worker(c, cmd, env, log_path, out / f"time_{c}.txt")
        info[c] = {"spawn_to_ready_s": workers[c].spawn_to_ready_s, "import_s": workers[c].ready["import_s"]}
        info[c]["load"] = workers[c].ask({"cmd": "load"})
        print(f"main {c}: loaded in {info[c]['load']['load_s']:.2f} s", flush=True)
    results["workers"] = info

    runs: dict = {c: [] for c in contenders}
    warm: dict = {}
    for c in contenders:
        time.sleep(args.pause)
        warm[c] = workers[c].ask({"cmd": "run", "save": str(img_dir / f"warmup_{c}")})
        print(f"warm-up {c}: {warm[c]['wall_s']:.2f} s", flush=True)
    for r in range(args.rounds):
        for c in contenders:
            time.sleep(args.pause)
            res = workers[c].ask({"cmd": "run", "save": str(img_dir / f"r{r}_{c}")})
            res["round"] = r
            runs[c].append(res)
            print(f"round {r}: {c}: {res['wall_s']:.2f} s", flush=True)
    byes = {c: workers[c].quit() for c in contenders}
    results["warmup"] = warm
    results["runs"] = runs
    results["final_hwm_kib"] = {c: byes[c]["hwm_kib"] for c in contenders}
    results["time_v"] = {c: parse_time_v(out / f"time_{c}.txt") for c in contenders}

    # 3. images
    same: dict = {}
    for i, a in enumerate(contenders):
        for b in contenders[i + 1 :]:
            same[f"{a}-{b}"] = image_diff(str(img_dir / f"warmup_{a}"), str(img_dir / f"warmup_{b}"))
    repeat = {
        c: max(image_diff(str(img_dir / f"warmup_{c}"), str(img_dir / f"r{r}_{c}"))["u8_max"] for r in range(args.rounds))
        for c in contenders
    }
    img = np.load(str(img_dir / f"warmup_{contenders[0]}.u8.npy"))
    results["images"] = {
        "pairs_warmup": same,
        "max_u8_diff_vs_own_warmup": repeat,
        "stats_first": {"mean": float(img.mean() / 255), "std": float(img.std() / 255),
                        "frac_0": float((img == 0).mean()), "frac_255": float((img == 255).mean())},
    }
    results["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
    summary = summarize(results, contenders)
    results["summary"] = summary["numbers"]
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "summary.md").write_text(summary["text"])
    print(summary["text"])


def summarize(res: dict, contenders: list[str]) -> dict:
    n: dict = {}
    cn = res["request"].get("controlnet")
    steps = res["request"]["steps"]
    lines = [f"# {res['model']} model, {res['request']['width']}x{res['request']['height']}, "
             f"{steps} steps, {res['rounds']} rounds ({res['started']})", ""]
    if cn:
        lines += [f"ControlNet `{cn['name']}` (diffusers: {cn['diffusers_dir']}), control image {cn['image']}, "
                  f"conditioning scale {cn['scale']}, for every contender except *_plain.", ""]
    walls = {c: [r["wall_s"] for r in res["runs"][c]] for c in contenders}
    n["wall_median_s"] = {c: med(walls[c]) for c in contenders}
    cn_col = " of which ControlNet |" if cn else ""
    lines.append("| contender | wall median | min | max | raw (s) | warm-up | text enc | denoise/UNet | per step |"
                 + cn_col + " VAE decode | other |")
    lines.append("|---|---|---|---|---|---|---|---|---|" + ("---|" if cn else "") + "---|---|")
    stage_meds: dict = {}
    for c in contenders:
        rs = res["runs"][c]
        if c.startswith("sdxlrt"):
            te = med([r["stages"]["text_encoding"] for r in rs])
            un = med([r["stages"]["denoising"] for r in rs])
            va = med([r["stages"]["vae_decode"] for r in rs])
            other = f"encode+base64 {med([r['stages']['encode_save'] for r in rs]):.3f}"
            cnet = None
        else:
            te = med([r["stages"].get("text_encoder", 0) + r["stages"].get("text_encoder_2", 0) for r in rs])
            # with a ControlNet: UNet + ControlNet forwards (the denoising loop's model time), ControlNet apart too
            un = med([r["stages"].get("unet", 0) + r["stages"].get("controlnet", 0) for r in rs])
            has_cn = all("controlnet" in r["stages"] for r in rs)
            cnet = med([r["stages"]["controlnet"] for r in rs]) if has_cn else None
            va = med([r["stages"].get("vae_decoder", 0) for r in rs])
            other = f"outside timed parts {med([r['wall_s'] - sum(v for v in r['stages'].values()) for r in rs]):.3f}"
        stage_meds[c] = {"text": te, "unet": un, "vae": va, "per_step": un / steps}
        if cnet is not None:
            stage_meds[c]["controlnet"] = cnet
        cn_cell = (f" {cnet:.3f} |" if cnet is not None else " — |") if cn else ""
        lines.append(f"| {c} | **{med(walls[c]):.3f}** | {min(walls[c]):.3f} | {max(walls[c]):.3f} | "
                     f"{', '.join(f'{w:.2f}' for w in walls[c])} | {res['warmup'][c]['wall_s']:.3f} | {te:.3f} | "
                     f"{un:.3f} | {un / steps:.3f} |{cn_cell} {va:.3f} | {other} |")
    n["stage_medians_s"] = stage_meds
    lines += ["", "sdxlrt stages are its processing_metrics (Rust wall time around each stage, so they include the "
              "scheduler math and tensor copies; with a ControlNet its denoise includes the ControlNet's runs, which "
              "it does not time apart); optimum stages are the summed ONNX Runtime `session.run` times "
              "(proxy); diffusers stages are the summed module forward times (with a ControlNet, denoise/UNet = "
              "UNet + ControlNet forwards). per step = denoise / steps (one CFG batch of 2 per step).", ""]

    if cn:
        n["controlnet_cost"] = {}
        for a, b in (("sdxlrt", "sdxlrt_plain"), ("diffusers", "diffusers_plain")):
            if a in contenders and b in contenders:
                sa, sb = stage_meds[a]["per_step"], stage_meds[b]["per_step"]
                wa, wb = n["wall_median_s"][a], n["wall_median_s"][b]
                n["controlnet_cost"][a] = {"per_step_s": sa - sb, "per_step_rel": sa / sb - 1, "wall_s": wa - wb,
                                           "wall_rel": wa / wb - 1}
                lines.append(f"ControlNet cost in {a}: per step {sb:.3f} → {sa:.3f} s (+{sa - sb:.3f} s, "
                             f"{sa / sb - 1:+.1%}); wall {wb:.2f} → {wa:.2f} s ({wa / wb - 1:+.1%})")
        lines.append("")

    ratios = {}
    pairs = [("sdxlrt", "optimum"), ("sdxlrt", "diffusers"), ("optimum", "diffusers")]
    pairs += [("sdxlrt", "sdxlrt_plain"), ("diffusers", "diffusers_plain"), ("sdxlrt_plain", "diffusers_plain")]
    pairs += [(v, b) for v in contenders if v.startswith("sdxlrt_") and v not in PLAIN
              for b in ("sdxlrt", "optimum", "diffusers")]
    for a, b in pairs:
        if a in contenders and b in contenders:
            ratios[f"{a}/{b}"] = n["wall_median_s"][a] / n["wall_median_s"][b]
    n["ratios"] = ratios
    lines.append("Ratios of wall medians: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))

    for c in [c for c in contenders if c.startswith("sdxlrt")]:
        rs = res["runs"][c]
        own = [r["wall_s"] / r["stages"]["inference"] for r in rs]
        n[f"{c}_wall_over_stage_sum"] = med(own)
        line = (f"{c} wall / its own stage sum (text+denoise+decode from processing_metrics): median {med(own):.4f} "
                f"(raw {', '.join(f'{x:.4f}' for x in own)})")
        if all(r["stages"].get("onnxruntime") for r in rs):
            exact = [r["wall_s"] / r["stages"]["onnxruntime"] for r in rs]
            n[f"{c}_wall_over_ort_run_sum"] = med(exact)
            line += (f"; {c} wall / its own ORT run time (processing_metrics.onnxruntime_time): median "
                     f"{med(exact):.4f} (raw {', '.join(f'{x:.4f}' for x in exact)})")
        if "optimum" in contenders:
            ort_sums = [sum(v for k, v in r["stages"].items()) for r in res["runs"]["optimum"]]
            n[f"{c}_wall_over_optimum_ort_sum"] = med([r["wall_s"] for r in rs]) / med(ort_sums)
            n["optimum_wall_over_own_ort_sum"] = med([r["wall_s"] / s for r, s in zip(res["runs"]["optimum"], ort_sums)])
            line += (f"; {c} wall / optimum's summed ORT run time (same graphs, same ORT) "
                     f"{n[f'{c}_wall_over_optimum_ort_sum']:.4f}; optimum wall / its own ORT run sum "
                     f"{n['optimum_wall_over_own_ort_sum']:.4f}")
        lines.append(line)

    lines += ["", "| contender | load (fresh processes, median) | raw | process start → ready (median) | "
              "load in the long-lived worker | peak RSS (time -v) | VmHWM at exit |", "|---|---|---|---|---|---|---|"]
    n["load_median_s"] = {}
    n["peak_rss_gib"] = {}
    for c in contenders:
        ls = [x["load_s"] for x in res["load_rounds"][c]]
        ready = [x["spawn_to_ready_s"] + x["load_s"] for x in res["load_rounds"][c]]
        n["load_median_s"][c] = med(ls)
        rss = res["time_v"][c].get("max_rss_kib", float("nan")) / 2**20
        n["peak_rss_gib"][c] = rss
        extra = ""
        if c.startswith("sdxlrt") and ls:
            primed = all("prime_wall_s" in x for x in res["load_rounds"][c])
            extra = (f" (engine_create {med([x['engine_create_s'] for x in res['load_rounds'][c]]):.3f} + "
                     + ("model_load_time of the 64² 1-step priming request " if primed else "preload ")
                     + f"{med([x['preload_s'] for x in res['load_rounds'][c]]):.3f})")
        lines.append(f"| {c} | **{med(ls):.3f}**{extra} | {', '.join(f'{x:.2f}' for x in ls)} | {med(ready):.3f} | "
                     f"{res['workers'][c]['load']['load_s']:.3f} | **{rss:.2f} GiB** | "
                     f"{res['final_hwm_kib'][c] / 2**20:.2f} GiB |")

    lines += ["", "Images (warm-up image of each contender): " + "; ".join(
        f"{k}: uint8 max |diff| {v['u8_max']}, mean {v['u8_mean']:.3f} ({v['u8_pixels_differing']} pixels differ)"
        + (f", float max |diff| {v['f32_max']:.3g}" if "f32_max" in v else "")
        for k, v in res["images"]["pairs_warmup"].items())]
    lines.append("Repeatability (max uint8 |diff| of each timed image vs its own warm-up): " + ", ".join(
        f"{c} {v}" for c, v in res["images"]["max_u8_diff_vs_own_warmup"].items()))
    st = res["images"]["stats_first"]
    lines.append(f"Image stats: mean {st['mean']:.3f}, std {st['std']:.3f}, at 0: {st['frac_0']:.2%}, "
                 f"at 255: {st['frac_255']:.2%}")

    if {"sdxlrt", "optimum", "diffusers"} <= set(contenders):
        w = n["wall_median_s"]
        goals = [
            ("wall ≤ 1.01 × own ORT run sum (proxy: stage sum)", n["sdxlrt_wall_over_stage_sum"], 1.01),
            ("wall ≤ 0.97 × optimum", w["sdxlrt"] / w["optimum"], 0.97),
            ("wall ≤ 0.80 × diffusers", w["sdxlrt"] / w["diffusers"], 0.80),
            ("peak RSS ≤ 0.6 × optimum", n["peak_rss_gib"]["sdxlrt"] / n["peak_rss_gib"]["optimum"], 0.6),
            ("creation → ready ≤ 0.4 × optimum from_pretrained",
             n["load_median_s"]["sdxlrt"] / n["load_median_s"]["optimum"], 0.4),
        ]
        n["goals"] = {g: {"got": v, "goal": t, "met": v <= t} for g, v, t in goals}
        lines += ["", "| goal (issue 7) | got | met |", "|---|---|---|"]
        lines += [f"| {g} | {v:.3f} | {'yes' if v <= t else 'no'} |" for g, v, t in goals]
    return {"numbers": n, "text": "\n".join(lines) + "\n"}


if __name__ == "__main__":
    main()
