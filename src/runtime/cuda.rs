//! CUDA execution provider settings (engine option `cuda`, used with `device: "cuda"` / `"cuda:N"`).
//!
//! Only the provider options that matter for SDXL are exposed; each defaults to what suits a diffusion UNet:
//! cuDNN's exhaustive convolution search (run once per shape, then cached by ORT), the largest cuDNN workspace,
//! and an arena that grows by exactly what is asked (ORT's default doubles, which can waste gigabytes on a 1024²
//! UNet).

use serde::Deserialize;

use crate::error::{Error, Result};

/// Settings of the CUDA execution provider. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaOptions {
    /// cuDNN convolution algorithm search: `exhaustive` (default: benchmark every algorithm once per shape),
    /// `heuristic` (faster first run, maybe slower steps) or `default`.
    pub conv_algo_search: Option<String>,
    /// Let cuDNN use as much workspace as its fastest algorithms want (default true).
    pub conv_max_workspace: Option<bool>,
    /// Growth of ONNX Runtime's device arena: `same_as_requested` (default) or `next_power_of_two`.
    pub arena_extend_strategy: Option<String>,
    /// Cap on the device arena, in MiB (default: none).
    pub memory_limit_mb: Option<u64>,
    /// Prefer NHWC kernels where the build has them (default false; pays off with graphs optimized for it).
    pub prefer_nhwc: Option<bool>,
}

impl CudaOptions {
    /// Check the values; errors name `cuda.<field>`.
    pub fn validate(&self) -> Result<()> {
        self.search()?;
        self.arena()?;
        if self.memory_limit_mb == Some(0) {
            return Err(invalid("memory_limit_mb", "must be ≥ 1".into()));
        }
        Ok(())
    }

    fn search(&self) -> Result<ort::ep::cuda::ConvAlgorithmSearch> {
        use ort::ep::cuda::ConvAlgorithmSearch as S;
        match self.conv_algo_search.as_deref() {
            None | Some("exhaustive") => Ok(S::Exhaustive),
            Some("heuristic") => Ok(S::Heuristic),
            Some("default") => Ok(S::Default),
            Some(other) => {
                Err(invalid("conv_algo_search", format!("{other:?} is not one of exhaustive, heuristic, default")))
            }
        }
    }

    fn arena(&self) -> Result<ort::ep::ArenaExtendStrategy> {
        use ort::ep::ArenaExtendStrategy as A;
        match self.arena_extend_strategy.as_deref() {
            None | Some("same_as_requested") => Ok(A::SameAsRequested),
            Some("next_power_of_two") => Ok(A::NextPowerOfTwo),
            Some(other) => Err(invalid(
                "arena_extend_strategy",
                format!("{other:?} is not one of same_as_requested, next_power_of_two"),
            )),
        }
    }

    /// The CUDA execution provider on `device_id` with these settings, registered with `error_on_failure`
    /// (ort would otherwise fall back to CPU without a word).
    pub fn provider(&self, device_id: i32) -> Result<ort::ep::ExecutionProviderDispatch> {
        let mut cuda = ort::ep::CUDA::default()
            .with_device_id(device_id)
            .with_conv_algorithm_search(self.search()?)
            .with_conv_max_workspace(self.conv_max_workspace.unwrap_or(true))
            .with_arena_extend_strategy(self.arena()?)
            .with_prefer_nhwc(self.prefer_nhwc.unwrap_or(false));
        if let Some(mb) = self.memory_limit_mb {
            cuda = cuda.with_memory_limit((mb as usize).saturating_mul(1 << 20));
        }
        Ok(cuda.build().error_on_failure())
    }
}

fn invalid(field: &str, message: String) -> Error {
    Error::InvalidOption { field: format!("cuda.{field}"), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_name_the_cuda_field() {
        let bad = CudaOptions { conv_algo_search: Some("fast".into()), ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("cuda.conv_algo_search"));
        let bad = CudaOptions { arena_extend_strategy: Some("double".into()), ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("cuda.arena_extend_strategy"));
        let bad = CudaOptions { memory_limit_mb: Some(0), ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("cuda.memory_limit_mb"));
        let good = CudaOptions {
            conv_algo_search: Some("heuristic".into()),
            arena_extend_strategy: Some("next_power_of_two".into()),
            memory_limit_mb: Some(8192),
            prefer_nhwc: Some(true),
            conv_max_workspace: Some(false),
        };
        good.validate().unwrap();
        good.provider(0).unwrap();
    }
}
