//! Checks of `[algorithm]` fields and feature tables that several algorithms share, with the
//! messages braid has always given, and the bookkeeping of answers their nodes wait for.

use std::collections::BTreeMap;

use braid_core::compress::Sparsify;

use crate::config::ExperimentConfig;
use crate::error::Invalid;
use crate::wire::NodeId;

/// `algorithm.rounds`, which algorithm `name` needs (and `algorithm.steps`, which it refuses).
pub fn rounds(c: &ExperimentConfig, name: &str) -> Result<u32, Invalid> {
    let rounds = c.algorithm.rounds.ok_or_else(|| {
        Invalid::missing(
            "algorithm.rounds",
            format!("algorithm.name = {name} needs algorithm.rounds"),
        )
    })?;
    if c.algorithm.steps.is_some() {
        return Err(Invalid::not_applicable(
            "algorithm.steps",
            "algorithm.steps only applies to \"dsgd\" (use train.local_steps for steps per round)",
        ));
    }
    if rounds == 0 {
        return Err(Invalid::range(
            "algorithm.rounds",
            "algorithm.rounds must be at least 1 (no round would leave the untrained model as the result)",
        ));
    }
    crate::config::check_in("algorithm.rounds", rounds, 1, 10_000_000)?;
    Ok(rounds)
}

/// `algorithm.mu`: needed by FedProx (`fedprox`), refused by everything else.
pub fn check_mu(c: &ExperimentConfig, fedprox: bool) -> Result<(), Invalid> {
    match (fedprox, c.algorithm.mu) {
        (true, None) => Err(Invalid::missing(
            "algorithm.mu",
            "algorithm.name = \"fedprox\" needs algorithm.mu (e.g. 0.01)",
        )),
        (true, Some(mu)) if !(0.0..=1e4).contains(&mu) => Err(Invalid::range(
            "algorithm.mu",
            format!("algorithm.mu = {mu} must be in [0, 1e4]"),
        )),
        (false, Some(_)) => Err(Invalid::not_applicable(
            "algorithm.mu",
            "algorithm.mu only applies to algorithm.name = \"fedprox\"",
        )),
        _ => Ok(()),
    }
}

/// `algorithm.clients_per_round`, between 1 and the clients.
pub fn check_clients_per_round(c: &ExperimentConfig) -> Result<(), Invalid> {
    match c.algorithm.clients_per_round {
        Some(k) if k == 0 || k > c.partition.clients => Err(Invalid::range(
            "algorithm.clients_per_round",
            format!(
                "algorithm.clients_per_round = {k} must be between 1 and partition.clients = {}",
                c.partition.clients
            ),
        )),
        _ => Ok(()),
    }
}

/// Which fields of `[compression]` an algorithm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionUse {
    /// The FedAvg family: `uplink`, `downlink`, `error_feedback`, `downlink_delta`.
    Server,
    /// Decentralized SGD: `gossip`.
    Gossip,
    /// Mutual learning: `models`.
    Models,
    /// Split learning: `split`.
    Split,
}

/// Checks that `[compression]` sets only the fields `takes` names, and that the
/// quantizer-only fields do not sparsify.
pub fn check_compression(c: &ExperimentConfig, takes: CompressionUse) -> Result<(), Invalid> {
    let Some(k) = &c.compression else {
        return Ok(());
    };
    let server_side = k.uplink.is_some() || k.downlink.is_some() || k.error_feedback;
    match takes {
        CompressionUse::Gossip if server_side || k.models.is_some() || k.split.is_some() => {
            return Err(Invalid::not_applicable(
                "compression",
                "dsgd has no server: its [compression] takes only gossip",
            ))
        }
        CompressionUse::Models if server_side || k.gossip.is_some() || k.split.is_some() => {
            return Err(Invalid::not_applicable(
                "compression",
                "mutual learning's [compression] takes only models",
            ))
        }
        CompressionUse::Split if server_side || k.gossip.is_some() || k.models.is_some() => {
            return Err(Invalid::not_applicable(
                "compression",
                "split learning's [compression] takes only split",
            ))
        }
        _ => {}
    }
    for (field, setting, applies, to, why) in [
        (
            "models",
            k.models,
            takes == CompressionUse::Models,
            "\"dfml\", \"local\", \"fml\" and \"def-kt\"",
            "the receiver trains the whole model",
        ),
        (
            "gossip",
            k.gossip,
            takes == CompressionUse::Gossip,
            "\"dsgd\"",
            "every neighbour mixes the whole model",
        ),
        (
            "split",
            k.split,
            takes == CompressionUse::Split,
            "\"split\"",
            "each side needs every value at the cut",
        ),
    ] {
        let Some(setting) = setting else { continue };
        if !applies {
            return Err(Invalid::not_applicable(
                format!("compression.{field}"),
                format!("compression.{field} applies to {to} only"),
            ));
        }
        if setting.sparsify != Sparsify::None {
            return Err(Invalid::range(
                format!("compression.{field}"),
                format!("compression.{field}: only quantizers (no sparsify): {why}"),
            ));
        }
    }
    Ok(())
}

/// Refuses the FedAvg server's `[algorithm]` fields for algorithm `name`, which has no such
/// server.
pub fn no_server_fields(c: &ExperimentConfig, name: &str) -> Result<(), Invalid> {
    if c.algorithm.server_optimizer != Default::default()
        || c.algorithm.round_timeout_s.is_some()
        || c.algorithm.min_replies.is_some()
    {
        let field = if c.algorithm.server_optimizer != Default::default() {
            "algorithm.server_optimizer"
        } else if c.algorithm.round_timeout_s.is_some() {
            "algorithm.round_timeout_s"
        } else {
            "algorithm.min_replies"
        };
        return Err(Invalid::not_applicable(
            field,
            format!(
            "algorithm.server_optimizer, round_timeout_s and min_replies do not apply to {name:?}"
        ),
        ));
    }
    Ok(())
}

/// The nodes in `waiting` whose answer has not come.
pub fn unanswered<T>(waiting: &BTreeMap<NodeId, Option<T>>) -> Vec<NodeId> {
    waiting
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(&n, _)| n)
        .collect()
}

/// The messages of a node's latest input that sent any, kept for its checkpoint and sent again
/// on resume: a kill between the checkpoint and their delivery would lose them (receivers
/// refuse or ignore a second copy).
#[derive(Debug, Clone)]
pub struct LatestSent<M> {
    msgs: Vec<(crate::wire::NodeId, M)>,
    fresh: bool,
}

impl<M: Clone> Default for LatestSent<M> {
    fn default() -> Self {
        Self {
            msgs: Vec::new(),
            fresh: true,
        }
    }
}

impl<M: Clone> LatestSent<M> {
    /// A new input begins: its messages, if it sends any, replace the kept ones.
    pub fn begin(&mut self) {
        self.fresh = true;
    }

    /// Keeps `msg` to `to` among the current input's messages.
    pub fn keep(&mut self, to: crate::wire::NodeId, msg: &M) {
        if std::mem::take(&mut self.fresh) {
            self.msgs.clear();
        }
        self.msgs.push((to, msg.clone()));
    }

    /// Takes the kept messages out (to send them again).
    pub fn take(&mut self) -> Vec<(crate::wire::NodeId, M)> {
        std::mem::take(&mut self.msgs)
    }
}

impl<M: crate::wire::Message> LatestSent<M> {
    /// The kept messages as checkpoint blobs `out/I/NODE` (their wire frames). A message that
    /// `stand_in` replaces (one carrying the checkpoint's own model, say) is written as the
    /// replacement under `out/I/NODE/params`, for [`LatestSent::from_blobs`]'s `fill`.
    pub fn to_blobs(&self, stand_in: impl Fn(&M) -> Option<M>) -> Vec<(String, Vec<u8>)> {
        self.msgs
            .iter()
            .enumerate()
            .map(|(i, (to, m))| match stand_in(m) {
                Some(short) => (
                    format!("out/{i}/{to}/params"),
                    crate::wire::Body::Msg(short).encode(),
                ),
                None => (
                    format!("out/{i}/{to}"),
                    crate::wire::Body::Msg(m.clone()).encode(),
                ),
            })
            .collect()
    }

    /// The messages in `blobs` written by [`LatestSent::to_blobs`] (other blobs are left
    /// alone), each to a node up to `last_node`; `fill` turns a stand-in back into the
    /// message (None: not a stand-in this node writes).
    pub fn from_blobs(
        blobs: &[(String, Vec<u8>)], limits: &crate::wire::Limits, last_node: NodeId,
        fill: impl Fn(M) -> Option<M>,
    ) -> Result<Self, String> {
        let mut msgs = Vec::new();
        for (name, bytes) in blobs {
            let Some(key) = name.strip_prefix("out/") else {
                continue;
            };
            let parts: Vec<&str> = key.split('/').collect();
            let (to, stand_in) = match parts[..] {
                [_, to] => (to.parse::<NodeId>().ok(), false),
                [_, to, "params"] => (to.parse::<NodeId>().ok(), true),
                _ => (None, false),
            };
            let to = to.ok_or(format!("{name}: not out/I/NODE[/params]"))?;
            if to > last_node {
                return Err(format!("{name}: node {to} is not in this run"));
            }
            let m = match crate::wire::Body::<M>::decode(bytes, limits) {
                Ok(crate::wire::Body::Msg(m)) if stand_in => fill(m),
                Ok(crate::wire::Body::Msg(m)) => Some(m),
                _ => None,
            }
            .ok_or(format!("{name}: not a message of this run"))?;
            msgs.push((to, m));
        }
        Ok(Self { msgs, fresh: true })
    }
}

/// The round and sender named by a checkpoint blob `inbox/ROUND/NODE` (None for other blobs;
/// an error for a malformed one).
pub fn inbox_key(name: &str) -> Option<Result<(u32, NodeId), String>> {
    let key = name.strip_prefix("inbox/")?;
    Some(
        key.split_once('/')
            .and_then(|(r, f)| Some((r.parse::<u32>().ok()?, f.parse::<NodeId>().ok()?)))
            .ok_or(format!("{name}: not inbox/ROUND/NODE")),
    )
}
