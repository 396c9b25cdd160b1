//! `maftia bench --layer kv` as a user runs it: the real binary starts a 4-replica loopback
//! cluster per configuration, runs a 1 s warm-up and a 3 s window in the closed and the open loop
//! (the open loop's rate derived from the closed loop's throughput), and the files it writes are
//! checked by parsing them. About 15 s in release.
use serde_json::Value;
use std::process::Command;

#[test]
fn the_kv_layer_measures_both_loops_and_reports_where_the_time_goes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_maftia"))
        .args(["bench", "--layer", "kv", "--n", "4", "--value-size", "64"])
        .args([
            "--clients",
            "4",
            "--kv-warmup",
            "1",
            "--duration",
            "3",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run maftia");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for maftia");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    // Progress lines, and the table on stdout with nothing else from the cluster's creation.
    assert!(stderr.contains("[1/2] maftia kv closed n=4 f=1 value=64B clients=4 closed ... "));
    assert!(stderr.contains("[2/2] maftia kv open n=4 f=1 value=64B clients=4 open at "));
    assert!(
        stdout.contains("| maftia kv closed | 4 | 1 | 64 | 4 | - |"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrote"), "{stdout}");

    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let kv = results["kv"].as_array().expect("a kv section");
    assert_eq!(kv.len(), 2, "{kv:?}");
    assert!(results["kv_failures"].as_array().unwrap().is_empty());
    let closed_rate = kv[0]["requests_per_sec"].as_f64().unwrap();
    for (record, mode) in kv.iter().zip(["closed", "open"]) {
        assert_eq!(record["spec"]["mode"], mode);
        assert_eq!(record["spec"]["n"], 4);
        let rate = record["requests_per_sec"].as_f64().unwrap();
        assert!(rate > 0.0, "{record}");
        assert!(record["completed"].as_u64().unwrap() > 0);
        assert_eq!(record["errors"], 0, "{record}");
        assert_eq!(record["clean_stop"], true, "{record}");
        let latency = &record["latency"];
        assert_eq!(latency["samples"], record["completed"]);
        let p50 = latency["p50_ms"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= latency["p99_ms"].as_f64().unwrap());
        // Every delivered request was logged, ordered, admitted, executed and certified
        // somewhere: each part of the replicas' time is positive.
        for part in [
            "persistence",
            "ordering",
            "admission",
            "execution",
            "certification",
        ] {
            let us = record["time_us_per_request"][part].as_f64().unwrap();
            assert!(us > 0.0, "{part}: {record}");
        }
        assert!(record["replica_cpu_us_per_request"].as_f64().unwrap() > 0.0);
        assert!(record["reproduce"]
            .as_str()
            .unwrap()
            .starts_with("maftia bench --layer kv --n 4 --f 1 --value-size 64 --clients 4"));
    }
    // The open loop offered 70 % of the closed loop's throughput.
    let offered = kv[1]["spec"]["rate"].as_f64().unwrap();
    assert!((offered - 0.7 * closed_rate).abs() < 1e-6 * closed_rate.max(1.0) + 1e-9);
    assert!(kv[1]["reproduce"]
        .as_str()
        .unwrap()
        .contains("--open-loop-rate"));

    let csv = std::fs::read_to_string(out.join("kv.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    let columns = lines[0].split(',').count();
    assert!(
        lines.iter().all(|l| l.split(',').count() == columns),
        "{csv}"
    );
    assert!(lines[1].starts_with("maftia kv closed,4,1,64,4,closed,"));
    assert!(lines[2].starts_with("maftia kv open,4,1,64,4,open,"));

    // The replicas were stopped and their directories removed.
    let prefix = format!("maftia-bench-kv-{pid}-");
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_kv_configuration_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_maftia"))
        .args([
            "bench",
            "--layer",
            "kv",
            "--n",
            "4",
            "--clients",
            "9",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run maftia");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--clients 9"), "{stderr}");
    assert!(!out.exists());
}

/// `maftia bench --layer loopback` (atomic broadcast alone over real processes) and `--layer
/// crypto` in one short run: both sections are written and plausible.
#[test]
fn the_loopback_and_crypto_layers_write_their_sections() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_maftia"))
        .args([
            "bench",
            "--layer",
            "loopback,crypto",
            "--n",
            "4",
            "--batch",
            "50",
        ])
        .args(["--kv-warmup", "1", "--duration", "2", "--out"])
        .arg(&out)
        .output()
        .expect("run maftia");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("| n | batch | loopback req/s"), "{stdout}");
    assert!(stdout.contains("bls quorum verify share"), "{stdout}");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let loopback = results["loopback"].as_array().expect("a loopback section");
    assert_eq!(loopback.len(), 1, "{loopback:?}");
    let record = &loopback[0];
    assert_eq!(record["agreed"], true, "{record}");
    assert!(
        record["requests_per_sec"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    assert!(
        record["in_process_requests_per_sec"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    let crypto = results["crypto"].as_array().expect("a crypto section");
    assert!(crypto.len() >= 19, "{crypto:?}");
    assert!(crypto
        .iter()
        .all(|r| r["calls_per_second"].as_f64().unwrap() > 0.0));
    assert!(out.join("crypto.csv").exists());
}
