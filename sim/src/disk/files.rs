//! Files as a real kernel keeps them: a page cache that every write reaches at once and that
//! outlives the process, and a medium that holds only what a sync wrote, sector by sector.
//!
//! The model follows the storage fault model of "All File Systems Are Not Created Equal"
//! (OSDI '14) and TigerBeetle's simulator, reduced to what a log writer can observe:
//! - a write lands in the page cache; reads see it, and so does a process that restarts
//!   after a crash (the kernel kept it);
//! - `fdatasync` copies the file's dirty sectors and its size to the medium;
//! - a power loss keeps the medium, plus an arbitrary subset of the sectors written since the
//!   last sync (disks reorder writes, so not only a prefix), within the size the medium
//!   knows: size changes not yet synced are lost with whatever lay beyond;
//! - a directory entry survives a power loss only once its directory was synced;
//! - a failed `fdatasync` (write-back error) drops the sectors it could not write; the model
//!   also evicts them from the page cache, so that no restarted process reads bytes the
//!   medium does not hold (Linux keeps them cached, clean, until evicted; walletd stops the
//!   partition on the error and relies on the process restart, which in the model clears them).
//! - the medium can be damaged where a completed sync wrote ([`SimFile::flip_bits`],
//!   [`SimFile::make_unreadable`]): bit rot, or a sector that can no longer be read. The
//!   damage is the medium's, so it outlives crashes and power losses; it goes away when the
//!   sector is written again (a disk remaps a bad sector it writes) or when the file is
//!   restored from a copy ([`SimFile::restore`]). A damaged sector is clean (synced), and the
//!   writer drops synced pages from the page cache, so reads see the medium's damage.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// The unit a disk writes atomically; a power loss keeps or loses whole sectors.
pub const SECTOR_BYTES: usize = 512;

/// One file: its page-cache contents and its contents on the medium.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimFile {
    /// Every write that reached the kernel: what reads see.
    pub data: Vec<u8>,
    /// What the medium holds: what a power loss keeps, before any unsynced sector.
    pub durable: Vec<u8>,
    /// Sectors written or cut since the last sync.
    dirty: BTreeSet<usize>,
    /// Sectors of the medium damaged since they were synced, until rewritten or restored.
    damaged: BTreeMap<usize, SectorDamage>,
}

/// What happened to one sector of the medium after a sync wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SectorDamage {
    /// Bits flipped; the sector's bytes as they were, which a restore puts back.
    Flipped(Vec<u8>),
    /// Every read that touches the sector fails with an I/O error.
    Unreadable,
}

/// What a power loss did to one file or a directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loss {
    /// Bytes of unsynced sectors that did not survive.
    pub lost: usize,
    /// Bytes of unsynced sectors that did.
    pub kept: usize,
}

impl SimFile {
    fn mark_dirty(&mut self, from: usize, to: usize) {
        if to > from {
            self.dirty
                .extend(from / SECTOR_BYTES..=(to - 1) / SECTOR_BYTES);
        }
    }

    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.mark_dirty(offset, end);
    }

    /// Sets the size; bytes cut off are gone from the page cache at once (and from the medium
    /// at the next sync), bytes added are zeros.
    pub fn set_len(&mut self, len: usize) {
        if len < self.data.len() {
            // The sectors cut must be rewritten at the sync, or the medium would keep old
            // bytes there that a later extension would bring back.
            let end = self.durable.len().max(self.data.len());
            self.mark_dirty(len, end);
        }
        self.data.resize(len, 0);
    }

    /// `len` bytes from `offset`, fewer only where the file ends; an I/O error if any of
    /// them lies in an unreadable sector.
    pub fn read_at(&self, offset: usize, len: usize) -> io::Result<Vec<u8>> {
        let from = offset.min(self.data.len());
        let to = (offset + len).min(self.data.len());
        if from < to && self.unreadable_in(from, to) {
            return Err(io::Error::other(
                "simulated EIO: a sector of the medium cannot be read",
            ));
        }
        Ok(self.data[from..to].to_vec())
    }

    /// Whether a sector that bytes `from..to` touch cannot be read: one the medium cannot
    /// read, unless the page cache holds a newer write of it.
    fn unreadable_in(&self, from: usize, to: usize) -> bool {
        let sectors = from / SECTOR_BYTES..=(to - 1) / SECTOR_BYTES;
        self.damaged.range(sectors).any(|(sector, damage)| {
            *damage == SectorDamage::Unreadable && !self.dirty.contains(sector)
        })
    }

    /// Whether `sector` lies within the file, holds what a sync wrote (not dirty) and is not
    /// damaged already: a sector whose damage is damage to synced data.
    pub fn is_synced_intact(&self, sector: usize) -> bool {
        let end = (sector + 1) * SECTOR_BYTES;
        end <= self.durable.len()
            && end <= self.data.len()
            && !self.dirty.contains(&sector)
            && !self.damaged.contains_key(&sector)
    }

    /// Bit rot: flips bits `bits` (numbered from the sector's first byte, lowest bit first)
    /// of synced `sector` on the medium, and so in what reads see.
    pub fn flip_bits(&mut self, sector: usize, bits: &[usize]) {
        assert!(self.is_synced_intact(sector), "damage to a synced sector");
        let range = sector * SECTOR_BYTES..(sector + 1) * SECTOR_BYTES;
        let original = self.durable[range.clone()].to_vec();
        for &bit in bits {
            assert!(bit < SECTOR_BYTES * 8, "a bit of the sector");
            let at = range.start + bit / 8;
            self.durable[at] ^= 1 << (bit % 8);
        }
        self.data[range.clone()].copy_from_slice(&self.durable[range]);
        self.damaged.insert(sector, SectorDamage::Flipped(original));
    }

    /// A bad sector: every read of synced `sector` fails from now on.
    pub fn make_unreadable(&mut self, sector: usize) {
        assert!(self.is_synced_intact(sector), "damage to a synced sector");
        self.damaged.insert(sector, SectorDamage::Unreadable);
    }

    /// Whether the medium holds damage.
    pub fn is_damaged(&self) -> bool {
        !self.damaged.is_empty()
    }

    /// The file restored from a copy: every damaged sector holds what its sync wrote again
    /// (the page cache keeps a newer write of it, if any). Returns how many were damaged.
    pub fn restore(&mut self) -> usize {
        let damaged = std::mem::take(&mut self.damaged);
        for (sector, damage) in &damaged {
            if let SectorDamage::Flipped(original) = damage {
                let range = sector * SECTOR_BYTES..(sector + 1) * SECTOR_BYTES;
                self.durable[range.clone()].copy_from_slice(original);
                if !self.dirty.contains(sector) {
                    self.data[range].copy_from_slice(original);
                }
            }
        }
        damaged.len()
    }

    /// `fdatasync`: the medium takes the file's size and every dirty sector.
    pub fn sync(&mut self) {
        self.durable.resize(self.data.len(), 0);
        for sector in std::mem::take(&mut self.dirty) {
            let from = sector * SECTOR_BYTES;
            let to = (from + SECTOR_BYTES).min(self.data.len());
            if from < to {
                self.durable[from..to].copy_from_slice(&self.data[from..to]);
            }
            // Rewritten: a disk remaps a bad sector it writes.
            self.damaged.remove(&sector);
        }
        debug_assert_eq!(self.durable, self.data, "a synced file is on the medium");
    }

    /// A power loss: the medium, plus the unsynced sectors `keep` says reached it, within
    /// the size the medium knows. The page cache is gone, so reads then see the medium.
    pub fn power_loss(&mut self, mut keep: impl FnMut() -> bool) -> Loss {
        let size = self.durable.len();
        let mut loss = Loss {
            lost: self.data.len().saturating_sub(size),
            kept: 0,
        };
        for sector in std::mem::take(&mut self.dirty) {
            let from = sector * SECTOR_BYTES;
            let to = (from + SECTOR_BYTES).min(size);
            if from >= to {
                continue;
            }
            if keep() {
                for at in from..to {
                    self.durable[at] = self.data.get(at).copied().unwrap_or(0);
                }
                self.damaged.remove(&sector);
                loss.kept += to - from;
            } else {
                loss.lost += to - from;
            }
        }
        self.data = self.durable.clone();
        loss
    }

    /// A failed sync: the dirty sectors never reach the medium and are evicted.
    pub fn drop_unsynced(&mut self) {
        self.dirty.clear();
        self.data = self.durable.clone();
    }
}

/// A directory of files: the names the kernel knows, and those the medium knows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimDir {
    pub files: BTreeMap<String, SimFile>,
    /// Names whose directory entries are durable.
    pub durable_names: BTreeSet<String>,
}

impl SimDir {
    /// `fsync` of the directory: every entry it holds now is durable.
    pub fn sync(&mut self) {
        self.durable_names = self.files.keys().cloned().collect();
    }

    /// A power loss: files whose entries are not durable vanish; the others keep what
    /// [`SimFile::power_loss`] keeps.
    pub fn power_loss(&mut self, mut keep: impl FnMut() -> bool) -> Loss {
        let mut total = Loss::default();
        let names = &self.durable_names;
        self.files.retain(|name, file| {
            let durable = names.contains(name);
            if !durable {
                total.lost += file.data.len();
            }
            durable
        });
        for file in self.files.values_mut() {
            let loss = file.power_loss(&mut keep);
            total.lost += loss.lost;
            total.kept += loss.kept;
        }
        // A name whose file is gone from the page cache cannot come back: there is no such
        // file to bring back (segments are never removed).
        let present: BTreeSet<String> = self.files.keys().cloned().collect();
        self.durable_names = present;
        total
    }

    /// What a power loss that keeps no unsynced sector would leave.
    pub fn durable_copy(&self) -> SimDir {
        let files = self
            .files
            .iter()
            .filter(|(name, _)| self.durable_names.contains(*name))
            .map(|(name, file)| {
                let durable = SimFile {
                    data: file.durable.clone(),
                    durable: file.durable.clone(),
                    dirty: BTreeSet::new(),
                    damaged: file.damaged.clone(),
                };
                (name.clone(), durable)
            })
            .collect();
        SimDir {
            files,
            durable_names: self.durable_names.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synced_file_survives_and_unsynced_sectors_are_kept_or_lost_one_by_one() {
        let mut file = SimFile::default();
        file.write_at(0, &[1; 700]);
        file.sync();
        // Three unsynced sectors: keep the first and the last, lose the middle one.
        file.set_len(4 * SECTOR_BYTES);
        file.sync();
        file.write_at(700, &[2; 3 * SECTOR_BYTES]);
        let mut choices = [true, false, true, true].into_iter();
        let loss = file.power_loss(|| choices.next().unwrap());
        assert_eq!(file.data.len(), 4 * SECTOR_BYTES, "the synced size stays");
        assert_eq!(file.data[..700], [1; 700]);
        assert_eq!(file.data[700..1024], [2; 324]);
        assert_eq!(file.data[1024..1536], [0; 512], "a hole");
        assert_eq!(file.data[1536..2048], [2; 512], "a later sector kept");
        // The middle sector, and what lay past the synced size.
        assert_eq!(
            loss.lost,
            SECTOR_BYTES + (700 + 3 * SECTOR_BYTES - 4 * SECTOR_BYTES)
        );
    }

    #[test]
    fn size_changes_not_synced_are_lost_with_what_lay_beyond() {
        let mut file = SimFile::default();
        file.write_at(0, b"synced");
        file.sync();
        file.write_at(6, b" and then more");
        let loss = file.power_loss(|| true);
        assert_eq!(file.data, b"synced");
        assert!(loss.lost > 0);
        // A cut that was not synced comes back too.
        file.set_len(2);
        file.power_loss(|| false);
        assert_eq!(file.data, b"synced");
        // A synced cut, then an extension: zeros, not the old bytes.
        file.set_len(2);
        file.sync();
        file.set_len(6);
        file.sync();
        assert_eq!(file.data, b"sy\0\0\0\0");
    }

    #[test]
    fn a_new_file_survives_a_power_loss_only_once_its_directory_is_synced() {
        let mut dir = SimDir::default();
        let mut file = SimFile::default();
        file.write_at(0, b"header");
        file.sync();
        dir.files.insert("a".into(), file.clone());
        dir.power_loss(|| true);
        assert!(dir.files.is_empty(), "synced data, entry not durable: gone");
        dir.files.insert("a".into(), file);
        dir.sync();
        dir.power_loss(|| true);
        assert_eq!(dir.files["a"].data, b"header");
    }
}
