//! `?dry_run=true` on the write endpoints: what the request would get now, with nothing
//! recorded.
//!
//! The partition that would execute the command answers a [`Query::DryRun`] of it: its
//! ledger decides the command with the code that decides the real one and throws the events
//! away (`Ledger::dry_run`), after everything it took in before is durable. So a dry run
//! answers what the real request would answer at that moment: the same refusals with the
//! same codes, the first outcome of a transaction id already used, `409` for one used with
//! another body. It moves no money, writes no record and leaves the id free.
//!
//! A transfer (or a hold) across partitions takes two questions, as the real one takes two partitions:
//! its home's (would it debit the source?) and then its destination's (would its Try take
//! the credit?). The answer is the status the client of the real transfer would be told:
//! `committed` (a hold: `held`), or `cancelled` with the destination's reason. Each question sees its
//! partition's state when it arrives; between the two, or between the dry run and a real
//! request, other transfers may change it.

use serde::Deserialize;
use walletd_core::ledger::{Command, DryRun, PhaseResult, Reply, TransferStatus};
use walletd_core::model::event::Transfer;
use walletd_runtime::driver::{CommandResult, Query, QueryAnswer};

use super::transfers::interpret;
use super::Api;
use crate::errors::ApiError;

/// The query string of a write endpoint (documented in the OpenAPI document by
/// `openapi::requests::dry_run_parameter`).
#[derive(Debug, Default, Deserialize)]
pub struct WriteParams {
    /// `true`: answer what the request would get now, and record nothing (no money moves,
    /// no id is used up).
    #[serde(default)]
    pub dry_run: bool,
}

/// The dry run of `command` at the partition that would execute it.
pub(super) async fn ask(api: &Api, command: Command) -> Result<DryRun, ApiError> {
    match api.ask(Query::DryRun(command)).await? {
        QueryAnswer::DryRun(dry) => Ok(dry),
        other => Err(ApiError::unexpected_answer(&other)),
    }
}

/// What a command other than a transfer would get (a deposit or a withdrawal), as the
/// engine would answer the real one.
pub async fn command(api: &Api, command: Command) -> Result<CommandResult, ApiError> {
    debug_assert!(!matches!(command, Command::Transfer(_)), "see `transfer`");
    Ok(ask(api, command).await?.result)
}

/// What `transfer` would get: the status the client of a real transfer that ran to its end
/// would be told, or the refusal.
pub async fn transfer(api: &Api, transfer: Transfer) -> Result<TransferStatus, ApiError> {
    started(api, Command::Transfer(transfer)).await
}

/// What a command that starts a transfer (a transfer, a refund, a hold) would get: its
/// home's answer, and for one across partitions its destination's.
pub async fn started(api: &Api, command: Command) -> Result<TransferStatus, ApiError> {
    // The destination's Try taken is a transfer committed, and a hold held.
    let tried = match command {
        Command::Hold(_) => TransferStatus::Held,
        _ => TransferStatus::Committed,
    };
    let home = ask(api, command).await?;
    let status = interpret(home.result)?;
    let Some(credit) = home.credit else {
        return Ok(status);
    };
    match ask(api, Command::TryCredit(credit)).await?.result? {
        Reply::Phase(PhaseResult::Tried) => Ok(tried),
        // The home cancels a transfer whose Try the destination refused, with its reason.
        Reply::Phase(PhaseResult::TryFailed(reason)) => Ok(TransferStatus::Cancelled(reason)),
        other => Err(ApiError::unexpected_reply(other)),
    }
}
