//! The compute device, chosen in the config (`[runtime] device = "cpu" | "cuda" | "cuda:N"`).

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::NnError;

/// A device named in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    /// burn's pure-Rust `flex` CPU backend.
    #[default]
    Cpu,
    /// burn's CUDA backend, GPU `index` (needs the `cuda` cargo feature).
    Cuda(usize),
}

impl TryFrom<String> for DeviceKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    format!("unknown device {other:?} (allowed: \"cpu\", \"cuda\", \"cuda:N\")")
                }),
        }
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        match d {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Cuda(i) => format!("cuda:{i}"),
        }
    }
}

impl DeviceKind {
    /// The burn device (without autodiff).
    pub fn device(&self) -> Result<Device, NnError> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            #[cfg(feature = "cuda")]
            Self::Cuda(i) => Ok(Device::cuda(*i)),
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => Err(NnError::Config(
                "runtime.device = \"cuda\" but this braid was built without CUDA; rebuild with `cargo build --release --features cuda`".into(),
            )),
        }
    }

    /// True for devices that parallelise a single model themselves (GPUs): the engine then runs
    /// clients one after another instead of one per CPU thread.
    pub fn is_accelerator(&self) -> bool {
        matches!(self, Self::Cuda(_))
    }
}
