//! FedAvg with secure aggregation (`[secure_aggregation]`): the server learns only the sum of
//! the round's updates (`braid_core::secagg`, Bonawitz et al. 2017).
//!
//! Each client trains as usual, then takes part in the four protocol steps through
//! [`Msg::SecAgg`] messages. Its input is, in fixed point, `[w * update, w, samples,
//! samples * train_loss, steps]`, with `w` its sample count (or 1 under local DP, whose
//! average has equal weights); the server divides the first block of the sum by `w`'s sum, so
//! the average is FedAvg's and the round's statistics are sums too. Keys are fresh random
//! x25519 keys every round; because the unmasked sum is exact, the run's metrics do not depend
//! on them and stay deterministic.
//!
//! Every step has the round deadline. A step whose deadline passes goes on with the clients
//! that answered if there are at least `threshold` of them (the training step also needs
//! `min_replies`); otherwise the round starts again with the same clients (new keys), up to
//! [`MAX_RESTARTS`] times.
//!
//! Composes with `[privacy] mode = "local"` (clients noise before masking; the server divides
//! by the clients asked) and with `compression.downlink`; refuses a robust aggregator, central
//! DP, DP-SGD and `compression.uplink` ([`check`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_core::secagg::{self, ClientId, Message, PublicKeys, Sealed, SecAggError};

use crate::algorithms::fedavg::{Aggregated, FedAvgClient, FedAvgServer, SERVER};
use crate::algorithms::fedavg::{FedCtx, Msg};
use crate::config::{is_mean, DpMode, ExperimentConfig};
use crate::error::Invalid;
use crate::node::{EngineError, EngineResult};
use crate::wire::NodeId;

/// Encoded protocol messages, by recipient.
type Outbox = Vec<(NodeId, Arc<Vec<u8>>)>;

/// How many times one round may start again after failing to reach the threshold.
pub const MAX_RESTARTS: u32 = 3;

/// Statistics carried after the update in every input: w, samples, samples * loss, steps.
const STATS: usize = 4;

/// Settings of secure aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecureSettings {
    /// Shares needed to unmask; at most `clients asked - threshold` may drop out after
    /// sharing their keys.
    pub threshold: usize,
    /// Fractional bits of the fixed-point encoding.
    pub scale_bits: u32,
}

/// The server's state in the current round.
pub(in crate::algorithms::fedavg) struct SecRound {
    server: secagg::Server,
    /// 0: training and keys, 1: shares, 2: masked inputs, 3: reveals.
    step: u8,
    /// The clients asked this round.
    chosen: Vec<NodeId>,
    /// Clients whose answer to the current step has not arrived.
    pending: BTreeSet<NodeId>,
    keys: BTreeMap<ClientId, PublicKeys>,
    shares: BTreeMap<ClientId, Sealed>,
    reveals: usize,
    restarts: u32,
}

/// The deadline token of `step` of `round` (step 0 uses the plain round, as without secure
/// aggregation).
fn token(round: u32, step: u8) -> u64 {
    u64::from(round) | (u64::from(step) << 32)
}

fn setup(e: SecAggError) -> EngineError {
    EngineError::Failed(e.to_string())
}

impl SecRound {
    pub(in crate::algorithms::fedavg) fn new(
        round: u32, settings: SecureSettings, len: usize, chosen: Vec<NodeId>, restarts: u32,
    ) -> EngineResult<Self> {
        Ok(Self {
            server: secagg::Server::new(round, settings.threshold, len + STATS).map_err(setup)?,
            step: 0,
            pending: chosen.iter().copied().collect(),
            chosen,
            keys: BTreeMap::new(),
            shares: BTreeMap::new(),
            reveals: 0,
            restarts,
        })
    }

    /// The clients still to be asked to train (step 0).
    pub(in crate::algorithms::fedavg) fn missing(&self) -> Vec<NodeId> {
        if self.step == 0 {
            self.pending.iter().copied().collect()
        } else {
            Vec::new()
        }
    }

    fn answered(&self) -> usize {
        match self.step {
            0 => self.keys.len(),
            1 => self.shares.len(),
            2 => self.server.masked_count(),
            _ => self.reveals,
        }
    }
}

impl FedAvgServer {
    /// Turns on secure aggregation.
    pub fn with_secure_aggregation(mut self, settings: Option<SecureSettings>) -> Self {
        self.secure = settings;
        self
    }

    /// A secure-aggregation message from a client.
    pub(in crate::algorithms::fedavg) fn on_secagg(
        &mut self, from: NodeId, round: u32, body: &[u8], bytes: u64, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        let reject = EngineError::rejecter(SERVER, from, "secagg");
        if round != self.round {
            return Err(reject(format!(
                "message for round {round}, the current round is {}",
                self.round
            )));
        }
        let Some(sr) = self.sec.as_mut() else {
            return Err(reject("secure aggregation is off".into()));
        };
        let msg = Message::decode(body).map_err(|e| reject(e.to_string()))?;
        if !sr.pending.contains(&from) {
            return Err(reject(format!(
                "a {} message that was not asked for, or a repeat",
                msg.name()
            )));
        }
        match (sr.step, msg) {
            (0, Message::Keys(k)) => {
                sr.keys.insert(from, k);
                // It trained from this round's model copy (downlink_delta).
                if let Some(copy) = self.copy.as_mut() {
                    copy.answered(from);
                }
            }
            (1, Message::Shares(s)) => {
                sr.shares.insert(from, s);
            }
            (2, Message::Masked(y)) => sr
                .server
                .add_masked(from, &y)
                .map_err(|e| reject(e.to_string()))?,
            (3, Message::Reveal(s)) => {
                sr.server
                    .add_reveal(from, s)
                    .map_err(|e| reject(e.to_string()))?;
                sr.reveals += 1;
            }
            (step, m) => {
                return Err(reject(format!(
                    "a {} message at step {step} of secure aggregation",
                    m.name()
                )))
            }
        }
        sr.pending.remove(&from);
        self.bytes_up += bytes;
        if sr.pending.is_empty() {
            self.secure_advance(ctx)?;
        }
        Ok(())
    }

    /// A deadline of a secure round.
    pub(in crate::algorithms::fedavg) fn secure_deadline(
        &mut self, t: u64, ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        let (Some(sr), Some(settings)) = (self.sec.as_ref(), self.secure) else {
            return Ok(());
        };
        if t != token(self.round, sr.step) {
            return Ok(()); // a step that already completed
        }
        let need = if sr.step == 0 {
            settings.threshold.max(self.config.min_replies)
        } else {
            settings.threshold
        };
        if sr.answered() >= need {
            self.secure_advance(ctx)
        } else if sr.step == 0 {
            self.ask_missing(ctx)
        } else {
            let why = format!(
                "{} of {} clients answered step {} in time, fewer than the threshold {}",
                sr.answered(),
                sr.chosen.len(),
                sr.step,
                settings.threshold
            );
            self.secure_restart(ctx, &why)
        }
    }

    /// Starts the round again with the same clients and new keys.
    fn secure_restart(&mut self, ctx: &mut FedCtx<'_>, why: &str) -> EngineResult {
        let (Some(sr), Some(settings)) = (self.sec.take(), self.secure) else {
            return Ok(());
        };
        if sr.restarts >= MAX_RESTARTS {
            return Err(EngineError::Failed(format!(
                "round {}: secure aggregation failed {} times; last: {why}",
                self.round,
                sr.restarts + 1
            )));
        }
        tracing::warn!(
            "round {}: secure aggregation starts again: {why}",
            self.round
        );
        self.sec = Some(SecRound::new(
            self.round,
            settings,
            self.params.len(),
            sr.chosen,
            sr.restarts + 1,
        )?);
        self.ask_missing(ctx)
    }

    /// Moves to the next step with the answers in; a protocol failure (too few clients)
    /// starts the round again.
    fn secure_advance(&mut self, ctx: &mut FedCtx<'_>) -> EngineResult {
        let round = self.round;
        let Some(sr) = self.sec.as_mut() else {
            return Ok(());
        };
        // (recipient, encoded message); the roster and the unmask list are the same for
        // everyone and are encoded once.
        let sent: Result<Outbox, SecAggError> = match sr.step {
            0 => sr
                .server
                .roster(std::mem::take(&mut sr.keys))
                .map(|roster| {
                    let ids: Vec<NodeId> = roster.iter().map(|(id, _)| *id).collect();
                    let body = Arc::new(Message::Roster(roster).encode());
                    ids.into_iter().map(|id| (id, Arc::clone(&body))).collect()
                }),
            1 => sr
                .server
                .route_shares(std::mem::take(&mut sr.shares))
                .map(|routed| {
                    routed
                        .into_iter()
                        .map(|(id, inbox)| (id, Arc::new(Message::SharesFor(inbox).encode())))
                        .collect()
                }),
            2 => sr.server.survivors().map(|survivors| {
                let body = Arc::new(Message::Unmask(survivors.clone()).encode());
                survivors
                    .into_iter()
                    .map(|id| (id, Arc::clone(&body)))
                    .collect()
            }),
            _ => {
                let Some(sr) = self.sec.take() else {
                    return Ok(());
                };
                let survivors = sr.server.members();
                let stragglers = sr.chosen.len() - survivors.len();
                return match sr.server.finish() {
                    Ok(sum) => self.close_secure_round(ctx, &sum, &survivors, stragglers),
                    Err(e) => Err(EngineError::Failed(format!("round {round}: {e}"))),
                };
            }
        };
        let sent = match sent {
            Ok(s) => s,
            Err(e) => return self.secure_restart(ctx, &e.to_string()),
        };
        sr.step += 1;
        sr.pending = sent.iter().map(|(id, _)| *id).collect();
        for (id, body) in sent {
            self.bytes_down += ctx.send(id, Msg::SecAgg { round, body }) as u64;
        }
        if let Some(d) = self.config.round_deadline {
            ctx.set_deadline(token(round, sr.step), d);
        }
        Ok(())
    }

    /// Ends a secure round from the unmasked sum of the survivors' inputs.
    fn close_secure_round(
        &mut self, ctx: &mut FedCtx<'_>, sum: &[u64], survivors: &[ClientId], stragglers: usize,
    ) -> EngineResult {
        let Some(settings) = self.secure else {
            return Ok(());
        };
        let n = self.params.len();
        let v = secagg::from_ring(sum, settings.scale_bits);
        let (w, samples, loss_sum, steps) = (v[n], v[n + 1], v[n + 2], v[n + 3]);
        if !(w > 0.0 && samples >= 0.0) {
            return Err(EngineError::Failed(format!(
                "round {}: the securely aggregated weights sum to {w}",
                self.round
            )));
        }
        // Local DP: equal weights over the clients asked per round (DP-FedAvg's fixed
        // denominator); otherwise FedAvg's sample weights.
        let ids: Vec<NodeId> = survivors.to_vec();
        let denominator = self
            .layers
            .iter_mut()
            .find_map(|l| l.sum_denominator(&ids))
            .unwrap_or(w);
        let mean: Vec<f32> = self
            .params
            .iter()
            .zip(&v[..n])
            .map(|(p, s)| p + (s / denominator) as f32)
            .collect();
        self.close_round(
            ctx,
            mean,
            Aggregated {
                clients: survivors.len(),
                stragglers,
                samples: samples.round() as u64,
                local_steps: steps.round() as u64,
                train_loss: loss_sum / samples.max(1.0),
            },
        )
    }
}

/// A client's state in the current round.
pub(in crate::algorithms::fedavg) struct ClientSec {
    round: u32,
    /// `[w * update, w, samples, samples * loss, steps]`.
    input: Vec<f64>,
    client: secagg::Client,
}

impl FedAvgClient {
    /// Takes part in secure aggregation with `settings` (must match the server's).
    pub fn with_secure_aggregation(mut self, settings: Option<SecureSettings>) -> Self {
        self.secure = settings;
        self
    }

    /// After training in round `round`: keeps the input and sends the keys.
    pub(in crate::algorithms::fedavg) fn secure_start(
        &mut self, round: u32, update: &[f32], samples: u64, steps: u32, train_loss: f32,
        ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        let Some(settings) = self.secure else {
            return Ok(());
        };
        let w = if self.local_dp.is_some() {
            1.0
        } else {
            samples as f64
        };
        let mut input: Vec<f64> = update.iter().map(|d| w * f64::from(*d)).collect();
        input.extend([
            w,
            samples as f64,
            samples as f64 * f64::from(train_loss),
            f64::from(steps),
        ]);
        let client = secagg::Client::new(self.id, round, settings.threshold, &mut rand::rng());
        let body = Message::Keys(client.public_keys()).encode();
        self.sec = Some(ClientSec {
            round,
            input,
            client,
        });
        ctx.send(
            SERVER,
            Msg::SecAgg {
                round,
                body: Arc::new(body),
            },
        );
        Ok(())
    }

    /// A secure-aggregation step from the server.
    pub(in crate::algorithms::fedavg) fn on_secagg(
        &mut self, round: u32, body: &[u8], ctx: &mut FedCtx<'_>,
    ) -> EngineResult {
        let reject = EngineError::rejecter(self.id, SERVER, "secagg");
        let Some(settings) = self.secure else {
            return Err(reject("secure aggregation is off".into()));
        };
        let Some(sec) = self.sec.as_mut().filter(|s| s.round == round) else {
            return Err(reject(format!(
                "no secure-aggregation state for round {round}"
            )));
        };
        let msg = Message::decode(body).map_err(|e| reject(e.to_string()))?;
        let protocol = |e: SecAggError| reject(e.to_string());
        let reply = match msg {
            Message::Roster(roster) => Message::Shares(
                sec.client
                    .share_keys(roster, &mut rand::rng())
                    .map_err(protocol)?,
            ),
            Message::SharesFor(inbox) => {
                let limit = secagg::input_limit(settings.scale_bits, inbox.len() + 1);
                let ring = secagg::to_ring(&sec.input, settings.scale_bits, limit)
                    .map_err(|e| EngineError::Failed(format!("client {}: {e}", self.id)))?;
                Message::Masked(sec.client.mask(inbox, &ring).map_err(protocol)?)
            }
            Message::Unmask(survivors) => {
                let shares = sec.client.unmask(&survivors).map_err(protocol)?;
                self.sec = None;
                Message::Reveal(shares)
            }
            m => {
                return Err(reject(format!(
                    "a client does not accept {} messages",
                    m.name()
                )))
            }
        };
        ctx.send(
            SERVER,
            Msg::SecAgg {
                round,
                body: Arc::new(reply.encode()),
            },
        );
        Ok(())
    }
}

/// `[secure_aggregation]`: the threshold, the fixed-point scale, and the feature layers it
/// cannot be combined with.
pub fn check(c: &ExperimentConfig) -> Result<(), Invalid> {
    let Some(sa) = &c.secure_aggregation else {
        return Ok(());
    };
    let m = c.clients_per_round();
    let t = sa.threshold_for(m);
    if t < 2 || t > m {
        return Err(Invalid::range(
            "secure_aggregation.threshold",
            format!(
            "secure_aggregation.threshold = {t} must be between 2 and the {m} clients per round"
        ),
        ));
    }
    if !(8..=40).contains(&sa.scale_bits) {
        return Err(Invalid::range(
            "secure_aggregation.scale_bits",
            format!(
                "secure_aggregation.scale_bits = {} must be in 8..=40",
                sa.scale_bits
            ),
        ));
    }
    if !is_mean(&c.algorithm.aggregator) {
        return Err(Invalid::conflict("secure_aggregation", "[secure_aggregation] hides single updates, which algorithm.aggregator needs: they cannot be combined"));
    }
    if c.privacy.is_some_and(|p| p.mode == DpMode::Central) {
        return Err(Invalid::conflict("secure_aggregation", "[secure_aggregation] hides single updates, which central DP clips at the server: use [privacy] mode = \"local\""));
    }
    if c.privacy.is_some_and(|p| p.mode == DpMode::DpSgd) {
        return Err(Invalid::conflict("secure_aggregation", "[secure_aggregation] hides each client's sample count and steps, which the server's DP-SGD accountant needs: use [privacy] mode = \"local\""));
    }
    if c.compression.is_some_and(|k| k.uplink.is_some()) {
        return Err(Invalid::conflict("secure_aggregation", "[secure_aggregation] and compression.uplink cannot be combined (masked updates are ring elements); compression.downlink can"));
    }
    Ok(())
}
