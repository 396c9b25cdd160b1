//! Reading and writing maftia's key and configuration files safely — one implementation for the
//! group key files ([`crate::keygen`]) and the client files (`maftia-client`).
//!
//! - Reads are size-limited ([`MAX_FILE_SIZE`]).
//! - A secret file is refused when its mode lets group or others access it, as ssh does; the
//!   mode is checked on the opened file, so the file checked is the file read.
//! - Files are self-describing TOML whose `format` and `version` are checked before the schema,
//!   so a file of another kind or version gets a clear error rather than a schema mismatch.
//! - Writes are atomic: a temporary file next to the target is written and synced, then a secret
//!   file is hard-linked into place (created with mode `0600` from the start, never replacing an
//!   existing file) and a public file renamed into place (mode `0644`).
//!
//! Every error names the file.
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;
use zeroize::Zeroizing;

/// Largest file read, in bytes.
pub const MAX_FILE_SIZE: u64 = 16 << 20;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; secret key files are never overwritten")]
    Exists { path: PathBuf },
    #[error("{path}: larger than the {MAX_FILE_SIZE}-byte limit")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a valid file: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: format {found:?}, expected {expected:?}")]
    WrongFormat {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("{path}: no `version` field; not a maftia file of a known version")]
    MissingVersion { path: PathBuf },
    #[error(
        "{path}: secret key file has mode {mode:03o}, readable by group or others; run `chmod 600` on it"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
}

/// The conversion of an IO error about `path`.
pub fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a file of at most [`MAX_FILE_SIZE`] bytes; with `secret`, refuse a file whose mode lets
/// group or others access it.
pub fn read(path: &Path, secret: bool) -> Result<Zeroizing<String>, FileError> {
    let file = fs::File::open(path).map_err(io_error(path))?;
    if secret {
        let mode = file
            .metadata()
            .map_err(io_error(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(FileError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_SIZE + 1)
        .read_to_string(&mut text)
        .map_err(io_error(path))?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// `format` and `version`, read first.
#[derive(Deserialize)]
struct FileHeader {
    format: Option<String>,
    version: Option<u64>,
}

/// Parse `text` (read from `path`) as a file of format `format` and version `version`, checking
/// the header first.
pub fn parse<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    format: &'static str,
    version: u64,
) -> Result<T, FileError> {
    let parse_error = |source| FileError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let header: FileHeader = toml::from_str(text).map_err(parse_error)?;
    let found = header.format.unwrap_or_default();
    if found != format {
        return Err(FileError::WrongFormat {
            path: path.to_path_buf(),
            found,
            expected: format,
        });
    }
    match header.version {
        Some(v) if v == version => toml::from_str(text).map_err(parse_error),
        Some(found) => Err(FileError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: version,
        }),
        None => Err(FileError::MissingVersion {
            path: path.to_path_buf(),
        }),
    }
}

/// A fresh temporary path next to `path` (same directory, so a rename or link is atomic).
fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{unique}", std::process::id()))
}

/// Write `contents` to a new temporary file of mode `mode` next to `path`, synced.
fn write_temporary(path: &Path, contents: &str, mode: u32) -> Result<PathBuf, FileError> {
    let tmp = temporary_path(path);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents.as_bytes())?;
            file.sync_all()
        });
    match written {
        Ok(()) => Ok(tmp),
        Err(e) => {
            // Best effort: do not leave a partial temporary file behind.
            let _ = fs::remove_file(&tmp);
            Err(io_error(path)(e))
        }
    }
}

/// Atomically create `path` with `contents` and mode `0600`; never replaces an existing file.
pub fn write_secret(path: &Path, contents: &str) -> Result<(), FileError> {
    let tmp = write_temporary(path, contents, 0o600)?;
    // A hard link appears atomically and fails if `path` exists.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(FileError::Exists {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Atomically create or replace `path` with `contents` (mode `0644`).
pub fn write_public(path: &Path, contents: &str) -> Result<(), FileError> {
    let tmp = write_temporary(path, contents, 0o644)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Sample {
        #[allow(dead_code)]
        format: String,
        #[allow(dead_code)]
        version: u64,
        value: u32,
    }

    #[test]
    fn secret_files_are_private_atomic_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.secret.toml");
        write_secret(&path, "format = \"x\"\nversion = 1\nvalue = 7\n").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_secret(&path, "other"),
            Err(FileError::Exists { .. })
        ));
        let text = read(&path, true).unwrap();
        let sample: Sample = parse(&path, &text, "x", 1).unwrap();
        assert_eq!(sample.value, 7);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read(&path, true),
            Err(FileError::InsecurePermissions { mode: 0o644, .. })
        ));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn headers_are_checked_before_the_schema() {
        let path = Path::new("f.toml");
        let parse_sample = |text: &str| parse::<Sample>(path, text, "x", 1);
        assert!(matches!(
            parse_sample("format = \"y\"\nversion = 1\n"),
            Err(FileError::WrongFormat { .. })
        ));
        assert!(matches!(
            parse_sample("format = \"x\"\nversion = 2\n"),
            Err(FileError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            parse_sample("format = \"x\"\n"),
            Err(FileError::MissingVersion { .. })
        ));
        assert!(matches!(
            parse_sample("format = \"x\"\nversion = 1\n"),
            Err(FileError::Parse { .. })
        ));
    }

    #[test]
    fn public_files_are_replaced_and_large_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        write_public(&path, "a").unwrap();
        write_public(&path, "b").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "b");
        let big = "x".repeat(MAX_FILE_SIZE as usize + 1);
        write_public(&path, &big).unwrap();
        assert!(matches!(
            read(&path, false),
            Err(FileError::TooLarge { .. })
        ));
    }
}
