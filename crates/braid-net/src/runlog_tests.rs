//! Unit tests of the run log.

use super::*;

fn write_log(dir: &Path, key: &Keypair, node: NodeId, n: usize) -> PathBuf {
    let p = dir.join(format!("log-{node}"));
    let mut log = RunLog::open(&p, key.clone(), node).unwrap();
    log.append(LogEvent::Join {
        run: sha256_hex(b"config"),
        peer_id: key.public().to_peer_id().to_string(),
        public_key: hex(&key.public().encode_protobuf()),
        resumed: false,
    })
    .unwrap();
    for i in 0..n {
        log.append(LogEvent::Sent {
            to: 1 - node,
            what: "gossip".into(),
            bytes: 10,
            hash: sha256_hex(&[i as u8]),
        })
        .unwrap();
        log.append(LogEvent::Delivered {
            to: 1 - node,
            what: "gossip".into(),
            hash: sha256_hex(&[i as u8]),
            receiver_log: None,
        })
        .unwrap();
        log.append(LogEvent::Received {
            from: 1 - node,
            what: "gossip".into(),
            bytes: 10,
            hash: sha256_hex(&[i as u8]),
        })
        .unwrap();
    }
    log.append(LogEvent::Leave {
        reason: "finished".into(),
    })
    .unwrap();
    log.sync().unwrap();
    p
}

fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect()
}

fn join(lines: &[Vec<u8>]) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect()
}

#[test]
fn a_log_cut_before_what_it_showed_a_sender_or_rewritten_up_to_it_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (k0, k1) = (crate::identity::generate(), crate::identity::generate());
    let receiver = write_log(dir.path(), &k1, 1, 3);
    let bytes = std::fs::read(&receiver).unwrap();
    let rl = RunLog::open(&receiver, k1.clone(), 1).unwrap();
    let (seq, head) = rl.head().unwrap();
    assert_eq!(seq, 10, "join, 3 x 3 entries, leave");
    drop(rl);
    let p0 = write_log(dir.path(), &k0, 0, 0);
    let mut log = RunLog::open(&p0, k0.clone(), 0).unwrap();
    log.append(LogEvent::Delivered {
        to: 1,
        what: "gossip".into(),
        hash: sha256_hex(b"m"),
        receiver_log: Some((
            seq - 1,
            verify(&bytes, None).line_hash(seq - 1).unwrap().into(),
        )),
    })
    .unwrap();
    log.append(LogEvent::Delivered {
        to: 1,
        what: "gossip".into(),
        hash: sha256_hex(b"n"),
        receiver_log: Some((seq, head)),
    })
    .unwrap();
    drop(log);
    let sender = verify(&std::fs::read(&p0).unwrap(), None);
    assert!(sender.problems.is_empty() && sender.entries.len() == 4);
    let whole = verify(&bytes, None);
    assert!(check_witnessed(&[(0, &sender), (1, &whole)]).is_empty());
    // Its last entry removed and the log re-signed to end well: still found.
    let mut cut = lines(&bytes);
    cut.pop();
    std::fs::write(&receiver, join(&cut)).unwrap();
    let mut rl = RunLog::open(&receiver, k1.clone(), 1).unwrap();
    rl.append(LogEvent::Leave {
        reason: "finished".into(),
    })
    .unwrap();
    drop(rl);
    let resigned = verify(&std::fs::read(&receiver).unwrap(), None);
    assert!(resigned.problems.is_empty());
    let p = check_witnessed(&[(0, &sender), (1, &resigned)]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("differs at entry 10") && p[0].contains("rewritten"),
        "{p:?}"
    );
    std::fs::write(&receiver, join(&cut)).unwrap();
    let shorter = verify(&std::fs::read(&receiver).unwrap(), None);
    let p = check_witnessed(&[(0, &sender), (1, &shorter)]);
    assert!(
        p.len() == 1 && p[0].contains("ends before entry 10"),
        "{p:?}"
    );
}

#[test]
fn a_log_verifies_and_every_kind_of_tampering_is_found_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let key = crate::identity::generate();
    let p = write_log(dir.path(), &key, 0, 3);
    let good = std::fs::read(&p).unwrap();
    let me = key.public().to_peer_id();
    let allow = move |n: NodeId| (n == 0).then_some(me);
    let c = verify(&good, Some(&allow));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(c.entries.len(), 11);
    assert!(!c.torn_tail);
    let ls = lines(&good);

    // A changed byte in entry 3's JSON: its signature fails.
    let mut edited = ls.clone();
    let pos = edited[3].len() - 5;
    edited[3][pos] ^= 1;
    let c = verify(&join(&edited), None);
    assert!(c.problems[0].starts_with("entry 3:"), "{:?}", c.problems);
    assert_eq!(c.entries.len(), 3);

    // A removed entry: the next one no longer fits.
    let mut removed = ls.clone();
    removed.remove(4);
    let c = verify(&join(&removed), None);
    assert!(c.problems[0].starts_with("entry 4:"), "{:?}", c.problems);

    // Two entries swapped.
    let mut swapped = ls.clone();
    swapped.swap(2, 5);
    let c = verify(&join(&swapped), None);
    assert!(c.problems[0].starts_with("entry 2:"), "{:?}", c.problems);

    // An entry re-signed by another key (a forgery): its signature fails.
    let other = crate::identity::generate();
    let mut forged = ls.clone();
    let json = &forged[5][forged[5].iter().position(|&b| b == b' ').unwrap() + 1..];
    let mut line = hex(&other.sign(json).unwrap()).into_bytes();
    line.push(b' ');
    line.extend_from_slice(json);
    forged[5] = line;
    let c = verify(&join(&forged), None);
    assert!(c.problems[0].starts_with("entry 5:"), "{:?}", c.problems);

    // A whole log written by a key that is not the node's in the allow-list.
    let q = write_log(&dir.path().join("x"), &other, 0, 1);
    let c = verify(&std::fs::read(q).unwrap(), Some(&allow));
    assert!(
        c.problems[0].contains("not node 0's key"),
        "{:?}",
        c.problems
    );

    // A torn last line (crash mid-write): the prefix stands, and is reported as such.
    let mut torn = good.clone();
    torn.extend_from_slice(b"abc123 {\"seq\":8");
    let c = verify(&torn, None);
    assert!(c.problems.is_empty() && c.torn_tail && c.entries.len() == 11);

    // Reopening continues the chain after the last whole line, cutting the torn one off.
    std::fs::write(&p, &torn).unwrap();
    let mut log = RunLog::open(&p, key.clone(), 0).unwrap();
    log.append(LogEvent::Leave {
        reason: "again".into(),
    })
    .unwrap();
    let c = verify(&std::fs::read(&p).unwrap(), Some(&allow));
    assert!(c.problems.is_empty() && !c.torn_tail, "{:?}", c.problems);
    assert_eq!(c.entries.len(), 12);
}

#[test]
fn cross_checking_finds_messages_one_side_does_not_record() {
    let dir = tempfile::tempdir().unwrap();
    let (k0, k1) = (crate::identity::generate(), crate::identity::generate());
    let a = verify(
        &std::fs::read(write_log(dir.path(), &k0, 0, 3)).unwrap(),
        None,
    );
    let b = verify(
        &std::fs::read(write_log(dir.path(), &k1, 1, 3)).unwrap(),
        None,
    );
    assert!(cross_check(&[(0, &a.entries), (1, &b.entries)]).is_empty());
    // Node 1 "forgets" receiving one message (its entry dropped before verification).
    let mut b_short = b.entries.clone();
    b_short.retain(
        |e| !matches!(&e.event, LogEvent::Received { hash, .. } if *hash == sha256_hex(&[1])),
    );
    let p = cross_check(&[(0, &a.entries), (1, &b_short)]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("node 0 says it sent 1 gossip"), "{p:?}");
    // Node 0 "forgets" sending one: node 1's record of receiving it has no sender.
    let mut a_short = a.entries.clone();
    a_short.retain(|e| {
        !matches!(&e.event, LogEvent::Sent { hash, .. } | LogEvent::Delivered { hash, .. } if *hash == sha256_hex(&[2]))
    });
    let p = cross_check(&[(0, &a_short), (1, &b.entries)]);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("node 1 says it received 1 gossip"),
        "{p:?}"
    );
    // A retried delivery received twice but sent once: not a problem.
    let mut b_twice = b.entries.clone();
    let dup = b_twice
        .iter()
        .find(|e| matches!(e.event, LogEvent::Received { .. }))
        .cloned()
        .unwrap();
    b_twice.push(dup);
    assert!(cross_check(&[(0, &a.entries), (1, &b_twice)]).is_empty());
    // Sent but never acknowledged (the receiver crashed or halted first): not a problem.
    let mut a_unacked = a.entries.clone();
    a_unacked.retain(|e| !matches!(&e.event, LogEvent::Delivered { .. }));
    let mut b_lost = b.entries.clone();
    b_lost.retain(|e| !matches!(&e.event, LogEvent::Received { .. }));
    assert!(cross_check(&[(0, &a_unacked), (1, &b_lost)]).is_empty());
    // A node with no log at all is named once.
    let p = cross_check(&[(0, &a.entries)]);
    assert_eq!(
        p,
        vec!["node 1 exchanged messages with the others but has no log to check"]
    );
}
