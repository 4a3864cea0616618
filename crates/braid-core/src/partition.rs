//! Splitting a labelled data set over clients, deterministically by seed.
//!
//! Every partitioner returns one list of sample indices per client; every sample is assigned
//! to exactly one client (property-tested below). Schemes:
//! - `iid`: a seeded permutation cut into near-equal parts;
//! - `dirichlet`: label skew, per class proportions over clients ~ Dir(alpha) (Hsu et al. 2019);
//! - `shards`: pathological non-IID (McMahan et al. 2017): sort by label, cut into
//!   `clients * shards_per_client` equal shards, give each client that many shards; a shard is
//!   one class unless it straddles a class boundary, so a client sees few classes;
//! - `extended-dirichlet`: each client owns `classes_per_client` classes (every class has at
//!   least one owner), each class is split over its owners ~ Dir(alpha) (used by GPSL);
//! - `quantity-skew`: IID labels, client sizes proportional to Dir(alpha) draws;
//! - `natural`: the data set's own grouping (e.g. Synthetic(alpha, beta)'s generating groups).

use rand::seq::SliceRandom;
use rand::Rng as _;
use rand_distr::{Distribution, Gamma};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::seed::Rng;

/// How to split the training data over clients (config: `[partition]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PartitionScheme {
    /// Uniformly at random, near-equal sizes.
    Iid,
    /// Label skew: for every class, its samples are split over clients by Dir(alpha) proportions.
    Dirichlet {
        /// Concentration; small (0.1) is very skewed, large (100) is close to IID.
        alpha: f64,
        /// Redraw until every client has at least this many samples (at most 1000 tries).
        #[serde(default = "default_min_size")]
        min_size: usize,
    },
    /// Pathological shards: each client gets `shards_per_client` label-sorted shards.
    Shards {
        /// Shards per client (each shard mostly one class).
        shards_per_client: usize,
    },
    /// Each client owns `classes_per_client` classes; each class is split over its owners by Dir(alpha).
    ExtendedDirichlet {
        /// Classes per client (GPSL: 2 = severe, 5 = mild).
        classes_per_client: usize,
        /// Concentration of the per-class split (GPSL: 3).
        alpha: f64,
    },
    /// IID labels, client sizes proportional to a Dir(alpha) draw (each client gets at least one sample).
    QuantitySkew {
        /// Concentration of the size distribution.
        alpha: f64,
    },
    /// The data set's own grouping: client `k` gets the samples of group `k`.
    Natural,
}

fn default_min_size() -> usize {
    1
}

/// Why a partition cannot be made.
#[derive(Debug, Error, PartialEq)]
pub enum PartitionError {
    /// At least one client is needed.
    #[error("partition.clients must be at least 1")]
    NoClients,
    /// Every client must be able to get at least one sample.
    #[error("partition.clients = {clients} but the training set has only {samples} samples")]
    TooManyClients {
        /// Number of clients requested.
        clients: usize,
        /// Number of samples available.
        samples: usize,
    },
    /// A concentration parameter is not positive.
    #[error("partition.alpha must be a finite number > 0 (got {0})")]
    BadAlpha(f64),
    /// A count parameter is out of range.
    #[error("partition.{field} = {value} is out of range: {why}")]
    OutOfRange {
        /// Field name.
        field: &'static str,
        /// The value given.
        value: usize,
        /// The rule it breaks.
        why: String,
    },
    /// The Dirichlet redraw could not reach `min_size`.
    #[error("partition: no Dirichlet draw in 1000 tries gave every client >= {min_size} samples; lower min_size, raise alpha or use fewer clients")]
    MinSizeUnreachable {
        /// The requested minimum.
        min_size: usize,
    },
    /// The natural split needs group ids that match the clients.
    #[error("partition.kind = \"natural\" {0}")]
    Natural(String),
    /// A label is not below the number of classes.
    #[error("label {label} at sample {index} is not below num_classes = {num_classes}")]
    BadLabel {
        /// The offending label.
        label: usize,
        /// Its position.
        index: usize,
        /// Number of classes declared.
        num_classes: usize,
    },
}

/// Splits samples with the given labels over `clients`, deterministically from `rng`.
pub fn partition(
    scheme: &PartitionScheme, labels: &[u32], groups: Option<&[u32]>, num_classes: usize,
    clients: usize, rng: &mut Rng,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    let n = labels.len();
    if clients == 0 {
        return Err(PartitionError::NoClients);
    }
    if clients > n {
        return Err(PartitionError::TooManyClients {
            clients,
            samples: n,
        });
    }
    if let Some((index, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= num_classes)
    {
        return Err(PartitionError::BadLabel {
            label: l as usize,
            index,
            num_classes,
        });
    }
    match *scheme {
        PartitionScheme::Iid => Ok(iid(n, clients, rng)),
        PartitionScheme::Dirichlet { alpha, min_size } => {
            check_alpha(alpha)?;
            if min_size.saturating_mul(clients) > n {
                return Err(PartitionError::OutOfRange {
                    field: "min_size",
                    value: min_size,
                    why: format!("{clients} clients x {min_size} exceeds {n} samples"),
                });
            }
            dirichlet(labels, num_classes, clients, alpha, min_size, rng)
        }
        PartitionScheme::Shards { shards_per_client } => {
            let total = shards_per_client.saturating_mul(clients);
            if shards_per_client == 0 || total > n {
                return Err(PartitionError::OutOfRange {
                    field: "shards_per_client",
                    value: shards_per_client,
                    why: format!("need 1 <= shards_per_client and clients x shards_per_client <= {n} samples"),
                });
            }
            Ok(shards(labels, clients, shards_per_client, rng))
        }
        PartitionScheme::ExtendedDirichlet {
            classes_per_client,
            alpha,
        } => {
            check_alpha(alpha)?;
            if classes_per_client == 0 || classes_per_client > num_classes {
                return Err(PartitionError::OutOfRange {
                    field: "classes_per_client",
                    value: classes_per_client,
                    why: format!("must be between 1 and {num_classes}"),
                });
            }
            if classes_per_client * clients < num_classes {
                return Err(PartitionError::OutOfRange {
                    field: "classes_per_client",
                    value: classes_per_client,
                    why: format!("{clients} clients x {classes_per_client} classes cannot cover all {num_classes} classes"),
                });
            }
            Ok(extended_dirichlet(
                labels,
                num_classes,
                clients,
                classes_per_client,
                alpha,
                rng,
            ))
        }
        PartitionScheme::QuantitySkew { alpha } => {
            check_alpha(alpha)?;
            Ok(quantity_skew(n, clients, alpha, rng))
        }
        PartitionScheme::Natural => natural(groups, n, clients),
    }
}

fn check_alpha(alpha: f64) -> Result<(), PartitionError> {
    if alpha.is_finite() && alpha > 0.0 {
        Ok(())
    } else {
        Err(PartitionError::BadAlpha(alpha))
    }
}

/// Cuts `items` into `parts` near-equal consecutive pieces (the first `len % parts` get one more).
fn split_even(items: &[usize], parts: usize) -> Vec<Vec<usize>> {
    let (q, r) = (items.len() / parts, items.len() % parts);
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = q + usize::from(i < r);
        out.push(items[start..start + len].to_vec());
        start += len;
    }
    out
}

/// Cuts `items` into pieces with the given proportions (cumulative rounding: exact cover).
fn split_by_proportions(items: &[usize], props: &[f64]) -> Vec<Vec<usize>> {
    let n = items.len();
    let mut out = Vec::with_capacity(props.len());
    let mut cum = 0.0;
    let mut start = 0;
    for (i, p) in props.iter().enumerate() {
        cum += p;
        let end = if i + 1 == props.len() {
            n
        } else {
            ((cum * n as f64).round() as usize).clamp(start, n)
        };
        out.push(items[start..end].to_vec());
        start = end;
    }
    out
}

/// A Dir(alpha, ..., alpha) draw of dimension `k`, via normalised Gamma variates.
fn dirichlet_draw(k: usize, alpha: f64, rng: &mut Rng) -> Vec<f64> {
    // Gamma::new only fails for non-positive parameters, which callers have ruled out.
    let gamma = Gamma::new(alpha, 1.0).unwrap_or_else(|_| unreachable!("alpha checked > 0"));
    let mut g: Vec<f64> = (0..k).map(|_| gamma.sample(rng)).collect();
    let s: f64 = g.iter().sum();
    if s > 0.0 && s.is_finite() {
        g.iter_mut().for_each(|v| *v /= s);
    } else {
        // Tiny alpha can underflow every variate to 0: the limit is all mass on one coordinate.
        g.iter_mut().for_each(|v| *v = 0.0);
        g[rng.random_range(0..k)] = 1.0;
    }
    g
}

fn by_class(labels: &[u32], num_classes: usize) -> Vec<Vec<usize>> {
    let mut classes = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        classes[l as usize].push(i);
    }
    classes
}

fn iid(n: usize, clients: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    split_even(&perm, clients)
}

fn dirichlet(
    labels: &[u32], num_classes: usize, clients: usize, alpha: f64, min_size: usize, rng: &mut Rng,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    let classes = by_class(labels, num_classes);
    for _ in 0..1000 {
        let mut parts = vec![Vec::new(); clients];
        for members in &classes {
            let mut members = members.clone();
            members.shuffle(rng);
            let props = dirichlet_draw(clients, alpha, rng);
            for (part, piece) in parts.iter_mut().zip(split_by_proportions(&members, &props)) {
                part.extend(piece);
            }
        }
        if parts.iter().all(|p| p.len() >= min_size) {
            parts.iter_mut().for_each(|p| p.shuffle(rng));
            return Ok(parts);
        }
    }
    Err(PartitionError::MinSizeUnreachable { min_size })
}

fn shards(labels: &[u32], clients: usize, per_client: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.shuffle(rng); // random order within each class
    order.sort_by_key(|&i| labels[i]); // stable: keeps the shuffled order inside a class
    let mut shard_ids: Vec<usize> = (0..clients * per_client).collect();
    shard_ids.shuffle(rng);
    let all_shards = split_even(&order, clients * per_client);
    shard_ids
        .chunks(per_client)
        .map(|ids| {
            ids.iter()
                .flat_map(|&s| all_shards[s].iter().copied())
                .collect()
        })
        .collect()
}

fn extended_dirichlet(
    labels: &[u32], num_classes: usize, clients: usize, per_client: usize, alpha: f64,
    rng: &mut Rng,
) -> Vec<Vec<usize>> {
    // Class ownership: a shuffled round-robin covers every class, then random distinct extras.
    let mut cover: Vec<usize> = (0..num_classes).collect();
    cover.shuffle(rng);
    let mut owned: Vec<Vec<usize>> = vec![Vec::new(); clients];
    for (j, &c) in cover.iter().enumerate() {
        owned[j % clients].push(c);
    }
    for set in owned.iter_mut() {
        let mut rest: Vec<usize> = (0..num_classes).filter(|c| !set.contains(c)).collect();
        rest.shuffle(rng);
        let missing = per_client.saturating_sub(set.len());
        set.extend(rest.into_iter().take(missing));
    }
    let classes = by_class(labels, num_classes);
    let mut parts = vec![Vec::new(); clients];
    for (c, members) in classes.iter().enumerate() {
        let owners: Vec<usize> = (0..clients).filter(|&k| owned[k].contains(&c)).collect();
        let mut members = members.clone();
        members.shuffle(rng);
        let props = dirichlet_draw(owners.len(), alpha, rng);
        for (&k, piece) in owners.iter().zip(split_by_proportions(&members, &props)) {
            parts[k].extend(piece);
        }
    }
    parts.iter_mut().for_each(|p| p.shuffle(rng));
    parts
}

fn quantity_skew(n: usize, clients: usize, alpha: f64, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(rng);
    let props = dirichlet_draw(clients, alpha, rng);
    // One sample per client first, the rest by proportions.
    let spare = n - clients;
    let mut sizes: Vec<usize> = Vec::with_capacity(clients);
    let mut cum = 0.0;
    let mut given = 0;
    for (i, p) in props.iter().enumerate() {
        cum += p;
        let upto = if i + 1 == clients {
            spare
        } else {
            ((cum * spare as f64).round() as usize).clamp(given, spare)
        };
        sizes.push(1 + upto - given);
        given = upto;
    }
    let mut out = Vec::with_capacity(clients);
    let mut start = 0;
    for s in sizes {
        out.push(perm[start..start + s].to_vec());
        start += s;
    }
    out
}

fn natural(
    groups: Option<&[u32]>, n: usize, clients: usize,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    let groups = groups.ok_or_else(|| {
        PartitionError::Natural(
            "needs a data set with natural groups (dataset = \"synthetic\")".into(),
        )
    })?;
    if groups.len() != n {
        return Err(PartitionError::Natural(format!(
            "got {} group ids for {n} samples",
            groups.len()
        )));
    }
    let mut parts = vec![Vec::new(); clients];
    for (i, &g) in groups.iter().enumerate() {
        let slot = parts.get_mut(g as usize).ok_or_else(|| {
            PartitionError::Natural(format!("sample {i} is in group {g} but partition.clients = {clients}; set clients to the number of groups"))
        })?;
        slot.push(i);
    }
    if let Some(k) = parts.iter().position(Vec::is_empty) {
        return Err(PartitionError::Natural(format!(
            "client {k} has no group; set partition.clients to the number of groups"
        )));
    }
    Ok(parts)
}

/// Per-client label counts: `hist[client][class]`.
pub fn label_histogram(
    labels: &[u32], parts: &[Vec<usize>], num_classes: usize,
) -> Vec<Vec<usize>> {
    parts
        .iter()
        .map(|p| {
            let mut h = vec![0usize; num_classes];
            for &i in p {
                if let Some(slot) = labels.get(i).and_then(|&l| h.get_mut(l as usize)) {
                    *slot += 1;
                }
            }
            h
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;
    use proptest::prelude::*;

    fn labels(n: usize, classes: usize) -> Vec<u32> {
        (0..n).map(|i| (i * 7 % classes) as u32).collect()
    }

    fn assert_exact_cover(parts: &[Vec<usize>], n: usize) {
        let mut seen = vec![false; n];
        for p in parts {
            for &i in p {
                assert!(!seen[i], "sample {i} assigned twice");
                seen[i] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "some sample unassigned");
    }

    fn schemes() -> Vec<PartitionScheme> {
        vec![
            PartitionScheme::Iid,
            PartitionScheme::Dirichlet {
                alpha: 0.5,
                min_size: 1,
            },
            PartitionScheme::Shards {
                shards_per_client: 2,
            },
            PartitionScheme::ExtendedDirichlet {
                classes_per_client: 2,
                alpha: 3.0,
            },
            PartitionScheme::QuantitySkew { alpha: 1.0 },
        ]
    }

    #[test]
    fn deterministic_by_seed() {
        let y = labels(500, 10);
        for s in schemes() {
            let a = partition(&s, &y, None, 10, 7, &mut seed::rng(3, &[1])).unwrap();
            let b = partition(&s, &y, None, 10, 7, &mut seed::rng(3, &[1])).unwrap();
            let c = partition(&s, &y, None, 10, 7, &mut seed::rng(4, &[1])).unwrap();
            assert_eq!(a, b, "{s:?}");
            assert_ne!(a, c, "{s:?}");
        }
    }

    #[test]
    fn iid_sizes_are_near_equal() {
        let parts = partition(
            &PartitionScheme::Iid,
            &labels(103, 10),
            None,
            10,
            10,
            &mut seed::rng(0, &[]),
        )
        .unwrap();
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![11, 11, 11, 10, 10, 10, 10, 10, 10, 10]);
    }

    #[test]
    fn shards_limit_classes_per_client() {
        let y = labels(1000, 10);
        let parts = partition(
            &PartitionScheme::Shards {
                shards_per_client: 2,
            },
            &y,
            None,
            10,
            10,
            &mut seed::rng(1, &[]),
        )
        .unwrap();
        for h in label_histogram(&y, &parts, 10) {
            assert!(h.iter().filter(|&&c| c > 0).count() <= 2, "{h:?}");
        }
    }

    #[test]
    fn extended_dirichlet_gives_exact_class_counts() {
        let y = labels(2000, 10);
        let parts = partition(
            &PartitionScheme::ExtendedDirichlet {
                classes_per_client: 2,
                alpha: 3.0,
            },
            &y,
            None,
            10,
            16,
            &mut seed::rng(5, &[]),
        )
        .unwrap();
        assert_exact_cover(&parts, 2000);
        for h in label_histogram(&y, &parts, 10) {
            assert!(h.iter().filter(|&&c| c > 0).count() <= 2, "{h:?}");
        }
    }

    #[test]
    fn small_alpha_is_more_skewed_than_large() {
        let y = labels(5000, 10);
        let skew = |alpha| {
            let parts = partition(
                &PartitionScheme::Dirichlet { alpha, min_size: 1 },
                &y,
                None,
                10,
                10,
                &mut seed::rng(9, &[]),
            )
            .unwrap();
            // Mean over clients of the largest class share.
            label_histogram(&y, &parts, 10)
                .iter()
                .map(|h| {
                    let tot: usize = h.iter().sum();
                    *h.iter().max().unwrap() as f64 / tot as f64
                })
                .sum::<f64>()
                / 10.0
        };
        assert!(skew(0.1) > skew(100.0) + 0.3);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let y = labels(10, 10);
        let mut r = seed::rng(0, &[]);
        assert_eq!(
            partition(&PartitionScheme::Iid, &y, None, 10, 11, &mut r),
            Err(PartitionError::TooManyClients {
                clients: 11,
                samples: 10
            })
        );
        assert_eq!(
            partition(&PartitionScheme::Iid, &y, None, 10, 0, &mut r),
            Err(PartitionError::NoClients)
        );
        assert_eq!(
            partition(
                &PartitionScheme::Dirichlet {
                    alpha: 0.0,
                    min_size: 1
                },
                &y,
                None,
                10,
                2,
                &mut r
            ),
            Err(PartitionError::BadAlpha(0.0))
        );
        assert_eq!(
            partition(
                &PartitionScheme::QuantitySkew { alpha: -1.0 },
                &y,
                None,
                10,
                2,
                &mut r
            ),
            Err(PartitionError::BadAlpha(-1.0))
        );
        assert!(matches!(
            partition(
                &PartitionScheme::Shards {
                    shards_per_client: 0
                },
                &y,
                None,
                10,
                2,
                &mut r
            ),
            Err(PartitionError::OutOfRange { .. })
        ));
        assert!(matches!(
            partition(
                &PartitionScheme::ExtendedDirichlet {
                    classes_per_client: 1,
                    alpha: 1.0
                },
                &y,
                None,
                10,
                2,
                &mut r
            ),
            Err(PartitionError::OutOfRange { .. })
        ));
        assert!(matches!(
            partition(&PartitionScheme::Iid, &[12], None, 10, 1, &mut r),
            Err(PartitionError::BadLabel { .. })
        ));
    }

    #[test]
    fn natural_follows_groups() {
        let y = labels(6, 10);
        let parts = partition(
            &PartitionScheme::Natural,
            &y,
            Some(&[1, 0, 1, 0, 2, 2]),
            10,
            3,
            &mut seed::rng(0, &[]),
        )
        .unwrap();
        assert_eq!(parts, vec![vec![1, 3], vec![0, 2], vec![4, 5]]);
        assert!(matches!(
            partition(
                &PartitionScheme::Natural,
                &y,
                None,
                10,
                3,
                &mut seed::rng(0, &[])
            ),
            Err(PartitionError::Natural(_))
        ));
        assert!(matches!(
            partition(
                &PartitionScheme::Natural,
                &y,
                Some(&[0, 0, 0, 0, 0, 5]),
                10,
                3,
                &mut seed::rng(0, &[])
            ),
            Err(PartitionError::Natural(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every sample is assigned exactly once, every client gets at least one sample where the
        /// scheme guarantees it, and IID sizes differ by at most one.
        #[test]
        fn every_sample_assigned_exactly_once(n in 20usize..400, clients in 1usize..10, seed_v in 0u64..1000, which in 0usize..5) {
            let y = labels(n, 10);
            let scheme = schemes()[which].clone();
            let clients = if matches!(scheme, PartitionScheme::ExtendedDirichlet { .. }) { clients.max(5) } else { clients };
            let parts = partition(&scheme, &y, None, 10, clients, &mut seed::rng(seed_v, &[])).unwrap();
            prop_assert_eq!(parts.len(), clients);
            assert_exact_cover(&parts, n);
            match scheme {
                PartitionScheme::Iid => {
                    let min = parts.iter().map(Vec::len).min().unwrap();
                    let max = parts.iter().map(Vec::len).max().unwrap();
                    prop_assert!(max - min <= 1);
                }
                PartitionScheme::QuantitySkew { .. } | PartitionScheme::Dirichlet { .. } => {
                    prop_assert!(parts.iter().all(|p| !p.is_empty()));
                }
                PartitionScheme::Shards { shards_per_client } => {
                    let min = parts.iter().map(Vec::len).min().unwrap();
                    let max = parts.iter().map(Vec::len).max().unwrap();
                    prop_assert!(max - min <= shards_per_client);
                }
                PartitionScheme::ExtendedDirichlet { .. } | PartitionScheme::Natural => {}
            }
        }
    }
}
