//! The query mixes `dfgraph-bench` sends, named after the scenarios in
//! BENCHMARKS.md.

use serde_json::{Value, json};

use super::BenchError;
use dfgraph_sim::SimCluster;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// The console overview: `hostStats` and the first 50 hosts (S1-S3).
    Overview,
    /// `{ __typename }`: the server's floor, for ratios.
    Trivial,
    /// 500 peers with their host and task in one query (S4).
    Peers,
    /// Filtered, paginated host pages (S5).
    Hosts,
    /// Websocket subscribers receiving host events (S6); see `bench::live`.
    Live,
    /// No gateway: `ListHosts` of every cluster straight from the
    /// simulated schedulers over gRPC, what one cold overview costs them
    /// (S2's floor).
    RawListHosts,
    /// No queries: what watching the host lists costs an idle gateway,
    /// simulator and gateway as processes of their own; see `bench::watch`.
    Watch,
    /// No gateway: pub/sub against a Redis stream read with `XREAD BLOCK`
    /// as the bus between replicas, and the event log's replay rate and
    /// memory; see `bench::bus`.
    Bus,
    /// No queries: how long a stopped host takes to show as UNREACHABLE
    /// at a subscriber, and what probing costs; see `bench::liveness`.
    Liveness,
    /// Exactly once under faults: two replicas, one Redis killed, frozen
    /// and cut off in rotation, subscribers checked against the event log
    /// (pass `--duration 10m`); see `bench::soak`.
    Soak,
}

const OVERVIEW: &str = "{ hostStats { total byVersion { value count } byType { value count } byIdc { value count } }
  hosts(first: 50) { totalCount edges { cursor node { id hostname ip type build { gitVersion } network { idc location } } } } }";

const HOST_PAGE: &str = "query($filter: HostFilter, $after: String) {
  hosts(first: 50, filter: $filter, after: $after, orderBy: { field: CPU_PERCENT, direction: DESC }) {
    totalCount edges { node { id hostname cpu { percent } memory { usedPercent } } } } }";

impl Scenario {
    /// The request bodies a run cycles through.
    pub fn requests(self, sim: Option<&SimCluster>) -> Result<Vec<Value>, BenchError> {
        Ok(match self {
            Scenario::Overview => vec![json!({ "query": OVERVIEW })],
            Scenario::Trivial => vec![json!({ "query": "{ __typename }" })],
            Scenario::Live
            | Scenario::RawListHosts
            | Scenario::Watch
            | Scenario::Bus
            | Scenario::Liveness
            | Scenario::Soak => {
                return Err(BenchError::Scenario(format!(
                    "the {self:?} scenario sends no GraphQL queries"
                )));
            }
            Scenario::Hosts => {
                let filters = [
                    json!({ "idcs": ["idc-a"] }),
                    json!({ "types": ["NORMAL"], "versions": ["v2.1.61"] }),
                    json!({ "search": "dfdaemon-1" }),
                    json!({ "schedulerClusterIds": ["1"], "os": ["linux"] }),
                ];
                filters
                    .into_iter()
                    .map(|filter| json!({ "query": HOST_PAGE, "variables": { "filter": filter } }))
                    .collect()
            }
            Scenario::Peers => {
                let sim = sim.ok_or_else(|| {
                    BenchError::Scenario("the peers scenario needs the in-process cluster".into())
                })?;
                let keys: Vec<Value> = sim
                    .cluster_ids()
                    .into_iter()
                    .flat_map(|c| sim.peers(c))
                    .take(500)
                    .filter_map(|p| {
                        Some(json!({
                            "hostId": p.host.as_ref()?.id,
                            "taskId": p.task.as_ref()?.id,
                            "peerId": p.id,
                        }))
                    })
                    .collect();
                vec![json!({
                    "query": "query($keys: [PeerKeyInput!]!) { peers(keys: $keys) { id state host { id hostname } task { id state peerCount } } }",
                    "variables": { "keys": keys },
                })]
            }
        })
    }
}
