//! The local optimizer: its settings (`[train.optimizer]`) and its state carried between
//! training calls.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, SgdConfig};
use serde::{Deserialize, Serialize};

use crate::NnError;

/// The local optimizer (config: `[train.optimizer]`). A fresh optimizer is made for every
/// local training call, as in Flower's and McMahan et al.'s FedAvg.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// SGD, PyTorch semantics (no dampening; weight decay added to the gradient).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum (0 = plain SGD).
        #[serde(default)]
        momentum: f64,
        /// L2 weight decay.
        #[serde(default)]
        weight_decay: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
    },
    /// AdamW (decoupled weight decay), PyTorch defaults.
    Adamw {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        #[serde(default = "beta1")]
        beta1: f32,
        /// Second-moment decay.
        #[serde(default = "beta2")]
        beta2: f32,
        /// Numerical epsilon.
        #[serde(default = "eps")]
        eps: f32,
        /// Decoupled weight decay.
        #[serde(default = "adamw_wd")]
        weight_decay: f32,
    },
}

fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.999
}
fn eps() -> f32 {
    1e-8
}
fn adamw_wd() -> f32 {
    0.01
}

impl OptimizerConfig {
    /// Checks the hyper-parameters; the error names the field.
    pub fn validate(&self) -> Result<(), NnError> {
        let bad = |f: &str, v: f64, rule: &str| {
            Err(NnError::Config(format!("train.optimizer.{f} = {v} {rule}")))
        };
        let lr = self.lr();
        if !(lr > 0.0 && lr <= 1000.0) {
            return bad("lr", lr, "must be in (0, 1000]");
        }
        let weight_decay = match *self {
            Self::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad("momentum", momentum, "must be in [0, 1)");
                }
                if nesterov && momentum == 0.0 {
                    return Err(NnError::Config(
                        "train.optimizer.nesterov = true needs momentum > 0".into(),
                    ));
                }
                weight_decay
            }
            Self::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                for (f, v) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(&v) {
                        return bad(f, f64::from(v), "must be in [0, 1)");
                    }
                }
                if !(eps > 0.0 && eps <= 1.0) {
                    return bad("eps", f64::from(eps), "must be in (0, 1]");
                }
                f64::from(weight_decay)
            }
        };
        if !(0.0..=1000.0).contains(&weight_decay) {
            return bad("weight_decay", weight_decay, "must be in [0, 1000]");
        }
        Ok(())
    }

    pub(crate) fn lr(&self) -> f64 {
        match *self {
            Self::Sgd { lr, .. } | Self::Adamw { lr, .. } => lr,
        }
    }

    pub(crate) fn build(&self) -> burn::optim::ModuleOptimizer {
        match *self {
            Self::Sgd {
                momentum,
                weight_decay,
                nesterov,
                ..
            } => {
                let mut c = SgdConfig::new();
                if momentum > 0.0 {
                    c = c.with_momentum(Some(
                        MomentumConfig::new()
                            .with_momentum(momentum)
                            .with_dampening(0.0)
                            .with_nesterov(nesterov),
                    ));
                }
                if weight_decay > 0.0 {
                    c = c.with_weight_decay(Some(WeightDecayConfig::new(weight_decay as f32)));
                }
                c.init()
            }
            Self::Adamw {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => AdamWConfig::new()
                .with_beta_1(beta1)
                .with_beta_2(beta2)
                .with_epsilon(eps)
                .with_weight_decay(weight_decay)
                .init(),
        }
    }
}

/// Optimizer state (momentum buffers, Adam moments) carried between training calls.
///
/// Keyed by parameter position (trainers number their parameters 0, 1, 2, ...), so state saved
/// by one trainer is valid in any other trainer of the same architecture. Empty for plain SGD.
#[derive(Debug, Default)]
pub struct OptimizerState {
    pub(crate) record: Option<burn::optim::OptimizerRecord>,
}

impl OptimizerState {
    /// True before the first step, and always for plain SGD (which keeps no state).
    pub fn is_empty(&self) -> bool {
        self.record.is_none()
    }

    /// The state as bytes (burn's burnpack format), for checkpoints; empty when there is no
    /// state. Takes `&mut` because burn's record is consumed by serializing; it is rebuilt.
    pub fn to_bytes(&mut self) -> Result<Vec<u8>, NnError> {
        let Some(record) = self.record.take() else {
            return Ok(Vec::new());
        };
        let err = |e: burn::store::RecordError| {
            NnError::Config(format!("cannot serialize the optimizer state: {e}"))
        };
        let bytes = canonical(record.into_bytes().map_err(err)?)
            .map_err(|e| NnError::Config(format!("cannot serialize the optimizer state: {e}")))?;
        let out = bytes.to_vec();
        self.record = Some(burn::optim::OptimizerRecord::from_bytes(bytes).map_err(err)?);
        Ok(out)
    }

    pub(crate) fn take_record(&mut self) -> Option<burn::optim::OptimizerRecord> {
        self.record.take()
    }

    /// Keeps `record` unless it is empty (plain SGD keeps no state).
    pub(crate) fn put_record(&mut self, record: burn::optim::OptimizerRecord) {
        if !record.is_empty() {
            self.record = Some(record);
        }
    }

    /// Reads what [`OptimizerState::to_bytes`] wrote (empty: no state). Malformed bytes are an
    /// error; whether the state fits the model is checked when it is next used.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, NnError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        let record = burn::optim::OptimizerRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(
            bytes.to_vec(),
        ))
        .map_err(|e| NnError::Config(format!("malformed optimizer state: {e}")))?;
        Ok(Self {
            record: Some(record),
        })
    }
}

/// A burnpack buffer written again with its tensors in name order. burn lays the tensors'
/// data out in the order its optimizer's hash map yields them, which changes from process to
/// process; so that the same state is the same bytes (audits name states by their hash), it
/// is rewritten in the order the reader lists them.
fn canonical(
    bytes: burn::tensor::Bytes,
) -> Result<burn::tensor::Bytes, burn::store::burn_pack::Error> {
    use burn::store::burn_pack::{Reader, Writer};
    let reader = Reader::from_bytes(bytes)?;
    let scalars = reader.scalars().clone();
    let metadata = reader.metadata().clone();
    let mut writer = Writer::new(reader.into_tensors()?);
    for (key, value) in &scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in &metadata {
        writer = writer.with_metadata(key, value);
    }
    writer.into_bytes()
}
