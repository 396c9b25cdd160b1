//! The client's files: its secret key, the service's client list and the cluster description.
//!
//! Same conventions as the group key files (`maftia_crypto::keygen`): self-describing TOML that
//! starts with `format` and `version`, read with a size limit, unknown fields refused, every
//! error naming the file.
//!
//! - [`ClientKeyFile`] (`client-NAME.secret.toml`, format `"maftia-client-key"`): the client's
//!   name and Ed25519 secret key (hex seed). Written atomically (a temporary file created with
//!   mode `0600` from the start, synced, then linked into place) and never over an existing
//!   file; loading refuses a file readable by group or others, as ssh does.
//! - [`ClientListFile`] (`clients.toml`, format `"maftia-clients"`), read by replicas: the
//!   clients allowed to use the service, `[[clients]]` tables of `name` and `public_key` (hex);
//!   names and keys are distinct.
//! - [`ClusterFile`] (`cluster.toml`, format `"maftia-cluster"`), read by clients: the service
//!   instance name, the group file (a path relative to the cluster file's directory), the
//!   client-port address of every replica (index = replica id; as many as the group has
//!   replicas) and an optional request timeout.
//!
//! Public files are replaced atomically (temporary file, then rename).
use maftia_crypto::identity::{IdentityKey, IdentityPublicKey};
use maftia_crypto::keyfile;
use maftia_crypto::keygen::{self, GroupPublic, KeygenError, MAX_NODES};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroizing;

/// `format` of a client key file.
pub const CLIENT_KEY_FORMAT: &str = "maftia-client-key";
/// `format` of a client list file.
pub const CLIENT_LIST_FORMAT: &str = "maftia-clients";
/// `format` of a cluster file.
pub const CLUSTER_FORMAT: &str = "maftia-cluster";
/// The version of these files this build writes and reads.
pub const FILE_VERSION: u32 = 1;
/// Longest client name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest service instance name, in bytes.
pub const MAX_INSTANCE_LEN: usize = 256;
/// Most clients in a client list.
pub const MAX_CLIENTS: usize = 100_000;
/// Name of the client list file of a service.
pub const CLIENT_LIST_FILE: &str = "clients.toml";
/// Name of the cluster file given to clients.
pub const CLUSTER_FILE: &str = "cluster.toml";

/// Name of client `name`'s key file: `client-NAME.secret.toml`.
pub fn client_key_file_name(name: &str) -> String {
    format!("client-{name}.secret.toml")
}

#[derive(Debug, Error)]
pub enum FileError {
    /// Reading, parsing or writing the file (`maftia_crypto::keyfile`).
    #[error(transparent)]
    File(#[from] keyfile::FileError),
    #[error("cannot encode a file: {0}")]
    Encode(#[from] toml::ser::Error),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("invalid: {0}")]
    InvalidValue(String),
    #[error("group file of the cluster: {0}")]
    Group(#[from] KeygenError),
}

fn invalid(path: &Path) -> impl FnOnce(String) -> FileError + '_ {
    move |reason| FileError::Invalid {
        path: path.to_path_buf(),
        reason,
    }
}

/// A client name: 1..=[`MAX_NAME_LEN`] ASCII letters, digits, `-`, `_` or `.`, not starting
/// with `.` (it becomes part of a file name).
pub fn check_client_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !valid_chars || name.starts_with('.') {
        return Err(format!(
            "client name {name:?} must be 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.', not starting with '.'"
        ));
    }
    Ok(())
}

/// A client's secret key file: `client-NAME.secret.toml`. `Debug` shows no secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientKeyFile {
    /// Always [`CLIENT_KEY_FORMAT`].
    pub format: String,
    /// Always [`FILE_VERSION`].
    pub version: u32,
    /// The client's name (as on the service's client list).
    pub name: String,
    /// The Ed25519 secret key (hex seed).
    pub secret: IdentityKey,
}

impl fmt::Debug for ClientKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientKeyFile")
            .field("name", &self.name)
            .field("public", &self.secret.public())
            .finish_non_exhaustive()
    }
}

impl ClientKeyFile {
    /// A new key for client `name` (randomness must be cryptographic: `OsRng` in the CLI).
    pub fn generate<R: RngCore + CryptoRng + ?Sized>(
        name: &str,
        rng: &mut R,
    ) -> Result<ClientKeyFile, FileError> {
        check_client_name(name).map_err(FileError::InvalidValue)?;
        Ok(ClientKeyFile {
            format: CLIENT_KEY_FORMAT.into(),
            version: FILE_VERSION,
            name: name.into(),
            secret: IdentityKey::generate(rng),
        })
    }

    /// The client's public key (its id).
    pub fn public_key(&self) -> IdentityPublicKey {
        self.secret.public()
    }

    /// This client's entry for the service's client list.
    pub fn entry(&self) -> ClientEntry {
        ClientEntry {
            name: self.name.clone(),
            public_key: self.public_key(),
        }
    }

    /// Create `path` (mode `0600`, atomically); refuses to overwrite an existing file.
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        check_client_name(&self.name).map_err(invalid(path))?;
        let text = Zeroizing::new(toml::to_string(self)?);
        Ok(keyfile::write_secret(path, &text)?)
    }

    /// Load a key file: the client's name and key. Refuses a file readable by group or others.
    pub fn load(path: &Path) -> Result<(String, IdentityKey), FileError> {
        let text = keyfile::read(path, true)?;
        let file: ClientKeyFile =
            keyfile::parse(path, &text, CLIENT_KEY_FORMAT, FILE_VERSION.into())?;
        check_client_name(&file.name).map_err(invalid(path))?;
        Ok((file.name.clone(), file.secret.clone()))
    }
}

/// One client allowed to use a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub name: String,
    /// Ed25519 public key (hex).
    pub public_key: IdentityPublicKey,
}

/// The clients allowed to use a service (`clients.toml`, read by replicas).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientListFile {
    /// Always [`CLIENT_LIST_FORMAT`].
    pub format: String,
    /// Always [`FILE_VERSION`].
    pub version: u32,
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
}

impl ClientListFile {
    /// A list of `clients` (names and keys must be distinct).
    pub fn new(clients: Vec<ClientEntry>) -> Result<ClientListFile, FileError> {
        let list = ClientListFile {
            format: CLIENT_LIST_FORMAT.into(),
            version: FILE_VERSION,
            clients,
        };
        list.validate().map_err(FileError::InvalidValue)?;
        Ok(list)
    }

    /// Valid names, at most [`MAX_CLIENTS`] entries, names and keys distinct.
    pub fn validate(&self) -> Result<(), String> {
        if self.clients.len() > MAX_CLIENTS {
            return Err(format!(
                "{} clients, more than the limit of {MAX_CLIENTS}",
                self.clients.len()
            ));
        }
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for entry in &self.clients {
            check_client_name(&entry.name)?;
            if !names.insert(entry.name.as_str()) {
                return Err(format!("client name {:?} appears twice", entry.name));
            }
            if !keys.insert(entry.public_key) {
                return Err(format!(
                    "client {:?} has the same public key as another client",
                    entry.name
                ));
            }
        }
        Ok(())
    }

    /// Add a client (its name and key must be new).
    pub fn add(&mut self, entry: ClientEntry) -> Result<(), FileError> {
        self.clients.push(entry);
        if let Err(reason) = self.validate() {
            self.clients.pop();
            return Err(FileError::InvalidValue(reason));
        }
        Ok(())
    }

    /// The public keys of the listed clients.
    pub fn keys(&self) -> BTreeSet<IdentityPublicKey> {
        self.clients.iter().map(|c| c.public_key).collect()
    }

    /// The listed clients by public key.
    pub fn by_key(&self) -> BTreeMap<IdentityPublicKey, String> {
        self.clients
            .iter()
            .map(|c| (c.public_key, c.name.clone()))
            .collect()
    }

    /// Load and validate a client list.
    pub fn load(path: &Path) -> Result<ClientListFile, FileError> {
        let text = keyfile::read(path, false)?;
        let list: ClientListFile =
            keyfile::parse(path, &text, CLIENT_LIST_FORMAT, FILE_VERSION.into())?;
        list.validate().map_err(invalid(path))?;
        Ok(list)
    }

    /// Create or atomically replace `path`.
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        self.validate().map_err(invalid(path))?;
        Ok(keyfile::write_public(path, &toml::to_string(self)?)?)
    }
}

/// How clients reach a service (`cluster.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Always [`CLUSTER_FORMAT`].
    pub format: String,
    /// Always [`FILE_VERSION`].
    pub version: u32,
    /// The service instance name (part of the service id every request is signed for).
    pub instance: String,
    /// The group key file, relative to this file's directory (or absolute).
    pub group_file: PathBuf,
    /// `replicas[i]` is replica `i`'s client-port address.
    pub replicas: Vec<SocketAddr>,
    /// How long a client waits for a certified reply, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl ClusterFile {
    pub fn new(instance: &str, group_file: PathBuf, replicas: Vec<SocketAddr>) -> ClusterFile {
        ClusterFile {
            format: CLUSTER_FORMAT.into(),
            version: FILE_VERSION,
            instance: instance.into(),
            group_file,
            replicas,
            timeout_ms: None,
        }
    }

    /// A non-empty instance name of at most [`MAX_INSTANCE_LEN`] bytes; 1..=`MAX_NODES`
    /// distinct replica addresses; a positive timeout if one is given.
    pub fn validate(&self) -> Result<(), String> {
        if self.instance.is_empty() || self.instance.len() > MAX_INSTANCE_LEN {
            return Err(format!(
                "instance name must be 1 to {MAX_INSTANCE_LEN} bytes"
            ));
        }
        if self.replicas.is_empty() || self.replicas.len() > MAX_NODES {
            return Err(format!(
                "{} replica addresses; expected 1 to {MAX_NODES}",
                self.replicas.len()
            ));
        }
        let distinct: BTreeSet<&SocketAddr> = self.replicas.iter().collect();
        if distinct.len() != self.replicas.len() {
            return Err("two replicas have the same address".into());
        }
        if self.timeout_ms == Some(0) {
            return Err("timeout_ms must be positive".into());
        }
        Ok(())
    }

    /// Load and validate a cluster file (the group file is not read; see
    /// [`ClusterFile::load_group`]).
    pub fn load(path: &Path) -> Result<ClusterFile, FileError> {
        let text = keyfile::read(path, false)?;
        let cluster: ClusterFile =
            keyfile::parse(path, &text, CLUSTER_FORMAT, FILE_VERSION.into())?;
        cluster.validate().map_err(invalid(path))?;
        Ok(cluster)
    }

    /// Create or atomically replace `path`.
    pub fn write(&self, path: &Path) -> Result<(), FileError> {
        self.validate().map_err(invalid(path))?;
        Ok(keyfile::write_public(path, &toml::to_string(self)?)?)
    }

    /// Where the group file is, for a cluster file loaded from `cluster_path`.
    pub fn group_path(&self, cluster_path: &Path) -> PathBuf {
        match cluster_path.parent() {
            Some(dir) if self.group_file.is_relative() => dir.join(&self.group_file),
            _ => self.group_file.clone(),
        }
    }

    /// Load and validate the group file, and check it has one replica per address.
    pub fn load_group(&self, cluster_path: &Path) -> Result<GroupPublic, FileError> {
        let group = keygen::load_group(&self.group_path(cluster_path))?;
        if group.n != self.replicas.len() {
            return Err(FileError::Invalid {
                path: cluster_path.to_path_buf(),
                reason: format!(
                    "{} replica addresses, but the group file has n = {}",
                    self.replicas.len(),
                    group.n
                ),
            });
        }
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn edit(path: &Path, from: &str, to: &str) {
        let text = fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{from:?} not in {text}");
        fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn client_key_file_round_trip_mode_and_no_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let key = ClientKeyFile::generate("alice", &mut rng(1)).unwrap();
        let path = tmp.path().join(client_key_file_name("alice"));
        key.write(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("format = \"maftia-client-key\"\nversion = 1\n"),
            "{text}"
        );
        let (name, loaded) = ClientKeyFile::load(&path).unwrap();
        assert_eq!(name, "alice");
        assert_eq!(*loaded.to_bytes(), *key.secret.to_bytes());
        // Never overwritten, and no temporary file left behind.
        let other = ClientKeyFile::generate("alice", &mut rng(2)).unwrap();
        assert!(matches!(
            other.write(&path),
            Err(FileError::File(keyfile::FileError::Exists { .. }))
        ));
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        // Debug hides the secret.
        let shown = format!("{key:?}");
        assert!(!shown.contains(&hex::encode(*key.secret.to_bytes())));
        assert!(text.contains(&hex::encode(*key.secret.to_bytes())));
    }

    #[test]
    fn bad_client_key_files_are_refused_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("client-bob.secret.toml");
        ClientKeyFile::generate("bob", &mut rng(3))
            .unwrap()
            .write(&path)
            .unwrap();
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = ClientKeyFile::load(&path).unwrap_err();
            assert!(
                matches!(err, FileError::File(keyfile::FileError::InsecurePermissions { mode: m, .. }) if m == mode),
                "{err}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        edit(&path, "version = 1", "version = 9");
        let err = ClientKeyFile::load(&path).unwrap_err();
        assert!(
            matches!(
                err,
                FileError::File(keyfile::FileError::UnsupportedVersion { found: 9, .. })
            ),
            "{err}"
        );
        edit(&path, "version = 9", "version = 1\nextra = 3");
        assert!(matches!(
            ClientKeyFile::load(&path),
            Err(FileError::File(keyfile::FileError::Parse { .. }))
        ));
        edit(&path, "\nextra = 3", "");
        edit(&path, "maftia-client-key", "maftia-clients");
        assert!(matches!(
            ClientKeyFile::load(&path),
            Err(FileError::File(keyfile::FileError::WrongFormat { .. }))
        ));
        edit(&path, "maftia-clients", "maftia-client-key");
        edit(&path, "name = \"bob\"", "name = \"../bob\"");
        assert!(matches!(
            ClientKeyFile::load(&path),
            Err(FileError::Invalid { .. })
        ));
        assert!(matches!(
            ClientKeyFile::load(&tmp.path().join("missing")),
            Err(FileError::File(keyfile::FileError::Io { .. }))
        ));
        for name in ["", ".hidden", "a/b", "with space", &"x".repeat(65)] {
            assert!(
                ClientKeyFile::generate(name, &mut rng(4)).is_err(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn client_list_round_trip_and_distinctness() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(CLIENT_LIST_FILE);
        let a = ClientKeyFile::generate("a", &mut rng(5)).unwrap();
        let b = ClientKeyFile::generate("b", &mut rng(6)).unwrap();
        let mut list = ClientListFile::new(vec![a.entry()]).unwrap();
        list.add(b.entry()).unwrap();
        // A duplicate name or key is refused and leaves the list unchanged.
        let mut same_name = b.entry();
        same_name.public_key = ClientKeyFile::generate("c", &mut rng(7))
            .unwrap()
            .public_key();
        assert!(list.add(same_name).is_err());
        let mut same_key = a.entry();
        same_key.name = "c".into();
        assert!(list.add(same_key).is_err());
        assert_eq!(list.clients.len(), 2);
        list.write(&path).unwrap();
        let loaded = ClientListFile::load(&path).unwrap();
        assert_eq!(loaded, list);
        assert_eq!(
            loaded.keys(),
            [a.public_key(), b.public_key()].into_iter().collect()
        );
        assert_eq!(loaded.by_key()[&b.public_key()], "b");
        // Replacing is allowed for public files.
        ClientListFile::new(vec![]).unwrap().write(&path).unwrap();
        assert!(ClientListFile::load(&path).unwrap().clients.is_empty());
        // A hand-edited duplicate is refused on load, naming the file.
        list.write(&path).unwrap();
        edit(&path, "name = \"b\"", "name = \"a\"");
        let err = ClientListFile::load(&path).unwrap_err();
        assert!(matches!(err, FileError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("appears twice"), "{err}");
        // A key that is not a valid point is refused.
        list.write(&path).unwrap();
        edit(
            &path,
            &hex::encode(a.public_key().to_bytes()),
            &hex::encode([0u8; 32]),
        );
        assert!(matches!(
            ClientListFile::load(&path),
            Err(FileError::File(keyfile::FileError::Parse { .. }))
        ));
    }

    #[test]
    fn cluster_file_round_trip_and_group_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let keys = tmp.path().join("keys");
        let (group, secrets) = keygen::deal_group(4, 1, &mut rng(8)).unwrap();
        keygen::write_files(&keys, &group, &secrets).unwrap();
        let addrs: Vec<SocketAddr> = (0..4)
            .map(|i| format!("127.0.0.1:{}", 7200 + i).parse().unwrap())
            .collect();
        let mut cluster = ClusterFile::new("kv", PathBuf::from("keys/group.toml"), addrs.clone());
        cluster.timeout_ms = Some(2500);
        let path = tmp.path().join(CLUSTER_FILE);
        cluster.write(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"127.0.0.1:7200\""), "{text}");
        let loaded = ClusterFile::load(&path).unwrap();
        assert_eq!(loaded, cluster);
        assert_eq!(loaded.group_path(&path), keys.join("group.toml"));
        assert_eq!(loaded.load_group(&path).unwrap(), group);
        // Three addresses for a group of four.
        let mut short = cluster.clone();
        short.replicas.pop();
        short.write(&path).unwrap();
        let err = ClusterFile::load(&path)
            .unwrap()
            .load_group(&path)
            .unwrap_err();
        assert!(err.to_string().contains("n = 4"), "{err}");
        // Duplicate addresses, empty instance, zero timeout, missing group file.
        let mut dup = cluster.clone();
        dup.replicas[1] = dup.replicas[0];
        assert!(dup.write(&path).is_err());
        let mut unnamed = cluster.clone();
        unnamed.instance.clear();
        assert!(unnamed.validate().is_err());
        cluster.write(&path).unwrap();
        edit(&path, "timeout_ms = 2500", "timeout_ms = 0");
        assert!(matches!(
            ClusterFile::load(&path),
            Err(FileError::Invalid { .. })
        ));
        edit(&path, "timeout_ms = 0", "timeout_ms = 10");
        edit(&path, "keys/group.toml", "nowhere/group.toml");
        assert!(matches!(
            ClusterFile::load(&path).unwrap().load_group(&path),
            Err(FileError::Group(KeygenError::File(
                keyfile::FileError::Io { .. }
            )))
        ));
        // An address that does not parse.
        edit(&path, "127.0.0.1:7201", "not-an-address");
        assert!(matches!(
            ClusterFile::load(&path),
            Err(FileError::File(keyfile::FileError::Parse { .. }))
        ));
        fs::write(&path, "format = \"maftia-cluster\"\n").unwrap();
        assert!(matches!(
            ClusterFile::load(&path),
            Err(FileError::File(keyfile::FileError::MissingVersion { .. }))
        ));
    }
}
