//! The one place that knows which tensor back-ends this binary was built with.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// Where the model runs. Every subcommand that runs the model takes `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's `flex` CPU back-end (the default; the fastest on CPU).
    #[default]
    Cpu,
    /// burn's `ndarray` CPU back-end, kept for comparison.
    Ndarray,
    /// A GPU through wgpu (Vulkan, Metal or DX12).
    Wgpu,
}

/// The requested back-end was not compiled into this binary, or is unknown.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected one of cpu, ndarray, wgpu")]
    Unknown(String),
    #[error(
        "device '{0}' is not available: this xca binary was built without the cargo feature '{1}' \
         (rebuild with `cargo build --release --features {1}`)"
    )]
    NotCompiled(DeviceChoice, &'static str),
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(DeviceError::Unknown(other.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
        })
    }
}

impl DeviceChoice {
    /// The inference device (no autodiff). Use `.autodiff()` on it for training.
    pub fn device(self) -> Result<Device, DeviceError> {
        match self {
            #[cfg(feature = "flex")]
            Self::Cpu => Ok(Device::flex()),
            #[cfg(not(feature = "flex"))]
            Self::Cpu => Err(DeviceError::NotCompiled(self, "flex")),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Ok(Device::ndarray()),
            #[cfg(not(feature = "ndarray"))]
            Self::Ndarray => Err(DeviceError::NotCompiled(self, "ndarray")),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            Self::Wgpu => Err(DeviceError::NotCompiled(self, "wgpu")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_case_insensitively() {
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("ndarray".parse::<DeviceChoice>().unwrap(), DeviceChoice::Ndarray);
        assert_eq!("wgpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Wgpu);
        let err = "cuda".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("'cuda'"), "{err}");
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn missing_feature_names_the_feature() {
        let err = DeviceChoice::Wgpu.device().unwrap_err().to_string();
        assert!(err.contains("--features wgpu"), "{err}");
    }
}
