//! The container files are what a user starts with `docker compose up`:
//! with no container engine here, this checks that every dfgraph service's
//! command and environment is one the binary accepts (`dfgraph
//! check-config`), that the layout is the one the README promises, and
//! that the dashboard and alert rules only name metrics dfgraph exports.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_dfgraph");
/// The repository root (this package lives in `crates/cli`).
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn compose() -> Value {
    let mut doc: Value = serde_yaml::from_str(&read("docker-compose.yml")).expect("valid YAML");
    // A merged anchor may itself merge another (`<<` of `<<`): resolve
    // each service until no merge key is left.
    doc.apply_merge().expect("merge keys resolve");
    if let Some(services) = doc["services"].as_mapping_mut() {
        for (_, service) in services.iter_mut() {
            while service.get("<<").is_some() {
                service.apply_merge().expect("merge keys resolve");
            }
        }
    }
    doc
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Value::Null => Vec::new(),
        other => panic!("environment as a map, not {other:?}"),
    }
}

/// Runs `dfgraph check-config ARGS` with only `env` (as in the container).
fn check(args: &[String], env: &[(String, String)]) -> (bool, String) {
    let output = Command::new(BIN)
        .arg("check-config")
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .expect("dfgraph runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn dfgraph_services(doc: &Value) -> Vec<(String, Value)> {
    doc["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, s)| s["image"].as_str() == Some("dfgraph:local"))
        .map(|(name, s)| (name.as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// Where compose mounts a service's secrets.
const SECRETS_DIR: &str = "/run/secrets/";

/// The service's environment as its container sees it, with each secret
/// it mounts present: compose mounts secret NAME (a file the operator
/// creates, never in the repository) at /run/secrets/NAME; here a stand-in
/// value is written to `dir` and the variables point there instead. A
/// variable naming a secret the service does not mount, or one the file
/// does not declare, fails the test.
fn with_secrets(doc: &Value, name: &str, service: &Value, dir: &Path) -> Vec<(String, String)> {
    let mounted = strings(&service["secrets"]);
    for secret in &mounted {
        assert!(
            doc["secrets"][secret.as_str()]["file"].is_string(),
            "{name} mounts secret {secret}, which the compose file does not declare"
        );
        // Long enough for every token rule (metrics tokens: 16+).
        std::fs::write(dir.join(secret), format!("{}\n", "a1".repeat(32))).unwrap();
    }
    environment(service)
        .into_iter()
        .map(|(key, value)| match value.strip_prefix(SECRETS_DIR) {
            Some(secret) => {
                assert!(
                    mounted.iter().any(|m| m == secret),
                    "{name}: {key} reads secret {secret}, which it does not mount"
                );
                (key, dir.join(secret).display().to_string())
            }
            None => (key, value),
        })
        .collect()
}

#[test]
fn every_dfgraph_service_command_and_environment_is_accepted() {
    let doc = compose();
    let services = dfgraph_services(&doc);
    assert!(services.len() >= 3, "simulator and two replicas");
    for (name, service) in &services {
        let command = strings(&service["command"]);
        let secrets = tempfile::tempdir().unwrap();
        let env = with_secrets(&doc, name, service, secrets.path());
        let (ok, out) = check(&command, &env);
        assert!(
            ok,
            "{name}: dfgraph {command:?} with {env:?} refused:\n{out}"
        );
        // A healthcheck that runs the binary must be a valid command too.
        let probe = strings(&service["healthcheck"]["test"]);
        if probe.get(1).is_some_and(|p| p.ends_with("/dfgraph")) {
            let (ok, out) = check(&probe[2..], &env);
            assert!(ok, "{name} healthcheck {probe:?} refused:\n{out}");
        }
    }
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    let env = vec![("DFGRAPH_TIMEOUTS__STAT".to_owned(), "soon".to_owned())];
    let (ok, out) = check(&["serve".to_owned()], &env);
    assert!(!ok && out.contains("TIMEOUTS.STAT"), "{out}");
    let (ok, out) = check(&["serve".into(), "--scheduler".into(), "x".into()], &[]);
    assert!(!ok && out.contains("schedulers"), "{out}");
    let (ok, out) = check(&["simulate".into(), "--clusters".into(), "0".into()], &[]);
    assert!(!ok && out.contains("clusters"), "{out}");
    // A rule of a section's own (here the cache's), not only serde's.
    let env = vec![("DFGRAPH_CACHE__TASK__FRESH".to_owned(), "0s".to_owned())];
    let (ok, out) = check(&["serve".to_owned()], &env);
    assert!(!ok && out.contains("cache.task.fresh"), "{out}");
    // The variables of flags are the flags' own, in any case.
    let env = vec![
        (
            "DFGRAPH_SCHEDULER".to_owned(),
            "1=127.0.0.1:8002".to_owned(),
        ),
        ("DFGRAPH_LOG_FORMAT".to_owned(), "json".to_owned()),
    ];
    let (ok, out) = check(&[], &env);
    assert!(ok && out.contains("1 static schedulers"), "{out}");
}

#[test]
fn compose_runs_two_replicas_on_one_redis_behind_a_load_balancer() {
    let doc = compose();
    let services = doc["services"].as_mapping().unwrap();
    let replicas: Vec<_> = dfgraph_services(&doc)
        .into_iter()
        .filter(|(_, s)| strings(&s["command"]).first().map(String::as_str) == Some("serve"))
        .collect();
    assert_eq!(replicas.len(), 2, "two gateway replicas");
    for (name, replica) in &replicas {
        let env = environment(replica);
        assert!(
            env.iter()
                .any(|(k, v)| k == "DFGRAPH_REDIS" && v.starts_with("redis://redis:")),
            "{name} shares the compose Redis: {env:?}"
        );
        assert!(
            replica["healthcheck"]["test"].is_sequence(),
            "{name} healthcheck"
        );
    }
    let simulator = dfgraph_services(&doc)
        .into_iter()
        .find(|(_, s)| strings(&s["command"]).first().map(String::as_str) == Some("simulate"));
    assert!(simulator.is_some(), "a simulated cluster");
    let redis = services.get("redis").expect("a redis service");
    assert!(redis["healthcheck"]["test"].is_sequence());
    let lb = services.get("lb").expect("a load balancer");
    assert!(strings(&lb["ports"]).iter().any(|p| p.ends_with(":8080")));
    let nginx = read("deploy/nginx/nginx.conf");
    for (name, _) in &replicas {
        assert!(nginx.contains(name.as_str()), "nginx routes to {name}");
    }
    assert!(
        nginx.contains("Upgrade"),
        "websocket upgrade for /graphql/ws"
    );
}

#[test]
fn the_image_is_multi_stage_non_root_with_a_healthcheck() {
    let dockerfile = read("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.trim().starts_with('0') && user.trim() != "root",
        "{user}"
    );
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
    assert!(dockerfile.contains("--locked"), "builds from Cargo.lock");
}

/// Every metric name the code registers, from its source.
fn exported_metrics() -> BTreeSet<String> {
    let pattern = regex::Regex::new(
        r#"(?s)(?:(?:counter|gauge|histogram)!\(\s*|const [A-Z_]+: &str = )"(dfgraph_[a-z0-9_]+)""#,
    )
    .unwrap();
    let mut names = BTreeSet::new();
    let mut stack = vec![Path::new(ROOT).join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                names.extend(pattern.captures_iter(&text).map(|c| c[1].to_owned()));
            }
        }
    }
    names
}

/// Metric names a dashboard or rule file refers to, without the suffixes
/// Prometheus adds to histograms.
fn named_metrics(text: &str) -> BTreeSet<String> {
    let pattern = regex::Regex::new(r"dfgraph_[a-z0-9_]+").unwrap();
    pattern
        .find_iter(text)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let exported = exported_metrics();
    assert!(exported.len() > 10, "{exported:?}");
    let dashboard = read("deploy/grafana/dfgraph-dashboard.json");
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
    let alerts = read("deploy/prometheus/alerts.yml");
    let rules: Value = serde_yaml::from_str(&alerts).expect("rules are YAML");
    assert!(
        rules["groups"]
            .as_sequence()
            .is_some_and(|g| g.iter().all(|g| g["rules"].is_sequence())),
        "Prometheus rule groups"
    );
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let named = named_metrics(text);
        assert!(!named.is_empty(), "{file} names metrics");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics dfgraph does not export: {unknown:?}"
        );
    }
}

#[test]
fn replicas_run_with_production_access_control() {
    let doc = compose();
    let replicas: Vec<_> = dfgraph_services(&doc)
        .into_iter()
        .filter(|(_, s)| strings(&s["command"]).first().map(String::as_str) == Some("serve"))
        .collect();
    for (name, replica) in &replicas {
        let env: std::collections::BTreeMap<_, _> = environment(replica).into_iter().collect();
        let get = |key: &str| env.get(key).map(String::as_str);
        assert_eq!(get("DFGRAPH_AUTH__ANONYMOUS"), Some("off"), "{name}");
        assert!(
            get("DFGRAPH_AUTH__MANAGER__JWT_KEY_FILE").is_some_and(|f| f.starts_with(SECRETS_DIR)),
            "{name}: the manager's key comes from a secret"
        );
        assert_eq!(
            get("DFGRAPH_GRAPHQL__INTROSPECTION"),
            Some("false"),
            "{name}"
        );
        assert!(get("DFGRAPH_RATE_LIMIT__PER_SECOND").is_some(), "{name}");
        assert!(
            get("DFGRAPH_METRICS__TOKEN_FILE").is_some_and(|f| f.starts_with(SECRETS_DIR)),
            "{name}: the metrics token comes from a secret"
        );
        // Prometheus scrapes the metrics port, with the token.
        let port = get("DFGRAPH_METRICS__LISTEN")
            .and_then(|l| l.rsplit(':').next())
            .expect("a metrics listener");
        let prometheus = read("deploy/prometheus/prometheus.yml");
        assert!(
            prometheus.contains(&format!("{name}:{port}")),
            "Prometheus scrapes {name}:{port}"
        );
        assert!(prometheus.contains("credentials_file: /run/secrets/metrics_token"));
    }
    assert!(
        strings(&doc["services"]["prometheus"]["secrets"]).contains(&"metrics_token".to_owned()),
        "Prometheus mounts the metrics token"
    );
}
