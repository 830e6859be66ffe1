//! The `walletd-sim` command line: run one seed, sweep a range of seeds in child processes,
//! or check that a seed is deterministic. See `--help` and sim/README.md.

#[cfg(not(madsim))]
fn main() {
    eprintln!("walletd-sim runs only in a simulation build: use `cargo sim -- --seed 7`");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    std::process::exit(cli::main());
}

#[cfg(madsim)]
mod cli {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use walletd_core::protocol::bugs::Bug;
    use walletd_sim::boundary::{Hits, SweepHits};
    use walletd_sim::config::{FaultSet, SimConfig};
    use walletd_sim::sim;
    use walletd_sim::storage_faults::{StorageFaults, SweepStorageFaults};

    const HELP: &str = "\
walletd-sim: deterministic simulation of a walletd cluster (madsim)

USAGE:
  cargo sim -- --seed N [OPTIONS]                 run one seed
  cargo sim -- --seeds A..B [OPTIONS]             sweep seeds A to B-1 in child processes
  cargo sim -- --seed N --check-determinism       run a seed twice (two processes), compare traces
  cargo sim -- --regressions sim/regressions.txt  run every line of a regression list

OPTIONS:
  --seed N               the seed (decides every random choice of the run)
  --seeds A..B           a range of seeds, B excluded
  --bug NAME             switch a known bug on: skip-barrier, reply-before-sync,
                         no-idempotency, credit-before-debit, retry-failed-sync,
                         refusal-unrecorded, recovery-trusts-unsynced,
                         rollover-without-dir-sync, cancel-after-durable-credit,
                         commit-on-home-only, confirm-sent-once,
                         refund-beyond-original, capture-after-expiry,
                         multi-leg-partial, body-before-durable,
                         hold-end-misreported;
                         replicated: ack-before-quorum, forget-vote, stale-read,
                         rejoin-under-old-id, tx-confirm-other-legs;
                         with moves (--nodes 4): leave-before-removed,
                         lost-lease-ignored
  --nodes N              server nodes [3]
  --partitions N         partitions, spread over the nodes [6]
  --replicas N           1, or the number of nodes: every node runs a replica of every
                         partition (Raft groups) [the number of nodes if 3 or more, else 1]
  --duration-s S         simulated seconds of load and faults before healing [60]
  --faults LIST          none, all, or a comma list of kill,torn,partition,clog,loss,dup,
                         reset,delay,slowdisk,diskerror,clockjump,damage; replicated
                         also killleader,isolate,crashvoter,slowfollower,wipe,corrupt,
                         and never damage [all]
  --jobs N               runs at a time in a sweep [2]
  --fail-fast            stop a sweep at its first failing seed
  --check-determinism    run the seed twice in separate processes and compare the traces
  --regressions FILE     run each line `SEED [OPTIONS] # why`: a line with --bug must fail,
                         any other must pass
  --verbose              print the fault schedule, every delivered message and panics
  -h, --help             this text

The last line of a run is exactly
  seed=N transfers=T faults=F trace=<16 hex digits> result=ok
or ... result=FAIL invariant=<name>; the exit code is 0 on ok, 1 on failure, 2 on bad usage.
The line before it counts the decision boundaries the clients hit
(boundaries: transfer_exact=N ...); a sweep prints in how many runs each was hit.
";

    /// What the command line asks for.
    struct Args {
        config: SimConfig,
        seeds: Option<(u64, u64)>,
        jobs: usize,
        fail_fast: bool,
        check_determinism: bool,
        regressions: Option<String>,
        /// The options to pass on to child processes.
        passthrough: Vec<String>,
    }

    fn parse_number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String> {
        let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
        value
            .parse()
            .map_err(|_| format!("{flag}: {value:?} is not a valid number"))
    }

    fn parse(raw: Vec<String>) -> Result<Option<Args>, String> {
        let mut config = SimConfig::standard(0);
        let mut seed = None;
        let mut seeds = None;
        let mut jobs = 2;
        let mut fail_fast = false;
        let mut check_determinism = false;
        let mut regressions = None;
        let mut passthrough = Vec::new();
        let mut replicas = None;
        // `cargo sim -- ...` hands the program a literal `--` first: skip it.
        let mut args = raw.into_iter().filter(|a| a != "--");
        while let Some(flag) = args.next() {
            let mut pass = |value: &Option<String>| {
                passthrough.push(flag.clone());
                passthrough.extend(value.clone());
            };
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--seed" => seed = Some(parse_number::<u64>(&flag, args.next())?),
                "--seeds" => {
                    let value = args.next().ok_or("--seeds needs a range A..B")?;
                    let (a, b) = value
                        .split_once("..")
                        .ok_or_else(|| format!("--seeds: {value:?} is not a range A..B"))?;
                    let (a, b) = (
                        parse_number::<u64>("--seeds", Some(a.into()))?,
                        parse_number::<u64>("--seeds", Some(b.into()))?,
                    );
                    if a >= b {
                        return Err(format!("--seeds: the range {value} is empty"));
                    }
                    seeds = Some((a, b));
                }
                "--bug" => {
                    let value = args.next().ok_or("--bug needs a name")?;
                    let bug = Bug::from_name(&value).ok_or_else(|| {
                        let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
                        format!("unknown bug {value:?} (known: {})", names.join(", "))
                    })?;
                    config.bug = Some(bug);
                    pass(&Some(value));
                }
                "--nodes" => {
                    let value = args.next();
                    config.nodes = parse_number(&flag, value.clone())?;
                    pass(&value);
                }
                "--replicas" => {
                    let value = args.next();
                    replicas = Some(parse_number(&flag, value.clone())?);
                    pass(&value);
                }
                "--partitions" => {
                    let value = args.next();
                    config.partitions = parse_number(&flag, value.clone())?;
                    pass(&value);
                }
                "--duration-s" => {
                    let value = args.next();
                    config.duration = Duration::from_secs(parse_number(&flag, value.clone())?);
                    pass(&value);
                }
                "--faults" => {
                    let value = args.next().ok_or("--faults needs a list")?;
                    config.faults = FaultSet::parse(&value)?;
                    pass(&Some(value));
                }
                "--jobs" => jobs = parse_number::<usize>(&flag, args.next())?.max(1),
                "--fail-fast" => fail_fast = true,
                "--check-determinism" => check_determinism = true,
                "--regressions" => {
                    regressions = Some(args.next().ok_or("--regressions needs a file")?);
                }
                "--verbose" => {
                    config.verbose = true;
                    pass(&None);
                }
                other => return Err(format!("unknown argument {other:?} (see --help)")),
            }
        }
        config.replicas = replicas.unwrap_or(SimConfig::default_replicas(config.nodes));
        match (seed, seeds) {
            _ if regressions.is_some() => {}
            (Some(_), Some(_)) => return Err("give either --seed or --seeds".into()),
            (None, None) => return Err("give --seed N or --seeds A..B (see --help)".into()),
            (Some(seed), None) => config.seed = seed,
            (None, Some((a, _))) => config.seed = a,
        }
        config.validate()?;
        Ok(Some(Args {
            config,
            seeds,
            jobs,
            fail_fast,
            check_determinism,
            regressions,
            passthrough,
        }))
    }

    pub fn main() -> i32 {
        let args = match parse(std::env::args().skip(1).collect()) {
            Ok(Some(args)) => args,
            Ok(None) => {
                print!("{HELP}");
                return 0;
            }
            Err(error) => {
                eprintln!("error: {error}");
                return 2;
            }
        };
        walletd_sim::panics::install(args.config.verbose);
        if let Some(file) = &args.regressions {
            return regressions(file, args.jobs);
        }
        match (args.seeds, args.check_determinism) {
            (Some(range), _) => sweep(&args, range),
            (None, true) => check_determinism(&args),
            (None, false) => run_one(&args.config),
        }
    }

    fn run_one(config: &SimConfig) -> i32 {
        let started = Instant::now();
        println!(
            "seed={} nodes={} partitions={} replicas={} clients={} duration={}s faults={} bug={}",
            config.seed,
            config.nodes,
            config.partitions,
            config.replicas,
            config.clients,
            config.duration.as_secs(),
            config.faults,
            config.bug.map_or("none", |b| b.name())
        );
        let report = sim::run(config);
        println!(
            "{} wall={:.2}s",
            report.summary,
            started.elapsed().as_secs_f64()
        );
        println!("fault schedule: {}", report.schedule);
        println!(
            "invariants checked: {} (determinism: with --check-determinism)",
            walletd_sim::checkers::CHECKED.join(", ")
        );
        if !report.ok() {
            print!("{}", report.details);
        }
        println!("{}", report.storage);
        println!("{}", report.hits);
        println!("{}", report.result_line());
        i32::from(!report.ok())
    }

    /// Runs this executable on one seed; returns its exit status and its last line.
    fn child(seed: u64, passthrough: &[String]) -> (bool, String, String) {
        let exe = std::env::current_exe().expect("the path of this executable");
        let output = Command::new(exe)
            .arg("--seed")
            .arg(seed.to_string())
            .args(passthrough)
            .stdin(Stdio::null())
            .output()
            .expect("run a child simulation");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let last = stdout
            .lines()
            .last()
            .filter(|l| l.starts_with("seed="))
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "seed={seed} transfers=0 faults=0 trace=0000000000000000 result=FAIL invariant=node_panic (child exited with {})",
                    output.status
                )
            });
        (output.status.success(), last, stdout)
    }

    /// The number after `name` in a result line.
    fn field(line: &str, name: &str) -> Option<u64> {
        let rest = &line[line.find(name)? + name.len()..];
        rest.split(' ').next()?.parse().ok()
    }

    /// What a sweep gathers from its child runs.
    #[derive(Default)]
    struct Tally {
        ran: u64,
        /// Seeds that failed, with their last lines.
        failures: Vec<(u64, String)>,
        transfers: Vec<u64>,
        /// Per decision boundary, the runs that hit it (from each run's `boundaries:` line).
        hits: SweepHits,
        /// Storage faults and their refusals (from each run's `storage faults:` line).
        storage: SweepStorageFaults,
    }

    impl Tally {
        /// One child run: whether it passed, its last line and its whole output.
        fn add(&mut self, seed: u64, ok: bool, last: &str, stdout: &str) {
            self.ran += 1;
            self.transfers.extend(field(last, "transfers="));
            if let Some(hits) = stdout.lines().find_map(Hits::parse) {
                self.hits.add(&hits);
            }
            if let Some(storage) = stdout.lines().find_map(StorageFaults::parse) {
                self.storage.add(&storage);
            }
            if !ok {
                self.failures.push((seed, last.to_string()));
            }
        }
    }

    fn sweep(args: &Args, (first, end): (u64, u64)) -> i32 {
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let tally: Arc<Mutex<Tally>> = Arc::default();
        let workers: Vec<_> = (0..args.jobs)
            .map(|_| {
                let (next, stop, tally) = (next.clone(), stop.clone(), tally.clone());
                let passthrough = args.passthrough.clone();
                let fail_fast = args.fail_fast;
                std::thread::spawn(move || loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end || stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (ok, last, stdout) = child(seed, &passthrough);
                    if !ok {
                        println!("{last}");
                        let _ = std::io::stdout().flush();
                        if fail_fast {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    tally.lock().unwrap().add(seed, ok, &last, &stdout);
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("sweep worker");
        }
        let mut tally = tally.lock().unwrap();
        tally.failures.sort();
        sweep_report(args, (first, end), &tally, started)
    }

    /// Prints what a sweep found: its storage faults, the boundaries its runs hit, then its
    /// one-line summary (always the last line). Returns the exit code.
    fn sweep_report(args: &Args, (first, end): (u64, u64), tally: &Tally, started: Instant) -> i32 {
        println!("{}", tally.storage);
        println!("{}", tally.hits);
        let missed: Vec<&str> = tally.hits.missed().iter().map(|b| b.name()).collect();
        if !missed.is_empty() {
            println!("boundaries no run hit: {}", missed.join(", "));
        }
        let failures = &tally.failures;
        let first_failure = failures
            .first()
            .map_or("none".to_string(), |(s, _)| s.to_string());
        let reproduce = failures.first().map_or(String::new(), |(seed, _)| {
            let mut config = args.config.clone();
            config.seed = *seed;
            format!(" reproduce=\"{}\"", sim::reproduce_command(&config))
        });
        let transfers = &tally.transfers;
        let (min, mean) = match transfers.iter().min() {
            Some(min) => (*min, transfers.iter().sum::<u64>() / transfers.len() as u64),
            None => (0, 0),
        };
        println!(
            "sweep seeds={first}..{end} ran={} failed={} first_failure={first_failure} transfers_min={min} transfers_mean={mean} wall={:.1}s{reproduce}",
            tally.ran,
            failures.len(),
            started.elapsed().as_secs_f64()
        );
        i32::from(!failures.is_empty())
    }

    /// Runs every line of a regression list; returns 1 if any line did not go as expected.
    fn regressions(file: &str, jobs: usize) -> i32 {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("error: cannot read {file}: {error}");
                return 2;
            }
        };
        let mut cases = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace().map(str::to_string);
            let Some(Ok(seed)) = words.next().map(|w| w.parse::<u64>()) else {
                eprintln!("error: {file}:{}: a line starts with a seed", number + 1);
                return 2;
            };
            let options: Vec<String> = words.collect();
            let expect_failure = options.iter().any(|w| w == "--bug");
            cases.push((seed, options, expect_failure));
        }
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let cases = Arc::new(cases);
        let bad: Arc<Mutex<Vec<String>>> = Arc::default();
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                let (next, cases, bad) = (next.clone(), cases.clone(), bad.clone());
                std::thread::spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((seed, options, expect_failure)) = cases.get(i) else {
                        return;
                    };
                    let (ok, last, _) = child(*seed, options);
                    let as_expected = ok != *expect_failure;
                    let verdict = if as_expected {
                        "as expected"
                    } else {
                        "UNEXPECTED"
                    };
                    println!("{verdict}: {last}");
                    if !as_expected {
                        bad.lock()
                            .unwrap()
                            .push(format!("--seed {seed} {}", options.join(" ")));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("regression worker");
        }
        let bad = bad.lock().unwrap().clone();
        println!(
            "regressions file={file} cases={} unexpected={} wall={:.1}s",
            cases.len(),
            bad.len(),
            started.elapsed().as_secs_f64()
        );
        for case in &bad {
            println!("unexpected: cargo sim -- {case}");
        }
        i32::from(!bad.is_empty())
    }

    fn check_determinism(args: &Args) -> i32 {
        let seed = args.config.seed;
        let runs: Vec<_> = (0..2)
            .map(|_| {
                let passthrough = args.passthrough.clone();
                std::thread::spawn(move || child(seed, &passthrough))
            })
            .collect();
        let results: Vec<(bool, String, String)> = runs
            .into_iter()
            .map(|r| r.join().expect("determinism run"))
            .collect();
        let (a, b) = (&results[0].1, &results[1].1);
        println!("first run:  {a}");
        println!("second run: {b}");
        if a == b {
            println!("{a}");
            i32::from(!results[0].0)
        } else {
            let head = a.split(" result=").next().unwrap_or(a);
            println!("the two runs differ: the simulation is not deterministic for this seed");
            println!("{head} result=FAIL invariant=determinism");
            1
        }
    }
}
