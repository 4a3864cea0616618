//! The messages nodes exchange, and their byte encoding.
//!
//! Every byte count braid reports is the length of this encoding: the in-process transport
//! counts [`Payload::encoded_len`] (equal to `encode().len()`, tested), and a network transport
//! sends exactly [`Payload::encode`]. [`Payload::decode`] validates everything (magic, version,
//! kind, lengths against a configured maximum, exact total size) before anything is used.

use std::sync::Arc;

use thiserror::Error;

/// Identifies a node in a run (the server of server-based FL is node 0).
pub type NodeId = u32;

const MAGIC: &[u8; 3] = b"BRD";
const VERSION: u8 = 1;
const KIND_TRAIN_REQUEST: u8 = 1;
const KIND_TRAIN_REPLY: u8 = 2;
const KIND_GOSSIP: u8 = 3;
const KIND_SNAPSHOT: u8 = 4;
const KIND_SHUTDOWN: u8 = 5;
const KIND_JOIN_REQUEST: u8 = 6;
const KIND_JOIN_REPLY: u8 = 7;
const KIND_HALT: u8 = 8;
const KIND_PACKED_REQUEST: u8 = 9;
const KIND_PACKED_REPLY: u8 = 10;
const KIND_SPLIT_REQUEST: u8 = 11;
const KIND_SPLIT_ACTIVATIONS: u8 = 12;
const KIND_SPLIT_GRADIENT: u8 = 13;
const KIND_SPLIT_CLIENT_GRAD: u8 = 14;
const KIND_MUTUAL_MODEL: u8 = 15;
const KIND_MUTUAL_REPORT: u8 = 16;
const KIND_SECAGG: u8 = 17;
const KIND_DELTA_REQUEST: u8 = 18;
const KIND_PACKED_GOSSIP: u8 = 19;
const KIND_PACKED_MUTUAL_MODEL: u8 = 20;
const KIND_PACKED_SPLIT_REQUEST: u8 = 21;
const KIND_PACKED_SPLIT: u8 = 22;
/// Longest public key or signature a halt may carry.
const MAX_HALT_FIELD: usize = 1024;

/// A message body.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Server to client: train from these parameters for round `round`.
    TrainRequest {
        /// Round number, from 1.
        round: u32,
        /// Global model parameters (shared, not copied, between the clients of a round in-process).
        params: Arc<Vec<f32>>,
    },
    /// Client to server: the locally trained parameters.
    TrainReply {
        /// Round being answered.
        round: u32,
        /// Training samples the client holds (FedAvg's weight).
        num_samples: u64,
        /// Local optimizer steps taken.
        steps: u32,
        /// Mean local training loss.
        train_loss: f32,
        /// Parameters after local training.
        params: Vec<f32>,
    },
    /// Peer to peer (decentralized SGD): my parameters for gossip round `round`.
    Gossip {
        /// Communication round, from 1.
        round: u32,
        /// The sender's parameters (shared between its out-neighbours in-process).
        params: Arc<Vec<f32>>,
    },
    /// Peer to monitor (decentralized SGD): my local model at an evaluation point, for the
    /// run's metrics and the counterfactual global merge. Measurement traffic, not gossip.
    Snapshot {
        /// Local steps taken so far.
        step: u64,
        /// Mean training loss since the previous snapshot.
        train_loss: f32,
        /// Test accuracy of the local model.
        accuracy: f32,
        /// Test loss of the local model.
        loss: f32,
        /// Gossip bytes this peer has sent so far.
        gossip_bytes: u64,
        /// The local parameters (shared with the peer's own copy in-process).
        params: Arc<Vec<f32>>,
    },
    /// Server to client: the run is over (after round `round`); the client may exit.
    Shutdown {
        /// The last round.
        round: u32,
    },
    /// Peer to peer (decentralized SGD): I restarted; where is the run now?
    JoinRequest {
        /// Local steps the asking peer has (from its checkpoint, 0 without one).
        step: u64,
    },
    /// Peer to peer: the answer to a [`Payload::JoinRequest`], the sender's current state.
    JoinReply {
        /// Local steps the sender has taken.
        step: u64,
        /// The last communication round the sender has mixed.
        mixed_through: u32,
        /// The sender's parameters (those it sent for round `mixed_through + 1` if it is
        /// waiting for that round's gossip).
        params: Arc<Vec<f32>>,
    },
    /// Server to client: a [`Payload::TrainRequest`] whose model is compressed
    /// (`braid_core::compress`).
    PackedRequest {
        /// Round number, from 1.
        round: u32,
        /// The global model, compressed (shared between the clients of a round in-process).
        model: Arc<Vec<u8>>,
    },
    /// Server to client (`compression.downlink_delta`): train from your copy of the model of
    /// round `base` plus this compressed change, which makes the model of round `round`.
    DeltaRequest {
        /// Round number, from 1.
        round: u32,
        /// The round of the copy the change applies to.
        base: u32,
        /// The change, compressed (shared between the clients of a round in-process).
        delta: Arc<Vec<u8>>,
    },
    /// Either way (mutual learning with `compression.models`): a [`Payload::MutualModel`]
    /// whose parameters are compressed.
    PackedMutualModel {
        /// Round number, from 1.
        round: u32,
        /// The model's architecture (index into the run's list).
        arch: u32,
        /// The parameters, compressed.
        model: Arc<Vec<u8>>,
    },
    /// Peer to peer (dsgd with `compression.gossip`): a [`Payload::Gossip`] whose parameters
    /// are compressed.
    PackedGossip {
        /// Communication round.
        round: u32,
        /// The sender's parameters, compressed (shared between its out-neighbours in-process).
        model: Arc<Vec<u8>>,
    },
    /// Client to server: a [`Payload::TrainReply`] carrying the compressed update (trained
    /// parameters minus the model the client received) instead of the parameters.
    PackedReply {
        /// Round being answered.
        round: u32,
        /// Training samples the client holds (FedAvg's weight).
        num_samples: u64,
        /// Local optimizer steps taken.
        steps: u32,
        /// Mean local training loss.
        train_loss: f32,
        /// The update, compressed.
        update: Vec<u8>,
    },
    /// Secure aggregation (FedAvg family), either way: a `braid_core::secagg::Message` of
    /// round `round`, encoded; its own decoder validates it.
    SecAgg {
        /// Round number, from 1.
        round: u32,
        /// The encoded protocol message (shared between recipients in-process).
        body: Arc<Vec<u8>>,
    },
    /// Server to client (split learning): run your part on `count` of your samples, starting
    /// at position `offset` of your epoch-`epoch` sample order, with these client-part
    /// parameters; send back the activations.
    SplitRequest {
        /// Global step, from 1.
        step: u64,
        /// Epoch, from 1 (selects the client's shuffled sample order).
        epoch: u32,
        /// Position in that order of the first sample to use.
        offset: u32,
        /// Samples to use.
        count: u32,
        /// The client part's current parameters (shared between the step's clients in-process).
        params: Arc<Vec<f32>>,
    },
    /// Client to server (split learning): activations at the cut for a [`Payload::SplitRequest`].
    SplitActivations {
        /// The step being answered.
        step: u64,
        /// Labels of the samples, one byte each.
        labels: Vec<u8>,
        /// Activations, sample by sample.
        acts: Vec<f32>,
    },
    /// Server to client (split learning): the loss's gradient with respect to the client's
    /// activations of step `step`.
    SplitGradient {
        /// The step.
        step: u64,
        /// The gradient, same layout as the activations.
        grad: Vec<f32>,
    },
    /// Client to server (split learning): the gradient of the client part's parameters.
    SplitClientGrad {
        /// The step.
        step: u64,
        /// One value per client-part parameter.
        grad: Vec<f32>,
    },
    /// Server to client (split learning with `compression.split`): a
    /// [`Payload::SplitRequest`] whose client-part parameters are compressed.
    PackedSplitRequest {
        /// Global step, from 1.
        step: u64,
        /// Epoch, from 1.
        epoch: u32,
        /// Position in the client's epoch order of the first sample to use.
        offset: u32,
        /// Samples to use.
        count: u32,
        /// The client part's parameters, compressed (shared between the step's clients).
        params: Arc<Vec<u8>>,
    },
    /// Either way (split learning with `compression.split`): activations, a gradient at the
    /// cut or a client-part gradient, compressed.
    PackedSplit {
        /// The step.
        step: u64,
        /// Which of the three it is.
        part: SplitPart,
        /// Labels of the samples (activations only; empty otherwise).
        labels: Vec<u8>,
        /// The values, compressed.
        data: Vec<u8>,
    },
    /// Participant to participant (mutual learning: DFML, Def-KT, FML): a whole model for
    /// round `round`, to be trained by mutual learning or handed back after it.
    MutualModel {
        /// Round, from 1.
        round: u32,
        /// The model's architecture: an index into the run's list of models.
        arch: u32,
        /// Its parameters.
        params: Arc<Vec<f32>>,
    },
    /// Client to monitor (mutual learning): how the client's models do after round `round`.
    MutualReport {
        /// Round, from 1.
        round: u32,
        /// The client's architecture (index into the run's list of models).
        arch: u32,
        /// Test accuracy of the current model.
        accuracy: f32,
        /// Its test loss.
        loss: f32,
        /// Test accuracy of the peak model (NaN before the first peak).
        peak_accuracy: f32,
        /// Its test loss (NaN before the first peak).
        peak_loss: f32,
        /// Mean training loss of the training this client did since its last report (NaN if none).
        train_loss: f32,
        /// Bytes of models this client has sent so far.
        bytes_sent: u64,
    },
    /// Anyone to node: stop the run. Signed by a key the run authorizes to halt it (checked
    /// by the network runtime, which obeys and forwards it; algorithms never see it).
    Halt {
        /// The run's configuration hash (SHA-256).
        run: [u8; 32],
        /// When it was issued (Unix seconds).
        issued_at: u64,
        /// The signer's public key (libp2p protobuf encoding).
        signer: Vec<u8>,
        /// Signature over [`halt_message`]`(run, issued_at)`.
        signature: Vec<u8>,
    },
}

/// The bytes a halt's signature covers.
pub fn halt_message(run: &[u8; 32], issued_at: u64) -> Vec<u8> {
    let mut m = b"braid-halt-v1".to_vec();
    m.extend_from_slice(run);
    m.extend_from_slice(&issued_at.to_le_bytes());
    m
}

/// Why a message was rejected.
#[derive(Debug, Error, PartialEq)]
pub enum WireError {
    /// Too short to hold what its header announces.
    #[error("message truncated: {0}")]
    Truncated(String),
    /// Not a braid message, or an unknown version or kind.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Announces more parameters than allowed.
    #[error("message carries {got} parameters, more than the allowed {max}")]
    TooLarge {
        /// Announced count.
        got: usize,
        /// Configured maximum.
        max: usize,
    },
}

/// A split request's step, epoch, offset and count.
fn put_window(out: &mut Vec<u8>, step: u64, epoch: u32, offset: u32, count: u32) {
    out.extend_from_slice(&step.to_le_bytes());
    for v in [epoch, offset, count] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A u32 length, then the bytes.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What a [`Payload::PackedSplit`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitPart {
    /// A [`Payload::SplitActivations`].
    Activations,
    /// A [`Payload::SplitGradient`].
    Gradient,
    /// A [`Payload::SplitClientGrad`].
    ClientGrad,
}

impl SplitPart {
    fn code(self) -> u8 {
        match self {
            Self::Activations => 0,
            Self::Gradient => 1,
            Self::ClientGrad => 2,
        }
    }
}

impl Payload {
    /// Short name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TrainRequest { .. } => "train-request",
            Self::TrainReply { .. } => "train-reply",
            Self::Gossip { .. } => "gossip",
            Self::Snapshot { .. } => "snapshot",
            Self::Shutdown { .. } => "shutdown",
            Self::JoinRequest { .. } => "join-request",
            Self::JoinReply { .. } => "join-reply",
            Self::Halt { .. } => "halt",
            Self::PackedRequest { .. } => "packed-request",
            Self::DeltaRequest { .. } => "delta-request",
            Self::PackedGossip { .. } => "packed-gossip",
            Self::PackedMutualModel { .. } => "packed-mutual-model",
            Self::PackedReply { .. } => "packed-reply",
            Self::SecAgg { .. } => "secagg",
            Self::SplitRequest { .. } => "split-request",
            Self::SplitActivations { .. } => "split-activations",
            Self::SplitGradient { .. } => "split-gradient",
            Self::SplitClientGrad { .. } => "split-client-grad",
            Self::PackedSplitRequest { .. } => "packed-split-request",
            Self::PackedSplit { .. } => "packed-split",
            Self::MutualModel { .. } => "mutual-model",
            Self::MutualReport { .. } => "mutual-report",
        }
    }

    /// Length of [`Payload::encode`]'s output, without encoding.
    pub fn encoded_len(&self) -> usize {
        let header = MAGIC.len() + 2;
        match self {
            Self::TrainRequest { params, .. } => header + 4 + 4 + 4 * params.len(),
            Self::TrainReply { params, .. } => header + 4 + 8 + 4 + 4 + 4 + 4 * params.len(),
            Self::Gossip { params, .. } => header + 4 + 4 + 4 * params.len(),
            Self::Snapshot { params, .. } => header + 8 + 4 + 4 + 4 + 8 + 4 + 4 * params.len(),
            Self::Shutdown { .. } => header + 4,
            Self::JoinRequest { .. } => header + 8,
            Self::JoinReply { params, .. } => header + 8 + 4 + 4 + 4 * params.len(),
            Self::PackedRequest { model, .. } => header + 4 + 4 + model.len(),
            Self::DeltaRequest { delta, .. } => header + 4 + 4 + 4 + delta.len(),
            Self::PackedGossip { model, .. } => header + 4 + 4 + model.len(),
            Self::PackedMutualModel { model, .. } => header + 4 + 4 + 4 + model.len(),
            Self::PackedReply { update, .. } => header + 4 + 8 + 4 + 4 + 4 + update.len(),
            Self::SecAgg { body, .. } => header + 4 + 4 + body.len(),
            Self::SplitRequest { params, .. } => header + 8 + 4 + 4 + 4 + 4 + 4 * params.len(),
            Self::PackedSplitRequest { params, .. } => header + 8 + 4 + 4 + 4 + 4 + params.len(),
            Self::PackedSplit { labels, data, .. } => {
                header + 8 + 1 + 4 + labels.len() + 4 + data.len()
            }
            Self::SplitActivations { labels, acts, .. } => {
                header + 8 + 4 + labels.len() + 4 + 4 * acts.len()
            }
            Self::SplitGradient { grad, .. } | Self::SplitClientGrad { grad, .. } => {
                header + 8 + 4 + 4 * grad.len()
            }
            Self::MutualModel { params, .. } => header + 4 + 4 + 4 + 4 * params.len(),
            Self::MutualReport { .. } => header + 4 + 4 + 5 * 4 + 8,
            Self::Halt {
                signer, signature, ..
            } => {
                header
                    + 32
                    + 8
                    + 4
                    + signer.len().min(MAX_HALT_FIELD)
                    + signature.len().min(MAX_HALT_FIELD)
            }
        }
    }

    /// The byte encoding (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        let put_params = |out: &mut Vec<u8>, p: &[f32]| {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            // One resize, then fixed-size chunks: compiles to a straight copy on
            // little-endian machines instead of a capacity check per float.
            let start = out.len();
            out.resize(start + 4 * p.len(), 0);
            for (dst, v) in out[start..].chunks_exact_mut(4).zip(p) {
                dst.copy_from_slice(&v.to_le_bytes());
            }
        };
        match self {
            Self::TrainRequest { round, params } => {
                out.push(KIND_TRAIN_REQUEST);
                out.extend_from_slice(&round.to_le_bytes());
                put_params(&mut out, params);
            }
            Self::TrainReply {
                round,
                num_samples,
                steps,
                train_loss,
                params,
            } => {
                out.push(KIND_TRAIN_REPLY);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&num_samples.to_le_bytes());
                out.extend_from_slice(&steps.to_le_bytes());
                out.extend_from_slice(&train_loss.to_le_bytes());
                put_params(&mut out, params);
            }
            Self::Gossip { round, params } => {
                out.push(KIND_GOSSIP);
                out.extend_from_slice(&round.to_le_bytes());
                put_params(&mut out, params);
            }
            Self::Snapshot {
                step,
                train_loss,
                accuracy,
                loss,
                gossip_bytes,
                params,
            } => {
                out.push(KIND_SNAPSHOT);
                out.extend_from_slice(&step.to_le_bytes());
                out.extend_from_slice(&train_loss.to_le_bytes());
                out.extend_from_slice(&accuracy.to_le_bytes());
                out.extend_from_slice(&loss.to_le_bytes());
                out.extend_from_slice(&gossip_bytes.to_le_bytes());
                put_params(&mut out, params);
            }
            Self::Shutdown { round } => {
                out.push(KIND_SHUTDOWN);
                out.extend_from_slice(&round.to_le_bytes());
            }
            Self::JoinRequest { step } => {
                out.push(KIND_JOIN_REQUEST);
                out.extend_from_slice(&step.to_le_bytes());
            }
            Self::JoinReply {
                step,
                mixed_through,
                params,
            } => {
                out.push(KIND_JOIN_REPLY);
                out.extend_from_slice(&step.to_le_bytes());
                out.extend_from_slice(&mixed_through.to_le_bytes());
                put_params(&mut out, params);
            }
            Self::PackedRequest { round, model } => {
                out.push(KIND_PACKED_REQUEST);
                out.extend_from_slice(&round.to_le_bytes());
                put_bytes(&mut out, model);
            }
            Self::PackedMutualModel { round, arch, model } => {
                out.push(KIND_PACKED_MUTUAL_MODEL);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&arch.to_le_bytes());
                put_bytes(&mut out, model);
            }
            Self::PackedGossip { round, model } => {
                out.push(KIND_PACKED_GOSSIP);
                out.extend_from_slice(&round.to_le_bytes());
                put_bytes(&mut out, model);
            }
            Self::DeltaRequest { round, base, delta } => {
                out.push(KIND_DELTA_REQUEST);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&base.to_le_bytes());
                put_bytes(&mut out, delta);
            }
            Self::SecAgg { round, body } => {
                out.push(KIND_SECAGG);
                out.extend_from_slice(&round.to_le_bytes());
                put_bytes(&mut out, body);
            }
            Self::PackedReply {
                round,
                num_samples,
                steps,
                train_loss,
                update,
            } => {
                out.push(KIND_PACKED_REPLY);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&num_samples.to_le_bytes());
                out.extend_from_slice(&steps.to_le_bytes());
                out.extend_from_slice(&train_loss.to_le_bytes());
                put_bytes(&mut out, update);
            }
            Self::SplitRequest {
                step,
                epoch,
                offset,
                count,
                params,
            } => {
                out.push(KIND_SPLIT_REQUEST);
                put_window(&mut out, *step, *epoch, *offset, *count);
                put_params(&mut out, params);
            }
            Self::SplitActivations { step, labels, acts } => {
                out.push(KIND_SPLIT_ACTIVATIONS);
                out.extend_from_slice(&step.to_le_bytes());
                put_bytes(&mut out, labels);
                put_params(&mut out, acts);
            }
            Self::SplitGradient { step, grad } => {
                out.push(KIND_SPLIT_GRADIENT);
                out.extend_from_slice(&step.to_le_bytes());
                put_params(&mut out, grad);
            }
            Self::SplitClientGrad { step, grad } => {
                out.push(KIND_SPLIT_CLIENT_GRAD);
                out.extend_from_slice(&step.to_le_bytes());
                put_params(&mut out, grad);
            }
            Self::PackedSplitRequest {
                step,
                epoch,
                offset,
                count,
                params,
            } => {
                out.push(KIND_PACKED_SPLIT_REQUEST);
                put_window(&mut out, *step, *epoch, *offset, *count);
                put_bytes(&mut out, params);
            }
            Self::PackedSplit {
                step,
                part,
                labels,
                data,
            } => {
                out.push(KIND_PACKED_SPLIT);
                out.extend_from_slice(&step.to_le_bytes());
                out.push(part.code());
                put_bytes(&mut out, labels);
                put_bytes(&mut out, data);
            }
            Self::MutualModel {
                round,
                arch,
                params,
            } => {
                out.push(KIND_MUTUAL_MODEL);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&arch.to_le_bytes());
                put_params(&mut out, params);
            }
            Self::MutualReport {
                round,
                arch,
                accuracy,
                loss,
                peak_accuracy,
                peak_loss,
                train_loss,
                bytes_sent,
            } => {
                out.push(KIND_MUTUAL_REPORT);
                out.extend_from_slice(&round.to_le_bytes());
                out.extend_from_slice(&arch.to_le_bytes());
                for v in [accuracy, loss, peak_accuracy, peak_loss, train_loss] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&bytes_sent.to_le_bytes());
            }
            Self::Halt {
                run,
                issued_at,
                signer,
                signature,
            } => {
                out.push(KIND_HALT);
                out.extend_from_slice(run);
                out.extend_from_slice(&issued_at.to_le_bytes());
                for field in [signer, signature] {
                    // Longer fields are refused when decoding; encode what fits.
                    let n = field.len().min(MAX_HALT_FIELD);
                    out.extend_from_slice(&(n as u16).to_le_bytes());
                    out.extend_from_slice(&field[..n]);
                }
            }
        }
        out
    }

    /// Decodes and validates a message carrying at most `max_params` parameters.
    pub fn decode(bytes: &[u8], max_params: usize) -> Result<Self, WireError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(3, "magic")? != MAGIC {
            return Err(WireError::Malformed(
                "not a braid message (bad magic)".into(),
            ));
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(WireError::Malformed(format!(
                "unsupported version {version} (this braid speaks {VERSION})"
            )));
        }
        let payload = match r.u8("kind")? {
            KIND_TRAIN_REQUEST => {
                let round = r.u32("round")?;
                Self::TrainRequest {
                    round,
                    params: Arc::new(r.params(max_params)?),
                }
            }
            KIND_TRAIN_REPLY => {
                let round = r.u32("round")?;
                let num_samples = u64::from_le_bytes(r.array("num_samples")?);
                let steps = r.u32("steps")?;
                let train_loss = f32::from_le_bytes(r.array("train_loss")?);
                Self::TrainReply {
                    round,
                    num_samples,
                    steps,
                    train_loss,
                    params: r.params(max_params)?,
                }
            }
            KIND_GOSSIP => {
                let round = r.u32("round")?;
                Self::Gossip {
                    round,
                    params: Arc::new(r.params(max_params)?),
                }
            }
            KIND_SNAPSHOT => {
                let step = u64::from_le_bytes(r.array("step")?);
                let train_loss = f32::from_le_bytes(r.array("train_loss")?);
                let accuracy = f32::from_le_bytes(r.array("accuracy")?);
                let loss = f32::from_le_bytes(r.array("loss")?);
                let gossip_bytes = u64::from_le_bytes(r.array("gossip_bytes")?);
                Self::Snapshot {
                    step,
                    train_loss,
                    accuracy,
                    loss,
                    gossip_bytes,
                    params: Arc::new(r.params(max_params)?),
                }
            }
            KIND_SHUTDOWN => Self::Shutdown {
                round: r.u32("round")?,
            },
            KIND_JOIN_REQUEST => Self::JoinRequest {
                step: u64::from_le_bytes(r.array("step")?),
            },
            KIND_JOIN_REPLY => {
                let step = u64::from_le_bytes(r.array("step")?);
                let mixed_through = r.u32("mixed_through")?;
                Self::JoinReply {
                    step,
                    mixed_through,
                    params: Arc::new(r.params(max_params)?),
                }
            }
            KIND_PACKED_REQUEST => {
                let round = r.u32("round")?;
                Self::PackedRequest {
                    round,
                    model: Arc::new(r.packed(max_params)?),
                }
            }
            KIND_PACKED_MUTUAL_MODEL => {
                let round = r.u32("round")?;
                let arch = r.u32("arch")?;
                Self::PackedMutualModel {
                    round,
                    arch,
                    model: Arc::new(r.packed(max_params)?),
                }
            }
            KIND_PACKED_GOSSIP => {
                let round = r.u32("round")?;
                Self::PackedGossip {
                    round,
                    model: Arc::new(r.packed(max_params)?),
                }
            }
            KIND_DELTA_REQUEST => {
                let round = r.u32("round")?;
                let base = r.u32("base")?;
                Self::DeltaRequest {
                    round,
                    base,
                    delta: Arc::new(r.packed(max_params)?),
                }
            }
            KIND_SECAGG => {
                let round = r.u32("round")?;
                let n = r.u32("secagg length")? as usize;
                // A masked vector of `max` parameters and a few statistics, or the keys and
                // shares of up to a few thousand clients.
                let limit = (1usize << 20).saturating_add(max_params.saturating_mul(8));
                if n > limit {
                    return Err(WireError::TooLarge { got: n, max: limit });
                }
                Self::SecAgg {
                    round,
                    body: Arc::new(r.take(n, "secagg message")?.to_vec()),
                }
            }
            KIND_PACKED_REPLY => {
                let round = r.u32("round")?;
                let num_samples = u64::from_le_bytes(r.array("num_samples")?);
                let steps = r.u32("steps")?;
                let train_loss = f32::from_le_bytes(r.array("train_loss")?);
                Self::PackedReply {
                    round,
                    num_samples,
                    steps,
                    train_loss,
                    update: r.packed(max_params)?,
                }
            }
            KIND_SPLIT_REQUEST => {
                let (step, epoch, offset, count) = r.window()?;
                Self::SplitRequest {
                    step,
                    epoch,
                    offset,
                    count,
                    params: Arc::new(r.params(max_params)?),
                }
            }
            KIND_SPLIT_ACTIVATIONS => {
                let step = u64::from_le_bytes(r.array("step")?);
                let labels = r.labels(max_params)?;
                Self::SplitActivations {
                    step,
                    labels,
                    acts: r.params(max_params)?,
                }
            }
            KIND_SPLIT_GRADIENT => Self::SplitGradient {
                step: u64::from_le_bytes(r.array("step")?),
                grad: r.params(max_params)?,
            },
            KIND_SPLIT_CLIENT_GRAD => Self::SplitClientGrad {
                step: u64::from_le_bytes(r.array("step")?),
                grad: r.params(max_params)?,
            },
            KIND_PACKED_SPLIT_REQUEST => {
                let (step, epoch, offset, count) = r.window()?;
                Self::PackedSplitRequest {
                    step,
                    epoch,
                    offset,
                    count,
                    params: Arc::new(r.packed(max_params)?),
                }
            }
            KIND_PACKED_SPLIT => {
                let step = u64::from_le_bytes(r.array("step")?);
                let part = match r.u8("part")? {
                    0 => SplitPart::Activations,
                    1 => SplitPart::Gradient,
                    2 => SplitPart::ClientGrad,
                    other => {
                        return Err(WireError::Malformed(format!(
                            "split part {other} (0, 1 or 2 expected)"
                        )))
                    }
                };
                let labels = r.labels(max_params)?;
                Self::PackedSplit {
                    step,
                    part,
                    labels,
                    data: r.packed(max_params)?,
                }
            }
            KIND_MUTUAL_MODEL => {
                let round = r.u32("round")?;
                let arch = r.u32("arch")?;
                Self::MutualModel {
                    round,
                    arch,
                    params: Arc::new(r.params(max_params)?),
                }
            }
            KIND_MUTUAL_REPORT => {
                let round = r.u32("round")?;
                let arch = r.u32("arch")?;
                let mut f =
                    |name| -> Result<f32, WireError> { Ok(f32::from_le_bytes(r.array(name)?)) };
                let accuracy = f("accuracy")?;
                let loss = f("loss")?;
                let peak_accuracy = f("peak_accuracy")?;
                let peak_loss = f("peak_loss")?;
                let train_loss = f("train_loss")?;
                Self::MutualReport {
                    round,
                    arch,
                    accuracy,
                    loss,
                    peak_accuracy,
                    peak_loss,
                    train_loss,
                    bytes_sent: u64::from_le_bytes(r.array("bytes_sent")?),
                }
            }
            KIND_HALT => {
                let run = r.array("run")?;
                let issued_at = u64::from_le_bytes(r.array("issued_at")?);
                let mut field = |name: &'static str| -> Result<Vec<u8>, WireError> {
                    let n = u16::from_le_bytes(r.array(name)?) as usize;
                    if n > MAX_HALT_FIELD {
                        return Err(WireError::Malformed(format!(
                            "{name} of {n} bytes (at most {MAX_HALT_FIELD})"
                        )));
                    }
                    Ok(r.take(n, name)?.to_vec())
                };
                let signer = field("signer")?;
                let signature = field("signature")?;
                Self::Halt {
                    run,
                    issued_at,
                    signer,
                    signature,
                }
            }
            k => return Err(WireError::Malformed(format!("unknown message kind {k}"))),
        };
        if r.pos != bytes.len() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes",
                bytes.len() - r.pos
            )));
        }
        Ok(payload)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                WireError::Truncated(format!(
                    "{what} needs {n} bytes at offset {}, message has {}",
                    self.pos,
                    self.bytes.len()
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// A compressed vector of at most `max` values: its byte length, then the bytes (the
    /// receiver decodes and checks them against its model's size).
    fn packed(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let n = self.u32("packed length")? as usize;
        // The largest encoding of `max` values: a header, then an index and an f32 each.
        let limit = 64usize.saturating_add(max.saturating_mul(8));
        if n > limit {
            return Err(WireError::TooLarge { got: n, max: limit });
        }
        Ok(self.take(n, "packed vector")?.to_vec())
    }

    /// A split request's step, epoch, offset and count.
    fn window(&mut self) -> Result<(u64, u32, u32, u32), WireError> {
        let step = u64::from_le_bytes(self.array("step")?);
        Ok((
            step,
            self.u32("epoch")?,
            self.u32("offset")?,
            self.u32("count")?,
        ))
    }

    /// A label count of at most `max`, then the labels.
    fn labels(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let n = self.u32("label count")? as usize;
        if n > max {
            return Err(WireError::TooLarge { got: n, max });
        }
        Ok(self.take(n, "labels")?.to_vec())
    }

    fn params(&mut self, max: usize) -> Result<Vec<f32>, WireError> {
        let n = self.u32("parameter count")? as usize;
        if n > max {
            return Err(WireError::TooLarge { got: n, max });
        }
        let raw = self.take(n * 4, "parameters")?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reply(params: Vec<f32>) -> Payload {
        Payload::TrainReply {
            round: 3,
            num_samples: 600,
            steps: 19,
            train_loss: 0.5,
            params,
        }
    }

    #[test]
    fn rejects_hostile_input() {
        for p in [
            Payload::Gossip {
                round: 1,
                params: Arc::new(vec![1.0; 3]),
            },
            Payload::Snapshot {
                step: 5,
                train_loss: 0.1,
                accuracy: 0.2,
                loss: 0.3,
                gossip_bytes: 9,
                params: Arc::new(vec![1.0; 3]),
            },
            Payload::MutualModel {
                round: 2,
                arch: 1,
                params: Arc::new(vec![1.0; 3]),
            },
        ] {
            let bytes = p.encode();
            for cut in 0..bytes.len() {
                assert!(Payload::decode(&bytes[..cut], 10).is_err());
            }
            assert!(Payload::decode(&bytes, 2).is_err());
        }
        let good = reply(vec![1.0, 2.0]).encode();
        for cut in 0..good.len() {
            assert!(
                Payload::decode(&good[..cut], 10).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            Payload::decode(&long, 10),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            Payload::decode(&good, 1),
            Err(WireError::TooLarge { got: 2, max: 1 })
        );
        let mut bad_kind = good.clone();
        bad_kind[4] = 99;
        assert!(matches!(
            Payload::decode(&bad_kind, 10),
            Err(WireError::Malformed(_))
        ));
        let mut huge = good[..5].to_vec();
        huge.extend_from_slice(&3u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes()); // announces 4 billion parameters
        assert!(Payload::decode(&huge, usize::MAX).is_err());
    }

    proptest! {
        #[test]
        fn encoding_round_trips_with_exact_length(params in prop::collection::vec(-1e6f32..1e6, 0..64), round in 0u32..1000) {
            let snapshot = Payload::Snapshot { step: u64::from(round) * 7, train_loss: 0.25, accuracy: 0.5, loss: 1.5, gossip_bytes: 1 << 40, params: Arc::new(params.clone()) };
            let gossip = Payload::Gossip { round, params: Arc::new(params.clone()) };
            for p in [Payload::TrainRequest { round, params: Arc::new(params.clone()) }, reply(params.clone()), gossip, snapshot, Payload::Shutdown { round }, Payload::JoinRequest { step: u64::from(round) << 33 }, Payload::JoinReply { step: 5, mixed_through: round, params: Arc::new(params.clone()) }, Payload::Halt { run: [round as u8; 32], issued_at: 7, signer: vec![1, 2, 3], signature: params.iter().map(|v| *v as u8).collect() }, Payload::PackedRequest { round, model: Arc::new(params.iter().map(|v| *v as u8).collect()) }, Payload::PackedReply { round, num_samples: 3, steps: 4, train_loss: 0.5, update: params.iter().map(|v| *v as u8).collect() }, Payload::SplitRequest { step: u64::from(round) << 20, epoch: round, offset: 7, count: 2, params: Arc::new(params.clone()) }, Payload::SplitActivations { step: 9, labels: params.iter().map(|v| *v as u8).collect(), acts: params.clone() }, Payload::SplitGradient { step: 1, grad: params.clone() }, Payload::SplitClientGrad { step: 2, grad: params.clone() }, Payload::MutualModel { round, arch: 2, params: Arc::new(params.clone()) }, Payload::MutualReport { round, arch: 1, accuracy: 0.5, loss: 1.5, peak_accuracy: 0.75, peak_loss: 0.9, train_loss: 0.25, bytes_sent: 1 << 40 }, Payload::SecAgg { round, body: Arc::new(params.iter().map(|v| *v as u8).collect()) }, Payload::DeltaRequest { round, base: round / 2, delta: Arc::new(params.iter().map(|v| *v as u8).collect()) }, Payload::PackedGossip { round, model: Arc::new(params.iter().map(|v| *v as u8).collect()) }, Payload::PackedMutualModel { round, arch: 1, model: Arc::new(params.iter().map(|v| *v as u8).collect()) }, Payload::PackedSplitRequest { step: u64::from(round) << 20, epoch: round, offset: 7, count: 2, params: Arc::new(params.iter().map(|v| *v as u8).collect()) }, Payload::PackedSplit { step: 3, part: SplitPart::Activations, labels: vec![1, 2], data: params.iter().map(|v| *v as u8).collect() }, Payload::PackedSplit { step: 4, part: SplitPart::ClientGrad, labels: Vec::new(), data: vec![9; 3] }] {
                let bytes = p.encode();
                prop_assert_eq!(bytes.len(), p.encoded_len());
                prop_assert_eq!(Payload::decode(&bytes, 64).unwrap(), p);
            }
        }
    }
}
