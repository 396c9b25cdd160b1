//! Shamir secret sharing over any prime field, with Feldman commitments.
//!
//! A secret `s` is the constant term of a random polynomial `p` of degree `t`; node `i`
//! (0-based) holds `p(i + 1)`. Any `t + 1` shares determine `s` by Lagrange interpolation; `t`
//! shares are independent of `s` (Shamir 1979). Feldman's commitments `C_j = g^{a_j}` to the
//! coefficients let anyone check a share against the public commitment and derive every node's
//! public share `g^{p(i+1)}` (Feldman 1987).
//!
//! Generic over `ff::PrimeField` and `group::Group`, so the same code shares BLS12-381 scalars
//! (threshold signatures, coin) and Ristretto255 scalars (threshold encryption).
use ff::PrimeField;
use group::Group;
use rand_core::RngCore;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InterpolationError {
    #[error("no shares given")]
    Empty,
    #[error("share index {0} appears more than once")]
    DuplicateIndex(usize),
    #[error("share index {index} is out of range for a group of {n}")]
    IndexOutOfRange { index: usize, n: usize },
}

/// The evaluation point of node `index`: `index + 1` (0 is where the secret lives).
pub fn eval_point<F: PrimeField>(index: usize) -> F {
    F::from(index as u64 + 1)
}

/// A polynomial with coefficients `coefficients[j]` of `x^j`. Zeroized on drop.
pub struct Polynomial<F: PrimeField> {
    coefficients: Vec<F>,
}

impl<F: PrimeField> Drop for Polynomial<F> {
    fn drop(&mut self) {
        // Overwrite the secret coefficients before the memory is released.
        for c in &mut self.coefficients {
            *c = F::ZERO;
        }
        std::hint::black_box(&self.coefficients);
    }
}

impl<F: PrimeField> Polynomial<F> {
    /// A random polynomial of degree `degree` with constant term `secret`.
    pub fn random_with_secret(secret: F, degree: usize, rng: &mut impl RngCore) -> Self {
        let mut coefficients = Vec::with_capacity(degree + 1);
        coefficients.push(secret);
        coefficients.extend((0..degree).map(|_| F::random(&mut *rng)));
        Polynomial { coefficients }
    }

    /// A random polynomial of degree `degree` with a random secret.
    pub fn random(degree: usize, rng: &mut impl RngCore) -> Self {
        let secret = F::random(&mut *rng);
        Self::random_with_secret(secret, degree, rng)
    }

    pub fn degree(&self) -> usize {
        self.coefficients.len() - 1
    }

    pub fn secret(&self) -> F {
        self.coefficients[0]
    }

    /// `p(x)` by Horner's rule.
    pub fn evaluate(&self, x: F) -> F {
        self.coefficients
            .iter()
            .rev()
            .fold(F::ZERO, |acc, c| acc * x + c)
    }

    /// The share of node `index`: `p(index + 1)`.
    pub fn share(&self, index: usize) -> F {
        self.evaluate(eval_point(index))
    }

    /// Feldman commitments `g^{a_j}` to every coefficient.
    pub fn commit<G: Group<Scalar = F>>(&self, generator: G) -> Commitment<G> {
        Commitment {
            coefficients: self.coefficients.iter().map(|a| generator * a).collect(),
        }
    }
}

/// Feldman commitments to a sharing polynomial: `C_j = g^{a_j}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commitment<G: Group> {
    pub coefficients: Vec<G>,
}

impl<G: Group> Commitment<G> {
    /// `g^{p(x)} = Π C_j^{x^j}`.
    pub fn evaluate(&self, x: G::Scalar) -> G {
        self.coefficients
            .iter()
            .rev()
            .fold(G::identity(), |acc, c| acc * x + c)
    }

    /// The public share `g^{p(index + 1)}` of node `index`.
    pub fn public_share(&self, index: usize) -> G {
        self.evaluate(eval_point(index))
    }

    /// The public key `g^{p(0)}`.
    pub fn public_key(&self) -> G {
        self.coefficients
            .first()
            .copied()
            .unwrap_or_else(G::identity)
    }

    /// Feldman's check: does `share` lie on the committed polynomial at node `index`?
    pub fn verify_share(&self, generator: G, index: usize, share: &G::Scalar) -> bool {
        generator * share == self.public_share(index)
    }
}

/// Lagrange coefficients `λ_i` at `x = 0` for the nodes in `indices` (0-based), so that
/// `p(0) = Σ λ_i · p(i + 1)` for any polynomial of degree `< indices.len()`.
pub fn lagrange_coefficients<F: PrimeField>(
    indices: &[usize],
    n: usize,
) -> Result<Vec<F>, InterpolationError> {
    if indices.is_empty() {
        return Err(InterpolationError::Empty);
    }
    for (k, &i) in indices.iter().enumerate() {
        if i >= n {
            return Err(InterpolationError::IndexOutOfRange { index: i, n });
        }
        if indices[..k].contains(&i) {
            return Err(InterpolationError::DuplicateIndex(i));
        }
    }
    let xs: Vec<F> = indices.iter().map(|&i| eval_point(i)).collect();
    // λ_i = Π_{j≠i} x_j / (x_j − x_i); numerators and denominators are batched into a single
    // inversion of their product.
    let mut numerators = Vec::with_capacity(xs.len());
    let mut denominators = Vec::with_capacity(xs.len());
    for (i, xi) in xs.iter().enumerate() {
        let mut num = F::ONE;
        let mut den = F::ONE;
        for (j, xj) in xs.iter().enumerate() {
            if i != j {
                num *= xj;
                den *= *xj - xi;
            }
        }
        numerators.push(num);
        denominators.push(den);
    }
    // Distinct points in a field of prime order > n make every denominator non-zero.
    let total: F = denominators.iter().fold(F::ONE, |acc, d| acc * d);
    let total_inv = Option::<F>::from(total.invert()).ok_or(InterpolationError::Empty)?;
    Ok((0..xs.len())
        .map(|i| {
            let others: F = denominators
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .fold(F::ONE, |acc, (_, d)| acc * d);
            numerators[i] * others * total_inv
        })
        .collect())
}

/// Interpolate `p(0)` from `(index, p(index + 1))` pairs.
pub fn interpolate<F: PrimeField>(
    shares: &[(usize, F)],
    n: usize,
) -> Result<F, InterpolationError> {
    let indices: Vec<usize> = shares.iter().map(|(i, _)| *i).collect();
    let lambdas = lagrange_coefficients::<F>(&indices, n)?;
    Ok(shares.iter().zip(lambdas).map(|((_, s), l)| *s * l).sum())
}

/// Interpolate `g^{p(0)}` from `(index, g^{p(index + 1)})` pairs ("in the exponent").
pub fn interpolate_in_exponent<G: Group>(
    shares: &[(usize, G)],
    n: usize,
) -> Result<G, InterpolationError>
where
    G::Scalar: PrimeField,
{
    let indices: Vec<usize> = shares.iter().map(|(i, _)| *i).collect();
    let lambdas = lagrange_coefficients::<G::Scalar>(&indices, n)?;
    Ok(shares.iter().zip(lambdas).map(|((_, s), l)| *s * l).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use blstrs::{G1Projective, Scalar as BlsScalar};
    use curve25519_dalek::{RistrettoPoint, Scalar as RistrettoScalar};
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    fn subsets(n: usize, k: usize, seed: u64) -> Vec<usize> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + (rng.next_u64() as usize) % (n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_t_plus_one_shares_recover_the_secret(seed in any::<u64>(), n in 1usize..20, t_frac in 0.0f64..1.0) {
            let t = ((n - 1) as f64 * t_frac) as usize;
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let poly = Polynomial::<BlsScalar>::random(t, &mut rng);
            let idx = subsets(n, t + 1, seed ^ 1);
            let shares: Vec<_> = idx.iter().map(|&i| (i, poly.share(i))).collect();
            prop_assert_eq!(interpolate(&shares, n).unwrap(), poly.secret());
        }

        #[test]
        fn t_shares_give_a_different_value(seed in any::<u64>(), n in 2usize..20) {
            // With t shares of a degree-t polynomial, interpolation yields a value unrelated to
            // the secret (equal only with negligible probability).
            let t = n - 1;
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let poly = Polynomial::<RistrettoScalar>::random(t, &mut rng);
            let shares: Vec<_> = (0..t).map(|i| (i, poly.share(i))).collect();
            prop_assert_ne!(interpolate(&shares, n).unwrap(), poly.secret());
        }
    }

    #[test]
    fn feldman_accepts_good_and_rejects_bad_shares() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let poly = Polynomial::<RistrettoScalar>::random(2, &mut rng);
        let g = RistrettoPoint::generator();
        let c = poly.commit(g);
        for i in 0..7 {
            assert!(c.verify_share(g, i, &poly.share(i)));
            assert!(!c.verify_share(g, i, &(poly.share(i) + RistrettoScalar::ONE)));
            assert!(!c.verify_share(g, (i + 1) % 7, &poly.share(i)));
        }
        assert_eq!(c.public_key(), g * poly.secret());
    }

    #[test]
    fn interpolation_in_the_exponent() {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let poly = Polynomial::<BlsScalar>::random(3, &mut rng);
        let g = G1Projective::generator();
        let c = poly.commit(g);
        let shares: Vec<_> = [6, 1, 4, 2]
            .iter()
            .map(|&i| (i, c.public_share(i)))
            .collect();
        assert_eq!(
            interpolate_in_exponent(&shares, 10).unwrap(),
            c.public_key()
        );
    }

    #[test]
    fn known_answer_lagrange() {
        // Points x = 1, 2, 3: λ = (3, −3, 1).
        let l = lagrange_coefficients::<RistrettoScalar>(&[0, 1, 2], 3).unwrap();
        assert_eq!(l[0], RistrettoScalar::from(3u64));
        assert_eq!(l[1], -RistrettoScalar::from(3u64));
        assert_eq!(l[2], RistrettoScalar::ONE);
        // p(x) = 5 + 2x: shares 7 (x=1), 9 (x=2) interpolate to 5.
        let s = interpolate(
            &[
                (0, RistrettoScalar::from(7u64)),
                (1, RistrettoScalar::from(9u64)),
            ],
            2,
        )
        .unwrap();
        assert_eq!(s, RistrettoScalar::from(5u64));
    }

    #[test]
    fn bad_index_sets_are_errors() {
        assert_eq!(
            lagrange_coefficients::<BlsScalar>(&[], 4),
            Err(InterpolationError::Empty)
        );
        assert_eq!(
            lagrange_coefficients::<BlsScalar>(&[1, 1], 4),
            Err(InterpolationError::DuplicateIndex(1))
        );
        assert_eq!(
            lagrange_coefficients::<BlsScalar>(&[0, 4], 4),
            Err(InterpolationError::IndexOutOfRange { index: 4, n: 4 })
        );
    }
}
