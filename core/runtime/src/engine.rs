//! An engine: a set of partitions running in one process, and the client that routes
//! commands to them. The all-in-one server, the in-process benchmark and the tests use it;
//! a cluster node uses the same [`Client`] with some inboxes forwarding to other nodes.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use rustc_hash::FxHashMap;

use crate::driver::{
    recover, CommandGroup, CommandResult, DriverConfig, DriverError, DriverStats, Input,
    PartitionDriver, Query, QueryAnswer, RecoveryReport, COMMANDS_PER_INPUT_MAX,
};
use crate::storage::Storage;
use crate::transport::{LocalTransport, Transport};
use walletd_core::ledger::Command;
use walletd_core::model::ids::AccountId;
use walletd_core::model::partition::{partition_of, PartitionId};

/// Shape of an in-process engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub partitions: u32,
    /// Inputs a partition's inbox holds before senders wait (clients) or drop (peers).
    pub inbox_capacity: usize,
    pub driver: DriverConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            partitions: 8,
            inbox_capacity: 65_536,
            driver: DriverConfig::default(),
        }
    }
}

/// The partition is not running (stopped, crashed, or unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("partition {0} is unavailable")]
pub struct Unavailable(pub PartitionId);

/// Routes commands and queries to partition inboxes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    partitions: u32,
    inboxes: Arc<[mpsc::Sender<Input>]>,
    /// `local[p]`: partition `p`'s driver reads `inboxes[p]` in this process, so several
    /// commands can travel as one [`Input::Commands`]; a forwarder to another node takes
    /// single commands only.
    local: Arc<[bool]>,
}

impl Client {
    /// `inboxes[p]` reaches partition `p` through a forwarder (or an in-process driver that
    /// is not to be sent command groups).
    pub fn new(inboxes: Arc<[mpsc::Sender<Input>]>) -> Client {
        let local = vec![false; inboxes.len()].into();
        Client::with_local(inboxes, local)
    }

    /// `inboxes[p]` reaches partition `p`; `local[p]` says its driver runs in this process.
    pub fn with_local(inboxes: Arc<[mpsc::Sender<Input>]>, local: Arc<[bool]>) -> Client {
        assert!(!inboxes.is_empty());
        assert_eq!(inboxes.len(), local.len());
        Client {
            partitions: inboxes.len() as u32,
            inboxes,
            local,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn partition_of(&self, account: &AccountId) -> PartitionId {
        partition_of(account, self.partitions)
    }

    /// The inbox of `partition`. A cluster node's peer link hands what arrives from other
    /// nodes (peer messages, forwarded commands) to its local drivers through it.
    pub fn inbox(&self, partition: PartitionId) -> &mpsc::Sender<Input> {
        &self.inboxes[partition as usize]
    }

    /// Executes `command` on its partition and waits for the durable answer. With `wait`, a
    /// cross-partition transfer answers once decided (bound the wait with a timeout).
    pub async fn execute(
        &self,
        command: Command,
        wait: bool,
    ) -> Result<CommandResult, Unavailable> {
        let partition = command.partition(self.partitions);
        let (reply, answer) = oneshot::channel();
        self.send(
            partition,
            Input::Command {
                command,
                wait,
                reply,
            },
        )
        .await?;
        answer.await.map_err(|_| Unavailable(partition))
    }

    /// Executes many commands at once and answers in their order (see
    /// [`Client::execute_shared`]).
    pub async fn execute_many(
        &self,
        commands: impl IntoIterator<Item = Command>,
        wait: bool,
    ) -> Vec<Result<CommandResult, Unavailable>> {
        let commands = Arc::new(commands.into_iter().collect());
        self.execute_shared(&commands, wait).await
    }

    /// Executes many commands at once and answers in their order. All are handed to their
    /// partitions before any answer is awaited, so they share group commits. The commands
    /// for one local partition travel as [`Input::Commands`] of up to
    /// [`COMMANDS_PER_INPUT_MAX`], with one answer for them all; those groups share
    /// `commands` rather than copy them.
    pub async fn execute_shared(
        &self,
        commands: &Arc<Vec<Command>>,
        wait: bool,
    ) -> Vec<Result<CommandResult, Unavailable>> {
        /// Answers on their way: a single command's, or a group's.
        enum Awaited {
            One(usize, oneshot::Receiver<CommandResult>),
            Group(Arc<[u32]>, oneshot::Receiver<Vec<CommandResult>>),
        }
        assert!(commands.len() <= u32::MAX as usize);
        let mut results: Vec<Option<Result<CommandResult, Unavailable>>> =
            vec![None; commands.len()];
        // The positions of the commands bound for each local partition, in order.
        let mut picks: FxHashMap<PartitionId, Vec<u32>> = FxHashMap::default();
        // Commands for other nodes go one by one.
        let mut singles = Vec::new();
        for (position, command) in commands.iter().enumerate() {
            let partition = command.partition(self.partitions);
            if self.local[partition as usize] {
                picks.entry(partition).or_default().push(position as u32);
            } else {
                singles.push((position, partition));
            }
        }
        let mut awaited = Vec::new();
        for (position, partition) in singles {
            let (reply, answer) = oneshot::channel();
            let input = Input::Command {
                command: commands[position].clone(),
                wait,
                reply,
            };
            match self.send(partition, input).await {
                Ok(()) => awaited.push((partition, Awaited::One(position, answer))),
                Err(unavailable) => results[position] = Some(Err(unavailable)),
            }
        }
        let mut picks: Vec<_> = picks.into_iter().collect();
        picks.sort_unstable_by_key(|(partition, _)| *partition);
        for (partition, positions) in picks {
            for group in positions.chunks(COMMANDS_PER_INPUT_MAX) {
                let group: Arc<[u32]> = group.into();
                let (reply, answer) = oneshot::channel();
                let input = Input::Commands {
                    commands: CommandGroup::picked(commands.clone(), group.clone()),
                    wait,
                    reply,
                };
                match self.send(partition, input).await {
                    Ok(()) => awaited.push((partition, Awaited::Group(group, answer))),
                    Err(unavailable) => {
                        for &position in group.iter() {
                            results[position as usize] = Some(Err(unavailable));
                        }
                    }
                }
            }
        }
        for (partition, answer) in awaited {
            match answer {
                Awaited::One(position, answer) => {
                    results[position] = Some(answer.await.map_err(|_| Unavailable(partition)));
                }
                Awaited::Group(positions, answer) => match answer.await {
                    Ok(answers) => {
                        assert_eq!(answers.len(), positions.len(), "one answer per command");
                        for (&position, result) in positions.iter().zip(answers) {
                            results[position as usize] = Some(Ok(result));
                        }
                    }
                    Err(_) => {
                        for &position in positions.iter() {
                            results[position as usize] = Some(Err(Unavailable(partition)));
                        }
                    }
                },
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every command is answered"))
            .collect()
    }

    /// Asks partition `partition` a read-only question.
    pub async fn query(
        &self,
        partition: PartitionId,
        query: Query,
    ) -> Result<QueryAnswer, Unavailable> {
        let (reply, answer) = oneshot::channel();
        self.send(partition, Input::Query { query, reply }).await?;
        answer.await.map_err(|_| Unavailable(partition))
    }

    async fn send(&self, partition: PartitionId, input: Input) -> Result<(), Unavailable> {
        self.inboxes[partition as usize]
            .send(input)
            .await
            .map_err(|_| Unavailable(partition))
    }
}

/// Every partition of a node running in this process on the in-process transport.
pub struct Engine {
    client: Client,
    /// The partitions running here, in the order of `tasks`, `stats` and `reports`.
    local: Vec<PartitionId>,
    tasks: Vec<JoinHandle<Result<(), DriverError>>>,
    stats: Vec<Arc<DriverStats>>,
    reports: Vec<RecoveryReport>,
}

impl Engine {
    /// Recovers every partition from `storages[p]` and starts its driver: the all-in-one node.
    pub async fn start<S: Storage>(
        storages: Vec<S>,
        config: EngineConfig,
    ) -> Result<Engine, DriverError> {
        assert_eq!(
            storages.len(),
            config.partitions as usize,
            "one storage per partition"
        );
        let local = storages
            .into_iter()
            .enumerate()
            .map(|(p, s)| (p as PartitionId, s))
            .collect();
        Engine::start_partitions(
            local,
            config,
            |p| unreachable!("partition {p} is local"),
            |_| {},
        )
        .await
    }

    /// Starts the partitions of one node of a cluster. `local` are the partitions this node
    /// owns with their storage; for every other partition `remote(p)` gives an inbox whose
    /// inputs a forwarder carries to the owning node (commands, queries and peer messages
    /// alike), so partitions and clients never need to know where a partition runs.
    /// `on_recovered(p)` is called after partition `p` is recovered, before its driver runs.
    pub async fn start_partitions<S: Storage>(
        local: Vec<(PartitionId, S)>,
        config: EngineConfig,
        mut remote: impl FnMut(PartitionId) -> mpsc::Sender<Input>,
        mut on_recovered: impl FnMut(&RecoveryReport),
    ) -> Result<Engine, DriverError> {
        let mut senders: Vec<Option<mpsc::Sender<Input>>> = vec![None; config.partitions as usize];
        let mut receivers = Vec::with_capacity(local.len());
        for (partition, _) in &local {
            assert!(*partition < config.partitions && senders[*partition as usize].is_none());
            let (sender, receiver) = mpsc::channel(config.inbox_capacity);
            senders[*partition as usize] = Some(sender);
            receivers.push(receiver);
        }
        let inboxes: Arc<[mpsc::Sender<Input>]> = senders
            .into_iter()
            .enumerate()
            .map(|(p, s)| s.unwrap_or_else(|| remote(p as PartitionId)))
            .collect();
        let transport: Arc<dyn Transport> = Arc::new(LocalTransport::new(Arc::clone(&inboxes)));
        let mut is_local = vec![false; config.partitions as usize];
        for (partition, _) in &local {
            is_local[*partition as usize] = true;
        }
        let mut engine = Engine {
            client: Client::with_local(inboxes, is_local.into()),
            local: local.iter().map(|(p, _)| *p).collect(),
            tasks: Vec::new(),
            stats: Vec::new(),
            reports: Vec::new(),
        };
        // Every partition is recovered before any driver starts: a partition that refuses to
        // start (damage recovery will not repair) then leaves no driver of its node running
        // behind the error, holding its storage.
        let mut recovered = Vec::with_capacity(local.len());
        for (partition, mut storage) in local {
            let (ledger, report) = recover(&mut storage, partition, config.partitions).await?;
            on_recovered(&report);
            recovered.push((ledger, report, storage));
        }
        for ((ledger, report, storage), inbox) in recovered.into_iter().zip(receivers) {
            let stats = Arc::new(DriverStats::default());
            let driver = PartitionDriver::new(
                ledger,
                storage,
                Arc::clone(&transport),
                inbox,
                config.driver,
                Arc::clone(&stats),
            )
            .with_chunks_written(report.snapshot_chunks);
            engine
                .tasks
                .push(tokio::spawn(async move { driver.run().await.map(drop) }));
            engine.stats.push(stats);
            engine.reports.push(report);
        }
        Ok(engine)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn stats(&self) -> &[Arc<DriverStats>] {
        &self.stats
    }

    pub fn recovery_reports(&self) -> &[RecoveryReport] {
        &self.reports
    }

    /// The partitions running in this engine.
    pub fn local_partitions(&self) -> &[PartitionId] {
        &self.local
    }

    /// Asks every local partition to finish its batch and stop, and waits for them.
    pub async fn shutdown(self) -> Result<(), DriverError> {
        let mut acks = Vec::new();
        for partition in &self.local {
            let inbox = &self.client.inboxes[*partition as usize];
            let (ack, done) = oneshot::channel();
            if inbox.send(Input::Shutdown(ack)).await.is_ok() {
                acks.push(done);
            }
        }
        for done in acks {
            let _ = done.await;
        }
        for task in self.tasks {
            match task.await {
                Ok(result) => result?,
                Err(join) => tracing::error!(%join, "partition task failed"),
            }
        }
        Ok(())
    }
}
