//! Host listing: filtering, ordering, cursor pagination and statistics
//! over the clusters' host lists. Pure functions over wire hosts, so they
//! can be tested and benchmarked without a server.

mod filter;
mod memo;
mod order;
mod page;
mod stats;
#[cfg(test)]
mod walk;

pub use filter::{CompiledFilter, HostFilter};
pub use memo::OrderMemo;
pub use order::{HostOrder, HostOrderField, OrderDirection, SortValue, sort_hosts, sort_value};
pub use page::{Cursor, CursorError, Page, PageArgs, page, page_sorted};
pub use stats::{Bucket, HostStats, host_stats};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::v2::{Build, Host, Network};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn host(id: &str, hostname: &str, version: &str, idc: &str) -> Host {
        Host {
            id: id.into(),
            hostname: hostname.into(),
            ip: format!("10.0.0.{}", id.len()),
            os: "linux".into(),
            build: Some(Build {
                git_version: version.into(),
                ..Default::default()
            }),
            network: Some(Network {
                idc: Some(idc.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn fleet() -> Vec<Host> {
        (0..25)
            .map(|i| {
                host(
                    &format!("h{i:02}"),
                    &format!("node-{}", i % 10),
                    if i % 3 == 0 { "v2" } else { "v1" },
                    if i % 2 == 0 { "a" } else { "b" },
                )
            })
            .collect()
    }

    #[test]
    fn pages_forward_cover_everything_once_in_order() {
        let hosts = fleet();
        let mut seen = Vec::new();
        let mut args = PageArgs {
            first: Some(7),
            ..Default::default()
        };
        loop {
            let p = page(
                &hosts,
                &HostFilter::default(),
                HostOrder::default(),
                &args,
                100,
            );
            assert_eq!(p.total_count, 25);
            seen.extend(p.hosts.iter().map(|(h, _)| h.id.clone()));
            if !p.has_next_page {
                break;
            }
            args.after = p.hosts.last().map(|(_, c)| c.clone());
        }
        assert_eq!(seen.len(), 25);
        let mut expected: Vec<_> = hosts
            .iter()
            .map(|h| (h.hostname.clone(), h.id.clone()))
            .collect();
        expected.sort();
        assert_eq!(
            seen,
            expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
        );
    }

    #[test]
    fn backward_pagination_with_last_and_before() {
        let hosts = fleet();
        let all = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs::default(),
            100,
        );
        let tenth = all.hosts[10].1.clone();
        let p = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                last: Some(3),
                before: Some(tenth),
                ..Default::default()
            },
            100,
        );
        let ids: Vec<_> = p.hosts.iter().map(|(h, _)| h.id.clone()).collect();
        let expected: Vec<_> = all.hosts[7..10].iter().map(|(h, _)| h.id.clone()).collect();
        assert_eq!(ids, expected);
        assert!(p.has_previous_page);
        assert!(p.has_next_page);
    }

    #[test]
    fn cursor_stays_valid_when_hosts_join_before_it() {
        let mut hosts = fleet();
        let first = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(5),
                ..Default::default()
            },
            100,
        );
        let after = first.hosts.last().unwrap().1.clone();
        let next_expected = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(5),
                after: Some(after.clone()),
                ..Default::default()
            },
            100,
        )
        .hosts
        .iter()
        .map(|(h, _)| h.id.clone())
        .collect::<Vec<_>>();
        hosts.push(host("zz", "aaa-first", "v1", "a"));
        let next = page(
            &hosts,
            &HostFilter::default(),
            HostOrder::default(),
            &PageArgs {
                first: Some(5),
                after: Some(after),
                ..Default::default()
            },
            100,
        )
        .hosts
        .iter()
        .map(|(h, _)| h.id.clone())
        .collect::<Vec<_>>();
        assert_eq!(next, next_expected);
    }

    #[test]
    fn filter_and_search() {
        let hosts = fleet();
        let filter = HostFilter {
            versions: Some(vec!["v2".into()]),
            idcs: Some(vec!["a".into()]),
            ..Default::default()
        };
        let p = page(
            &hosts,
            &filter,
            HostOrder::default(),
            &PageArgs::default(),
            100,
        );
        let expected = (0..25).filter(|i| i % 3 == 0 && i % 2 == 0).count();
        assert_eq!(p.total_count, expected);
        let search = HostFilter {
            search: Some("NODE-3".into()),
            ..Default::default()
        };
        let p = page(
            &hosts,
            &search,
            HostOrder::default(),
            &PageArgs::default(),
            100,
        );
        assert!(p.hosts.iter().all(|(h, _)| h.hostname == "node-3"));
        assert_eq!(p.total_count, 3);
    }

    #[test]
    fn descending_order_reverses() {
        let hosts = fleet();
        let order = HostOrder {
            field: HostOrderField::Id,
            direction: OrderDirection::Desc,
        };
        let p = page(
            &hosts,
            &HostFilter::default(),
            order,
            &PageArgs {
                first: Some(2),
                ..Default::default()
            },
            100,
        );
        let ids: Vec<_> = p.hosts.iter().map(|(h, _)| h.id.as_str()).collect();
        assert_eq!(ids, ["h24", "h23"]);
    }

    #[test]
    fn stats_count_by_dimension() {
        let hosts = fleet();
        let stats = host_stats(&hosts, &HostFilter::default());
        assert_eq!(stats.total, 25);
        let v2 = (0..25).filter(|i| i % 3 == 0).count() as u64;
        assert_eq!(
            stats.by_version,
            vec![
                Bucket {
                    value: "v1".into(),
                    count: 25 - v2
                },
                Bucket {
                    value: "v2".into(),
                    count: v2
                },
            ]
        );
        assert_eq!(
            stats.by_type,
            vec![Bucket {
                value: "NORMAL".into(),
                count: 25
            }]
        );
    }

    #[test]
    fn garbage_cursor_is_an_error_not_a_panic() {
        let by = HostOrderField::Hostname;
        assert!(Cursor::decode("not-a-cursor!", by).is_err());
        assert!(Cursor::decode("", by).is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(b"{\"x\":1}"), by).is_err());
    }
}
