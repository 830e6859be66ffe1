use proptest::prelude::*;

use super::*;
use crate::ledger::TransactionTerms;
use crate::model::event::{Reason, Transfer, TransferKey};
use crate::model::ids::{AccountId, TransactionId};
use crate::model::money::{Amount, Currency, WrittenAmount, AMOUNT_MINOR_MAX};
use crate::model::transaction::{Leg, Transaction, LEGS_MAX};
use crate::protocol::tx_coordinator::{TxRequest, TxResponse};
use std::sync::Arc;

const ALL_REASONS: [Reason; 12] = Reason::ALL;

fn account(text: &str) -> AccountId {
    AccountId::new(text).unwrap()
}

fn txn(text: &str) -> TransactionId {
    TransactionId::new(text).unwrap()
}

fn transfer() -> Transfer {
    Transfer {
        transaction_id: txn("t-1"),
        from: account("alice"),
        to: account("bob"),
        amount: Amount::from_minor(12_345).unwrap(),
        currency: Currency::KWD,
    }
}

/// The longest transfer there is: every id at its length limit.
fn longest_transfer() -> Transfer {
    Transfer {
        transaction_id: txn(&"t".repeat(ID_LEN_MAX)),
        from: account(&"f".repeat(ID_LEN_MAX)),
        to: account(&"o".repeat(ID_LEN_MAX)),
        amount: Amount::from_minor(AMOUNT_MINOR_MAX).unwrap(),
        currency: Currency::USD,
    }
}

fn round_trip(messages: &[Message]) -> Frame {
    let mut bytes = b"prefix".to_vec();
    let len = encode_frame(7, messages, &mut bytes);
    assert_eq!(len, bytes.len() - 6);
    let (frame, used) = decode_frame(&bytes[6..]).unwrap().unwrap();
    assert_eq!(used, len);
    assert_eq!(frame.map_version, 7);
    assert_eq!(frame.messages, messages);
    frame
}

fn every_command(t: Transfer) -> Vec<Command> {
    let key = t.key();
    let mut commands = vec![
        Command::OpenAccount {
            account: t.from,
            currency: Currency::JPY,
        },
        Command::Deposit {
            account: t.from,
            amount: t.amount,
            currency: t.currency,
            transaction_id: t.transaction_id,
        },
        Command::Withdraw {
            account: t.to,
            amount: t.amount,
            currency: Currency::EUR,
            transaction_id: t.transaction_id,
        },
        Command::Transfer(t),
        Command::Decide {
            key,
            decision: Decision::Confirm,
        },
        Command::FinishDebit { key },
        Command::TryCredit(t),
        Command::ConfirmCredit(t),
        Command::CancelCredit(t),
        Command::AbortCredit(t),
        Command::Abandon(t),
        Command::Refund(Refund {
            refund_id: t.transaction_id,
            original: TransferKey {
                from: t.to,
                transaction_id: t.transaction_id,
            },
            partition: 4095,
            amount: Some(t.amount),
        }),
        Command::Refund(Refund {
            refund_id: t.transaction_id,
            original: key,
            partition: 0,
            amount: None,
        }),
        Command::Hold(Box::new(crate::ledger::Hold {
            transfer: t,
            expires_in_us: u64::MAX,
        })),
        Command::Capture {
            key,
            amount: Some(WrittenAmount::of(t.amount, t.currency)),
        },
        Command::Capture { key, amount: None },
        Command::Void { key },
        Command::ExpireHold { key },
    ];
    for reason in ALL_REASONS {
        commands.push(Command::Decide {
            key,
            decision: Decision::Cancel(reason),
        });
    }
    commands.extend(transaction_commands(&one_leg(t)));
    commands
}

/// `t` as a transaction of one leg. A leg never goes from an account to itself, and the
/// generated accounts of a transfer sometimes are one (short ids collide): then the leg goes
/// to another.
fn one_leg(t: Transfer) -> Arc<Transaction> {
    let to = if t.to == t.from {
        ["leg-to", "leg-to-2"]
            .map(|id| AccountId::new(id).unwrap())
            .into_iter()
            .find(|to| *to != t.from)
            .expect("two candidates, one account")
    } else {
        t.to
    };
    let leg = Leg {
        from: t.from,
        to,
        amount: t.amount,
        currency: t.currency,
    };
    Transaction::new(t.transaction_id, vec![leg]).unwrap()
}

/// The longest transaction there is: [`LEGS_MAX`] legs of the largest amount, every id at
/// its length limit.
fn longest_transaction() -> Arc<Transaction> {
    let id = |head: String| format!("{head}{}", "-".repeat(ID_LEN_MAX - head.len()));
    let legs = (0..LEGS_MAX)
        .map(|i| Leg {
            from: account(&id(format!("from-{i}"))),
            to: account(&id(format!("to-{i}"))),
            amount: Amount::from_minor(AMOUNT_MINOR_MAX).unwrap(),
            currency: Currency::EUR,
        })
        .collect();
    Transaction::new(txn(&id("tx".to_string())), legs).unwrap()
}

/// Every command of a multi-leg transaction, on `tx`.
fn transaction_commands(tx: &Arc<Transaction>) -> Vec<Command> {
    let key = tx.key();
    let mut commands = vec![
        Command::Transact(tx.clone()),
        Command::TryTransaction {
            tx: tx.clone(),
            partition: 4095,
        },
        Command::ConfirmTransaction { key, partition: 0 },
        Command::CancelTransaction { key, partition: 1 },
        Command::AbortTransaction {
            tx: tx.clone(),
            partition: u32::MAX,
        },
        Command::AbandonTransaction(tx.clone()),
    ];
    for reason in ALL_REASONS {
        for failed_leg in [None, Some(0), Some(63), Some(u8::MAX)] {
            commands.push(Command::DecideTransactionCancel {
                key,
                failed_leg,
                reason,
            });
        }
    }
    commands
}

fn every_ledger_error(t: Transfer) -> Vec<LedgerError> {
    vec![
        LedgerError::AccountNotFound(t.from),
        LedgerError::AccountExists {
            account: t.from,
            existing: Currency::GBP,
        },
        LedgerError::CurrencyMismatch {
            account: t.to,
            expected: Currency::USD,
            got: Currency::JPY,
        },
        LedgerError::InsufficientFunds {
            available: "1000000000000000.000".into(),
            currency: Currency::KWD,
        },
        LedgerError::BalanceLimit(t.to),
        LedgerError::SameAccount,
        LedgerError::Conflict(t.transaction_id),
        LedgerError::WrongPartition {
            account: t.from,
            owner: 4095,
            here: 0,
        },
        LedgerError::UnknownTransfer(t.key()),
        LedgerError::InvalidTransition {
            key: t.key(),
            from: format!(
                "{:?}",
                TransferState::Cancelling(Reason::DestinationBalanceLimit)
            ),
            command: "decide",
        },
        LedgerError::InvalidTransition {
            key: t.key(),
            from: "Committed".into(),
            command: "finish",
        },
        LedgerError::Unreadable("chunk file 3: checksum mismatch".into()),
        LedgerError::NotRefundable(t.key()),
        LedgerError::NotAHold(t.key()),
        LedgerError::HoldNotHeld(t.key()),
        LedgerError::HoldBeingPlaced(t.key()),
        LedgerError::CaptureExceedsHold {
            key: t.key(),
            held: "12.34".into(),
        },
        LedgerError::HoldAlreadyCaptured {
            key: t.key(),
            captured: "0.01".into(),
        },
        LedgerError::HoldLimit(100_000),
        LedgerError::InvalidAmount("amount \"1.234\" has more than 2 fraction digits".into()),
    ]
}

fn every_reply() -> Vec<Reply> {
    let mut replies = vec![
        Reply::Opened { created: true },
        Reply::Opened { created: false },
        Reply::Balance { balance: u64::MAX },
        Reply::Transfer(TransferStatus::Pending),
        Reply::Transfer(TransferStatus::Committed),
        Reply::Transfer(TransferStatus::Held),
        Reply::Transfer(TransferStatus::Captured),
        Reply::Phase(PhaseResult::Tried),
        Reply::Phase(PhaseResult::Confirmed),
        Reply::Phase(PhaseResult::Cancelled),
        Reply::Phase(PhaseResult::Refused),
        Reply::Done,
        Reply::HoldEnd(HoldEnd {
            status: TransferStatus::Captured,
            to: AccountId::new("b").unwrap(),
            amount: Amount::from_minor(30).unwrap(),
            currency: Currency::USD,
            captured: Some(Amount::from_minor(12).unwrap()),
        }),
    ];
    for reason in ALL_REASONS {
        replies.push(Reply::Transfer(TransferStatus::Rejected(reason)));
        replies.push(Reply::Transfer(TransferStatus::Cancelled(reason)));
        replies.push(Reply::Phase(PhaseResult::TryFailed(reason)));
        replies.push(Reply::HoldEnd(HoldEnd {
            status: TransferStatus::Cancelled(reason),
            to: AccountId::new(&"z".repeat(64)).unwrap(),
            amount: Amount::from_minor(AMOUNT_MINOR_MAX).unwrap(),
            currency: Currency::KWD,
            captured: None,
        }));
        for leg in [0, 63, u8::MAX] {
            replies.push(Reply::Phase(PhaseResult::LegFailed { leg, reason }));
        }
    }
    replies
}

fn every_state() -> Vec<TransferState> {
    let mut states = vec![
        TransferState::Trying,
        TransferState::Confirming,
        TransferState::Committed,
        TransferState::Held,
        TransferState::Captured,
    ];
    for reason in ALL_REASONS {
        states.push(TransferState::Cancelling(reason));
        states.push(TransferState::Cancelled(reason));
        states.push(TransferState::Rejected(reason));
    }
    states
}

fn row(t: Transfer, state: TransferState) -> TransferRow {
    TransferRow {
        transfer: t,
        state,
        remote: true,
        accepted_at: 1,
        decided_at: u64::MAX,
        finished_at: 1_700_000_000_000_000,
    }
}

fn every_answer(t: Transfer) -> Vec<QueryAnswer> {
    let mut answers = vec![
        QueryAnswer::Account(None),
        QueryAnswer::Account(Some(Account {
            currency: Currency::CHF,
            balance: u64::MAX,
            held: 3,
            incoming: 0,
        })),
        QueryAnswer::Transfer(None),
        QueryAnswer::Unreadable,
    ];
    for state in every_state() {
        answers.push(QueryAnswer::Transfer(Some(row(t, state))));
    }
    answers.push(QueryAnswer::RefundOf(None));
    answers.push(QueryAnswer::RefundOf(Some(t.transaction_id)));
    answers.push(QueryAnswer::HoldTerms(None));
    answers.push(QueryAnswer::TransferBody(None));
    answers.push(QueryAnswer::TransferBody(Some(t)));
    answers.push(QueryAnswer::HoldTerms(Some(crate::ledger::HoldTerms {
        expires_at: 1_234_567,
        captured: Some(t.amount),
    })));
    let results =
        (every_reply().into_iter().map(Ok)).chain(every_ledger_error(t).into_iter().map(Err));
    for result in results {
        answers.push(QueryAnswer::DryRun(DryRun {
            result,
            credit: None,
            failed_leg: None,
        }));
    }
    answers.push(QueryAnswer::DryRun(DryRun {
        result: Ok(Reply::Transfer(TransferStatus::Pending)),
        credit: Some(t),
        failed_leg: None,
    }));
    answers.push(QueryAnswer::DryRun(DryRun {
        result: Ok(Reply::Transfer(TransferStatus::Rejected(
            Reason::InsufficientFunds,
        ))),
        credit: None,
        failed_leg: Some(63),
    }));
    answers.push(QueryAnswer::Transaction(None));
    let third = AccountId::new("third-account").expect("a valid id");
    let leg = |from, to| Leg {
        from,
        to,
        amount: t.amount,
        currency: t.currency,
    };
    let tx = Transaction::new(t.transaction_id, vec![leg(t.from, third), leg(third, t.to)])
        .expect("valid legs");
    for failed_leg in [None, Some(1)] {
        let terms = TransactionTerms {
            tx: tx.clone(),
            failed_leg,
        };
        answers.push(QueryAnswer::Transaction(Some(terms)));
    }
    answers
}

fn every_peer_message(t: Transfer) -> Vec<PeerMessage> {
    let mut messages = Vec::new();
    for phase in [Phase::Try, Phase::Confirm, Phase::Cancel, Phase::Abort] {
        messages.push(PeerMessage::Request {
            from: 17,
            request: PhaseRequest { phase, transfer: t },
        });
        let results = [
            PhaseResult::Tried,
            PhaseResult::TryFailed(Reason::Timeout),
            PhaseResult::Confirmed,
            PhaseResult::Cancelled,
            PhaseResult::Refused,
        ];
        for result in results {
            messages.push(PeerMessage::Response(PhaseResponse {
                phase,
                key: t.key(),
                result,
            }));
        }
    }
    messages.push(PeerMessage::Unresolved { transfer: t });
    // A transaction's phases, its Try carrying its legs.
    // Two legs through the transfer's accounts and a third: from and to may be one account.
    let third = AccountId::new("third-account").expect("a valid id");
    let leg = |from, to| Leg {
        from,
        to,
        amount: t.amount,
        currency: t.currency,
    };
    let legs = vec![leg(t.from, third), leg(third, t.to)];
    let tx = Transaction::new(t.transaction_id, legs).expect("valid legs");
    for phase in [Phase::Try, Phase::Confirm, Phase::Cancel, Phase::Abort] {
        let tx = matches!(phase, Phase::Try | Phase::Abort).then(|| tx.clone());
        let request = TxRequest {
            phase,
            key: t.key(),
            partition: 5,
            tx: tx.clone(),
        };
        messages.push(PeerMessage::TxRequest(request));
        let result = PhaseResult::LegFailed {
            leg: 2,
            reason: Reason::InsufficientFunds,
        };
        let response = TxResponse {
            phase,
            key: t.key(),
            partition: 4,
            result,
            tx,
        };
        messages.push(PeerMessage::TxResponse(response));
    }
    messages.push(PeerMessage::TxUnresolved { tx, partition: 3 });
    messages
}

/// One message of every kind and every variant inside it.
fn every_message(t: Transfer) -> Vec<Message> {
    let mut messages = vec![
        Message::Hello {
            node: u32::MAX,
            map_version: 3,
            map_digest: u64::MAX,
            nonce: [0xab; NONCE_LEN],
        },
        Message::Auth { mac: [7; MAC_LEN] },
        Message::StaleMap {
            expected: 2,
            got: 1,
        },
        Message::Refused { id: u64::MAX },
        Message::QueryRequest {
            id: 1,
            query: Query::Account(t.from),
        },
        Message::QueryRequest {
            id: 2,
            query: Query::Transfer(t.key()),
        },
    ];
    for command in every_command(t) {
        messages.push(Message::QueryRequest {
            id: u64::MAX,
            query: Query::DryRun(command),
        });
    }
    messages.push(Message::QueryRequest {
        id: 3,
        query: Query::RefundOf(t.key()),
    });
    for (i, command) in every_command(t).into_iter().enumerate() {
        messages.push(Message::Request {
            id: i as u64,
            wait: i % 2 == 0,
            command,
        });
    }
    for reply in every_reply() {
        messages.push(Message::Reply {
            id: 9,
            result: Ok(reply),
        });
    }
    for error in every_ledger_error(t) {
        messages.push(Message::Reply {
            id: 10,
            result: Err(error),
        });
    }
    for answer in every_answer(t) {
        messages.push(Message::Answer { id: 11, answer });
    }
    messages.push(Message::Peers(every_peer_message(t)));
    messages
}

#[test]
fn handshake_messages_round_trip() {
    round_trip(&[Message::Hello {
        node: 2,
        map_version: 9,
        map_digest: 0x0123_4567_89ab_cdef,
        nonce: *b"0123456789abcdef",
    }]);
    round_trip(&[Message::Auth {
        mac: [0xff; MAC_LEN],
    }]);
}

#[test]
fn every_command_round_trips_in_a_request() {
    // A transfer to its own source too: the generators below draw such pairs at times.
    let to_itself = Transfer {
        to: transfer().from,
        ..transfer()
    };
    for command in every_command(transfer())
        .into_iter()
        .chain(every_command(to_itself))
    {
        for wait in [false, true] {
            round_trip(&[Message::Request {
                id: 42,
                wait,
                command: command.clone(),
            }]);
        }
    }
}

#[test]
fn the_commands_of_the_longest_transaction_round_trip() {
    let tx = longest_transaction();
    for command in transaction_commands(&tx) {
        let request = Message::Request {
            id: 42,
            wait: true,
            command: command.clone(),
        };
        let dry_run = Message::QueryRequest {
            id: 43,
            query: Query::DryRun(command),
        };
        round_trip(&[request.clone(), dry_run.clone()]);
        for message in [request, dry_run] {
            assert!(encoded_len(&message) <= encoded_len_max(&message));
        }
    }
    // A full frame of them: the writer starts another frame where this one is full.
    let request = Message::Request {
        id: 1,
        wait: false,
        command: Command::Transact(tx),
    };
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::new(&mut bytes, 1);
    while writer.try_push(&request) {}
    let pushed = writer.count();
    assert!(pushed > 1 && pushed < FRAME_MESSAGES_MAX);
    let len = writer.finish();
    let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!((frame.messages.len(), used), (pushed, len));
    assert!(frame.messages.iter().all(|m| *m == request));
}

/// A frame of messages encoded by hand.
fn framed_messages(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![WIRE_VERSION];
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&(messages.len() as u16).to_le_bytes());
    for message in messages {
        body.extend_from_slice(message);
    }
    framed(&body)
}

#[test]
fn transaction_commands_that_cannot_be_are_refused() {
    // alice pays "alicf": one byte from paying herself.
    let t = Transfer {
        to: account("alicf"),
        ..transfer()
    };
    let mut body = Vec::new();
    let request = Message::Request {
        id: 1,
        wait: false,
        command: Command::Transact(one_leg(t)),
    };
    encode_message(&request, &mut body);
    assert_eq!(
        decode_frame(&framed_messages(&[body.clone()]))
            .unwrap()
            .unwrap()
            .0
            .messages,
        [request]
    );
    // Tag, id, wait, the command's tag, the transaction id ("t-1"), then the count of legs.
    let count_at = 1 + 8 + 1 + 1 + 1 + 3;
    assert_eq!(body[count_at], 1);
    let mut bad = Vec::new();
    for count in [0, 2, (LEGS_MAX + 1) as u8] {
        let mut wrong_count = body.clone();
        wrong_count[count_at] = count;
        bad.push(wrong_count);
    }
    let mut to_itself = body.clone();
    let last_of_to = count_at + 1 + (1 + 5) + (1 + 4);
    assert_eq!(to_itself[last_of_to], b'f');
    to_itself[last_of_to] = b'e';
    bad.push(to_itself);
    for bad in bad {
        let result = decode_frame(&framed_messages(&[bad]));
        assert!(
            matches!(result, Err(WireError::Malformed { .. })),
            "{result:?}"
        );
    }
}

#[test]
fn queries_and_every_answer_round_trip() {
    let t = transfer();
    round_trip(&[Message::QueryRequest {
        id: 0,
        query: Query::Account(t.to),
    }]);
    let keyed = [
        Query::Transfer,
        Query::RefundOf,
        Query::HoldTerms,
        Query::Transaction,
        Query::TransferBody,
    ];
    for query in keyed {
        round_trip(&[Message::QueryRequest {
            id: 1,
            query: query(t.key()),
        }]);
    }
    for command in every_command(t) {
        round_trip(&[Message::QueryRequest {
            id: 2,
            query: Query::DryRun(command),
        }]);
    }
    for answer in every_answer(t) {
        round_trip(&[Message::Answer { id: 5, answer }]);
    }
}

#[test]
fn every_reply_round_trips() {
    for reply in every_reply() {
        round_trip(&[Message::Reply {
            id: 3,
            result: Ok(reply),
        }]);
    }
}

#[test]
fn every_ledger_error_crosses_the_wire_unchanged() {
    for error in every_ledger_error(transfer()) {
        let message = Message::Reply {
            id: 3,
            result: Err(error.clone()),
        };
        let frame = round_trip(std::slice::from_ref(&message));
        let Message::Reply {
            result: Err(got), ..
        } = &frame.messages[0]
        else {
            panic!("not an error reply");
        };
        // The receiving node shows the same text and maps the same variant to a status.
        assert_eq!(got.to_string(), error.to_string());
    }
}

#[test]
fn an_unknown_transition_command_and_long_text_degrade_gracefully() {
    let key = transfer().key();
    let long = "é".repeat(ERROR_TEXT_LEN_MAX);
    let message = Message::Reply {
        id: 1,
        result: Err(LedgerError::InvalidTransition {
            key,
            from: long.clone(),
            command: "some-future-command",
        }),
    };
    let mut bytes = Vec::new();
    encode_frame(1, &[message], &mut bytes);
    let (frame, _) = decode_frame(&bytes).unwrap().unwrap();
    let Message::Reply {
        result: Err(LedgerError::InvalidTransition { from, command, .. }),
        ..
    } = &frame.messages[0]
    else {
        panic!("not an invalid transition");
    };
    assert_eq!(*command, TRANSITION_COMMAND_OTHER);
    assert!(from.len() <= ERROR_TEXT_LEN_MAX && long.starts_with(from.as_str()));
    assert_eq!(from.chars().count(), ERROR_TEXT_LEN_MAX / 2);
}

#[test]
fn peer_messages_and_control_messages_round_trip() {
    for peer in every_peer_message(transfer()) {
        round_trip(&[Message::Peers(vec![peer])]);
    }
    round_trip(&[Message::StaleMap {
        expected: 5,
        got: 4,
    }]);
    round_trip(&[Message::Refused { id: 77 }]);
}

#[test]
fn a_batch_of_every_kind_round_trips_and_a_heartbeat_is_empty() {
    round_trip(&every_message(transfer()));
    let frame = round_trip(&[]);
    assert!(frame.messages.is_empty());
    let mut bytes = Vec::new();
    assert_eq!(
        encode_frame(1, &[], &mut bytes),
        FRAME_HEADER_LEN + FRAME_BODY_LEN_MIN
    );
}

/// Bytes `message` encodes to.
fn encoded_len(message: &Message) -> usize {
    let mut bytes = Vec::new();
    encode_message(message, &mut bytes);
    bytes.len()
}

#[test]
fn message_lengths_are_bounded() {
    let mut longest = 0;
    for message in every_message(longest_transfer()) {
        let len = encoded_len(&message);
        assert!(len <= encoded_len_max(&message), "{message:?}");
        // A transaction's answer carries its legs, under a bound of its own.
        let carries_legs = matches!(
            message,
            Message::Answer {
                answer: QueryAnswer::Transaction(Some(_)),
                ..
            }
        );
        if !matches!(message, Message::Peers(_)) && !carries_legs {
            longest = longest.max(len);
        }
    }
    assert_eq!(longest, 243, "update MESSAGE_ENCODED_LEN_MAX's docs");
    assert!(longest <= MESSAGE_ENCODED_LEN_MAX);
}

/// A response whose ids take one byte each: the shortest peer message.
fn shortest_peer_message() -> PeerMessage {
    PeerMessage::Response(PhaseResponse {
        phase: Phase::Try,
        key: TransferKey {
            from: account("a"),
            transaction_id: txn("t"),
        },
        result: PhaseResult::Tried,
    })
}

#[test]
fn peer_message_lengths_are_bounded() {
    let peer_len = |peer: PeerMessage| encoded_len(&Message::Peers(vec![peer])) - PEERS_PREFIX_LEN;
    // Every message within its own bound; the longest of a transfer's at the common bound.
    for peer in every_peer_message(longest_transfer()) {
        assert!(
            peer_len(peer.clone()) <= peer_encoded_len_max(&peer),
            "{peer:?}"
        );
    }
    let longest = every_peer_message(longest_transfer())
        .into_iter()
        .filter(|peer| {
            !matches!(
                peer,
                PeerMessage::TxRequest(TxRequest { tx: Some(_), .. })
                    | PeerMessage::TxResponse(TxResponse { tx: Some(_), .. })
                    | PeerMessage::TxUnresolved { .. }
            )
        })
        .map(peer_len)
        .max();
    assert_eq!(longest, Some(PEER_MESSAGE_ENCODED_LEN_MAX));
    // A transaction's Try of 64 legs of the longest ids is at its bound.
    let id = |c: char| AccountId::new(&c.to_string().repeat(ID_LEN_MAX)).unwrap();
    let leg = |from, to| Leg {
        from,
        to,
        amount: Amount::from_minor(1).unwrap(),
        currency: Currency::USD,
    };
    let legs = (0..LEGS_MAX)
        .map(|n| {
            if n % 2 == 0 {
                leg(id('a'), id('b'))
            } else {
                leg(id('b'), id('a'))
            }
        })
        .collect();
    let transaction_id = TransactionId::new(&"t".repeat(ID_LEN_MAX)).unwrap();
    let tx = Transaction::new(transaction_id, legs).unwrap();
    let longest_try = PeerMessage::TxRequest(TxRequest {
        phase: Phase::Try,
        key: tx.key(),
        partition: 1,
        tx: Some(tx.clone()),
    });
    assert!(peer_len(longest_try) < TX_REQUEST_ENCODED_LEN_MAX);
    // Its refusal, which names a failed leg beside the legs, is at the bound.
    let longest_answer = PeerMessage::TxResponse(TxResponse {
        phase: Phase::Try,
        key: tx.key(),
        partition: 1,
        result: PhaseResult::LegFailed {
            leg: 63,
            reason: Reason::InsufficientFunds,
        },
        tx: Some(tx),
    });
    assert_eq!(peer_len(longest_answer), TX_REQUEST_ENCODED_LEN_MAX);
    assert_eq!(peer_len(shortest_peer_message()), PEER_MESSAGE_LEN_MIN);
    let shortest = every_peer_message(transfer())
        .into_iter()
        .map(peer_len)
        .min();
    assert!(shortest >= Some(PEER_MESSAGE_LEN_MIN));
    // The shortest Peers message is no shorter than the frame's preallocation bound assumes.
    let one = Message::Peers(vec![shortest_peer_message()]);
    assert!(encoded_len(&one) >= MESSAGE_LEN_MIN);
}

/// `PEER_MESSAGES_PER_INPUT_MAX` phase requests carrying the longest transfer.
fn longest_peers_message() -> Message {
    let request = every_peer_message(longest_transfer())[0].clone();
    assert!(matches!(request, PeerMessage::Request { .. }));
    Message::Peers(vec![request; PEER_MESSAGES_PER_INPUT_MAX])
}

#[test]
fn peers_messages_of_every_size_round_trip() {
    let peers = every_peer_message(transfer());
    round_trip(&[Message::Peers(peers.clone())]);
    let many: Vec<PeerMessage> = peers.iter().cloned().cycle().take(1000).collect();
    let frame = round_trip(&[
        Message::Refused { id: 1 },
        Message::Peers(many.clone()),
        Message::Peers(peers[..1].to_vec()),
    ]);
    assert_eq!(frame.messages[1], Message::Peers(many), "order is kept");
    round_trip(&[longest_peers_message()]);
}

#[test]
fn a_full_peers_message_of_the_longest_peer_messages_fills_an_empty_frame() {
    let full = longest_peers_message();
    assert_eq!(encoded_len(&full), PEERS_ENCODED_LEN_MAX);
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::new(&mut bytes, 1);
    assert!(writer.try_push(&full));
    // A second does not fit: the frame is left as it was, and the message starts the next.
    assert!(!writer.try_push(&full));
    assert_eq!(writer.count(), 1);
    let len = writer.finish();
    assert!(len <= FRAME_ENCODED_LEN_MAX);
    let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!((frame.messages, used), (vec![full], len));
}

#[test]
fn a_frame_takes_messages_beside_a_peers_message_while_its_bytes_allow() {
    let longest_answer = Message::Answer {
        id: u64::MAX,
        answer: QueryAnswer::Transfer(Some(row(longest_transfer(), TransferState::Trying))),
    };
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::new(&mut bytes, 1);
    writer.push(&longest_peers_message());
    let mut answers = 0;
    while writer.try_push(&longest_answer) {
        answers += 1;
    }
    assert!(!writer.is_full());
    let room = FRAME_BODY_LEN_PLAIN_MAX - BODY_PREFIX_LEN - PEERS_ENCODED_LEN_MAX;
    assert_eq!(answers, room / encoded_len(&longest_answer));
    let len = writer.finish();
    let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!((frame.messages.len(), used), (1 + answers, len));
}

#[test]
#[should_panic(expected = "a frame body holds at most")]
fn pushing_a_message_without_room_is_a_bug() {
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::new(&mut bytes, 1);
    writer.push(&longest_peers_message());
    writer.push(&longest_peers_message());
}

#[test]
#[should_panic(expected = "a Peers message holds 1..=")]
fn an_empty_peers_message_is_a_bug() {
    encode_frame(1, &[Message::Peers(Vec::new())], &mut Vec::new());
}

#[test]
#[should_panic(expected = "a Peers message holds 1..=")]
fn an_oversized_peers_message_is_a_bug() {
    let peers = vec![shortest_peer_message(); PEER_MESSAGES_PER_INPUT_MAX + 1];
    encode_frame(1, &[Message::Peers(peers)], &mut Vec::new());
}

#[test]
fn peers_counts_out_of_bounds_and_the_retired_peer_tag_are_refused() {
    let mut good = Vec::new();
    let peers = vec![shortest_peer_message(); 2];
    encode_frame(1, &[Message::Peers(peers)], &mut good);
    let body = good[FRAME_HEADER_LEN..].to_vec();
    let count_at = BODY_PREFIX_LEN + 1;
    let with_count = |count: u16| {
        let mut bad = body.clone();
        bad[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
        bad
    };
    let mut retired = body.clone();
    retired[BODY_PREFIX_LEN] = 7;
    // A Peers message of no peer message, and nothing after it.
    let mut empty = body[..count_at].to_vec();
    empty.extend_from_slice(&0u16.to_le_bytes());
    for bad in [
        empty,
        with_count(0),
        with_count(1),
        with_count(3),
        with_count(PEER_MESSAGES_PER_INPUT_MAX as u16 + 1),
        with_count(u16::MAX),
        retired,
    ] {
        assert!(matches!(
            decode_frame(&framed(&bad)),
            Err(WireError::Malformed { .. })
        ));
    }
}

#[test]
fn a_full_frame_of_the_longest_messages_fits_its_bound() {
    let message = Message::Answer {
        id: u64::MAX,
        answer: QueryAnswer::Transfer(Some(row(longest_transfer(), TransferState::Trying))),
    };
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::new(&mut bytes, 1);
    while !writer.is_full() {
        writer.push(&message);
    }
    assert_eq!(writer.count(), FRAME_MESSAGES_MAX);
    let len = writer.finish();
    assert!(len <= FRAME_ENCODED_LEN_MAX);
    let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!((frame.messages.len(), used), (FRAME_MESSAGES_MAX, len));
}

#[test]
#[should_panic(expected = "at most")]
fn pushing_into_a_full_frame_is_a_bug() {
    let mut bytes = Vec::new();
    let mut writer = FrameWriter::new(&mut bytes, 1);
    for _ in 0..=FRAME_MESSAGES_MAX {
        writer.push(&Message::Refused { id: 1 });
    }
}

#[test]
fn every_prefix_of_a_frame_asks_for_more_bytes() {
    let mut bytes = Vec::new();
    encode_frame(1, &every_message(transfer())[..8], &mut bytes);
    for cut in 0..bytes.len() {
        assert_eq!(decode_frame(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
    // Two frames back to back decode one after the other.
    let first_len = bytes.len();
    encode_frame(2, &[Message::Refused { id: 3 }], &mut bytes);
    let (_, used) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!(used, first_len);
    let (second, _) = decode_frame(&bytes[used..]).unwrap().unwrap();
    assert_eq!(second.map_version, 2);
}

#[test]
fn every_flipped_bit_is_refused() {
    let mut bytes = Vec::new();
    encode_frame(1, &every_message(transfer())[..6], &mut bytes);
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        match decode_frame(&damaged) {
            Ok(None) | Err(_) => {}
            Ok(Some(frame)) => panic!("bit {bit} went unnoticed: {frame:?}"),
        }
    }
}

/// Frames `body` with a valid header, to test what the checksum alone does not catch.
fn framed(body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), body);
    let mut out = len.to_vec();
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn checksummed_but_invalid_bodies_are_refused() {
    let mut good = Vec::new();
    encode_frame(1, &[Message::Refused { id: 1 }], &mut good);
    let body = good[FRAME_HEADER_LEN..].to_vec();
    let mut version = body.clone();
    version[0] = WIRE_VERSION + 1;
    assert_eq!(
        decode_frame(&framed(&version)),
        Err(WireError::Version(WIRE_VERSION + 1))
    );
    let mut too_many = body.clone();
    too_many[9..11].copy_from_slice(&(FRAME_MESSAGES_MAX as u16 + 1).to_le_bytes());
    assert_eq!(
        decode_frame(&framed(&too_many)),
        Err(WireError::TooManyMessages(FRAME_MESSAGES_MAX + 1))
    );
    let mut trailing = body.clone();
    trailing.push(0);
    let mut unknown_tag = body.clone();
    unknown_tag[BODY_PREFIX_LEN] = 0;
    let mut short_count = body.clone();
    short_count[9..11].copy_from_slice(&2u16.to_le_bytes());
    for bad in [trailing, unknown_tag, short_count] {
        assert!(matches!(
            decode_frame(&framed(&bad)),
            Err(WireError::Malformed { .. })
        ));
    }
}

#[test]
fn lengths_out_of_bounds_are_refused_from_the_header_alone() {
    for len in [
        0,
        FRAME_BODY_LEN_MIN - 1,
        FRAME_BODY_LEN_MAX + 1,
        u32::MAX as usize,
    ] {
        let mut header = [0u8; FRAME_HEADER_LEN];
        header[..4].copy_from_slice(&(len as u32).to_le_bytes());
        assert_eq!(frame_body_len(&header), Err(WireError::Length { len }));
        assert_eq!(decode_frame(&header), Err(WireError::Length { len }));
    }
}

#[test]
fn bad_field_values_are_refused() {
    let mut good = Vec::new();
    let request = Message::Request {
        id: 1,
        wait: true,
        command: Command::Transfer(transfer()),
    };
    encode_frame(1, &[request], &mut good);
    let body = good[FRAME_HEADER_LEN..].to_vec();
    let wait_at = BODY_PREFIX_LEN + 1 + 8;
    let mut bad_bool = body.clone();
    bad_bool[wait_at] = 2;
    let mut bad_command = body.clone();
    bad_command[wait_at + 1] = 14;
    let mut bad_id = body.clone();
    bad_id[wait_at + 3] = b' ';
    let mut zero_amount = body.clone();
    let amount_at = body.len() - 2 - 8;
    zero_amount[amount_at..amount_at + 8].copy_from_slice(&0u64.to_le_bytes());
    for bad in [bad_bool, bad_command, bad_id, zero_amount] {
        assert!(matches!(
            decode_frame(&framed(&bad)),
            Err(WireError::Malformed { index: 0, .. })
        ));
    }
}

// Property tests: arbitrary messages round-trip; arbitrary bytes never panic the decoder.

fn id_text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:-]{1,64}"
}

fn arb_account() -> impl Strategy<Value = AccountId> {
    id_text().prop_map(|s| AccountId::new(&s).unwrap())
}

fn arb_txn() -> impl Strategy<Value = TransactionId> {
    id_text().prop_map(|s| TransactionId::new(&s).unwrap())
}

fn arb_currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(Currency::ALL.to_vec())
}

fn arb_reason() -> impl Strategy<Value = Reason> {
    prop::sample::select(ALL_REASONS.to_vec())
}

fn arb_transfer() -> impl Strategy<Value = Transfer> {
    (
        arb_txn(),
        arb_account(),
        arb_account(),
        1..=AMOUNT_MINOR_MAX,
        arb_currency(),
    )
        .prop_map(|(transaction_id, from, to, minor, currency)| Transfer {
            transaction_id,
            from,
            to,
            amount: Amount::from_minor(minor).unwrap(),
            currency,
        })
}

fn arb_key() -> impl Strategy<Value = TransferKey> {
    (arb_account(), arb_txn()).prop_map(|(from, transaction_id)| TransferKey {
        from,
        transaction_id,
    })
}

fn arb_command() -> impl Strategy<Value = Command> {
    (arb_transfer(), 0..13usize, any::<bool>(), arb_reason()).prop_map(
        |(t, pick, confirm, reason)| {
            let decision = if confirm {
                Decision::Confirm
            } else {
                Decision::Cancel(reason)
            };
            match every_command(t).swap_remove(pick) {
                Command::Decide { key, .. } => Command::Decide { key, decision },
                other => other,
            }
        },
    )
}

fn arb_ledger_error() -> impl Strategy<Value = LedgerError> {
    (arb_transfer(), 0..11usize, "[ -~é]{0,40}", any::<u32>()).prop_map(
        |(t, pick, text, number)| match every_ledger_error(t)[pick].clone() {
            LedgerError::InsufficientFunds { currency, .. } => LedgerError::InsufficientFunds {
                available: text,
                currency,
            },
            LedgerError::InvalidTransition { key, command, .. } => LedgerError::InvalidTransition {
                key,
                from: text,
                command,
            },
            LedgerError::WrongPartition { account, here, .. } => LedgerError::WrongPartition {
                account,
                owner: number,
                here,
            },
            other => other,
        },
    )
}

fn arb_hello() -> impl Strategy<Value = Message> {
    let fields = (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<[u8; NONCE_LEN]>(),
    );
    fields.prop_map(|(node, map_version, map_digest, nonce)| Message::Hello {
        node,
        map_version,
        map_digest,
        nonce,
    })
}

fn arb_peer_message() -> impl Strategy<Value = PeerMessage> {
    (arb_transfer(), 0..25usize, any::<u32>()).prop_map(|(t, pick, from)| match every_peer_message(
        t,
    )[pick]
        .clone()
    {
        PeerMessage::Request { request, .. } => PeerMessage::Request { from, request },
        response => response,
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_hello(),
        any::<[u8; MAC_LEN]>().prop_map(|mac| Message::Auth { mac }),
        (any::<u64>(), any::<bool>(), arb_command())
            .prop_map(|(id, wait, command)| Message::Request { id, wait, command }),
        (any::<u64>(), arb_key(), arb_account(), any::<bool>()).prop_map(|(id, key, a, pick)| {
            let query = if pick {
                Query::Transfer(key)
            } else {
                Query::Account(a)
            };
            Message::QueryRequest { id, query }
        }),
        (any::<u64>(), arb_command()).prop_map(|(id, command)| Message::QueryRequest {
            id,
            query: Query::DryRun(command)
        }),
        (any::<u64>(), prop::sample::select(every_reply())).prop_map(|(id, reply)| {
            Message::Reply {
                id,
                result: Ok(reply),
            }
        }),
        (any::<u64>(), arb_ledger_error())
            .prop_map(|(id, e)| Message::Reply { id, result: Err(e) }),
        (any::<u64>(), arb_transfer(), 0..15usize).prop_map(|(id, t, pick)| Message::Answer {
            id,
            answer: every_answer(t).swap_remove(pick % every_answer(t).len()),
        }),
        prop::collection::vec(arb_peer_message(), 1..8).prop_map(Message::Peers),
        (any::<u64>(), any::<u64>())
            .prop_map(|(expected, got)| Message::StaleMap { expected, got }),
        any::<u64>().prop_map(|id| Message::Refused { id }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_messages_round_trip(
        map_version in any::<u64>(),
        messages in prop::collection::vec(arb_message(), 0..40),
    ) {
        let mut bytes = Vec::new();
        encode_frame(map_version, &messages, &mut bytes);
        let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(frame.map_version, map_version);
        prop_assert_eq!(frame.messages, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_frame(&bytes);
        let mut header = [0u8; FRAME_HEADER_LEN];
        let n = bytes.len().min(FRAME_HEADER_LEN);
        header[..n].copy_from_slice(&bytes[..n]);
        let _ = decode_frame_body(&header, &bytes[n..]);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_checksum_never_panic(
        map_version in any::<u64>(),
        count in 0..4u16,
        tail in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        // Past the checksum, every byte is attacker-chosen: only the decoder's checks remain.
        let mut body = vec![WIRE_VERSION];
        body.extend_from_slice(&map_version.to_le_bytes());
        body.extend_from_slice(&count.to_le_bytes());
        body.extend_from_slice(&tail);
        let _ = decode_frame(&framed(&body));
    }

    #[test]
    fn mutated_frames_never_panic_nor_decode_wrong(
        messages in prop::collection::vec(arb_message(), 1..6),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0..8u8), 1..4),
    ) {
        let mut bytes = Vec::new();
        encode_frame(1, &messages, &mut bytes);
        let original = bytes.clone();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        if let Ok(Some((frame, _))) = decode_frame(&bytes) {
            prop_assert_eq!(&bytes, &original, "a damaged frame decoded: {:?}", frame);
        }
    }
}

#[test]
fn no_message_is_shorter_than_the_preallocation_bound() {
    // The decoder preallocates for `remaining / MESSAGE_LEN_MIN` messages at most, so the
    // bound must not exceed the shortest message, or a frame could hold more than it sized.
    let shortest = every_message(transfer())
        .iter()
        .map(|message| {
            let mut bytes = Vec::new();
            encode_message(message, &mut bytes);
            bytes.len()
        })
        .min();
    assert_eq!(shortest, Some(MESSAGE_LEN_MIN));
}

// Hostile bytes beyond flipped bits: frames cut, grown and overwritten, with their checksums
// made right so that the damage reaches the message decoders.

fn resealed(bytes: &[u8]) -> Vec<u8> {
    crate::hostile::reseal_frames(bytes, FRAME_BODY_LEN_MIN..=FRAME_BODY_LEN_MAX)
}

/// Decodes a stream of frames front to back; every frame that decodes must be within its
/// bounds and encode back to its own bytes, through both decoding paths.
fn check_stream(bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut at = 0;
    while let Ok(Some((frame, used))) = decode_frame(&bytes[at..]) {
        prop_assert!(used <= FRAME_ENCODED_LEN_MAX && frame.messages.len() <= FRAME_MESSAGES_MAX);
        let whole = &bytes[at..at + used];
        let mut again = Vec::new();
        encode_frame(frame.map_version, &frame.messages, &mut again);
        prop_assert_eq!(&again[..], whole);
        let header: &[u8; FRAME_HEADER_LEN] = whole[..FRAME_HEADER_LEN].try_into().unwrap();
        prop_assert_eq!(
            decode_frame_body(header, &whole[FRAME_HEADER_LEN..]),
            Ok(frame)
        );
        at += used;
    }
    Ok(())
}

fn arb_handshake_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_hello(),
        any::<[u8; MAC_LEN]>().prop_map(|mac| Message::Auth { mac }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn damaged_frame_streams_decode_to_their_own_bytes_or_fail(
        messages in prop::collection::vec(arb_message(), 0..6),
        more in prop::collection::vec(arb_message(), 0..3),
        mutations in crate::hostile::mutations(),
        reseal in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        encode_frame(1, &messages, &mut bytes);
        encode_frame(1, &more, &mut bytes);
        let damaged = crate::hostile::mutated(bytes, &mutations);
        let damaged = if reseal { resealed(&damaged) } else { damaged };
        check_stream(&damaged)?;
    }

    /// What an accepting node reads from a peer before it is authenticated: two frames, each
    /// meant to hold one `Hello` or `Auth`.
    #[test]
    fn damaged_handshake_frames_decode_to_their_own_bytes_or_fail(
        hello in arb_handshake_message(),
        auth in arb_handshake_message(),
        mutations in crate::hostile::mutations(),
        reseal in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        encode_frame(3, &[hello], &mut bytes);
        encode_frame(3, &[auth], &mut bytes);
        let damaged = crate::hostile::mutated(bytes, &mutations);
        let damaged = if reseal { resealed(&damaged) } else { damaged };
        check_stream(&damaged)?;
        let header: [u8; FRAME_HEADER_LEN] = match damaged.get(..FRAME_HEADER_LEN) {
            Some(header) => header.try_into().unwrap(),
            None => return Ok(()),
        };
        if let Ok(len) = frame_body_len(&header) {
            prop_assert!(len <= FRAME_BODY_LEN_MAX, "the reader's body buffer is bounded");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `Peers` messages damaged anywhere, their counts most of all, and resealed so that the
    /// damage reaches the peer decoders: each frame decodes to its own bytes or fails.
    #[test]
    fn damaged_peers_messages_decode_to_their_own_bytes_or_fail(
        groups in prop::collection::vec(prop::collection::vec(arb_peer_message(), 1..40), 1..4),
        forged_count in any::<u16>(),
        forge in any::<bool>(),
        mutations in crate::hostile::mutations(),
        reseal in any::<bool>(),
    ) {
        let messages: Vec<Message> = groups.into_iter().map(Message::Peers).collect();
        let mut bytes = Vec::new();
        encode_frame(1, &messages, &mut bytes);
        if forge {
            let count_at = FRAME_HEADER_LEN + BODY_PREFIX_LEN + 1;
            bytes[count_at..count_at + 2].copy_from_slice(&forged_count.to_le_bytes());
        }
        let damaged = crate::hostile::mutated(bytes, &mutations);
        let damaged = if reseal || forge { resealed(&damaged) } else { damaged };
        check_stream(&damaged)?;
    }
}

/// A Raft append of `entries` entries of `entry_len` bytes each, from replica 1 to 2.
fn raft_append(entries: usize, entry_len: usize) -> crate::replica::RaftMessage {
    let mut message = crate::replica::RaftMessage::default();
    message.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    (message.from, message.to, message.term, message.index) = (1, 2, 3, 40);
    message.commit = 39;
    message.entries = (0..entries)
        .map(|i| {
            let mut entry = raft::eraftpb::Entry::default();
            (entry.index, entry.term) = (41 + i as u64, 3);
            entry.data = vec![i as u8; entry_len].into();
            entry
        })
        .collect();
    message
}

#[test]
fn raft_messages_round_trip_and_their_length_is_known_before_encoding() {
    let mut vote = crate::replica::RaftMessage::default();
    vote.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    (vote.from, vote.to, vote.term) = (3, 1, 9);
    let messages = vec![raft_append(3, 100), vote];
    let raft = Message::Raft {
        partition: 5,
        messages: messages.clone(),
    };
    round_trip(&[raft.clone(), Message::Refused { id: 1 }]);
    assert_eq!(encoded_len(&raft), raft_encoded_len(&messages));
}

#[test]
fn a_raft_message_of_megabytes_fits_an_empty_frame() {
    // Entries are a partition's group commits: a frame must carry a message of several.
    let big = Message::Raft {
        partition: 0,
        messages: vec![raft_append(4, 1 << 20)],
    };
    assert!(encoded_len(&big) <= RAFT_ENCODED_LEN_MAX);
    round_trip(&[big]);
}

#[test]
fn a_bad_raft_message_is_an_error_not_a_panic() {
    let raft = Message::Raft {
        partition: 1,
        messages: vec![raft_append(1, 10)],
    };
    let mut bytes = Vec::new();
    encode_frame(1, &[raft], &mut bytes);
    // The body after the frame prefix: tag, partition, count, then the first length.
    let count_at = FRAME_HEADER_LEN + 1 + 8 + 2 + 1 + 4;
    for (at, value) in [(count_at, 0u8), (count_at + 2, 0xff)] {
        let mut bad = bytes.clone();
        bad[at] = value;
        // Re-checksum, so that the message itself is what is refused.
        let body = bad[FRAME_HEADER_LEN..].to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bad[..4]), &body);
        bad[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(
            matches!(decode_frame(&bad), Err(WireError::Malformed { .. })),
            "byte {at} = {value}"
        );
    }
}

#[test]
fn membership_messages_round_trip() {
    use crate::replica::membership::{Answer, MembershipMessage};
    let answers = [
        Answer::Fresh,
        Answer::Running { leader: None },
        Answer::Running {
            leader: Some((3 << 32) | 2),
        },
        Answer::Member { id: (1 << 32) | 1 },
    ];
    let mut messages = vec![Message::Membership {
        partition: 4,
        from: 2,
        message: MembershipMessage::Ask {
            node: 2,
            nonce: u64::MAX,
        },
    }];
    for answer in answers {
        messages.push(Message::Membership {
            partition: 0,
            from: 7,
            message: MembershipMessage::Answer { nonce: 5, answer },
        });
    }
    let leaving = [
        MembershipMessage::Check { id: (2 << 32) | 4 },
        MembershipMessage::Removed {
            id: 1,
            conf_index: u64::MAX,
        },
    ];
    for message in leaving {
        messages.push(Message::Membership {
            partition: 3,
            from: 1,
            message,
        });
    }
    round_trip(&messages);
}

#[test]
fn catch_up_messages_round_trip() {
    use crate::replica::CatchUpMessage;
    let fetch = CatchUpMessage::Fetch {
        after_lsn: 7,
        through_lsn: u64::MAX,
    };
    let records = CatchUpMessage::Records {
        first_lsn: 8,
        records: bytes::Bytes::from(vec![3u8; 1 << 20]),
    };
    let messages: Vec<Message> = [fetch, records]
        .into_iter()
        .map(|message| Message::CatchUp {
            partition: 2,
            from: 1,
            message,
        })
        .collect();
    round_trip(&messages[..1]);
    round_trip(&messages[1..]);
}

#[test]
fn peer_groups_keep_order_and_fit_each_group_in_one_peers_message() {
    let longest = every_peer_message(longest_transfer());
    let try_of_legs = |n: usize| {
        let legs = (0..n)
            .map(|i| Leg {
                from: account(&format!("{i:0>64}")),
                to: account(&"z".repeat(ID_LEN_MAX)),
                amount: Amount::from_minor(1).unwrap(),
                currency: Currency::USD,
            })
            .collect();
        let tx = Transaction::new(txn(&"t".repeat(ID_LEN_MAX)), legs).unwrap();
        PeerMessage::TxRequest(TxRequest {
            phase: Phase::Try,
            key: tx.key(),
            partition: 2,
            tx: Some(tx),
        })
    };
    // Transfers' messages and transactions' Tries of 64 legs, interleaved.
    let group: Vec<PeerMessage> = (0..3000)
        .map(|n| match n % 50 {
            0 => try_of_legs(LEGS_MAX),
            _ => longest[n % longest.len()].clone(),
        })
        .collect();
    let pieces = peer_groups(group.clone());
    assert!(pieces.len() > group.len().div_ceil(PEER_MESSAGES_PER_INPUT_MAX));
    for piece in &pieces {
        assert!((1..=PEER_MESSAGES_PER_INPUT_MAX).contains(&piece.len()));
        assert!(encoded_len(&Message::Peers(piece.clone())) <= PEERS_ENCODED_LEN_MAX);
    }
    assert_eq!(pieces.concat(), group);
    round_trip(&[Message::Peers(pieces[0].clone())]);
}
