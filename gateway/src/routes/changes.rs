//! The change feed resource (`/api/users/changes`); the feed itself is [`crate::feed`].

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use protocol::{ChangeParams, FieldError, Since};

use crate::error::ApiError;
use crate::extract::{LastEventId, Query};
use crate::state::AppState;

/// Follow every committed change (Server-Sent Events). Each event's `id` is a resume token:
/// reconnecting with `Last-Event-ID` (an `EventSource` does it by itself) continues right after
/// that event, missing and repeating nothing. A feed that starts from the beginning, or from
/// far back, receives each record's latest change (the logs keep one entry per record), never
/// a stale one after a newer. Changes of one partition come in commit order; partitions are
/// interleaved. Keep-alive comments flow while nothing changes; a client that stops reading
/// for `CHANGE_FEED_STALL_MS` is ended with an `end` event (reconnect to continue).
#[utoipa::path(get, path = "/api/users/changes", tag = "users", security(("api_key" = [])),
    params(ChangeParams),
    responses(
        (status = 200, description = "An endless `text/event-stream`: first an event with only an \
            `id` (the starting position), then one event per change, `id` = resume token, `data` = \
            a `Change`; `event: end` with `data` = `{\"reason\": …}` when the gateway ends the feed",
            content_type = "text/event-stream", body = crate::feed::Change),
    ))]
pub async fn changes(
    State(state): State<Arc<AppState>>,
    Query(params): Query<ChangeParams>,
    LastEventId(last): LastEventId,
    connection: Option<axum::Extension<crate::connection::ConnectionHandle>>,
) -> Result<Response, ApiError> {
    // An EventSource reconnects to the same URL (`since=now` included): the header wins.
    let since = match (last, params.since) {
        (Some(position), _) => Since::After(position),
        (None, Some(since)) => since.parse().map_err(|_| {
            ApiError::invalid(vec![FieldError::new(
                "since",
                "not a position of this feed",
            )])
        })?,
        (None, None) => Since::Beginning,
    };
    let Some(logs) = state.logs.clone() else {
        return Err(ApiError::Protocol(protocol::ProtocolError::Unavailable(
            "this gateway has no partition logs to follow".into(),
        )));
    };
    let connection = connection.map(|axum::Extension(handle)| handle);
    crate::feed::open(logs, state.metrics.clone(), since, params.group, connection).await
}
