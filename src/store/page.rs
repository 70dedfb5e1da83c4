//! Pagination shared by every list tool: `limit` (1..=100, default 50) and an opaque
//! `cursor`; answers carry `total`, `has_more` and `next_cursor`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const MAX_LIMIT: u32 = 100;
const DEFAULT_LIMIT: u32 = 50;

/// Paging arguments of every list tool (the whole input of those with no filters).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PageArgs {
    /// Items per page, 1 to 100 (default 50).
    #[schemars(range(min = 1, max = 100))]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    ///
    /// Omit it for the first page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    #[error("limit must be between 1 and {MAX_LIMIT}")]
    Limit,
    #[error("cursor is not one this server issued; omit it to start from the first page")]
    Cursor,
}

impl PageArgs {
    pub fn page(&self) -> Result<Page, PageError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(PageError::Limit);
        }
        let offset = match &self.cursor {
            None => 0,
            Some(cursor) => URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| text.strip_prefix("o:")?.parse::<i64>().ok())
                .filter(|offset| *offset >= 0)
                .ok_or(PageError::Cursor)?,
        };
        Ok(Page {
            limit: i64::from(limit),
            offset,
        })
    }
}

/// Paging facts of an answer.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PageInfo {
    /// Items matching, over all pages.
    pub total: i64,
    pub has_more: bool,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Page {
    pub fn info(self, total: i64) -> PageInfo {
        let next = self.offset + self.limit;
        let has_more = next < total;
        PageInfo {
            total,
            has_more,
            next_cursor: has_more.then(|| URL_SAFE_NO_PAD.encode(format!("o:{next}"))),
        }
    }
}

impl PageArgs {
    /// Paging from a tool input that has its own `limit` and `cursor` fields.
    pub fn of(limit: Option<u32>, cursor: &Option<String>) -> Result<Page, PageError> {
        PageArgs {
            limit,
            cursor: cursor.clone(),
        }
        .page()
    }
}

/// One page of rows and the total: `SELECT <columns>` + what `from` pushes (FROM, JOIN and
/// WHERE, the same for the count) + `order_by`. Every list tool reads through this.
pub async fn fetch_page<T>(
    pool: &sqlx::PgPool,
    columns: &str,
    from: impl Fn(&mut sqlx::QueryBuilder<sqlx::Postgres>),
    order_by: &str,
    page: Page,
) -> Result<(Vec<T>, i64), sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let mut query = sqlx::QueryBuilder::new(format!("SELECT {columns}"));
    from(&mut query);
    query.push(format!(" ORDER BY {order_by} LIMIT "));
    query
        .push_bind(page.limit)
        .push(" OFFSET ")
        .push_bind(page.offset);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let mut count = sqlx::QueryBuilder::new("SELECT count(*)");
    from(&mut count);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let first = PageArgs {
            limit: Some(10),
            cursor: None,
        }
        .page()
        .unwrap();
        let info = first.info(25);
        assert!(info.has_more);
        let second = PageArgs {
            limit: Some(10),
            cursor: info.next_cursor,
        }
        .page()
        .unwrap();
        assert_eq!(second.offset, 10);
        assert!(!second.info(20).has_more);
        assert_eq!(
            PageArgs {
                limit: Some(0),
                cursor: None
            }
            .page(),
            Err(PageError::Limit)
        );
        assert_eq!(
            PageArgs {
                limit: Some(101),
                cursor: None
            }
            .page(),
            Err(PageError::Limit)
        );
        let forged = Some("' OR 1=1 --".to_owned());
        assert_eq!(
            PageArgs {
                limit: None,
                cursor: forged
            }
            .page(),
            Err(PageError::Cursor)
        );
    }
}
