//! The latency phase (fan-out 1 at a fifth of its measured rate) and what
//! it needs around it: the broker warmed up first, and the phase's time
//! split hop by hop, with how busy the machine, each process and the
//! broker's threads were meanwhile.

use std::time::{Duration, Instant};

use crate::baseline::{self, Hops};
use crate::herald;
use crate::load;
use crate::report::{LatencySplit, ProcessReport, RatedPhase};
use crate::{Bench, Running};

/// Where an event's time goes, hop by hop, read from Herald's histograms
/// around the latency phase.
const LATENCY_SPLIT: [&str; 4] = [
    "herald_fanout_event_wait_seconds",
    "herald_delivery_first_attempt_wait_seconds",
    "herald_delivery_attempt_duration_seconds",
    "herald_delivery_end_to_end_seconds",
];

/// How long [`Bench::warm_up_broker`] goes on at most.
const MAX_WARM_UP: Duration = Duration::from_secs(180);

/// A JIT compiler below this share of a core (in two rounds in a row)
/// counts as quiet.
const QUIET_COMPILER_PERCENT: f64 = 5.0;

/// Warm-up rounds that may fail in a row before the run does.
const MAX_FAILED_WARM_UP_ROUNDS: u32 = 3;

/// What the latency phase measured.
pub struct LatencyPhase {
    /// The phase itself.
    pub phase: RatedPhase,
    /// Where its time went.
    pub split: LatencySplit,
}

impl Bench {
    /// Produces fan-out 1's events at `rate` to the running mode and reads
    /// where their time went.
    pub(crate) async fn latency_phase(
        &self,
        mode: &str,
        running: &Running,
        watched: &[(String, u32)],
        rate: f64,
    ) -> Result<LatencyPhase, String> {
        let mut phase = self.phase(
            mode,
            "latency",
            ((rate * self.options.latency_seconds) as usize).max(20),
            true,
        );
        phase.rate = Some(rate);
        let kafka = &running.kafka;
        let watches = if self.options.control_readers {
            Some([
                baseline::HopWatch::start(kafka, &kafka.events_topic()).await?,
                baseline::HopWatch::start(kafka, &kafka.deliveries_topic()).await?,
            ])
        } else {
            None
        };
        let before = load::Histograms::read(&running.ops, &LATENCY_SPLIT).await?;
        let cpu_before = herald::MachineCpu::read();
        // The benchmark's own process (load, receiver) shares the cores.
        let mut on_machine = watched.to_vec();
        on_machine.push(("herald-bench".to_owned(), std::process::id()));
        let usage_before = herald::usages(&on_machine);
        let threads_before: Vec<_> = self
            .options
            .observe
            .iter()
            .map(|(_, pid)| herald::thread_cpu(*pid))
            .collect();
        let mut threads = Vec::new();
        let phase_started = Instant::now();
        let result = load::run(&phase, &running.kafka_source, self.tally(running)).await?;
        let phase_seconds = phase_started.elapsed().as_secs_f64();
        for ((name, pid), before) in self.options.observe.iter().zip(&threads_before) {
            let mut busiest =
                herald::thread_shares(before, &herald::thread_cpu(*pid), phase_seconds);
            busiest.truncate(6);
            threads.push((name.clone(), busiest));
        }
        let machine = cpu_before.until(&herald::MachineCpu::read());
        let processes =
            ProcessReport::since(&on_machine, usage_before, phase_seconds, result.delivered);
        // The last webhooks arrived; their attempts are counted in the
        // histograms just after.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut histograms = load::Histograms::read(&running.ops, &LATENCY_SPLIT)
            .await?
            .since(&before);
        if let Some([events, deliveries]) = watches {
            histograms.push(("plain reader: event records".to_owned(), events.finish()));
            histograms.push((
                "plain reader: delivery records".to_owned(),
                deliveries.finish(),
            ));
        }
        Ok(LatencyPhase {
            phase: RatedPhase {
                rate,
                result,
                machine,
            },
            split: LatencySplit {
                histograms,
                processes,
                threads,
            },
        })
    }

    /// Drives the broker flat out, relayed through two topics, until its JIT
    /// compiler is quiet: a JVM broker compiles its hot paths for minutes
    /// after it starts, and a compiler thread taking half a core in the
    /// middle of a phase is the broker's start-up, not Herald's cost (it
    /// took 44 % of a core during the first latency phase, and added tens
    /// of milliseconds to every hop). Needs the broker's pid (`--observe`);
    /// a broker without compiler threads (Tansu) is not warmed.
    pub(crate) async fn warm_up_broker(&self) -> Result<(), String> {
        let compiler = |thread: &str| thread.contains("CompilerThre");
        // The observed process that has JIT compiler threads, if any.
        let Some((name, pid)) = self
            .options
            .observe
            .iter()
            .find(|(_, pid)| herald::thread_cpu(*pid).values().any(|t| compiler(&t.name)))
            .cloned()
        else {
            return Ok(());
        };
        if self.options.smoke {
            return Ok(());
        }
        let started = Instant::now();
        let mut quiet_rounds = 0;
        let mut failed_rounds = 0;
        for round in 1.. {
            if started.elapsed() > MAX_WARM_UP {
                eprintln!("warm-up: {name}'s JIT compiler is still busy; measuring anyway");
                break;
            }
            let before = herald::thread_cpu(pid);
            let round_started = Instant::now();
            let phase = self.phase(
                "warm-up",
                &format!("broker-{round}"),
                // A few seconds a round: compiler time is counted in ticks.
                self.options.deliveries * 4,
                true,
            );
            // A round only warms the broker up: one that fails (once, two of
            // a fresh topic's twenty warm-up records were never read back)
            // is reported, and the next round goes on.
            if let Err(err) = baseline::broker_phase(
                &self.kafka,
                &self.kafka.topic(&format!("bench.warm-up-{round}")),
                Hops::Two,
                &phase,
            )
            .await
            {
                failed_rounds += 1;
                if failed_rounds == MAX_FAILED_WARM_UP_ROUNDS {
                    return Err(err);
                }
                eprintln!("warm-up: round {round} failed, going on: {err}");
                quiet_rounds = 0;
                continue;
            }
            failed_rounds = 0;
            let share = herald::thread_shares(
                &before,
                &herald::thread_cpu(pid),
                round_started.elapsed().as_secs_f64(),
            )
            .iter()
            .filter(|(thread, _)| compiler(thread))
            .map(|(_, percent)| percent)
            .sum::<f64>();
            eprintln!(
                "warm-up: {name}'s JIT compiler took {share:.0} % of a core in round {round} ({:.0} s in)",
                started.elapsed().as_secs_f64()
            );
            quiet_rounds = if share <= QUIET_COMPILER_PERCENT {
                quiet_rounds + 1
            } else {
                0
            };
            if quiet_rounds == 2 {
                break;
            }
        }
        Ok(())
    }
}
