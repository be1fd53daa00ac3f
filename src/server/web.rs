//! The web client's files, built into the binary: `web/dist/` as committed
//! (see docs/web.md), and the gzip of each that `build.rs` made. Nothing
//! is read from disk at run time, so the binary is the whole deployment.
//!
//! Caching: the page names its script and style sheet with a hash of their
//! content (`/app.js?v=HASH`), so those URLs may be kept for a year; the
//! page itself is checked on every load (`no-cache` with an ETag), which
//! costs one `304 Not Modified` when nothing changed.

use axum::Router;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    content_type: &'static str,
    raw: &'static [u8],
    gzip: &'static [u8],
    /// A hash of `raw`, computed while compiling: the ETag's body.
    hash: u64,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            content_type: $content_type,
            raw: include_bytes!(concat!("../../web/dist/", $name)),
            gzip: include_bytes!(concat!(env!("OUT_DIR"), "/web/", $name, ".gz")),
            hash: fnv1a(include_bytes!(concat!("../../web/dist/", $name))),
        }
    };
}

static INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");
static SCRIPT: Asset = asset!("app.js", "text/javascript; charset=utf-8");
static STYLE: Asset = asset!("app.css", "text/css; charset=utf-8");

/// What the page may load and talk to: only this origin. The page has no
/// inline script, so an injected `<script>` would not run.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A year: the longest lifetime caches honour.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Kept, but checked with the server before each use.
const REVALIDATE: &str = "no-cache";

/// The routes of the web client's files.
pub(super) fn routes() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
}

async fn page(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers, REVALIDATE)
}

async fn script(uri: Uri, headers: HeaderMap) -> Response {
    serve(&SCRIPT, &headers, lifetime(&uri, named_version("app.js")))
}

async fn style(uri: Uri, headers: HeaderMap) -> Response {
    serve(&STYLE, &headers, lifetime(&uri, named_version("app.css")))
}

/// The version the embedded page asks for `name` by (`/NAME?v=VERSION`).
fn named_version(name: &str) -> Option<&'static str> {
    let page = std::str::from_utf8(INDEX.raw).ok()?;
    let marker = format!("/{name}?v=");
    let start = page.find(&marker)? + marker.len();
    let version = &page[start..];
    let end = version
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(version.len());
    Some(&version[..end])
}

/// A script or style sheet asked for by the name this page gives its
/// content (`?v=HASH`) never changes under that name. Asked for without
/// it, or by another version's name (a page from another build, say, in a
/// rolling upgrade), what is served may not be what was asked for, so it
/// is checked before each use.
fn lifetime(uri: &Uri, current: Option<&str>) -> &'static str {
    let versioned = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.strip_prefix("v=").is_some_and(|v| Some(v) == current))
    });
    if versioned { IMMUTABLE } else { REVALIDATE }
}

/// The asset, gzipped when the browser accepts it, or `304` when the
/// browser's copy (named by `If-None-Match`) is current.
fn serve(asset: &Asset, request: &HeaderMap, cache_control: &'static str) -> Response {
    let gzip = accepts_gzip(request);
    // Each encoding is its own representation, with its own tag.
    let etag = format!("\"{:016x}{}\"", asset.hash, if gzip { "-gz" } else { "" });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(tag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, tag);
    }
    if matches(request, &etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.content_type.starts_with("text/html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    let body = if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        asset.gzip
    } else {
        asset.raw
    };
    (StatusCode::OK, headers, body).into_response()
}

/// Whether `Accept-Encoding` names gzip with a weight above zero.
fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Whether `If-None-Match` lists `etag` (or `*`).
fn matches(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// FNV-1a, 64 bits: a content hash the compiler can work out, so ETags
/// cost nothing at run time. It only has to change when a file does.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn gzip_is_sent_only_where_accepted() {
        assert!(accepts_gzip(&headers(&[(
            header::ACCEPT_ENCODING,
            "gzip, deflate, br, zstd"
        )])));
        assert!(accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, "*")])));
        assert!(!accepts_gzip(&headers(&[(
            header::ACCEPT_ENCODING,
            "gzip;q=0, br"
        )])));
        assert!(!accepts_gzip(&headers(&[(header::ACCEPT_ENCODING, "br")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn a_current_copy_gets_not_modified() {
        let etag = "\"00000000000000ab-gz\"";
        assert!(matches(
            &headers(&[(header::IF_NONE_MATCH, "\"x\", W/\"00000000000000ab-gz\"")]),
            etag
        ));
        assert!(!matches(
            &headers(&[(header::IF_NONE_MATCH, "\"x\"")]),
            etag
        ));
    }

    #[test]
    fn only_the_current_version_is_kept_for_good() {
        let current = named_version("app.js").expect("the page names its script's version");
        assert_eq!(current.len(), 16, "{current}");
        let url = |u: String| u.parse::<Uri>().unwrap();
        let asked = url(format!("/app.js?v={current}"));
        assert_eq!(lifetime(&asked, Some(current)), IMMUTABLE);
        assert_eq!(
            lifetime(&url("/app.js?v=deadbeef".into()), Some(current)),
            REVALIDATE
        );
        assert_eq!(lifetime(&url("/app.js".into()), Some(current)), REVALIDATE);
        assert!(named_version("app.css").is_some());
    }
}
