//! Real schedulers' data: the values real dfdaemons send (non-finite
//! percentages, ties, hosts without load figures) reach the console
//! without breaking the schema, and every page walk ends.

use std::collections::BTreeMap;

use crate::support::{TestEnv, small_sim};
use dfgraph::proto::common::v2::{Cpu, Disk, Host, Memory};
use serde_json::{Value, json};

const ORDERS: [&str; 8] = [
    "HOSTNAME",
    "IP",
    "ID",
    "TYPE",
    "VERSION",
    "SCHEDULER_CLUSTER",
    "CPU_PERCENT",
    "MEMORY_USED_PERCENT",
];

const PAGE: &str = r#"
query Page($first: Int, $after: String, $last: Int, $before: String, $orderBy: HostOrder) {
  hosts(first: $first, after: $after, last: $last, before: $before, orderBy: $orderBy) {
    totalCount
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    edges { node { id schedulerClusterId cpu { percent } memory { usedPercent } } }
  }
}"#;

/// A host of cluster 1 whose dfdaemon divided by zero or overflowed.
fn non_finite(id: &str, cpu: f64, memory: f64, disk: f64) -> Host {
    Host {
        id: id.into(),
        hostname: format!("{id}.edge"),
        ip: "10.9.9.9".into(),
        scheduler_cluster_id: 1,
        cpu: Some(Cpu {
            logical_count: 4,
            percent: cpu,
            process_percent: cpu,
            ..Cpu::default()
        }),
        memory: Some(Memory {
            used_percent: memory,
            process_used_percent: memory,
            ..Memory::default()
        }),
        disk: Some(Disk {
            used_percent: disk,
            inodes_used_percent: disk,
            ..Disk::default()
        }),
        ..Host::default()
    }
}

fn with_non_finite_hosts(env: &TestEnv) {
    env.sim
        .upsert_host(non_finite("edge-nan", f64::NAN, f64::NAN, f64::NAN));
    env.sim.upsert_host(non_finite(
        "edge-inf",
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
    ));
    env.sim
        .upsert_host(non_finite("edge-zero", -0.0, 0.0, f64::NEG_INFINITY));
}

/// Walks every page of `order` (`{field, direction}`), forwards with
/// `first` or backwards with `last`, and returns the host ids in list
/// order. Fails if the walk does not end.
async fn walk(env: &TestEnv, order: &Value, size: usize, forward: bool) -> Vec<String> {
    let mut met = Vec::new();
    let mut cursor = Value::Null;
    for _ in 0..=1000 {
        let variables = if forward {
            json!({ "first": size, "after": cursor, "orderBy": order })
        } else {
            json!({ "last": size, "before": cursor, "orderBy": order })
        };
        let hosts = env.data(PAGE, variables).await["hosts"].clone();
        let ids: Vec<String> = hosts["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap().to_owned())
            .collect();
        if forward {
            met.extend(ids);
        } else {
            met.splice(0..0, ids);
        }
        let info = &hosts["pageInfo"];
        let (more, next) = if forward {
            (info["hasNextPage"].as_bool().unwrap(), &info["endCursor"])
        } else {
            (
                info["hasPreviousPage"].as_bool().unwrap(),
                &info["startCursor"],
            )
        };
        if !more {
            return met;
        }
        cursor = next.clone();
    }
    panic!("the walk by {order} (size {size}, forward {forward}) did not end");
}

#[tokio::test]
async fn non_finite_figures_are_null_where_the_schema_says_nullable() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    with_non_finite_hosts(&env);
    let body = env
        .query(
            r#"{ hosts(first: 1000, filter: { search: ".edge" }) { edges { node { id
                cpu { percent processPercent } memory { usedPercent processUsedPercent }
                disk { usedPercent inodesUsedPercent } } } } }"#,
            json!({}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body:#}");
    let by_id: BTreeMap<&str, &Value> = body["data"]["hosts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["node"]["id"].as_str().unwrap(), &e["node"]))
        .collect();
    let nan = by_id["edge-nan"];
    assert_eq!(
        nan["cpu"],
        json!({ "percent": null, "processPercent": null })
    );
    assert_eq!(
        nan["memory"],
        json!({ "usedPercent": null, "processUsedPercent": null })
    );
    assert_eq!(
        nan["disk"],
        json!({ "usedPercent": null, "inodesUsedPercent": null })
    );
    let inf = by_id["edge-inf"];
    assert_eq!(inf["cpu"]["percent"], Value::Null);
    assert_eq!(inf["memory"]["usedPercent"], Value::Null);
    // -0.0 is the figure 0; finite figures come through as sent.
    let zero = by_id["edge-zero"];
    assert_eq!(zero["cpu"]["percent"].as_f64(), Some(0.0));
    assert_eq!(zero["memory"]["usedPercent"].as_f64(), Some(0.0));
    assert_eq!(zero["disk"]["usedPercent"], Value::Null);
    env.stop().await;
}

#[tokio::test]
async fn hosts_without_a_figure_sort_last_in_both_directions() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    with_non_finite_hosts(&env);
    for field in ["CPU_PERCENT", "MEMORY_USED_PERCENT"] {
        for direction in ["ASC", "DESC"] {
            let order = json!({ "field": field, "direction": direction });
            let hosts = env
                .data(PAGE, json!({ "first": 1000, "orderBy": order }))
                .await["hosts"]["edges"]
                .clone();
            let key = if field == "CPU_PERCENT" {
                ["cpu", "percent"]
            } else {
                ["memory", "usedPercent"]
            };
            let figures: Vec<Option<f64>> = hosts
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["node"][key[0]][key[1]].as_f64())
                .collect();
            let first_none = figures.iter().position(Option::is_none).unwrap();
            assert!(
                figures[first_none..].iter().all(Option::is_none),
                "{order}: a figure after a host without one"
            );
            let present: Vec<f64> = figures.iter().flatten().copied().collect();
            let mut sorted = present.clone();
            sorted.sort_by(f64::total_cmp);
            if direction == "DESC" {
                sorted.reverse();
            }
            assert_eq!(present, sorted, "{order}");
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn every_order_pages_to_its_end_seeing_each_host_once() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    with_non_finite_hosts(&env);
    let total: usize = env
        .sim
        .cluster_ids()
        .into_iter()
        .map(|c| env.sim.hosts(c).len())
        .sum();
    for field in ORDERS {
        for direction in ["ASC", "DESC"] {
            let order = json!({ "field": field, "direction": direction });
            let whole = walk(&env, &order, 1000, true).await;
            assert_eq!(whole.len(), total, "{order}");
            for forward in [true, false] {
                let met = walk(&env, &order, 7, forward).await;
                assert_eq!(met, whole, "{order}, pages of 7, forward {forward}");
            }
        }
    }
    // One host per page, the console's worst case, in a float order.
    for direction in ["ASC", "DESC"] {
        let order = json!({ "field": "CPU_PERCENT", "direction": direction });
        let whole = walk(&env, &order, 1000, true).await;
        for forward in [true, false] {
            assert_eq!(walk(&env, &order, 1, forward).await, whole, "{order}");
        }
    }
    env.stop().await;
}

#[tokio::test]
async fn a_cursor_is_checked_against_the_order_it_is_used_with() {
    let env = TestEnv::start(small_sim(), |_| {}).await;
    let order = json!({ "field": "CPU_PERCENT", "direction": "ASC" });
    let page = env
        .data(PAGE, json!({ "first": 2, "orderBy": order }))
        .await;
    let cursor = page["hosts"]["pageInfo"]["endCursor"].clone();
    let body = env
        .query(
            PAGE,
            json!({ "first": 2, "after": cursor, "orderBy": { "field": "HOSTNAME" } }),
        )
        .await;
    assert_eq!(crate::support::error_codes(&body), ["INVALID_ARGUMENT"]);
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("CPU_PERCENT"), "{message}");
    env.stop().await;
}
