//! One simulated run: build the cluster inside madsim, set up accounts, run the clients under
//! the nemesis for the configured time, heal and quiesce, then check every invariant.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::Runtime;
use rand::Rng;
use tokio::time::Instant;
use walletd_core::ledger::{Command, LedgerError, Reply, TransferStatus};
use walletd_core::log::codec::decode_log;
use walletd_core::log::replay::{replay, AsOf};
use walletd_core::model::event::{Reason, TransferKey};
use walletd_core::model::partition::partition_of;
use walletd_runtime::driver::{recover, Query};

use crate::boundary::Hits;
use crate::checkers::{self, FinalState, LiveState, PartitionFinal, Violation};
use crate::cluster::Cluster;
use crate::config::{Fault, SimConfig};
use crate::history::{Expect, History};
use crate::late;
use crate::links::LinkCounters;
use crate::live::{LiveChecks, Verdict};
use crate::liveness;
use crate::model::Model;
use crate::mover::{self, MoveReport, Mover};
use crate::nemesis::Nemesis;
use crate::network::{HostId, Route};
use crate::replica_logs::{self, replica_log};
use crate::rng::{stream, Purpose};
use crate::storage_faults::StorageFaults;
use crate::trace::Trace;
use crate::workload::{accounts, setup, AccountSpec, Client, Requester};
use walletd_core::protocol::invariants::Invariant;

/// Stack of the thread a run executes on (deep async state machines in debug builds).
const RUN_STACK_BYTES: usize = 64 << 20;
/// Attempts of each final live read.
const LIVE_READ_ATTEMPTS: u32 = 5;

/// The result of one run.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub seed: u64,
    /// Transfers recorded at their home partitions (committed, cancelled or rejected).
    pub transfers: u64,
    pub faults: u32,
    pub trace: u64,
    /// Broken invariants, most important first; empty on success.
    pub violations: Vec<Violation>,
    /// The failure report: violations, the history involved, the fault schedule.
    pub details: String,
    /// One line of counters.
    pub summary: String,
    /// Faults injected per kind.
    pub schedule: String,
    /// The decision boundaries the clients saw themselves reach.
    pub hits: Hits,
    /// What the peer links carried and suffered.
    pub peer: LinkCounters,
    /// Damage to synced data, and what the restarts on it did.
    pub storage: StorageFaults,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// The line other tools parse: always the last line a run prints.
    pub fn result_line(&self) -> String {
        let result = match self.violations.first() {
            None => "result=ok".to_string(),
            Some(v) => format!("result=FAIL invariant={}", v.invariant),
        };
        format!(
            "seed={} transfers={} faults={} trace={:016x} {result}",
            self.seed, self.transfers, self.faults, self.trace
        )
    }
}

/// Runs `config` on a fresh thread (madsim seeds the thread's std hash keys, and the bug
/// switches are per thread) and returns its report. A panic inside the simulation is caught
/// and reported as a violation.
pub fn run(config: &SimConfig) -> RunReport {
    let config = config.clone();
    std::thread::Builder::new()
        .name(format!("sim-seed-{}", config.seed))
        .stack_size(RUN_STACK_BYTES)
        .spawn(move || run_on_this_thread(&config))
        .expect("spawn the simulation thread")
        .join()
        .expect("the simulation thread catches its panics")
}

/// Runs `config` twice at the same time, each on a thread of its own, for the tests of
/// determinism: a seed replays only if nothing process-wide (a counter, the order threads
/// start in) reaches the run.
pub fn run_side_by_side(config: &SimConfig) -> [RunReport; 2] {
    std::thread::scope(|scope| {
        let first = scope.spawn(|| run(config));
        let second = run(config);
        [first.join().expect("a run catches its panics"), second]
    })
}

fn run_on_this_thread(config: &SimConfig) -> RunReport {
    walletd_core::protocol::bugs::set(config.bug.as_slice());
    let history = History::default();
    let trace = Trace::new(config.verbose);
    let verdict = Verdict::default();
    let mut runtime = Runtime::with_seed_and_config(config.seed, madsim::Config::default());
    runtime.set_time_limit(config.duration + config.quiesce_max + Duration::from_secs(600));
    let simulation = simulate(
        config.clone(),
        history.clone(),
        trace.clone(),
        verdict.clone(),
    );
    let result = catch_unwind(AssertUnwindSafe(|| runtime.block_on(simulation)));
    LiveChecks::uninstall();
    walletd_core::protocol::bugs::set(&[]);
    let stopped = verdict.lock().violation.take();
    match (result, stopped) {
        (Ok(report), _) => report,
        (Err(_), Some(violation)) => stopped_report(config, &history, &trace, violation),
        (Err(payload), None) => panic_report(config, &history, &trace, payload),
    }
}

/// A run stopped by a live check at its first violation.
fn stopped_report(
    config: &SimConfig,
    history: &History,
    trace: &Trace,
    violation: Violation,
) -> RunReport {
    let history = history.lock();
    let mut details = format!(
        "violated while the run went: {}: {}\nhistory of what it involves:\n",
        violation.invariant, violation.detail
    );
    checkers::involved_history(&violation, &[], &history, &mut details);
    stopped_early(config, &history, trace, violation, details, "a live check")
}

/// The report of a run that stopped before its end (`by` what), at `violation`.
fn stopped_early(
    config: &SimConfig,
    history: &crate::history::HistoryState,
    trace: &Trace,
    violation: Violation,
    mut details: String,
    by: &str,
) -> RunReport {
    let _ = writeln!(details, "reproduce: {}", reproduce_command(config));
    RunReport {
        seed: config.seed,
        transfers: transfer_ops(history),
        faults: 0,
        trace: trace.hash(),
        violations: vec![violation],
        details,
        summary: format!("ops={} (run stopped by {by})", history.ops.len()),
        schedule: format!("unknown (run stopped by {by})"),
        hits: history.hits,
        peer: LinkCounters::default(),
        storage: StorageFaults::default(),
    }
}

/// Transfer requests the clients made (what a stopped run reports as its transfers).
fn transfer_ops(history: &crate::history::HistoryState) -> u64 {
    history
        .ops
        .iter()
        .filter(|op| op.transfer_key().is_some())
        .count() as u64
}

/// A panic inside the simulation (a node's assertion, the time limit) as a failed run.
fn panic_report(
    config: &SimConfig,
    history: &History,
    trace: &Trace,
    payload: Box<dyn std::any::Any + Send>,
) -> RunReport {
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into());
    let message = crate::panics::take_last().unwrap_or(message);
    let invariant = classify_panic(&message);
    let history = history.lock();
    let mut details = format!("a node panicked: {message}\n");
    let mentioned: Vec<&crate::history::Op> = history
        .ops
        .iter()
        .filter(|op| {
            op.transfer_key()
                .is_some_and(|k| message.contains(&format!("{:?}", k.transaction_id)))
        })
        .take(8)
        .collect();
    if !mentioned.is_empty() {
        details.push_str("requests it mentions:\n");
        for op in mentioned {
            let _ = write!(details, "{op}");
        }
    }
    let violation = Violation::new(invariant, message);
    stopped_early(config, &history, trace, violation, details, "the panic")
}

/// The invariant a panic message shows broken (core asserts some of them as it runs).
fn classify_panic(message: &str) -> &'static str {
    let rules: [(&str, &'static str); 6] = [
        ("conservation violated", "conservation"),
        ("overdraw", "no_negative"),
        ("second Try", "no_hanging"),
        ("after its Try", "no_hanging"),
        ("recorded once", "exactly_once"),
        ("starts once", "exactly_once"),
    ];
    rules
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("node_panic", |(_, invariant)| invariant)
}

/// One run: setup, load under faults, heal and quiesce, then the checks.
async fn simulate(
    config: SimConfig,
    history: History,
    trace: Trace,
    verdict: Verdict,
) -> RunReport {
    let mut setup_rng = stream(config.seed, Purpose::Setup);
    let snapshot_every_events = setup_rng.gen_range(50..=500);
    let mut cluster = Cluster::start(
        &config,
        trace.clone(),
        history.clone(),
        snapshot_every_events,
    );
    // Before any node runs: the checks see every partition from its first start. (The
    // replica driver has no observer yet: a replicated run is checked at its end, and its
    // leaders while it goes, see `replicas`.)
    if !config.replicated() {
        LiveChecks::install(cluster.shared.disks.clone(), verdict.clone());
    }
    let specs: Arc<[AccountSpec]> = accounts(config.accounts).into();
    let (setup_host, setup_node) = cluster.client_hosts[0].clone();
    {
        let requester = requester(&config, &cluster, setup_host, Route::Any);
        let (history, specs) = (history.clone(), Arc::clone(&specs));
        setup_node
            .spawn(async move { setup(&requester, &history, &specs, &mut setup_rng).await })
            .await
            .expect("setup task");
    }
    let (nemesis, quiesced) = load_under_faults(&config, &mut cluster, &history, &specs).await;
    {
        let requester = requester(&config, &cluster, setup_host, Route::Any);
        let (history, seed) = (history.clone(), config.seed);
        let (client, attempts) = (config.clients, config.client_attempts_max);
        setup_node
            .spawn(async move {
                late::retry_first_transfers(&history, &requester, seed, client, attempts).await
            })
            .await
            .expect("late retries task");
    }
    let live = read_live(
        &cluster,
        &history,
        &specs,
        requester(&config, &cluster, setup_host, Route::Owner),
    )
    .await;
    let mut replication = Vec::new();
    let finals = if config.replicated() {
        collect_replica_finals(&cluster, config.partitions, &trace, &mut replication).await
    } else {
        collect_finals(&cluster, config.partitions).await
    };
    for fin in &finals {
        trace.record_bytes(&format!("log-{}", fin.partition), &fin.bytes);
    }
    let fatal = cluster.shared.lock().fatal.clone();
    {
        let state = cluster.shared.lock();
        let replicas = &state.replicas;
        replication.extend(
            (replicas.split_brains.iter())
                .map(|what| Violation::new(checkers::ONE_LEADER_PER_TERM, what.clone())),
        );
        replication.extend(
            (replicas.answers_lost.iter())
                .map(|what| Violation::new(Invariant::Durability.name(), what.clone())),
        );
        replication.extend(
            (replicas.removed_early.iter())
                .map(|what| Violation::new(crate::replicas::REMOVED_COPY, what.clone())),
        );
        replication.extend(
            (replicas.liveness.violations.iter())
                .map(|what| Violation::new(liveness::LIVENESS, what.clone())),
        );
    }
    replication.extend(
        (nemesis.violations.iter())
            .map(|(invariant, what)| Violation::new(invariant, what.clone())),
    );
    let history_state = history.lock();
    let state = FinalState {
        partitions: config.partitions,
        finals: &finals,
        live: &live,
        history: &history_state,
        quiesced,
        protocol_violations: cluster.shared.violations(),
        fatal: &fatal,
        damage_not_refused: &nemesis.storage.violations,
        replication: &replication,
    };
    let violations = checkers::check(&state);
    let transfers = finals
        .iter()
        .filter_map(|f| f.replayed.as_ref().ok())
        // Rows, not positions: a row that moved on leaves a position without one.
        .map(|l| (l.transfers().count() + l.credits().count()) as u64)
        .sum();
    RunReport {
        seed: config.seed,
        transfers,
        faults: nemesis.injected,
        trace: trace.hash(),
        details: failure_details(&config, &violations, &finals, &history_state, &nemesis),
        violations,
        summary: summary(&cluster, &history_state, &nemesis, quiesced, &verdict),
        schedule: nemesis.schedule_summary(),
        hits: history_state.hits,
        peer: cluster.links().counters(),
        storage: nemesis.storage.clone(),
    }
}

/// How long after the heal (and the clients' last requests) every replica that lost its
/// data must be a voter again (`rejoin`): a restart, an ask, a catch-up, two membership
/// changes.
const REJOIN_WITHIN: Duration = Duration::from_secs(30);

/// How long after the heal (and the clients' last requests) the move under way must have
/// completed or been rolled back, and every copy a group no longer names be gone
/// (`moves`): a wait for the new copy to vote, a shrink, its removal.
const MOVES_WITHIN: Duration = Duration::from_secs(60);

/// With moves on, starts the operator who moves copies and the faults of the coordination
/// service, until `until` (the operator then carries the move under way to its end).
fn start_mover(
    config: &SimConfig,
    cluster: &Cluster,
    until: Instant,
    report: &crate::shared::Shared<MoveReport>,
) -> Option<tokio::task::JoinHandle<()>> {
    let coordinator = Arc::clone(cluster.shared.coordinator.as_ref()?);
    if config.faults.contains(Fault::Coordinator) {
        let rng = stream(config.seed, Purpose::CoordinatorFaults);
        let faults = mover::coordinator_faults(
            Arc::clone(&coordinator),
            rng,
            config.nodes,
            until,
            report.clone(),
        );
        tokio::spawn(faults);
        let rng = stream(config.seed, Purpose::Leases);
        let lost = liveness::lease_faults(Arc::clone(&coordinator), rng, until, report.clone());
        tokio::spawn(lost);
    }
    let rng = stream(config.seed, Purpose::Moves);
    let mover = Mover::new(
        Arc::clone(&cluster.shared),
        rng,
        stream(config.seed, Purpose::Removals),
        config.nodes,
        config.verbose,
        report.clone(),
    );
    let joining: Vec<HostId> = (config.nodes - config.joining()..config.nodes).collect();
    if joining.is_empty() {
        return Some(tokio::spawn(mover.run(until)));
    }
    let rng = stream(config.seed, Purpose::Joins);
    let joins = mover::join_nodes(coordinator, rng, joining, report.clone());
    Some(tokio::spawn(async move {
        tokio::join!(joins, mover.run(until));
    }))
}

/// Probers of a replicated run, besides its clients (see `Client::run_prober`).
const PROBERS: u32 = 3;

/// A client's connection: requests from `host` over the run's network.
fn requester(config: &SimConfig, cluster: &Cluster, host: HostId, route: Route) -> Requester {
    Requester {
        net: Arc::clone(cluster.net()),
        host,
        route,
        partitions: config.partitions,
        timeout: config.client_timeout,
    }
}

/// Runs the clients under the nemesis for the configured time, then heals everything, lets
/// the clients finish their current request and waits for the cluster to quiesce. Returns the
/// nemesis (its log and counters) and whether the cluster quiesced in time.
async fn load_under_faults(
    config: &SimConfig,
    cluster: &mut Cluster,
    history: &History,
    specs: &Arc<[AccountSpec]>,
) -> (Nemesis, bool) {
    let stop = Arc::new(AtomicBool::new(false));
    // Replicated runs add probers, which hunt for stale reads from cut-off leaders: client
    // numbers after the others', each with its own stream.
    let probers = if config.replicated() { PROBERS } else { 0 };
    let clients: Vec<_> = (0..config.clients + probers)
        .map(|i| {
            let (host, node) = &cluster.client_hosts[(i % config.client_hosts) as usize];
            let client = Client::new(
                config,
                i,
                requester(config, cluster, *host, Route::Any),
                history.clone(),
                Arc::clone(specs),
                stream(config.seed, Purpose::Client(i)),
                Arc::clone(&stop),
            );
            if i < config.clients {
                node.spawn(client.run())
            } else {
                node.spawn(client.run_prober())
            }
        })
        .collect();
    let nemesis_rng = stream(config.seed, Purpose::Nemesis);
    let mut nemesis = Nemesis::new(
        nemesis_rng,
        config.faults,
        config.replicated(),
        config.verbose,
    );
    let until = Instant::now() + config.duration;
    let moves = crate::shared::Shared::<MoveReport>::default();
    let mover = start_mover(config, cluster, until, &moves);
    nemesis.run(cluster, until).await;
    stop.store(true, Ordering::Relaxed);
    nemesis.heal(cluster);
    if let Some(coordinator) = &cluster.shared.coordinator {
        coordinator.heal();
    }
    let heal_deadline = Instant::now() + config.quiesce_max;
    for client in clients {
        let left = heal_deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, client).await;
    }
    if let Some(mover) = mover {
        let (found, linked_live) = mover::settle(&cluster.shared, mover, MOVES_WITHIN).await;
        nemesis.violations.extend(found);
        moves.lock().linked_live = linked_live;
        let moves = moves.lock().clone();
        nemesis.log.extend(moves.log.iter().cloned());
        // By time (each line starts with it), in the order each wrote them.
        nemesis
            .log
            .sort_by(|a, b| a[..9.min(a.len())].cmp(&b[..9.min(b.len())]));
        nemesis.moves = Some(moves);
    }
    if config.replicated() {
        let left = heal_deadline.saturating_duration_since(Instant::now());
        nemesis
            .wait_rejoined(cluster, REJOIN_WITHIN.min(left))
            .await;
    }
    // Every hold placed so far expires by then, if nothing ended it before: at rest none is
    // left held.
    let left = heal_deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(crate::holds::ALL_EXPIRED_AFTER.min(left)).await;
    let left = heal_deadline.saturating_duration_since(Instant::now());
    let quiesced = cluster.quiesce(left).await;
    (nemesis, quiesced)
}

/// Asks the live cluster for every account and every transfer a client asked for.
async fn read_live(
    cluster: &Cluster,
    history: &History,
    specs: &[AccountSpec],
    requester: Requester,
) -> LiveState {
    let keys: BTreeSet<TransferKey> = history
        .lock()
        .ops
        .iter()
        .filter_map(|op| op.transfer_key())
        .collect();
    let node = &cluster.client_hosts[0].1;
    let partitions = requester.partitions;
    let ask = |query: Query, partition| {
        let requester = requester.clone();
        node.spawn(async move {
            for _ in 0..LIVE_READ_ATTEMPTS {
                if let Some(answer) = requester.query(partition, &query).await {
                    return Some(answer);
                }
            }
            None
        })
    };
    let accounts: Vec<_> = specs
        .iter()
        .map(|s| {
            (
                s.id,
                ask(Query::Account(s.id), partition_of(&s.id, partitions)),
            )
        })
        .collect();
    let transfers: Vec<_> = keys
        .into_iter()
        .map(|k| {
            (
                k,
                ask(Query::Transfer(k), partition_of(&k.from, partitions)),
            )
        })
        .collect();
    let mut live = LiveState::default();
    for (id, task) in accounts {
        live.accounts.insert(id, task.await.ok().flatten());
    }
    for (key, task) in transfers {
        live.transfers.insert(key, task.await.ok().flatten());
    }
    live
}

/// Each partition's final log in a replicated run: every replica's (its durable partition log
/// and its committed Raft entries), checked for agreement into `found`; the longest is
/// replayed and modelled.
async fn collect_replica_finals(
    cluster: &Cluster,
    partitions: u32,
    trace: &Trace,
    found: &mut Vec<Violation>,
) -> Vec<PartitionFinal> {
    let mut finals = Vec::new();
    for partition in 0..partitions {
        let mut logs = Vec::new();
        for (node, disks) in cluster.shared.replicas.iter().enumerate() {
            if !disks.holds(partition) {
                continue; // No copy there (never, or deleted after a move).
            }
            let p = partition as usize;
            let (disk, raft) = (&disks.logs[p], &disks.rafts[p]);
            let node = node as u32;
            let log = replica_log(node, partition, partitions, disk, raft, found).await;
            trace.record_bytes(&format!("log-{partition}-node-{node}"), &log.log_bytes);
            logs.push(log);
        }
        let longest = replica_logs::agree(partition, &logs, found);
        let log = logs.swap_remove(longest);
        let replayed = replay(partition, partitions, &log.records, AsOf::End);
        finals.push(PartitionFinal {
            partition,
            bytes: log.log_bytes,
            model: Model::fold(&log.records, partition, partitions),
            recovered: replica_logs::replayed_copy(&replayed),
            replayed,
            records: log.records,
            decode_error: None,
        });
    }
    finals
}

/// Each partition's durable log, decoded, replayed, recovered and modelled.
async fn collect_finals(cluster: &Cluster, partitions: u32) -> Vec<PartitionFinal> {
    let mut finals = Vec::new();
    for (p, disk) in cluster.shared.disks.iter().enumerate() {
        let partition = p as u32;
        let (first_lsn, bytes) = disk.durable_log();
        let (records, decode_error) = match decode_log(&bytes, first_lsn.max(1)) {
            Ok(decoded) if decoded.torn_tail => (
                decoded.records,
                Some(format!(
                    "torn tail after byte {} at the end of the run",
                    decoded.valid_len
                )),
            ),
            Ok(decoded) => (decoded.records, None),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        let replayed = replay(partition, partitions, &records, AsOf::End);
        let recovered = recover(&mut disk.durable_copy().open(), partition, partitions)
            .await
            .map(|(ledger, _)| ledger)
            .map_err(|e| e.to_string());
        let model = Model::fold(&records, partition, partitions);
        finals.push(PartitionFinal {
            partition,
            bytes,
            records,
            decode_error,
            replayed,
            recovered,
            model,
        });
    }
    finals
}

fn summary(
    cluster: &Cluster,
    history: &crate::history::HistoryState,
    nemesis: &Nemesis,
    quiesced: bool,
    verdict: &Verdict,
) -> String {
    let net = cluster.net().stats();
    let links = cluster.links().counters();
    let (mut crashes, mut torn, mut syncs, mut failed_syncs, mut failed_snapshots) =
        (0, 0, 0, 0, 0);
    for disk in &cluster.shared.all_disks() {
        let state = disk.lock();
        crashes += state.crashes;
        torn += state.torn_crashes;
        syncs += state.syncs;
        failed_syncs += state.failed_syncs;
        failed_snapshots += state.failed_snapshots;
    }
    let attempts: usize = history.ops.iter().map(|op| op.attempts.len()).sum();
    let answered = history
        .ops
        .iter()
        .filter(|op| op.settled().is_some())
        .count();
    // Answers held against an expectation known in advance (errors, refusals, repeats).
    let expected = history
        .ops
        .iter()
        .filter(|op| op.expect != crate::history::Expect::Valid)
        .map(|op| op.answers().count())
        .sum::<usize>();
    let (recoveries, from_snapshot, torn_cut, cold_chunks) = {
        let state = cluster.shared.lock();
        let reports = &state.recoveries;
        (
            reports.len(),
            reports.iter().filter(|r| r.snapshot_lsn.is_some()).count(),
            reports.iter().filter(|r| r.torn_bytes_dropped > 0).count(),
            // Chunks of transfer rows a restart kept on disk only (the most of any restart).
            reports.iter().map(|r| r.snapshot_chunks).max().unwrap_or(0),
        )
    };
    let (live_conservation, live_releases) = {
        let verdict = verdict.lock();
        (verdict.conservation_checks, verdict.releases)
    };
    let refunds = RefundCounts::of(history);
    let holds = crate::holds::summary(history);
    let transactions = crate::transactions::summary(history);
    let summary = format!(
        "ops={} attempts={attempts} answered={answered} expected_answers={expected} reads={} probes={}/{}/{} {refunds} {holds} {transactions} client messages sent={} delivered={} dropped={} peer connections={} frames={} bytes={} resets={} broken_after_write={} disk crashes={crashes} torn={torn} syncs={syncs} failed_syncs={failed_syncs} failed_snapshots={failed_snapshots} recoveries={recoveries} from_snapshot={from_snapshot} cold_chunks={cold_chunks} torn_cut={torn_cut} faults={} quiesced={quiesced} live_conservation_checks={live_conservation} live_releases_checked={live_releases} simulated={:.1}s",
        history.ops.len(),
        history.reads.len(),
        history.probes.deposits,
        history.probes.acknowledged,
        history.probes.answered,
        net.sent,
        net.delivered,
        net.dropped,
        links.connections,
        links.frames,
        links.bytes,
        links.resets,
        links.broken_after_frame,
        nemesis.injected,
        madsim::time::TimeHandle::current().elapsed().as_secs_f64(),
    );
    if cluster.shared.replicated() {
        return format!("{summary} {}", replication_summary(cluster, nemesis));
    }
    summary
}

/// What the clients' refunds got: requests, those committed, cancelled (a refund across
/// partitions whose destination did not take it), refused for exceeding what was left of
/// their original, answered not refundable (a credit not yet confirmed) at least
/// once, and those that joined another client's race.
struct RefundCounts {
    asked: usize,
    committed: usize,
    cancelled: usize,
    exceeding: usize,
    not_refundable: usize,
    raced: u64,
}

impl RefundCounts {
    fn of(history: &crate::history::HistoryState) -> RefundCounts {
        // New refunds, not repeats of answered ones nor reuses of their ids.
        let refunds: Vec<&crate::history::Op> = (history.ops.iter())
            .filter(|op| matches!(op.command, Command::Refund(_)))
            .filter(|op| !matches!(op.expect, Expect::Same(_) | Expect::Error(_)))
            .collect();
        let settled = |status: TransferStatus| {
            (refunds.iter())
                .filter(|op| op.settled() == Some(&Ok(Reply::Transfer(status))))
                .count()
        };
        RefundCounts {
            asked: refunds.len(),
            committed: settled(TransferStatus::Committed),
            cancelled: (refunds.iter())
                .filter(|op| {
                    matches!(
                        op.settled(),
                        Some(Ok(Reply::Transfer(TransferStatus::Cancelled(_))))
                    )
                })
                .count(),
            exceeding: settled(TransferStatus::Rejected(Reason::RefundExceedsOriginal)),
            not_refundable: (refunds.iter())
                .filter(|op| {
                    op.answers()
                        .any(|(_, r)| matches!(r, Err(LedgerError::NotRefundable(_))))
                })
                .count(),
            raced: history.board.raced,
        }
    }
}

impl std::fmt::Display for RefundCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refunds={} refunds_committed={} refunds_cancelled={} refunds_exceeding={} refunds_not_refundable={} refunds_raced={}",
            self.asked, self.committed, self.cancelled, self.exceeding, self.not_refundable, self.raced
        )
    }
}

/// What the Raft groups of a replicated run did: terms in which a leader was seen, their
/// Raft stores' syncs, crashes and persists lost to power losses, and the replicas that
/// lost their data and rejoined.
fn replication_summary(cluster: &Cluster, nemesis: &Nemesis) -> String {
    let (mut syncs, mut crashes, mut lost, mut rebuilt) = (0, 0, 0, 0);
    for replica in &cluster.shared.replicas {
        for raft in &replica.rafts {
            let state = raft.lock();
            syncs += state.syncs;
            crashes += state.crashes;
            lost += state.lost_persists;
            rebuilt += state.rebuilt;
        }
    }
    let terms_led = cluster.shared.lock().replicas.terms_led();
    let slow = nemesis.slow_followers;
    let lost_data = &nemesis.rebuilds;
    let summary = format!(
        "terms_led={terms_led} raft_syncs={syncs} raft_crashes={crashes} raft_persists_lost={lost} slow_followers={} committed_while_slow={} judged={} caught_up={} wiped={} corrupted={} raft_stores_rebuilt={rebuilt} rejoined={}",
        slow.episodes, slow.committed, slow.alone, slow.caught_up, lost_data.wiped, lost_data.corrupted, lost_data.rejoined
    );
    let (Some(coordinator), Some(moves)) = (&cluster.shared.coordinator, &nemesis.moves) else {
        return summary;
    };
    let (swaps, outages, slow_watches, leases_lost) = coordinator.counts();
    let replicas = &cluster.shared.replicas;
    let created: u32 = replicas
        .iter()
        .map(|r| r.created.load(Ordering::Relaxed))
        .sum();
    let deleted: u32 = replicas
        .iter()
        .map(|r| r.deleted.load(Ordering::Relaxed))
        .sum();
    format!(
        "{summary} moves={} completed={} rolled_back={} drains={} swaps={swaps} coordinator_outages={outages} slow_watches={slow_watches} leases_lost={leases_lost} copies_created={created} copies_deleted={deleted} nodes_added={} nodes_removed={} linked_live={}",
        moves.started, moves.completed, moves.rolled_back, moves.drains, moves.joined, moves.removed, moves.linked_live
    )
}

fn failure_details(
    config: &SimConfig,
    violations: &[Violation],
    finals: &[PartitionFinal],
    history: &crate::history::HistoryState,
    nemesis: &Nemesis,
) -> String {
    const SHOWN_MAX: usize = 8;
    const FAULT_LINES_MAX: usize = 40;
    let Some(first) = violations.first() else {
        return String::new();
    };
    let mut out = format!("violated: {}: {}\n", first.invariant, first.detail);
    for v in violations.iter().skip(1).take(SHOWN_MAX) {
        let _ = writeln!(out, "also: {}: {}", v.invariant, v.detail);
    }
    if violations.len() > SHOWN_MAX + 1 {
        let _ = writeln!(out, "... and {} more", violations.len() - SHOWN_MAX - 1);
    }
    // Conservation is global; show the first violation that names transfers or accounts.
    let involved = violations
        .iter()
        .find(|v| !v.keys.is_empty() || !v.accounts.is_empty())
        .unwrap_or(first);
    out.push_str("history of what it involves:\n");
    checkers::involved_history(involved, finals, history, &mut out);
    let _ = writeln!(
        out,
        "faults ({} injected, last {FAULT_LINES_MAX}):",
        nemesis.injected
    );
    let skip = nemesis.log.len().saturating_sub(FAULT_LINES_MAX);
    for line in &nemesis.log[skip..] {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "reproduce: {}", reproduce_command(config));
    out
}

/// The command that reruns this seed with this configuration.
pub fn reproduce_command(config: &SimConfig) -> String {
    format!("cargo sim -- --seed {}{}", config.seed, config.options())
}
