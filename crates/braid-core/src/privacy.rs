//! Differential-privacy accounting: Rényi DP (RDP) of the subsampled Gaussian mechanism and its
//! conversion to (epsilon, delta).
//!
//! A step that adds Gaussian noise of standard deviation `sigma` (in units of the clipping norm)
//! to a sum over a Poisson sample with rate `q` is `(alpha, rdp_alpha)`-RDP at every order
//! `alpha > 1`, computed as in Mironov, Talwar and Zhang, "Rényi Differential Privacy of the
//! Sampled Gaussian Mechanism" (2019): exactly for integer orders, with the erfc series for
//! fractional ones (the signed series that TensorFlow Privacy and Opacus use). RDP adds up over
//! steps, order by order; epsilon for a given delta is the best order's bound, by the improved
//! conversion of Canonne, Kamath and Steinke (2020) / Balle et al. (2020), or by Mironov's
//! classic one. The tests check published reference values from those libraries.

use thiserror::Error;

/// Invalid accounting inputs.
#[derive(Debug, Error, PartialEq)]
pub enum PrivacyError {
    /// A parameter is out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
}

/// Opacus's default orders: 1.1, 1.2, ..., 10.9, then 12, 13, ..., 63.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((12..64).map(f64::from))
        .collect()
}

fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x > y { (x, y) } else { (y, x) };
    if b == f64::NEG_INFINITY {
        return a;
    }
    (b - a).exp().ln_1p() + a
}

/// `log(exp(x) - exp(y))` for `x >= y` (`x` when `y` is -inf, -inf when equal).
fn log_sub(x: f64, y: f64) -> f64 {
    if y == f64::NEG_INFINITY {
        return x;
    }
    if x == y {
        return f64::NEG_INFINITY;
    }
    let d = (x - y).exp_m1();
    if d.is_finite() {
        d.ln() + y
    } else {
        x
    }
}

/// `log(erfc(x))`, with an asymptotic series where erfc underflows.
fn log_erfc(x: f64) -> f64 {
    let r = libm::erfc(x);
    if r > 0.0 {
        return r.ln();
    }
    let x2 = x * x;
    -0.5 * std::f64::consts::PI.ln() - x.ln() - x2 - 0.5 / x2 + 0.625 / (x2 * x2)
        - 37.0 / 24.0 / (x2 * x2 * x2)
        + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
}

fn log_binom(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// `log A_alpha` for an integer order.
fn log_a_int(q: f64, sigma: f64, alpha: u64) -> f64 {
    let a = alpha as f64;
    (0..=alpha).fold(f64::NEG_INFINITY, |acc, i| {
        let i = i as f64;
        let term = log_binom(a, i)
            + i * q.ln()
            + (a - i) * (-q).ln_1p()
            + (i * i - i) / (2.0 * sigma * sigma);
        log_add(acc, term)
    })
}

/// `log A_alpha` for a fractional order (Mironov et al. 2019, section 3.3).
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> f64 {
    let (mut a0, mut a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (lq, l1q) = (q.ln(), (-q).ln_1p());
    let s2 = std::f64::consts::SQRT_2 * sigma;
    // The generalized binomial coefficient C(alpha, i), carried as its sign and log magnitude.
    let (mut sign, mut log_c) = (1.0f64, 0.0f64);
    for i in 0..100_000u32 {
        let fi = f64::from(i);
        if i > 0 {
            let factor = (alpha - fi + 1.0) / fi;
            if factor == 0.0 {
                break; // C(alpha, i) = 0 from here on (alpha is an integer)
            }
            sign *= factor.signum();
            log_c += factor.abs().ln();
        }
        let j = alpha - fi;
        let t0 = log_c + fi * lq + j * l1q;
        let t1 = log_c + j * lq + fi * l1q;
        let e0 = 0.5f64.ln() + log_erfc((fi - z0) / s2);
        let e1 = 0.5f64.ln() + log_erfc((z0 - j) / s2);
        let s0 = t0 + (fi * fi - fi) / (2.0 * sigma * sigma) + e0;
        let s1 = t1 + (j * j - j) / (2.0 * sigma * sigma) + e1;
        if sign > 0.0 {
            a0 = log_add(a0, s0);
            a1 = log_add(a1, s1);
        } else {
            a0 = log_sub(a0, s0);
            a1 = log_sub(a1, s1);
        }
        if s0.max(s1) < -30.0 {
            break;
        }
    }
    log_add(a0, a1)
}

/// RDP at order `alpha` of one step of the Gaussian mechanism with noise multiplier `sigma`
/// on a Poisson sample with rate `q`.
pub fn rdp_step(q: f64, sigma: f64, alpha: f64) -> Result<f64, PrivacyError> {
    check(q, sigma)?;
    if alpha.is_nan() || alpha <= 1.0 {
        return Err(PrivacyError::Invalid(format!(
            "RDP order {alpha} must be > 1"
        )));
    }
    if q == 0.0 {
        return Ok(0.0);
    }
    if sigma == 0.0 {
        return Ok(f64::INFINITY);
    }
    if q == 1.0 {
        return Ok(alpha / (2.0 * sigma * sigma));
    }
    if alpha.is_infinite() {
        return Ok(f64::INFINITY);
    }
    let log_a = if alpha.fract() == 0.0 && alpha < 1e6 {
        log_a_int(q, sigma, alpha as u64)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    Ok(log_a / (alpha - 1.0))
}

fn check(q: f64, sigma: f64) -> Result<(), PrivacyError> {
    if !(0.0..=1.0).contains(&q) {
        return Err(PrivacyError::Invalid(format!(
            "sampling rate {q} must be in [0, 1]"
        )));
    }
    if !(sigma >= 0.0 && sigma.is_finite()) {
        return Err(PrivacyError::Invalid(format!(
            "noise multiplier {sigma} must be >= 0"
        )));
    }
    Ok(())
}

/// RDP of `steps` steps at each of `orders`.
pub fn compute_rdp(
    q: f64, sigma: f64, steps: u64, orders: &[f64],
) -> Result<Vec<f64>, PrivacyError> {
    orders
        .iter()
        .map(|&a| Ok(rdp_step(q, sigma, a)? * steps as f64))
        .collect()
}

/// How RDP is turned into (epsilon, delta).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Mironov (2017): `eps = rdp - log(delta) / (alpha - 1)`.
    Classic,
    /// Canonne, Kamath and Steinke (2020): `rdp + log1p(-1/alpha) - log(delta alpha) / (alpha - 1)`.
    Improved,
}

/// The smallest epsilon over the orders for `delta`, and the order that gives it.
pub fn epsilon(
    orders: &[f64], rdp: &[f64], delta: f64, conversion: Conversion,
) -> Result<(f64, f64), PrivacyError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(PrivacyError::Invalid(format!(
            "delta {delta} must be in (0, 1)"
        )));
    }
    if orders.len() != rdp.len() || orders.is_empty() {
        return Err(PrivacyError::Invalid(
            "one RDP value per order is needed".into(),
        ));
    }
    let mut best = (f64::INFINITY, orders[0]);
    for (&a, &r) in orders.iter().zip(rdp) {
        if a.is_nan() || a <= 1.0 || r.is_nan() {
            continue;
        }
        let eps = match conversion {
            Conversion::Classic => r - delta.ln() / (a - 1.0),
            Conversion::Improved => r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0),
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    Ok((best.0.max(0.0), best.1))
}

/// Accumulates the RDP of a run's steps (compositions of subsampled Gaussian mechanisms with
/// possibly different rates and noise) and reports epsilon.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self::new(default_orders())
    }
}

impl RdpAccountant {
    /// An accountant over `orders` (each > 1), with nothing spent yet.
    pub fn new(orders: Vec<f64>) -> Self {
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }

    /// Adds `steps` steps with sampling rate `q` and noise multiplier `sigma`.
    pub fn step(&mut self, q: f64, sigma: f64, steps: u64) -> Result<(), PrivacyError> {
        let add = compute_rdp(q, sigma, steps, &self.orders)?;
        for (r, a) in self.rdp.iter_mut().zip(add) {
            *r += a;
        }
        Ok(())
    }

    /// The RDP spent so far, per order (for checkpoints).
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    /// Restores what [`RdpAccountant::rdp`] returned.
    pub fn restore(&mut self, rdp: Vec<f64>) -> Result<(), PrivacyError> {
        if rdp.len() != self.orders.len() || rdp.iter().any(|r| r.is_nan() || *r < 0.0) {
            return Err(PrivacyError::Invalid(format!(
                "an accountant state of {} values for {} orders",
                rdp.len(),
                self.orders.len()
            )));
        }
        self.rdp = rdp;
        Ok(())
    }

    /// Epsilon spent so far for `delta` (improved conversion), and the best order.
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        epsilon(&self.orders, &self.rdp, delta, Conversion::Improved)
    }
}

/// The Poisson sampling rate of DP-SGD: each of `samples` samples joins a batch with
/// probability `batch_size / samples`, at most 1 (0 samples counts as 1).
pub fn poisson_rate(batch_size: usize, samples: u64) -> f64 {
    (batch_size as f64 / samples.max(1) as f64).min(1.0)
}

/// Scales `v` down to L2 norm at most `clip` (unchanged if already within); returns the norm
/// it had.
pub fn clip_to_norm(v: &mut [f32], clip: f64) -> f64 {
    let norm = crate::params::l2_norm(v);
    if norm > clip && norm > 0.0 {
        let s = (clip / norm) as f32;
        v.iter_mut().for_each(|x| *x *= s);
    }
    norm
}

/// Adds independent Gaussian noise of standard deviation `std` to every entry of `v`.
pub fn add_gaussian_noise(v: &mut [f32], std: f64, rng: &mut impl rand::Rng) {
    if std <= 0.0 {
        return;
    }
    let normal = rand_distr::StandardNormal;
    for x in v.iter_mut() {
        let z: f64 = rng.sample(normal);
        *x += (z * std) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_bounds_the_norm_and_noise_has_the_asked_spread() {
        let mut v = vec![3.0f32, 4.0];
        assert!((clip_to_norm(&mut v, 1.0) - 5.0).abs() < 1e-9);
        assert!((crate::params::l2_norm(&v) - 1.0).abs() < 1e-6);
        assert!((v[0] - 0.6).abs() < 1e-6);
        let mut small = vec![0.1f32, 0.1];
        clip_to_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.1, 0.1]);
        let mut z = vec![0.0f32; 100_000];
        add_gaussian_noise(&mut z, 2.0, &mut crate::seed::rng(1, &[]));
        let n = z.len() as f64;
        let mean = z.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = z
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.02 && (var.sqrt() - 2.0).abs() < 0.02,
            "{mean} {var}"
        );
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-12)
    }

    #[test]
    fn per_order_rdp_matches_tensorflow_privacy() {
        // tensorflow/privacy rdp_accountant_test.py, test_compute_rdp_sequence:
        // q = 0.01, sigma = 2.5, 50 steps.
        let orders = [1.5, 2.5, 5.0, 50.0, 100.0, f64::INFINITY];
        let got = compute_rdp(0.01, 2.5, 50, &orders).unwrap();
        let want = [0.00065, 0.001085, 0.00218075, 0.023846, 167.416307];
        for (g, w) in got.iter().zip(want) {
            assert!(close(*g, w, 1e-3), "{got:?}");
        }
        assert!(got[5].is_infinite());
        // test_compute_rdp_scalar: q = 0.1, sigma = 2, 10 steps, order 5 -> 0.07737.
        let r = compute_rdp(0.1, 2.0, 10, &[5.0]).unwrap()[0];
        assert!((r - 0.07737).abs() < 5e-6, "{r}");
        // The rules: no sampling costs nothing; full batches are the plain Gaussian mechanism.
        assert_eq!(compute_rdp(0.0, 10.0, 1, &[20.0]).unwrap(), vec![0.0]);
        assert!(close(
            compute_rdp(1.0, 10.0, 1, &[20.0]).unwrap()[0],
            0.1,
            1e-12
        ));
    }

    #[test]
    fn epsilon_matches_published_values() {
        // dp_accounting / TF Privacy: rdp = 1.1 at orders 2..32, delta 1e-5 -> 1.32783806176.
        let orders: Vec<f64> = (2..33).map(f64::from).collect();
        let (eps, order) = epsilon(&orders, &vec![1.1; 31], 1e-5, Conversion::Improved).unwrap();
        assert!(close(eps, 1.327_838_061_76, 1e-9), "{eps}");
        assert_eq!(order, 32.0);
        // Opacus accountants_test.py: sigma 1.5, q 0.04, 2250 steps, delta 1e-5 -> 7.32911117143
        // (best order 3.9: the fractional series).
        let mut acc = RdpAccountant::default();
        acc.step(0.04, 1.5, 2250).unwrap();
        let (eps, order) = acc.epsilon(1e-5).unwrap();
        assert!(close(eps, 7.329_111_171_43, 1e-9), "{eps}");
        assert!((order - 3.9).abs() < 1e-9);
        // Opacus rdp.py docstring: two mechanisms composed, orders 2..32 -> 0.336.
        let mut acc = RdpAccountant::new(orders.clone());
        acc.step(1e-5, 1.0, 10).unwrap();
        acc.step(1e-4, 3.0, 4).unwrap();
        let (eps, order) = acc.epsilon(1e-5).unwrap();
        assert!((eps - 0.336).abs() < 5e-4 && order == 23.0, "{eps} {order}");
    }

    #[test]
    fn dp_sgd_budgets_match_tensorflow_privacy() {
        // compute_dp_sgd_privacy_test.py with TF's orders; steps = ceil(epochs N / batch).
        let tf_orders: Vec<f64> = [1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0, 3.5, 4.0, 4.5]
            .into_iter()
            .chain((5..64).map(f64::from))
            .chain([128.0, 256.0, 512.0])
            .collect();
        let run = |n: f64, batch: f64, sigma: f64, epochs: f64, delta: f64, conv| {
            let steps = (epochs * n / batch).ceil() as u64;
            let rdp = compute_rdp(batch / n, sigma, steps, &tf_orders).unwrap();
            epsilon(&tf_orders, &rdp, delta, conv).unwrap()
        };
        let (eps, order) = run(60000.0, 150.0, 1.3, 15.0, 1e-5, Conversion::Improved);
        assert!(
            close(eps, 0.724_223_402_610_959_5, 1e-9) && order == 19.0,
            "{eps}"
        );
        let (eps, _) = run(60000.0, 150.0, 1.3, 15.0, 1e-5, Conversion::Classic);
        assert!(close(eps, 0.941_870_567, 1e-8), "{eps}");
        let (eps, order) = run(100000.0, 100.0, 1.0, 30.0, 1e-7, Conversion::Improved);
        assert!(
            close(eps, 1.415_498_849_544_484_2, 1e-9) && order == 13.0,
            "{eps}"
        );
        let (eps, _) = run(100000.0, 100.0, 1.0, 30.0, 1e-7, Conversion::Classic);
        assert!(close(eps, 1.709_287_34, 1e-8), "{eps}");
        // The MNIST tutorial (classic conversion): batch 256, sigma 1.1, 60 epochs -> eps = 3.01.
        let (eps, _) = run(60000.0, 256.0, 1.1, 60.0, 1e-5, Conversion::Classic);
        assert!((eps - 3.01).abs() < 0.005, "{eps}");
    }

    #[test]
    fn classic_conversion_matches_abadi_et_al_setting() {
        // TF Privacy's old test_get_privacy_spent_check_target_eps: q 0.01, sigma 4,
        // 10,000 steps, orders 2..32, delta 1e-5 -> 1.258575 at order 20.
        let orders: Vec<f64> = (2..33).map(f64::from).collect();
        let rdp = compute_rdp(0.01, 4.0, 10_000, &orders).unwrap();
        let (eps, order) = epsilon(&orders, &rdp, 1e-5, Conversion::Classic).unwrap();
        assert!(
            (eps - 1.258575).abs() < 1e-6 && order == 20.0,
            "{eps} {order}"
        );
    }

    #[test]
    fn more_noise_or_fewer_steps_spend_less() {
        let orders = default_orders();
        let eps = |q, sigma, steps| {
            let rdp = compute_rdp(q, sigma, steps, &orders).unwrap();
            epsilon(&orders, &rdp, 1e-5, Conversion::Improved)
                .unwrap()
                .0
        };
        assert!(eps(0.01, 2.0, 1000) < eps(0.01, 1.0, 1000));
        assert!(eps(0.01, 1.0, 500) < eps(0.01, 1.0, 1000));
        assert!(eps(0.005, 1.0, 1000) < eps(0.01, 1.0, 1000));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(rdp_step(1.5, 1.0, 2.0).is_err());
        assert!(rdp_step(0.1, -1.0, 2.0).is_err());
        assert!(rdp_step(0.1, 1.0, 1.0).is_err());
        assert!(epsilon(&[2.0], &[1.0], 0.0, Conversion::Improved).is_err());
        assert!(epsilon(&[2.0], &[], 1e-5, Conversion::Improved).is_err());
    }
}
