//! The web playground: `web/dist`, compiled into the binary (no Node needed to
//! build or run runbox). `/` and `/r/{key}` serve the page; `/assets/*` the
//! content-hashed files it loads, cached for good.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::RustEmbed)]
#[folder = "../../web/dist"]
struct Dist;

/// The page, for `/` and for permalinks (`/r/{key}`): the page routes itself.
pub async fn index() -> Response {
    match Dist::get("index.html") {
        Some(f) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            f.data,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "the playground was not built into this binary",
        )
            .into_response(),
    }
}

pub async fn permalink(Path(_key): Path<String>) -> Response {
    index().await
}

/// A file under `/assets/`.
pub async fn asset(Path(path): Path<String>) -> Response {
    let name = format!("assets/{path}");
    match Dist::get(&name) {
        Some(f) => {
            let mime = mime_guess::from_path(&name).first_or_octet_stream();
            (
                [
                    (header::CONTENT_TYPE, mime.as_ref().to_owned()),
                    // File names carry a content hash: a new build has new names.
                    (
                        header::CACHE_CONTROL,
                        "public, max-age=31536000, immutable".to_owned(),
                    ),
                ],
                f.data,
            )
                .into_response()
        }
        None => crate::error::ApiError::not_found(format!("no asset {name}")).into_response(),
    }
}

/// Other top-level files of the bundle (favicon and the like).
pub async fn file(Path(path): Path<String>) -> Response {
    match Dist::get(&path) {
        Some(f) if !path.contains('/') && path != "index.html" => {
            let mime = mime_guess::from_path(&path).first_or_octet_stream();
            ([(header::CONTENT_TYPE, mime.as_ref().to_owned())], f.data).into_response()
        }
        _ => crate::error::ApiError::not_found(format!("no such page: /{path}")).into_response(),
    }
}
