//! Random samplers shared by the vessel geometry ([`super::tree`]) and the segmentation
//! artefacts ([`super::noise`]); small enough to keep here rather than depend on rand_distr.

use rand::{Rng, RngExt};

/// A standard normal sample (Box–Muller; one of the pair is enough here).
pub(crate) fn normal<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    let u1 = rng.random_range(f32::EPSILON..1.0f32);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// A Poisson sample for small means (Knuth's product method).
pub(crate) fn poisson<R: Rng + ?Sized>(rng: &mut R, mean: f32) -> usize {
    let limit = (-mean).exp();
    let mut k = 0;
    let mut p: f32 = rng.random();
    while p > limit && k < 1000 {
        k += 1;
        p *= rng.random::<f32>();
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn normal_and_poisson_have_the_right_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 20_000;
        let xs: Vec<f32> = (0..n).map(|_| normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "{mean} {var}");
        let ks: Vec<usize> = (0..n).map(|_| poisson(&mut rng, 7.0)).collect();
        let m = ks.iter().sum::<usize>() as f32 / n as f32;
        assert!((m - 7.0).abs() < 0.1, "{m}");
    }
}
