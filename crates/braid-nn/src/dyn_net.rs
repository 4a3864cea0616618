//! A burn module of any [`Model`] type behind a trait object, for computations over several
//! models of different types at once: mutual learning's groups ([`crate::mutual`]) and split
//! learning's two parts ([`crate::split`]).

use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Gradients, Tensor};

use crate::model::Model;

/// What braid does with a module whose type it does not know.
pub(crate) trait DynNet: Send {
    /// Writes `params` into the module (the caller checked their count; optimizer state stays
    /// attached, see [`crate::flat`]).
    fn load(&mut self, params: &[f32]);
    /// Outputs for a batch, in the autodiff graph when the module is on an autodiff device.
    fn forward(&self, x: Tensor<2>) -> Tensor<2>;
    /// Outputs for a batch without autodiff (the module's validation snapshot).
    fn forward_valid(&self, x: Tensor<2>) -> Tensor<2>;
    /// This module's gradients, taken out of `grads` (which may hold other modules' too).
    fn take_grads(&self, grads: &mut Gradients) -> GradientsParams;
    /// Each parameter's gradient in the flat order (zeros where `grads` has none).
    fn read_grads(&self, grads: &GradientsParams) -> Vec<f32>;
    /// Every parameter as one tensor in the flat order, in the autodiff graph.
    fn concat(&self) -> Tensor<1>;
    /// One optimizer step with `grads`.
    fn step(&mut self, optim: &mut ModuleOptimizer, lr: f64, grads: GradientsParams);
    /// The parameters, flat.
    fn params(&self) -> Vec<f32>;
    /// Number of parameters.
    fn num_params(&self) -> usize;
}

/// A [`DynNet`] of module type `M`.
pub(crate) struct Held<M: Model> {
    /// The module as built: what a call starts from if the kept one was lost.
    template: M,
    model: Option<M>,
}

impl<M: Model> Held<M> {
    /// Holds `module` (its parameter ids renumbered by the caller where optimizer state must
    /// move between instances).
    pub(crate) fn new(module: M) -> Self {
        Self {
            template: module.clone(),
            model: Some(module),
        }
    }

    fn module(&self) -> &M {
        self.model.as_ref().unwrap_or(&self.template)
    }

    fn take(&mut self) -> M {
        self.model.take().unwrap_or_else(|| self.template.clone())
    }
}

/// Collects each parameter's gradient in visiting order (zeros where there is none).
struct GradReader<'a> {
    grads: &'a GradientsParams,
    out: Vec<f32>,
}

impl ModuleVisitor for GradReader<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let n = param.lazy_shape().num_elements();
        let start = self.out.len();
        if let Some(g) = self.grads.get::<D>(param.id) {
            let values = g.into_data().try_into_vec_as::<f32>().unwrap_or_default();
            self.out.extend_from_slice(&values);
        }
        self.out.resize(start + n, 0.0);
    }
}

impl<M: Model> DynNet for Held<M> {
    fn load(&mut self, params: &[f32]) {
        let module = self.take();
        self.model = Some(crate::flat::load_flat(module, params));
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.module().forward(x)
    }

    fn forward_valid(&self, x: Tensor<2>) -> Tensor<2> {
        self.module().valid().forward(x)
    }

    fn take_grads(&self, grads: &mut Gradients) -> GradientsParams {
        GradientsParams::from_module(grads, self.module())
    }

    fn read_grads(&self, grads: &GradientsParams) -> Vec<f32> {
        let mut r = GradReader {
            grads,
            out: Vec::with_capacity(self.num_params()),
        };
        self.module().visit(&mut r);
        r.out
    }

    fn concat(&self) -> Tensor<1> {
        crate::flat::concat(self.module())
    }

    fn step(&mut self, optim: &mut ModuleOptimizer, lr: f64, grads: GradientsParams) {
        let module = self.take();
        self.model = Some(optim.step(lr, module, grads));
    }

    fn params(&self) -> Vec<f32> {
        crate::flat::flatten(self.module())
    }

    fn num_params(&self) -> usize {
        self.module().num_params()
    }
}
