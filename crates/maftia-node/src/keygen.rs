//! `maftia keygen`: deal a new group's keys and write them to a directory.
use anyhow::{bail, Context, Result};
use maftia_core::GroupConfig;
use maftia_crypto::keygen;
use std::path::Path;

pub fn run(n: usize, f: Option<usize>, out: &Path) -> Result<()> {
    let group = write_keys(n, f, out)?;
    report(&group, out);
    Ok(())
}

/// Deal the keys of a group of `n` (f default ⌊(n − 1)/3⌋) into `out` (new or empty), quietly.
pub fn write_keys(n: usize, f: Option<usize>, out: &Path) -> Result<GroupConfig> {
    let f = f.unwrap_or(n.saturating_sub(1) / 3);
    let group = GroupConfig::asynchronous(n, f).context("invalid group size")?;
    if out.exists() {
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("cannot read output directory {}", out.display()))?;
        if entries.next().is_some() {
            bail!(
                "output directory {} is not empty; keys are never overwritten — choose a new directory",
                out.display()
            );
        }
    }
    let (public, secrets) = keygen::deal_group(group.n(), group.f(), &mut rand::rngs::OsRng)
        .context("key generation failed")?;
    keygen::write_files(out, &public, &secrets)
        .with_context(|| format!("cannot write keys to {}", out.display()))?;
    Ok(group)
}

/// Print what [`write_keys`] wrote into `out`.
pub fn report(group: &GroupConfig, out: &Path) {
    println!(
        "wrote keys for n = {}, f = {} (asynchronous configuration) to {}",
        group.n(),
        group.f(),
        out.display()
    );
    println!("  group.toml              public group file: share with every replica and client");
    for i in 0..group.n() {
        println!("  node-{i}.secret.toml    secret keys of replica {i} (mode 0600): give only to that host");
    }
    println!(
        "thresholds: coin {}, replies {}, consistent broadcast {}, quorum proofs {}, decryption {}",
        group.one_honest(),
        group.one_honest(),
        group.echo_quorum(),
        group.quorum(),
        group.one_honest()
    );
}
