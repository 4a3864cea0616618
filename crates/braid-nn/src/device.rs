//! The compute device, chosen in the config: `[runtime] device = "cpu"` (burn's `flex` backend
//! with braid's own kernels) or `"gpu"` (burn's wgpu backend on Vulkan, WGSL shaders; the
//! `gpu` cargo feature, on by default).
//!
//! GPUs are named as wgpu sorts its adapters: `gpu` (the best one: a discrete GPU if there is
//! one, `CUBECL_WGPU_DEFAULT_DEVICE` overrides it), `gpu:N` (the N-th discrete GPU, from 0),
//! `gpu:integrated:N`, `gpu:virtual:N`, and `gpu:software` (a Vulkan driver running on the
//! CPU, such as Mesa's lavapipe, which CI tests the GPU path on).

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::NnError;

/// Which GPU adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuSelect {
    /// The best adapter wgpu finds.
    Best,
    /// The N-th discrete GPU.
    Discrete(usize),
    /// The N-th integrated GPU.
    Integrated(usize),
    /// The N-th virtual GPU.
    Virtual(usize),
    /// A Vulkan driver on the CPU (lavapipe).
    Software,
}

/// A device named in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceKind {
    /// burn's pure-Rust `flex` CPU backend with braid's kernels.
    #[default]
    Cpu,
    /// A GPU through burn's wgpu backend (Vulkan).
    Gpu(GpuSelect),
}

const ALLOWED: &str = "allowed: \"cpu\", \"gpu\", \"gpu:N\", \"gpu:integrated:N\", \"gpu:virtual:N\", \"gpu:software\"";

impl TryFrom<String> for DeviceKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let index = |i: &str| {
            i.parse::<usize>()
                .map_err(|_| format!("device {s:?}: {i:?} is not a GPU index ({ALLOWED})"))
        };
        match s.split(':').collect::<Vec<_>>().as_slice() {
            ["cpu"] => Ok(Self::Cpu),
            ["gpu"] => Ok(Self::Gpu(GpuSelect::Best)),
            ["gpu", "software"] => Ok(Self::Gpu(GpuSelect::Software)),
            ["gpu", "integrated", i] => Ok(Self::Gpu(GpuSelect::Integrated(index(i)?))),
            ["gpu", "virtual", i] => Ok(Self::Gpu(GpuSelect::Virtual(index(i)?))),
            ["gpu", i] => Ok(Self::Gpu(GpuSelect::Discrete(index(i)?))),
            ["cuda", ..] => Err(format!(
                "device {s:?}: braid has no CUDA backend (burn's downloads LLVM while building); use \"gpu\", which runs on NVIDIA GPUs through their Vulkan driver"
            )),
            _ => Err(format!("unknown device {s:?} ({ALLOWED})")),
        }
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> String {
        match d {
            DeviceKind::Cpu => "cpu".into(),
            DeviceKind::Gpu(GpuSelect::Best) => "gpu".into(),
            DeviceKind::Gpu(GpuSelect::Discrete(i)) => format!("gpu:{i}"),
            DeviceKind::Gpu(GpuSelect::Integrated(i)) => format!("gpu:integrated:{i}"),
            DeviceKind::Gpu(GpuSelect::Virtual(i)) => format!("gpu:virtual:{i}"),
            DeviceKind::Gpu(GpuSelect::Software) => "gpu:software".into(),
        }
    }
}

impl DeviceKind {
    /// The burn device (without autodiff). A GPU is acquired on first use, once per process;
    /// one that is not there is an error naming it, never a panic.
    pub fn device(&self) -> Result<Device, NnError> {
        match self {
            Self::Cpu => Ok(Device::flex()),
            Self::Gpu(select) => gpu::device(*select),
        }
    }

    /// True for devices that parallelise a single model themselves (GPUs).
    pub fn is_accelerator(&self) -> bool {
        matches!(self, Self::Gpu(_))
    }
}

#[cfg(feature = "gpu")]
mod gpu {
    use std::sync::Mutex;

    use burn::tensor::wgpu::WgpuBackend;
    use burn::tensor::{Device, DeviceKind as Adapter};

    use super::GpuSelect;
    use crate::NnError;

    /// Devices acquired so far: wgpu's runtime for an adapter is set up once per process.
    static ACQUIRED: Mutex<Vec<(GpuSelect, Device)>> = Mutex::new(Vec::new());

    pub(super) fn device(select: GpuSelect) -> Result<Device, NnError> {
        let mut acquired = ACQUIRED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, d)) = acquired.iter().find(|(s, _)| *s == select) {
            return Ok(d.clone());
        }
        let adapter = match select {
            GpuSelect::Best => Adapter::DefaultDevice,
            GpuSelect::Discrete(i) => Adapter::DiscreteGpu(i),
            GpuSelect::Integrated(i) => Adapter::IntegratedGpu(i),
            GpuSelect::Virtual(i) => Adapter::VirtualGpu(i),
            GpuSelect::Software => Adapter::Cpu,
        };
        // wgpu panics where a Vulkan loader or adapter is missing in some versions: caught
        // here and reported as the one line it is.
        let tried = std::panic::catch_unwind(|| {
            Device::wgpu_options()
                .device_kind(adapter)
                .graphics_api(WgpuBackend::Vulkan)
                .init()
        });
        let name = String::from(super::DeviceKind::Gpu(select));
        let device = match tried {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(no_gpu(&name, &e.to_string())),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the Vulkan driver failed".into());
                return Err(no_gpu(&name, &why));
            }
        };
        acquired.push((select, device.clone()));
        Ok(device)
    }

    fn no_gpu(name: &str, why: &str) -> NnError {
        // wgpu's message names the request as a Rust structure and lists every adapter: the
        // reason alone.
        let why = why.lines().next().unwrap_or("");
        let why = why.split_once("}: ").map_or(why, |(_, r)| r);
        let why = why
            .split_once(", adapters [")
            .map_or(why, |(r, _)| r)
            .trim();
        NnError::Config(format!(
            "runtime.device = {name:?}: no such GPU through Vulkan ({why}); install the GPU's Vulkan driver (or Mesa's lavapipe for \"gpu:software\"), or use \"cpu\""
        ))
    }
}

#[cfg(not(feature = "gpu"))]
mod gpu {
    use burn::tensor::Device;

    use super::GpuSelect;
    use crate::NnError;

    pub(super) fn device(select: GpuSelect) -> Result<Device, NnError> {
        Err(NnError::Config(format!(
            "runtime.device = {:?}: this braid was built without GPU support (the `gpu` cargo feature, on by default)",
            String::from(super::DeviceKind::Gpu(select))
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip_and_misspellings_say_what_is_allowed() {
        for name in [
            "cpu",
            "gpu",
            "gpu:1",
            "gpu:integrated:0",
            "gpu:virtual:2",
            "gpu:software",
        ] {
            let d = DeviceKind::try_from(name.to_string()).unwrap();
            assert_eq!(String::from(d), name);
        }
        for (bad, says) in [
            ("gpu:x", "not a GPU index"),
            ("gpu:integrated:", "not a GPU index"),
            ("tpu", "allowed: \"cpu\", \"gpu\""),
            ("cuda:0", "no CUDA backend"),
            ("", "unknown device"),
        ] {
            let e = DeviceKind::try_from(bad.to_string()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
