//! The list endpoints' answers: a page as a JSON array, the next page's cursor in the
//! `x-next-page` header (see `tandem_api::paging`), and the 400 a bad query gets.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tandem_api::NEXT_PAGE;

use super::{bad_request, ApiError};

pub struct Paged<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T: Serialize> IntoResponse for Paged<T> {
    fn into_response(self) -> Response {
        let mut response = Json(self.items).into_response();
        if let Some(next) = self.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
            response.headers_mut().insert(NEXT_PAGE, next);
        }
        response
    }
}

/// The query, or a 400 that says which parameter is wrong and how.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| bad_request(e.body_text()))
}

/// The `after` cursor, or a 400 when this list never gave it.
pub fn cursor<T: std::str::FromStr>(after: Option<&str>) -> Result<Option<T>, ApiError> {
    after
        .map(|a| {
            a.parse().map_err(|_| {
                bad_request(format!(
                    "after: {a:?} is not a cursor of this list (pass the x-next-page \
                     header of the page before)"
                ))
            })
        })
        .transpose()
}

/// `items` cut to `size` (they were asked as `size + 1`), and the next page's cursor,
/// made from the last item kept, when the extra one shows that more follow.
pub fn cut<T>(mut items: Vec<T>, size: usize, cursor: impl Fn(&T) -> String) -> Paged<T> {
    let more = items.len() > size;
    items.truncate(size);
    let next = more.then(|| items.last().map(&cursor)).flatten();
    Paged { items, next }
}

/// An instance id given as the query parameter `name`, or a 400 that names it.
pub fn instance_param(name: &str, value: &str) -> Result<tandem_proto::InstanceId, ApiError> {
    tandem_proto::InstanceId::new(value).map_err(|e| bad_request(format!("{name}: {e}")))
}

/// A replica set id given as the query parameter `name`, or a 400 that names it.
pub fn set_param(name: &str, value: &str) -> Result<tandem_proto::ReplicaSetId, ApiError> {
    tandem_proto::ReplicaSetId::new(value).map_err(|e| bad_request(format!("{name}: {e}")))
}
