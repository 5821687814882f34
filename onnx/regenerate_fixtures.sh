#!/usr/bin/env bash
# Rebuild every fixture the onnx/ tools own, from scratch, and check that the bytes are reproducible.
#
#   onnx/regenerate_fixtures.sh          rebuild into tests/fixtures/ and rewrite tests/fixtures/SHA256SUMS
#   onnx/regenerate_fixtures.sh --check  rebuild into a temporary folder and compare with SHA256SUMS
#                                        (tests/fixtures/ is not touched; exit status 1 on any difference)
#
# Owned outputs (tests/fixtures/rng/ and tests/fixtures/schedulers/ belong to other tools and are left alone):
#   clip-vocab-full/  tokenizer_ids.json  tiny-sdxl/  tiny-sdxl-folded/  tiny-sdxl-fp16/  tiny-sdxl-fused-unet/
#   goldens/  loras/  tiny-sdxl-refiner/  vae/  upscalers/  controlnet/  img2img/  inpaint/  tiny-sdxl-inpaint-unet/
#   (tiny-sdxl-fused-unet/ and tiny-sdxl-inpaint-unet/ hold only unet/: tests pair it with tiny-sdxl's other graphs)
# (goldens/ holds goldens.py's cases, scheduler_pipeline_goldens.py's sched_*.safetensors, make_lora.py's lora_*,
# make_stages.py's custom_vae / refiner*, make_controlnet.py's controlnet*, make_img2img.py's img2img*,
# make_inpaint.py's inpaint and inpaint_*, make_inpaint_unet.py's inpaint9*, make_inpaint_crop.py's inpaint_crop*
# (inpaint_crop_blur too), mask_crop_ops and mask_blur_ops, make_inpaint_controlnet.py's inpaint*_controlnet*
# (but inpaint_controlnet_refiner*), make_inpaint_refiner.py's inpaint_refiner*, inpaint9_refiner and
# inpaint_controlnet_refiner*, make_micro_conditioning.py's micro_conditioning*, make_guidance_rescale.py's
# guidance_rescale*, make_clip_skip.py's clip_skip*, make_prompts.py's prompts_* (compel + diffusers),
# make_hires.py's hires_* (make_hires_controlnet.py's hires_controlnet_* among them), make_preview.py's preview_*
# and make_upscaler.py's
# upscale_x2.safetensors; controlnet/ holds make_controlnet.py's tiny ControlNets and control images and
# make_canny.py's cv2.Canny goldens in controlnet/canny/)
# The torch model is built in $SDXLRT_WORK (default ~/.cache/sdxlrt/work), outside the repository.
#
# Goldens come from torch CPU kernels, whose last bits depend on the CPU's vector ISA (see README.md), so
# --check is only expected to pass bit for bit on x86-64 machines with AVX2 or AVX-512, like the one that made
# the committed files. The ONNX, tokenizer and safetensors model bytes do not depend on the CPU.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fixtures="$(cd "$here/../tests/fixtures" && pwd)"
owned=(clip-vocab-full tokenizer_ids.json tiny-sdxl tiny-sdxl-folded tiny-sdxl-fp16 tiny-sdxl-fused-unet goldens loras
    tiny-sdxl-refiner vae upscalers controlnet img2img inpaint tiny-sdxl-inpaint-unet)

mode=write
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

py="$("$here/setup_venv.sh")"
start=$(date +%s)
if [ "$mode" = check ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    out="$tmp/fixtures"
    work="$tmp/work"
    mkdir -p "$out"
else
    out="$fixtures"
    work="${SDXLRT_WORK:-$HOME/.cache/sdxlrt/work}"
    for p in "${owned[@]}"; do rm -rf "${out:?}/$p"; done
fi
export SDXLRT_WORK="$work"
model="$work/tiny-sdxl-diffusers"

cd "$here"
echo "== tokenizers" >&2
"$py" make_tokenizer.py --fixtures "$out"
echo "== torch tiny SDXL -> $model" >&2
"$py" build_tiny.py --out "$model"
echo "== ONNX export: tiny-sdxl (no constant folding, unet with external data)" >&2
"$py" export_onnx.py "$model" "$out/tiny-sdxl" --external-data unet --check
echo "== ONNX export: tiny-sdxl-folded (constant folding, int32 input_ids, no tokenizer.json)" >&2
"$py" export_onnx.py "$model" "$out/tiny-sdxl-folded" --fold --int32-input-ids --no-tokenizer-json --check
echo "== ONNX export: tiny-sdxl-fp16 (float16 graphs)" >&2
"$py" export_onnx.py "$model" "$out/tiny-sdxl-fp16" --fp16 --components text_encoder,text_encoder_2,unet,vae_decoder,vae_encoder
echo "== ONNX export: tiny-sdxl-fused-unet (UNet attention as com.microsoft MultiHeadAttention nodes)" >&2
"$py" export_onnx.py "$model" "$work/tiny-sdxl-fused" --fused-attention --check --components unet
mkdir -p "$out/tiny-sdxl-fused-unet" && cp -r "$work/tiny-sdxl-fused/unet" "$out/tiny-sdxl-fused-unet/"
echo "== diffusers goldens" >&2
"$py" goldens.py --model "$model" --out "$out/goldens"
echo "== onnxruntime loop vs goldens" >&2
"$py" goldens.py --out "$out/goldens" --verify "$out/tiny-sdxl" "$out/tiny-sdxl-folded"
echo "== diffusers goldens per scheduler (goldens/sched_*.safetensors)" >&2
"$py" scheduler_pipeline_goldens.py --model "$model" --out "$out/goldens"
echo "== onnxruntime loop vs scheduler goldens" >&2
"$py" scheduler_pipeline_goldens.py --out "$out/goldens" --verify "$out/tiny-sdxl"
echo "== LoRA fixtures (loras/) and diffusers fuse_lora goldens (goldens/lora_*.safetensors)" >&2
"$py" make_lora.py --model "$model" --out "$out"
echo "== custom VAE (vae/), tiny refiner (tiny-sdxl-refiner/) and their diffusers goldens" >&2
"$py" make_stages.py --model "$model" --out "$out"
echo "== tiny ControlNets and control images (controlnet/) and their diffusers goldens (goldens/controlnet*)" >&2
"$py" make_controlnet.py --model "$model" --out "$out"
echo "== Canny preprocessor goldens: RGB images and cv2.Canny's edge maps (controlnet/canny/)" >&2
"$py" make_canny.py --out "$out"
echo "== init images (img2img/) and diffusers img2img goldens (goldens/img2img*)" >&2
"$py" make_img2img.py --model "$model" --out "$out"
echo "== masks (inpaint/) and diffusers inpainting goldens (goldens/inpaint, inpaint_*)" >&2
"$py" make_inpaint.py --model "$model" --out "$out"
echo "== tiny 9-channel inpainting UNet (tiny-sdxl-inpaint-unet/) and its diffusers inpainting goldens (goldens/inpaint9*)" >&2
"$py" make_inpaint_unet.py --model "$model" --out "$out"
echo "== masks for inpainting only the masked area (inpaint/) and its diffusers goldens (goldens/inpaint_crop*)" >&2
"$py" make_inpaint_crop.py --model "$model" --out "$out"
echo "== diffusers goldens of the size micro-conditioning (goldens/micro_conditioning*)" >&2
"$py" make_micro_conditioning.py --model "$model" --out "$out"
echo "== diffusers goldens of guidance_rescale (goldens/guidance_rescale*)" >&2
"$py" make_guidance_rescale.py --model "$model" --out "$out"
echo "== diffusers goldens of clip_skip on both guidance halves (goldens/clip_skip*)" >&2
"$py" make_clip_skip.py --model "$model" --out "$out"
echo "== compel + diffusers goldens of weighted and long prompts (goldens/prompts_*)" >&2
"$py" make_prompts.py --model "$model" --out "$out"
echo "== diffusers goldens of inpainting with ControlNets (goldens/inpaint*_controlnet*)" >&2
"$py" make_inpaint_controlnet.py --model "$model" --out "$out"
echo "== diffusers goldens of inpainting with the refiner (goldens/inpaint_refiner*, inpaint9_refiner)" >&2
"$py" make_inpaint_refiner.py --model "$model" --out "$out"
echo "== upscaler fixtures (upscalers/) and torch + PIL goldens (goldens/upscale_x2.safetensors)" >&2
"$py" make_upscaler.py --out "$out"
echo "== diffusers goldens of hires fix: txt2img, upscale, img2img (goldens/hires_*; needs upscalers/tiny-x2.onnx)" >&2
"$py" make_hires.py --model "$model" --out "$out"
echo "== diffusers goldens of hires fix with ControlNet (goldens/hires_controlnet_*; needs controlnet/ and upscalers/)" >&2
"$py" make_hires_controlnet.py --model "$model" --out "$out"
echo "== diffusers goldens of live previews: per-step latents, x0 estimates, latent2rgb and VAE previews (goldens/preview_*)" >&2
"$py" make_preview.py --model "$model" --out "$out"

(cd "$out" && chmod -R a+rX "${owned[@]}")
sums="$(mktemp)"
(cd "$out" && find "${owned[@]}" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) > "$sums"
if [ "$mode" = check ]; then
    if diff -u "$fixtures/SHA256SUMS" "$sums"; then
        echo "OK: rebuilt fixtures are byte-identical to tests/fixtures/SHA256SUMS ($(wc -l < "$sums") files, $(( $(date +%s) - start )) s)"
        rm -f "$sums"
    else
        rm -f "$sums"
        echo "FAILED: rebuilt fixtures differ from tests/fixtures/SHA256SUMS" >&2
        exit 1
    fi
else
    mv "$sums" "$fixtures/SHA256SUMS"
    chmod 644 "$fixtures/SHA256SUMS"
    (cd "$fixtures" && sha256sum --quiet -c SHA256SUMS)
    echo "wrote tests/fixtures/SHA256SUMS ($(wc -l < "$fixtures/SHA256SUMS") files, $(( $(date +%s) - start )) s)"
fi
