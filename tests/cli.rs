//! The `sdxlrt` command line (it calls the C ABI) and its failure when ONNX Runtime cannot load.

use std::process::Command;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sdxlrt"))
}

/// `sdxlrt generate` with a golden's prompt, negative prompt, steps, seed and guidance scale.
fn generate_as(g: &crate::util::Golden) -> Command {
    let mut command = cli();
    command.args(["generate", "--prompt", &g.meta["prompt"], "--negative-prompt", &g.meta["negative_prompt"]]).args([
        "--steps",
        &g.meta["steps"],
        "--seed",
        &g.meta["seed"],
        "--guidance-scale",
        &g.meta["guidance_scale"],
    ]);
    command
}

/// The PNG the CLI wrote at `path`, checked against the golden's image within ±1/255 (diffusers' rounding).
fn assert_like_golden(path: &std::path::Path, g: &crate::util::Golden, what: &str) -> image::RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    let (worst, at) = crate::util::max_u8_diff(img.as_raw(), &g.t("image_u8").u8);
    assert!(worst <= 1, "{what}: the CLI's image differs from diffusers by {worst}/255 at byte {at}");
    img
}

#[test]
fn generate_writes_an_image_with_the_bundled_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.png");
    let run = cli()
        .args(["generate", "--prompt", "a lighthouse", "--seed", "3", "--steps", "3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (64, 64));
    assert!(String::from_utf8_lossy(&run.stdout).contains("seed 3"));
    // Running again without --overwrite refuses to replace the file.
    let again = cli().args(["generate", "--prompt", "x", "--steps", "1", "--out"]).arg(&out).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn generated_pngs_carry_the_parameters_unless_no_embed_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let text_of = |out: &std::path::Path| {
        let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(out).unwrap())).read_info().unwrap();
        reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect::<Vec<_>>()
    };
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let run = cli()
            .args(["generate", "--prompt", "a lighthouse", "--seed", "3", "--steps", "2", "--scheduler", "Euler a"])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        out
    };
    let text = text_of(&run("with.png", &[]));
    assert_eq!(text[0].0, "parameters");
    assert!(
        text[0].1.starts_with("a lighthouse\nSteps: 2, Sampler: Euler a, CFG scale: 5, Seed: 3, Size: 64x64"),
        "{text:?}"
    );
    assert!(text_of(&run("without.png", &["--no-embed-parameters"])).is_empty());
}

#[test]
fn refiner_vae_and_upscaler_flags_reach_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("refined.png");
    let run = cli()
        .args(["generate", "--prompt", "a lighthouse", "--steps", "5", "--refiner", "tiny-sdxl-refiner"])
        .args(["--refiner-switch-at", "0.6", "--vae", "tiny-vae-b", "--upscale", "tiny-x2", "--upscale-factor", "3"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (192, 192));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("tiny-sdxl-refiner") && stdout.contains("tiny-vae-b"), "{stdout}");
}

#[test]
fn hires_flags_run_the_second_pass_as_the_golden() {
    let g = crate::util::Golden::load("hires_lanczos");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hires.png");
    let run = generate_as(&g)
        .args(["--width", &g.meta["width"], "--height", &g.meta["height"]])
        .args(["--hires-scale", "1.5", "--hires-upscaler", "lanczos", "--hires-strength", "0.6"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = assert_like_golden(&out, &g, "hires");
    assert_eq!((img.width(), img.height()), (96, 96));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("hires fix from 64x64 by lanczos"), "{stdout}");
    let bad = cli().args(["generate", "--prompt", "x", "--hires-strength", "2"]).arg("--out").arg(&out).output();
    let stderr = String::from_utf8_lossy(&bad.unwrap().stderr).into_owned();
    assert!(stderr.contains("data.hires.strength"), "{stderr}");
}

#[test]
fn hires_controlnet_flags_run_the_second_pass_as_the_golden() {
    let g = crate::util::Golden::load("hires_controlnet_second");
    let fixtures = crate::util::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hires.png");
    let run = generate_as(&g)
        .args(["--width", &g.meta["width"], "--height", &g.meta["height"]])
        .args(["--controlnet", "tiny-controlnet", "--controlnet-scale", "0.8", "--control-image"])
        .arg(fixtures.join("controlnet/control_80x60.png"))
        .args(["--hires-scale", "1.5", "--hires-controlnet", "High res only"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = assert_like_golden(&out, &g, "hires");
    assert_eq!((img.width(), img.height()), (96, 96));
    let bad = generate_as(&g)
        .args(["--controlnet", "tiny-controlnet", "--control-image"])
        .arg(fixtures.join("controlnet/control_80x60.png"))
        .args(["--hires-controlnet", "sometimes"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(!bad.status.success() && stderr.contains("data.hires.controlnet"), "{stderr}");
}

/// The CLI run of an inpainting golden `g` (prompts, steps, seed, strength, init image, mask) with `extra` flags:
/// the image it wrote.
fn inpaint_golden(g: &crate::util::Golden, extra: &[&str]) -> image::RgbImage {
    let fixtures = crate::util::fixtures();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("inpainted.png");
    let run = cli()
        .args(["generate", "--prompt", &g.meta["prompt"], "--negative-prompt", &g.meta["negative_prompt"]])
        .args(["--steps", &g.meta["steps"], "--seed", &g.meta["seed"], "--strength", &g.meta["strength"]])
        .arg("--init-image")
        .arg(fixtures.join("img2img").join(&g.meta["init_image"]))
        .arg("--mask-image")
        .arg(fixtures.join("inpaint").join(&g.meta["mask_image"]))
        .args(extra)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    image::open(&out).unwrap().to_rgb8()
}

#[test]
fn init_image_and_mask_flags_inpaint_as_the_golden() {
    // onnx/make_inpaint.py's `inpaint` case through the command line: the image diffusers made, within 1/255.
    let g = crate::util::Golden::load("inpaint");
    let img = inpaint_golden(&g, &[]);
    let (worst, at) = crate::util::max_u8_diff(img.as_raw(), &g.t("image_u8").u8);
    assert!(worst <= 1, "the CLI's inpainted image differs from diffusers by {worst}/255 at byte {at}");
}

#[test]
fn the_padding_mask_crop_flag_inpaints_only_the_masks_area_as_the_golden() {
    // onnx/make_inpaint_crop.py's `inpaint_crop`: 64 x 64 generated for the mask's area, put back into 80 x 60.
    let g = crate::util::Golden::load("inpaint_crop");
    let (w, h, pad) = (&g.meta["width"], &g.meta["height"], &g.meta["padding_mask_crop"]);
    let img = inpaint_golden(&g, &["--width", w, "--height", h, "--padding-mask-crop", pad]);
    assert_eq!(img.dimensions(), (80, 60));
    let (worst, at) = crate::util::max_u8_diff(img.as_raw(), &g.t("image_u8").u8);
    assert!(worst <= 1, "the CLI's image differs from diffusers by {worst}/255 at byte {at}");
}

#[test]
fn the_mask_blur_flag_blurs_the_mask_as_the_golden() {
    // onnx/make_inpaint_crop.py's `inpaint_crop_blur`: the mask blurred by 4 before its area is inpainted.
    let g = crate::util::Golden::load("inpaint_crop_blur");
    let (w, h, pad) = (&g.meta["width"], &g.meta["height"], &g.meta["padding_mask_crop"]);
    let args = ["--width", w, "--height", h, "--padding-mask-crop", pad, "--mask-blur", &g.meta["mask_blur"]];
    let img = inpaint_golden(&g, &args);
    assert_eq!(img.dimensions(), (80, 60));
    let (worst, at) = crate::util::max_u8_diff(img.as_raw(), &g.t("image_u8").u8);
    assert!(worst <= 1, "the CLI's image differs from diffusers by {worst}/255 at byte {at}");
}

#[test]
fn a_missing_or_wrong_onnx_runtime_is_a_clear_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_lib = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&not_a_lib, b"not an ELF file").unwrap();
    for lib in [not_a_lib.clone(), dir.path().join("missing.so")] {
        let run = cli()
            .env_remove("ORT_DYLIB_PATH")
            .args(["generate", "--prompt", "x", "--steps", "1", "--onnxruntime"])
            .arg(&lib)
            .arg("--out")
            .arg(dir.path().join("o.png"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "clean exit, not a signal: {stderr}");
        assert!(stderr.contains("ONNX Runtime unavailable"), "{stderr}");
    }
}

#[test]
fn micro_conditioning_flags_reach_the_request_and_give_diffusers_image() {
    let g = crate::util::Golden::load("micro_conditioning");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("micro.png");
    let run = generate_as(&g)
        .args(["--width", "64", "--height", "64", "--original-size", "1024x768", "--target-size", "1024x1024"])
        .args(["--crop-top-left", "32,16", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_like_golden(&out, &g, &g.name);
    let bad = cli().args(["generate", "--prompt", "x", "--original-size", "1024", "--out"]).arg(&out).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("1024x768"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn the_canny_flag_makes_the_control_image_from_a_photo_as_cv2_canny_does() {
    let dir = tempfile::tempdir().unwrap();
    let canny = crate::util::fixtures().join("controlnet/canny");
    let run = |name: &str, control: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let run = cli()
            .args(["generate", "--prompt", "a lighthouse", "--seed", "5", "--steps", "3"])
            .args(["--controlnet", "tiny-controlnet", "--control-image"])
            .arg(canny.join(control))
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        // The pixels: the embedded parameters differ (one names the preprocessor that ran).
        image::open(&out).unwrap().to_rgb8().into_raw()
    };
    let from_photo = run("photo.png", "photo_67x45.png", &["--canny", "300", "600"]);
    let from_edges = run("edges.png", "photo_67x45_300_600.png", &[]);
    assert_eq!(from_photo, from_edges);
    let defaults = run("defaults.png", "photo_67x45.png", &["--canny"]);
    assert_eq!(defaults, run("edges_default.png", "photo_67x45_100_200.png", &[]));
    assert_ne!(defaults, from_photo);
}

#[test]
fn prompt_syntax_flag_reads_a1111_weights_and_gives_the_compel_diffusers_image() {
    let g = crate::util::Golden::load("prompts_weights");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("weighted.png");
    let run = generate_as(&g)
        .args(["--width", "64", "--height", "64", "--prompt-syntax", "weighted", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_like_golden(&out, &g, &g.name);
    let bad =
        cli().args(["generate", "--prompt", "x", "--prompt-syntax", "a1111", "--out"]).arg(&out).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("weighted"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn the_guess_mode_flag_gives_diffusers_guess_mode_image() {
    let g = crate::util::Golden::load("controlnet_guess");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("guess.png");
    let run = generate_as(&g)
        .args(["--width", "64", "--height", "64", "--controlnet", "tiny-controlnet", "--control-image"])
        .arg(crate::util::fixtures().join("controlnet/control_64.png"))
        .args(["--controlnet-scale", "0.8", "--guess-mode", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_like_golden(&out, &g, &g.name);
}

#[test]
fn the_preview_dir_flag_writes_each_steps_preview_as_the_golden() {
    let g = crate::util::Golden::load("preview_euler");
    let dir = tempfile::tempdir().unwrap();
    let (previews, out) = (dir.path().join("previews"), dir.path().join("image.png"));
    let run = generate_as(&g)
        .args(["--scheduler", &g.meta["scheduler"], "--preview-dir"])
        .arg(&previews)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for step in 1..=4 {
        let png = image::open(previews.join(format!("step_{step:03}.png"))).unwrap().to_rgb8();
        assert_eq!((png.width(), png.height()), (8, 8));
        let (worst, at) = crate::util::max_u8_diff(png.as_raw(), &g.t(&format!("l2r_denoised_{step}")).u8);
        assert!(worst <= 1, "step {step}: {worst}/255 at byte {at}");
    }
    // vae previews every second step: steps 2 and 4, the last one the image itself.
    let vae = dir.path().join("vae");
    let run = generate_as(&g)
        .args(["--scheduler", &g.meta["scheduler"], "--preview-method", "vae", "--preview-interval", "2"])
        .arg("--preview-dir")
        .arg(&vae)
        .arg("--overwrite")
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let mut names: Vec<String> =
        std::fs::read_dir(&vae).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["step_001.png", "step_002.png"]);
    let last = image::open(vae.join("step_002.png")).unwrap().to_rgb8();
    assert_eq!(last.as_raw(), image::open(&out).unwrap().to_rgb8().as_raw(), "the last vae preview is the image");
    assert!(max_diff(&last, &g.t("vae_denoised_4").u8) <= 1);
}

fn max_diff(img: &image::RgbImage, want: &[u8]) -> u8 {
    crate::util::max_u8_diff(img.as_raw(), want).0
}

/// `--guidance-rescale` and `--clip-skip` reach data.hyperparameters: each golden's pixels (diffusers' guidance_rescale
/// 0.7; clip_skip 1 on both guidance halves), and a bad value is an error naming the field.
#[test]
fn guidance_rescale_and_clip_skip_flags_give_their_goldens() {
    let dir = tempfile::tempdir().unwrap();
    for (case, flag) in [("guidance_rescale", "--guidance-rescale"), ("clip_skip", "--clip-skip")] {
        let g = crate::util::Golden::load(case);
        let out = dir.path().join(format!("{case}.png"));
        let run = generate_as(&g).args([flag, &g.meta[case]]).arg("--out").arg(&out).output().unwrap();
        assert!(run.status.success(), "{case}: {}", String::from_utf8_lossy(&run.stderr));
        assert_like_golden(&out, &g, case);
    }
    let out = dir.path().join("bad.png");
    let bad = cli().args(["generate", "--prompt", "x", "--guidance-rescale", "1.5", "--out"]).arg(&out).output();
    let stderr = String::from_utf8_lossy(&bad.unwrap().stderr).into_owned();
    assert!(stderr.contains("data.hyperparameters.guidance_rescale"), "{stderr}");
}
