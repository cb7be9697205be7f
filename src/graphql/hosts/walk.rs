//! Tests of page walks: in every order, direction and page size, a walk
//! over lists with ties, non-finite figures and hosts joining and leaving
//! between pages ends and sees every host present throughout exactly once;
//! cursors carry their sort value exactly and refuse what they are not.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE_NO_PAD_ENGINE;
use proptest::prelude::*;

use super::order::cmp_hosts;
use super::*;
use crate::proto::common::v2::{Build, Cpu, Host, Memory};

/// Every order field (the schema's enum, in full).
const FIELDS: [HostOrderField; 8] = [
    HostOrderField::Hostname,
    HostOrderField::Ip,
    HostOrderField::Id,
    HostOrderField::Type,
    HostOrderField::Version,
    HostOrderField::SchedulerCluster,
    HostOrderField::CpuPercent,
    HostOrderField::MemoryUsedPercent,
];

/// The page sizes walked: one, a few, and the largest the API allows.
const SIZES: [usize; 3] = [1, 7, 1000];

/// Doubles real schedulers send, including those whose shortest decimal
/// rendering is easy to get wrong, ties, and the non-finite ones.
const DOUBLES: [f64; 12] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -0.0,
    0.0,
    1.5,
    98.363_559_948_808_91,
    98.363_559_948_808_93,
    100.0,
    f64::MIN_POSITIVE,
    33.333_333_333_333_336,
    1e-300,
];

/// A host from small pools of values, so ties are common.
fn arb_host(prefix: &'static str) -> impl Strategy<Value = Host> {
    (
        0..6u8,
        0..4usize,
        0..3usize,
        0..5u32,
        0..3usize,
        1..4u64,
        proptest::option::of(0..DOUBLES.len()),
        proptest::option::of(0..DOUBLES.len()),
    )
        .prop_map(
            move |(id, name, ip, kind, version, cluster, cpu, memory)| Host {
                id: format!("{prefix}{id}"),
                hostname: ["node", "node", "ノード-ü", ""][name].into(),
                ip: ["10.0.0.1", "fd00::1", ""][ip].into(),
                r#type: kind,
                build: Some(Build {
                    git_version: ["v2.1.0", "v2.0.9", ""][version].into(),
                    ..Build::default()
                }),
                scheduler_cluster_id: cluster,
                cpu: cpu.map(|i| Cpu {
                    percent: DOUBLES[i],
                    ..Cpu::default()
                }),
                memory: memory.map(|i| Memory {
                    used_percent: DOUBLES[i],
                    ..Memory::default()
                }),
                ..Host::default()
            },
        )
}

/// Hosts with distinct (id, cluster), as a set of host lists holds them.
fn distinct(mut hosts: Vec<Host>) -> Vec<Host> {
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert((h.id.clone(), h.scheduler_cluster_id)));
    hosts
}

/// Hosts present throughout, and hosts present only at the steps whose bit
/// is set in their mask.
#[derive(Debug, Clone)]
struct Fleet {
    stable: Vec<Host>,
    transient: Vec<(Host, u64)>,
}

impl Fleet {
    fn at(&self, step: usize) -> Vec<&Host> {
        let bit = 1u64 << (step % 64);
        self.stable
            .iter()
            .chain(
                self.transient
                    .iter()
                    .filter(|(_, mask)| mask & bit != 0)
                    .map(|(h, _)| h),
            )
            .collect()
    }
}

fn arb_fleet() -> impl Strategy<Value = Fleet> {
    (
        proptest::collection::vec(arb_host("s"), 0..24),
        proptest::collection::vec((arb_host("t"), any::<u64>()), 0..12),
    )
        .prop_map(|(stable, transient)| {
            let stable = distinct(stable);
            let mut seen = std::collections::HashSet::new();
            let transient = transient
                .into_iter()
                .filter(|(h, _)| seen.insert((h.id.clone(), h.scheduler_cluster_id)))
                .collect();
            Fleet { stable, transient }
        })
}

/// Walks `fleet` page by page, forwards (`first`/`after`) or backwards
/// (`last`/`before`), passing each cursor through its text form. Returns
/// the hosts in the order the walk met them.
fn walk(
    fleet: &Fleet,
    order: HostOrder,
    size: usize,
    forward: bool,
) -> Result<Vec<Host>, TestCaseError> {
    let most = fleet.stable.len() + fleet.transient.len() + 2;
    let mut met = Vec::new();
    let mut cursor: Option<String> = None;
    for step in 0.. {
        prop_assert!(step <= most, "walk by {order:?}, size {size}, did not end");
        let position = cursor
            .as_deref()
            .map(|c| Cursor::decode(c, order.field))
            .transpose()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let args = if forward {
            PageArgs {
                first: Some(size),
                after: position,
                ..PageArgs::default()
            }
        } else {
            PageArgs {
                last: Some(size),
                before: position,
                ..PageArgs::default()
            }
        };
        let p = page(fleet.at(step), &HostFilter::default(), order, &args, 100);
        prop_assert!(p.hosts.len() <= size);
        let edge = if forward {
            p.hosts.last()
        } else {
            p.hosts.first()
        };
        cursor = edge.map(|(_, c)| c.encode());
        let mut hosts: Vec<Host> = p.hosts.iter().map(|(h, _)| (*h).clone()).collect();
        if !forward {
            hosts.reverse();
        }
        met.extend(hosts);
        let more = if forward {
            p.has_next_page
        } else {
            p.has_previous_page
        };
        if !more {
            break;
        }
        prop_assert!(cursor.is_some(), "a page with more after it was empty");
    }
    Ok(met)
}

fn key(h: &Host) -> (String, u64) {
    (h.id.clone(), h.scheduler_cluster_id)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_walk_ends_and_sees_every_host_present_throughout_once(fleet in arb_fleet()) {
        for field in FIELDS {
            for direction in [OrderDirection::Asc, OrderDirection::Desc] {
                let order = HostOrder { field, direction };
                for size in SIZES {
                    for forward in [true, false] {
                        let met = walk(&fleet, order, size, forward)?;
                        let mut counts = std::collections::HashMap::new();
                        for h in &met {
                            *counts.entry(key(h)).or_insert(0) += 1;
                        }
                        prop_assert!(
                            counts.values().all(|&n| n == 1),
                            "{order:?} size {size} forward {forward}: a host met twice"
                        );
                        for h in &fleet.stable {
                            prop_assert!(
                                counts.contains_key(&key(h)),
                                "{order:?} size {size} forward {forward}: {:?} missed", key(h)
                            );
                        }
                        // The walk meets hosts in the order's direction.
                        let expected = if forward {
                            std::cmp::Ordering::Less
                        } else {
                            std::cmp::Ordering::Greater
                        };
                        for pair in met.windows(2) {
                            prop_assert_eq!(cmp_hosts(&pair[0], &pair[1], order), expected);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn hosts_without_a_figure_come_last_in_both_directions(fleet in arb_fleet()) {
        for field in [HostOrderField::CpuPercent, HostOrderField::MemoryUsedPercent] {
            for direction in [OrderDirection::Asc, OrderDirection::Desc] {
                let order = HostOrder { field, direction };
                let sorted = sort_hosts(fleet.stable.iter(), order);
                let has_figure = |h: &Host| matches!(
                    sort_value(h, field),
                    SortValue::Figure(Some(_))
                );
                let first_without = sorted.iter().position(|h| !has_figure(h));
                if let Some(at) = first_without {
                    prop_assert!(sorted[at..].iter().all(|h| !has_figure(h)));
                }
            }
        }
    }
}

fn cpu_host(id: &str, percent: f64) -> Host {
    Host {
        id: id.into(),
        scheduler_cluster_id: 1,
        cpu: Some(Cpu {
            percent,
            ..Cpu::default()
        }),
        ..Host::default()
    }
}

#[test]
fn a_cursor_carries_its_figure_exactly() {
    // Reads back as ...93 through a decimal rendering of too few digits.
    let value = 98.363_559_948_808_91;
    let host = cpu_host("h1", value);
    let cursor = Cursor::of(&host, HostOrderField::CpuPercent);
    let back = Cursor::decode(&cursor.encode(), HostOrderField::CpuPercent).unwrap();
    assert_eq!(back, cursor);
    let SortValue::Figure(Some(read)) = back.value else {
        panic!("not a figure: {back:?}");
    };
    assert_eq!(read.to_bits(), value.to_bits());
    let nan = Cursor::of(&cpu_host("h2", f64::NAN), HostOrderField::CpuPercent);
    assert_eq!(nan.value, SortValue::Figure(None));
    assert_eq!(
        Cursor::decode(&nan.encode(), HostOrderField::CpuPercent).unwrap(),
        nan
    );
}

#[test]
fn a_cursor_of_another_order_or_altered_is_refused() {
    let host = cpu_host("h1", 12.0);
    let text = Cursor::of(&host, HostOrderField::CpuPercent).encode();
    let err = Cursor::decode(&text, HostOrderField::Hostname).unwrap_err();
    assert!(
        matches!(err, CursorError::OtherOrder(_, "CPU_PERCENT")),
        "{err}"
    );
    let mut bytes = URL_SAFE_NO_PAD_ENGINE.decode(&text).unwrap();
    for at in 0..bytes.len() {
        bytes[at] ^= 0x40;
        let altered = URL_SAFE_NO_PAD_ENGINE.encode(&bytes);
        assert!(
            matches!(
                Cursor::decode(&altered, HostOrderField::CpuPercent),
                Err(CursorError::Unknown(_))
            ),
            "byte {at} altered was accepted"
        );
        bytes[at] ^= 0x40;
    }
    // Cut short or extended: refused too.
    let short = URL_SAFE_NO_PAD_ENGINE.encode(&bytes[..bytes.len() - 1]);
    assert!(Cursor::decode(&short, HostOrderField::CpuPercent).is_err());
}
