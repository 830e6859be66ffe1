use super::*;
use crate::rng::{stream, Purpose};
use walletd_core::log::codec::decode_log;
use walletd_core::protocol::bugs::{self, Bug};
use walletd_runtime::driver::recover;
use walletd_runtime::storage::read_whole_log;

/// Runs `body` on a madsim runtime (a `sync` sleeps for its latency).
fn simulated(body: impl Future<Output = ()> + 'static) {
    madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default()).block_on(body);
}

fn disk_with_seed(seed: u64) -> Disk {
    Disk::new(Arc::default(), SharedRng::new(seed, Purpose::Disk))
}

fn disk() -> Disk {
    disk_with_seed(1)
}

/// Records `lsns`, each opening its own account, framed as one batch.
fn batch(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<u8> {
    walletd_core::log::codec::opening_records(lsns)
}

/// The lsns of every record a fresh incarnation reads back (as recovery would, decoding
/// each segment with the codec's rules).
async fn lsns_read_back(disk: &Disk) -> Vec<Lsn> {
    let mut storage = disk.open();
    let mut lsns = Vec::new();
    for (segment, bytes) in read_whole_log(&mut storage, 0).await.unwrap() {
        let decoded = decode_log(&bytes, segment.first_lsn).unwrap();
        lsns.extend(decoded.records.iter().map(|r| r.lsn));
    }
    lsns
}

async fn append_synced(storage: &mut SimStorage, lsns: std::ops::RangeInclusive<Lsn>) {
    storage.append(*lsns.start(), &batch(lsns)).await.unwrap();
    storage.sync().await.unwrap();
}

#[test]
fn a_process_crash_keeps_every_write_that_reached_the_kernel() {
    simulated(async {
        let disk = disk();
        let mut storage = disk.open();
        append_synced(&mut storage, 1..=3).await;
        storage.append(4, &batch(4..=6)).await.unwrap();
        assert!(disk.unsynced() > 0);
        let report = disk.crash(Crash::Process, true);
        assert_eq!(report, CrashReport::default());
        assert_eq!(lsns_read_back(&disk).await, (1..=6).collect::<Vec<_>>());
        // The old handle is fenced off.
        assert!(storage.append(7, &batch(7..=7)).await.is_err());
    });
}

#[test]
fn a_power_loss_keeps_synced_bytes_and_without_torn_writes_nothing_else() {
    simulated(async {
        let disk = disk();
        let mut storage = disk.open();
        append_synced(&mut storage, 1..=3).await;
        storage.append(4, &batch(4..=30)).await.unwrap();
        let report = disk.crash(Crash::PowerLoss, false);
        assert!(report.lost_bytes > 0 && report.torn_bytes_kept == 0);
        assert_eq!(lsns_read_back(&disk).await, vec![1, 2, 3]);
    });
}

/// Over many draws, a power loss keeps arbitrary subsets of the unsynced sectors: sometimes
/// a later one survives an earlier one that did not (a hole with records after it), which
/// recovery must cut at the hole.
#[test]
fn a_power_loss_keeps_an_arbitrary_subset_of_the_unsynced_sectors() {
    simulated(async {
        let mut holes = 0;
        for seed in 0..40 {
            let disk = disk_with_seed(seed);
            let mut storage = disk.open();
            append_synced(&mut storage, 1..=2).await;
            let unsynced = batch(3..=40);
            storage.append(3, &unsynced).await.unwrap();
            disk.crash(Crash::PowerLoss, true);
            let (_, bytes) = disk.durable_log();
            let decoded = decode_log(&bytes, 1).unwrap();
            let kept = decoded.records.len();
            assert!(kept >= 2, "synced records survive");
            // Whole records after the cut: sectors of the unsynced batch that did survive.
            let tail = &bytes[decoded.valid_len..];
            let survivors = (0..tail.len().saturating_sub(8))
                .filter(|&at| {
                    let len = u32::from_le_bytes(tail[at..at + 4].try_into().unwrap()) as usize;
                    let end = at + 8 + len;
                    (18..=4096).contains(&len)
                        && end <= tail.len()
                        && decode_log(&tail[at..end], 0).is_ok_and(|d| d.records.len() == 1)
                })
                .count();
            holes += usize::from(decoded.torn_tail && survivors > 0);
            let mut storage = disk.open();
            let (ledger, report) = recover(&mut storage, 0, 1).await.unwrap();
            assert_eq!(ledger.last_applied().lsn as usize, kept);
            assert_eq!(report.torn_bytes_dropped > 0, decoded.torn_tail);
        }
        assert!(holes > 0, "no power loss left a hole with records after it");
    });
}

#[test]
fn a_new_segment_survives_a_power_loss_only_once_its_directory_entry_is_synced() {
    simulated(async {
        for bug in [false, true] {
            let disk = disk();
            let mut storage = disk.open();
            let mut lsn = 1;
            bugs::set(if bug {
                &[Bug::RolloverWithoutDirSync]
            } else {
                &[]
            });
            while disk.lock().dir.files.len() < 2 {
                append_synced(&mut storage, lsn..=lsn + 9).await;
                lsn += 10;
            }
            bugs::set(&[]);
            disk.crash(Crash::PowerLoss, true);
            let kept = lsns_read_back(&disk).await.len() as u64;
            if bug {
                assert!(
                    kept < lsn - 1,
                    "acknowledged records vanished with the segment"
                );
            } else {
                assert_eq!(kept, lsn - 1);
            }
        }
    });
}

/// A process crash leaves a batch in the page cache; the restarted partition recovers it.
/// A power loss before anything new was synced takes it unless recovery synced it.
#[test]
fn a_power_loss_after_a_restart_takes_what_recovery_did_not_sync() {
    simulated(async {
        for bug in [false, true] {
            let disk = disk();
            let mut storage = disk.open();
            append_synced(&mut storage, 1..=2).await;
            storage.append(3, &batch(3..=20)).await.unwrap();
            disk.crash(Crash::Process, true);
            let mut storage = disk.open();
            bugs::set(if bug {
                &[Bug::RecoveryTrustsUnsynced]
            } else {
                &[]
            });
            let (ledger, _) = recover(&mut storage, 0, 1).await.unwrap();
            bugs::set(&[]);
            assert_eq!(
                ledger.last_applied().lsn,
                20,
                "the page cache was read back"
            );
            disk.crash(Crash::PowerLoss, false);
            let kept = lsns_read_back(&disk).await.len();
            assert_eq!(kept, if bug { 2 } else { 20 }, "bug {bug}");
        }
    });
}

#[test]
fn a_failed_sync_loses_its_bytes_even_when_a_later_sync_succeeds() {
    simulated(async {
        let disk = disk();
        let mut storage = disk.open();
        append_synced(&mut storage, 1..=2).await;
        storage.append(3, &batch(3..=4)).await.unwrap();
        disk.fail(true);
        assert!(storage.sync().await.is_err());
        assert_eq!(lsns_read_back(&disk).await, vec![1, 2]);
        assert!(
            disk.repair(),
            "the failed sync is remembered until the crash"
        );
        let report = disk.crash(Crash::PowerLoss, true);
        assert_eq!(report.torn_bytes_kept, 0, "dropped sectors leave nothing");
        assert!(!disk.repair(), "a crash ends the fault");
        assert_eq!(lsns_read_back(&disk).await, vec![1, 2]);
    });
}

/// The error is reported once: a retry succeeds with the bytes gone, and the sync mark it
/// leaves vouches for them, so the next recovery refuses the log (it is how a retried sync
/// shows in the simulator).
#[test]
fn a_retried_failed_sync_leaves_a_log_that_recovery_refuses() {
    simulated(async {
        let disk = disk();
        let mut storage = disk.open();
        append_synced(&mut storage, 1..=2).await;
        storage.append(3, &batch(3..=4)).await.unwrap();
        disk.fail(true);
        assert!(storage.sync().await.is_err());
        storage.sync().await.unwrap();
        disk.crash(Crash::Process, true);
        let error = recover(&mut disk.open(), 0, 1).await.expect_err("refused");
        assert!(error.to_string().contains("in synced data"), "{error}");
    });
}

#[test]
fn a_repaired_disk_syncs_normally() {
    simulated(async {
        let disk = disk();
        let storage = disk.open();
        drop(storage);
        disk.fail(true);
        assert!(!disk.repair(), "no sync failed before the repair");
        let mut storage = disk.open();
        append_synced(&mut storage, 1..=2).await;
        assert_eq!(disk.durable_log().0, 1);
        assert_eq!(lsns_read_back(&disk).await, vec![1, 2]);
    });
}

#[test]
fn the_durable_lsn_follows_syncs_across_segments_and_crashes() {
    simulated(async {
        let disk = disk();
        assert_eq!(disk.durable_lsn(), 0);
        let mut storage = disk.open();
        let mut lsn = 1;
        while disk.lock().dir.files.len() < 3 {
            append_synced(&mut storage, lsn..=lsn + 9).await;
            lsn += 10;
            assert_eq!(disk.durable_lsn(), lsn - 1);
        }
        storage.append(lsn, &batch(lsn..=lsn + 5)).await.unwrap();
        assert_eq!(disk.durable_lsn(), lsn - 1, "written is not durable");
        disk.crash(Crash::Process, true);
        assert_eq!(
            disk.durable_lsn(),
            lsn - 1,
            "the page cache is not the medium"
        );
        let (ledger, _) = recover(&mut disk.open(), 0, 1).await.unwrap();
        assert_eq!(ledger.last_applied().lsn, lsn + 5);
        assert_eq!(disk.durable_lsn(), lsn + 5, "recovery synced what it kept");
    });
}

/// Records 1..=`last` appended and synced in batches of ten, on a disk whose node then went
/// down in a process crash.
async fn synced_disk_of_a_down_node(seed: u64, last: Lsn) -> Disk {
    let disk = disk_with_seed(seed);
    let mut storage = disk.open();
    for first in (1..=last).step_by(10) {
        append_synced(&mut storage, first..=(first + 9).min(last)).await;
    }
    disk.crash(Crash::Process, true);
    disk
}

/// The error a recovery of `disk` now stops with (it must stop).
async fn refusal(disk: &Disk) -> String {
    let refused = recover(&mut disk.open(), 0, 1).await;
    refused.expect_err("recovery refuses").to_string()
}

#[test]
fn damage_to_synced_data_stays_across_crashes_and_every_recovery_refuses_naming_it() {
    simulated(async {
        for seed in 0..20 {
            let disk = synced_disk_of_a_down_node(seed, 400).await;
            assert!(disk.lock().dir.files.len() > 1, "several segments");
            let mut rng = stream(seed, Purpose::Nemesis);
            let unreadable = seed % 2 == 0;
            let damage = disk.damage_synced(&mut rng, unreadable).expect("synced");
            assert_eq!(damage.kind == DamageKind::Unreadable, unreadable);
            for crash in [Crash::Process, Crash::PowerLoss, Crash::Process] {
                let error = refusal(&disk).await;
                assert!(damage.named_by(&error), "{damage}: {error}");
                disk.crash(crash, true);
                let files = &disk.lock().dir.files;
                assert!(
                    files.values().any(SimFile::is_damaged),
                    "the medium keeps it"
                );
            }
        }
    });
}

/// The batch synced last may lack its mark after a power loss, and a batch not synced is no
/// synced data: neither is ever damaged, so every damage drawn is refused, never cut.
#[test]
fn damage_is_drawn_only_where_a_sync_mark_vouches_for_it() {
    simulated(async {
        for seed in 0..40 {
            let disk = disk_with_seed(seed);
            let mut storage = disk.open();
            // The mark after the first batch's sync is synced with the second batch.
            append_synced(&mut storage, 1..=30).await;
            append_synced(&mut storage, 31..=35).await;
            storage.append(36, &batch(36..=60)).await.unwrap();
            let crash = if seed % 2 == 0 {
                Crash::PowerLoss
            } else {
                Crash::Process
            };
            disk.crash(crash, true);
            let mut rng = stream(seed, Purpose::Nemesis);
            let damage = disk.damage_synced(&mut rng, seed % 4 < 2).expect("synced");
            let error = refusal(&disk).await;
            assert!(damage.named_by(&error), "{damage}: {error}");
        }
    });
}

#[test]
fn nothing_is_damaged_before_a_sync_vouches_for_a_whole_sector() {
    simulated(async {
        let disk = disk();
        let mut storage = disk.open();
        append_synced(&mut storage, 1..=2).await;
        disk.crash(Crash::PowerLoss, true);
        let mut rng = stream(1, Purpose::Nemesis);
        assert_eq!(disk.damage_synced(&mut rng, true), None);
        assert_eq!(disk.damage(), None);
    });
}

#[test]
fn an_unreadable_sector_fails_the_reads_that_touch_it_until_rewritten() {
    let mut file = SimFile::default();
    file.write_at(0, &[7; 3 * SECTOR_BYTES]);
    file.sync();
    file.make_unreadable(1);
    assert_eq!(file.read_at(0, SECTOR_BYTES).unwrap(), [7; SECTOR_BYTES]);
    assert!(file.read_at(SECTOR_BYTES - 1, 2).is_err());
    assert!(file.read_at(0, 3 * SECTOR_BYTES).is_err());
    assert!(file.read_at(2 * SECTOR_BYTES, 10).is_ok());
    file.power_loss(|| true);
    assert!(
        file.read_at(SECTOR_BYTES, 1).is_err(),
        "the medium's damage"
    );
    // A write reaches the page cache at once, and the medium (remapped) at the sync.
    file.write_at(SECTOR_BYTES, &[8; SECTOR_BYTES]);
    assert!(file.read_at(SECTOR_BYTES, 1).is_ok());
    file.sync();
    assert!(!file.is_damaged());
}

#[test]
fn a_restore_puts_back_what_the_syncs_wrote_and_recovery_reads_it_all() {
    simulated(async {
        for unreadable in [false, true] {
            let disk = synced_disk_of_a_down_node(3, 400).await;
            let before = disk.durable_log();
            let mut rng = stream(3, Purpose::Nemesis);
            disk.damage_synced(&mut rng, unreadable).expect("synced");
            disk.crash(Crash::PowerLoss, true);
            if !unreadable {
                assert_ne!(disk.durable_log(), before, "bits flipped on the medium");
            }
            assert_eq!(disk.restore_medium(), 1);
            assert_eq!(disk.damage(), None);
            assert_eq!(disk.durable_log(), before);
            assert_eq!(lsns_read_back(&disk).await, (1..=400).collect::<Vec<_>>());
            recover(&mut disk.open(), 0, 1).await.expect("recovers");
        }
    });
}
