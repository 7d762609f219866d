//! `GET /api/files?path=<dir>&q=<search>`: browse and search the data dir. A listing comes in
//! pages (`offset`, `limit`); a search stops at its limits and says so (`truncated`).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::caller::Caller;
use super::error::{ApiError, ErrorBody};
use super::json::ApiQuery;
use super::state::AppState;
use crate::data_dir::{Entry, PathError, RelPath};

/// Entries in a page when `limit` is not given, and the most one page may hold.
const PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;
/// Offsets are whole numbers a JSON client can write exactly (the document says `int64`).
const MAX_OFFSET: usize = i64::MAX as usize;
/// The most results a search returns, and how long one search may look.
const SEARCH_RESULTS: usize = 500;
const SEARCH_TIME: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/api/files", get(files))
}

#[derive(Deserialize)]
pub struct FilesQuery {
    path: Option<String>,
    q: Option<String>,
    offset: Option<String>,
    limit: Option<String>,
}

/// A whole number in `range`, or a 400 naming the field.
fn number(
    field: &str,
    value: Option<&str>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    let Some(v) = value else { return Ok(default) };
    match v.parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ if *range.end() == MAX_OFFSET => Err(ApiError::BadRequest(format!(
            "{field}: must be a whole number, {} or more",
            range.start()
        ))),
        _ => Err(ApiError::BadRequest(format!(
            "{field}: must be a whole number from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct FileEntry {
    /// The name for people: a byte that is not UTF-8 text is shown as `%XX`.
    pub name: String,
    /// The exact path, as `path` and `file_path` take it: a byte that is not UTF-8 text (or a
    /// control byte, or a backslash) is written `\xHH`.
    pub path: String,
    pub size: u64,
    pub is_dir: bool,
    pub modified: String,
}

impl From<&Entry> for FileEntry {
    fn from(e: &Entry) -> Self {
        let ms = u64::try_from(e.modified_ns / 1_000_000).unwrap_or(0);
        FileEntry {
            name: e.name.clone(),
            path: e.path.as_str().to_string(),
            size: e.size,
            is_dir: e.is_dir,
            modified: crate::model::rfc3339(ms),
        }
    }
}

/// A page of a folder, or the results of a search. A field that belongs to the other kind of
/// answer is left out of the JSON, not written as null.
#[derive(Serialize, ToSchema)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// Listing: how many entries the folder has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Listing: the `offset` of the next page; null on the last one.
    // The outer `Option` is whether the field is there at all (a search leaves it out); the
    // inner one is the null of the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub next_offset: Option<Option<u64>>,
    /// Search: whether it stopped at a limit (results, folders or time) before looking everywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
}

impl FileList {
    /// One page of a listing that starts at entry `offset` and asked for `limit` entries.
    fn page(dir: &RelPath, entries: &[Entry], total: usize, offset: usize, limit: usize) -> Self {
        let next = offset.saturating_add(limit);
        FileList {
            path: dir.as_str().to_string(),
            entries: entries.iter().map(FileEntry::from).collect(),
            total: Some(total as u64),
            next_offset: Some((next < total).then_some(next as u64)),
            truncated: None,
        }
    }

    /// The results of a search below `dir`.
    fn search(dir: &RelPath, entries: &[Entry], truncated: bool) -> Self {
        FileList {
            path: dir.as_str().to_string(),
            entries: entries.iter().map(FileEntry::from).collect(),
            total: None,
            next_offset: None,
            truncated: Some(truncated),
        }
    }
}

/// Browse (`path`, a page at a time) or search by name (`q`) the data dir.
#[utoipa::path(get, path = "/api/files", tag = "files",
    params(("path" = Option<String>, Query, description = "Folder relative to the data dir (exact text: a byte of a name that is not UTF-8 is `\\xHH`)"),
           ("q" = Option<String>, Query, description = "Case-insensitive part of a name, searched below `path` (at most 500 results, 10,000 folders, 2 s)"),
           ("offset" = Option<i64>, Query, minimum = 0, description = "First entry of the page (listing only), default 0"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 10000, description = "Entries in the page (listing only), default 1000")),
    responses((status = 200, description = "Entries", body = FileList),
              (status = 400, description = "Bad path", body = ErrorBody),
              (status = 404, description = "No such folder", body = ErrorBody), (status = 401, description = "Authentication required", body = ErrorBody), (status = 503, description = "Data dir or state store unavailable", body = ErrorBody)))]
pub async fn files(
    State(s): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<Json<FileList>, ApiError> {
    let dir = match q.path.as_deref() {
        None | Some("") | Some("/") => caller.home(&s),
        Some(p) => RelPath::parse(p).map_err(|e| ApiError::BadRequest(format!("path: {e}")))?,
    };
    caller.confine(&s, "path", &dir)?;
    let offset = number("offset", q.offset.as_deref(), 0, 0..=MAX_OFFSET)?;
    let limit = number("limit", q.limit.as_deref(), PAGE, 1..=MAX_PAGE)?;
    let data = s.links.data();
    let failed = |e: PathError| match e {
        PathError::NotFound => ApiError::NotFound(format!("path: {e}")),
        PathError::Unavailable(_) => ApiError::DataDirUnavailable(e.to_string()),
        PathError::Io(m) => ApiError::Internal(m),
        e => ApiError::BadRequest(format!("path: {e}")),
    };
    match q.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        Some(needle) => {
            let deadline = Instant::now() + SEARCH_TIME;
            let found =
                tokio::task::block_in_place(|| data.search(&dir, needle, SEARCH_RESULTS, deadline)).map_err(failed)?;
            Ok(Json(FileList::search(&dir, &found.entries, found.truncated)))
        }
        None => {
            let page = tokio::task::block_in_place(|| data.list(&dir, offset, limit)).map_err(failed)?;
            Ok(Json(FileList::page(&dir, &page.entries, page.total, offset, limit)))
        }
    }
}
