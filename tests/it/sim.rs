//! The simulated Dragonfly cluster, exercised over real gRPC on TCP with the
//! generated clients.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use dfgraph::proto::manager::v2::ListSchedulersRequest;
use dfgraph::proto::manager::v2::manager_client::ManagerClient;
use dfgraph::proto::scheduler::v2::scheduler_client::SchedulerClient;
use dfgraph::proto::scheduler::v2::{
    DeleteHostRequest, DeletePeerRequest, DeleteTaskRequest, ListHostsRequest, StatPeerRequest,
    StatTaskRequest,
};
use dfgraph_sim::{Method, SimCluster, SimConfig};
use hashring::HashRing;
use tonic::Code;
use tonic::transport::Channel;

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.map(|_| ()).unwrap_err().code()
}

fn small() -> SimConfig {
    SimConfig {
        clusters: 2,
        schedulers_per_cluster: 3,
        hosts: 40,
        tasks: 30,
        peers_per_task: 4,
        seed: 7,
        tick_interval: None,
        ..SimConfig::default()
    }
}

async fn client(addr: SocketAddr) -> SchedulerClient<Channel> {
    SchedulerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX)
}

/// Every host the scheduler at `addr` lists.
async fn listed_hosts(addr: SocketAddr) -> Vec<dfgraph::proto::common::v2::Host> {
    client(addr)
        .await
        .list_hosts(ListHostsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hosts
}

fn stat_task(task_id: &str) -> StatTaskRequest {
    StatTaskRequest {
        host_id: "any-host".into(),
        task_id: task_id.into(),
    }
}

/// The owner as a dfdaemon computes it, independently of the simulator.
fn ring_owner(addrs: &[SocketAddr], task_id: &str) -> SocketAddr {
    let mut ring: HashRing<SocketAddr> = HashRing::new();
    for a in addrs {
        ring.add(*a);
    }
    *ring.get(&task_id[0..5].to_string()).unwrap()
}

fn cluster_addrs(sim: &SimCluster, cluster_id: u64) -> Vec<SocketAddr> {
    sim.schedulers()
        .into_iter()
        .filter(|s| s.cluster_id == cluster_id)
        .map(|s| s.addr)
        .collect()
}

#[tokio::test]
async fn list_hosts_agree_within_a_cluster_and_differ_between_clusters() {
    let sim = SimCluster::start(small()).await.unwrap();
    assert_eq!(sim.cluster_ids(), vec![1, 2]);
    assert_eq!(sim.schedulers().len(), 6);
    let mut per_cluster = Vec::new();
    for cluster in sim.cluster_ids() {
        let mut seen: Option<Vec<String>> = None;
        for addr in cluster_addrs(&sim, cluster) {
            let hosts = client(addr)
                .await
                .list_hosts(ListHostsRequest { r#type: None })
                .await
                .unwrap()
                .into_inner()
                .hosts;
            assert_eq!(hosts.len(), 20);
            assert!(hosts.iter().all(|h| h.scheduler_cluster_id == cluster));
            let ids: Vec<String> = hosts.iter().map(|h| h.id.clone()).collect();
            if let Some(prev) = &seen {
                assert_eq!(prev, &ids);
            }
            seen = Some(ids);
        }
        let ids = seen.unwrap();
        let expected: Vec<String> = sim.hosts(cluster).iter().map(|h| h.id.clone()).collect();
        assert_eq!(ids, expected);
        per_cluster.push(ids.into_iter().collect::<BTreeSet<_>>());
    }
    assert!(per_cluster[0].is_disjoint(&per_cluster[1]));

    // The type filter.
    let addr = cluster_addrs(&sim, 1)[0];
    let seeds = client(addr)
        .await
        .list_hosts(ListHostsRequest { r#type: Some(1) })
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert!(!seeds.is_empty());
    assert!(seeds.iter().all(|h| h.r#type == 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn stat_task_answers_on_ring_owner_only() {
    let sim = SimCluster::start(small()).await.unwrap();
    for cluster in sim.cluster_ids() {
        let addrs = cluster_addrs(&sim, cluster);
        let tasks = sim.tasks(cluster);
        assert_eq!(tasks.len(), 15);
        for task in tasks.iter().take(6) {
            let owner = ring_owner(&addrs, &task.id);
            assert_eq!(sim.task_owner(&task.id), Some(owner));
            for &addr in &addrs {
                let got = client(addr).await.stat_task(stat_task(&task.id)).await;
                if addr == owner {
                    let got = got.unwrap().into_inner();
                    assert_eq!(got.id, task.id);
                    assert_eq!(got.url, task.url);
                    assert_eq!(got.id.len(), 64);
                    assert!(got.id.chars().all(|c| c.is_ascii_hexdigit()));
                } else {
                    assert_eq!(got.unwrap_err().code(), Code::NotFound);
                }
            }
        }
    }
    // Other clusters' schedulers never hold it.
    let task = &sim.tasks(1)[0];
    for addr in cluster_addrs(&sim, 2) {
        let err = client(addr)
            .await
            .stat_task(stat_task(&task.id))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn move_task_makes_the_ring_owner_answer_not_found() {
    let sim = SimCluster::start(small()).await.unwrap();
    let addrs = cluster_addrs(&sim, 1);
    let task = sim.tasks(1)[0].clone();
    let owner = sim.task_owner(&task.id).unwrap();
    let other = *addrs.iter().find(|a| **a != owner).unwrap();
    assert!(sim.move_task(&task.id, other));
    assert!(!sim.move_task(&task.id, cluster_addrs(&sim, 2)[0]));
    assert!(!sim.move_task("nope", other));
    assert_eq!(sim.task_owner(&task.id), Some(other));
    let err = client(owner)
        .await
        .stat_task(stat_task(&task.id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let got = client(other)
        .await
        .stat_task(stat_task(&task.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, task.id);
    sim.shutdown().await;
}

#[tokio::test]
async fn stat_peer_embeds_host_and_task() {
    let sim = SimCluster::start(small()).await.unwrap();
    let peers = sim.peers(2);
    assert_eq!(peers.len(), 15 * 4);
    for want in peers.iter().take(5) {
        let task = want.task.as_ref().unwrap();
        let host = want.host.as_ref().unwrap();
        let owner = sim.task_owner(&task.id).unwrap();
        let got = client(owner)
            .await
            .stat_peer(StatPeerRequest {
                host_id: host.id.clone(),
                task_id: task.id.clone(),
                peer_id: want.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.id, want.id);
        assert_eq!(got.state, want.state);
        assert_eq!(got.task.as_ref().unwrap().id, task.id);
        assert_eq!(got.host.as_ref().unwrap().id, host.id);
        assert_eq!(got.host.as_ref().unwrap().scheduler_cluster_id, 2);
        assert!(
            got.id
                .starts_with(&format!("{}-{}-", host.ip, host.hostname))
        );
        assert!(got.created_at.is_some() && got.updated_at.is_some());
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_ids_are_invalid_argument() {
    let sim = SimCluster::start(small()).await.unwrap();
    let mut c = client(sim.schedulers()[0].addr).await;
    assert_eq!(
        code(c.stat_task(stat_task("")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.stat_peer(StatPeerRequest {
                host_id: "h".into(),
                task_id: "t".into(),
                peer_id: String::new(),
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.delete_peer(DeletePeerRequest {
                host_id: "h".into(),
                task_id: String::new(),
                peer_id: "p".into(),
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.delete_task(DeleteTaskRequest {
                host_id: "h".into(),
                task_id: String::new(),
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.delete_host(DeleteHostRequest {
                host_id: String::new()
            })
            .await
        ),
        Code::InvalidArgument
    );
    // Unknown but well-formed ids are NotFound.
    assert_eq!(
        code(c.stat_task(stat_task("0000000")).await),
        Code::NotFound
    );
    assert_eq!(
        code(
            c.delete_host(DeleteHostRequest {
                host_id: "nope".into()
            })
            .await
        ),
        Code::NotFound
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn deletes_remove_state() {
    let sim = SimCluster::start(small()).await.unwrap();
    let peer = sim.peers(1)[0].clone();
    let task = peer.task.clone().unwrap();
    let owner = sim.task_owner(&task.id).unwrap();
    let mut c = client(owner).await;
    c.delete_peer(DeletePeerRequest {
        host_id: peer.host.as_ref().unwrap().id.clone(),
        task_id: task.id.clone(),
        peer_id: peer.id.clone(),
    })
    .await
    .unwrap();
    assert!(sim.peers(1).iter().all(|p| p.id != peer.id));
    let t = sim.tasks(1).into_iter().find(|t| t.id == task.id).unwrap();
    assert_eq!(t.peer_count, 3);

    c.delete_task(DeleteTaskRequest {
        host_id: "h".into(),
        task_id: task.id.clone(),
    })
    .await
    .unwrap();
    assert!(sim.task_owner(&task.id).is_none());
    assert_eq!(
        c.stat_task(stat_task(&task.id)).await.unwrap_err().code(),
        Code::NotFound
    );

    // DeleteHost on any scheduler removes the host from the whole cluster.
    let host = sim.hosts(1)[5].clone();
    let addrs = cluster_addrs(&sim, 1);
    client(addrs[2])
        .await
        .delete_host(DeleteHostRequest {
            host_id: host.id.clone(),
        })
        .await
        .unwrap();
    for addr in addrs {
        let hosts = client(addr)
            .await
            .list_hosts(ListHostsRequest { r#type: None })
            .await
            .unwrap()
            .into_inner()
            .hosts;
        assert_eq!(hosts.len(), 19);
        assert!(hosts.iter().all(|h| h.id != host.id));
    }
    assert!(
        sim.peers(1)
            .iter()
            .all(|p| p.host.as_ref().unwrap().id != host.id)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn counters_count_every_rpc() {
    let sim = SimCluster::start(small()).await.unwrap();
    let a = sim.schedulers()[0].addr;
    let b = sim.schedulers()[4].addr;
    let mut ca = client(a).await;
    for _ in 0..3 {
        ca.list_hosts(ListHostsRequest::default()).await.unwrap();
    }
    let _ = ca.stat_task(stat_task("")).await; // failed calls count too
    let _ = client(b).await.stat_task(stat_task("abcdef")).await;
    assert_eq!(sim.rpc_count(a, Method::ListHosts), 3);
    assert_eq!(sim.rpc_count(a, Method::StatTask), 1);
    assert_eq!(sim.rpc_count(b, Method::StatTask), 1);
    assert_eq!(sim.rpc_count(b, Method::ListHosts), 0);
    assert_eq!(sim.total_rpc_count(Method::StatTask), 2);
    assert_eq!(sim.total_rpc_count(Method::ListHosts), 3);
    sim.reset_counters();
    assert_eq!(sim.total_rpc_count(Method::ListHosts), 0);
    assert_eq!(sim.rpc_count(a, Method::ListHosts), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn set_error_latency_and_hang() {
    let sim = SimCluster::start(small()).await.unwrap();
    let addr = sim.schedulers()[1].addr;
    let mut c = client(addr).await;

    sim.set_error(addr, Some(Code::Unavailable));
    let err = c.list_hosts(ListHostsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    sim.set_error(addr, Some(Code::ResourceExhausted));
    let err = c.stat_task(stat_task("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    sim.set_error(addr, None);
    c.list_hosts(ListHostsRequest::default()).await.unwrap();
    assert_eq!(sim.rpc_count(addr, Method::ListHosts), 2);

    sim.set_latency(addr, Duration::from_millis(150));
    let started = std::time::Instant::now();
    c.list_hosts(ListHostsRequest::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    sim.set_latency(addr, Duration::ZERO);

    sim.set_hang(addr, true);
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        c.list_hosts(ListHostsRequest::default()),
    )
    .await;
    assert!(hung.is_err(), "call should time out while hung");
    assert_eq!(sim.rpc_count(addr, Method::ListHosts), 4);

    // A call in flight resumes once the hang is cleared.
    let mut c2 = c.clone();
    let pending =
        tokio::spawn(async move { c2.list_hosts(ListHostsRequest::default()).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished());
    sim.set_hang(addr, false);
    tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Other schedulers are unaffected by faults on one.
    sim.set_hang(addr, true);
    client(sim.schedulers()[0].addr)
        .await
        .list_hosts(ListHostsRequest::default())
        .await
        .unwrap();
    // Shutdown does not wait forever on hung calls.
    let mut c3 = c.clone();
    let hung = tokio::spawn(async move { c3.list_hosts(ListHostsRequest::default()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    tokio::time::timeout(Duration::from_secs(10), sim.shutdown())
        .await
        .unwrap();
    let _ = hung.await;
}

#[tokio::test]
async fn same_seed_same_workload() {
    let a = SimCluster::start(small()).await.unwrap();
    let b = SimCluster::start(small()).await.unwrap();
    let c = SimCluster::start(SimConfig { seed: 8, ..small() })
        .await
        .unwrap();
    let ids = |s: &SimCluster| {
        let mut out = Vec::new();
        for cl in s.cluster_ids() {
            out.extend(s.hosts(cl).into_iter().map(|h| h.id));
            out.extend(s.tasks(cl).into_iter().map(|t| t.id));
        }
        out
    };
    let states = |s: &SimCluster| {
        let mut out = Vec::new();
        for cl in s.cluster_ids() {
            out.extend(s.hosts(cl).into_iter().map(|h| h.id));
            out.extend(
                s.tasks(cl)
                    .into_iter()
                    .map(|t| format!("{}={}", t.id, t.state)),
            );
            out.extend(
                s.peers(cl)
                    .into_iter()
                    .map(|p| format!("{}={}", p.id, p.state)),
            );
        }
        out
    };
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c));
    for _ in 0..25 {
        a.tick();
        b.tick();
    }
    assert_eq!(states(&a), states(&b));
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn tick_moves_the_workload_and_keeps_tasks_consistent() {
    let sim = SimCluster::start(small()).await.unwrap();
    let before: Vec<String> = sim.peers(1).into_iter().map(|p| p.state).collect();
    for _ in 0..5 {
        sim.tick();
    }
    let after: Vec<String> = sim.peers(1).into_iter().map(|p| p.state).collect();
    assert_ne!(before, after);
    for cl in sim.cluster_ids() {
        let peers = sim.peers(cl);
        for t in sim.tasks(cl) {
            let mine: Vec<_> = peers
                .iter()
                .filter(|p| p.task.as_ref().unwrap().id == t.id)
                .collect();
            let live = mine.iter().filter(|p| p.state != "Leave").count();
            assert_eq!(t.peer_count as usize, live);
            assert_eq!(
                t.has_available_peer,
                mine.iter().any(|p| p.state == "Succeeded")
            );
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn mutation_hooks_show_on_the_wire() {
    let sim = SimCluster::start(small()).await.unwrap();
    let peer = sim.peers(1)[0].clone();
    let task_id = peer.task.as_ref().unwrap().id.clone();
    let owner = sim.task_owner(&task_id).unwrap();
    let mut c = client(owner).await;
    let req = StatPeerRequest {
        host_id: peer.host.as_ref().unwrap().id.clone(),
        task_id: task_id.clone(),
        peer_id: peer.id.clone(),
    };

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(sim.set_peer_state(&peer.id, "Succeeded"));
    let got = c.stat_peer(req.clone()).await.unwrap().into_inner();
    assert_eq!(got.state, "Succeeded");
    let ts = |t: &prost_types::Timestamp| (t.seconds, t.nanos);
    assert!(ts(got.updated_at.as_ref().unwrap()) > ts(peer.updated_at.as_ref().unwrap()));
    assert!(got.task.as_ref().unwrap().has_available_peer);
    assert_eq!(got.task.as_ref().unwrap().state, "Succeeded");
    assert!(!sim.set_peer_state("nope", "Running"));

    assert!(sim.set_task_state(&task_id, "Failed"));
    let t = c.stat_task(stat_task(&task_id)).await.unwrap().into_inner();
    assert_eq!(t.state, "Failed");
    assert!(!sim.set_task_state("nope", "Failed"));

    let mut host = sim.hosts(1)[0].clone();
    host.hostname = "renamed".into();
    sim.upsert_host(host.clone());
    let mut new_host = host.clone();
    new_host.id = "10.255.255.1-new".into();
    sim.upsert_host(new_host.clone());
    let hosts = c
        .list_hosts(ListHostsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hosts;
    assert_eq!(hosts.len(), 21);
    assert!(
        hosts
            .iter()
            .any(|h| h.id == host.id && h.hostname == "renamed")
    );
    assert!(sim.remove_host(1, &new_host.id));
    assert!(!sim.remove_host(1, &new_host.id));
    assert_eq!(sim.hosts(1).len(), 20);

    // A host that moves cluster leaves the old one, peers included.
    let mut moving = sim.hosts(1)[3].clone();
    moving.scheduler_cluster_id = 2;
    sim.upsert_host(moving.clone());
    assert!(sim.hosts(1).iter().all(|h| h.id != moving.id));
    assert!(sim.hosts(2).iter().any(|h| h.id == moving.id));
    assert!(
        sim.peers(1)
            .iter()
            .all(|p| p.host.as_ref().unwrap().id != moving.id)
    );
    // Unknown cluster: ignored.
    moving.scheduler_cluster_id = 9;
    sim.upsert_host(moving.clone());
    assert!(sim.hosts(2).iter().any(|h| h.id == moving.id));
    sim.shutdown().await;
}

#[tokio::test]
async fn manager_lists_schedulers_per_cluster() {
    let sim = SimCluster::start(small()).await.unwrap();
    let mut m = ManagerClient::connect(format!("http://{}", sim.manager_addr()))
        .await
        .unwrap();
    let list = |cluster: u64| ListSchedulersRequest {
        scheduler_cluster_id: cluster,
        ..Default::default()
    };
    let all = m
        .list_schedulers(list(0))
        .await
        .unwrap()
        .into_inner()
        .schedulers;
    assert_eq!(all.len(), 6);
    for cluster in sim.cluster_ids() {
        let got = m
            .list_schedulers(list(cluster))
            .await
            .unwrap()
            .into_inner()
            .schedulers;
        let addrs: Vec<SocketAddr> = got
            .iter()
            .map(|s| SocketAddr::new(s.ip.parse().unwrap(), s.port as u16))
            .collect();
        assert_eq!(addrs, cluster_addrs(&sim, cluster));
        assert!(got.iter().all(|s| s.scheduler_cluster_id == cluster));
        assert!(got.iter().all(|s| s.state == "active"));
    }
    let none = m.list_schedulers(list(99)).await.unwrap().into_inner();
    assert!(none.schedulers.is_empty());
    assert_eq!(sim.rpc_count(sim.manager_addr(), Method::ListSchedulers), 4);
    assert_eq!(sim.total_rpc_count(Method::ListSchedulers), 4);

    sim.set_error(sim.manager_addr(), Some(Code::Internal));
    let err = m.list_schedulers(list(0)).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    sim.shutdown().await;
}

#[tokio::test]
async fn background_ticker_moves_state() {
    let sim = SimCluster::start(SimConfig {
        tick_interval: Some(Duration::from_millis(20)),
        ..small()
    })
    .await
    .unwrap();
    let before: Vec<String> = sim.peers(1).into_iter().map(|p| p.state).collect();
    let mut moved = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now: Vec<String> = sim.peers(1).into_iter().map(|p| p.state).collect();
        if now != before {
            moved = true;
            break;
        }
    }
    assert!(moved);
    sim.shutdown().await;
}

#[tokio::test]
async fn fixed_ports_and_bad_config() {
    assert!(
        SimCluster::start(SimConfig {
            clusters: 0,
            ..small()
        })
        .await
        .is_err()
    );
    assert!(
        SimCluster::start(SimConfig {
            tick_interval: Some(Duration::ZERO),
            ..small()
        })
        .await
        .is_err()
    );
    // Find a free base by binding ephemerally, then release it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = probe.local_addr().unwrap().port();
    drop(probe);
    let Ok(sim) = SimCluster::start(SimConfig {
        clusters: 1,
        schedulers_per_cluster: 2,
        base_port: base,
        ..small()
    })
    .await
    else {
        // Ports taken by someone else meanwhile; nothing to assert.
        return;
    };
    let ports: Vec<u16> = sim.schedulers().iter().map(|s| s.addr.port()).collect();
    assert_eq!(ports, vec![base, base + 1]);
    assert_eq!(sim.manager_addr().port(), base + 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn scales_to_many_hosts() {
    let sim = SimCluster::start(SimConfig {
        clusters: 4,
        schedulers_per_cluster: 2,
        hosts: 20_000,
        tasks: 400,
        peers_per_task: 10,
        tick_interval: None,
        // One listening socket per host would pass the file limit.
        host_health: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let hosts = listed_hosts(sim.schedulers()[0].addr).await;
    assert_eq!(hosts.len(), 5_000);
    for _ in 0..3 {
        sim.tick();
    }
    sim.shutdown().await;
}

/// The benchmark scale: 100k hosts over 10 clusters. Ignored by default
/// (slow in debug builds); run with `cargo test --test sim -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn benchmark_scale_100k_hosts() {
    let started = std::time::Instant::now();
    let sim = SimCluster::start(SimConfig {
        clusters: 10,
        schedulers_per_cluster: 3,
        hosts: 100_000,
        tasks: 10_000,
        peers_per_task: 10,
        tick_interval: None,
        host_health: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    eprintln!("start: {:?}", started.elapsed());
    let mut c = client(sim.schedulers()[0].addr).await;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let hosts = c
            .list_hosts(ListHostsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .hosts;
        assert_eq!(hosts.len(), 10_000);
        eprintln!("list_hosts: {:?}", t.elapsed());
    }
    for _ in 0..3 {
        let t = std::time::Instant::now();
        sim.tick();
        eprintln!("tick: {:?}", t.elapsed());
    }
    let t = std::time::Instant::now();
    let n = sim.hosts(1).len();
    eprintln!("hosts snapshot ({n}): {:?}", t.elapsed());
    sim.shutdown().await;
}

/// One `grpc.health.v1.Health/Check` to `addr` within `within`: the status
/// code of the call, or `None` when nothing answered in time.
async fn health_check(addr: SocketAddr, within: Duration) -> Option<Result<i32, Code>> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let call = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|_| Code::Unavailable)?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| s.code())
    };
    tokio::time::timeout(within, call).await.ok()
}

#[tokio::test]
async fn hosts_serve_grpc_health_on_their_loopback_address() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let sim = SimCluster::start(small()).await.unwrap();
    let hosts = sim.hosts(1);
    assert_eq!(hosts.len(), 20);
    let mut ips = BTreeSet::new();
    for host in &hosts {
        let ip: std::net::Ipv4Addr = host.ip.parse().unwrap();
        assert!(ip.is_loopback(), "{ip} is not a loopback address");
        assert!(ips.insert(ip), "{ip} is given to two hosts");
        let addr = SocketAddr::from((ip, u16::try_from(host.port).unwrap()));
        assert_eq!(sim.host_health_addr(&host.id), Some(addr));
    }
    let host = &hosts[3];
    let addr = sim.host_health_addr(&host.id).unwrap();
    let serving = Some(Ok(ServingStatus::Serving as i32));
    let second = Duration::from_secs(1);
    assert_eq!(health_check(addr, second).await, serving);
    assert_eq!(sim.health_checks(&host.id), 1);

    // Stopped silently: refused, still listed by every scheduler.
    assert!(sim.stop_host(&host.id).await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_eq!(
        health_check(addr, second).await,
        Some(Err(Code::Unavailable))
    );
    let listed = listed_hosts(sim.schedulers()[0].addr).await;
    assert!(listed.iter().any(|h| h.id == host.id));

    // Back on the same address.
    assert!(sim.resume_host(&host.id).await);
    assert_eq!(health_check(addr, second).await, serving);

    // Frozen: TCP is accepted, nothing answers; counted all the same.
    sim.reset_health_checks();
    assert!(sim.freeze_host(&host.id).await);
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    assert_eq!(health_check(addr, Duration::from_millis(300)).await, None);
    assert!(sim.resume_host(&host.id).await);
    assert_eq!(health_check(addr, second).await, serving);
    assert_eq!(
        sim.host_mode(&host.id),
        Some(dfgraph_sim::HostMode::Serving)
    );

    // Other hosts never noticed.
    let other = sim.host_health_addr(&hosts[4].id).unwrap();
    assert_eq!(health_check(other, second).await, serving);
    assert!(!sim.stop_host("no-such-host").await);

    // A host that leaves its cluster takes its health service with it.
    assert!(sim.remove_host(1, &hosts[5].id));
    let gone = SocketAddr::from((
        hosts[5].ip.parse::<std::net::Ipv4Addr>().unwrap(),
        u16::try_from(hosts[5].port).unwrap(),
    ));
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(gone).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the health port of a removed host still accepts");
    sim.shutdown().await;
}
