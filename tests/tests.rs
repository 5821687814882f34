//! The one integration-test binary (ripgrep's layout): each module is one concern.

// Helpers: fixture paths, goldens, assert_close!, safe wrappers around the C ABI.
#[macro_use]
mod util;
// The C ABI: every status code, NULL and bad pointers, bad UTF-8, panics, cancellation, raw image buffers.
mod abi;
// Parity with diffusers on the tiny model: token ids, embeddings, noise, per-step latents, final images.
mod parity;
// The committed C header matches the Rust sources.
mod header;
// A C program built against the header and the shared library.
mod c_host;
// The command-line tool and the demo path.
mod cli;
// Many threads on one engine.
mod concurrency;
// 8 threads × 50 mixed requests, memory bound, a panic inside a stage.
mod load;
// Engine runtime: management messages, model cache, metrics, output_root.
mod engine;
// Scheduler choice through the ABI: names, step counting, no reloads.
mod schedulers;
// LoRA merged at load time: parity with diffusers fuse_lora (kohya, PEFT, two LoRAs, folded export), errors.
mod lora;
// A custom VAE and the SDXL refiner: parity with diffusers (vae=, ensemble of experts), errors.
mod stages;
// ControlNet: the UNet's residual inputs, parity with diffusers' ControlNet pipeline, errors.
mod controlnet;
// ControlNet guess mode and pooled (global_pool_conditions) ControlNets: parity with diffusers' guess_mode.
mod controlnet_guess;
// Image-to-image: parity with diffusers' img2img pipeline (every scheduler, resize, batch, ControlNet, refiner), errors.
mod img2img;
// Inpainting: parity with diffusers' inpaint pipeline (schedulers, strength 1, batch, resized mask, 9-channel UNet), errors.
mod inpaint;
// Inpainting with the SDXL refiner: parity with diffusers' recipe (4- and 9-channel base, schedulers, batch, crop).
mod inpaint_refiner;
// The upscaler: torch parity, A1111's passes and Lanczos resize, tiling, request path, errors.
mod upscale;
// Inpainting only the masked area (padding_mask_crop): the crop, fill and overlay, parity with diffusers.
mod inpaint_crop;
// Inpainting with ControlNets: parity with diffusers' ControlNet inpaint pipeline (4- and 9-channel UNets, crop), errors.
mod inpaint_controlnet;
// The Canny preprocessor: bit for bit cv2.Canny on goldens, through the engine, errors.
mod canny;
// Weighted prompts (data.prompt_syntax "weighted"): A1111's emphasis syntax and long prompts, parity with compel +
// diffusers; plain prompts unchanged.
mod prompts;
// Generation parameters inside the encoded images: A1111's infotext (PNG chunks, JPEG/WebP EXIF), opt-out, pixels.
mod pnginfo;
// Hires fix (data.hires): parity with diffusers txt2img → upscale (latent, Lanczos, a model) → img2img, errors.
mod hires;
// Hires fix with ControlNet: parity with diffusers' ControlNet txt2img → upscale → ControlNet img2img, passes, errors.
mod hires_controlnet;
// Live previews in the progress callback (data.output.preview): x0, latent2rgb and vae parity, interval, ABI.
mod preview;
