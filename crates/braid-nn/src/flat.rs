//! All parameters of a module as one `Vec<f32>`, in the module's visiting order.
//!
//! Writing goes through `Param::transform_for_load`, which keeps the parameter's id (so the
//! optimizer state stays attached) and marks it `require_grad` again on an autodiff device: a
//! tensor freshly made from data is otherwise an untracked leaf and would silently get no gradient.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};

struct Reader(Vec<f32>);

impl ModuleVisitor for Reader {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let data = param.val().into_data();
        // Parameters are always float tensors; a conversion failure would be a burn bug.
        let values = data.try_into_vec_as::<f32>().unwrap_or_default();
        self.0.extend_from_slice(&values);
    }
}

/// Reads every float parameter of `module` into one vector.
pub fn flatten<M: Module>(module: &M) -> Vec<f32> {
    let mut r = Reader(Vec::with_capacity(module.num_params()));
    module.visit(&mut r);
    r.0
}

struct Writer<'a> {
    src: &'a [f32],
    offset: usize,
}

impl ModuleMapper for Writer<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shape = param.lazy_shape();
        let n = shape.num_elements();
        let device = param.lazy_device();
        let end = (self.offset + n).min(self.src.len());
        let mut values = self.src[self.offset.min(end)..end].to_vec();
        values.resize(n, 0.0); // only reachable when the caller skipped the length check
        self.offset += n;
        let tensor = Tensor::<D>::from_data(TensorData::new(values, shape), &device);
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Writes `values` into `module`'s parameters. The caller checks `values.len() == module.num_params()`.
pub fn load_flat<M: Module>(module: M, values: &[f32]) -> M {
    module.map(&mut Writer {
        src: values,
        offset: 0,
    })
}

struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().reshape([-1]));
    }
}

/// Every float parameter of `module` as one tensor (in visiting order) that stays in the
/// autodiff graph, for losses over all parameters (FedProx's proximal term, surrogate losses).
pub fn concat<M: Module>(module: &M) -> Tensor<1> {
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    Tensor::cat(c.0, 0)
}

struct Renumber(u64);

impl ModuleMapper for Renumber {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let id = ParamId::from(self.0);
        self.0 += 1;
        let tensor = param.val();
        param.transform_for_load(tensor, id)
    }
}

/// Gives `module`'s parameters the ids 0, 1, 2, ... in visiting order, so optimizer state
/// (keyed by parameter id) saved from one module instance applies to any other of the same
/// architecture: a peer's momentum can move between worker threads and processes.
pub fn renumber<M: Module>(module: M) -> M {
    module.map(&mut Renumber(0))
}
