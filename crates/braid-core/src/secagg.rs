//! Secure aggregation: the server learns the sum of the clients' vectors and nothing else.
//!
//! This is the pairwise-masking protocol of Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning" (CCS 2017), in its semi-honest form, for one round:
//!
//! 1. **Keys.** Every client makes two fresh x25519 key pairs, one to encrypt shares and one
//!    to agree pairwise masks, and sends the public halves ([`Message::Keys`]). The server
//!    sends the list of clients that answered, U1, to each of them ([`Message::Roster`]).
//! 2. **Shares.** Every client picks a random self-mask seed `b` and splits `b` and its mask
//!    secret key into Shamir shares, `threshold` of which recover them. It sends one share of
//!    each to every other member of U1, encrypted with ChaCha20-Poly1305 under a key agreed
//!    with that member ([`Message::Shares`]); the server, which cannot read them, passes each
//!    client the ciphertexts addressed to it ([`Message::SharesFor`]). U2: the clients that
//!    sent shares.
//! 3. **Masked input.** Every client adds to its input, in the ring of integers mod 2^64, a
//!    mask from its seed `b` and, for every other member `v` of U2, a mask from the secret it
//!    agreed with `v`, added when its id is below `v`'s and subtracted when above
//!    ([`Message::Masked`]); masks are ChaCha20 key streams. Pairwise masks cancel in the
//!    sum. U3: the clients whose masked input arrived.
//! 4. **Unmasking.** The server sends U3 ([`Message::Unmask`]); each survivor returns its
//!    share of `b` for every member of U3 and its share of the mask secret key for every
//!    member of U2 that dropped out ([`Message::Reveal`]), never both for one client. With
//!    `threshold` answers the server removes every self mask and the masks the dropped
//!    clients' partners added, and is left with the sum over U3.
//!
//! Clients that drop out after sending shares cost nothing but their input; at most
//! `|U2| - threshold` may drop out before the unmasking answers are in. The server sees masked
//! vectors, ciphertexts and, per client, either `b` (survivors) or the mask key (the dropped),
//! never both, so no single input is revealed (tested). Not covered: a malicious server that
//! lies about who dropped out, or that substitutes keys (the signed-keys and consistency-check
//! rounds of the paper's active-security version are not built).
//!
//! Inputs are real vectors encoded in fixed point ([`to_ring`], [`from_ring`]); the sum is
//! exact in the ring, so it does not depend on the random keys.

use std::collections::{BTreeMap, BTreeSet};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::{CryptoRng, Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use thiserror::Error;
use x25519_dalek::{x25519, X25519_BASEPOINT_BYTES};

use crate::bytes::{ReadError, Reader, Writer};

/// A client's id in the protocol (its node id).
pub type ClientId = u32;

/// Encrypted share pairs, one per other client, by that client's id.
pub type Sealed = Vec<(ClientId, Vec<u8>)>;

/// What went wrong in secure aggregation.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SecAggError {
    /// A step came at the wrong time, or with fewer participants than the threshold.
    #[error("secure aggregation: {0}")]
    Protocol(String),
    /// A message does not parse or does not fit the protocol's state.
    #[error("secure aggregation message: {0}")]
    Malformed(String),
    /// An input value cannot be encoded in the fixed-point range.
    #[error("secure aggregation input {index} = {value} is outside the fixed-point range +-{limit:e} (lower secure_aggregation.scale_bits)")]
    Range {
        /// Position in the input.
        index: usize,
        /// The value.
        value: f64,
        /// The largest magnitude that cannot overflow the sum.
        limit: f64,
    },
}

fn protocol(why: impl Into<String>) -> SecAggError {
    SecAggError::Protocol(why.into())
}

fn malformed(why: impl Into<String>) -> SecAggError {
    SecAggError::Malformed(why.into())
}

// ---------------------------------------------------------------------------------------
// Fixed point.

/// The largest magnitude each of `clients` inputs may have at `scale_bits` so that their sum
/// cannot overflow the signed 64-bit range (with a factor of 2 to spare for rounding).
pub fn input_limit(scale_bits: u32, clients: usize) -> f64 {
    2f64.powi(62 - scale_bits as i32) / clients.max(1) as f64
}

/// Encodes `x` in fixed point with `scale_bits` fractional bits, as ring elements mod 2^64
/// (two's complement). Every value must be finite and at most `limit` in magnitude.
pub fn to_ring(x: &[f64], scale_bits: u32, limit: f64) -> Result<Vec<u64>, SecAggError> {
    let scale = 2f64.powi(scale_bits as i32);
    x.iter()
        .enumerate()
        .map(|(index, &value)| {
            if !value.is_finite() || value.abs() > limit {
                return Err(SecAggError::Range {
                    index,
                    value,
                    limit,
                });
            }
            Ok((value * scale).round() as i64 as u64)
        })
        .collect()
}

/// Decodes a sum of [`to_ring`] encodings.
pub fn from_ring(sum: &[u64], scale_bits: u32) -> Vec<f64> {
    let scale = 2f64.powi(-(scale_bits as i32));
    sum.iter().map(|&v| v as i64 as f64 * scale).collect()
}

// ---------------------------------------------------------------------------------------
// Shamir secret sharing of 32-byte secrets over GF(2^61 - 1).

/// The field's prime, 2^61 - 1.
const P: u64 = (1 << 61) - 1;
/// 32-bit limbs of a 32-byte secret; each is shared with its own polynomial.
const LIMBS: usize = 8;

fn fold(x: u128) -> u64 {
    // 2^61 = 1 mod P.
    let s = (x & P as u128) as u64 + (x >> 61) as u64;
    let s = (s & P) + (s >> 61);
    if s >= P {
        s - P
    } else {
        s
    }
}

fn fmul(a: u64, b: u64) -> u64 {
    fold(a as u128 * b as u128)
}

fn fadd(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P {
        s - P
    } else {
        s
    }
}

fn fsub(a: u64, b: u64) -> u64 {
    fadd(a, P - b)
}

fn finv(a: u64) -> u64 {
    // Fermat: a^(P-2).
    let (mut base, mut exp, mut acc) = (a, P - 2, 1u64);
    while exp > 0 {
        if exp & 1 == 1 {
            acc = fmul(acc, base);
        }
        base = fmul(base, base);
        exp >>= 1;
    }
    acc
}

fn random_element(rng: &mut impl RngCore) -> u64 {
    loop {
        let v = rng.next_u64() >> 3;
        if v < P {
            return v;
        }
    }
}

/// One Shamir share of a 32-byte secret: the point `x` and the value of each limb's
/// polynomial there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// The evaluation point (a client's id plus one; never 0).
    pub x: u64,
    /// One field element per 32-bit limb of the secret.
    pub y: [u64; LIMBS],
}

const SHARE_BYTES: usize = 8 * (1 + LIMBS);

impl Share {
    fn write(&self, out: &mut Writer) {
        out.u64(self.x);
        for y in self.y {
            out.u64(y);
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, SecAggError> {
        let x = r.u64("share point")?;
        let mut y = [0u64; LIMBS];
        for v in y.iter_mut() {
            *v = r.u64("share value")?;
        }
        if x == 0 || x >= P || y.iter().any(|&v| v >= P) {
            return Err(malformed("a share is not a field element"));
        }
        Ok(Self { x, y })
    }
}

/// The Shamir evaluation point of a client.
fn point_of(id: ClientId) -> u64 {
    u64::from(id) + 1
}

/// Splits `secret` into one share per point of `xs` (distinct, non-zero), any `threshold` of
/// which recover it and fewer reveal nothing about it.
pub fn split(
    secret: &[u8; 32], threshold: usize, xs: &[u64], rng: &mut impl CryptoRng,
) -> Result<Vec<Share>, SecAggError> {
    if threshold == 0 || threshold > xs.len() {
        return Err(protocol(format!(
            "threshold {threshold} must be between 1 and the {} shares",
            xs.len()
        )));
    }
    if xs.iter().any(|&x| x == 0 || x >= P) || xs.iter().collect::<BTreeSet<_>>().len() != xs.len()
    {
        return Err(protocol("share points must be distinct and non-zero"));
    }
    // coefficients[k][j]: limb k's polynomial, coefficient of x^j.
    let coefficients: Vec<Vec<u64>> = (0..LIMBS)
        .map(|k| {
            let mut limb = [0u8; 4];
            limb.copy_from_slice(&secret[4 * k..4 * k + 4]);
            let mut c = vec![u64::from(u32::from_le_bytes(limb))];
            c.extend((1..threshold).map(|_| random_element(rng)));
            c
        })
        .collect();
    Ok(xs
        .iter()
        .map(|&x| {
            let mut y = [0u64; LIMBS];
            for (v, c) in y.iter_mut().zip(&coefficients) {
                // Horner.
                *v = c.iter().rev().fold(0, |acc, &a| fadd(fmul(acc, x), a));
            }
            Share { x, y }
        })
        .collect())
}

/// Lagrange interpolation of `shares` at `at`.
fn interpolate(shares: &[Share], at: u64) -> [u64; LIMBS] {
    let mut out = [0u64; LIMBS];
    for (i, si) in shares.iter().enumerate() {
        let (mut num, mut den) = (1u64, 1u64);
        for (j, sj) in shares.iter().enumerate() {
            if i != j {
                num = fmul(num, fsub(at, sj.x));
                den = fmul(den, fsub(si.x, sj.x));
            }
        }
        let l = fmul(num, finv(den));
        for (o, &y) in out.iter_mut().zip(&si.y) {
            *o = fadd(*o, fmul(l, y));
        }
    }
    out
}

/// Recovers a secret from at least `threshold` shares made by [`split`]. Shares beyond the
/// first `threshold` are checked against the polynomial they define; an inconsistent share
/// is an error, not a wrong secret.
pub fn combine(shares: &[Share], threshold: usize) -> Result<[u8; 32], SecAggError> {
    if threshold == 0 || shares.len() < threshold {
        return Err(protocol(format!(
            "{} shares cannot recover a secret shared with threshold {threshold}",
            shares.len()
        )));
    }
    if shares.iter().map(|s| s.x).collect::<BTreeSet<_>>().len() != shares.len() {
        return Err(malformed("two shares have the same point"));
    }
    let (base, extra) = shares.split_at(threshold);
    for s in extra {
        if interpolate(base, s.x) != s.y {
            return Err(malformed(format!(
                "the share at point {} does not agree with the others",
                s.x
            )));
        }
    }
    let limbs = interpolate(base, 0);
    let mut secret = [0u8; 32];
    for (k, &l) in limbs.iter().enumerate() {
        let l = u32::try_from(l).map_err(|_| malformed("the shares do not encode a secret"))?;
        secret[4 * k..4 * k + 4].copy_from_slice(&l.to_le_bytes());
    }
    Ok(secret)
}

// ---------------------------------------------------------------------------------------
// Keys, masks and encryption.

/// A client's two public keys for one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKeys {
    /// x25519 key for encrypting shares.
    pub cipher: [u8; 32],
    /// x25519 key for agreeing pairwise masks.
    pub mask: [u8; 32],
}

/// Domain-separated key derivation: SHA-256 over a label, the round, the two ids in order
/// and the x25519 shared secret.
fn derive_key(label: &[u8], round: u32, a: ClientId, b: ClientId, secret: &[u8; 32]) -> [u8; 32] {
    let (lo, hi) = (a.min(b), a.max(b));
    let mut h = Sha256::new();
    h.update(b"braid-secagg-v1/");
    h.update(label);
    h.update(round.to_le_bytes());
    h.update(lo.to_le_bytes());
    h.update(hi.to_le_bytes());
    h.update(secret);
    h.finalize().into()
}

/// Adds (or subtracts) the ChaCha20 key stream of `seed` to `acc`, element-wise mod 2^64.
fn apply_mask(acc: &mut [u64], seed: [u8; 32], subtract: bool) {
    let mut rng = ChaCha20Rng::from_seed(seed);
    if subtract {
        acc.iter_mut()
            .for_each(|a| *a = a.wrapping_sub(rng.next_u64()));
    } else {
        acc.iter_mut()
            .for_each(|a| *a = a.wrapping_add(rng.next_u64()));
    }
}

/// The seed of the pairwise mask between `a` and `b`, from one's mask secret and the other's
/// mask public key.
fn pair_seed(
    round: u32, a: ClientId, b: ClientId, secret: &[u8; 32], public: &[u8; 32],
) -> [u8; 32] {
    derive_key(b"pair-mask", round, a, b, &x25519(*secret, *public))
}

fn self_seed(round: u32, id: ClientId, b: &[u8; 32]) -> [u8; 32] {
    derive_key(b"self-mask", round, id, id, b)
}

/// Plain text of one encrypted share pair: round, sender, recipient, share of the mask secret
/// key, share of the self-mask seed.
const PLAIN_BYTES: usize = 12 + 2 * SHARE_BYTES;
/// ChaCha20-Poly1305 adds a 16-byte tag.
const SEALED_BYTES: usize = PLAIN_BYTES + 16;

fn nonce(round: u32, from: ClientId, to: ClientId) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&round.to_le_bytes());
    n[4..8].copy_from_slice(&from.to_le_bytes());
    n[8..].copy_from_slice(&to.to_le_bytes());
    n
}

fn cipher_for(
    round: u32, a: ClientId, b: ClientId, secret: &[u8; 32], public: &[u8; 32],
) -> ChaCha20Poly1305 {
    let key = derive_key(b"share-encryption", round, a, b, &x25519(*secret, *public));
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

// ---------------------------------------------------------------------------------------
// Messages.

/// The protocol's messages, in the order they are sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Client to server: my public keys for this round.
    Keys(PublicKeys),
    /// Server to client: U1, the clients that sent keys, by increasing id.
    Roster(Vec<(ClientId, PublicKeys)>),
    /// Client to server: an encrypted share pair for every other member of U1, by recipient.
    Shares(Sealed),
    /// Server to client: the encrypted share pairs addressed to it, by sender (the senders
    /// and the recipient make up U2).
    SharesFor(Sealed),
    /// Client to server: the masked input.
    Masked(Vec<u64>),
    /// Server to client: U3, the clients whose masked input arrived, by increasing id.
    Unmask(Vec<ClientId>),
    /// Client to server: for each member of U2, by id, the share the client holds of its
    /// self-mask seed (a survivor) or of its mask secret key (a client that dropped out).
    Reveal(Vec<(ClientId, Share)>),
}

const TAG_KEYS: u8 = 1;
const TAG_ROSTER: u8 = 2;
const TAG_SHARES: u8 = 3;
const TAG_SHARES_FOR: u8 = 4;
const TAG_MASKED: u8 = 5;
const TAG_UNMASK: u8 = 6;
const TAG_REVEAL: u8 = 7;

impl From<ReadError> for SecAggError {
    fn from(e: ReadError) -> Self {
        malformed(e.to_string())
    }
}

/// A count of items of `item_bytes` each, checked against the bytes left.
fn count(r: &mut Reader<'_>, item_bytes: usize) -> Result<usize, SecAggError> {
    let n = r.u32("count")? as usize;
    if n.saturating_mul(item_bytes) > r.remaining() {
        return Err(malformed(format!("{n} items do not fit in the message")));
    }
    Ok(n)
}

fn key(r: &mut Reader<'_>) -> Result<[u8; 32], SecAggError> {
    Ok(r.array("key")?)
}

/// Ids of a list must increase strictly.
fn check_increasing(ids: impl Iterator<Item = ClientId>) -> Result<(), SecAggError> {
    let mut last: Option<ClientId> = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            return Err(malformed("client ids are not strictly increasing"));
        }
        last = Some(id);
    }
    Ok(())
}

impl Message {
    /// The byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::with_capacity(self.encoded_len());
        let count = |out: &mut Writer, n: usize| out.u32(n as u32);
        match self {
            Self::Keys(k) => {
                out.u8(TAG_KEYS);
                out.raw(&k.cipher);
                out.raw(&k.mask);
            }
            Self::Roster(r) => {
                out.u8(TAG_ROSTER);
                count(&mut out, r.len());
                for (id, k) in r {
                    out.u32(*id);
                    out.raw(&k.cipher);
                    out.raw(&k.mask);
                }
            }
            Self::Shares(s) | Self::SharesFor(s) => {
                out.u8(if matches!(self, Self::Shares(_)) {
                    TAG_SHARES
                } else {
                    TAG_SHARES_FOR
                });
                count(&mut out, s.len());
                for (id, c) in s {
                    out.u32(*id);
                    out.raw(c);
                }
            }
            Self::Masked(y) => {
                out.u8(TAG_MASKED);
                count(&mut out, y.len());
                for v in y {
                    out.u64(*v);
                }
            }
            Self::Unmask(ids) => {
                out.u8(TAG_UNMASK);
                count(&mut out, ids.len());
                for id in ids {
                    out.u32(*id);
                }
            }
            Self::Reveal(shares) => {
                out.u8(TAG_REVEAL);
                count(&mut out, shares.len());
                for (id, s) in shares {
                    out.u32(*id);
                    s.write(&mut out);
                }
            }
        }
        out.into_vec()
    }

    /// `encode().len()`, without encoding.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Keys(_) => 64,
            Self::Roster(r) => 4 + r.len() * 68,
            Self::Shares(s) | Self::SharesFor(s) => {
                4 + s.iter().map(|(_, c)| 4 + c.len()).sum::<usize>()
            }
            Self::Masked(y) => 4 + 8 * y.len(),
            Self::Unmask(ids) => 4 + 4 * ids.len(),
            Self::Reveal(s) => 4 + s.len() * (4 + SHARE_BYTES),
        }
    }

    /// Parses and validates a message: lengths, strictly increasing ids, field elements.
    pub fn decode(bytes: &[u8]) -> Result<Self, SecAggError> {
        let mut r = Reader::new(bytes);
        let tag = r.u8("tag")?;
        let msg = match tag {
            TAG_KEYS => Self::Keys(PublicKeys {
                cipher: key(&mut r)?,
                mask: key(&mut r)?,
            }),
            TAG_ROSTER => {
                let n = count(&mut r, 68)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push((
                        r.u32("client id")?,
                        PublicKeys {
                            cipher: key(&mut r)?,
                            mask: key(&mut r)?,
                        },
                    ));
                }
                check_increasing(v.iter().map(|(id, _)| *id))?;
                Self::Roster(v)
            }
            TAG_SHARES | TAG_SHARES_FOR => {
                let n = count(&mut r, 4 + SEALED_BYTES)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push((
                        r.u32("client id")?,
                        r.take(SEALED_BYTES, "sealed shares")?.to_vec(),
                    ));
                }
                check_increasing(v.iter().map(|(id, _)| *id))?;
                if tag == TAG_SHARES {
                    Self::Shares(v)
                } else {
                    Self::SharesFor(v)
                }
            }
            TAG_MASKED => {
                let n = count(&mut r, 8)?;
                Self::Masked(
                    (0..n)
                        .map(|_| r.u64("masked value"))
                        .collect::<Result<_, _>>()?,
                )
            }
            TAG_UNMASK => {
                let n = count(&mut r, 4)?;
                let ids = (0..n)
                    .map(|_| r.u32("client id"))
                    .collect::<Result<Vec<_>, _>>()?;
                check_increasing(ids.iter().copied())?;
                Self::Unmask(ids)
            }
            TAG_REVEAL => {
                let n = count(&mut r, 4 + SHARE_BYTES)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push((r.u32("client id")?, Share::read(&mut r)?));
                }
                check_increasing(v.iter().map(|(id, _)| *id))?;
                Self::Reveal(v)
            }
            t => return Err(malformed(format!("unknown message tag {t}"))),
        };
        if r.remaining() > 0 {
            return Err(malformed(format!(
                "{} bytes after the message",
                r.remaining()
            )));
        }
        Ok(msg)
    }

    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Keys(_) => "keys",
            Self::Roster(_) => "roster",
            Self::Shares(_) => "shares",
            Self::SharesFor(_) => "shares-for",
            Self::Masked(_) => "masked",
            Self::Unmask(_) => "unmask",
            Self::Reveal(_) => "reveal",
        }
    }
}

// ---------------------------------------------------------------------------------------
// The client.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    Keys,
    Shared,
    Masked,
    Done,
}

/// One client's side of one round.
pub struct Client {
    id: ClientId,
    round: u32,
    threshold: usize,
    cipher_secret: [u8; 32],
    mask_secret: [u8; 32],
    /// The self-mask seed `b`.
    self_secret: [u8; 32],
    roster: BTreeMap<ClientId, PublicKeys>,
    /// Shares this client holds, by owner: (of the owner's mask secret key, of its `b`).
    held: BTreeMap<ClientId, (Share, Share)>,
    phase: ClientPhase,
}

impl Client {
    /// Client `id` in round `round`; makes its keys and self-mask seed from `rng`, which
    /// must be a cryptographic generator seeded from the operating system in a deployment.
    pub fn new(id: ClientId, round: u32, threshold: usize, rng: &mut impl CryptoRng) -> Self {
        let mut secret = || {
            let mut s = [0u8; 32];
            rng.fill_bytes(&mut s);
            s
        };
        Self {
            id,
            round,
            threshold,
            cipher_secret: secret(),
            mask_secret: secret(),
            self_secret: secret(),
            roster: BTreeMap::new(),
            held: BTreeMap::new(),
            phase: ClientPhase::Keys,
        }
    }

    /// The round this client state belongs to.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// Step 1: the public keys to send.
    pub fn public_keys(&self) -> PublicKeys {
        PublicKeys {
            cipher: x25519(self.cipher_secret, X25519_BASEPOINT_BYTES),
            mask: x25519(self.mask_secret, X25519_BASEPOINT_BYTES),
        }
    }

    /// Step 2: given U1, the encrypted share pairs for every other member, by recipient.
    pub fn share_keys(
        &mut self, roster: Vec<(ClientId, PublicKeys)>, rng: &mut impl CryptoRng,
    ) -> Result<Sealed, SecAggError> {
        if self.phase != ClientPhase::Keys {
            return Err(protocol("a roster came after this client shared its keys"));
        }
        check_increasing(roster.iter().map(|(id, _)| *id))?;
        let mine = self.public_keys();
        if !roster.iter().any(|(id, k)| *id == self.id && *k == mine) {
            return Err(protocol(
                "the roster does not list this client with its keys",
            ));
        }
        if roster.len() < self.threshold {
            return Err(protocol(format!(
                "the roster has {} clients, fewer than the threshold {}",
                roster.len(),
                self.threshold
            )));
        }
        let distinct: BTreeSet<[u8; 32]> = roster
            .iter()
            .flat_map(|(_, k)| [k.cipher, k.mask])
            .collect();
        if distinct.len() != 2 * roster.len() {
            return Err(protocol("two roster entries share a public key"));
        }
        let xs: Vec<u64> = roster.iter().map(|(id, _)| point_of(*id)).collect();
        let key_shares = split(&self.mask_secret, self.threshold, &xs, rng)?;
        let seed_shares = split(&self.self_secret, self.threshold, &xs, rng)?;
        let mut out = Vec::with_capacity(roster.len() - 1);
        for (((id, keys), ks), ss) in roster.iter().zip(&key_shares).zip(&seed_shares) {
            if *id == self.id {
                self.held.insert(self.id, (*ks, *ss));
                continue;
            }
            let mut plain = Writer::with_capacity(PLAIN_BYTES);
            plain.u32(self.round);
            plain.u32(self.id);
            plain.u32(*id);
            ks.write(&mut plain);
            ss.write(&mut plain);
            let plain = plain.into_vec();
            let sealed = cipher_for(self.round, self.id, *id, &self.cipher_secret, &keys.cipher)
                .encrypt(
                    Nonce::from_slice(&nonce(self.round, self.id, *id)),
                    plain.as_slice(),
                )
                .map_err(|_| protocol("encryption failed"))?;
            out.push((*id, sealed));
        }
        self.roster = roster.into_iter().collect();
        self.phase = ClientPhase::Shared;
        Ok(out)
    }

    /// Step 3: given the share pairs addressed to it (their senders and this client are U2),
    /// masks `input` (ring elements, see [`to_ring`]).
    pub fn mask(&mut self, shares_for_me: Sealed, input: &[u64]) -> Result<Vec<u64>, SecAggError> {
        if self.phase != ClientPhase::Shared {
            return Err(protocol("shares came before the roster or after masking"));
        }
        check_increasing(shares_for_me.iter().map(|(id, _)| *id))?;
        if shares_for_me.len() + 1 < self.threshold {
            return Err(protocol(format!(
                "{} clients shared keys, fewer than the threshold {}",
                shares_for_me.len() + 1,
                self.threshold
            )));
        }
        for (from, sealed) in &shares_for_me {
            let keys = self
                .roster
                .get(from)
                .filter(|_| *from != self.id)
                .ok_or_else(|| {
                    malformed(format!("shares from {from}, not another roster member"))
                })?;
            let plain = cipher_for(
                self.round,
                self.id,
                *from,
                &self.cipher_secret,
                &keys.cipher,
            )
            .decrypt(
                Nonce::from_slice(&nonce(self.round, *from, self.id)),
                sealed.as_slice(),
            )
            .map_err(|_| malformed(format!("the shares from {from} do not decrypt")))?;
            let mut r = Reader::new(&plain);
            if plain.len() != PLAIN_BYTES
                || r.u32("round")? != self.round
                || r.u32("sender")? != *from
                || r.u32("recipient")? != self.id
            {
                return Err(malformed(format!(
                    "the shares from {from} are for another round or client"
                )));
            }
            let (ks, ss) = (Share::read(&mut r)?, Share::read(&mut r)?);
            if ks.x != point_of(self.id) || ss.x != point_of(self.id) {
                return Err(malformed(format!(
                    "the shares from {from} are not at this client's point"
                )));
            }
            self.held.insert(*from, (ks, ss));
        }
        let mut y = input.to_vec();
        apply_mask(
            &mut y,
            self_seed(self.round, self.id, &self.self_secret),
            false,
        );
        for (from, _) in &shares_for_me {
            let public = self.roster[from].mask;
            let seed = pair_seed(self.round, self.id, *from, &self.mask_secret, &public);
            apply_mask(&mut y, seed, self.id > *from);
        }
        // U2 is now the holders' set; forget shares of roster members outside it.
        let u2: BTreeSet<ClientId> = shares_for_me
            .iter()
            .map(|(id, _)| *id)
            .chain([self.id])
            .collect();
        self.held.retain(|id, _| u2.contains(id));
        self.phase = ClientPhase::Masked;
        Ok(y)
    }

    /// Step 4: given U3, this client's shares: of `b` for every survivor, of the mask secret
    /// key for every member of U2 that dropped out. Refuses a U3 smaller than the threshold or
    /// not inside U2, so the server never gets both shares of anyone.
    pub fn unmask(
        &mut self, survivors: &[ClientId],
    ) -> Result<Vec<(ClientId, Share)>, SecAggError> {
        if self.phase != ClientPhase::Masked {
            return Err(protocol(
                "an unmask request before this client masked its input, or twice",
            ));
        }
        check_increasing(survivors.iter().copied())?;
        if survivors.len() < self.threshold {
            return Err(protocol(format!(
                "{} survivors, fewer than the threshold {}",
                survivors.len(),
                self.threshold
            )));
        }
        let alive: BTreeSet<ClientId> = survivors.iter().copied().collect();
        if !alive.contains(&self.id) || alive.iter().any(|id| !self.held.contains_key(id)) {
            return Err(protocol(
                "the survivors are not members of U2 including this client",
            ));
        }
        self.phase = ClientPhase::Done;
        Ok(self
            .held
            .iter()
            .map(|(id, (key_share, seed_share))| {
                (
                    *id,
                    if alive.contains(id) {
                        *seed_share
                    } else {
                        *key_share
                    },
                )
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------
// The server.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerPhase {
    Keys,
    Shares,
    Masked,
    Reveal,
}

/// The server's side of one round. It adds masked inputs as they arrive, so it holds one
/// vector, not one per client.
pub struct Server {
    round: u32,
    threshold: usize,
    len: usize,
    phase: ServerPhase,
    roster: BTreeMap<ClientId, PublicKeys>,
    u2: BTreeSet<ClientId>,
    u3: BTreeSet<ClientId>,
    sum: Vec<u64>,
    /// Reveals, by revealing client: owner -> share.
    reveals: BTreeMap<ClientId, BTreeMap<ClientId, Share>>,
}

impl Server {
    /// A round summing vectors of `len` ring elements with `threshold` (at least 2).
    pub fn new(round: u32, threshold: usize, len: usize) -> Result<Self, SecAggError> {
        if threshold < 2 {
            return Err(protocol(format!(
                "threshold {threshold} must be at least 2"
            )));
        }
        Ok(Self {
            round,
            threshold,
            len,
            phase: ServerPhase::Keys,
            roster: BTreeMap::new(),
            u2: BTreeSet::new(),
            u3: BTreeSet::new(),
            sum: vec![0; len],
            reveals: BTreeMap::new(),
        })
    }

    /// The clients still taking part: U1 after the roster, U2 after routing, U3 after
    /// [`Server::survivors`].
    pub fn members(&self) -> Vec<ClientId> {
        match self.phase {
            ServerPhase::Keys => Vec::new(),
            ServerPhase::Shares => self.roster.keys().copied().collect(),
            ServerPhase::Masked => self.u2.iter().copied().collect(),
            ServerPhase::Reveal => self.u3.iter().copied().collect(),
        }
    }

    /// After step 1: the roster (U1) from the keys that arrived.
    pub fn roster(
        &mut self, keys: BTreeMap<ClientId, PublicKeys>,
    ) -> Result<Vec<(ClientId, PublicKeys)>, SecAggError> {
        if self.phase != ServerPhase::Keys {
            return Err(protocol("the roster is already fixed"));
        }
        if keys.len() < self.threshold {
            return Err(protocol(format!(
                "{} clients sent keys, fewer than the threshold {}",
                keys.len(),
                self.threshold
            )));
        }
        self.roster = keys;
        self.phase = ServerPhase::Shares;
        Ok(self.roster.iter().map(|(id, k)| (*id, *k)).collect())
    }

    /// After step 2: checks every sender addressed exactly the other roster members, fixes
    /// U2 (the senders) and returns, for each member of U2, the ciphertexts addressed to it
    /// by the others.
    pub fn route_shares(
        &mut self, sent: BTreeMap<ClientId, Sealed>,
    ) -> Result<BTreeMap<ClientId, Sealed>, SecAggError> {
        if self.phase != ServerPhase::Shares {
            return Err(protocol("shares routed before the roster, or twice"));
        }
        for (from, list) in &sent {
            let expected: Vec<ClientId> = self
                .roster
                .keys()
                .copied()
                .filter(|id| id != from)
                .collect();
            let got: Vec<ClientId> = list.iter().map(|(id, _)| *id).collect();
            if !self.roster.contains_key(from) || got != expected {
                return Err(malformed(format!(
                    "client {from} did not send one share pair to each other roster member"
                )));
            }
        }
        if sent.len() < self.threshold {
            return Err(protocol(format!(
                "{} clients sent shares, fewer than the threshold {}",
                sent.len(),
                self.threshold
            )));
        }
        self.u2 = sent.keys().copied().collect();
        let mut out: BTreeMap<ClientId, Sealed> =
            self.u2.iter().map(|id| (*id, Vec::new())).collect();
        for (from, list) in sent {
            for (to, sealed) in list {
                if let Some(inbox) = out.get_mut(&to) {
                    inbox.push((from, sealed));
                }
            }
        }
        self.phase = ServerPhase::Masked;
        Ok(out)
    }

    /// Step 3: adds one client's masked input to the running sum.
    pub fn add_masked(&mut self, from: ClientId, y: &[u64]) -> Result<(), SecAggError> {
        if self.phase != ServerPhase::Masked {
            return Err(protocol(format!(
                "masked input from {from} outside the masking step"
            )));
        }
        if !self.u2.contains(&from) {
            return Err(protocol(format!(
                "masked input from {from}, who did not share keys"
            )));
        }
        if y.len() != self.len {
            return Err(malformed(format!(
                "masked input from {from} has {} values, expected {}",
                y.len(),
                self.len
            )));
        }
        if !self.u3.insert(from) {
            return Err(protocol(format!("a second masked input from {from}")));
        }
        self.sum
            .iter_mut()
            .zip(y)
            .for_each(|(s, v)| *s = s.wrapping_add(*v));
        Ok(())
    }

    /// Clients whose masked input has arrived so far.
    pub fn masked_count(&self) -> usize {
        self.u3.len()
    }

    /// After step 3: fixes U3 (later masked inputs are refused) and returns it, to be sent to
    /// every member of U3.
    pub fn survivors(&mut self) -> Result<Vec<ClientId>, SecAggError> {
        if self.phase != ServerPhase::Masked {
            return Err(protocol("survivors asked for outside the masking step"));
        }
        if self.u3.len() < self.threshold {
            return Err(protocol(format!(
                "{} masked inputs, fewer than the threshold {}",
                self.u3.len(),
                self.threshold
            )));
        }
        self.phase = ServerPhase::Reveal;
        Ok(self.u3.iter().copied().collect())
    }

    /// Step 4: one survivor's shares, one per member of U2.
    pub fn add_reveal(
        &mut self, from: ClientId, shares: Vec<(ClientId, Share)>,
    ) -> Result<(), SecAggError> {
        if self.phase != ServerPhase::Reveal {
            return Err(protocol(format!(
                "shares revealed by {from} outside the unmasking step"
            )));
        }
        if !self.u3.contains(&from) || self.reveals.contains_key(&from) {
            return Err(protocol(format!(
                "unexpected or repeated reveal from {from}"
            )));
        }
        let owners: Vec<ClientId> = shares.iter().map(|(id, _)| *id).collect();
        if owners != self.u2.iter().copied().collect::<Vec<_>>()
            || shares.iter().any(|(_, s)| s.x != point_of(from))
        {
            return Err(malformed(format!(
                "client {from} did not reveal one share at its point for each member of U2"
            )));
        }
        self.reveals.insert(from, shares.into_iter().collect());
        Ok(())
    }

    /// Whether enough reveals have arrived to finish.
    pub fn can_finish(&self) -> bool {
        self.phase == ServerPhase::Reveal && self.reveals.len() >= self.threshold
    }

    /// Removes the masks and returns the sum of the survivors' inputs (ring elements).
    pub fn finish(self) -> Result<Vec<u64>, SecAggError> {
        if !self.can_finish() {
            return Err(protocol(format!(
                "{} reveals, fewer than the threshold {}",
                self.reveals.len(),
                self.threshold
            )));
        }
        let shares_of = |owner: ClientId| -> Vec<Share> {
            self.reveals
                .values()
                .filter_map(|m| m.get(&owner).copied())
                .collect()
        };
        let mut sum = self.sum;
        for &u in &self.u2 {
            let secret = combine(&shares_of(u), self.threshold)?;
            if self.u3.contains(&u) {
                apply_mask(&mut sum, self_seed(self.round, u, &secret), true);
            } else {
                // u dropped out: its mask key is now known; remove what each survivor added
                // for the pair.
                if x25519(secret, X25519_BASEPOINT_BYTES) != self.roster[&u].mask {
                    return Err(malformed(format!(
                        "the recovered mask key of {u} does not match its public key"
                    )));
                }
                for &v in &self.u3 {
                    let seed = pair_seed(self.round, u, v, &secret, &self.roster[&v].mask);
                    // v added the mask if v < u, subtracted it if v > u: undo that.
                    apply_mask(&mut sum, seed, v < u);
                }
            }
        }
        Ok(sum)
    }
}

/// Draws `count` distinct ids out of `ids` (for tests and simulations of dropouts).
pub fn pick<R: Rng>(ids: &[ClientId], count: usize, rng: &mut R) -> Vec<ClientId> {
    let mut chosen: Vec<ClientId> = rand::seq::index::sample(rng, ids.len(), count.min(ids.len()))
        .into_iter()
        .map(|i| ids[i])
        .collect();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
#[path = "secagg_tests.rs"]
mod tests;
