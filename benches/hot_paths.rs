//! Criterion benchmarks of the hot pure-Rust pieces: the cache codec
//! (plain, compressed, encrypted), host filtering, ordering and pagination
//! over large host lists, host statistics, and hash-ring task routing. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::collections::HashMap;
use std::sync::Arc;

use dfgraph::cache::codec::{Codec, Header};
use dfgraph::cache::keyring::KeyRing;
use dfgraph::cluster::TaskRing;
use dfgraph::graphql::hosts::{
    Cursor, HostFilter, HostOrder, HostOrderField, OrderDirection, PageArgs, host_stats, page,
};
use dfgraph::proto::common::v2::{Build, Cpu, Host, Network};
use dfgraph::proto::scheduler::v2::ListHostsResponse;

/// A fleet shaped like the simulator's: a few idcs, versions and types.
fn fleet(n: usize) -> Vec<Host> {
    (0..n)
        .map(|i| Host {
            id: format!(
                "10.{}.{}.{}-dfdaemon-{i}",
                i >> 16 & 255,
                i >> 8 & 255,
                i & 255
            ),
            r#type: if i % 50 == 0 { 1 } else { 0 },
            hostname: format!("dfdaemon-{}-{i:06x}", i % 10),
            ip: format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
            os: "linux".into(),
            scheduler_cluster_id: (i % 10) as u64 + 1,
            cpu: Some(Cpu {
                percent: (i * 7919 % 1000) as f64 / 10.0,
                ..Default::default()
            }),
            network: Some(Network {
                idc: Some(["idc-a", "idc-b", "idc-c"][i % 3].into()),
                location: Some("cn|hangzhou".into()),
                ..Default::default()
            }),
            build: Some(Build {
                git_version: ["v2.1.60", "v2.1.61", "v2.2.0"][i % 3].into(),
                git_commit: Some(["a1b2c3", "d4e5f6", "0718aa"][i % 3].into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn host_listing(c: &mut Criterion) {
    let mut group = c.benchmark_group("hosts_page");
    for n in [1_000usize, 10_000, 100_000] {
        let hosts = fleet(n);
        let first_page = PageArgs {
            first: Some(50),
            ..Default::default()
        };
        group.bench_with_input(
            BenchmarkId::new("hostname_first_50", n),
            &hosts,
            |b, hosts| {
                b.iter(|| {
                    let p = page(
                        hosts.iter(),
                        &HostFilter::default(),
                        HostOrder::default(),
                        &first_page,
                        100,
                    );
                    black_box(p.total_count)
                })
            },
        );
        let filter = HostFilter {
            idcs: Some(vec!["idc-b".into()]),
            versions: Some(vec!["v2.1.61".into()]),
            ..Default::default()
        };
        let by_cpu = HostOrder {
            field: HostOrderField::CpuPercent,
            direction: OrderDirection::Desc,
        };
        group.bench_with_input(
            BenchmarkId::new("filtered_by_cpu_first_50", n),
            &hosts,
            |b, hosts| {
                b.iter(|| {
                    black_box(page(hosts.iter(), &filter, by_cpu, &first_page, 100).total_count)
                })
            },
        );
        let search = HostFilter {
            search: Some("DFDAEMON-3-00".into()),
            ..Default::default()
        };
        group.bench_with_input(
            BenchmarkId::new("search_first_50", n),
            &hosts,
            |b, hosts| {
                b.iter(|| {
                    black_box(
                        page(
                            hosts.iter(),
                            &search,
                            HostOrder::default(),
                            &first_page,
                            100,
                        )
                        .total_count,
                    )
                })
            },
        );
        let middle = page(
            hosts.iter(),
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(n / 2),
                ..Default::default()
            },
            n,
        )
        .hosts
        .last()
        .map(|(_, c)| c.clone());
        let after: Option<Cursor> = middle;
        let next_page = PageArgs {
            first: Some(50),
            after,
            ..Default::default()
        };
        group.bench_with_input(
            BenchmarkId::new("after_cursor_middle", n),
            &hosts,
            |b, hosts| {
                b.iter(|| {
                    black_box(
                        page(
                            hosts.iter(),
                            &HostFilter::default(),
                            HostOrder::default(),
                            &next_page,
                            100,
                        )
                        .total_count,
                    )
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("host_stats", n), &hosts, |b, hosts| {
            b.iter(|| black_box(host_stats(hosts.iter(), &HostFilter::default()).total))
        });
    }
    group.finish();
}

fn ring_routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("task_ring");
    for schedulers in [3u16, 10, 50] {
        let ring =
            TaskRing::new((0..schedulers).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))));
        let ids: Vec<String> = (0..1024u32)
            .map(|i| format!("{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15))
            .collect();
        group.bench_with_input(BenchmarkId::new("owner", schedulers), &ring, |b, ring| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % ids.len();
                black_box(ring.owner(&ids[i]).ok())
            })
        });
    }
    group.finish();
}

fn cache_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("cache_codec");
    let keyring =
        Arc::new(KeyRing::new(1, &HashMap::from([(1u8, [7u8; 32])])).expect("a valid key"));
    let codecs = [
        ("plain", Codec::new(usize::MAX, None)),
        ("lz4", Codec::new(1024, None)),
        ("lz4_xchacha", Codec::new(1024, Some(keyring))),
    ];
    let header = Header {
        fetched_at: 1,
        fresh_until: 2,
        stale_until: 3,
        tombstone: false,
    };
    let key = "dfgraph:v1:hosts:1:";
    for hosts in [1usize, 100, 10_000] {
        let value = ListHostsResponse {
            hosts: fleet(hosts),
        };
        for (name, codec) in &codecs {
            let bytes = codec
                .encode_value(key, &header, Some(&value))
                .expect("encodes");
            group.bench_with_input(
                BenchmarkId::new(format!("encode_{name}"), hosts),
                &value,
                |b, v| {
                    b.iter(|| black_box(codec.encode_value(key, &header, Some(v)).map(|b| b.len())))
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("decode_{name}"), hosts),
                &bytes,
                |b, bytes| {
                    b.iter(|| {
                        black_box(
                            codec
                                .decode_value::<ListHostsResponse>(key, bytes)
                                .map(|(_, v)| v.map(|v| v.hosts.len())),
                        )
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, cache_codec, host_listing, ring_routing);
criterion_main!(benches);
