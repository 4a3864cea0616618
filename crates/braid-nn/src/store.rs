//! Weights as safetensors files that PyTorch can read (`safetensors.torch.load_file`).
//!
//! Tensors are named by module path (`blocks.0.convs.0.weight`, `fc.1.bias`); linear weights
//! are written in PyTorch's `[out, in]` layout. Files are written atomically: to a temporary
//! file in the same directory, synced, then renamed over the target.

use std::path::Path;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::arch::Arch;
use crate::flat;
use crate::net::Net;
use crate::NnError;

fn err(path: &Path, why: impl ToString) -> NnError {
    NnError::Store {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Writes `params` of `arch` to `path` atomically.
pub fn save(arch: &Arch, params: &[f32], path: &Path) -> Result<(), NnError> {
    let net = Net::new(arch, &burn::tensor::Device::flex());
    save_module(net, arch.name.as_str(), params, path)
}

/// Writes `params` into `module` (named `name` in errors) and the module to `path` atomically.
pub fn save_module<M: Module>(
    module: M, name: &str, params: &[f32], path: &Path,
) -> Result<(), NnError> {
    if params.len() != module.num_params() {
        return Err(NnError::ParamCount {
            model: name.into(),
            expected: module.num_params(),
            got: params.len(),
        });
    }
    let net = flat::load_flat(module, params);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weights"),
        std::process::id()
    ));
    // burn's default metadata (format, producer, version) is written in hash-map order, which
    // changes from process to process: the same weights would be other bytes, and a result
    // manifest another hash. One key, PyTorch's own, keeps the file's bytes fixed.
    let mut store = SafetensorsStore::from_file(&tmp)
        .overwrite(true)
        .clear_metadata()
        .metadata("format", "pt")
        .with_to_adapter(BurnToPyTorchAdapter);
    net.save_into(&mut store)
        .map_err(|e| err(path, format!("{e:?}")))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    Ok(())
}

/// Reads parameters of `arch` from `path`; a file for another architecture is an error.
pub fn load(arch: &Arch, path: &Path) -> Result<Vec<f32>, NnError> {
    load_module(
        Net::new(arch, &burn::tensor::Device::flex()),
        arch.name.as_str(),
        path,
    )
}

/// Reads the parameters of `module` (named `name` in errors) from `path`, as one flat vector;
/// a file for another model is an error.
pub fn load_module<M: Module>(module: M, name: &str, path: &Path) -> Result<Vec<f32>, NnError> {
    if !path.is_file() {
        return Err(err(path, "no such file"));
    }
    let size = std::fs::metadata(path).map_err(|e| err(path, e))?.len();
    let limit = braid_data::max_file_bytes();
    if size > limit {
        return Err(err(
            path,
            format!("{size} bytes is more than the {limit} bytes a weights file may have here"),
        ));
    }
    let mut net = module;
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true);
    let result = net
        .load_from(&mut store)
        .map_err(|e| err(path, one_line(&format!("{e}"))))?;
    let mut why = Vec::new();
    if !result.missing.is_empty() {
        let names: Vec<&str> = result.missing.iter().map(|(n, _)| n.as_str()).collect();
        why.push(format!("missing {}", list(&names)));
    }
    if !result.unused.is_empty() {
        let names: Vec<&str> = result.unused.iter().map(String::as_str).collect();
        why.push(format!("not in the model: {}", list(&names)));
    }
    for e in &result.errors {
        why.push(one_line(&e.to_string()));
    }
    if !why.is_empty() {
        return Err(err(
            path,
            format!("does not fit model {name}: {}", why.join("; ")),
        ));
    }
    let params = flat::flatten(&net);
    if !braid_core::params::all_finite(&params) {
        return Err(err(
            path,
            "holds values that are not finite (NaN or infinity)",
        ));
    }
    Ok(params)
}

/// At most five names, then how many more.
fn list(names: &[&str]) -> String {
    let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    match names.len() {
        n if n > 5 => format!("{shown} and {} more", n - 5),
        _ => shown,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ModelName;

    #[test]
    fn the_same_weights_are_the_same_bytes_every_time() {
        let arch = Arch::new(ModelName::CnnSmall, &[1, 28, 28], 10).expect("arch");
        let params = arch.init_params(4);
        let dir = tempfile::tempdir().expect("tempdir");
        let files: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                let path = dir.path().join(format!("w{i}.safetensors"));
                save(&arch, &params, &path).expect("save");
                std::fs::read(&path).expect("read")
            })
            .collect();
        assert!(files.iter().all(|f| f == &files[0]));
        // The header's metadata is PyTorch's one key, and the weights read back.
        let n = u64::from_le_bytes(files[0][..8].try_into().expect("8 bytes")) as usize;
        let header = std::str::from_utf8(&files[0][8..8 + n]).expect("utf-8");
        assert!(
            header.contains(r#""__metadata__":{"format":"pt"}"#),
            "{header}"
        );
        let back = load(&arch, &dir.path().join("w0.safetensors")).expect("load");
        assert_eq!(back, params);
    }
}
