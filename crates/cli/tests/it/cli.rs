//! The command-line contract scripts rely on: `simulate` prints its
//! addresses, `serve` prints `listening on http://ADDR` and, with nothing
//! configured, serves the embedded simulated cluster; `status` and
//! `schema` print what they say; logs on a stderr that is no terminal are
//! plain lines, as text or JSON.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dfgraph");

/// A child process killed on drop, so a failing test leaves nothing behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dfgraph ARGS` and returns it with the first `n` stdout lines.
fn start(args: &[&str], n: usize) -> (Running, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dfgraph starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("dfgraph {args:?} printed only {lines:?}"),
        }
    }
    (running, lines)
}

/// Runs `dfgraph serve --config FILE ARGS` (the embedded simulated
/// cluster, `toml` as its configuration) until it says where it listens,
/// stops it and returns what it logged.
fn serve_logs(toml: &str, args: &[&str]) -> String {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dfgraph.toml");
    std::fs::write(&path, toml).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dfgraph starts");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    drop(running);
    let mut logs = String::new();
    stderr.read_to_string(&mut logs).unwrap();
    assert!(
        line.starts_with("listening on http://"),
        "dfgraph serve did not start: {line:?}\n{logs}"
    );
    logs
}

#[test]
fn logs_are_plain_lines_when_stderr_is_not_a_terminal() {
    const SMALL: &str = "listen = \"127.0.0.1:0\"\n[simulator]\nhosts = 10\ntasks = 5\n";
    let text = serve_logs(SMALL, &[]);
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes: {text:?}");

    // `log_format` as a key: one JSON object per line.
    let json = serve_logs(&format!("log_format = \"json\"\n{SMALL}"), &[]);
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "some log lines");
    for line in &lines {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    // The flag wins over the key.
    let flagged = serve_logs(
        &format!("log_format = \"json\"\n{SMALL}"),
        &["--log-format", "text"],
    );
    assert!(
        flagged
            .lines()
            .any(|l| l.contains("INFO") && !l.starts_with('{')),
        "{flagged}"
    );
    assert!(!flagged.contains('\u{1b}'), "{flagged:?}");
}

#[test]
fn simulate_prints_one_line_per_scheduler_and_the_manager() {
    let (_sim, lines) = start(
        &[
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--clusters",
            "2",
            "--schedulers-per-cluster",
            "2",
            "--hosts",
            "40",
        ],
        5,
    );
    for (i, line) in lines[..4].iter().enumerate() {
        let cluster = if i < 2 { 1 } else { 2 };
        let prefix = format!("cluster={cluster} scheduler=127.0.0.1:");
        assert!(line.starts_with(&prefix), "{line:?}");
    }
    assert!(lines[4].starts_with("manager=127.0.0.1:"), "{:?}", lines[4]);
}

#[tokio::test]
async fn serve_with_nothing_configured_serves_the_simulated_cluster() {
    let (_gateway, lines) = start(&["serve", "--listen", "127.0.0.1:0"], 1);
    let url = lines[0]
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{:?}", lines[0]))
        .to_owned();
    let body: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .json(&serde_json::json!({ "query": "{ hostStats { total countedClusters } schedulers { address } }" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["data"]["hostStats"]["countedClusters"],
        serde_json::json!(["1", "2"])
    );
    assert!(
        body["data"]["hostStats"]["total"].as_u64().unwrap() > 250,
        "{body}"
    );
    assert_eq!(body["data"]["schedulers"].as_array().unwrap().len(), 6);
}

#[test]
fn status_prints_a_table_and_json_for_static_schedulers() {
    let (_sim, lines) = start(
        &[
            "simulate",
            "--clusters",
            "1",
            "--schedulers-per-cluster",
            "2",
            "--hosts",
            "30",
            "--tick",
            "0s",
        ],
        3,
    );
    let scheduler = lines[0].split_once("scheduler=").unwrap().1.to_owned();
    let json = status_json(&format!("1={scheduler}"));
    assert_eq!(json[0]["id"], 1);
    assert_eq!(json[0]["hosts"], 30);
    let by_type: u64 = json[0]["hosts_by_type"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_type, 30);

    let manager = lines[2].strip_prefix("manager=").unwrap();
    let output = Command::new(BIN)
        .args([
            "status",
            "--manager",
            manager,
            "--scheduler-cluster-id",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("scheduler cluster 1  hosts: 30"), "{table}");
    assert!(table.contains(&scheduler), "{table}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["serve", "--scheduler", "not-an-address"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CLUSTER_ID=HOST:PORT"), "{stderr}");
}

#[test]
fn schema_prints_the_sdl() {
    let output = Command::new(BIN).arg("schema").output().unwrap();
    assert!(output.status.success());
    let sdl = String::from_utf8(output.stdout).unwrap();
    assert!(sdl.contains("type Query"), "{sdl}");
    assert!(
        sdl.contains("hostStats(filter: HostFilter): HostStats!"),
        "{sdl}"
    );
}

/// `default-config` prints a file an operator can start from: it loads,
/// passes the same validation as `serve`, and holds every default.
#[test]
fn default_config_is_a_valid_file_of_every_default() {
    let output = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    for table in [
        "[timeouts]",
        "[cache.hosts]",
        "[watch.budget]",
        "[subscriptions]",
    ] {
        assert!(text.contains(table), "{table} missing from:\n{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dfgraph.toml");
    std::fs::write(&file, &text).unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&file)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let loaded = dfgraph::config::Config::load(Some(&file), serde_json::json!({})).unwrap();
    let defaults = serde_json::to_value(dfgraph::config::Config::default()).unwrap();
    assert_eq!(serde_json::to_value(loaded).unwrap(), defaults);
}

#[test]
fn simulate_stops_and_resumes_a_hosts_health_service_on_stdin() {
    use std::io::Write;
    use std::net::{SocketAddr, TcpStream};
    let mut child = Command::new(BIN)
        .args([
            "simulate",
            "--clusters",
            "1",
            "--hosts",
            "5",
            "--tick",
            "0s",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("dfgraph starts");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("simulate answers")
    };
    // 3 schedulers and the manager.
    for _ in 0..4 {
        next();
    }
    writeln!(stdin, "hosts").unwrap();
    let mut hosts = Vec::new();
    loop {
        let line = next();
        if line == "ok" {
            break;
        }
        let host = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("host="))
            .unwrap()
            .to_owned();
        let addr: SocketAddr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("health="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(addr.ip().is_loopback(), "{line}");
        hosts.push((host, addr));
    }
    assert_eq!(hosts.len(), 5);
    let (host, addr) = &hosts[0];
    assert!(TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok());
    writeln!(stdin, "stop {host}").unwrap();
    assert_eq!(next(), format!("ok stop {host}"));
    assert!(TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_err());
    writeln!(stdin, "resume {host}").unwrap();
    assert_eq!(next(), format!("ok resume {host}"));
    assert!(TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok());
    writeln!(stdin, "stop nobody").unwrap();
    assert!(next().starts_with("error"));
}

#[test]
fn simulate_with_the_edge_profile_serves_real_world_oddities() {
    let (_sim, lines) = start(
        &[
            "simulate",
            "--clusters",
            "1",
            "--schedulers-per-cluster",
            "1",
            "--hosts",
            "16",
            "--tick",
            "0s",
            "--profile",
            "edge",
        ],
        2,
    );
    let scheduler = lines[0].split_once("scheduler=").unwrap().1.to_owned();
    // The scheduler writes cluster 101 in its hosts; served as 1, they
    // are all counted under 1.
    let json = status_json(&format!("1={scheduler}"));
    assert_eq!(json[0]["id"], 1);
    assert_eq!(json[0]["hosts"], 16);
    // Sparse hosts have no build: counted under the empty version.
    assert!(json[0]["hosts_by_version"].get("").is_some(), "{json}");
}

/// `dfgraph status --json --scheduler SCHEDULER`, which must succeed.
fn status_json(scheduler: &str) -> serde_json::Value {
    let output = Command::new(BIN)
        .args(["status", "--json", "--scheduler", scheduler])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
