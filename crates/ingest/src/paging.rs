//! Paging of list endpoints: `?limit=50&cursor=…`, answered with
//! `next_cursor` when there is more.

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Largest page.
const MAX_LIMIT: usize = 250;

/// `limit` (1-250, default 50) and `cursor` (an opaque value returned as
/// `next_cursor`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1–250 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 250)]
    limit: Option<usize>,
    /// The `next_cursor` of the page before (empty or absent: the first
    /// page).
    #[serde(default)]
    #[param(pattern = "^[0-9]{0,18}$")]
    cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Position of the first item.
    pub start: usize,
    /// Items per page.
    pub limit: usize,
}

impl PageParams {
    /// Checks the parameters.
    pub fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("`limit` must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let start = match self.cursor.as_deref() {
            None | Some("") => 0,
            Some(cursor) => cursor.parse::<usize>().map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    "`cursor` must be a value returned as `next_cursor`",
                )
            })?,
        };
        Ok(Page { start, limit })
    }
}

impl Page {
    /// How many items to fetch: one more than the page, to tell whether
    /// another page exists.
    pub fn fetch(&self) -> usize {
        self.limit + 1
    }

    /// The answer for `items`, fetched for this page ([`Page::fetch`] of
    /// them), each shown by `view`: the page, and the next cursor when
    /// there is more.
    pub fn answer<'a, S, T>(
        &self,
        items: &'a mut Vec<S>,
        view: impl FnMut(&'a S) -> T,
    ) -> Listed<T> {
        let more = items.len() > self.limit;
        items.truncate(self.limit);
        // Views may borrow from the items (the caller keeps them).
        let items: &'a Vec<S> = items;
        Listed {
            data: items.iter().map(view).collect(),
            next_cursor: more.then(|| (self.start + self.limit).to_string()),
        }
    }
}

/// One page of a list, in the list's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listed<T> {
    /// This page.
    pub data: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}
