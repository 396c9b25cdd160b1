//! Trusted-dealer key generation for the asynchronous configuration, and the key files.
//!
//! **What it produces.** For a group of `n` nodes tolerating `f` Byzantine ones (`n > 3f`),
//! [`deal_group`] deals one BLS key set per [`KeySetId`] with that use's threshold (PROTOCOLS.md,
//! "Threshold key sets"), one TDH2 key with threshold `f + 1` ([`crate::tdh2`]) and one Ed25519
//! identity per node. The public half is a [`GroupPublic`], every replica and client gets it; the
//! secret half is one [`NodeSecret`] per node, for that node only.
//!
//! **Assumptions.** The dealer is trusted: it sees every secret and must forget them (the values
//! here are zeroized on drop, but the dealer's machine is trusted not to leak them). A
//! distributed key generation replaces it later (DESIGN.md, "Crypto choices").
//!
//! **Files.** Self-describing, versioned TOML: `group.toml` and `node-<i>.secret.toml`, each
//! starting with `format` and `version` fields, read and written through [`crate::keyfile`].
//! [`write_files`] never overwrites anything (the directory must be new or empty) and creates
//! every secret file with mode `0600` from the start; the group file is public (`0644`).
//! [`load_group`] and [`load_secret`] check the format and
//! version first, then validate every key (a BLS key set's shares lie on one polynomial through
//! its public key, the TDH2 verification keys likewise, one distinct identity per node);
//! [`load_secret`] refuses a secret file readable by group or others, as ssh does.
//! [`NodeSecret::check_against`] checks that a secret file belongs to a group file at its index.
//!
//! **Costs.** Dealing: `O(n)` scalar multiplications per key set (G2 for BLS). Loading a group
//! file validates each BLS key set with `n − k + 1` multi-exponentiations of `k` points in G2
//! (see [`BlsPublicKeySet::validate`]) and the TDH2 key with one `(n + 1)`-point
//! multi-scalar multiplication.
use crate::bls::{self, BlsError, BlsPublicKeySet, BlsSecretShare, KeySetId};
use crate::identity::{IdentityKey, IdentityPublicKey};
use crate::keyfile::{self, io_error, FileError};
use crate::tdh2::{self, Tdh2Error, Tdh2PublicKey, Tdh2SecretShare};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

/// `format` of a group file.
pub const GROUP_FORMAT: &str = "maftia-group-public";
/// `format` of a node secret file.
pub const SECRET_FORMAT: &str = "maftia-node-secret";
/// The key-file version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest group the dealer serves.
pub const MAX_NODES: usize = 1024;
/// Name of the group file inside a key directory.
pub const GROUP_FILE: &str = "group.toml";

/// Name of node `index`'s secret file inside a key directory.
pub fn secret_file_name(index: usize) -> String {
    format!("node-{index}.secret.toml")
}

#[derive(Debug, Error)]
pub enum KeygenError {
    #[error(
        "invalid group n = {n}, f = {f}: the asynchronous configuration needs 1 <= n <= {MAX_NODES} and n > 3f"
    )]
    InvalidGroupSize { n: usize, f: usize },
    #[error("BLS key generation failed: {0}")]
    Bls(#[from] BlsError),
    #[error("TDH2 key generation failed: {0}")]
    Tdh2(#[from] Tdh2Error),
    #[error(
        "{0} exists and is not empty; key files are never overwritten — choose a new directory"
    )]
    DirectoryNotEmpty(PathBuf),
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("cannot encode a key file: {0}")]
    Encode(#[from] toml::ser::Error),
    #[error("invalid keys: {0}")]
    Invalid(String),
    #[error("{path}: invalid keys: {reason}")]
    InvalidFile { path: PathBuf, reason: String },
    #[error("secret of node {index} does not match the group: {reason}")]
    Mismatch { index: usize, reason: String },
}

/// The fields every key file starts with: its format, its version and the group size.
fn check_identity_fields(
    format: &str,
    expected_format: &str,
    version: u32,
    n: usize,
    f: usize,
) -> Result<(), KeygenError> {
    if format != expected_format {
        return Err(KeygenError::Invalid(format!(
            "format {format:?}, expected {expected_format:?}"
        )));
    }
    if version != FORMAT_VERSION {
        return Err(KeygenError::Invalid(format!(
            "version {version}, expected {FORMAT_VERSION}"
        )));
    }
    check_group_size(n, f)
}

fn check_group_size(n: usize, f: usize) -> Result<(), KeygenError> {
    // n > 3f, written so that it cannot overflow.
    if n == 0 || n > MAX_NODES || f >= n || (n - 1) / 3 < f {
        return Err(KeygenError::InvalidGroupSize { n, f });
    }
    Ok(())
}

/// The TDH2 threshold for a group tolerating `f` faults.
pub fn tdh2_threshold(f: usize) -> usize {
    f + 1
}

/// The public half of a group's keys: `group.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPublic {
    /// Always [`GROUP_FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`].
    pub version: u32,
    pub n: usize,
    pub f: usize,
    /// The program that dealt the keys, e.g. `"maftia keygen 0.1.0"`.
    pub created_by: String,
    /// One BLS key set per use, each with its threshold.
    pub bls: BTreeMap<KeySetId, BlsPublicKeySet>,
    /// The threshold encryption key (threshold `f + 1`).
    pub tdh2: Tdh2PublicKey,
    /// `identities[i]` is node `i`'s Ed25519 public key.
    pub identities: Vec<IdentityPublicKey>,
}

impl GroupPublic {
    /// Check everything: format and version, group size, one BLS key set per [`KeySetId`] with
    /// its use's threshold and a consistent polynomial, the TDH2 key likewise, one distinct
    /// identity per node.
    pub fn validate(&self) -> Result<(), KeygenError> {
        self.check(true)
    }

    /// As [`GroupPublic::validate`]; `validate_bls` = false skips the polynomial checks of the
    /// BLS key sets (deserializing a [`BlsPublicKeySet`] already runs them).
    fn check(&self, validate_bls: bool) -> Result<(), KeygenError> {
        let invalid = |reason: String| Err(KeygenError::Invalid(reason));
        check_identity_fields(&self.format, GROUP_FORMAT, self.version, self.n, self.f)?;
        let ids: Vec<KeySetId> = self.bls.keys().copied().collect();
        if ids != KeySetId::ALL {
            return invalid(format!(
                "BLS key sets {ids:?}, expected {:?}",
                KeySetId::ALL
            ));
        }
        for (id, set) in &self.bls {
            let threshold = id.threshold(self.n, self.f);
            if set.id != *id || set.n != self.n || set.threshold != threshold {
                return invalid(format!(
                    "BLS key set {id:?} is ({:?}, n = {}, k = {}), expected ({id:?}, n = {}, k = {threshold})",
                    set.id, set.n, set.threshold, self.n
                ));
            }
            let checked = if validate_bls {
                set.validate()
            } else {
                set.check_shape()
            };
            checked.map_err(|e| KeygenError::Invalid(format!("BLS key set {id:?}: {e}")))?;
        }
        let threshold = tdh2_threshold(self.f);
        if self.tdh2.n != self.n || self.tdh2.threshold != threshold {
            return invalid(format!(
                "TDH2 key for n = {}, k = {}, expected n = {}, k = {threshold}",
                self.tdh2.n, self.tdh2.threshold, self.n
            ));
        }
        self.tdh2
            .validate()
            .map_err(|e| KeygenError::Invalid(format!("TDH2 key: {e}")))?;
        if self.identities.len() != self.n {
            return invalid(format!(
                "{} identities for {} nodes",
                self.identities.len(),
                self.n
            ));
        }
        let distinct: BTreeSet<&IdentityPublicKey> = self.identities.iter().collect();
        if distinct.len() != self.n {
            return invalid("two nodes have the same identity key".into());
        }
        Ok(())
    }
}

/// The secret half of one node's keys: `node-<i>.secret.toml`. Every secret is zeroized on
/// drop; `Debug` shows no secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSecret {
    /// Always [`SECRET_FORMAT`].
    pub format: String,
    /// Always [`FORMAT_VERSION`].
    pub version: u32,
    /// The node these keys belong to.
    pub index: usize,
    pub n: usize,
    pub f: usize,
    /// This node's share of every BLS key set.
    pub bls: BTreeMap<KeySetId, BlsSecretShare>,
    /// This node's share of the TDH2 decryption key.
    pub tdh2: Tdh2SecretShare,
    /// This node's Ed25519 identity.
    pub identity: IdentityKey,
}

impl fmt::Debug for NodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSecret")
            .field("index", &self.index)
            .field("n", &self.n)
            .field("f", &self.f)
            .field("identity", &self.identity.public())
            .finish_non_exhaustive()
    }
}

impl NodeSecret {
    /// Check the file's own consistency: format and version, group size, index in range, one
    /// BLS share per [`KeySetId`], every share labelled with this node's index.
    pub fn validate(&self) -> Result<(), KeygenError> {
        let invalid = |reason: String| Err(KeygenError::Invalid(reason));
        check_identity_fields(&self.format, SECRET_FORMAT, self.version, self.n, self.f)?;
        if self.index >= self.n {
            return invalid(format!("index {} in a group of {}", self.index, self.n));
        }
        let ids: Vec<KeySetId> = self.bls.keys().copied().collect();
        if ids != KeySetId::ALL {
            return invalid(format!("BLS shares {ids:?}, expected {:?}", KeySetId::ALL));
        }
        for (id, share) in &self.bls {
            if share.id != *id || share.index != self.index {
                return invalid(format!(
                    "BLS share filed under {id:?} is ({:?}, index {}), expected ({id:?}, index {})",
                    share.id, share.index, self.index
                ));
            }
        }
        if self.tdh2.index != self.index {
            return invalid(format!(
                "TDH2 share has index {}, expected {}",
                self.tdh2.index, self.index
            ));
        }
        Ok(())
    }

    /// Check that these are the keys of node `self.index` of `group`: same group size, every BLS
    /// public share equals `g₂^{secret}`, the TDH2 verification key equals `g^{x_i}`, and the
    /// identity's public key is the one the group lists for this node.
    pub fn check_against(&self, group: &GroupPublic) -> Result<(), KeygenError> {
        self.validate()?;
        let index = self.index;
        let mismatch = |reason: String| Err(KeygenError::Mismatch { index, reason });
        if (self.n, self.f) != (group.n, group.f) {
            return mismatch(format!(
                "secret is for n = {}, f = {}, group has n = {}, f = {}",
                self.n, self.f, group.n, group.f
            ));
        }
        for (id, share) in &self.bls {
            let expected = group
                .bls
                .get(id)
                .and_then(|set| set.public_shares.get(index));
            if expected != Some(&share.public_share()) {
                return mismatch(format!(
                    "BLS {id:?} share is not the group's public share {index}"
                ));
            }
        }
        if group.tdh2.verification_keys.get(index) != Some(&self.tdh2.verification_key()) {
            return mismatch(format!(
                "TDH2 share is not the group's verification key {index}"
            ));
        }
        if group.identities.get(index) != Some(&self.identity.public()) {
            return mismatch(format!("identity is not the group's identity {index}"));
        }
        Ok(())
    }
}

/// Deal a new group's keys for the asynchronous configuration (`1 <= n <= MAX_NODES`,
/// `n > 3f`): one BLS key set per [`KeySetId`] with its threshold, a TDH2 key with threshold
/// `f + 1`, one Ed25519 identity per node. `secrets[i]` belongs to node `i`. The dealer's
/// randomness must be cryptographic (`OsRng` in the node).
pub fn deal_group<R: RngCore + CryptoRng>(
    n: usize,
    f: usize,
    rng: &mut R,
) -> Result<(GroupPublic, Vec<NodeSecret>), KeygenError> {
    check_group_size(n, f)?;
    let mut bls_public = BTreeMap::new();
    let mut bls_shares: Vec<BTreeMap<KeySetId, BlsSecretShare>> = vec![BTreeMap::new(); n];
    for id in KeySetId::ALL {
        let (set, shares) = bls::deal(id, n, id.threshold(n, f), rng)?;
        bls_public.insert(id, set);
        for (node, share) in bls_shares.iter_mut().zip(shares) {
            node.insert(id, share);
        }
    }
    let (tdh2_public, tdh2_shares) = tdh2::deal(n, tdh2_threshold(f), rng)?;
    let identities: Vec<IdentityKey> = (0..n).map(|_| IdentityKey::generate(rng)).collect();
    let group = GroupPublic {
        format: GROUP_FORMAT.into(),
        version: FORMAT_VERSION,
        n,
        f,
        created_by: format!("maftia keygen {}", env!("CARGO_PKG_VERSION")),
        bls: bls_public,
        tdh2: tdh2_public,
        identities: identities.iter().map(IdentityKey::public).collect(),
    };
    let secrets = bls_shares
        .into_iter()
        .zip(tdh2_shares)
        .zip(identities)
        .enumerate()
        .map(|(index, ((bls, tdh2), identity))| NodeSecret {
            format: SECRET_FORMAT.into(),
            version: FORMAT_VERSION,
            index,
            n,
            f,
            bls,
            tdh2,
            identity,
        })
        .collect();
    Ok((group, secrets))
}

/// Write `group.toml` and `node-<i>.secret.toml` for every node into `dir`.
///
/// `dir` is created (mode `0700`) if missing; if it exists it must be an empty directory
/// ([`KeygenError::DirectoryNotEmpty`] otherwise). Every secret file is created new (never
/// overwritten) with mode `0600` from the start, the group file with mode `0644`. Everything is
/// encoded before the first file is
/// created, so an encoding error leaves nothing behind.
pub fn write_files(
    dir: &Path,
    group: &GroupPublic,
    secrets: &[NodeSecret],
) -> Result<(), KeygenError> {
    if secrets.len() != group.n || secrets.iter().enumerate().any(|(i, s)| s.index != i) {
        return Err(KeygenError::Invalid(format!(
            "expected the secrets of nodes 0..{} in order",
            group.n
        )));
    }
    let mut files = vec![(
        PathBuf::from(GROUP_FILE),
        Zeroizing::new(toml::to_string(group)?),
        false,
    )];
    for secret in secrets {
        files.push((
            PathBuf::from(secret_file_name(secret.index)),
            Zeroizing::new(toml::to_string(secret)?),
            true,
        ));
    }
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(KeygenError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {
            let mut entries = fs::read_dir(dir).map_err(|e| KeygenError::from(io_error(dir)(e)))?;
            if entries.next().is_some() {
                return Err(KeygenError::DirectoryNotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| KeygenError::from(io_error(dir)(e)))?,
        Err(e) => return Err(io_error(dir)(e).into()),
    }
    for (name, contents, secret) in files {
        let path = dir.join(name);
        if secret {
            keyfile::write_secret(&path, &contents)?;
        } else {
            keyfile::write_public(&path, &contents)?;
        }
    }
    Ok(())
}

fn in_file(path: &Path) -> impl FnOnce(KeygenError) -> KeygenError + '_ {
    move |e| match e {
        KeygenError::Invalid(reason) => KeygenError::InvalidFile {
            path: path.to_path_buf(),
            reason,
        },
        other => KeygenError::InvalidFile {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    }
}

/// Load and fully validate a group file.
pub fn load_group(path: &Path) -> Result<GroupPublic, KeygenError> {
    let text = keyfile::read(path, false)?;
    let group: GroupPublic = keyfile::parse(path, &text, GROUP_FORMAT, FORMAT_VERSION.into())?;
    // Deserializing every BlsPublicKeySet already ran its full validation.
    group.check(false).map_err(in_file(path))?;
    Ok(group)
}

/// Load a node secret file and check its own consistency; refuses a file whose mode lets group
/// or others access it. Check it against the group with [`NodeSecret::check_against`] (or use
/// [`load_node`]).
pub fn load_secret(path: &Path) -> Result<NodeSecret, KeygenError> {
    let text = keyfile::read(path, true)?;
    let secret: NodeSecret = keyfile::parse(path, &text, SECRET_FORMAT, FORMAT_VERSION.into())?;
    secret.validate().map_err(in_file(path))?;
    Ok(secret)
}

/// Load a group file and a node secret file and check that they belong together.
pub fn load_node(
    group_path: &Path,
    secret_path: &Path,
) -> Result<(GroupPublic, NodeSecret), KeygenError> {
    let group = load_group(group_path)?;
    let secret = load_secret(secret_path)?;
    secret.check_against(&group)?;
    Ok((group, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::ThresholdSigner;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn rng(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Deal n = 4, f = 1 and write it to a fresh directory inside a tempdir.
    fn dealt_dir(seed: u64) -> (tempfile::TempDir, PathBuf, GroupPublic, Vec<NodeSecret>) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("keys");
        let (group, secrets) = deal_group(4, 1, &mut rng(seed)).unwrap();
        write_files(&dir, &group, &secrets).unwrap();
        (tmp, dir, group, secrets)
    }

    fn edit(path: &Path, from: &str, to: &str) {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{from:?} not in {}", path.display());
        fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn deal_write_load_roundtrip() {
        let (_tmp, dir, group, secrets) = dealt_dir(1);
        group.validate().unwrap();
        assert_eq!(
            group.created_by,
            format!("maftia keygen {}", env!("CARGO_PKG_VERSION"))
        );
        for id in KeySetId::ALL {
            assert_eq!(group.bls[&id].threshold, id.threshold(4, 1));
        }
        assert_eq!(group.tdh2.threshold, 2);
        let loaded = load_group(&dir.join(GROUP_FILE)).unwrap();
        assert_eq!(loaded, group);
        let text = fs::read_to_string(dir.join(GROUP_FILE)).unwrap();
        assert!(
            text.starts_with("format = \"maftia-group-public\"\nversion = 1\n"),
            "{text}"
        );
        for (i, secret) in secrets.iter().enumerate() {
            let path = dir.join(secret_file_name(i));
            let loaded = load_secret(&path).unwrap();
            assert_eq!(
                toml::to_string(&loaded).unwrap(),
                toml::to_string(secret).unwrap()
            );
            loaded.check_against(&group).unwrap();
            let (_, via_node) = load_node(&dir.join(GROUP_FILE), &path).unwrap();
            assert_eq!(via_node.index, i);
        }
        // The loaded keys work together: a threshold BLS signature and a TDH2 decryption.
        let loaded: Vec<NodeSecret> = (0..4)
            .map(|i| load_secret(&dir.join(secret_file_name(i))).unwrap())
            .collect();
        let set = Arc::new(group.bls[&KeySetId::Quorum].clone());
        let signers: Vec<_> = loaded
            .iter()
            .map(|s| {
                crate::bls::BlsThresholdSigner::new(set.clone(), s.bls[&KeySetId::Quorum].clone())
                    .unwrap()
            })
            .collect();
        let shares: BTreeMap<usize, _> = signers
            .iter()
            .take(3)
            .map(|s| (s.our_index(), s.sign_share(b"m")))
            .collect();
        let combined = signers[0].combine(b"m", &shares).unwrap();
        assert!(signers[3].verify(b"m", &combined.signature));
        let mut r = rng(2);
        let ct = tdh2::encrypt(&group.tdh2, b"payload", b"label", &mut r).unwrap();
        let dec: BTreeMap<usize, _> = [1usize, 3]
            .iter()
            .map(|&i| {
                (
                    i,
                    tdh2::decrypt_share(&group.tdh2, &loaded[i].tdh2, &ct, &mut r).unwrap(),
                )
            })
            .collect();
        assert_eq!(tdh2::combine(&group.tdh2, &ct, &dec).unwrap().0, b"payload");
        let sig = loaded[2].identity.sign("maftia 2026-11 test", b"hello");
        assert!(group.identities[2].verify("maftia 2026-11 test", b"hello", &sig));
    }

    #[test]
    fn secrets_are_created_with_mode_0600_and_dir_0700() {
        let (_tmp, dir, _, _) = dealt_dir(3);
        assert_eq!(mode_of(&dir), 0o700);
        // The group file is public (0644 less the umask), never writable by others.
        assert_eq!(mode_of(&dir.join(GROUP_FILE)) & 0o622, 0o600);
        for i in 0..4 {
            assert_eq!(mode_of(&dir.join(secret_file_name(i))), 0o600);
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 5);
    }

    #[test]
    fn non_empty_or_non_directory_targets_are_refused() {
        let (tmp, dir, group, secrets) = dealt_dir(4);
        let before = fs::read(dir.join(GROUP_FILE)).unwrap();
        assert!(matches!(
            write_files(&dir, &group, &secrets),
            Err(KeygenError::DirectoryNotEmpty(p)) if p == dir
        ));
        assert_eq!(
            fs::read(dir.join(GROUP_FILE)).unwrap(),
            before,
            "nothing overwritten"
        );
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("notes.txt"), "x").unwrap();
        assert!(matches!(
            write_files(&other, &group, &secrets),
            Err(KeygenError::DirectoryNotEmpty(_))
        ));
        assert_eq!(fs::read_dir(&other).unwrap().count(), 1);
        let file = tmp.path().join("a-file");
        fs::write(&file, "x").unwrap();
        assert!(matches!(
            write_files(&file, &group, &secrets),
            Err(KeygenError::NotADirectory(_))
        ));
        // An existing empty directory is fine; its mode is left alone.
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        write_files(&empty, &group, &secrets).unwrap();
        load_group(&empty.join(GROUP_FILE)).unwrap();
        // Secrets missing or out of order are refused before anything is written.
        let fresh = tmp.path().join("fresh");
        assert!(matches!(
            write_files(&fresh, &group, &secrets[..3]),
            Err(KeygenError::Invalid(_))
        ));
        let reversed: Vec<NodeSecret> = secrets.iter().rev().cloned().collect();
        assert!(write_files(&fresh, &group, &reversed).is_err());
        assert!(!fresh.exists());
    }

    #[test]
    fn group_sizes_are_checked() {
        for (n, f) in [
            (0, 0),
            (3, 1),
            (4, 2),
            (6, 2),
            (9, 3),
            (MAX_NODES + 1, 0),
            (1, 1),
        ] {
            assert!(
                matches!(
                    deal_group(n, f, &mut rng(5)),
                    Err(KeygenError::InvalidGroupSize { n: a, f: b }) if (a, b) == (n, f)
                ),
                "n = {n}, f = {f}"
            );
        }
        for (n, f) in [(1, 0), (4, 1), (7, 2), (5, 1)] {
            let (group, secrets) = deal_group(n, f, &mut rng(6)).unwrap();
            group.validate().unwrap();
            assert_eq!(secrets.len(), n);
            for s in &secrets {
                s.check_against(&group).unwrap();
            }
        }
    }

    #[test]
    fn wrong_version_or_format_is_rejected_with_a_clear_error() {
        let (_tmp, dir, _, _) = dealt_dir(7);
        let group_path = dir.join(GROUP_FILE);
        edit(&group_path, "version = 1", "version = 2");
        let err = load_group(&group_path).unwrap_err();
        assert!(
            matches!(
                err,
                KeygenError::File(FileError::UnsupportedVersion { found: 2, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(
            err.to_string().contains(&group_path.display().to_string()),
            "{err}"
        );
        edit(&group_path, "version = 2\n", "");
        assert!(matches!(
            load_group(&group_path),
            Err(KeygenError::File(FileError::MissingVersion { .. }))
        ));

        let secret_path = dir.join(secret_file_name(1));
        edit(
            &secret_path,
            "format = \"maftia-node-secret\"",
            "format = \"maftia-group-public\"",
        );
        let err = load_secret(&secret_path).unwrap_err();
        assert!(
            matches!(&err, KeygenError::File(FileError::WrongFormat { found, expected, .. })
                if found == GROUP_FORMAT && *expected == SECRET_FORMAT),
            "{err}"
        );
        // A group file is not a secret file and vice versa.
        let secret0 = dir.join(secret_file_name(0));
        assert!(matches!(
            load_group(&secret0),
            Err(KeygenError::File(FileError::WrongFormat { .. }))
        ));
        // Garbage.
        fs::write(&group_path, "this is [not toml").unwrap();
        assert!(matches!(
            load_group(&group_path),
            Err(KeygenError::File(FileError::Parse { .. }))
        ));
        assert!(matches!(
            load_group(&dir.join("missing.toml")),
            Err(KeygenError::File(FileError::Io { .. }))
        ));
    }

    #[test]
    fn tampered_public_keys_are_rejected() {
        let (_tmp, dir, group, secrets) = dealt_dir(8);
        let group_path = dir.join(GROUP_FILE);
        let original = fs::read_to_string(&group_path).unwrap();
        let hex_of = |bytes: &[u8]| hex::encode(bytes);
        // A BLS public share replaced by another node's: the set's polynomial check fails.
        let set = &group.bls[&KeySetId::Cbc];
        let share1 = hex_of(&set.public_shares[1].to_compressed());
        let share2 = hex_of(&set.public_shares[2].to_compressed());
        edit(&group_path, &share1, &share2);
        assert!(matches!(
            load_group(&group_path),
            Err(KeygenError::File(FileError::Parse { .. }))
        ));
        // A TDH2 verification key replaced: the TDH2 consistency check fails.
        fs::write(&group_path, &original).unwrap();
        let vk = |i: usize| hex_of(group.tdh2.verification_keys[i].compress().as_bytes());
        edit(&group_path, &vk(0), &vk(3));
        let err = load_group(&group_path).unwrap_err();
        assert!(matches!(err, KeygenError::InvalidFile { .. }), "{err}");
        assert!(err.to_string().contains("TDH2 key"), "{err}");
        // A threshold changed: refused.
        fs::write(&group_path, &original).unwrap();
        let mut wrong_k = group.clone();
        wrong_k.tdh2 = tdh2::deal(4, 3, &mut rng(9)).unwrap().0;
        assert!(wrong_k.validate().is_err());
        // Two identities swapped: the file loads (it is self-consistent) but neither node's
        // secret matches it any more.
        let id = |i: usize| hex_of(&group.identities[i].to_bytes());
        let swapped = original
            .replacen(&id(0), "SWAP", 1)
            .replacen(&id(1), &id(0), 1)
            .replacen("SWAP", &id(1), 1);
        fs::write(&group_path, swapped).unwrap();
        let loaded = load_group(&group_path).unwrap();
        assert!(matches!(
            secrets[0].check_against(&loaded),
            Err(KeygenError::Mismatch { index: 0, .. })
        ));
        assert!(secrets[2].check_against(&loaded).is_ok());
        // One identity duplicated: refused.
        fs::write(&group_path, original.replacen(&id(1), &id(0), 1)).unwrap();
        assert!(matches!(
            load_group(&group_path),
            Err(KeygenError::InvalidFile { .. })
        ));
        // A BLS key set missing.
        let mut missing = group.clone();
        missing.bls.remove(&KeySetId::Coin);
        assert!(missing.validate().is_err());
    }

    #[test]
    fn secrets_must_match_their_group_and_index() {
        let (_tmp, dir, group, secrets) = dealt_dir(10);
        // Node 1's keys presented as node 0's.
        let mut as_zero = secrets[1].clone();
        as_zero.index = 0;
        for share in as_zero.bls.values_mut() {
            share.index = 0;
        }
        as_zero.tdh2.index = 0;
        as_zero.validate().unwrap();
        assert!(matches!(
            as_zero.check_against(&group),
            Err(KeygenError::Mismatch { index: 0, .. })
        ));
        // Node 0's file with only its index changed is inconsistent by itself.
        let path = dir.join(secret_file_name(0));
        edit(&path, "index = 0", "index = 1");
        assert!(matches!(
            load_secret(&path),
            Err(KeygenError::InvalidFile { .. })
        ));
        // A secret from another dealing.
        let (_, others) = deal_group(4, 1, &mut rng(11)).unwrap();
        assert!(others[0].check_against(&group).is_err());
        // A tampered TDH2 secret in a file loads (canonical scalar) but does not match.
        let path = dir.join(secret_file_name(2));
        let x = hex::encode(secrets[2].tdh2.x_i.to_bytes());
        let other_x = hex::encode(secrets[3].tdh2.x_i.to_bytes());
        edit(&path, &x, &other_x);
        let loaded = load_secret(&path).unwrap();
        let err = loaded.check_against(&group).unwrap_err();
        assert!(err.to_string().contains("TDH2"), "{err}");
        // Each component is checked: an identity from another node.
        let mut wrong_identity = secrets[3].clone();
        wrong_identity.identity = secrets[0].identity.clone();
        assert!(wrong_identity
            .check_against(&group)
            .unwrap_err()
            .to_string()
            .contains("identity"));
        // A group of another size.
        let (small, _) = deal_group(1, 0, &mut rng(12)).unwrap();
        assert!(secrets[0].check_against(&small).is_err());
    }

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        let (_tmp, dir, _, _) = dealt_dir(13);
        let path = dir.join(secret_file_name(3));
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load_secret(&path).unwrap_err();
            assert!(
                matches!(err, KeygenError::File(FileError::InsecurePermissions { mode: m, .. }) if m == mode),
                "{err}"
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        load_secret(&path).unwrap();
    }

    #[test]
    fn oversized_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(GROUP_FILE);
        let file = fs::File::create(&path).unwrap();
        file.set_len(keyfile::MAX_FILE_SIZE + 1).unwrap();
        assert!(matches!(
            load_group(&path),
            Err(KeygenError::File(FileError::TooLarge { path: p })) if p == path
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let (_, secrets) = deal_group(4, 1, &mut rng(14)).unwrap();
        let shown = format!("{:?}", secrets[0]);
        assert!(!shown.contains(&hex::encode(secrets[0].tdh2.x_i.to_bytes())));
        assert!(!shown.contains(&hex::encode(*secrets[0].identity.to_bytes())));
        let text = toml::to_string(&secrets[0]).unwrap();
        for share in secrets[0].bls.values() {
            let secret_hex = hex::encode(share.secret.to_bytes_be());
            assert!(text.contains(&secret_hex), "the file holds the secret");
            assert!(!shown.contains(&secret_hex));
        }
    }
}
