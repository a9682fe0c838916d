//! Small statistics helpers for the keyframe table (SPEC §7.2).

use statrs::distribution::{ContinuousCDF, StudentsT};

/// A statistic that is undefined for its input.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// Degrees of freedom must be positive and finite.
    #[error("Student-t degrees of freedom must be positive, got {0}")]
    DegreesOfFreedom(f64),
    /// A probability outside (0, 1).
    #[error("probability must lie strictly between 0 and 1, got {0}")]
    Probability(f64),
    /// Fewer than two samples: no sample standard deviation.
    #[error("need at least 2 values for a sample standard deviation, got {0}")]
    TooFewSamples(usize),
}

/// The `p` quantile of Student's t distribution with `df` degrees of freedom
/// (e.g. `t_quantile(0.95, 179.0)` ≈ 1.6534, the constant the original hard-codes).
pub fn t_quantile(p: f64, df: f64) -> Result<f64, StatsError> {
    if !(p > 0.0 && p < 1.0) {
        return Err(StatsError::Probability(p));
    }
    let dist = StudentsT::new(0.0, 1.0, df).map_err(|_| StatsError::DegreesOfFreedom(df))?;
    Ok(dist.inverse_cdf(p))
}

/// Arithmetic mean (NaN for an empty slice; callers check emptiness first).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (ddof = 1).
pub fn sample_std(xs: &[f64]) -> Result<f64, StatsError> {
    if xs.len() < 2 {
        return Err(StatsError::TooFewSamples(xs.len()));
    }
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    Ok((ss / (xs.len() - 1) as f64).sqrt())
}

/// One-sided upper confidence bound of the mean: `mean + t_{level, n−1}·sd/√n`,
/// with `sd` the sample standard deviation. For the keyframe table `level` is 0.95 and
/// the values are the 3N absolute keyframe deviations.
pub fn upper_confidence_bound(xs: &[f64], level: f64) -> Result<f64, StatsError> {
    let sd = sample_std(xs)?;
    let n = xs.len() as f64;
    let t = t_quantile(level, n - 1.0)?;
    Ok(mean(xs) + t * sd / n.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        // One-sided 95% critical values (tables: 2.920, 2.015, 1.697, 1.653), here to 16
        // digits from mpmath (root of 1 − I_{df/(df+t²)}(df/2, 1/2)/2 = 0.95, 40 digits).
        let cases = [
            (2.0, 2.919985580353726),
            (5.0, 2.015048373333024),
            (30.0, 1.697260886593958),
            (179.0, 1.653410800123413),
        ];
        for (df, want) in cases {
            let got = t_quantile(0.95, df).unwrap();
            assert!((got - want).abs() < 1e-9, "df {df}: {got} vs {want}");
        }
        // symmetric, median 0
        assert!((t_quantile(0.05, 5.0).unwrap() + 2.015048373333024).abs() < 1e-9);
        assert!(t_quantile(0.5, 7.0).unwrap().abs() < 1e-12);
        assert!(t_quantile(0.95, 0.0).is_err());
        assert!(t_quantile(1.0, 3.0).is_err());
    }

    #[test]
    fn std_and_bound() {
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        // sum of squares about 5 is 32 → sample variance 32/7
        assert!((sample_std(&xs).unwrap() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        let ub = upper_confidence_bound(&[1.0, 2.0, 3.0], 0.95).unwrap();
        // mean 2, sd 1, t(0.95, 2) = 2.919985580353726
        assert!((ub - (2.0 + 2.919985580353726 / 3f64.sqrt())).abs() < 1e-9);
        assert!(sample_std(&[1.0]).is_err());
        assert_eq!(upper_confidence_bound(&[3.0, 3.0, 3.0], 0.95).unwrap(), 3.0);
    }
}
