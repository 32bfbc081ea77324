//! What the benchmark programs of this crate share (`meridian-placement-bench`,
//! `meridian-cloud-bench`): their command line and their percentiles.

use anyhow::{Context, Result};

/// The program's arguments: `--smoke` and `--NAME VALUE` options.
#[derive(Debug)]
pub struct Args {
    args: Vec<String>,
    /// Tiny sizes, to keep the program from rotting (the test command).
    pub smoke: bool,
}

impl Args {
    pub fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = args.iter().any(|a| a == "--smoke");
        Self { args, smoke }
    }

    /// The number given as `name VALUE`, else `default` (`smoke` with
    /// `--smoke`, `full` without).
    pub fn value(&self, name: &str, smoke: u64, full: u64) -> Result<u64> {
        match self.args.iter().position(|a| a == name) {
            Some(i) => {
                let v = self.args.get(i + 1).with_context(|| format!("{name} needs a value"))?;
                v.parse().with_context(|| format!("{name} expects a number, not {v:?}"))
            }
            None => Ok(if self.smoke { smoke } else { full }),
        }
    }
}

/// The `p`-th percentile of `values` (nearest rank); NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}
