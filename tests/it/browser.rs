//! The console at `/` and GraphiQL at `/graphiql` in a real browser:
//! headless Chromium driven over WebDriver (a chromedriver this test
//! starts), with every network destination but loopback unreachable, in
//! front of a simulated cluster. What a user sees: the page loads offline
//! from the gateway alone, the host count is the cluster's, a host changed
//! in a scheduler changes in the table without a reload, task and peer
//! lookups follow their changes, GraphiQL runs a query and a
//! subscription, and a host that left and rejoined shows in the console's
//! history (recent changes from the log, flapping hosts, its detail), whose
//! feed resumes after a websocket cut without losing or repeating an
//! event. Screenshots of each step land in `target/browser-artifacts/`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`); `scripts/test.sh` installs them. `CHROMIUM` and
//! `CHROMEDRIVER` point at other binaries.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::live::query;
use crate::support::proxy::{Mode, Proxy};
use crate::support::{TestEnv, small_sim};
use dfgraph_sim::{Method, SimCluster};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The watch interval: live changes must reach the page within two.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// Loading a page, starting the browser: generous, for a busy machine.
const LOAD: Duration = Duration::from_secs(30);

// ---------- the browser ----------

fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

/// `$var` if set, else the first of `candidates` that exists (a bare name
/// is looked up on PATH).
fn find_binary(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    candidates.iter().find_map(|c| {
        if c.contains('/') {
            Path::new(c).is_file().then(|| PathBuf::from(c))
        } else {
            path_dirs.iter().map(|d| d.join(c)).find(|p| p.is_file())
        }
    })
}

fn required_binary(var: &str, candidates: &[&str], package: &str) -> PathBuf {
    find_binary(var, candidates).unwrap_or_else(|| {
        panic!(
            "{} not found (looked at ${var}, else {}): the browser tests need it. \
             Run scripts/test.sh, which installs the Debian packages chromium and \
             chromium-driver, or `apt-get install {package}`.",
            candidates[0],
            candidates.join(", "),
        )
    })
}

/// A chromedriver on a free loopback port, in a process group of its own
/// so that dropping it also ends the Chromium it started.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    /// Starts one, on another free port when the one picked was taken
    /// meanwhile (with `--allowed-ips` chromedriver binds every address,
    /// so a port any test holds on any loopback address is taken).
    async fn start() -> Chromedriver {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            if let Some(driver) = Self::start_once(attempt == ATTEMPTS).await {
                return driver;
            }
        }
        unreachable!("the last attempt panics instead of giving up")
    }

    /// `None` when chromedriver exited at start and `last` is false.
    async fn start_once(last: bool) -> Option<Chromedriver> {
        let binary = required_binary(
            "CHROMEDRIVER",
            &["chromedriver", "/usr/bin/chromedriver"],
            "chromium-driver",
        );
        // A wildcard bind gets a port free on every address.
        let port = TcpListener::bind("0.0.0.0:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = artifacts_dir().join("chromedriver.log");
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let status = format!("{}/status", driver.url);
        let deadline = Instant::now() + LOAD;
        loop {
            if let Ok(Some(exit)) = driver.child.try_wait() {
                assert!(
                    !last,
                    "chromedriver exited at start ({exit}); see {}",
                    log.display()
                );
                return None;
            }
            if let Ok(response) = reqwest::get(&status).await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return Some(driver);
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within {LOAD:?}; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A headless Chromium session that can reach loopback only: names
    /// other than 127.0.0.1 do not resolve, and everything not on loopback
    /// goes to a proxy that is not there.
    async fn session(&self) -> Client {
        let chromium = required_binary(
            "CHROMIUM",
            &["chromium", "/usr/bin/chromium", "chromium-browser"],
            "chromium",
        );
        let dead_proxy = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1440,1000",
                    "--force-device-scale-factor=1",
                    "--lang=en-US",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    // A page left for another stays alive in the back/forward cache,
                    // its websocket open: the next page's subscription count
                    // would include it until the cache evicts it.
                    "--disable-features=Translate,OptimizationHints,MediaRouter,BackForwardCache",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                    format!("--proxy-server=http://{dead_proxy}"),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session ({e}); see {}",
                    artifacts_dir().join("chromedriver.log").display()
                )
            })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it launched.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser tab and the helpers a test step needs.
struct Page {
    client: Client,
    dir: PathBuf,
}

impl Page {
    async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than null or false,
    /// and returns that; after `within`, saves a screenshot and panics
    /// naming `what`.
    async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        script: &str,
        args: Vec<Value>,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.js(script, args.clone()).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if Instant::now() >= deadline {
                let shot = self.screenshot(&format!("timeout-{}", slug(what))).await;
                panic!(
                    "{what}: not within {within:?} (screenshot {})",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Saves the viewport as `<name>.png`, the window first sized to the
    /// page's height so the whole page is in it.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let _ = self.client.set_window_size(1440, 1000).await;
        let height = self
            .js("return document.documentElement.scrollHeight;", vec![])
            .await
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 4000);
        let _ = self.client.set_window_size(1440, height as u32 + 140).await; // + browser chrome
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Saves a `width` x `height` window as `<name>.png` (the top of the
    /// page, e.g. for the README).
    async fn screenshot_sized(&self, name: &str, width: u32, height: u32) -> PathBuf {
        let _ = self.client.set_window_size(width, height).await;
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        input.clear().await.expect("clear input");
        input.send_keys(text).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Every URL the page loaded (document, scripts, styles, fetches) must
    /// be on `origin`: nothing comes from a CDN.
    async fn assert_loaded_only_from(&self, origin: &str, page: &str) {
        let urls = self
            .js(
                "return [...performance.getEntriesByType('navigation'), \
                         ...performance.getEntriesByType('resource')].map((e) => e.name);",
                vec![],
            )
            .await;
        let urls: Vec<String> = serde_json::from_value(urls).expect("a list of URLs");
        assert!(
            urls.len() >= 3,
            "{page}: the Performance API lists too little to judge: {urls:?}"
        );
        let foreign: Vec<&String> = urls
            .iter()
            .filter(|u| !u.starts_with(&format!("{origin}/")))
            .collect();
        assert!(
            foreign.is_empty(),
            "{page} loaded resources from outside {origin}: {foreign:?}"
        );
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

// ---------- the cluster ----------

fn host_total(sim: &SimCluster) -> usize {
    sim.cluster_ids().iter().map(|c| sim.hosts(*c).len()).sum()
}

/// Waits until the gateway's watcher has taken the host lists it diffs
/// changes against: a poll round completed after the subscription went
/// live, seen as the next round's ListHosts calls starting. (A round's
/// calls go out together; rounds are a watch interval apart.)
async fn wait_for_host_baseline(sim: &SimCluster) {
    let deadline = Instant::now() + LOAD;
    let calls = || sim.total_rpc_count(Method::ListHosts);
    for round in ["a first", "a second"] {
        let before = calls();
        while calls() == before {
            assert!(
                Instant::now() < deadline,
                "the watcher did not start {round} poll of the host lists within {LOAD:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // This round's calls have all gone out once the count holds still.
        let mut last = calls();
        loop {
            tokio::time::sleep(WATCH_INTERVAL / 5).await;
            let now = calls();
            if now == last {
                break;
            }
            last = now;
        }
    }
}

/// Waits until the gateway's count of live subscriptions satisfies `done`.
async fn wait_for_live_subscriptions(
    env: &TestEnv,
    page: &Page,
    what: &str,
    done: impl Fn(usize) -> bool,
) {
    let deadline = Instant::now() + LOAD;
    loop {
        let live = env.gateway.state.events.live_subscriptions();
        if done(live) {
            return;
        }
        if Instant::now() >= deadline {
            let shot = page.screenshot(&format!("timeout-{}", slug(what))).await;
            panic!(
                "{what}: not within {LOAD:?} ({live} subscriptions live; screenshot {})",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Renames host `id` in the simulator.
fn rename_host(sim: &SimCluster, id: &str, new_name: &str) {
    let mut host = sim
        .cluster_ids()
        .iter()
        .flat_map(|c| sim.hosts(*c))
        .find(|h| h.id == id)
        .unwrap_or_else(|| panic!("host {id} is not in the simulator"));
    host.hostname = new_name.into();
    sim.upsert_host(host);
}

// ---------- the test ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_graphiql_work_offline_and_live_in_a_browser() {
    let env = TestEnv::start(small_sim(), |config| {
        // As a user runs it: cache on (in-process), changes polled often.
        config.cache.enabled = true;
        config.watch.interval = WATCH_INTERVAL;
        // Hosts probed as the demo probes them (loopback only), quickly.
        config.liveness.enabled = true;
        config.liveness.networks = vec!["127.0.0.0/8".into()];
        config.liveness.timeout = Duration::from_millis(300);
        config.liveness.interval = Duration::from_millis(300);
    })
    .await;
    let origin = env.gateway.url();
    let driver = Chromedriver::start().await;
    let page = Page {
        client: driver.session().await,
        dir: artifacts_dir(),
    };

    console_shows_the_cluster(&env, &page, &origin).await;
    host_change_reaches_the_table(&env, &page).await;
    an_unreachable_host_is_marked_and_counted(&env, &page).await;
    task_and_peer_lookup_follow_changes(&env, &page).await;
    graphiql_runs_a_query_and_a_subscription(&env, &page, &origin).await;
    let flapping = a_restarting_host_shows_in_the_history(&env, &page, &origin).await;
    the_feed_resumes_after_a_websocket_cut(&env, &page, &flapping).await;

    page.client.close().await.expect("close the browser");
    drop(driver);
    env.stop().await;
}

/// Step 1: The console loads from the gateway alone and shows the cluster.
async fn console_shows_the_cluster(env: &TestEnv, page: &Page, origin: &str) {
    let total = host_total(&env.sim);
    let schedulers = env.sim.schedulers().len();
    page.goto(&format!("{origin}/")).await;

    let shown = page
        .wait_for(
            &format!("the overview's host total {total}"),
            LOAD,
            "const t = document.querySelector('#host-total').textContent; \
             return t === String(arguments[0]) ? t : null;",
            vec![json!(total)],
        )
        .await;
    assert_eq!(shown, total.to_string());
    page.wait_for(
        &format!("a hosts table of {total} matches, first page full"),
        LOAD,
        "const table = document.querySelector('#hosts-table'); \
         return table.dataset.state === 'ready' \
           && document.querySelector('#hosts-count').textContent === `${arguments[0]} match` \
           && table.querySelectorAll('tbody tr[data-host-id]').length === Math.min(50, arguments[0]);",
        vec![json!(total)],
    )
    .await;
    // The chart by scheduler cluster adds up to the same total.
    let charted = page
        .js(
            "return [...document.querySelectorAll('#chart-cluster .bar')] \
               .reduce((n, b) => n + Number(b.dataset.count), 0);",
            vec![],
        )
        .await;
    assert_eq!(charted, json!(total), "hosts in the chart by cluster");
    page.wait_for(
        &format!("scheduler health: {schedulers}/{schedulers} up"),
        LOAD,
        "const h = document.querySelector('#health'); \
         return h.dataset.state === 'healthy' && h.dataset.up === String(arguments[0]);",
        vec![json!(schedulers)],
    )
    .await;
    page.wait_for(
        "the subscription websocket connected and the freshness badge live",
        LOAD,
        "return document.querySelector('#ws-status').dataset.state === 'connected' \
           && document.querySelector('#freshness').dataset.live === 'true';",
        vec![],
    )
    .await;
    page.screenshot("01-console").await;
    page.assert_loaded_only_from(origin, "the console").await;

    // And the browser really is offline: the page cannot reach out.
    let outside = page
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             fetch('http://example.com/', { mode: 'no-cors' }) \
               .then(() => done('reached'), () => done('blocked'));",
            vec![],
        )
        .await
        .expect("fetch outside");
    assert_eq!(outside, "blocked", "the browser reached example.com");
}

/// Step 2: A host renamed in a scheduler is renamed in the table, in place,
/// within two watch intervals.
async fn host_change_reaches_the_table(env: &TestEnv, page: &Page) {
    // The page subscribes to hostEventBatches and clusterHealth.
    wait_for_live_subscriptions(env, page, "the console's two subscriptions live", |n| {
        n >= 2
    })
    .await;
    wait_for_host_baseline(&env.sim).await;

    let row = page
        .js(
            "const tr = document.querySelector('#hosts-table tbody tr[data-host-id]'); \
             window.dfgraphTestMarker = 'same page'; \
             return { id: tr.dataset.hostId, hostname: tr.querySelector('td.hostname').textContent };",
            vec![],
        )
        .await;
    let id = row["id"].as_str().expect("a host id").to_owned();
    let renamed = format!("{}-renamed", row["hostname"].as_str().expect("a hostname"));
    let changed_at = Instant::now();
    rename_host(&env.sim, &id, &renamed);
    page.wait_for(
        &format!("host {id} renamed to {renamed} in the hosts table"),
        WATCH_INTERVAL * 2,
        "const tr = [...document.querySelectorAll('#hosts-table tbody tr')] \
           .find((r) => r.dataset.hostId === arguments[0]); \
         return tr && tr.querySelector('td.hostname').textContent === arguments[1];",
        vec![json!(id), json!(renamed)],
    )
    .await;
    let latency = changed_at.elapsed();
    println!("host rename shown in the table after {latency:?}");

    let same_page = page
        .js(
            "return window.dfgraphTestMarker === 'same page' \
               && performance.getEntriesByType('navigation').length === 1;",
            vec![],
        )
        .await;
    assert_eq!(same_page, true, "the page reloaded to show the change");
    let feed = page
        .js(
            "const li = [...document.querySelectorAll('#event-feed li')] \
               .find((l) => l.dataset.hostId === arguments[0]); \
             return li && { kind: li.dataset.kind, \
                            host: li.querySelector('.host').textContent, \
                            fields: li.querySelector('.fields')?.textContent };",
            vec![json!(id)],
        )
        .await;
    assert_eq!(
        feed,
        json!({"kind": "UPDATED", "host": renamed, "fields": "hostname"}),
        "the live event feed"
    );
    let marked = page
        .js(
            "const tr = [...document.querySelectorAll('#hosts-table tbody tr')] \
               .find((r) => r.dataset.hostId === arguments[0]); \
             return tr.querySelector('td.hostname').classList.contains('changed');",
            vec![json!(id)],
        )
        .await;
    assert_eq!(marked, true, "the changed cell is highlighted");
    page.screenshot("02-host-changed").await;
    page.screenshot_sized("console-top", 1440, 1100).await;
}

/// Step 3: Looking up a task and one of its peers shows them, then follows
/// their changes.
/// Step 2b: a host that stops answering its health service (its
/// scheduler still lists it) is marked in the table and counted in the
/// overview; back, it is not.
async fn an_unreachable_host_is_marked_and_counted(env: &TestEnv, page: &Page) {
    let id = page
        .js(
            "return document.querySelector('#hosts-table tbody tr[data-host-id]').dataset.hostId;",
            vec![],
        )
        .await;
    let id = id.as_str().expect("a host row").to_owned();
    page.wait_for(
        "the overview's unreachable count 0 with every host probed",
        LOAD,
        "return document.querySelector('#host-unreachable').textContent === '0'            && document.querySelector(`tr[data-host-id=\"${arguments[0]}\"]`)?.dataset.liveness === 'REACHABLE';",
        vec![json!(id)],
    )
    .await;
    assert!(env.sim.stop_host(&id).await, "{id} stops");
    page.wait_for(
        "the stopped host marked unreachable and counted",
        LOAD,
        "const tr = document.querySelector(`tr[data-host-id=\"${arguments[0]}\"]`); \
         return tr?.dataset.liveness === 'UNREACHABLE' \
           && tr.classList.contains('unreachable') \
           && tr.querySelector('td.hostname .badge.unreachable')?.textContent === 'unreachable' \
           && document.querySelector('#host-unreachable').textContent === '1' \
           && [...document.querySelectorAll('#event-feed li[data-kind=\"UNREACHABLE\"]')] \
                .some((li) => li.dataset.hostId === arguments[0]);",
        vec![json!(id)],
    )
    .await;
    page.screenshot("console-unreachable-host").await;
    assert!(env.sim.resume_host(&id).await, "{id} comes back");
    page.wait_for(
        "the host reachable again and no longer counted",
        LOAD,
        "const tr = document.querySelector(`tr[data-host-id=\"${arguments[0]}\"]`); \
         return tr?.dataset.liveness === 'REACHABLE' \
           && !tr.classList.contains('unreachable') \
           && !tr.querySelector('.badge') \
           && document.querySelector('#host-unreachable').textContent === '0';",
        vec![json!(id)],
    )
    .await;
}

async fn task_and_peer_lookup_follow_changes(env: &TestEnv, page: &Page) {
    let cluster = env.sim.cluster_ids()[0];
    let peer = env
        .sim
        .peers(cluster)
        .into_iter()
        .find(|p| p.task.is_some() && p.host.is_some())
        .expect("a peer with its task and host in the simulator");
    let task = peer.task.clone().expect("the peer's task");

    page.type_into("#task-id", &task.id).await;
    page.click("#task-id-form button[type=submit]").await;
    page.wait_for(
        // Watched means the subscription has reported the current state:
        // a change made before that would arrive as the current state, not
        // as a transition.
        &format!("task {} shown and watched", task.id),
        LOAD,
        "const el = document.querySelector('#task-result'); \
         return el.dataset.taskId === arguments[0] \
           && el.querySelector('dd[data-field=rawState]')?.textContent === arguments[1] \
           && document.querySelector('#task-live').dataset.state === 'live' \
           && [...document.querySelectorAll('#task-events li')] \
                .some((li) => li.textContent.includes('current:'));",
        vec![json!(task.id), json!(task.state)],
    )
    .await;

    page.type_into("#peer-id", &peer.id).await;
    page.type_into("#peer-task-id", &task.id).await;
    page.click("#peer-form button[type=submit]").await;
    page.wait_for(
        &format!("peer {} shown and watched", peer.id),
        LOAD,
        "const el = document.querySelector('#peer-result'); \
         return el.querySelector('dd[data-field=id]')?.textContent === arguments[0] \
           && el.querySelector('dd[data-field=rawState]')?.textContent === arguments[1] \
           && document.querySelector('#peer-live').dataset.state === 'live' \
           && [...document.querySelectorAll('#peer-events li')] \
                .some((li) => li.textContent.includes('current:'));",
        vec![json!(peer.id), json!(peer.state)],
    )
    .await;

    // A peer's new state changes the peer and, recomputed, its task.
    let peer_state = if peer.state == "Running" {
        "Failed"
    } else {
        "Running"
    };
    assert!(env.sim.set_peer_state(&peer.id, peer_state));
    page.wait_for(
        &format!(
            "peer {} shown as {peer_state}, with the transition logged",
            peer.id
        ),
        LOAD,
        "const el = document.querySelector('#peer-result'); \
         return el.querySelector('dd[data-field=rawState]')?.textContent === arguments[0] \
           && [...document.querySelectorAll('#peer-events li')] \
                .some((li) => li.textContent.includes(`→ ${arguments[1]}`));",
        vec![json!(peer_state), json!(peer_state.to_uppercase())],
    )
    .await;

    let task_state = if task.state == "Failed" {
        "Succeeded"
    } else {
        "Failed"
    };
    assert!(env.sim.set_task_state(&task.id, task_state));
    page.wait_for(
        &format!("task {} shown as {task_state}", task.id),
        LOAD,
        "const el = document.querySelector('#task-result'); \
         return el.querySelector('dd[data-field=rawState]')?.textContent === arguments[0] \
           && [...document.querySelectorAll('#task-events li')] \
                .some((li) => li.textContent.includes('state'));",
        vec![json!(task_state)],
    )
    .await;
    page.screenshot("03-lookup").await;
}

/// The text of GraphiQL's result pane.
const GRAPHIQL_RESULT: &str = "const cm = document.querySelector('.graphiql-response .CodeMirror')?.CodeMirror; \
     return cm ? cm.getValue() : null;";

/// Step 4: GraphiQL, offline too, runs a query and a subscription.
async fn graphiql_runs_a_query_and_a_subscription(env: &TestEnv, page: &Page, origin: &str) {
    let total = host_total(&env.sim);
    page.goto(&format!("{origin}/graphiql")).await;
    page.wait_for(
        "GraphiQL's query editor",
        LOAD,
        "return !!document.querySelector('.graphiql-query-editor .CodeMirror')?.CodeMirror \
           && !!document.querySelector('.graphiql-execute-button');",
        vec![],
    )
    .await;
    page.assert_loaded_only_from(origin, "GraphiQL").await;

    set_graphiql_query(page, "{ hostStats { total } }").await;
    page.click(".graphiql-execute-button").await;
    page.wait_for(
        &format!("GraphiQL showing hostStats.total = {total}"),
        LOAD,
        &format!(
            "const text = (() => {{ {GRAPHIQL_RESULT} }})(); \
             try {{ return JSON.parse(text).data.hostStats.total === arguments[0]; }} \
             catch {{ return false; }}"
        ),
        vec![json!(total)],
    )
    .await;
    page.screenshot("04-graphiql-query").await;

    // Leaving the console ended its subscriptions; GraphiQL's is the one.
    wait_for_live_subscriptions(env, page, "the console's subscriptions ended", |n| n == 0).await;
    set_graphiql_query(
        page,
        "subscription {\n  hostEvents {\n    kind\n    host { id hostname }\n    changedFields\n  }\n}",
    )
    .await;
    page.click(".graphiql-execute-button").await;
    wait_for_live_subscriptions(env, page, "GraphiQL's subscription live", |n| n == 1).await;
    wait_for_host_baseline(&env.sim).await;

    let host = env.sim.hosts(env.sim.cluster_ids()[1]).remove(0);
    let renamed = format!("{}-seen-in-graphiql", host.hostname);
    rename_host(&env.sim, &host.id, &renamed);
    page.wait_for(
        &format!("GraphiQL showing the hostEvents event renaming {}", host.id),
        LOAD,
        &format!(
            "const text = (() => {{ {GRAPHIQL_RESULT} }})(); \
             try {{ \
               const e = JSON.parse(text).data.hostEvents; \
               return e.kind === 'UPDATED' && e.host.id === arguments[0] \
                 && e.host.hostname === arguments[1]; \
             }} catch {{ return false; }}"
        ),
        vec![json!(host.id), json!(renamed)],
    )
    .await;
    page.screenshot("05-graphiql-subscription").await;
}

/// Replaces the text of GraphiQL's query editor (CodeMirror 5), as typing
/// would, and waits until GraphiQL has parsed it (it does so 100 ms after
/// a change; run before that, it would run the previous document).
async fn set_graphiql_query(page: &Page, query: &str) {
    page.js(
        "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(arguments[0]);",
        vec![json!(query)],
    )
    .await;
    page.wait_for(
        "GraphiQL parsing the new query",
        LOAD,
        "const cm = document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror; \
         return cm.documentAST?.loc?.source?.body === arguments[0];",
        vec![json!(query)],
    )
    .await;
}

// ---------- history ----------

/// A hostname a scheduler could report: non-ASCII, and markup that would
/// run if the console put it into the page as HTML.
const HOSTILE: &str = "<img src=x onerror=\"window.dfgraphPwned=1\">höst-ß-日本";

/// The `JOINED`/`LEFT` events of host `id` in the log, oldest first, and
/// whether an `UPDATED` event changed its hostname.
async fn logged_moves(env: &TestEnv, id: &str) -> (Vec<String>, bool) {
    let data = query(
        &env.gateway.url(),
        "query($id: ID) { hostEventLog(hostId: $id, first: 100) { events { kind changedFields } } }",
        json!({"id": id}),
    )
    .await;
    let events = data["hostEventLog"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let renamed = events.iter().any(|e| {
        e["kind"] == "UPDATED"
            && e["changedFields"]
                .as_array()
                .is_some_and(|f| f.contains(&json!("hostname")))
    });
    let mut moves: Vec<String> = events
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| matches!(*k, "JOINED" | "LEFT"))
        .map(str::to_owned)
        .collect();
    moves.reverse();
    (moves, renamed)
}

/// Waits until the log holds `moves` (oldest first) for host `id`.
async fn wait_logged(env: &TestEnv, id: &str, moves: &[&str]) {
    let deadline = Instant::now() + LOAD;
    loop {
        let (logged, _) = logged_moves(env, id).await;
        if logged == moves {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the log did not reach {moves:?} for {id} within {LOAD:?}: {logged:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host the history steps restart.
struct Flapping {
    cluster: u64,
    host: dfgraph::proto::common::v2::Host,
}

/// The console's feed entries of host `arguments[0]` from `arguments[1]`
/// ('log' or 'live'), newest first: kind, hostname shown, cursor.
const FEED_OF_HOST: &str = "return [...document.querySelectorAll('#event-feed li')] \
       .filter((li) => li.dataset.hostId === arguments[0] && li.dataset.source === arguments[1] \
                       && (li.dataset.kind === 'JOINED' || li.dataset.kind === 'LEFT')) \
       .map((li) => ({ kind: li.dataset.kind, host: li.querySelector('.host').textContent, \
                       cursor: li.dataset.cursor }));";

/// Step 6: a host (with a hostile, non-ASCII hostname) left and rejoined
/// three times while no console was open. Opened, the console shows it in
/// its recent changes (from the log), first among the flapping hosts of
/// the last hour, and, clicked there, in its detail's history; its name is
/// shown as text, never run as markup.
async fn a_restarting_host_shows_in_the_history(
    env: &TestEnv,
    page: &Page,
    origin: &str,
) -> Flapping {
    let cluster = env.sim.cluster_ids()[0];
    let mut host = env
        .sim
        .hosts(cluster)
        .into_iter()
        .max_by(|a, b| a.hostname.cmp(&b.hostname))
        .expect("cluster has hosts");
    let id = host.id.clone();
    host.hostname = HOSTILE.into();
    env.sim.upsert_host(host.clone());
    let deadline = Instant::now() + LOAD;
    while !logged_moves(env, &id).await.1 {
        assert!(
            Instant::now() < deadline,
            "the rename of {id} not logged within {LOAD:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut moves = Vec::new();
    for _ in 0..3 {
        assert!(env.sim.remove_host(cluster, &id), "{id} leaves");
        moves.push("LEFT");
        wait_logged(env, &id, &moves).await;
        env.sim.upsert_host(host.clone());
        moves.push("JOINED");
        wait_logged(env, &id, &moves).await;
    }

    page.goto(&format!("{origin}/")).await;
    let newest_first: Vec<Value> = ["JOINED", "LEFT"]
        .repeat(3)
        .into_iter()
        .map(|k| json!({"kind": k, "host": HOSTILE}))
        .collect();
    let shown = page
        .wait_for(
            "the host's three leaves and joins in the recent changes, from the log",
            LOAD,
            &format!(
                "const feed = document.querySelector('#event-feed'); \
                 if (!feed.dataset.loaded) return null; \
                 const items = (() => {{ {FEED_OF_HOST} }})(); \
                 return items.length >= 6 ? items : null;"
            ),
            vec![json!(id), json!("log")],
        )
        .await;
    let shown: Vec<Value> = serde_json::from_value(shown).expect("feed items");
    let kinds: Vec<Value> = shown
        .iter()
        .map(|e| json!({"kind": e["kind"], "host": e["host"]}))
        .collect();
    assert_eq!(kinds, newest_first, "the recent changes, newest first");
    let note = page
        .js(
            "const n = document.querySelector('#feed-source'); \
             return { retention: n.dataset.retention, text: n.textContent };",
            vec![],
        )
        .await;
    assert_eq!(
        note,
        json!({"retention": "86400", "text": "from the log (kept 24h00m), then live"}),
        "the feed says where it comes from and how far the log reaches"
    );

    let row = page
        .wait_for(
            "the host first among the flapping hosts, 3 joins and 3 leaves",
            LOAD,
            "const tr = document.querySelector('#churn-table tbody tr'); \
             return tr?.dataset.hostId === arguments[0] \
               && tr.querySelector('td.joins').textContent === '3' \
               && tr.querySelector('td.leaves').textContent === '3' \
               && { hostname: tr.querySelector('td.hostname').textContent, \
                    updates: tr.querySelector('td.updates').textContent };",
            vec![json!(id)],
        )
        .await;
    assert_eq!(row["hostname"], HOSTILE, "the flapping list's hostname");
    assert_ne!(row["updates"], "0", "the rename counted as an update");

    page.click("#churn-table tbody tr").await;
    let history = page
        .wait_for(
            "the host's detail with its history",
            LOAD,
            "const card = document.querySelector('#host-detail'); \
             if (card.hidden || card.dataset.state !== 'ready' || card.dataset.hostId !== arguments[0]) return null; \
             return { title: document.querySelector('#detail-title').textContent, \
                      kinds: [...document.querySelectorAll('#detail-history li')].map((li) => li.dataset.kind), \
                      renamed: [...document.querySelectorAll('#detail-history li[data-kind=UPDATED] .fields')] \
                                 .some((f) => f.textContent.split(', ').includes('hostname')) };",
            vec![json!(id)],
        )
        .await;
    assert_eq!(history["title"], HOSTILE, "the detail's title");
    let moves_shown: Vec<&str> = history["kinds"]
        .as_array()
        .expect("kinds")
        .iter()
        .filter_map(Value::as_str)
        .filter(|k| matches!(*k, "JOINED" | "LEFT"))
        .collect();
    assert_eq!(
        moves_shown,
        ["JOINED", "LEFT"].repeat(3),
        "the detail's history, newest first"
    );
    assert_eq!(
        history["renamed"], true,
        "the rename in the detail's history"
    );

    let injected = page
        .js(
            "return window.dfgraphPwned !== undefined \
               || !!document.querySelector('#event-feed img, #churn-table img, #host-detail img');",
            vec![],
        )
        .await;
    assert_eq!(
        injected, false,
        "a hostname was put into the page as markup"
    );
    page.screenshot("06-history").await;
    Flapping { cluster, host }
}

/// Step 7: the console, its websocket through a proxy, loses the
/// connection; meanwhile the host leaves and rejoins. Reconnected, the
/// feed resumes after the last event it showed: the two missed events
/// appear once each, in order, and nothing shown before repeats.
async fn the_feed_resumes_after_a_websocket_cut(env: &TestEnv, page: &Page, flapping: &Flapping) {
    let id = flapping.host.id.clone();
    let gateway: SocketAddr = env
        .gateway
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("the gateway's address");
    let proxy = Proxy::start(gateway).await;
    page.goto(&format!("http://{}/", proxy.addr)).await;
    page.wait_for(
        "the console through the proxy, its feed loaded and its websocket connected",
        LOAD,
        "return !!document.querySelector('#event-feed').dataset.loaded \
           && document.querySelector('#ws-status').dataset.state === 'connected';",
        vec![],
    )
    .await;
    // The console subscribes right after the websocket's ack.
    wait_for_live_subscriptions(env, page, "the console's subscriptions live", |n| n >= 2).await;
    let before = page.js(FEED_OF_HOST, vec![json!(id), json!("log")]).await;
    page.js("window.dfgraphTestMarker = 'before the cut';", vec![])
        .await;

    // The next bytes either way (the LEFT event) reset the connection.
    proxy.set_mode(Mode::Reset);
    assert!(env.sim.remove_host(flapping.cluster, &id), "{id} leaves");
    page.wait_for(
        "the console's websocket cut",
        LOAD,
        "return document.querySelector('#ws-status').dataset.state !== 'connected';",
        vec![],
    )
    .await;
    let mut moves = ["LEFT", "JOINED"].repeat(3);
    moves.push("LEFT");
    wait_logged(env, &id, &moves).await;
    env.sim.upsert_host(flapping.host.clone());
    moves.push("JOINED");
    wait_logged(env, &id, &moves).await;
    let cut_for = Instant::now();
    proxy.set_mode(Mode::Pass);

    page.wait_for(
        "the missed LEFT and JOINED shown after the reconnect",
        LOAD,
        &format!(
            "if (document.querySelector('#ws-status').dataset.state !== 'connected') return null; \
             const items = (() => {{ {FEED_OF_HOST} }})(); \
             return items.length >= 2;"
        ),
        vec![json!(id), json!("live")],
    )
    .await;
    println!(
        "feed resumed {:?} after the proxy let the console through",
        cut_for.elapsed()
    );
    // Anything told twice would arrive within a few watch intervals.
    tokio::time::sleep(WATCH_INTERVAL * 4).await;
    let resumed = page.js(FEED_OF_HOST, vec![json!(id), json!("live")]).await;
    let resumed: Vec<Value> = serde_json::from_value(resumed).expect("feed items");
    let kinds: Vec<&str> = resumed.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["JOINED", "LEFT"],
        "the missed events, once each, newest first"
    );
    let log = query(
        &env.gateway.url(),
        "query($id: ID) { hostEventLog(hostId: $id, kinds: [JOINED, LEFT], first: 2) { events { cursor } } }",
        json!({"id": id}),
    )
    .await;
    let logged: Vec<&Value> = log["hostEventLog"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["cursor"])
        .collect();
    let shown: Vec<&Value> = resumed.iter().map(|e| &e["cursor"]).collect();
    assert_eq!(shown, logged, "the resumed events are the logged ones");
    let after = page.js(FEED_OF_HOST, vec![json!(id), json!("log")]).await;
    assert_eq!(after, before, "the events shown before the cut, unchanged");
    let state = page
        .js(
            "const cursors = [...document.querySelectorAll('#event-feed li[data-cursor]')] \
               .map((li) => li.dataset.cursor); \
             return { same: window.dfgraphTestMarker === 'before the cut', \
                      unique: new Set(cursors).size === cursors.length };",
            vec![],
        )
        .await;
    assert_eq!(
        state,
        json!({"same": true, "unique": true}),
        "no reload, no event twice"
    );
    page.screenshot("07-resumed").await;
}
