//! `maftia bench` as a user runs it: the real binary, a tiny run (n = 4, batch 4, one warm-up
//! and one measured round: about a second), and the files it writes checked by parsing them.
//! With `--features compare-hbbft` the same for `--compare hbbft`.
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn maftia(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_maftia"))
        .args(args)
        .output()
        .expect("run maftia")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks that `svg` is a well-formed XML document rooted at `<svg>`: every tag closed in order,
/// attributes quoted, text free of stray `<`. Returns the element names in document order.
fn parse_xml_elements(svg: &str) -> Vec<String> {
    let mut elements = Vec::new();
    let mut open: Vec<String> = Vec::new();
    let mut rest = svg.trim();
    assert!(rest.starts_with('<'), "does not start with a tag");
    while !rest.is_empty() {
        let Some(start) = rest.find('<') else {
            assert!(rest.trim().is_empty(), "text after the root element");
            break;
        };
        assert!(
            !rest[..start].contains('>'),
            "stray '>' in text: {}",
            &rest[..start]
        );
        assert!(
            !open.is_empty() || rest[..start].trim().is_empty(),
            "text outside the root element: {}",
            &rest[..start]
        );
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("<?") {
            let end = after.find("?>").expect("unterminated declaration");
            rest = &after[end + 2..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").expect("unterminated comment");
            rest = &after[end + 3..];
            continue;
        }
        // A tag: find its end outside quoted attribute values.
        let mut quote = None;
        let mut end = None;
        for (i, c) in rest.char_indices().skip(1) {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '<') => panic!("'<' inside a tag: {}", &rest[..i]),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.expect("unterminated tag");
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let expected = open.pop().expect("closing tag without an open one");
            assert_eq!(name.trim(), expected, "mismatched closing tag");
            if open.is_empty() {
                assert!(rest.trim().is_empty(), "content after the root element");
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == ':'),
            "bad element name in <{tag}>"
        );
        if elements.is_empty() {
            assert_eq!(name, "svg", "the root element is not <svg>");
        } else {
            assert!(!open.is_empty(), "a second root element <{name}>");
        }
        // Attributes: name="value" pairs.
        let mut attributes = body[name.len()..].trim();
        while !attributes.is_empty() {
            let (key, value) = attributes
                .split_once('=')
                .unwrap_or_else(|| panic!("attribute without a value in <{tag}>"));
            assert!(
                !key.trim().is_empty() && !key.trim().contains(char::is_whitespace),
                "bad attribute name in <{tag}>"
            );
            let value = value.trim_start();
            let q = value.chars().next().expect("missing attribute value");
            assert!(q == '"' || q == '\'', "unquoted attribute in <{tag}>");
            let close = value[1..].find(q).expect("unterminated attribute value");
            attributes = value[close + 2..].trim_start();
        }
        elements.push(name.clone());
        if !self_closing {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
    elements
}

fn check_svg(path: &Path, points: usize) {
    let svg = std::fs::read_to_string(path).unwrap();
    let elements = parse_xml_elements(&svg);
    assert_eq!(
        elements.iter().filter(|e| *e == "circle").count(),
        points,
        "{}: one marker per point",
        path.display()
    );
}

fn number(value: &Value, path: &str) -> f64 {
    value
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path}"))
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

#[test]
fn a_small_run_prints_a_table_and_writes_parseable_json_csv_and_svg_that_reproduce_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let base = [
        "bench",
        "--layer",
        "abc",
        "--n",
        "4",
        "--batch",
        "4",
        "--warmup-rounds",
        "1",
        "--rounds",
        "1",
        "--seed",
        "7",
    ];
    let run = maftia(&[&base[..], &["--out", out.to_str().unwrap()]].concat());
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{stderr}");

    // Table: the header and one row for the run, with a positive throughput.
    let mut lines = stdout.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("| system | n | f | batch |"));
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| maftia abc | 4 | 1 | 4 | 250 | 1 |"))
        .unwrap_or_else(|| panic!("no row in:\n{stdout}"));
    let throughput: f64 = row.split('|').nth(7).unwrap().trim().parse().unwrap();
    assert!(throughput > 0.0, "{row}");
    // Progress: one line per run.
    assert!(
        stderr.contains("[1/1] maftia abc n=4 f=1 batch=4"),
        "{stderr}"
    );

    // JSON: the parameters and, per run, the full spec, the measurements and the command.
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["tool"], "maftia bench");
    assert!(matches!(json["build"].as_str(), Some("debug" | "release")));
    assert_eq!(json["parameters"]["n"], serde_json::json!([4]));
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let report = &runs[0]["report"];
    assert_eq!(runs[0]["system"], "maftia abc");
    assert_eq!(report["spec"]["workload"], "Abc");
    for (key, expected) in [
        ("n", 4),
        ("f", 1),
        ("batch_size", 4),
        ("request_size", 250),
        ("warmup_rounds", 1),
        ("measure_rounds", 1),
        ("seed", 7),
        ("threads", 1),
    ] {
        assert_eq!(report["spec"][key], expected, "spec.{key}");
    }
    assert!(number(report, "/delivered") > 0.0);
    assert!(number(report, "/latency/p50_ms") > 0.0);
    assert!(number(report, "/latency/max_ms") >= number(report, "/latency/p99_ms"));
    assert_eq!(number(report, "/faults"), 0.0);
    assert!(json["failures"].as_array().unwrap().is_empty());

    // CSV: header and one row, every column filled, numbers matching the JSON.
    let rows = csv_rows(&out.join("results.csv"));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].len(), rows[1].len());
    let column = |name: &str| {
        let i = rows[0].iter().position(|h| h == name).unwrap();
        rows[1][i].clone()
    };
    assert_eq!(column("system"), "maftia abc");
    assert_eq!(column("n"), "4");
    let delivered: f64 = column("delivered").parse().unwrap();
    assert_eq!(delivered, number(report, "/delivered"));
    let csv_rps: f64 = column("requests_per_sec").parse().unwrap();
    assert!((csv_rps - number(report, "/requests_per_sec")).abs() < 0.01);

    // SVG charts: well-formed, one marker for the one point.
    check_svg(&out.join("throughput_latency.svg"), 1);
    check_svg(&out.join("throughput_vs_n.svg"), 1);

    // Reproducible: the recorded command runs the same requests in the same order (threads = 1:
    // the delivered sequence is a function of the seed).
    let reproduce = runs[0]["reproduce"].as_str().unwrap();
    let again = dir.path().join("again");
    let mut args: Vec<&str> = reproduce
        .strip_prefix("maftia ")
        .unwrap()
        .split_whitespace()
        .collect();
    args.extend(["--out", again.to_str().unwrap()]);
    let rerun = maftia(&args);
    assert!(rerun.status.success(), "{}", text(&rerun.stderr));
    let json_again: Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("results.json")).unwrap())
            .unwrap();
    let report_again = &json_again["runs"][0]["report"];
    assert_eq!(report_again["spec"], report["spec"]);
    assert_eq!(report_again["delivery_digest"], report["delivery_digest"]);
    assert_eq!(report_again["delivered"], report["delivered"]);
}

#[test]
fn bad_specs_fail_at_once_with_the_reason_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let out_arg = out.to_str().unwrap();
    for (args, reason) in [
        (&["--n", "3", "--f", "1"][..], "needs n > 3f"),
        (&["--n", "4,7", "--f", "2"][..], "n = 4 with f = 2"),
        (&["--batch", "0"][..], "batch size 0"),
        (&["--request-size", "7"][..], "8-byte id"),
        (&["--batch", "100000"][..], "above the limit"),
        (&["--layer", "nope"][..], "available: abc, scabc"),
        (
            &["--n", "7", "--f", "1", "--compare", "hbbft"][..],
            "f = ⌊(n − 1)/3⌋ = 2",
        ),
    ] {
        let run = maftia(&[&["bench", "--out", out_arg], args].concat());
        let stderr = text(&run.stderr);
        assert!(!run.status.success(), "{args:?} accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("[1/"),
            "{args:?} started running: {stderr}"
        );
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[cfg(not(feature = "compare-hbbft"))]
#[test]
fn compare_without_the_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let run = maftia(&[
        "bench",
        "--n",
        "4",
        "--batch",
        "4",
        "--compare",
        "hbbft",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = text(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("cargo run --release --features compare-hbbft -- bench --compare hbbft"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[cfg(feature = "compare-hbbft")]
#[test]
fn compare_hbbft_prints_both_rows_and_the_ratio_and_records_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let run = maftia(&[
        "bench",
        "--n",
        "4",
        "--batch",
        "4",
        "--warmup-rounds",
        "1",
        "--rounds",
        "1",
        "--compare",
        "hbbft",
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert!(run.status.success(), "{stderr}");
    for system in ["maftia abc", "hbbft", "hbbft+enc"] {
        assert!(
            stdout.contains(&format!("| {system} | 4 | 1 | 4 | 250 |")),
            "no {system} row in:\n{stdout}"
        );
    }
    assert!(stdout.contains("maftia/hbbft throughput"), "{stdout}");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 3);
    let comparison = &json["comparisons"][0];
    assert_eq!(comparison["peer"], "hbbft");
    let ratio = number(comparison, "/ratios/throughput_vs_hbbft");
    let maftia_rps = number(&json, "/runs/0/report/requests_per_sec");
    let hbbft_rps = number(&json, "/runs/1/report/requests_per_sec");
    assert!((ratio - maftia_rps / hbbft_rps).abs() < 1e-9 * ratio.abs().max(1.0));
    assert_eq!(csv_rows(&out.join("results.csv")).len(), 4);
    check_svg(&out.join("throughput_latency.svg"), 3);
}

#[test]
fn the_xml_check_rejects_malformed_documents() {
    let good = r#"<svg a="1"><g><text x='2'>t</text><circle r="1"/></g></svg>"#;
    assert_eq!(parse_xml_elements(good), ["svg", "g", "text", "circle"]);
    for bad in [
        r#"<svg><g></svg>"#,
        r#"<svg><g></g>"#,
        r#"<svg a=1></svg>"#,
        r#"<svg a="1></svg>"#,
        r#"<svg></svg><svg></svg>"#,
        r#"<g></g>"#,
        r#"<svg><circle r="1"</svg>"#,
    ] {
        let rejected = std::panic::catch_unwind(|| parse_xml_elements(bad)).is_err();
        assert!(rejected, "accepted {bad}");
    }
}
