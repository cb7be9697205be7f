//! The manager's `GET /api/v1/peers` query string, bound the way gin binds
//! the manager's `types.GetPeersQuery` (first value of a key wins, an empty
//! value is zero, zero means "no filter"), with the same refusals and
//! messages; and the `Link` header the manager sends with every page.

use std::collections::BTreeMap;

/// Page size when `per_page` is absent or 0 (`setPaginationDefault`).
pub const DEFAULT_PER_PAGE: u64 = 10;
/// The manager's `per_page` limit (`lte=10000000`; the console asks for
/// exactly this many to get every peer at once).
pub const MAX_PER_PAGE: u64 = 10_000_000;

/// The peer types the manager's binding accepts as a filter
/// (`binding:"omitempty,oneof=super"`: even `normal` is refused).
pub const PEER_TYPE_FILTERS: [&str; 1] = ["super"];
/// The manager's peer states (`models.PeerStateActive`, `...Inactive`).
pub const PEER_STATES: [&str; 2] = ["active", "inactive"];

/// Exact-match filters; `None` (the zero value in the manager) lets
/// every peer through, as gorm's `Where(&models.Peer{...})` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerFilter {
    pub host_name: Option<String>,
    pub r#type: Option<String>,
    pub idc: Option<String>,
    pub location: Option<String>,
    pub ip: Option<String>,
    pub port: Option<i32>,
    pub download_port: Option<i32>,
    pub proxy_port: Option<i32>,
    pub object_storage_port: Option<i32>,
    pub state: Option<String>,
    pub os: Option<String>,
    pub platform: Option<String>,
    pub platform_family: Option<String>,
    pub platform_version: Option<String>,
    pub kernel_version: Option<String>,
    pub git_version: Option<String>,
    pub git_commit: Option<String>,
    pub build_platform: Option<String>,
    pub scheduler_cluster_id: Option<u64>,
}

/// A bound `GET /api/v1/peers` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeersQuery {
    /// 1-based.
    pub page: u64,
    pub per_page: u64,
    pub filter: PeerFilter,
}

impl PeersQuery {
    /// Peers to skip before this page.
    pub fn offset(&self) -> usize {
        usize::try_from((self.page - 1).saturating_mul(self.per_page)).unwrap_or(usize::MAX)
    }

    pub fn limit(&self) -> usize {
        usize::try_from(self.per_page).unwrap_or(usize::MAX)
    }
}

/// Why a query string does not bind; the text is what gin would say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindError(pub String);

fn validation(field: &str, tag: &str) -> BindError {
    BindError(format!(
        "Key: 'GetPeersQuery.{field}' Error:Field validation for '{field}' failed on the '{tag}' tag"
    ))
}

fn parse_error(func: &str, value: &str, kind: &std::num::IntErrorKind) -> BindError {
    use std::num::IntErrorKind;
    let why = match kind {
        IntErrorKind::PosOverflow | IntErrorKind::NegOverflow => "value out of range",
        _ => "invalid syntax",
    };
    BindError(format!("strconv.{func}: parsing {value:?}: {why}"))
}

/// `strconv.ParseInt(value, 10, 64)`, gin's binding of an `int` field.
fn int(value: &str) -> Result<i64, BindError> {
    value
        .parse::<i64>()
        .map_err(|e| parse_error("ParseInt", value, e.kind()))
}

/// `strconv.ParseInt(value, 10, 32)`, an `int32` field.
fn int32(value: &str) -> Result<i32, BindError> {
    value
        .parse::<i32>()
        .map_err(|e| parse_error("ParseInt", value, e.kind()))
}

/// `strconv.ParseUint(value, 10, 64)`, a `uint` field.
pub fn uint(value: &str) -> Result<u64, BindError> {
    value
        .parse::<u64>()
        .map_err(|e| parse_error("ParseUint", value, e.kind()))
}

/// Key/value pairs of a raw query string, in order.
pub fn pairs(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl PeersQuery {
    /// Binds a raw query string (`None`: no query at all).
    pub fn parse(raw: Option<&str>) -> Result<PeersQuery, BindError> {
        let pairs = pairs(raw.unwrap_or(""));
        // gin binds a scalar field from the first value of its key.
        let first = |key: &str| -> Option<&str> {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        // An empty value binds as the zero value: no filter.
        let text = |key: &str| first(key).filter(|v| !v.is_empty()).map(str::to_owned);
        let number = |key: &str| -> Result<Option<i32>, BindError> {
            match first(key).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => int32(v).map(|n| (n != 0).then_some(n)),
            }
        };
        let page = match first("page").filter(|v| !v.is_empty()) {
            None => 0,
            Some(v) => int(v)?,
        };
        let per_page = match first("per_page").filter(|v| !v.is_empty()) {
            None => 0,
            Some(v) => int(v)?,
        };
        let scheduler_cluster_id = match first("scheduler_cluster_id").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(uint(v)?).filter(|&id| id != 0),
        };
        let filter = PeerFilter {
            host_name: text("host_name"),
            r#type: text("type"),
            idc: text("idc"),
            location: text("location"),
            ip: text("ip"),
            port: number("port")?,
            download_port: number("download_port")?,
            proxy_port: number("proxy_port")?,
            object_storage_port: number("object_storage_port")?,
            state: text("state"),
            os: text("os"),
            platform: text("platform"),
            platform_family: text("platform_family"),
            platform_version: text("platform_version"),
            kernel_version: text("kernel_version"),
            git_version: text("git_version"),
            git_commit: text("git_commit"),
            build_platform: text("build_platform"),
            scheduler_cluster_id,
        };
        // The validator's rules, in the struct's field order.
        if let Some(t) = &filter.r#type
            && !PEER_TYPE_FILTERS.contains(&t.as_str())
        {
            return Err(validation("Type", "oneof"));
        }
        if let Some(s) = &filter.state
            && !PEER_STATES.contains(&s.as_str())
        {
            return Err(validation("State", "oneof"));
        }
        if page < 0 {
            return Err(validation("Page", "gte"));
        }
        if per_page < 0 {
            return Err(validation("PerPage", "gte"));
        }
        let per_page = per_page as u64;
        if per_page > MAX_PER_PAGE {
            return Err(validation("PerPage", "lte"));
        }
        Ok(PeersQuery {
            page: if page == 0 { 1 } else { page as u64 },
            per_page: if per_page == 0 {
                DEFAULT_PER_PAGE
            } else {
                per_page
            },
            filter,
        })
    }
}

/// The manager's `Link` header (`setPaginationLinkHeader`): prev, next,
/// first and last, each the request's own URL with `page` and `per_page`
/// replaced and the query re-encoded with sorted keys (Go's
/// `url.Values.Encode`). Its quirks are kept: `prev` of page 1 is page 1,
/// `next` of the last page is itself, and an empty result has `last` 0.
pub fn link_header(
    path: &str,
    raw_query: Option<&str>,
    page: u64,
    per_page: u64,
    total: u64,
) -> String {
    let total_pages = total.div_ceil(per_page.max(1));
    let prev = if page == 1 { 1 } else { page - 1 };
    let next = if page == total_pages { page } else { page + 1 };
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs(raw_query.unwrap_or("")) {
        values.entry(k).or_default().push(v);
    }
    [
        ("prev", prev),
        ("next", next),
        ("first", 1),
        ("last", total_pages),
    ]
    .into_iter()
    .map(|(rel, target)| {
        values.insert("page".into(), vec![target.to_string()]);
        values.insert("per_page".into(), vec![per_page.to_string()]);
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, vs) in &values {
            for v in vs {
                query.append_pair(k, v);
            }
        }
        format!("<{path}?{}>;rel={rel}", query.finish())
    })
    .collect::<Vec<_>>()
    .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_zero_values() {
        let q = PeersQuery::parse(None).unwrap();
        assert_eq!((q.page, q.per_page), (1, 10));
        assert_eq!(q.filter, PeerFilter::default());
        let q =
            PeersQuery::parse(Some("page=0&per_page=&idc=&port=0&scheduler_cluster_id=0")).unwrap();
        assert_eq!((q.page, q.per_page), (1, 10));
        assert_eq!(q.filter, PeerFilter::default());
        let q = PeersQuery::parse(Some("page=3&per_page=10000000&idc=a&idc=b&port=4000")).unwrap();
        assert_eq!(
            (q.page, q.per_page, q.offset()),
            (3, 10_000_000, 20_000_000)
        );
        assert_eq!(q.filter.idc.as_deref(), Some("a"));
        assert_eq!(q.filter.port, Some(4000));
    }

    #[test]
    fn refusals_say_what_gin_says() {
        let err = |q: &str| PeersQuery::parse(Some(q)).unwrap_err().0;
        assert_eq!(
            err("page=abc"),
            r#"strconv.ParseInt: parsing "abc": invalid syntax"#
        );
        assert_eq!(
            err("page=99999999999999999999"),
            r#"strconv.ParseInt: parsing "99999999999999999999": value out of range"#
        );
        assert_eq!(
            err("port=4294967296"),
            r#"strconv.ParseInt: parsing "4294967296": value out of range"#
        );
        assert_eq!(
            err("scheduler_cluster_id=-1"),
            r#"strconv.ParseUint: parsing "-1": invalid syntax"#
        );
        assert_eq!(
            err("per_page=10000001"),
            "Key: 'GetPeersQuery.PerPage' Error:Field validation for 'PerPage' failed on the 'lte' tag"
        );
        assert_eq!(
            err("page=-1"),
            "Key: 'GetPeersQuery.Page' Error:Field validation for 'Page' failed on the 'gte' tag"
        );
        assert!(err("type=seed").contains("'Type' failed on the 'oneof' tag"));
        assert!(err("state=up").contains("'State' failed on the 'oneof' tag"));
    }

    #[test]
    fn link_header_as_the_manager_builds_it() {
        // The manager's own test case: 95 items, 10 a page.
        let link = link_header("/test", None, 1, 10, 95);
        assert_eq!(
            link,
            "</test?page=1&per_page=10>;rel=prev,</test?page=2&per_page=10>;rel=next,\
             </test?page=1&per_page=10>;rel=first,</test?page=10&per_page=10>;rel=last"
        );
        let link = link_header("/test", None, 10, 10, 95);
        assert!(link.starts_with(
            "</test?page=9&per_page=10>;rel=prev,</test?page=10&per_page=10>;rel=next"
        ));
        // Other parameters stay, keys sorted, values escaped.
        let link = link_header(
            "/api/v1/peers",
            Some("type=super&page=2&host_name=a%20b&per_page=5"),
            2,
            5,
            12,
        );
        assert_eq!(
            link.split(',').next().unwrap(),
            "</api/v1/peers?host_name=a+b&page=1&per_page=5&type=super>;rel=prev"
        );
        // Nothing matched: last is page 0, next is page 2 (as upstream).
        assert!(link_header("/p", None, 1, 10, 0).ends_with("</p?page=2&per_page=10>;rel=next,</p?page=1&per_page=10>;rel=first,</p?page=0&per_page=10>;rel=last"));
    }
}
