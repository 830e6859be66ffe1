//! `GET /v1/events`: one partition's durable records after a position, oldest first, as
//! NDJSON lines of the feed's schema ([`crate::feed::schema`]), with a long-poll.
//!
//! The records are read from the partition's log on this node. On a cluster node, a
//! partition that another node keeps is answered `421 partition_not_local`, naming that
//! node: the feed is not forwarded, because the peer protocol carries commands, queries and
//! TC/C messages but no log reads, and a proxied long-poll would hold a second connection on
//! another node for as long as it waits (history is not forwarded either).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use walletd_core::log::codec::Record;
use walletd_core::model::event::Lsn;
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::Currency;
use walletd_core::model::partition::PartitionId;
use walletd_runtime::driver::{Query, QueryAnswer};

use super::{Api, ApiQuery};
use crate::errors::ApiError;
use crate::feed::read::{records_after, FeedReadError};
use crate::feed::schema::{currency_needed, write_line};
use crate::feed::wait::{durable_after, Durable};
use crate::history::{LogError, LogReader};

/// Default and largest number of records in one answer.
pub const FEED_LIMIT_DEFAULT: usize = 1000;
pub const FEED_LIMIT_MAX: usize = 10_000;

/// The media type of the answer: one JSON object per line.
pub const NDJSON: &str = "application/x-ndjson";
/// The header with the partition's durable lsn when the answer was read: a consumer whose
/// last line has this lsn (or that got no line) has caught up.
pub const DURABLE_LSN_HEADER: &str = "durable-lsn";
/// The header of a `410 feed_compacted` with the first lsn the log still holds.
pub const FIRST_LSN_HEADER: &str = "first-lsn";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// The partition whose log to read, from 0.
    pub partition: PartitionId,
    /// Only records with a larger lsn: the last lsn the consumer has read (0: from the start).
    pub after_lsn: Option<Lsn>,
    /// Most records in the answer.
    pub limit: Option<usize>,
    /// When there is no record after `after_lsn` yet, how long to wait for one, in ms.
    pub wait_ms: Option<u64>,
}

/// A partition's durable events after `after_lsn`, oldest first, one JSON object per line.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsParams),
    responses(
        (status = 200, description = "The records, possibly none", content_type = "application/x-ndjson", body = String),
    ))]
pub async fn events(State(api): State<Api>, ApiQuery(params): ApiQuery<EventsParams>) -> Response {
    match answer(&api, params).await {
        Ok(response) => response,
        Err(response) => response,
    }
}

async fn answer(api: &Api, params: EventsParams) -> Result<Response, Response> {
    let reader = api.history().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "history_unavailable",
            "this node keeps no logs to answer the feed from",
        )
        .into_response()
    })?;
    let request = check(api, reader, &params).map_err(IntoResponse::into_response)?;
    let stats = reader
        .durable_stats(request.partition)
        .map_err(|_| not_local(reader, request.partition).into_response())?;
    let durable = match durable_after(&stats, request.after, request.wait).await {
        Durable::Behind(durable) => {
            return Err(lsn_out_of_range(request.after, durable).into_response())
        }
        Durable::UpTo(durable) => durable,
    };
    if durable == request.after {
        return Ok(ndjson(Vec::new(), durable));
    }
    let (partition, after, limit) = (request.partition, request.after, request.limit);
    let hint = api.feed_cursors().get(partition, after);
    let page = reader
        .scan(move |dir| records_after(dir, partition, after, durable, limit, hint))
        .await
        .map_err(|e| log_unreadable(partition, e))?
        .map_err(|e| read_error(partition, e))?;
    if let (Some(last), Some(next)) = (page.records.last(), page.next) {
        api.feed_cursors().put(partition, last.lsn, next);
    }
    let records = page.records;
    let currencies = currencies_of(api, partition, &records).await?;
    let mut body = Vec::with_capacity(records.len() * 200);
    for record in &records {
        if write_line(record, &currencies, &mut body).is_none() {
            let error = ApiError::internal(format!("no currency for lsn {}", record.lsn));
            return Err(error.into_response());
        }
    }
    Ok(ndjson(body, durable))
}

/// A request checked against the server's limits.
struct FeedRequest {
    partition: PartitionId,
    after: Lsn,
    limit: usize,
    wait: Duration,
}

fn check(api: &Api, reader: &LogReader, params: &EventsParams) -> Result<FeedRequest, ApiError> {
    let partitions = reader.partitions();
    if params.partition >= partitions {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_partition",
            format!(
                "partition {} does not exist: this server has partitions 0 to {}",
                params.partition,
                partitions - 1
            ),
        ));
    }
    let limit = params.limit.unwrap_or(FEED_LIMIT_DEFAULT);
    if limit == 0 || limit > FEED_LIMIT_MAX {
        return Err(ApiError::invalid_query(format!(
            "limit must be between 1 and {FEED_LIMIT_MAX}"
        )));
    }
    let wait_max = api.options().feed_wait_max;
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(0));
    if wait > wait_max {
        return Err(ApiError::invalid_query(format!(
            "wait_ms must be at most {} (--feed-wait-max-ms)",
            wait_max.as_millis()
        )));
    }
    Ok(FeedRequest {
        partition: params.partition,
        after: params.after_lsn.unwrap_or(0),
        limit,
        wait,
    })
}

/// The currency of every account whose lines need one: from the records themselves, what
/// earlier requests learned, or the account's partition (which runs here).
async fn currencies_of(
    api: &Api,
    partition: PartitionId,
    records: &[Record],
) -> Result<HashMap<AccountId, Currency>, Response> {
    let cache = api.feed_currencies();
    cache.learn(records);
    let needed = records.iter().filter_map(|r| currency_needed(&r.event));
    let (mut found, missing) = cache.lookup(needed);
    for account in missing {
        // The feed's accounts are its partition's: asked where they live, that partition.
        debug_assert_eq!(
            Query::Account(account).partition(api.client().partitions()),
            partition
        );
        let answer = api.ask(Query::Account(account)).await;
        let currency = match answer.map_err(IntoResponse::into_response)? {
            QueryAnswer::Account(Some(found)) => found.currency,
            // A durable deposit names an account its partition has: a bug if not.
            _ => {
                let message = format!("account {account} of a durable record is unknown");
                return Err(ApiError::internal(message).into_response());
            }
        };
        cache.insert(account, currency);
        found.insert(account, currency);
    }
    Ok(found)
}

fn ndjson(body: Vec<u8>, durable: Lsn) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    headers.insert(DURABLE_LSN_HEADER, HeaderValue::from(durable));
    response
}

fn not_local(reader: &LogReader, partition: PartitionId) -> ApiError {
    let message = match reader.home_of(partition) {
        Some(home) => format!(
            "partition {partition}'s log is kept by {home}: read its feed there \
             (the feed is not forwarded between nodes)"
        ),
        None => format!("partition {partition}'s log is not kept by this node"),
    };
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "partition_not_local",
        message,
    )
}

fn lsn_out_of_range(after: Lsn, durable: Lsn) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "lsn_out_of_range",
        format!(
            "after_lsn {after} is past the end of the partition's log (its last durable lsn \
             is {durable}): this cursor is not from this log"
        ),
    )
}

fn read_error(partition: PartitionId, error: FeedReadError) -> Response {
    match error {
        FeedReadError::Compacted { first_lsn, .. } => {
            let error = ApiError::new(
                StatusCode::GONE,
                "feed_compacted",
                format!("{error}: rebuild the read model from the balances, then follow the feed from lsn {}", first_lsn - 1),
            );
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(FIRST_LSN_HEADER, HeaderValue::from(first_lsn));
            response
        }
        FeedReadError::Log(error) => log_unreadable(partition, error),
    }
}

fn log_unreadable(partition: PartitionId, error: LogError) -> Response {
    tracing::error!(partition, %error, "log unreadable for the event feed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "log_unreadable",
        error.to_string(),
    )
    .into_response()
}
