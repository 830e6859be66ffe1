//! The currency of each account, for the lines whose amounts need it.
//!
//! A deposit or a withdrawal names its account but not its currency, and a page may start
//! long after the account was opened. An account's currency never changes once it is open,
//! so what was learned once (from an `AccountOpened` in a page, or from asking the
//! partition) stays true, and a cache can never be stale: it can only miss.

use std::collections::HashMap;
use std::sync::Mutex;

use walletd_core::log::codec::Record;
use walletd_core::model::event::Event;
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::Currency;

/// Accounts whose currency is remembered at most; when full, the cache starts over (a miss
/// costs one query to the account's partition, so forgetting is cheap and bounds memory).
pub const CURRENCIES_CACHED_MAX: usize = 1 << 20;

/// Known currencies of accounts, shared by every feed request.
#[derive(Debug, Default)]
pub struct Currencies {
    known: Mutex<HashMap<AccountId, Currency>>,
}

impl Currencies {
    /// Remembers the currencies of the accounts `records` open.
    pub fn learn(&self, records: &[Record]) {
        let mut known = self.known.lock().expect("not poisoned");
        for record in records {
            if let Event::AccountOpened { account, currency } = record.event {
                remember(&mut known, account, currency);
            }
        }
    }

    pub fn insert(&self, account: AccountId, currency: Currency) {
        remember(
            &mut self.known.lock().expect("not poisoned"),
            account,
            currency,
        );
    }

    /// The known currencies of `accounts`, and the accounts whose currency is not known.
    pub fn lookup(
        &self,
        accounts: impl IntoIterator<Item = AccountId>,
    ) -> (HashMap<AccountId, Currency>, Vec<AccountId>) {
        let known = self.known.lock().expect("not poisoned");
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        for account in accounts {
            match known.get(&account) {
                Some(currency) => {
                    found.insert(account, *currency);
                }
                None if !missing.contains(&account) => missing.push(account),
                None => {}
            }
        }
        (found, missing)
    }
}

fn remember(known: &mut HashMap<AccountId, Currency>, account: AccountId, currency: Currency) {
    if known.len() >= CURRENCIES_CACHED_MAX && !known.contains_key(&account) {
        known.clear();
    }
    known.insert(account, currency);
}
