//! Unit tests of `secagg.rs`.

use super::*;
use proptest::prelude::*;
use rand::RngCore;

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Runs a round through encoded messages. `drop_before_shares` never share keys,
/// `drop_before_mask` share but never send their input, `drop_before_reveal` send their
/// input but do not answer the unmask request. Returns the server's result and every
/// masked input it saw.
#[allow(clippy::type_complexity)]
fn run_round(
    inputs: &BTreeMap<ClientId, Vec<u64>>, threshold: usize, drop_before_shares: &[ClientId],
    drop_before_mask: &[ClientId], drop_before_reveal: &[ClientId], seed: u64,
) -> Result<(Vec<u64>, BTreeMap<ClientId, Vec<u64>>), SecAggError> {
    let mut r = rng(seed);
    let len = inputs.values().next().map_or(0, Vec::len);
    let round = 7;
    let wire = |m: Message| Message::decode(&m.encode()).unwrap();
    let mut clients: BTreeMap<ClientId, Client> = inputs
        .keys()
        .map(|&id| (id, Client::new(id, round, threshold, &mut r)))
        .collect();
    let mut server = Server::new(round, threshold, len)?;
    let keys = clients
        .iter()
        .map(|(id, c)| match wire(Message::Keys(c.public_keys())) {
            Message::Keys(k) => (*id, k),
            _ => unreachable!(),
        })
        .collect();
    let roster = server.roster(keys)?;
    let mut sent = BTreeMap::new();
    for (id, c) in clients.iter_mut() {
        if drop_before_shares.contains(id) {
            continue;
        }
        let Message::Roster(roster) = wire(Message::Roster(roster.clone())) else {
            unreachable!()
        };
        let Message::Shares(s) = wire(Message::Shares(c.share_keys(roster, &mut r)?)) else {
            unreachable!()
        };
        sent.insert(*id, s);
    }
    let routed = server.route_shares(sent)?;
    let mut seen = BTreeMap::new();
    for (id, inbox) in routed {
        if drop_before_mask.contains(&id) {
            continue;
        }
        let c = clients.get_mut(&id).unwrap();
        let Message::SharesFor(inbox) = wire(Message::SharesFor(inbox)) else {
            unreachable!()
        };
        let Message::Masked(y) = wire(Message::Masked(c.mask(inbox, &inputs[&id])?)) else {
            unreachable!()
        };
        server.add_masked(id, &y)?;
        seen.insert(id, y);
    }
    let survivors = server.survivors()?;
    for id in &survivors {
        if drop_before_reveal.contains(id) {
            continue;
        }
        let shares = clients.get_mut(id).unwrap().unmask(&survivors)?;
        let Message::Reveal(shares) = wire(Message::Reveal(shares)) else {
            unreachable!()
        };
        server.add_reveal(*id, shares)?;
    }
    Ok((server.finish()?, seen))
}

fn plain_sum(inputs: &BTreeMap<ClientId, Vec<u64>>, ids: &[ClientId]) -> Vec<u64> {
    let len = inputs.values().next().map_or(0, Vec::len);
    let mut s = vec![0u64; len];
    for id in ids {
        s.iter_mut()
            .zip(&inputs[id])
            .for_each(|(a, b)| *a = a.wrapping_add(*b));
    }
    s
}

#[test]
fn shamir_recovers_from_any_threshold_subset() {
    let mut r = rng(1);
    let mut secret = [0u8; 32];
    r.fill_bytes(&mut secret);
    let xs: Vec<u64> = (1..=7).collect();
    let shares = split(&secret, 4, &xs, &mut r).unwrap();
    for start in 0..4 {
        assert_eq!(combine(&shares[start..start + 4], 4).unwrap(), secret);
    }
    // All 7 (the extra ones are checked).
    assert_eq!(combine(&shares, 4).unwrap(), secret);
    // A tampered extra share is caught.
    let mut bad = shares.clone();
    bad[6].y[0] = fadd(bad[6].y[0], 1);
    assert!(combine(&bad, 4).is_err());
    // Too few shares are refused; with threshold 3 they give an unrelated secret.
    assert!(combine(&shares[..3], 4).is_err());
    assert_ne!(combine(&shares[..3], 3).ok(), Some(secret));
}

#[test]
fn field_arithmetic() {
    for a in [1u64, 2, 12345, P - 1, 1 << 60] {
        assert_eq!(fmul(a, finv(a)), 1);
        assert_eq!(fsub(fadd(a, 99), 99), a);
    }
    assert_eq!(fmul(P - 1, P - 1), 1); // (-1)^2
}

#[test]
fn fixed_point_round_trip_and_range() {
    let x = vec![0.0, 1.5, -2.25, 1e-7, -123456.789];
    let enc = to_ring(&x, 24, 1e9).unwrap();
    for (a, b) in x.iter().zip(from_ring(&enc, 24)) {
        assert!((a - b).abs() <= 0.5 / 2f64.powi(24));
    }
    assert!(matches!(
        to_ring(&[2e9], 24, 1e9),
        Err(SecAggError::Range { .. })
    ));
    assert!(to_ring(&[f64::NAN], 24, 1e9).is_err());
    // The limit keeps sums of `clients` inputs inside the signed range.
    let l = input_limit(24, 10);
    let one = to_ring(&[l], 24, l).unwrap();
    let sum = (0..10).fold(0u64, |s, _| s.wrapping_add(one[0]));
    assert!((sum as i64) > 0);
}

#[test]
fn exact_sum_without_dropouts() {
    let inputs: BTreeMap<ClientId, Vec<u64>> = (1..=5)
        .map(|id| (id, (0..50).map(|k| (id as u64) * 1000 + k).collect()))
        .collect();
    let ids: Vec<ClientId> = inputs.keys().copied().collect();
    let (sum, seen) = run_round(&inputs, 3, &[], &[], &[], 1).unwrap();
    assert_eq!(sum, plain_sum(&inputs, &ids));
    // The server never sees an input in the clear.
    for (id, y) in seen {
        let differ = y.iter().zip(&inputs[&id]).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 50, "client {id}'s masked input leaks values");
    }
}

#[test]
fn too_many_dropouts_are_refused_not_misreported() {
    let inputs: BTreeMap<ClientId, Vec<u64>> = (1..=5).map(|id| (id, vec![id as u64; 8])).collect();
    // Threshold 4: two clients dropping before their input leaves 3 < 4.
    let err = run_round(&inputs, 4, &[], &[2, 4], &[], 2).unwrap_err();
    assert!(
        err.to_string().contains("fewer than the threshold"),
        "{err}"
    );
    // Dropping at the reveal: 3 reveals cannot finish.
    let err = run_round(&inputs, 4, &[], &[], &[1, 5], 3).unwrap_err();
    assert!(
        err.to_string().contains("fewer than the threshold"),
        "{err}"
    );
}

#[test]
fn a_client_refuses_to_reveal_both_shares_of_anyone() {
    let mut r = rng(4);
    let mut a = Client::new(1, 1, 2, &mut r);
    let b = Client::new(2, 1, 2, &mut r);
    let roster = vec![(1, a.public_keys()), (2, b.public_keys())];
    a.share_keys(roster, &mut r).unwrap();
    // No shares from 2: U2 would be {1} alone, below the threshold.
    assert!(a.mask(Vec::new(), &[0; 4]).is_err());
    // Unmask before masking is refused.
    assert!(a.unmask(&[1, 2]).is_err());
}

#[test]
fn the_server_cannot_read_shares_addressed_to_clients() {
    let mut r = rng(5);
    let mut a = Client::new(1, 3, 2, &mut r);
    let b = Client::new(2, 3, 2, &mut r);
    let roster = vec![(1, a.public_keys()), (2, b.public_keys())];
    let sealed = a.share_keys(roster, &mut r).unwrap();
    // The server knows both public keys; with its own secret it derives another key.
    let server_secret = [9u8; 32];
    let attempt = cipher_for(3, 1, 2, &server_secret, &a.public_keys().cipher)
        .decrypt(Nonce::from_slice(&nonce(3, 1, 2)), sealed[0].1.as_slice());
    assert!(attempt.is_err());
}

#[test]
fn what_the_server_can_unmask_alone_is_still_masked() {
    // The server learns each survivor's b. Removing b from a masked input still leaves
    // the pairwise masks, so the input stays hidden.
    let inputs: BTreeMap<ClientId, Vec<u64>> = (1..=4).map(|id| (id, vec![0u64; 32])).collect();
    let mut r = rng(6);
    let mut clients: Vec<Client> = (1..=4).map(|id| Client::new(id, 1, 3, &mut r)).collect();
    let mut server = Server::new(1, 3, 32).unwrap();
    let roster = server
        .roster(clients.iter().map(|c| (c.id, c.public_keys())).collect())
        .unwrap();
    let sent = clients
        .iter_mut()
        .map(|c| (c.id, c.share_keys(roster.clone(), &mut r).unwrap()))
        .collect();
    let routed = server.route_shares(sent).unwrap();
    let mut masked = BTreeMap::new();
    for c in clients.iter_mut() {
        let y = c.mask(routed[&c.id].clone(), &inputs[&c.id]).unwrap();
        server.add_masked(c.id, &y).unwrap();
        masked.insert(c.id, y);
    }
    let survivors = server.survivors().unwrap();
    let reveals: Vec<Vec<(ClientId, Share)>> = clients
        .iter_mut()
        .map(|c| c.unmask(&survivors).unwrap())
        .collect();
    for owner in 1..=4u32 {
        let shares: Vec<Share> = reveals
            .iter()
            .map(|r| r.iter().find(|(id, _)| *id == owner).unwrap().1)
            .collect();
        let b = combine(&shares, 3).unwrap();
        let mut y = masked[&owner].clone();
        apply_mask(&mut y, self_seed(1, owner, &b), true);
        assert!(
            y.iter().all(|&v| v != 0),
            "client {owner}'s input is exposed"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// With up to `n - threshold` dropouts spread over the steps, the server recovers the
    /// exact sum of the inputs of the clients whose masked input arrived.
    #[test]
    fn exact_sum_with_dropouts(
        n in 3usize..8,
        len in 1usize..40,
        seed in any::<u64>(),
        spread in proptest::collection::vec(0u8..3, 8),
    ) {
        let threshold = n / 2 + 1;
        let mut r = rng(seed);
        let ids: Vec<ClientId> = (1..=n as ClientId).map(|i| i * 3).collect();
        let inputs: BTreeMap<ClientId, Vec<u64>> = ids
            .iter()
            .map(|&id| (id, (0..len).map(|_| r.next_u64()).collect()))
            .collect();
        let dropped = pick(&ids, n - threshold, &mut r);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for (k, id) in dropped.iter().enumerate() {
            match spread[k] {
                0 => a.push(*id),
                1 => b.push(*id),
                _ => c.push(*id),
            }
        }
        let (sum, _) = run_round(&inputs, threshold, &a, &b, &c, seed).unwrap();
        let masked: Vec<ClientId> = ids
            .iter()
            .copied()
            .filter(|id| !a.contains(id) && !b.contains(id))
            .collect();
        prop_assert_eq!(sum, plain_sum(&inputs, &masked));
    }

    /// Arbitrary bytes never panic the decoder; valid messages round-trip.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes);
        }
    }
}

#[test]
fn messages_round_trip_and_lengths_match() {
    let mut r = rng(8);
    let share = split(&[3u8; 32], 2, &[2, 5], &mut r).unwrap()[0];
    let keys = PublicKeys {
        cipher: [1; 32],
        mask: [2; 32],
    };
    for m in [
        Message::Keys(keys),
        Message::Roster(vec![(1, keys), (4, keys)]),
        Message::Shares(vec![(2, vec![7; SEALED_BYTES])]),
        Message::SharesFor(vec![(2, vec![7; SEALED_BYTES]), (3, vec![1; SEALED_BYTES])]),
        Message::Masked(vec![1, u64::MAX, 3]),
        Message::Unmask(vec![1, 2, 9]),
        Message::Reveal(vec![(1, share)]),
    ] {
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len(), "{}", m.name());
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        assert!(Message::decode(&bytes[..bytes.len() - 1]).is_err());
    }
    // Unsorted ids are refused.
    let bytes = Message::Unmask(vec![2, 1]).encode();
    assert!(Message::decode(&bytes).is_err());
}
