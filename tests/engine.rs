//! Engine runtime: management messages, the model cache (LRU, in-use protection, unload releases sessions),
//! metrics, and output_root confinement.

use std::sync::Arc;

use sdxlrt::engine::cache::{CacheOutcome, PipelineKey};
use sdxlrt::engine::Engine;
use sdxlrt::ffi::status::sdxl_status;
use sdxlrt::pipeline::SdxlPipeline;
use sdxlrt::runtime::SessionConfig;

use crate::util::{fixtures, AbiEngine};

fn gen(model: &str, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "request_id": "e1",
        "data": {
            "prompt": "a tree", "models": {"base": model},
            "hyperparameters": {"num_inference_steps": 2, "guidance_scale": 5.0, "seed": 3},
            "output": {"format": "png"},
        }
    });
    if let serde_json::Value::Object(m) = extra {
        for (k, val) in m {
            v["data"][k] = val;
        }
    }
    v.to_string()
}

#[test]
fn status_reports_runtime_device_memory_and_loaded_models() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate(r#"{"message_type": "status", "request_id": "s1"}"#);
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    let d = &reply.json["data"];
    assert_eq!(reply.json["request_id"], "s1");
    assert_eq!(d["execution_provider"], "CPUExecutionProvider");
    assert!(d["onnxruntime"]["library_path"].as_str().unwrap().contains("libonnxruntime"));
    assert!(d["onnxruntime"]["version"].as_str().unwrap().starts_with("1."), "{}", d["onnxruntime"]);
    assert!(d["memory"]["process_rss"].as_u64().unwrap() > 1 << 20);
    assert!(d["memory"]["device_used"].is_null() && d["memory"]["device_total"].is_null(), "no GPU numbers on CPU");
    assert_eq!(d["loaded_models"].as_array().unwrap().len(), 0);
}

#[test]
fn graphs_without_an_arena_allocate_through_the_host_allocator() {
    // (other tests in this process may allocate through it too; with the opt-in broken, none would)
    let before = sdxlrt::runtime::host_allocator::blocks_allocated();
    let opts = serde_json::json!({"models_root": fixtures(), "cpu_memory_arena": "unet_only"}).to_string();
    let engine = AbiEngine::create(Some(&opts)).unwrap();
    let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    assert!(sdxlrt::runtime::host_allocator::registered());
    assert!(sdxlrt::runtime::host_allocator::blocks_allocated() > before, "the text encoders and VAE did not use it");
}

#[test]
fn preload_and_unload_manage_the_cache() {
    let engine = AbiEngine::fixtures();
    let reply =
        engine.generate(r#"{"message_type": "preload_model", "request_id": "p", "data": {"model_name": "tiny-sdxl"}}"#);
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    assert_eq!(reply.json["data"]["loaded_models"][0]["name"], "tiny-sdxl");
    let reply =
        engine.generate(r#"{"message_type": "unload_model", "request_id": "u", "data": {"model_name": "tiny-sdxl"}}"#);
    assert_eq!(reply.json["data"]["unloaded"], 1);
    assert_eq!(reply.json["data"]["loaded_models"].as_array().unwrap().len(), 0);
    // A generation after unloading reloads the model.
    assert_eq!(engine.generate(&gen("tiny-sdxl", serde_json::json!({}))).status, sdxl_status::Ok);
    let reply = engine.generate(r#"{"message_type": "preload_model", "request_id": "p", "data": {}}"#);
    assert_eq!(reply.status, sdxl_status::InvalidRequest);
    assert!(reply.error.contains("data.model_name"));
    let reply = engine.generate(r#"{"message_type": "preload_model", "data": {"model_name": "nope"}}"#);
    assert_eq!(reply.status, sdxl_status::ModelNotFound);
}

#[test]
fn least_recently_used_models_are_evicted_past_max_cached_models() {
    let opts = serde_json::json!({"models_root": fixtures(), "max_cached_models": 1}).to_string();
    let engine = AbiEngine::create(Some(&opts)).unwrap();
    assert_eq!(engine.generate(&gen("tiny-sdxl", serde_json::json!({}))).status, sdxl_status::Ok);
    let reply = engine.generate(&gen("tiny-sdxl-folded", serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::Ok);
    assert!(reply.json["warnings"].to_string().contains("unloaded model tiny-sdxl"), "{}", reply.json);
    let status = engine.generate(r#"{"message_type": "status"}"#);
    let names: Vec<_> =
        status.json["data"]["loaded_models"].as_array().unwrap().iter().map(|m| m["name"].clone()).collect();
    assert_eq!(names, vec!["tiny-sdxl-folded"]);
}

/// The fixture model `name` from the engine's cache, loaded on a miss with `needs` bytes announced.
fn cached(engine: &Engine, name: &str, needs: u64) -> (Arc<SdxlPipeline>, CacheOutcome) {
    let key = PipelineKey {
        folder: fixtures().join(name).canonicalize().unwrap(),
        name: name.into(),
        variant: String::new(),
    };
    let load = || SdxlPipeline::load(&engine.runtime().env, &fixtures().join(name), &SessionConfig::default());
    engine.cache().get_or_load(&key, || needs, load).unwrap()
}

#[test]
fn a_model_whose_files_would_pass_the_memory_threshold_evicts_idle_ones_first() {
    // max_cached_models 3 leaves room by count; only the memory estimate can evict.
    let opts = serde_json::json!({"models_root": fixtures(), "max_cached_models": 3}).to_string();
    let engine = Engine::new(Some(&opts)).unwrap();
    let (_, outcome) = cached(&engine, "tiny-sdxl", 0);
    assert!(outcome.evicted.is_empty());
    let small = sdxlrt::pipeline::model_dir::ModelDir::graph_bytes(&fixtures().join("tiny-sdxl-folded"));
    assert!(small > 100_000, "the graph files count ({small} bytes)");
    let (_, outcome) = cached(&engine, "tiny-sdxl-folded", small);
    assert!(outcome.evicted.is_empty(), "a model that fits evicts nothing");
    let (_, outcome) = cached(&engine, "tiny-sdxl-fp16", u64::MAX / 2);
    assert_eq!(outcome.evicted, vec!["tiny-sdxl", "tiny-sdxl-folded"], "least recently used first, until none is left");
    assert_eq!(engine.cache().loaded().len(), 1);
}

#[test]
fn a_graph_loaded_into_a_cached_model_evicts_only_under_memory_pressure() {
    // A full cache does not evict for the VAE encoder (it is no new entry); memory pressure evicts idle models but
    // not the one in use.
    let opts = serde_json::json!({"models_root": fixtures(), "max_cached_models": 2}).to_string();
    let engine = Engine::new(Some(&opts)).unwrap();
    cached(&engine, "tiny-sdxl-folded", 0);
    let (held, _) = cached(&engine, "tiny-sdxl", 0);
    assert!(engine.cache().make_memory_room(0).is_empty(), "a full cache alone evicts nothing");
    assert_eq!(engine.cache().make_memory_room(u64::MAX / 2), vec!["tiny-sdxl-folded"]);
    assert_eq!(engine.cache().loaded().iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["tiny-sdxl"]);
    drop(held);
}

#[test]
fn status_says_whether_a_models_vae_encoder_is_loaded() {
    let engine = AbiEngine::fixtures();
    let encoder_loaded =
        || engine.generate(r#"{"message_type": "status"}"#).json["data"]["loaded_models"][0]["vae_encoder"].clone();
    assert_eq!(engine.generate(&gen("tiny-sdxl", serde_json::json!({}))).status, sdxl_status::Ok);
    assert_eq!(encoder_loaded(), false, "text-to-image does not load it");
    let init = fixtures().join("img2img/init_64.png");
    let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({"init_image": init})));
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    assert_eq!(encoder_loaded(), true, "the first image-to-image request loads it and the model keeps it");
}

#[test]
fn a_model_in_use_is_never_evicted_and_unloading_releases_sessions() {
    let opts = serde_json::json!({"models_root": fixtures(), "max_cached_models": 1}).to_string();
    let engine = Engine::new(Some(&opts)).unwrap();
    let (held, _) = cached(&engine, "tiny-sdxl", 0);
    let (_, outcome) = cached(&engine, "tiny-sdxl-folded", 0);
    assert!(outcome.evicted.is_empty(), "the model in use stayed");
    let loaded = engine.cache().loaded();
    assert_eq!(loaded.len(), 2);
    assert!(loaded.iter().any(|m| m.name == "tiny-sdxl" && m.in_use));
    let weak = Arc::downgrade(&held);
    drop(held);
    assert_eq!(engine.cache().unload("tiny-sdxl"), 1);
    assert!(weak.upgrade().is_none(), "unloading dropped the sessions");
}

#[test]
fn metrics_are_measured_not_invented() {
    let engine = AbiEngine::fixtures();
    let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({})));
    let m = &reply.json["data"]["processing_metrics"];
    assert_eq!(m["unet_evaluations"], 2);
    assert_eq!(m["steps"], 2);
    assert!(m["device_memory_used"].as_u64().unwrap() > 1 << 20);
    assert!(m["peak_memory"].as_u64().unwrap() >= m["device_memory_used"].as_u64().unwrap() / 2);
    let total = m["total_time"].as_f64().unwrap();
    let parts = m["text_encoding_time"].as_f64().unwrap()
        + m["denoising_time"].as_f64().unwrap()
        + m["vae_decode_time"].as_f64().unwrap()
        + m["encode_save_time"].as_f64().unwrap();
    assert!(parts > 0.0 && parts <= total, "stages {parts} within total {total}");
    // Time inside ONNX Runtime: part of the inference stages (4 text-encoder calls, 2 UNet calls, 1 VAE call).
    let ort = m["onnxruntime_time"].as_f64().unwrap();
    let inference = m["inference_time"].as_f64().unwrap();
    assert!(ort > 0.0 && ort <= inference, "onnxruntime_time {ort} within inference {inference}");
}

#[test]
fn save_path_is_confined_to_output_root() {
    let out = tempfile::tempdir().unwrap();
    let opts = serde_json::json!({"models_root": fixtures(), "output_root": out.path()}).to_string();
    let engine = AbiEngine::create(Some(&opts)).unwrap();
    let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({"output": {"save_path": "sub/a.png"}})));
    assert_eq!(reply.status, sdxl_status::Ok, "{}", reply.json);
    assert!(out.path().join("sub/a.png").is_file());
    for bad in ["../escape.png", "/tmp/sdxlrt-escape.png"] {
        let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({"output": {"save_path": bad}})));
        assert_eq!(reply.status, sdxl_status::InvalidRequest, "{bad}: {}", reply.json);
        assert!(reply.error.contains("data.output.save_path"));
    }
    assert!(!std::path::Path::new("/tmp/sdxlrt-escape.png").exists());
}

#[test]
fn a_symlink_inside_models_root_cannot_lead_outside_it() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fixtures().join("tiny-sdxl"), outside.path().join("m")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("m"), root.path().join("escape")).unwrap();
    // A symlink to a folder inside the root is fine.
    std::fs::create_dir(root.path().join("real")).unwrap();
    std::os::unix::fs::symlink(root.path().join("real"), root.path().join("alias")).unwrap();
    let engine = AbiEngine::create(Some(&serde_json::json!({"models_root": root.path()}).to_string())).unwrap();
    let reply = engine.generate(&gen("escape", serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::InvalidRequest, "{}", reply.json);
    assert!(reply.error.contains("outside models_root"), "{}", reply.error);
    let reply = engine.generate(&gen("alias", serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::ModelNotFound, "an empty folder inside the root: {}", reply.json);
}

#[test]
fn model_names_cannot_escape_models_root() {
    let engine = AbiEngine::fixtures();
    let outside = tempfile::tempdir().unwrap();
    for name in ["../fixtures/tiny-sdxl", "/etc", outside.path().to_str().unwrap()] {
        let reply = engine.generate(&gen(name, serde_json::json!({})));
        assert_eq!(reply.status, sdxl_status::InvalidRequest, "{name}: {}", reply.json);
    }
}

#[test]
fn cuda_without_a_cuda_runtime_is_a_clear_error_or_an_announced_fallback() {
    // The CPU wheel of ONNX Runtime has no CUDA execution provider.
    let opts = |extra: serde_json::Value| {
        let mut o = serde_json::json!({"models_root": fixtures()});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o.to_string()
    };
    match AbiEngine::create(Some(&opts(serde_json::json!({"device": "cuda"})))) {
        Ok(_) => panic!("device cuda was accepted by a CPU-only ONNX Runtime"),
        Err((status, msg)) => {
            assert_eq!(status, sdxl_status::RuntimeUnavailable);
            assert!(msg.contains("CUDA execution provider") && msg.contains("onnxruntime-gpu"), "{msg}");
        }
    }
    let (status, msg) = AbiEngine::create(Some(&opts(serde_json::json!({"device": "gpu"})))).err().unwrap();
    assert_eq!(status, sdxl_status::InvalidOption, "{msg}");
    let engine =
        AbiEngine::create(Some(&opts(serde_json::json!({"device": "cuda:1", "allow_cpu_fallback": true})))).unwrap();
    let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::Ok);
    assert!(reply.json["warnings"].to_string().contains("running on CPU"), "the fallback is announced: {}", reply.json);
    assert_eq!(reply.json["data"]["processing_metrics"]["device_name"], "CPU");
    let status = engine.generate(r#"{"message_type": "status"}"#);
    assert_eq!(status.json["data"]["execution_provider"], "CPUExecutionProvider");
}

#[test]
fn cuda_settings_are_checked_and_refused_without_a_cuda_device() {
    let create = |o: serde_json::Value| AbiEngine::create(Some(&o.to_string())).err().expect("refused");
    let (status, msg) = create(serde_json::json!({"cuda": {"conv_algo_search": "heuristic"}}));
    assert_eq!(status, sdxl_status::InvalidOption);
    assert!(msg.contains("cuda") && msg.contains("device"), "{msg}");
    let (status, msg) = create(serde_json::json!({"device": "cuda", "cuda": {"conv_algo_search": "fastest"}}));
    assert_eq!(status, sdxl_status::InvalidOption);
    assert!(msg.contains("cuda.conv_algo_search"), "{msg}");
    let (status, msg) = create(serde_json::json!({"device": "cuda", "cuda": {"graphs": true}}));
    assert_eq!(status, sdxl_status::InvalidOption);
    assert!(msg.contains("graphs"), "{msg}");
}

#[test]
fn the_model_default_size_is_checked_against_the_limits_before_any_work() {
    // The tiny model's default is 64×64; a 32-pixel limit refuses it when the request names no size.
    let opts = serde_json::json!({"models_root": fixtures(), "max_width": 32}).to_string();
    let engine = AbiEngine::create(Some(&opts)).unwrap();
    let reply = engine.generate(&gen("tiny-sdxl", serde_json::json!({})));
    assert_eq!(reply.status, sdxl_status::InvalidRequest, "{}", reply.json);
    assert!(reply.error.contains("data.dimensions.width"), "{}", reply.error);
}

#[test]
fn optimized_graph_cache_gives_the_same_images_and_repairs_damaged_entries() {
    let cache = tempfile::tempdir().unwrap();
    let req = gen("tiny-sdxl", serde_json::json!({}));
    let plain = AbiEngine::fixtures().generate_images(&req).1;
    let opts = serde_json::json!({"models_root": fixtures(), "optimized_model_cache": cache.path()}).to_string();
    // First engine: optimizes and fills the cache.
    let first = AbiEngine::create(Some(&opts)).unwrap().generate_images(&req);
    assert_eq!(first.0.status, sdxl_status::Ok, "{}", first.0.json);
    let mut entries: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let stages: Vec<&str> = entries.iter().map(|e| e.rsplit_once('-').unwrap().0).collect();
    assert_eq!(
        stages,
        ["text_encoder", "text_encoder_2", "unet+mha+subpixel", "vae_decoder+mha+subpixel"],
        "{entries:?}"
    );
    // Second engine: loads the optimized graphs with optimizations off; same pixels as without the cache.
    let second = AbiEngine::create(Some(&opts)).unwrap().generate_images(&req);
    assert_eq!(second.1, plain, "cached optimized graphs give the same image");
    assert_eq!(first.1, plain);
    // A damaged entry is dropped and rebuilt.
    let unet = cache.path().join(entries.iter().find(|e| e.starts_with("unet+mha+subpixel-")).unwrap());
    std::fs::write(unet.join("model.onnx"), b"garbage").unwrap();
    let third = AbiEngine::create(Some(&opts)).unwrap().generate_images(&req);
    assert_eq!(third.1, plain);
    assert!(std::fs::metadata(unet.join("model.onnx")).unwrap().len() > 1000, "entry rebuilt");
}
