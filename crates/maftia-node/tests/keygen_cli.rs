//! `maftia keygen` as a user runs it: real process, real files.
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn maftia(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_maftia"))
        .args(args)
        .output()
        .expect("run maftia")
}

#[test]
fn writes_a_loadable_group_with_private_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let run = maftia(&[
        "keygen",
        "--n",
        "4",
        "--f",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let group = maftia_crypto::keygen::load_group(&out.join("group.toml")).unwrap();
    assert_eq!((group.n, group.f), (4, 1));
    for i in 0..4 {
        let path = out.join(format!("node-{i}.secret.toml"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
        let secret = maftia_crypto::keygen::load_secret(&path).unwrap();
        secret.check_against(&group).unwrap();
        assert_eq!(secret.index, i);
    }
}

#[test]
fn default_f_is_the_largest_that_n_allows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let run = maftia(&["keygen", "--n", "7", "--out", out.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let group = maftia_crypto::keygen::load_group(&out.join("group.toml")).unwrap();
    assert_eq!((group.n, group.f), (7, 2));
}

#[test]
fn rejects_too_small_a_group_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let run = maftia(&[
        "keygen",
        "--n",
        "6",
        "--f",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("n > 3f"), "{stderr}");
    assert!(stderr.contains("at least n = 7"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a bad group");
}

#[test]
fn refuses_a_non_empty_directory_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("precious.txt");
    std::fs::write(&keep, b"do not touch").unwrap();
    let run = maftia(&["keygen", "--n", "4", "--out", dir.path().to_str().unwrap()]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("not empty"), "{stderr}");
    assert_eq!(std::fs::read(&keep).unwrap(), b"do not touch");
    assert!(!dir.path().join("group.toml").exists());
}

#[test]
fn bad_arguments_are_usage_errors() {
    let run = maftia(&["keygen", "--n", "four", "--out", "/nonexistent"]);
    assert_eq!(run.status.code(), Some(2));
    let run = maftia(&["keygen", "--n", "4"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--out"));
    let run = maftia(&["keygen", "--n", "0", "--out", "/nonexistent/x"]);
    assert!(!run.status.success());
}
