//! Reads of a leader that another replica has replaced while it was cut off: it still leads
//! in its own eyes (its election timer has not run out) and holds committed state that is no
//! longer the newest. A balance read it answered from that state would be stale; it must
//! wait for a majority to confirm that it still leads (ReadIndex), which never comes.

use std::collections::VecDeque;

use super::group::Numbers;
use crate::ledger::{Command, Ledger, Reply};
use crate::log::recovery::apply_batch;
use crate::model::money::Currency::USD;
use crate::protocol::machine::{MachineConfig, Now};
use crate::protocol::message::{CommandResult, Query, QueryAnswer};
use crate::protocol::tests::support::{acct, deposit, open};
use crate::replica::{CommittedBatch, DurableRaft, RaftMessage, Replica, ReplicaConfig};

const REPLICAS: usize = 3;
/// Ticks a step of the world may take at most before a test calls it stuck.
const TICKS_MAX: usize = 1_000;

/// Three replicas whose writes are durable at once and whose messages arrive at once,
/// unless one replica is cut off.
struct World {
    replicas: Vec<Replica<Numbers>>,
    disks: Vec<DurableRaft>,
    logs: Vec<Vec<CommittedBatch>>,
    wire: VecDeque<RaftMessage>,
    cut: Option<usize>,
    replies: Vec<(u64, CommandResult)>,
    answers: Vec<(u64, QueryAnswer)>,
}

fn now() -> Now {
    Now {
        micros: 0,
        wall_us: 1_000_000,
    }
}

impl World {
    fn new() -> World {
        let voters: Vec<u64> = (1..=REPLICAS as u64).collect();
        let disks: Vec<DurableRaft> = (0..REPLICAS).map(|_| DurableRaft::new(&voters)).collect();
        let replicas = (0..REPLICAS)
            .map(|i| {
                let config = ReplicaConfig {
                    id: i as u64 + 1,
                    election_ticks: 10,
                    heartbeat_ticks: 2,
                    seed: i as u64,
                    machine: MachineConfig {
                        background_delay_us: 0,
                        snapshot_every_events: 0,
                        ..MachineConfig::default()
                    },
                    log: crate::replica::LogLimits::default(),
                };
                Replica::new(config, &disks[i], Ledger::new(0, 1), now()).expect("a new group")
            })
            .collect();
        World {
            replicas,
            disks,
            logs: vec![Vec::new(); REPLICAS],
            wire: VecDeque::new(),
            cut: None,
            replies: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Carries out everything replica `i` has to do, then delivers every message.
    fn poll(&mut self, i: usize) {
        while let Some(ready) = self.replicas[i].poll(now()).expect("the replica goes on") {
            self.wire.extend(ready.messages);
            if let Some(persist) = ready.persist {
                self.disks[i].persist(&persist);
                self.replicas[i].handle_persisted(persist.number);
            }
            self.wire.extend(ready.messages_after_persist);
            self.logs[i].extend(ready.committed);
            self.replies.extend(ready.release.replies);
            self.answers.extend(ready.release.answers);
            if ready.reload {
                let mut ledger = Ledger::new(0, 1);
                for batch in &self.logs[i] {
                    apply_batch(&mut ledger, "the log", batch.first_lsn, &batch.records)
                        .expect("the log replays");
                }
                self.replicas[i].handle_reloaded(ledger);
            }
        }
    }

    fn deliver(&mut self) {
        while let Some(message) = self.wire.pop_front() {
            let (from, to) = (message.from as usize - 1, message.to as usize - 1);
            if self.cut.is_some_and(|cut| cut == from || cut == to) {
                continue;
            }
            self.replicas[to].handle_message(message);
            self.poll(to);
        }
    }

    /// One tick of the replicas `which` (the others' clocks stand still).
    fn tick(&mut self, which: &[usize]) {
        for &i in which {
            self.replicas[i].tick();
            self.poll(i);
        }
        self.deliver();
    }

    /// The replica among `which` that leads and takes commands, once one does.
    fn leader_among(&mut self, which: &[usize]) -> usize {
        for _ in 0..TICKS_MAX {
            if let Some(&i) = which
                .iter()
                .find(|i| self.replicas[**i].machine_ref().is_some())
            {
                return i;
            }
            self.tick(which);
        }
        panic!("no leader among {which:?}");
    }

    fn command(&mut self, leader: usize, token: u64, command: Command) {
        let machine = self.replicas[leader].machine().expect("a leader");
        machine.handle_command(now(), token, &command, false);
        self.poll(leader);
        self.deliver();
    }

    fn query(&mut self, leader: usize, token: u64, query: Query) {
        let machine = self.replicas[leader].machine().expect("a leader");
        machine.handle_query(token, query);
        self.poll(leader);
        self.deliver();
    }

    fn answer(&self, token: u64) -> Option<QueryAnswer> {
        self.answers
            .iter()
            .find(|(t, _)| *t == token)
            .map(|(_, a)| a.clone())
    }

    fn balance(&self, token: u64) -> Option<u64> {
        match self.answer(token)? {
            QueryAnswer::Account(account) => Some(account.expect("opened").balance),
            _ => None,
        }
    }
}

#[test]
fn a_leader_answers_reads_once_a_majority_confirms_it_leads() {
    let mut world = World::new();
    let all: Vec<usize> = (0..REPLICAS).collect();
    let leader = world.leader_among(&all);
    world.command(leader, 1, open(acct("a"), USD));
    world.command(leader, 2, deposit(acct("a"), 100, USD, "d1"));
    world.query(leader, 3, Query::Account(acct("a")));
    assert_eq!(world.balance(3), Some(100));
}

#[test]
fn a_leader_cut_off_and_replaced_answers_no_stale_read() {
    let mut world = World::new();
    let all: Vec<usize> = (0..REPLICAS).collect();
    let old = world.leader_among(&all);
    world.command(old, 1, open(acct("a"), USD));
    world.command(old, 2, deposit(acct("a"), 100, USD, "d1"));
    assert_eq!(world.replies.len(), 2, "{:?}", world.replies);

    // Cut off, with its clock standing still, the old leader leads in its own eyes while
    // the others elect a new one, which commits a deposit.
    world.cut = Some(old);
    let others: Vec<usize> = all.iter().copied().filter(|i| *i != old).collect();
    let new = world.leader_among(&others);
    world.command(new, 3, deposit(acct("a"), 50, USD, "d2"));
    let balance = world.replies.iter().find(|(t, _)| *t == 3).map(|(_, r)| r);
    assert!(
        matches!(balance, Some(Ok(Reply::Balance { .. }))),
        "{balance:?}"
    );
    assert!(world.replicas[old].machine_ref().is_some());

    // Asked now, the old leader must not answer 100: the balance is 150.
    world.query(old, 4, Query::Account(acct("a")));
    for _ in 0..20 {
        world.tick(&[old]);
    }
    assert_eq!(
        world.answer(4),
        None,
        "a replaced leader answered from stale state"
    );

    // Back in touch, it learns of the new term, stops leading and drops the read (its client
    // asks again, and the new leader answers).
    world.cut = None;
    for _ in 0..20 {
        world.tick(&all);
    }
    assert!(world.replicas[old].machine_ref().is_none());
    assert!(world.balance(4).is_none_or(|balance| balance == 150));
    world.query(new, 5, Query::Account(acct("a")));
    assert_eq!(world.balance(5), Some(150));
}
