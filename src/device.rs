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
    /// An NVIDIA GPU through CUDA, by its index (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// The requested back-end was not compiled into this binary, or is unknown.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected one of cpu, ndarray, wgpu, cuda, cuda:N")]
    Unknown(String),
    #[error(
        "device '{0}' is not available: this xca binary was built without the cargo feature '{1}' \
         (rebuild with `cargo build --release --features {1}`)"
    )]
    NotCompiled(DeviceChoice, &'static str),
    #[error("--devices needs at least two devices (got {0}); for one, use --device")]
    TooFewParallel(usize),
    #[error("--devices names '{0}' twice")]
    Repeated(DeviceChoice),
    #[error(
        "--devices cannot use '{0}': {reason}",
        reason = match .0 {
            DeviceChoice::Cpu | DeviceChoice::Ndarray =>
                "burn has a single CPU device, which already uses every core (train with --device cpu)",
            _ => "wgpu drives one adapter; data parallelism needs NVIDIA GPUs through the cuda feature (--devices cuda:0,cuda:1)",
        }
    )]
    NotParallel(DeviceChoice),
}

/// Check a `--devices` list for data-parallel training: two or more distinct CUDA GPUs.
/// burn's CPU back-ends have one device, and wgpu one adapter, so the list is refused there
/// with the reason (before any back-end is started).
///
/// # Errors
/// Fewer than two devices, a device named twice, or a back-end that has only one device.
pub fn check_parallel(devices: &[DeviceChoice]) -> Result<(), DeviceError> {
    if let Some(d) = devices.iter().find(|d| !matches!(d, DeviceChoice::Cuda(_))) {
        return Err(DeviceError::NotParallel(*d));
    }
    let repeated = (0..devices.len()).find(|&i| devices[..i].contains(&devices[i]));
    if let Some(i) = repeated {
        return Err(DeviceError::Repeated(devices[i]));
    }
    if devices.len() < 2 {
        return Err(DeviceError::TooFewParallel(devices.len()));
    }
    Ok(())
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(Self::Cuda(i)),
                _ => Err(DeviceError::Unknown(other.to_string())),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Ndarray => f.write_str("ndarray"),
            Self::Wgpu => f.write_str("wgpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
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
            #[cfg(feature = "cuda")]
            Self::Cuda(i) => Ok(Device::cuda(i)),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => Err(DeviceError::NotCompiled(self, "cuda")),
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
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(0));
        assert_eq!("CUDA:1".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda(1));
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains(&format!("'{bad}'")) && err.contains("cuda:N"), "{err}");
        }
    }

    #[test]
    fn parallel_devices_are_distinct_cuda_gpus() {
        let list = |s: &str| {
            s.split(',')
                .map(|d| d.parse::<DeviceChoice>().unwrap())
                .collect::<Vec<_>>()
        };
        assert!(check_parallel(&list("cuda:0,cuda:1")).is_ok());
        assert!(check_parallel(&list("cuda:2,cuda:0,cuda:1")).is_ok());
        let err = |s: &str| check_parallel(&list(s)).unwrap_err().to_string();
        assert_eq!(
            err("cuda:0"),
            "--devices needs at least two devices (got 1); for one, use --device"
        );
        assert_eq!(err("cuda:0,cuda:1,cuda:0"), "--devices names 'cuda:0' twice");
        assert_eq!(err("cuda,cuda:0"), "--devices names 'cuda:0' twice");
        for (s, bad) in [("cpu,cpu", "cpu"), ("cuda:0,ndarray", "ndarray")] {
            let e = err(s);
            assert!(
                e.starts_with(&format!("--devices cannot use '{bad}': burn has a single CPU device")),
                "{e}"
            );
        }
        let e = err("wgpu,cuda:1");
        assert!(e.contains("'wgpu'") && e.contains("--devices cuda:0,cuda:1"), "{e}");
        assert!(check_parallel(&[]).unwrap_err().to_string().contains("got 0"));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_cuda_feature_names_the_feature() {
        let err = DeviceChoice::Cuda(0).device().unwrap_err().to_string();
        assert!(err.contains("'cuda:0'") && err.contains("--features cuda"), "{err}");
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn missing_feature_names_the_feature() {
        let err = DeviceChoice::Wgpu.device().unwrap_err().to_string();
        assert!(err.contains("--features wgpu"), "{err}");
    }
}
