//! Every way a request can fail, mapped in ONE place to an HTTP status and a stable,
//! machine-readable `code`.
//!
//! Clients switch on `code`, never on `message` (which is for people and may change). The
//! matches on [`LedgerError`] and [`Reason`] are exhaustive on purpose: a new variant in core
//! does not compile here until someone decides its status and code.
//!
//! | status | codes |
//! | --- | --- |
//! | 400 | `malformed_json`, `invalid_field`, `invalid_amount`, `invalid_currency`, `invalid_account_id`, `invalid_transaction_id`, `invalid_expires_in_ms`, `invalid_query`, `unknown_partition`, `no_legs`, `too_many_legs` |
//! | 401 | `unauthorized` |
//! | 404 | `not_found` (route), `account_not_found`, `transfer_not_found` |
//! | 405 | `method_not_allowed` |
//! | 409 | `account_exists`, `transaction_conflict`, `lsn_out_of_range`, `transfer_not_refundable`, `not_a_hold`, `hold_not_held`, `hold_already_captured`, `hold_captured`, `hold_voided`, `hold_expired` |
//! | 410 | `feed_compacted` |
//! | 413 | `body_too_large`, `batch_too_large` |
//! | 421 | `partition_not_local` |
//! | 422 | `insufficient_funds`, `currency_mismatch`, `balance_limit`, `same_account`, `cancelled_before_try`, `refund_exceeds_original`, `capture_exceeds_hold`, `leg_to_itself`, `leg_total_too_large` |
//! | 429 | `overloaded`, `too_many_holds` |
//! | 500 | `internal_error`, `log_unreadable`, `transfers_unreadable` (never for a client's mistake) |
//! | 503 | `partition_unavailable`, `wrong_partition`, `timeout`, `hold_being_placed`, `request_timeout`, `history_unavailable`, `memory_limit` |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use walletd_core::ledger::{LedgerError, Reply};
use walletd_core::model::event::Reason;
use walletd_core::model::ids::IdError;
use walletd_core::model::money::MoneyError;
use walletd_core::protocol::message::QueryAnswer;
use walletd_runtime::engine::Unavailable;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `insufficient_funds`.
    pub code: String,
    /// Human-readable explanation; may change between versions.
    pub message: String,
}

/// A failed request: status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// This error, said of leg `index` of a transaction (its message names the leg).
    pub fn in_leg(self, index: usize) -> ApiError {
        ApiError {
            message: format!("leg {index}: {}", self.message),
            ..self
        }
    }

    pub fn malformed_json(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn invalid_field(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
    }

    pub fn invalid_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
    }

    pub fn route_not_found(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}"),
        )
    }

    pub fn transfer_not_found(from: &str, transaction_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "transfer_not_found",
            format!("no transfer {transaction_id:?} from account {from}"),
        )
    }

    pub fn overloaded(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            format!("more than {limit} requests in flight; retry later"),
        )
    }

    pub fn memory_limit(resident: u64, limit: u64) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_limit",
            format!(
                "the server holds {} MiB, above its limit of {} MiB (--memory-limit-mb): new writes are refused, reads are served",
                resident >> 20,
                limit >> 20
            ),
        )
    }

    pub fn body_too_large(limit_bytes: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the limit of {limit_bytes} bytes"),
        )
    }

    pub fn batch_too_large(items: usize, items_max: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch holds at most {items_max} transfers, got {items}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// An account id failed validation; `field` names it in the message.
    pub fn invalid_account_id(field: &str, error: &IdError) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_account_id",
            format!("{field}: {error}"),
        )
    }

    /// A transaction id failed validation; `field` names it in the message.
    pub fn invalid_transaction_id(field: &str, error: &IdError) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_transaction_id",
            format!("{field}: {error}"),
        )
    }

    /// The error response for a status with no more specific cause (a rejection produced by
    /// a layer, e.g. a 405 or a 413 from the body limit), so clients always get JSON.
    pub fn for_status(status: StatusCode) -> ApiError {
        let (code, message) = match status {
            StatusCode::BAD_REQUEST => ("malformed_json", "the request is malformed"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "authorization required"),
            StatusCode::NOT_FOUND => ("not_found", "not found"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this method is not allowed on this route",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => {
                ("body_too_large", "the request body exceeds the size limit")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "malformed_json",
                "the request body must be JSON (Content-Type: application/json)",
            ),
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => (
                "request_timeout",
                "the request did not finish within the server's time limit",
            ),
            StatusCode::TOO_MANY_REQUESTS => ("overloaded", "too many requests in flight"),
            s if s.is_client_error() => ("bad_request", "the request was refused"),
            _ => ("internal_error", "internal error"),
        };
        // 415 and 408 become 400 and 503: the API documents no other statuses.
        let status = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::BAD_REQUEST,
            StatusCode::REQUEST_TIMEOUT => StatusCode::SERVICE_UNAVAILABLE,
            s => s,
        };
        ApiError::new(status, code, message)
    }

    /// A query answered with the answer to another kind: a bug in the engine, never a
    /// client's doing.
    pub fn unexpected_answer(answer: &QueryAnswer) -> ApiError {
        tracing::error!(?answer, "unexpected query answer");
        ApiError::internal("unexpected query answer")
    }

    /// A command answered with a reply of another kind: a bug in the engine, never a
    /// client's doing.
    pub fn unexpected_reply(reply: Reply) -> ApiError {
        tracing::error!(?reply, "unexpected reply kind");
        ApiError::internal("unexpected reply from the ledger")
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_string(),
            message: self.message.clone(),
        }
    }
}

/// Seconds a client is told to wait before it retries a request answered 503.
const RETRY_AFTER_S: &str = "1";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // Every 503 of an error is worth a retry (a partition unavailable, a request past
            // its time limit, a transfer not yet durably accepted): say when.
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
            }
            _ => {}
        }
        response
    }
}

/// The status and code of each ledger error: the single mapping the whole API uses.
pub fn ledger_status(error: &LedgerError) -> (StatusCode, &'static str) {
    match error {
        LedgerError::AccountNotFound(_) => (StatusCode::NOT_FOUND, "account_not_found"),
        LedgerError::AccountExists { .. } => (StatusCode::CONFLICT, "account_exists"),
        LedgerError::CurrencyMismatch { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "currency_mismatch")
        }
        LedgerError::InsufficientFunds { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds")
        }
        LedgerError::BalanceLimit(_) => (StatusCode::UNPROCESSABLE_ENTITY, "balance_limit"),
        LedgerError::SameAccount => (StatusCode::UNPROCESSABLE_ENTITY, "same_account"),
        LedgerError::Conflict(_) => (StatusCode::CONFLICT, "transaction_conflict"),
        // The engine routes every client command to the owning partition; this can only
        // happen with a stale partition map in a cluster, and a retry may succeed.
        LedgerError::WrongPartition { .. } => (StatusCode::SERVICE_UNAVAILABLE, "wrong_partition"),
        // Only coordinator-internal commands produce these; a client command never does.
        LedgerError::UnknownTransfer(_) => (StatusCode::NOT_FOUND, "transfer_not_found"),
        LedgerError::InvalidTransition { .. } => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
        }
        // A chunk file of transfer rows is missing or damaged: an operator's matter.
        LedgerError::Unreadable(_) => (StatusCode::INTERNAL_SERVER_ERROR, "transfers_unreadable"),
        LedgerError::NotRefundable(_) => (StatusCode::CONFLICT, "transfer_not_refundable"),
        LedgerError::NotAHold(_) => (StatusCode::CONFLICT, "not_a_hold"),
        LedgerError::HoldNotHeld(_) => (StatusCode::CONFLICT, "hold_not_held"),
        // The hold may yet be held: its home is asking its destination (after a restart, for
        // about a round trip). Nothing was decided, and the same request will be answered.
        LedgerError::HoldBeingPlaced(_) => (StatusCode::SERVICE_UNAVAILABLE, "hold_being_placed"),
        LedgerError::CaptureExceedsHold { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "capture_exceeds_hold")
        }
        LedgerError::HoldAlreadyCaptured { .. } => (StatusCode::CONFLICT, "hold_already_captured"),
        // A quota of the partition, not its health: waiting helps only once holds end, so
        // it is a 429 like `overloaded` and not a 503, whose `Retry-After: 1` would promise
        // more than it keeps.
        LedgerError::HoldLimit(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_holds"),
        // A capture's amount, finished at its hold's partition: the client's mistake, as an
        // amount refused by the API itself is.
        LedgerError::InvalidAmount(_) => (StatusCode::BAD_REQUEST, "invalid_amount"),
    }
}

/// The status of a transfer that ended rejected or cancelled for `reason`; its code is
/// [`Reason::code`], the same string `GET /v1/transfers/..` reports.
pub fn reason_status(reason: Reason) -> StatusCode {
    match reason {
        Reason::InsufficientFunds => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::DestinationNotFound => StatusCode::NOT_FOUND,
        Reason::DestinationCurrencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::DestinationBalanceLimit => StatusCode::UNPROCESSABLE_ENTITY,
        // The destination partition did not answer in time; the money went back to the
        // source. Final: a retry with the same transaction id gets this answer again.
        Reason::Timeout => StatusCode::SERVICE_UNAVAILABLE,
        Reason::CancelledBeforeTry => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::SourceNotFound => StatusCode::NOT_FOUND,
        Reason::SourceCurrencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::SameAccount => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::RefundExceedsOriginal => StatusCode::UNPROCESSABLE_ENTITY,
        // A capture or void of a hold that had already ended otherwise.
        Reason::HoldVoided | Reason::HoldExpired => StatusCode::CONFLICT,
    }
}

/// A human-readable sentence for a transfer that did not happen.
pub fn reason_message(reason: Reason) -> &'static str {
    match reason {
        Reason::InsufficientFunds => "the source account's available balance is too small",
        Reason::DestinationNotFound => "the destination account does not exist",
        Reason::DestinationCurrencyMismatch => "the destination account holds another currency",
        Reason::DestinationBalanceLimit => {
            "the destination would exceed the largest balance an account may hold"
        }
        Reason::Timeout => {
            "the destination partition did not answer in time; the transfer was cancelled and \
             the amount returned (use a new transaction_id to try again)"
        }
        Reason::CancelledBeforeTry => {
            "the transfer was cancelled before it reached the destination"
        }
        Reason::SourceNotFound => "the source account does not exist",
        Reason::SourceCurrencyMismatch => "the source account holds another currency",
        Reason::SameAccount => "from_account and to_account are the same account",
        Reason::RefundExceedsOriginal => {
            "the refund is larger than what is left to refund of the original transfer"
        }
        Reason::HoldVoided => "the hold was voided: its amount went back to the source",
        Reason::HoldExpired => {
            "the hold expired before it was captured: its amount went back to the source"
        }
    }
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> ApiError {
        let (status, code) = ledger_status(&error);
        ApiError::new(status, code, error.to_string())
    }
}

impl From<Unavailable> for ApiError {
    fn from(error: Unavailable) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "partition_unavailable",
            format!("{error}; retry later"),
        )
    }
}

impl From<MoneyError> for ApiError {
    fn from(error: MoneyError) -> ApiError {
        let code = match error {
            MoneyError::UnknownCurrency(_) => "invalid_currency",
            _ => "invalid_amount",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walletd_core::model::ids::{AccountId, TransactionId};
    use walletd_core::model::money::Currency;

    #[test]
    fn every_ledger_error_has_one_status_and_a_snake_case_code() {
        let account = AccountId::new("a").unwrap();
        let key = walletd_core::model::event::TransferKey {
            from: account,
            transaction_id: TransactionId::new("t").unwrap(),
        };
        let errors = [
            LedgerError::AccountNotFound(account),
            LedgerError::AccountExists {
                account,
                existing: Currency::USD,
            },
            LedgerError::CurrencyMismatch {
                account,
                expected: Currency::USD,
                got: Currency::EUR,
            },
            LedgerError::InsufficientFunds {
                available: "1.00".into(),
                currency: Currency::USD,
            },
            LedgerError::BalanceLimit(account),
            LedgerError::SameAccount,
            LedgerError::Conflict(TransactionId::new("t").unwrap()),
            LedgerError::NotAHold(key),
            LedgerError::HoldNotHeld(key),
            LedgerError::CaptureExceedsHold {
                key,
                held: "1.00".into(),
            },
            LedgerError::HoldAlreadyCaptured {
                key,
                captured: "1.00".into(),
            },
            LedgerError::HoldLimit(1),
            LedgerError::InvalidAmount("amount must be greater than zero".into()),
        ];
        for error in errors {
            let (status, code) = ledger_status(&error);
            assert!(status.is_client_error(), "{error:?} → {status}");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        // Nothing decided, and the same request will be answered: a retry, with its time.
        let response = ApiError::from(LedgerError::HoldBeingPlaced(key)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn layer_statuses_become_documented_json_errors() {
        assert_eq!(
            ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::for_status(StatusCode::REQUEST_TIMEOUT).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ApiError::for_status(StatusCode::PAYLOAD_TOO_LARGE).code,
            "body_too_large"
        );
    }

    #[test]
    fn a_503_says_when_to_retry_and_other_errors_do_not() {
        let timeout = ApiError::for_status(StatusCode::REQUEST_TIMEOUT).into_response();
        assert_eq!(timeout.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(timeout.headers()[header::RETRY_AFTER], RETRY_AFTER_S);
        let refused = ApiError::for_status(StatusCode::NOT_FOUND).into_response();
        assert!(refused.headers().get(header::RETRY_AFTER).is_none());
    }
}
