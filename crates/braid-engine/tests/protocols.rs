//! Every built-in protocol's messages on the wire: each kind's frame is exactly its
//! `encoded_len` and decodes to itself (property tests), every cut of a frame and every
//! count beyond the run's limits is refused, and the layout is the documented one (the kind
//! byte, then the fields in declared order, little-endian).

use std::sync::Arc;

use braid_engine::algorithms::{dsgd, fedavg, mutual, split};
use braid_engine::wire::{Body, Control, Limits, Message, Tensor, WireError};
use proptest::prelude::*;

/// Each message, and each control message in the same run, encodes to exactly `encoded_len`
/// bytes and decodes back to itself.
fn round_trips<M: Message>(messages: Vec<M>, controls: &[Control]) {
    let bodies = messages.into_iter().map(Body::Msg);
    for body in bodies.chain(controls.iter().cloned().map(Body::Control)) {
        let encoded = body.encode();
        assert_eq!(encoded.len(), body.encoded_len(), "{}", body.kind());
        assert_eq!(Body::<M>::decode(&encoded, &Limits::new(64)), Ok(body));
    }
}

/// Every cut of `m`'s frame is refused, and so is the whole frame when the limit is `tight`
/// values; returns the frame.
fn refuses_cuts_and_excess<M: Message>(m: M, tight: usize) -> Vec<u8> {
    let bytes = Body::Msg(m).encode();
    for cut in 0..bytes.len() {
        assert!(
            Body::<M>::decode(&bytes[..cut], &Limits::new(10)).is_err(),
            "cut at {cut}"
        );
    }
    assert!(Body::<M>::decode(&bytes, &Limits::new(tight)).is_err());
    bytes
}

fn packed(values: &[f32]) -> Vec<u8> {
    values.iter().map(|v| *v as u8).collect()
}

proptest! {
    #[test]
    fn every_kind_round_trips_with_its_exact_length(values in prop::collection::vec(-1e6f32..1e6, 0..64), round in 0u32..1000) {
        let exact = || Tensor::exact(values.clone());
        let bytes = packed(&values);
        let step = u64::from(round) << 20;
        round_trips(vec![
            fedavg::Msg::Request { round, model: exact() },
            fedavg::Msg::Request { round, model: Tensor::packed(bytes.clone()) },
            fedavg::Msg::DeltaRequest { round, base: round / 2, delta: Tensor::packed(bytes.clone()) },
            fedavg::Msg::Reply { round, num_samples: 600, steps: 19, train_loss: 0.5, update: exact() },
            fedavg::Msg::Reply { round, num_samples: 3, steps: 4, train_loss: 0.5, update: Tensor::packed(bytes.clone()) },
            fedavg::Msg::SecAgg { round, body: Arc::new(bytes.clone()) },
        ], &[
            Control::Shutdown { round },
            Control::JoinRequest { step: u64::from(round) << 33 },
            Control::JoinReply { step: 5, round, model: exact() },
            Control::Halt { run: [round as u8; 32], issued_at: 7, signer: vec![1, 2, 3], signature: bytes.clone() },
        ]);
        round_trips(vec![
            dsgd::Msg::Gossip { round, model: exact() },
            dsgd::Msg::Gossip { round, model: Tensor::packed(bytes.clone()) },
            dsgd::Msg::Snapshot { step: u64::from(round) * 7, train_loss: 0.25, accuracy: 0.5, loss: 1.5, gossip_bytes: 1 << 40, model: exact() },
        ], &[Control::Shutdown { round }]);
        round_trips(vec![
            split::Msg::Request { step, epoch: round, offset: 7, count: 2, client_part: exact() },
            split::Msg::Request { step, epoch: round, offset: 7, count: 2, client_part: Tensor::packed(bytes.clone()) },
            split::Msg::Activations { step: 9, labels: bytes.iter().map(|&b| u32::from(b)).collect(), acts: exact() },
            split::Msg::Activations { step: 5, labels: values.iter().map(|v| v.to_bits()).collect(), acts: exact() },
            split::Msg::Activations { step: 3, labels: vec![1, 2], acts: Tensor::packed(bytes.clone()) },
            split::Msg::Gradient { step: 1, grad: exact() },
            split::Msg::ClientGrad { step: 2, grad: exact() },
            split::Msg::ClientGrad { step: 4, grad: Tensor::packed(vec![9; 3]) },
        ], &[Control::Shutdown { round }]);
        round_trips(vec![
            mutual::Msg::Model { round, arch: 2, model: exact() },
            mutual::Msg::Model { round, arch: 1, model: Tensor::packed(bytes.clone()) },
            mutual::Msg::Report { round, arch: 1, accuracy: 0.5, loss: 1.5, peak_accuracy: 0.75, peak_loss: 0.9, train_loss: 0.25, bytes_sent: 1 << 40 },
        ], &[Control::Shutdown { round }]);
    }
}

#[test]
fn cut_frames_and_counts_beyond_the_limits_are_refused() {
    let model = || Tensor::exact(vec![1.0; 3]);
    refuses_cuts_and_excess(
        dsgd::Msg::Gossip {
            round: 1,
            model: model(),
        },
        2,
    );
    let (step, train_loss, accuracy, loss, gossip_bytes) = (5, 0.1, 0.2, 0.3, 9);
    refuses_cuts_and_excess(
        dsgd::Msg::Snapshot {
            step,
            train_loss,
            accuracy,
            loss,
            gossip_bytes,
            model: model(),
        },
        2,
    );
    refuses_cuts_and_excess(
        mutual::Msg::Model {
            round: 2,
            arch: 1,
            model: model(),
        },
        2,
    );
    let labels = vec![1, 2, 3];
    refuses_cuts_and_excess(
        split::Msg::Activations {
            step: 9,
            labels,
            acts: model(),
        },
        2,
    );

    let update = Tensor::exact(vec![1.0, 2.0]);
    let (round, num_samples, steps, train_loss) = (3, 600, 19, 0.5);
    let reply = fedavg::Msg::Reply {
        round,
        num_samples,
        steps,
        train_loss,
        update,
    };
    let good = refuses_cuts_and_excess(reply, 1);
    assert_eq!(
        Body::<fedavg::Msg>::decode(&good, &Limits::new(1)),
        Err(WireError::TooLarge { got: 2, max: 1 })
    );
    let mut bad_kind = good.clone();
    bad_kind[4] = 99;
    assert_eq!(
        Body::<fedavg::Msg>::decode(&bad_kind, &Limits::new(10)).map_err(|e| e.to_string()),
        Err("malformed message: unknown fedavg message kind 99".into())
    );
    // A count announcing two billion values.
    let mut huge = good[..4 + 1 + 4 + 8 + 4 + 4].to_vec();
    huge.extend_from_slice(&0x7fff_ffffu32.to_le_bytes());
    assert!(Body::<fedavg::Msg>::decode(&huge, &Limits::new(usize::MAX)).is_err());
}

#[test]
fn frames_keep_the_documented_layout() {
    let reply = fedavg::Msg::Reply {
        round: 3,
        num_samples: 600,
        steps: 19,
        train_loss: 0.5,
        update: Tensor::exact(vec![1.0, -2.0]),
    };
    let mut want = vec![b'B', b'R', 1, 1, 2];
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(&600u64.to_le_bytes());
    want.extend_from_slice(&19u32.to_le_bytes());
    want.extend_from_slice(&0.5f32.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&1.0f32.to_le_bytes());
    want.extend_from_slice(&(-2.0f32).to_le_bytes());
    assert_eq!(Body::Msg(reply).encode(), want);

    // Packed tensors set the length word's high bit; labels are a u32 count and bytes.
    let acts = split::Msg::Activations {
        step: 9,
        labels: vec![4, 5],
        acts: Tensor::packed(vec![7]),
    };
    let mut want = vec![b'B', b'R', 3, 1, 2];
    want.extend_from_slice(&9u64.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(&[4, 5]);
    want.extend_from_slice(&(1u32 | 1 << 31).to_le_bytes());
    want.push(7);
    assert_eq!(Body::Msg(acts).encode(), want);

    // Control frames are protocol 0 in every run; a halt's fields are a u16 length and bytes.
    let halt = Control::Halt {
        run: [9; 32],
        issued_at: 11,
        signer: vec![1],
        signature: vec![2, 3],
    };
    let mut want = vec![b'B', b'R', 0, 1, 4];
    want.extend_from_slice(&[9; 32]);
    want.extend_from_slice(&11u64.to_le_bytes());
    want.extend_from_slice(&[1, 0, 1, 2, 0, 2, 3]);
    assert_eq!(halt.frame(), want);
    assert_eq!(Body::<dsgd::Msg>::Control(halt).encode(), want);
    assert_eq!(Control::Shutdown { round: 2 }.round(), Some(2));
    assert_eq!(
        Control::JoinRequest { step: 1 << 40 }.round(),
        Some(1 << 40)
    );
}

#[test]
fn a_halt_field_beyond_its_limit_is_refused_by_name() {
    let halt = Control::Halt {
        run: [0; 32],
        issued_at: 1,
        signer: vec![],
        signature: vec![],
    };
    let mut bytes = halt.frame();
    let signer_len = 4 + 1 + 32 + 8;
    bytes[signer_len..signer_len + 2].copy_from_slice(&1025u16.to_le_bytes());
    bytes.splice(signer_len + 2..signer_len + 2, vec![0u8; 1025]);
    assert_eq!(
        Body::<fedavg::Msg>::decode(&bytes, &Limits::new(10)).map_err(|e| e.to_string()),
        Err("malformed message: signer of 1025 bytes (at most 1024)".into())
    );
}
