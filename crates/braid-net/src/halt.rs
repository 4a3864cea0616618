//! Halting a run: a signed halt message that every honest node verifies, obeys and forwards.
//!
//! The run's `network.halt_keys` name the keys allowed to halt it. A halt carries the run's
//! configuration hash, the time it was issued, the signer's public key and an ed25519
//! signature over both ([`braid_engine::wire::halt_message`]), so it can be forwarded by any
//! node and still be checked by every other: a node obeys only a halt for its own run, signed
//! by an authorized key. `braid halt` ([`send`]) delivers one to every participant it can
//! reach; nodes forward it to all the others.

use std::time::Duration;

use braid_engine::config::ExperimentConfig;
use braid_engine::wire::{halt_message, Control, NodeId};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::{Multiaddr, PeerId};

use crate::probe::{self, Outcome};
use crate::NetError;

/// A run's id: the SHA-256 (hex) of its configuration without the participants' addresses
/// (where a node listens is not part of what is run, and changes when a launched run is
/// resumed on new ports). Every node records it in its log and a halt must name it.
pub fn run_id_of(config: &ExperimentConfig) -> String {
    config.run_id()
}

/// The SHA-256 configuration hash (hex, as in the run log) as bytes.
pub fn run_id(hex: &str) -> Result<[u8; 32], NetError> {
    crate::identity::unhex(hex)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| NetError::Config(format!("{hex:?} is not a run id (64 hex digits)")))
}

/// A halt for run `run`, signed by `key`.
pub fn sign(key: &Keypair, run: [u8; 32], issued_at: u64) -> Result<Control, NetError> {
    let signature = key
        .sign(&halt_message(&run, issued_at))
        .map_err(|e| NetError::Key(format!("cannot sign the halt: {e}")))?;
    Ok(Control::Halt {
        run,
        issued_at,
        signer: key.public().encode_protobuf(),
        signature,
    })
}

/// How far a halt's issue time may lie before a node's start (clock skew between machines).
pub const CLOCK_SKEW_S: u64 = 300;

/// Checks a halt against this run, its authorized keys and the node's start time (Unix
/// seconds: a halt issued more than [`CLOCK_SKEW_S`] before it is a replay of an old one, e.g.
/// against a resumed run); returns the signer.
pub fn verify(
    halt: &Control, run: &[u8; 32], authorized: &[PeerId], started_at: u64,
) -> Result<PeerId, String> {
    let Control::Halt {
        run: r,
        issued_at,
        signer,
        signature,
    } = halt
    else {
        return Err("not a halt".into());
    };
    let key = PublicKey::try_decode_protobuf(signer)
        .map_err(|e| format!("the signer's key is unreadable: {e}"))?;
    let who = key.to_peer_id();
    if !authorized.contains(&who) {
        return Err(format!(
            "signed by {who}, which is not in network.halt_keys"
        ));
    }
    if !key.verify(&halt_message(r, *issued_at), signature) {
        return Err(format!("the signature by {who} does not verify"));
    }
    if r != run {
        return Err("it is for another run".into());
    }
    if issued_at.saturating_add(CLOCK_SKEW_S) < started_at {
        return Err(format!(
            "it was issued at {issued_at}, before this node started at {started_at} (a replayed halt?)"
        ));
    }
    Ok(who)
}

/// Sends `halt` as `key` to every target (node id, peer id, address); returns what each
/// answered.
pub fn send(
    key: &Keypair, targets: &[(NodeId, PeerId, Multiaddr)], halt: &Control, timeout: Duration,
) -> Vec<(NodeId, Result<Outcome, NetError>)> {
    // The frame names the run the halt names (a halt for another run is refused by the
    // frame's run id already).
    let run = match halt {
        Control::Halt { run, .. } => *run,
        _ => [0; 32],
    };
    let frame = crate::codec::frame(&run, &halt.frame());
    targets
        .iter()
        .map(|(node, peer, addr)| {
            let r = probe::send_raw(
                key.clone(),
                addr.clone(),
                *peer,
                vec![frame.clone()],
                timeout,
            )
            .and_then(|mut v| v.pop().ok_or_else(|| NetError::Io("no answer".into())));
            (*node, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_authorized_signature_for_this_run_verifies() {
        let boss = crate::identity::generate();
        let other = crate::identity::generate();
        let run = [7u8; 32];
        let ok = sign(&boss, run, 100).unwrap();
        let authorized = [boss.public().to_peer_id()];
        assert_eq!(
            verify(&ok, &run, &authorized, 0),
            Ok(boss.public().to_peer_id())
        );
        // Survives the wire.
        let back = braid_engine::wire::Body::<braid_engine::algorithms::fedavg::Msg>::decode(
            &ok.frame(),
            &braid_engine::wire::Limits::new(0),
        )
        .unwrap();
        let braid_engine::wire::Body::Control(back) = back else {
            unreachable!()
        };
        assert!(verify(&back, &run, &authorized, 0).is_ok());
        // Another run, an unauthorized signer, a tampered field, a key swapped in.
        assert!(verify(&ok, &[8u8; 32], &authorized, 0).is_err());
        let forged = sign(&other, run, 100).unwrap();
        assert!(verify(&forged, &run, &authorized, 0)
            .unwrap_err()
            .contains("not in network.halt_keys"));
        let Control::Halt {
            signer, signature, ..
        } = ok.clone()
        else {
            unreachable!()
        };
        let later = Control::Halt {
            run,
            issued_at: 101,
            signer: signer.clone(),
            signature: signature.clone(),
        };
        assert!(verify(&later, &run, &authorized, 0)
            .unwrap_err()
            .contains("does not verify"));
        let Control::Halt {
            signature: other_sig,
            ..
        } = forged
        else {
            unreachable!()
        };
        let spliced = Control::Halt {
            run,
            issued_at: 100,
            signer,
            signature: other_sig,
        };
        assert!(verify(&spliced, &run, &authorized, 0).is_err());
        assert!(run_id(&"ab".repeat(32)).is_ok() && run_id("xyz").is_err());
        // Replayed against a node started long after it was issued.
        assert!(verify(&ok, &run, &authorized, 100 + CLOCK_SKEW_S).is_ok());
        assert!(verify(&ok, &run, &authorized, 101 + CLOCK_SKEW_S)
            .unwrap_err()
            .contains("replayed"));
    }
}
