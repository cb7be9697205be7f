//! The web pages built into the binary, so they work offline (air-gapped
//! clusters): the live console at `/`, GraphiQL at `/graphiql`, their
//! files under `/assets/`. Vendored files are listed in `assets/README.md`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Every served file: its path under `/assets/`, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "console/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/console/index.html"),
    ),
    (
        "console/console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/console/console.js"),
    ),
    (
        "console/console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/console/console.css"),
    ),
    (
        "graphiql/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/graphiql/index.html"),
    ),
    (
        "graphiql/init.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/init.js"),
    ),
    (
        "graphiql/page.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/graphiql/page.css"),
    ),
    (
        "graphiql/graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql/graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/graphiql/graphiql.min.css"),
    ),
    (
        "graphiql/graphql-ws.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/graphql-ws.min.js"),
    ),
    (
        "graphiql/react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/react.production.min.js"),
    ),
    (
        "graphiql/react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/graphiql/react-dom.production.min.js"),
    ),
];

fn serve(path: &str) -> Response {
    match FILES.iter().find(|(p, _, _)| *p == path) {
        Some((_, content_type, bytes)) => {
            let mut response = (StatusCode::OK, *bytes).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Built into this binary: a restart with a new version is the
            // only way they change.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

pub async fn console() -> Response {
    serve("console/index.html")
}

pub async fn graphiql() -> Response {
    serve("graphiql/index.html")
}

pub async fn file(Path(path): Path<String>) -> Response {
    serve(&path)
}
