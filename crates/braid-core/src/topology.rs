//! Who talks to whom in decentralized training, and with what weights.
//!
//! A [`Topology`] gives, for each communication round, a [`Graph`]: for every node the peers
//! whose parameters it averages with (its in-neighbours; itself not listed). A [`Mixing`]
//! matrix turns that into weights; one gossip step is `X <- W X`.
//!
//! The round's budget `r` (see [`crate::schedule`]) applies to every topology:
//! - `r >= n - 1`: exact global average (complete graph), whatever the topology;
//! - `r = 0`: no communication (`W = I`);
//! - `random`: every node draws `floor(r)` distinct random peers, plus one more with probability
//!   `frac(r)` (Zhu et al.'s "random" topology; directed, so mixed with uniform weights);
//! - `base-random`: the same, but peers are drawn only among the node's neighbours in a base
//!   topology;
//! - fixed and time-varying topologies (ring, torus, exponential, one-peer exponential, complete,
//!   Erdos-Renyi): with `r >= 1` the whole graph is used; with `0 < r < 1` it is used in a round
//!   with probability `r` (one draw per round, for all nodes).

use nalgebra::DMatrix;
use rand::seq::index::sample;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::seed::Rng;

/// A topology by name (config: `[topology]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TopologyConfig {
    /// Each node with its two ring neighbours.
    Ring,
    /// A 2-D torus: `rows x cols = n` (the most square factorisation), four neighbours.
    Torus,
    /// Static exponential graph (Ying et al. 2021): node `i` averages with `i - 2^k mod n` for
    /// every `2^k < n` (directed, circulant).
    Exponential,
    /// One-peer exponential graph: in round `t`, node `i` averages with `i - 2^(t mod log2 n)`.
    OnePeerExponential,
    /// Every node with every other.
    Complete,
    /// An Erdos-Renyi graph G(n, p), drawn once per run (redrawn until connected).
    ErdosRenyi {
        /// Edge probability.
        p: f64,
    },
    /// `r` random peers per round (fractional part: probability of one more).
    Random,
    /// `r` random peers per round, drawn among the node's neighbours in `base`.
    BaseRandom {
        /// A fixed topology (ring, torus, exponential, complete or erdos-renyi).
        base: Box<TopologyConfig>,
    },
}

/// How neighbour lists become weights (config: `mixing = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixingRule {
    /// `w_ij = 1 / (1 + max(d_i, d_j))`, `w_ii = 1 - sum`: symmetric and doubly stochastic;
    /// needs an undirected graph.
    MetropolisHastings,
    /// `w_ij = 1 / (d_i + 1)` over the node and its in-neighbours: row-stochastic.
    Uniform,
}

/// In-neighbour lists: `peers[i]` are the nodes `i` averages with (sorted, without `i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// Neighbours of each node.
    pub peers: Vec<Vec<usize>>,
}

impl Graph {
    fn from_sets(n: usize, f: impl Fn(usize) -> Vec<usize>) -> Self {
        let peers = (0..n)
            .map(|i| {
                let mut p: Vec<usize> = f(i).into_iter().filter(|&j| j != i && j < n).collect();
                p.sort_unstable();
                p.dedup();
                p
            })
            .collect();
        Self { peers }
    }

    /// No edges.
    pub fn empty(n: usize) -> Self {
        Self {
            peers: vec![Vec::new(); n],
        }
    }

    /// Every pair connected.
    pub fn complete(n: usize) -> Self {
        Self::from_sets(n, |_| (0..n).collect())
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True for a graph without nodes.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// True when `j` is a peer of `i` exactly when `i` is a peer of `j`.
    pub fn is_symmetric(&self) -> bool {
        self.peers
            .iter()
            .enumerate()
            .all(|(i, p)| p.iter().all(|&j| self.peers[j].binary_search(&i).is_ok()))
    }

    /// True when every node can reach every other (following edges both ways).
    pub fn is_connected(&self) -> bool {
        let n = self.len();
        if n == 0 {
            return true;
        }
        let mut und: Vec<Vec<usize>> = self.peers.clone();
        for (i, p) in self.peers.iter().enumerate() {
            for &j in p {
                und[j].push(i);
            }
        }
        let mut seen = vec![false; n];
        let mut stack = vec![0];
        seen[0] = true;
        while let Some(i) = stack.pop() {
            for &j in &und[i] {
                if !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        seen.iter().all(|s| *s)
    }

    /// Number of directed edges (messages a gossip step sends).
    pub fn edges(&self) -> usize {
        self.peers.iter().map(Vec::len).sum()
    }
}

/// A topology bound to a number of nodes.
#[derive(Debug, Clone)]
pub struct Topology {
    config: TopologyConfig,
    n: usize,
    fixed: Option<Graph>,
}

fn torus_dims(n: usize) -> Option<(usize, usize)> {
    let rows = (2..=n)
        .take_while(|r| r * r <= n)
        .filter(|r| n.is_multiple_of(*r))
        .last()?;
    Some((rows, n / rows))
}

fn log2_ceil(n: usize) -> u32 {
    usize::BITS - (n.max(2) - 1).leading_zeros()
}

/// Why a torus does not fit `n` nodes.
fn torus_unfit(n: usize) -> String {
    format!("topology torus needs a node count with a factor >= 2 (got {n} nodes)")
}

const BASE_NOT_FIXED: &str =
    "topology.base must be a fixed topology: ring, torus, exponential, complete or erdos-renyi";

fn fixed_graph(config: &TopologyConfig, n: usize, rng: &mut Rng) -> Result<Option<Graph>, String> {
    Ok(match config {
        TopologyConfig::Ring => Some(Graph::from_sets(n, |i| vec![(i + 1) % n, (i + n - 1) % n])),
        TopologyConfig::Torus => {
            let (rows, cols) = torus_dims(n).ok_or_else(|| torus_unfit(n))?;
            Some(Graph::from_sets(n, |i| {
                let (r, c) = (i / cols, i % cols);
                vec![
                    ((r + 1) % rows) * cols + c,
                    ((r + rows - 1) % rows) * cols + c,
                    r * cols + (c + 1) % cols,
                    r * cols + (c + cols - 1) % cols,
                ]
            }))
        }
        TopologyConfig::Exponential => Some(Graph::from_sets(n, |i| {
            (0..log2_ceil(n))
                .map(|k| (i + n - (1usize << k) % n) % n)
                .collect()
        })),
        TopologyConfig::Complete => Some(Graph::complete(n)),
        TopologyConfig::ErdosRenyi { p } => {
            // p is in (0, 1]: `TopologyConfig::check` ran first.
            let mut found = None;
            for _ in 0..1000 {
                let mut peers = vec![Vec::new(); n];
                for i in 0..n {
                    for j in i + 1..n {
                        if rng.random_bool(*p) {
                            peers[i].push(j);
                            peers[j].push(i);
                        }
                    }
                }
                let g = Graph::from_sets(n, |i| peers[i].clone());
                if g.is_connected() {
                    found = Some(g);
                    break;
                }
            }
            Some(found.ok_or_else(|| format!("topology erdos-renyi with p = {p} gave no connected graph on {n} nodes in 1000 draws; raise p"))?)
        }
        TopologyConfig::OnePeerExponential | TopologyConfig::Random => None,
        TopologyConfig::BaseRandom { base } => match base.as_ref() {
            TopologyConfig::Random
            | TopologyConfig::OnePeerExponential
            | TopologyConfig::BaseRandom { .. } => return Err(BASE_NOT_FIXED.into()),
            b => fixed_graph(b, n, rng)?,
        },
    })
}

impl TopologyConfig {
    /// Metropolis-Hastings on undirected topologies, uniform on directed ones.
    pub fn default_mixing(&self) -> MixingRule {
        match self {
            Self::Ring | Self::Torus | Self::Complete | Self::ErdosRenyi { .. } => {
                MixingRule::MetropolisHastings
            }
            _ => MixingRule::Uniform,
        }
    }

    /// Checks the parameters for `n` nodes without drawing anything (a config check); the
    /// error names the field.
    pub fn check(&self, n: usize) -> Result<(), String> {
        match self {
            Self::ErdosRenyi { p } if !(*p > 0.0 && *p <= 1.0) => {
                Err(format!("topology.p must be in (0, 1] (got {p})"))
            }
            Self::Torus if torus_dims(n).is_none() => Err(torus_unfit(n)),
            Self::BaseRandom { base } => match base.as_ref() {
                Self::Random | Self::OnePeerExponential | Self::BaseRandom { .. } => {
                    Err(BASE_NOT_FIXED.into())
                }
                b => b
                    .check(n)
                    .map_err(|e| e.replacen("topology.", "topology.base.", 1)),
            },
            _ => Ok(()),
        }
    }
}

impl Topology {
    /// Binds `config` to `n` nodes; fixed random graphs (Erdos-Renyi) are drawn from `rng`.
    pub fn new(config: TopologyConfig, n: usize, rng: &mut Rng) -> Result<Self, String> {
        if n < 2 {
            return Err(format!("a topology needs at least 2 nodes (got {n})"));
        }
        config.check(n)?;
        let fixed = fixed_graph(&config, n, rng)?;
        Ok(Self { config, n, fixed })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.n
    }

    /// The mixing rule that suits this topology: Metropolis-Hastings where every round's graph
    /// is undirected (ring, torus, complete, Erdos-Renyi), uniform otherwise.
    pub fn default_mixing(&self) -> MixingRule {
        self.config.default_mixing()
    }

    /// The graph of communication round `round` under budget `r`.
    pub fn round_graph(&self, round: u64, r: f64, rng: &mut Rng) -> Graph {
        let n = self.n;
        if r >= (n - 1) as f64 {
            return Graph::complete(n);
        }
        if r <= 0.0 {
            return Graph::empty(n);
        }
        let draws = |cands: &[usize], rng: &mut Rng| -> Vec<usize> {
            let k = (r.floor() as usize + usize::from(rng.random_bool(r.fract()))).min(cands.len());
            sample(rng, cands.len(), k)
                .into_iter()
                .map(|i| cands[i])
                .collect()
        };
        match &self.config {
            TopologyConfig::Random => {
                let mut peers = Vec::with_capacity(n);
                for i in 0..n {
                    let others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                    peers.push(draws(&others, rng));
                }
                Graph::from_sets(n, |i| peers[i].clone())
            }
            TopologyConfig::BaseRandom { .. } => {
                let base = self
                    .fixed
                    .as_ref()
                    .map_or_else(|| Graph::empty(n), Clone::clone);
                let peers: Vec<Vec<usize>> = base.peers.iter().map(|c| draws(c, rng)).collect();
                Graph::from_sets(n, |i| peers[i].clone())
            }
            TopologyConfig::OnePeerExponential => {
                if r < 1.0 && !rng.random_bool(r) {
                    return Graph::empty(n);
                }
                let k = (round % u64::from(log2_ceil(n))) as u32;
                Graph::from_sets(n, |i| vec![(i + n - (1usize << k) % n) % n])
            }
            _ => {
                if r < 1.0 && !rng.random_bool(r) {
                    return Graph::empty(n);
                }
                self.fixed.clone().unwrap_or_else(|| Graph::empty(n))
            }
        }
    }
}

/// A row-stochastic mixing matrix in sparse rows: `rows[i]` = `(j, w_ij)` including `(i, w_ii)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mixing {
    /// Weighted rows.
    pub rows: Vec<Vec<(usize, f64)>>,
}

impl Mixing {
    /// Weights for `graph` under `rule`; Metropolis-Hastings needs an undirected graph.
    pub fn new(graph: &Graph, rule: MixingRule) -> Result<Self, String> {
        let deg: Vec<usize> = graph.peers.iter().map(Vec::len).collect();
        let rows = match rule {
            MixingRule::Uniform => graph
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let w = 1.0 / (p.len() + 1) as f64;
                    std::iter::once((i, w))
                        .chain(p.iter().map(|&j| (j, w)))
                        .collect()
                })
                .collect(),
            MixingRule::MetropolisHastings => {
                if !graph.is_symmetric() {
                    return Err("Metropolis-Hastings weights need an undirected topology; use mixing = \"uniform\"".into());
                }
                graph
                    .peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let off: Vec<(usize, f64)> = p
                            .iter()
                            .map(|&j| (j, 1.0 / (1 + deg[i].max(deg[j])) as f64))
                            .collect();
                        let self_w = 1.0 - off.iter().map(|(_, w)| w).sum::<f64>();
                        std::iter::once((i, self_w)).chain(off).collect()
                    })
                    .collect()
            }
        };
        Ok(Self { rows })
    }

    /// The dense `n x n` matrix.
    pub fn dense(&self) -> DMatrix<f64> {
        let n = self.rows.len();
        let mut m = DMatrix::zeros(n, n);
        for (i, row) in self.rows.iter().enumerate() {
            for &(j, w) in row {
                m[(i, j)] += w;
            }
        }
        m
    }

    /// Rows sum to 1 and weights are non-negative (within `tol`).
    pub fn is_row_stochastic(&self, tol: f64) -> bool {
        self.rows.iter().all(|r| {
            r.iter().all(|(_, w)| *w >= -tol)
                && (r.iter().map(|(_, w)| w).sum::<f64>() - 1.0).abs() <= tol
        })
    }

    /// Rows and columns sum to 1 (within `tol`).
    pub fn is_doubly_stochastic(&self, tol: f64) -> bool {
        let d = self.dense();
        self.is_row_stochastic(tol) && d.column_iter().all(|c| (c.sum() - 1.0).abs() <= tol)
    }

    /// `W = W^T` (within `tol`).
    pub fn is_symmetric(&self, tol: f64) -> bool {
        let d = self.dense();
        (&d - d.transpose()).abs().max() <= tol
    }

    /// One gossip step `X <- W X` over per-node parameter vectors (accumulated in `f64`).
    pub fn apply(&self, x: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let len = x.first().map_or(0, Vec::len);
        self.rows
            .iter()
            .map(|row| {
                let mut acc = vec![0.0f64; len];
                for &(j, w) in row {
                    for (a, v) in acc.iter_mut().zip(&x[j]) {
                        *a += w * f64::from(*v);
                    }
                }
                acc.into_iter().map(|v| v as f32).collect()
            })
            .collect()
    }
}

/// Spectral gap `1 - |lambda_2|` of a mixing matrix, `|lambda_2|` being the second-largest
/// eigenvalue modulus: how much one gossip step shrinks disagreement (1 = exact average in one
/// step, 0 = none, e.g. a disconnected graph). For a symmetric doubly stochastic W this equals
/// `1 - ||W - 11^T/n||_2`.
pub fn spectral_gap(w: &Mixing) -> f64 {
    gap_of(&w.dense())
}

fn gap_of(m: &DMatrix<f64>) -> f64 {
    let n = m.nrows();
    if n < 2 {
        return 1.0;
    }
    let symmetric = (m - m.transpose()).abs().max() <= 1e-12;
    let mut moduli: Vec<f64> = if symmetric {
        match nalgebra::SymmetricEigen::try_new(m.clone(), 1e-13, 100_000) {
            Some(e) => e.eigenvalues.iter().map(|v| v.abs()).collect(),
            None => return norm_gap(m),
        }
    } else {
        // Bounded: nalgebra's unbounded Schur iteration can cycle on circulant matrices.
        match nalgebra::Schur::try_new(m.clone(), 1e-13, 100_000) {
            Some(s) => s.complex_eigenvalues().iter().map(|z| z.norm()).collect(),
            None => return norm_gap(m),
        }
    };
    moduli.sort_by(|a, b| b.total_cmp(a));
    (1.0 - moduli[1]).clamp(0.0, 1.0)
}

/// `1 - ||W - 11^T/n||_2`, a lower bound of the gap, used when an eigen-solver does not converge.
fn norm_gap(m: &DMatrix<f64>) -> f64 {
    let n = m.nrows();
    let j = DMatrix::from_element(n, n, 1.0 / n as f64);
    (1.0 - (m - j).singular_values().max()).clamp(0.0, 1.0)
}

/// Spectral gap of the expected mixing matrix `E[W]`, estimated from `rounds` sampled rounds of
/// `topology` under budget `r` (one round suffices for fixed topologies). For time-varying and
/// random topologies this is the rate at which gossip mixes on average, for reports.
pub fn expected_spectral_gap(
    topology: &Topology, rule: MixingRule, r: f64, rounds: u64, rng: &mut Rng,
) -> Result<f64, String> {
    let rounds = rounds.max(1);
    let n = topology.nodes();
    let mut mean = DMatrix::zeros(n, n);
    for t in 0..rounds {
        mean += Mixing::new(&topology.round_graph(t, r, rng), rule)?.dense();
    }
    Ok(gap_of(&(mean / rounds as f64)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;
    use proptest::prelude::*;

    fn topo(c: TopologyConfig, n: usize) -> Topology {
        Topology::new(c, n, &mut seed::rng(1, &[])).unwrap()
    }

    fn all_configs() -> Vec<TopologyConfig> {
        vec![
            TopologyConfig::Ring,
            TopologyConfig::Torus,
            TopologyConfig::Exponential,
            TopologyConfig::OnePeerExponential,
            TopologyConfig::Complete,
            TopologyConfig::ErdosRenyi { p: 0.5 },
            TopologyConfig::Random,
            TopologyConfig::BaseRandom {
                base: Box::new(TopologyConfig::Ring),
            },
        ]
    }

    #[test]
    fn shapes() {
        let mut rng = seed::rng(0, &[]);
        assert_eq!(
            topo(TopologyConfig::Ring, 5)
                .round_graph(0, 1.0, &mut rng)
                .peers[0],
            vec![1, 4]
        );
        let t = topo(TopologyConfig::Torus, 16).round_graph(0, 1.0, &mut rng);
        assert!(t.peers.iter().all(|p| p.len() == 4) && t.is_symmetric());
        let e = topo(TopologyConfig::Exponential, 8).round_graph(0, 1.0, &mut rng);
        assert_eq!(e.peers[0], vec![4, 6, 7]); // 0 - 1, 0 - 2, 0 - 4 (mod 8)
        let one = topo(TopologyConfig::OnePeerExponential, 8);
        assert_eq!(one.round_graph(0, 1.0, &mut rng).peers[3], vec![2]);
        assert_eq!(one.round_graph(2, 1.0, &mut rng).peers[3], vec![7]);
        assert_eq!(one.round_graph(3, 1.0, &mut rng).peers[3], vec![2]);
        assert!(Topology::new(TopologyConfig::Torus, 7, &mut rng).is_err());
        assert!(Topology::new(TopologyConfig::Ring, 1, &mut rng).is_err());
        assert!(Topology::new(
            TopologyConfig::BaseRandom {
                base: Box::new(TopologyConfig::Random)
            },
            4,
            &mut rng
        )
        .is_err());
    }

    #[test]
    fn budget_applies_to_every_topology() {
        let mut rng = seed::rng(2, &[]);
        for c in all_configs() {
            let t = topo(c.clone(), 8);
            assert_eq!(t.round_graph(0, 0.0, &mut rng), Graph::empty(8), "{c:?}");
            assert_eq!(t.round_graph(0, 7.0, &mut rng), Graph::complete(8), "{c:?}");
        }
        // r = 2.5 random peers: two or three each.
        let g = topo(TopologyConfig::Random, 16).round_graph(0, 2.5, &mut rng);
        assert!(g.peers.iter().all(|p| p.len() == 2 || p.len() == 3));
        // Base-random draws only base neighbours.
        let g = topo(
            TopologyConfig::BaseRandom {
                base: Box::new(TopologyConfig::Ring),
            },
            16,
        )
        .round_graph(0, 1.0, &mut rng);
        for (i, p) in g.peers.iter().enumerate() {
            assert_eq!(p.len(), 1);
            assert!(p[0] == (i + 1) % 16 || p[0] == (i + 15) % 16);
        }
    }

    #[test]
    fn fractional_budget_is_a_probability() {
        let t = topo(TopologyConfig::Random, 32);
        let mut rng = seed::rng(3, &[]);
        let edges: usize = (0..200)
            .map(|r| t.round_graph(r, 0.2, &mut rng).edges())
            .sum();
        let mean = edges as f64 / (200.0 * 32.0);
        assert!((mean - 0.2).abs() < 0.03, "{mean}");
    }

    #[test]
    fn spectral_gaps_order_as_expected() {
        let mut rng = seed::rng(4, &[]);
        let mut gap = |c: TopologyConfig, n: usize| {
            let t = topo(c, n);
            let rule = t.default_mixing();
            spectral_gap(&Mixing::new(&t.round_graph(0, 1.0, &mut rng), rule).unwrap())
        };
        // On 64 nodes (on 16, a 4x4 torus and the exponential graph tie at 0.4).
        let (ring64, torus, exp, full) = (
            gap(TopologyConfig::Ring, 64),
            gap(TopologyConfig::Torus, 64),
            gap(TopologyConfig::Exponential, 64),
            gap(TopologyConfig::Complete, 64),
        );
        assert!((full - 1.0).abs() < 1e-9, "{full}");
        assert!(
            ring64 < torus && torus < exp && exp < full,
            "{ring64} {torus} {exp} {full}"
        );
        let ring = gap(TopologyConfig::Ring, 16);
        // Ring of 16 with MH weights 1/3: gap = 1 - (1 + 2 cos(2 pi / 16)) / 3.
        let expect = 1.0 - (1.0 + 2.0 * (2.0 * std::f64::consts::PI / 16.0).cos()) / 3.0;
        assert!((ring - expect).abs() < 1e-9, "{ring} vs {expect}");
        assert_eq!(
            spectral_gap(&Mixing::new(&Graph::empty(4), MixingRule::Uniform).unwrap()),
            0.0
        );
    }

    #[test]
    fn metropolis_hastings_rejects_directed_graphs() {
        let g = topo(TopologyConfig::Exponential, 8).round_graph(0, 1.0, &mut seed::rng(0, &[]));
        assert!(Mixing::new(&g, MixingRule::MetropolisHastings).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every mixing matrix is row-stochastic; Metropolis-Hastings ones and circulant uniform
        /// ones are doubly stochastic and symmetric/preserve the average.
        #[test]
        fn mixing_invariants(n in 2usize..24, which in 0usize..8, r in 0.0f64..4.0, s in 0u64..1000, round in 0u64..10) {
            let mut rng = seed::rng(s, &[]);
            let c = all_configs()[which].clone();
            let t = match Topology::new(c.clone(), n, &mut rng) { Ok(t) => t, Err(_) => return Ok(()) };
            let g = t.round_graph(round, r, &mut rng);
            let uni = Mixing::new(&g, MixingRule::Uniform).unwrap();
            prop_assert!(uni.is_row_stochastic(1e-9));
            if g.is_symmetric() {
                let mh = Mixing::new(&g, MixingRule::MetropolisHastings).unwrap();
                prop_assert!(mh.is_doubly_stochastic(1e-9) && mh.is_symmetric(1e-12));
                let gap = spectral_gap(&mh);
                prop_assert!((0.0..=1.0).contains(&gap));
                // For symmetric doubly stochastic W both definitions agree.
                let j = DMatrix::from_element(n, n, 1.0 / n as f64);
                let norm = (mh.dense() - j).singular_values().max();
                prop_assert!((gap - (1.0 - norm).max(0.0)).abs() < 1e-6, "{} vs {}", gap, 1.0 - norm);
            }
            if matches!(c, TopologyConfig::Exponential | TopologyConfig::OnePeerExponential) && r >= 1.0 {
                prop_assert!(uni.is_doubly_stochastic(1e-9), "circulant uniform weights are doubly stochastic");
            }
        }

        /// Gossip with a doubly stochastic W preserves the average of the nodes' vectors.
        #[test]
        fn gossip_preserves_the_average(n in 2usize..16, s in 0u64..1000, vals in prop::collection::vec(-10.0f32..10.0, 16 * 3)) {
            let mut rng = seed::rng(s, &[]);
            let t = Topology::new(TopologyConfig::ErdosRenyi { p: 0.6 }, n, &mut rng).unwrap();
            let w = Mixing::new(&t.round_graph(0, 1.0, &mut rng), MixingRule::MetropolisHastings).unwrap();
            let x: Vec<Vec<f32>> = (0..n).map(|i| vals[i * 3..i * 3 + 3].to_vec()).collect();
            let y = w.apply(&x);
            for k in 0..3 {
                let before: f64 = x.iter().map(|v| f64::from(v[k])).sum();
                let after: f64 = y.iter().map(|v| f64::from(v[k])).sum();
                prop_assert!((before - after).abs() < 1e-4 * (1.0 + before.abs()));
            }
        }
    }
}
