//! `braid audit replay DIR`: re-executes a seeded sample of the training claims in a run's
//! verified logs and confirms or refutes each.
//!
//! A claim is a `compute` entry with model hashes: "handling message `input`, I trained from
//! the model of hash `model_before` to `model_after`, on `train_samples` samples, spending
//! `flops`". Its input comes from the run, not from the claimant: the sender kept a copy of
//! the message, named by its SHA-256, and the sender's signed log names that hash. Replay
//! builds the claimant's node afresh from the run's configuration (its shard, seed and
//! settings), hands it the input and compares what it computes, bit for bit.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use braid_engine::algorithm::{Registered, Registry};
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
    /// The `received` entry that backs it: the earliest receipt of its input before it that
    /// backs no earlier claim of the node (`None`: there is none).
    receipt: Option<u64>,
}

/// What replay concluded about a claim.
enum Verdict {
    Confirmed,
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
    let claims = claims(&audit.logs);
    if claims.is_empty() {
        bail!(
            "no training claims (compute entries that trained) in the logs of {}",
            dir.display()
        );
    }
    if algorithm.replay_inputs().is_empty() {
        bail!(
            "{} claims cannot be replayed yet: its nodes' training depends on state carried between inputs (replay covers the FedAvg family)",
            algorithm.name()
        );
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
            Verdict::Confirmed => {
                confirmed += 1;
                let (before, after) = c.models.as_ref().map_or(("", ""), |(b, a)| (b, a));
                println!(
                    "{at}: confirmed: model {}.. -> {}.., {} samples, {} FLOPs",
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
/// of its input: one receipt backs one claim, so a claim cannot borrow the input of another.
fn claims(logs: &[NodeLog]) -> Vec<Claim> {
    let mut out = Vec::new();
    for l in logs {
        let mut used = std::collections::BTreeSet::new();
        for e in &l.check.entries {
            let LogEvent::Compute {
                round,
                train_samples,
                flops,
                seconds,
                model_before,
                model_after,
                input,
                ..
            } = &e.event
            else {
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
            out.push(Claim {
                node: e.node,
                seq: e.seq,
                round: *round,
                train_samples: *train_samples,
                flops: *flops,
                seconds: *seconds,
                models: model_before.clone().zip(model_after.clone()),
                input: input.clone(),
                receipt,
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

/// Checks one claim: its input as the sender logged and kept it, then the replay.
fn judge(
    c: &Claim, logs: &[NodeLog], algorithm: &dyn Registered, prepared: &Prepared, max_bytes: u64,
) -> Verdict {
    let Some(input) = &c.input else {
        return Verdict::Unchecked(
            "the entry names no input message (written by a braid without replay, or training no message started)".into(),
        );
    };
    if input.len() != 64 || !input.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Verdict::Refuted(format!("its input {input:?} is not a SHA-256"));
    }
    let Some((claimed_before, claimed_after)) = &c.models else {
        return Verdict::Unchecked("it logs training without the model hashes".into());
    };
    let received = c.receipt.and_then(|seq| {
        log_of(logs, c.node)?
            .check
            .entries
            .iter()
            .find_map(|e| match &e.event {
                LogEvent::Received { from, what, .. } if e.seq == seq => {
                    Some((*from, what.clone()))
                }
                _ => None,
            })
    });
    let Some((from, what)) = received else {
        return Verdict::Refuted(format!(
            "it names input {}.., which its log does not record receiving before the claim, other than for an earlier claim",
            short(input)
        ));
    };
    if !algorithm.replay_inputs().contains(&what.as_str()) {
        return Verdict::Unchecked(format!(
            "a {what} input is not replayed for {} (replayed: {})",
            algorithm.name(),
            algorithm.replay_inputs().join(", ")
        ));
    }
    let Some(sender) = log_of(logs, from) else {
        return Verdict::Unchecked(format!(
            "there is no log of node {from}, the input's sender"
        ));
    };
    let sent = sender.check.entries.iter().find_map(|e| match &e.event {
        LogEvent::Sent {
            to, hash, bytes, ..
        } if *to == c.node && hash == input => Some(*bytes),
        _ => None,
    });
    let Some(size) = sent else {
        return Verdict::Refuted(format!(
            "node {from}'s log does not record sending it input {}..",
            short(input)
        ));
    };
    let copy: PathBuf = sender
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .join(runlog::KEPT_DIR)
        .join(input);
    // Its size as logged, within the run's message limit, before it is read.
    match std::fs::metadata(&copy) {
        Ok(m) if m.is_file() && m.len() == size && size <= max_bytes => {}
        Ok(m) => {
            return Verdict::Unchecked(format!(
                "{} is {} bytes, not the {size} its sender logged (at most {max_bytes})",
                copy.display(),
                m.len()
            ))
        }
        Err(e) => {
            return Verdict::Unchecked(format!(
                "the sender's copy of the input, {}, cannot be read ({e})",
                copy.display()
            ))
        }
    }
    let bytes = match std::fs::read(&copy) {
        Ok(b) if runlog::sha256_hex(&b) == *input => b,
        Ok(_) => {
            return Verdict::Unchecked(format!(
                "{} does not hash to its name: the sender's copy was changed",
                copy.display()
            ))
        }
        Err(e) => {
            return Verdict::Unchecked(format!(
                "the sender's copy of the input, {}, cannot be read ({e})",
                copy.display()
            ))
        }
    };
    let r = match algorithm.replay(prepared, c.node, from, &bytes) {
        Ok(r) => r,
        Err(e) => return Verdict::Unchecked(format!("replay failed: {e}")),
    };
    let Some((before, after)) = r.models else {
        return Verdict::Refuted(format!(
            "given that input, node {} does not train (it logged {} samples)",
            c.node, c.train_samples
        ));
    };
    let mut wrong = Vec::new();
    if r.round != c.round {
        wrong.push(format!(
            "it is logged for round {:?}, but its input is of round {:?}",
            c.round, r.round
        ));
    }
    if before != *claimed_before {
        wrong.push(format!(
            "it claims to have trained from model {}.., but the input gives {}..",
            short(claimed_before),
            short(&before)
        ));
    }
    if after != *claimed_after {
        wrong.push(format!(
            "model after training: logged {}.., replay gives {}..",
            short(claimed_after),
            short(&after)
        ));
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
    if wrong.is_empty() {
        Verdict::Confirmed
    } else {
        Verdict::Refuted(wrong.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_net::runlog::{Entry, LogCheck};

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
