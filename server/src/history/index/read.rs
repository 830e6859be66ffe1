//! Reading the index: pages of an account's movements and its figures as of a point, from
//! the in-memory chunk and the chunk files.

use walletd_core::log::replay::{AsOf, BalanceAt, Movement};
use walletd_core::model::event::Lsn;
use walletd_core::model::ids::AccountId;
use walletd_core::model::money::{Amount, Currency};

use super::chunk::{self, AccountDir, Detail, Entry, Slot};
use super::fold::{EntryKind, Figures};
use super::{BalancePoint, MovementPage, PartitionIndex, Place, SegmentFiles};
use crate::history::LogError;

/// Most entries read per `pread` when a page walks an account's entries backwards.
const ENTRIES_PER_READ: u32 = 64;

impl PartitionIndex {
    /// The chunk that holds record `lsn`, if any.
    fn place_of(&self, lsn: Lsn) -> Option<Place> {
        if lsn >= self.open.first_lsn {
            return (lsn < self.open.next_lsn).then_some(Place::Open);
        }
        let i = self.sealed.partition_point(|c| c.header.last_lsn < lsn);
        (i < self.sealed.len() && self.sealed[i].contains(lsn)).then_some(Place::Sealed(i))
    }

    pub(super) fn slot(&self, lsn: Lsn) -> Result<Option<(Slot, Lsn)>, LogError> {
        Ok(match self.place_of(lsn) {
            Some(Place::Open) => Some((
                self.open.slots[(lsn - self.open.first_lsn) as usize],
                self.open.segment_first,
            )),
            Some(Place::Sealed(i)) => {
                let chunk = &self.sealed[i];
                Some((chunk.file()?.slot(lsn)?, chunk.header.segment_first))
            }
            None => None,
        })
    }

    /// The lsn of the first record stamped after `time` (by the largest timestamp so far).
    fn first_after(&self, time: u64) -> Result<Option<Lsn>, LogError> {
        let i = self.sealed.partition_point(|c| c.ts_max_end <= time);
        if let Some(chunk) = self.sealed.get(i) {
            return Ok(chunk.file()?.first_after(time)?);
        }
        let k = self.open.slots.partition_point(|s| s.ts_max <= time);
        Ok((k < self.open.slots.len()).then(|| self.open.first_lsn + k as u64))
    }

    /// `account`'s figures as of `as_of` (no further than what is indexed), or `None` if it
    /// was not open then.
    pub fn balance(
        &self,
        account: &AccountId,
        as_of: AsOf,
    ) -> Result<Option<BalancePoint>, LogError> {
        let indexed = self.indexed_lsn();
        let cut = match as_of {
            AsOf::End => indexed,
            AsOf::Lsn(lsn) => lsn.min(indexed),
            AsOf::Time(time) => self.first_after(time)?.map_or(indexed, |lsn| lsn - 1),
        };
        let Some((currency, figures)) = self.figures_at(account, cut)? else {
            return Ok(None);
        };
        let timestamp = self.slot(cut)?.map_or(0, |(slot, _)| slot.timestamp);
        Ok(Some(BalancePoint {
            balance: BalanceAt {
                currency,
                balance: figures.balance,
                held: figures.held,
                incoming: figures.incoming,
                lsn: cut,
            },
            timestamp,
        }))
    }

    /// `account`'s currency and figures after record `cut`, if it was open by then.
    fn figures_at(
        &self,
        account: &AccountId,
        cut: Lsn,
    ) -> Result<Option<(Currency, Figures)>, LogError> {
        let newest = match self.place_of(cut) {
            Some(Place::Open) => {
                if let Some(part) = self.open.accounts.get(account) {
                    return Ok(at_cut(&part.entries, part.before, cut).map(|f| (part.currency, f)));
                }
                self.sealed.len()
            }
            Some(Place::Sealed(i)) => i + 1,
            None => return Ok(None),
        };
        // The chunk of `cut`, then older ones, until one changes the account.
        for chunk in self.sealed[..newest].iter().rev() {
            let file = chunk.file()?;
            let Some(dir) = file.account(account)? else {
                continue;
            };
            if cut >= chunk.header.last_lsn {
                return Ok(Some((dir.currency, dir.after)));
            }
            let range = dir.entries_start..dir.entries_start + dir.entries_count;
            let last = last_at_or_before(&file, range.clone(), cut)?;
            let figures = match last {
                Some(entry) => Some(entry.after),
                None => {
                    let first = file.entries(range.start..range.start + 1)?[0];
                    (first.kind != EntryKind::Opened).then_some(dir.before)
                }
            };
            return Ok(figures.map(|f| (dir.currency, f)));
        }
        Ok(None)
    }

    /// A page of `account`'s movements with lsns before `before`, newest first, at most
    /// `limit`; `None` if the account was never opened.
    pub fn page(
        &self,
        account: &AccountId,
        before: Lsn,
        limit: usize,
    ) -> Result<Option<MovementPage>, LogError> {
        assert!(limit > 0);
        // Start at the chunk of the newest record the page may hold, not at the newest chunk:
        // a page deep in the history does not pass through the chunks after it.
        let newest = before.saturating_sub(1).min(self.indexed_lsn());
        let below = match self.place_of(newest) {
            Some(Place::Open) => {
                if let Some(part) = self.open.accounts.get(account) {
                    let currency = part.currency;
                    return self.page_from(account, currency, Place::Open, before, limit);
                }
                self.sealed.len()
            }
            Some(Place::Sealed(i)) => i + 1,
            None => 0,
        };
        if let Some((i, dir)) = self.newest_sealed_with(account, below)? {
            return self.page_from(account, dir.currency, Place::Sealed(i), before, limit);
        }
        // Nothing of the account up to the cursor: it was opened after it (an empty page), or
        // never.
        let later = match self.open.accounts.get(account) {
            Some(part) => Some(part.currency),
            None => {
                let newer = self.sealed.len().saturating_sub(below);
                let found = self.sealed[below..].iter().take(newer).rev();
                let mut currency = None;
                for chunk in found {
                    if let Some(dir) = chunk.file()?.account(account)? {
                        currency = Some(dir.currency);
                        break;
                    }
                }
                currency
            }
        };
        Ok(later.map(|currency| MovementPage {
            currency,
            movements: Vec::new(),
            more: false,
            lsn: self.indexed_lsn(),
        }))
    }

    /// [`Self::page`] from the chunk at `place`, the newest at or before the cursor that
    /// holds the account, then its previous chunks.
    fn page_from(
        &self,
        account: &AccountId,
        currency: Currency,
        place: Place,
        before: Lsn,
        limit: usize,
    ) -> Result<Option<MovementPage>, LogError> {
        let mut next = Some(place);
        // Newest first, one more than the page; with their details when a chunk file has
        // them (the in-memory chunk's are read from the log).
        let mut found: Vec<(Entry, Option<Detail>)> = Vec::with_capacity(limit + 1);
        while let Some(place) = next {
            if found.len() > limit {
                break;
            }
            let wanted = limit + 1 - found.len();
            let prev = match place {
                Place::Open => {
                    let part = &self.open.accounts[account];
                    let newer = part.entries.iter().rev().filter(|e| e.lsn < before);
                    let movements = newer.filter(|e| e.kind.movement().is_some());
                    found.extend(movements.take(wanted).map(|e| (*e, None)));
                    part.prev_chunk
                }
                Place::Sealed(i) => {
                    let file = self.sealed[i].file()?;
                    let dir = file.account(account)?.ok_or_else(|| LogError::Corrupt {
                        path: self.sealed[i].path.display().to_string(),
                        offset: 0,
                        detail: format!("{account} is missing from a chunk that points to it"),
                    })?;
                    let range = dir.entries_start..dir.entries_start + dir.entries_count;
                    let mut take = |e, d| found.push((e, Some(d)));
                    // Past the chunk of the cursor, every entry is before it: no search.
                    let all_before = self.sealed[i].header.last_lsn < before;
                    let before = if all_before { Lsn::MAX } else { before };
                    movements_before(&file, range, before, wanted, &mut take)?;
                    dir.prev_chunk
                }
            };
            next = match prev {
                0 => None,
                first => Some(self.sealed_starting_at(first)?),
            };
        }
        let more = found.len() > limit;
        found.truncate(limit);
        let mut movements = Vec::with_capacity(found.len());
        let mut files = SegmentFiles::default();
        for (entry, detail) in found {
            let detail = match detail {
                Some(detail) => detail,
                None => self.detail_from_log(account, &entry, &mut files)?,
            };
            movements.push(self.movement(&entry, &detail)?);
        }
        Ok(Some(MovementPage {
            currency,
            movements,
            more,
            lsn: self.indexed_lsn(),
        }))
    }

    /// The newest of the first `below` written chunks that changes `account`, and its
    /// directory entry there.
    fn newest_sealed_with(
        &self,
        account: &AccountId,
        below: usize,
    ) -> Result<Option<(usize, AccountDir)>, LogError> {
        for (i, chunk) in self.sealed[..below].iter().enumerate().rev() {
            if let Some(dir) = chunk.file()?.account(account)? {
                return Ok(Some((i, dir)));
            }
        }
        Ok(None)
    }

    fn sealed_starting_at(&self, first: Lsn) -> Result<Place, LogError> {
        let i = self.sealed.partition_point(|c| c.header.first_lsn < first);
        match self.sealed.get(i) {
            Some(chunk) if chunk.header.first_lsn == first => Ok(Place::Sealed(i)),
            _ => Err(LogError::Corrupt {
                path: self.index_dir.display().to_string(),
                offset: 0,
                detail: format!("no chunk starts at lsn {first}, which an entry points to"),
            }),
        }
    }

    /// The movement an entry records, from its figures and its details.
    fn movement(&self, entry: &Entry, detail: &Detail) -> Result<Movement, LogError> {
        let kind = entry.kind.movement().expect("pages hold movements only");
        let damaged = || LogError::Corrupt {
            path: self.index_dir.display().to_string(),
            offset: 0,
            detail: format!("the history index holds no details of record {}", entry.lsn),
        };
        Ok(Movement {
            lsn: entry.lsn,
            timestamp: detail.timestamp,
            kind,
            amount: Amount::from_minor(detail.amount).ok_or_else(damaged)?,
            transaction_id: detail.transaction_id.ok_or_else(damaged)?,
            counterparty: detail.counterparty,
            balance_after: entry.after.balance,
            held_after: entry.after.held,
        })
    }

    /// The details of an entry of `account` in the in-memory chunk, from its records in the
    /// log (read recently by the index, so usually from the page cache).
    fn detail_from_log(
        &self,
        account: &AccountId,
        entry: &Entry,
        files: &mut SegmentFiles,
    ) -> Result<Detail, LogError> {
        let (slot, _) = self.slot(entry.lsn)?.expect("an indexed record has a slot");
        let origin = self.record_at(entry.origin_lsn, files)?;
        self.detail_of(account, entry, slot.timestamp, &origin)
    }
}

/// The figures after `cut` from one chunk's entries of an account (in lsn order) and its
/// figures before the chunk; `None` if it was opened in this chunk after `cut`.
fn at_cut(entries: &[Entry], before: Figures, cut: Lsn) -> Option<Figures> {
    let k = entries.partition_point(|e| e.lsn <= cut);
    match k {
        0 if entries.first().is_some_and(|e| e.kind == EntryKind::Opened) => None,
        0 => Some(before),
        k => Some(entries[k - 1].after),
    }
}

/// The last entry in `range` of `file` with an lsn at or before `cut`, by binary search.
fn last_at_or_before(
    file: &chunk::ChunkFile<'_>,
    range: std::ops::Range<u32>,
    cut: Lsn,
) -> Result<Option<Entry>, LogError> {
    let (mut low, mut high) = (range.start, range.end);
    while low < high {
        let middle = low + (high - low) / 2;
        if file.entries(middle..middle + 1)?[0].lsn <= cut {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(match low {
        k if k == range.start => None,
        k => Some(file.entries(k - 1..k)?[0]),
    })
}

/// Hands `take` the movements in `range` of `file` with lsns before `before`, newest first,
/// at most `wanted` of them; reads the entries backwards a block at a time.
fn movements_before(
    file: &chunk::ChunkFile<'_>,
    range: std::ops::Range<u32>,
    before: Lsn,
    wanted: usize,
    mut take: impl FnMut(Entry, Detail),
) -> Result<(), LogError> {
    let (mut low, mut high) = (range.start, range.end);
    if before == Lsn::MAX {
        low = high;
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if file.entries(middle..middle + 1)?[0].lsn < before {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    let (mut end, mut taken) = (low, 0);
    while end > range.start && taken < wanted {
        let start = end.saturating_sub(ENTRIES_PER_READ).max(range.start);
        for (entry, detail) in file.entries_with_details(start..end)?.into_iter().rev() {
            if entry.kind.movement().is_some() && taken < wanted {
                take(entry, detail);
                taken += 1;
            }
        }
        end = start;
    }
    Ok(())
}
