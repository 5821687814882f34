//! Finding and loading ONNX Runtime (`load-dynamic`: nothing is linked or downloaded at build time).
//!
//! Order: the engine option `onnxruntime_path`, env `ORT_DYLIB_PATH`, a `libonnxruntime.so*` in the folder of the
//! sdxlrt library itself (where the NuGet package puts it), then the system loader. One ONNX Runtime per process:
//! the first that loads stays; a later engine asking for a different one gets a warning.
//!
//! Pitfall handled here: with load-dynamic, creating any `ort::Error` before the runtime is loaded panics inside
//! `ort`. Nothing in this module touches `ort` APIs other than `init_from` until a load succeeded.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use once_cell::sync::OnceCell;
use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The loaded ONNX Runtime.
#[derive(Debug)]
pub struct OrtRuntime {
    /// The environment all sessions are created from.
    pub env: ort::environment::Environment,
    /// The library file that was loaded.
    pub library_path: PathBuf,
    /// Which rule found it: "engine option onnxruntime_path", "ORT_DYLIB_PATH", "beside libsdxlrt", "system loader".
    pub found_by: &'static str,
    /// ONNX Runtime's version string.
    pub version: String,
}

static RUNTIME: OnceCell<OrtRuntime> = OnceCell::new();
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Load ONNX Runtime (once per process) and return it, plus a warning if `requested` differs from the loaded one.
pub fn runtime(requested: Option<&Path>) -> Result<(&'static OrtRuntime, Option<String>)> {
    let _guard = LOAD_LOCK.lock();
    if let Some(rt) = RUNTIME.get() {
        let warning = requested.filter(|p| !same_file(p, &rt.library_path)).map(|p| {
            format!(
                "onnxruntime_path {} ignored: ONNX Runtime was already loaded in this process from {}",
                p.display(),
                rt.library_path.display()
            )
        });
        return Ok((rt, warning));
    }
    let mut tried = Vec::new();
    for (candidate, found_by) in candidates(requested) {
        match load(&candidate) {
            Ok(env) => {
                let version = ort_version(&candidate);
                let rt = RUNTIME.get_or_init(|| OrtRuntime { env, library_path: candidate, found_by, version });
                return Ok((rt, None));
            }
            Err(message) => {
                tried.push(format!("{found_by}: {message}"));
                // An explicit choice that fails is final: never silently fall back to another runtime.
                if found_by != "beside libsdxlrt" && found_by != "system loader" {
                    break;
                }
            }
        }
    }
    Err(Error::RuntimeUnavailable(format!(
        "could not load libonnxruntime ({}). Install the onnxruntime==1.31.1 wheel and pass its \
         onnxruntime/capi/libonnxruntime.so.1.31.1 as the engine option onnxruntime_path or env ORT_DYLIB_PATH",
        tried.join("; ")
    )))
}

/// The runtime if one is already loaded.
pub fn loaded() -> Option<&'static OrtRuntime> {
    RUNTIME.get()
}

fn candidates(requested: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    if let Some(p) = requested {
        return vec![(p.to_path_buf(), "engine option onnxruntime_path")];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![(PathBuf::from(p), "ORT_DYLIB_PATH")];
    }
    let mut out = Vec::new();
    if let Some(dir) = own_library_dir() {
        let mut beside: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
            .collect();
        // Prefer the fully versioned name (the real file) over symlinks; stable order.
        beside.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        out.extend(beside.into_iter().take(1).map(|p| (p, "beside libsdxlrt")));
    }
    out.push((PathBuf::from("libonnxruntime.so"), "system loader"));
    out.push((PathBuf::from("libonnxruntime.so.1"), "system loader"));
    out
}

fn load(path: &Path) -> std::result::Result<ort::environment::Environment, String> {
    if path.components().count() > 1 && !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    let builder = ort::init_from(path).map_err(|e| e.to_string())?;
    let env = builder.with_name("sdxlrt").with_telemetry(false).build().map_err(|e| e.to_string())?;
    // Without it the arena-less graphs use ONNX Runtime's own allocator: slower, not wrong.
    let _ = crate::runtime::host_allocator::register(&env);
    Ok(env)
}

/// `OrtGetApiBase()->GetVersionString()` of the library already loaded from `path` (e.g. "1.31.1").
fn ort_version(path: &Path) -> String {
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const libc::c_void,
        get_version_string: unsafe extern "C" fn() -> *const libc::c_char,
    }
    let fallback = || ort::info().to_string();
    let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return fallback() };
    // SAFETY: RTLD_NOLOAD only returns a handle to the library ort already loaded (bumping its refcount, which
    // dlclose drops again); the symbol is ONNX Runtime's documented entry point with this signature.
    unsafe {
        let handle = libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return fallback();
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if sym.is_null() {
            None
        } else {
            let get_base: unsafe extern "C" fn() -> *const OrtApiBase = std::mem::transmute(sym);
            let base = get_base();
            (!base.is_null())
                .then(|| std::ffi::CStr::from_ptr(((*base).get_version_string)()).to_string_lossy().into_owned())
        };
        libc::dlclose(handle);
        version.unwrap_or_else(fallback)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The folder of the shared object (or executable) that contains sdxlrt's code.
pub fn own_library_dir() -> Option<PathBuf> {
    own_library_path().and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The file of the shared object (or executable) that contains sdxlrt's code.
pub fn own_library_path() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = own_library_path as *const () as *const libc::c_void;
    // SAFETY: dladdr only reads the address and fills `info`; dli_fname points to loader-owned memory.
    let ok = unsafe { libc::dladdr(addr, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: non-null NUL-terminated string owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
    path.canonicalize().ok().or(Some(path))
}
