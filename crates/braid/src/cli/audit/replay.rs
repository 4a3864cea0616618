//! `braid audit replay DIR`: re-executes a seeded sample of the training claims in a run's
//! verified logs and confirms or refutes each.
//!
//! A claim is a `compute` entry with model hashes: "handling message `input`, I trained from
//! the model of hash `model_before` to `model_after`, on `train_samples` samples, spending
//! `flops`". Its input comes from the run, not from the claimant: the sender kept a copy of
//! the message, named by its SHA-256, and the sender's signed log names that hash. Replay
//! builds the claimant's node afresh from the run's configuration (its shard, seed and
//! settings), hands it the input and compares what it computes, bit for bit.
//!
//! A node that carries state between inputs (a dsgd peer) also logs the hashes of its whole
//! state before and after each training, keeps those states, and lists the inputs it handled
//! since its previous training. Replay starts from the state after the previous training (or
//! from the node as the configuration builds it, for its first), re-handles those inputs (the
//! gossip its neighbours kept), checks that they lead to the state the claim starts from,
//! then re-does the training: so the state a claim starts from comes from the run, not from
//! the claimant.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use braid_engine::algorithm::{Registered, Registry, ReplayInput};
use braid_engine::prepared::Prepared;
use braid_engine::wire::NodeId;
use braid_net::runlog::{self, LogEvent};

use super::{check, NodeLog};

/// One logged training claim.
struct Claim {
    node: NodeId,
    /// Position of the `compute` entry in the node's log.
    seq: u64,
    round: Option<u64>,
    train_samples: u64,
    flops: u64,
    seconds: f64,
    /// The model hashes before and after training (an honest node always logs both).
    models: Option<(String, String)>,
    input: Option<String>,
    /// The run's start caused it.
    start: bool,
    /// The `received` entry that backs it: the earliest receipt of its input before it that
    /// backs no earlier claim of the node (`None`: there is none).
    receipt: Option<u64>,
    /// For a node that keeps state: its state hashes before and after the input.
    states: Option<(String, String)>,
    /// The inputs handled since the previous training, as logged.
    since: Vec<String>,
    /// Where the state the claim starts from comes from.
    anchor: Anchor,
}

/// Where the state before a claim comes from.
#[derive(Clone)]
enum Anchor {
    /// The node as the configuration builds it (its first training, not resumed).
    Fresh,
    /// The state after the node's previous training (its hash).
    After(String),
    /// Not from the run: the node resumed from its own checkpoint since, or logged no
    /// state after its previous training (which the note says).
    Own(&'static str),
}

/// What replay concluded about a claim.
enum Verdict {
    /// Confirmed, with how its starting state was established.
    Confirmed(&'static str),
    /// Replay computed something else: the claim is false.
    Refuted(String),
    /// The claim could not be checked (no input named, the input's copy missing).
    Unchecked(String),
}

/// `braid audit replay`.
pub fn replay(
    dir: &Path, config: Option<&Path>, sample: f64, seed: Option<u64>, registry: &Registry,
) -> Result<()> {
    if !(sample > 0.0 && sample <= 1.0) {
        bail!("--sample {sample}: a fraction of the claims, above 0 and at most 1");
    }
    // Unpredictable unless given: a participant must not know which claims will be checked.
    let seed = seed.unwrap_or_else(rand::random);
    let mut audit = check(dir, config, registry)?;
    if audit.problems() > 0 {
        audit.print_problems();
        bail!(
            "{} problem(s) in the logs of {}: replay checks claims of logs that verify",
            audit.problems(),
            dir.display()
        );
    }
    let path = config
        .map(Path::to_owned)
        .unwrap_or_else(|| dir.join("launch.toml"));
    let Some(cfg) = audit.config.take() else {
        bail!(
            "replay needs the run's configuration: {} does not exist (give --config FILE)",
            path.display()
        );
    };
    let run = braid_net::halt::run_id_of(&cfg);
    for l in &audit.logs {
        let joined = l.check.entries.iter().find_map(|e| match &e.event {
            LogEvent::Join { run, .. } => Some(run),
            _ => None,
        });
        if joined.is_some_and(|r| *r != run) {
            bail!(
                "{} is not the configuration {} ran (run id {run}, the log's {})",
                path.display(),
                l.path.display(),
                joined.map_or("", |r| r.as_str())
            );
        }
    }
    let algorithm = registry.of(&cfg).map_err(anyhow::Error::msg)?;
    let (claims, skipped): (Vec<Claim>, Vec<Claim>) = claims(&audit.logs)
        .into_iter()
        .partition(|c| algorithm.not_replayed(c.node).is_none());
    let mut skipped_nodes = std::collections::BTreeMap::new();
    for c in &skipped {
        *skipped_nodes.entry(c.node).or_insert(0usize) += 1;
    }
    for (node, n) in &skipped_nodes {
        println!(
            "node {node}: {n} training claim(s) not replayed: {}",
            algorithm.not_replayed(*node).unwrap_or_default()
        );
    }
    if claims.is_empty() {
        bail!(
            "no training claims (compute entries that trained) in the logs of {}",
            dir.display()
        );
    }
    if algorithm.replay_inputs().is_empty() {
        bail!("{} claims cannot be replayed yet", algorithm.name());
    }
    let chosen = choose(&claims, sample, seed);
    let max_bytes = cfg
        .network
        .as_ref()
        .map_or(1 << 30, |n| n.max_message_mib << 20);
    println!(
        "replaying {} of {} training claims (sample {sample}, seed {seed}) of run {}",
        chosen.len(),
        claims.len(),
        run.get(..12).unwrap_or(&run)
    );
    // Prepared once: verify's check of the final model may have done it already.
    let prepared = match audit.prepared.take() {
        Some(p) => p,
        None => algorithm.prepare(&cfg)?,
    };
    let t0 = Instant::now();
    let (mut confirmed, mut refuted, mut unchecked, mut logged_s) = (0, 0, 0, 0.0);
    for c in chosen {
        let at = format!(
            "node {} entry {}{}",
            c.node,
            c.seq,
            c.round.map_or(String::new(), |r| format!(" (round {r})"))
        );
        logged_s += c.seconds;
        match judge(c, &audit.logs, algorithm, &prepared, max_bytes) {
            Verdict::Confirmed(from) => {
                confirmed += 1;
                let (what, (before, after)) = match (&c.models, &c.states) {
                    (Some((b, a)), _) => ("model", (b.as_str(), a.as_str())),
                    (None, Some((b, a))) => ("state", (b.as_str(), a.as_str())),
                    (None, None) => ("model", ("", "")),
                };
                println!(
                    "{at}: confirmed: {what} {}.. -> {}.., {} samples, {} FLOPs{from}",
                    short(before),
                    short(after),
                    c.train_samples,
                    c.flops
                );
            }
            Verdict::Refuted(why) => {
                refuted += 1;
                println!("{at}: REFUTED: {why}");
            }
            Verdict::Unchecked(why) => {
                unchecked += 1;
                println!("{at}: not checked: {why}");
            }
        }
    }
    println!(
        "{confirmed} confirmed, {refuted} refuted, {unchecked} not checked | replay took {:.1} s; the claims logged {logged_s:.1} s of training",
        t0.elapsed().as_secs_f64()
    );
    if refuted + unchecked > 0 {
        bail!(
            "{refuted} claim(s) refuted and {unchecked} not checked in {}",
            dir.display()
        );
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Every compute entry that trained, in node and log order, each paired with the receipt
/// of its input (one receipt backs one claim, so a claim cannot borrow the input of another)
/// and with where its starting state comes from.
fn claims(logs: &[NodeLog]) -> Vec<Claim> {
    let mut out = Vec::new();
    for l in logs {
        let mut used = std::collections::BTreeSet::new();
        let mut anchor = Anchor::Fresh;
        for e in &l.check.entries {
            let LogEvent::Compute {
                round,
                train_samples,
                flops,
                seconds,
                model_before,
                model_after,
                input,
                start,
                state_before,
                state_after,
                since,
                ..
            } = &e.event
            else {
                if let LogEvent::Join { resumed: true, .. } = &e.event {
                    anchor = Anchor::Own(
                        "; from its own kept state (it resumed since its previous training)",
                    );
                }
                continue;
            };
            if *train_samples == 0 {
                continue;
            }
            let receipt = input.as_ref().and_then(|h| {
                l.check
                    .entries
                    .iter()
                    .take_while(|r| r.seq < e.seq)
                    .find(|r| {
                        !used.contains(&r.seq)
                            && matches!(&r.event, LogEvent::Received { hash, .. } if hash == h)
                    })
                    .map(|r| r.seq)
            });
            if let Some(r) = receipt {
                used.insert(r);
            }
            let states = state_before.clone().zip(state_after.clone());
            let next = match &states {
                Some((_, after)) => Anchor::After(after.clone()),
                None => {
                    Anchor::Own("; from its own kept state (its previous training logged none)")
                }
            };
            out.push(Claim {
                node: e.node,
                seq: e.seq,
                round: *round,
                train_samples: *train_samples,
                flops: *flops,
                seconds: *seconds,
                models: model_before.clone().zip(model_after.clone()),
                input: input.clone(),
                start: *start,
                receipt,
                states,
                since: since.clone(),
                anchor: std::mem::replace(&mut anchor, next),
            });
        }
    }
    out
}

/// A seeded sample of `ceil(fraction x claims)` claims (at least one), in log order: each
/// claim ranked by the SHA-256 of the seed, its node and its entry, so anyone can redo the
/// choice and nobody can steer it without changing the seed.
fn choose(claims: &[Claim], fraction: f64, seed: u64) -> Vec<&Claim> {
    let k = ((claims.len() as f64 * fraction).ceil() as usize).clamp(1, claims.len());
    let mut ranked: Vec<(String, usize)> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let key = format!("braid-replay-v1 {seed} {} {}", c.node, c.seq);
            (runlog::sha256_hex(key.as_bytes()), i)
        })
        .collect();
    ranked.sort();
    let mut picked: Vec<usize> = ranked.into_iter().take(k).map(|(_, i)| i).collect();
    picked.sort_unstable();
    picked.into_iter().map(|i| &claims[i]).collect()
}

fn log_of(logs: &[NodeLog], node: NodeId) -> Option<&NodeLog> {
    logs.iter().find(|l| l.check.node == Some(node))
}

/// A message a node received, from its sender's kept copy: the sender, as the receiver's
/// `received` entry (number `receipt`, or else any before entry `before`) names it, must log
/// sending it, and the copy must have the logged size and hash.
fn kept_message(
    node: NodeId, hash: &str, receipt: Option<u64>, before: u64, logs: &[NodeLog],
    algorithm: &dyn Registered, max_bytes: u64,
) -> Result<(NodeId, Vec<u8>), Verdict> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Verdict::Refuted(format!("input {hash:?} is not a SHA-256")));
    }
    let received = log_of(logs, node).and_then(|l| {
        l.check.entries.iter().find_map(|e| match &e.event {
            LogEvent::Received {
                from,
                what,
                hash: h,
                ..
            } if receipt.map_or(e.seq < before && h == hash, |r| e.seq == r) => {
                Some((*from, what.clone()))
            }
            _ => None,
        })
    });
    let Some((from, what)) = received else {
        return Err(Verdict::Refuted(format!(
            "it names input {}.., which its log does not record receiving before the claim, other than for an earlier claim",
            short(hash)
        )));
    };
    if !algorithm.replay_inputs().contains(&what.as_str()) {
        return Err(Verdict::Unchecked(format!(
            "a {what} input is not replayed for {} (replayed: {})",
            algorithm.name(),
            algorithm.replay_inputs().join(", ")
        )));
    }
    let Some(sender) = log_of(logs, from) else {
        return Err(Verdict::Unchecked(format!(
            "there is no log of node {from}, the input's sender"
        )));
    };
    let sent = sender.check.entries.iter().find_map(|e| match &e.event {
        LogEvent::Sent {
            to, hash: h, bytes, ..
        } if *to == node && h == hash => Some(*bytes),
        _ => None,
    });
    let Some(size) = sent else {
        return Err(Verdict::Refuted(format!(
            "node {from}'s log does not record sending it input {}..",
            short(hash)
        )));
    };
    let dir = sender.path.parent().unwrap_or(Path::new("."));
    let bytes = read_kept(
        &dir.join(runlog::KEPT_DIR).join(hash),
        Some(size),
        max_bytes,
        "the sender's copy of the input",
    )?;
    Ok((from, bytes))
}

/// A kept file named by its SHA-256: `size` bytes if its size was logged (at most `max` in
/// any case), hashing to its name.
fn read_kept(path: &Path, size: Option<u64>, max: u64, what: &str) -> Result<Vec<u8>, Verdict> {
    let unreadable = |e: std::io::Error| {
        Verdict::Unchecked(format!("{what}, {}, cannot be read ({e})", path.display()))
    };
    // Its size, within the limit, before it is read.
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && size.is_none_or(|s| m.len() == s) && m.len() <= max => {}
        Ok(m) => {
            return Err(Verdict::Unchecked(format!(
                "{} is {} bytes, not {} (at most {max})",
                path.display(),
                m.len(),
                size.map_or("a kept state's size".to_string(), |s| format!(
                    "the {s} logged"
                ))
            )))
        }
        Err(e) => return Err(unreadable(e)),
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match std::fs::read(path) {
        Ok(b) if runlog::sha256_hex(&b) == name => Ok(b),
        Ok(_) => Err(Verdict::Unchecked(format!(
            "{} does not hash to its name: {what} was changed",
            path.display()
        ))),
        Err(e) => Err(unreadable(e)),
    }
}

/// Checks one claim: its inputs as their senders logged and kept them, the state it starts
/// from, then the replay.
fn judge(
    c: &Claim, logs: &[NodeLog], algorithm: &dyn Registered, prepared: &Prepared, max_bytes: u64,
) -> Verdict {
    match replay_claim(c, logs, algorithm, prepared, max_bytes) {
        Ok(v) | Err(v) => v,
    }
}

fn replay_claim(
    c: &Claim, logs: &[NodeLog], algorithm: &dyn Registered, prepared: &Prepared, max_bytes: u64,
) -> Result<Verdict, Verdict> {
    // A node that keeps state is checked by its whole state; others by their model hashes.
    if c.models.is_none() && c.states.is_none() {
        return Err(Verdict::Unchecked(
            "it logs training without the model hashes".into(),
        ));
    }
    // The claim's own input.
    let own = match (&c.input, c.start) {
        (_, true) => None,
        (Some(hash), false) => Some(kept_message(c.node, hash, c.receipt, c.seq, logs, algorithm, max_bytes)?),
        (None, false) => return Err(Verdict::Unchecked(
            "the entry names no input message (written by a braid without replay, or a deadline started the training)".into(),
        )),
    };
    // Where it starts: the run's state and the inputs since, or the node's own kept state.
    let states_dir = log_of(logs, c.node)
        .and_then(|l| l.path.parent())
        .unwrap_or(Path::new("."))
        .join(runlog::STATES_DIR);
    let state_limit = max_bytes.saturating_mul(8);
    let (state, since, from) = match (&c.states, &c.anchor) {
        (None, _) => (None, Vec::new(), ""),
        (Some((before, _)), Anchor::Own(note)) => {
            let path = states_dir.join(before);
            let s = read_kept(&path, None, state_limit, "the node's kept state")?;
            (Some(s), Vec::new(), *note)
        }
        (Some(_), anchor) => {
            let state = match anchor {
                Anchor::After(h) => Some(read_kept(
                    &states_dir.join(h),
                    None,
                    state_limit,
                    "the node's kept state",
                )?),
                _ => None,
            };
            // Each input since: a kept message, or (`None`) the start of a fresh node.
            let mut since = Vec::new();
            for tag in &c.since {
                match tag.as_str() {
                    runlog::since::START if matches!(anchor, Anchor::Fresh) && since.is_empty() => {
                        since.push(None)
                    }
                    runlog::since::START
                    | runlog::since::DEADLINE
                    | runlog::since::UNKNOWN
                    | runlog::since::TOO_MANY => {
                        return Err(Verdict::Unchecked(format!(
                            "a {tag} input came between it and the previous training"
                        )))
                    }
                    hash => since.push(Some(kept_message(
                        c.node, hash, None, c.seq, logs, algorithm, max_bytes,
                    )?)),
                }
            }
            let note = if matches!(anchor, Anchor::Fresh) {
                "; from the node as configured"
            } else {
                "; from its previous training's state"
            };
            (state, since, note)
        }
    };
    let inputs: Vec<ReplayInput<'_>> = since
        .iter()
        .chain(std::iter::once(&own))
        .map(|input| match input {
            None => ReplayInput::Start,
            Some((from, bytes)) => ReplayInput::Message { from: *from, bytes },
        })
        .collect();
    let replayed = algorithm
        .replay(prepared, c.node, state.as_deref(), &inputs)
        .map_err(|e| Verdict::Unchecked(format!("replay failed: {e}")))?;
    let Some(r) = replayed.last() else {
        return Err(Verdict::Unchecked("replay returned nothing".into()));
    };
    if r.compute.train_samples == 0 {
        return Ok(Verdict::Refuted(format!(
            "given that input, node {} does not train (it logged {} samples)",
            c.node, c.train_samples
        )));
    }
    let mut wrong = Vec::new();
    match (&c.states, &r.states) {
        (None, Some(_)) => {
            return Err(Verdict::Unchecked(
                "the node carries state between inputs, and the entry logs none".into(),
            ))
        }
        (Some((logged_before, logged_after)), Some((state_before, state_after))) => {
            if state_before != logged_before {
                wrong.push(format!(
                    "it claims to start from state {}.., but {} gives {}..",
                    short(logged_before),
                    if matches!(c.anchor, Anchor::Own(_)) {
                        "its kept state"
                    } else {
                        "the run"
                    },
                    short(state_before)
                ));
            }
            if state_after != logged_after {
                wrong.push(format!(
                    "state after training: logged {}.., replay gives {}..",
                    short(logged_after),
                    short(state_after)
                ));
            }
        }
        _ => {}
    }
    if r.round != c.round {
        wrong.push(format!(
            "it is logged for round {:?}, but its input is of round {:?}",
            c.round, r.round
        ));
    }
    match (&c.models, &r.models) {
        (Some((claimed_before, claimed_after)), Some((before, after))) => {
            if before != claimed_before {
                wrong.push(format!(
                    "it claims to have trained from model {}.., but the input gives {}..",
                    short(claimed_before),
                    short(before)
                ));
            }
            if after != claimed_after {
                wrong.push(format!(
                    "model after training: logged {}.., replay gives {}..",
                    short(claimed_after),
                    short(after)
                ));
            }
        }
        (None, None) => {}
        (logged, replayed) => wrong.push(format!(
            "model hashes: {} logged, {} in replay",
            if logged.is_some() { "some" } else { "none" },
            if replayed.is_some() { "some" } else { "none" }
        )),
    }
    if r.compute.train_samples != c.train_samples {
        wrong.push(format!(
            "training samples: logged {}, replay {}",
            c.train_samples, r.compute.train_samples
        ));
    }
    if r.compute.flops != c.flops {
        wrong.push(format!(
            "FLOPs: logged {}, replay {}",
            c.flops, r.compute.flops
        ));
    }
    // What it sent while handling the input must be what its log says it sent after it.
    let log = log_of(logs, c.node);
    for (to, hash) in &r.sent {
        let logged = log.is_some_and(|l| {
            l.check.entries.iter().any(|e| {
                e.seq > c.seq
                    && matches!(&e.event, LogEvent::Sent { to: t, hash: h, .. } if t == to && h == hash)
            })
        });
        if !logged {
            wrong.push(format!(
                "replay sends node {to} message {}.., which its log does not record sending",
                short(hash)
            ));
        }
    }
    Ok(if wrong.is_empty() {
        Verdict::Confirmed(from)
    } else {
        Verdict::Refuted(wrong.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_net::runlog::{Entry, LogCheck};
    use std::path::PathBuf;

    fn entry(seq: u64, event: LogEvent) -> Entry {
        Entry {
            seq,
            prev: String::new(),
            node: 2,
            t: 0.0,
            event,
        }
    }

    fn trained(seq: u64, input: &str) -> Entry {
        entry(
            seq,
            LogEvent::Compute {
                round: Some(1),
                train_samples: 64,
                eval_samples: 0,
                flops: 1,
                seconds: 0.0,
                model_before: Some("b".into()),
                model_after: Some("a".into()),
                input: Some(input.into()),
                start: false,
                state_before: None,
                state_after: None,
                since: Vec::new(),
            },
        )
    }

    fn received(seq: u64, hash: &str) -> Entry {
        entry(
            seq,
            LogEvent::Received {
                from: 0,
                what: "train-request".into(),
                bytes: 1,
                hash: hash.into(),
            },
        )
    }

    #[test]
    fn a_receipt_backs_one_claim_and_only_claims_after_it() {
        let log = NodeLog {
            path: PathBuf::from("node-2/runlog.jsonl"),
            check: LogCheck {
                node: Some(2),
                entries: vec![
                    trained(0, "x"), // before any receipt of x
                    received(1, "x"),
                    trained(2, "x"), // backed by entry 1
                    trained(3, "x"), // the same input again: no receipt left
                    received(4, "x"),
                    trained(5, "x"), // a second delivery backs a second training
                ],
                ..Default::default()
            },
        };
        let c = claims(std::slice::from_ref(&log));
        let receipts: Vec<Option<u64>> = c.iter().map(|c| c.receipt).collect();
        assert_eq!(receipts, vec![None, Some(1), None, Some(4)]);
    }
}
