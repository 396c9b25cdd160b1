//! Write the seed corpus of the agreement fuzz targets: valid encoded messages of a recorded
//! honest run (see `maftia_fuzz::seed_inputs`), into `corpus/<target>/seed-<k>` below the
//! directory given as the first argument (default: the current directory).
//!
//! ```sh
//! cd fuzz && cargo run --release --features seed-corpus --bin seed_corpus
//! ```
use maftia_fuzz::{seed_inputs, AbaFamily, AbcFamily, Family, MvbaFamily, ScabcFamily};
use std::path::{Path, PathBuf};

fn write<Fam: Family>(root: &Path) -> std::io::Result<()> {
    let dir = root.join("corpus").join(Fam::NAME);
    std::fs::create_dir_all(&dir)?;
    let seeds = seed_inputs::<Fam>();
    for (k, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{k:02}")), seed)?;
    }
    println!("{}: {} seeds in {}", Fam::NAME, seeds.len(), dir.display());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    write::<AbaFamily>(&root)?;
    write::<MvbaFamily>(&root)?;
    write::<AbcFamily>(&root)?;
    write::<ScabcFamily>(&root)?;
    Ok(())
}
