//! The `ordinary-load` mode: Herald as most installations see it most of
//! the time. The stack of the README's local setup (ingest, fan-out, two
//! dispatchers, beside the broker and Redis) takes 200 events/s for ten
//! endpoints (2,000 webhooks/s) for a while unmeasured, then sits idle, and
//! its CPU is measured, then takes the same load again, and its end-to-end
//! latency is measured. Flat-out modes say how much
//! Herald can carry; this one says what a webhook waits, and what an idle
//! installation costs, at the load the peers are compared at.

use std::time::Duration;

use serde::Serialize;

use crate::Bench;
use crate::herald;
use crate::load::{self, MAX_FANOUT};
use crate::report::{ProcessReport, RatedPhase};

/// Events per second of the load phase (to ten endpoints each).
pub const EVENTS_PER_S: f64 = 200.0;

/// Dispatcher replicas, as `scripts/up` runs them.
const DISPATCHERS: usize = 2;

/// How long the load runs unmeasured before the idle measurement.
const WARM_UP_SECONDS: f64 = 30.0;

/// How long the stack is left alone after the warm-up before the idle
/// measurement starts: consumers finish their first fetches, caches their
/// first refreshes.
const SETTLE: Duration = Duration::from_secs(3);

/// What the mode measured.
#[derive(Debug, Clone, Serialize)]
pub struct OrdinaryLoadReport {
    /// Length of the idle measurement, seconds.
    pub idle_seconds: f64,
    /// Each process's CPU while idle (`cpu_percent` is the figure).
    pub idle: Vec<ProcessReport>,
    /// All of them together, percent of one CPU.
    pub idle_cpu_percent: f64,
    /// The load phase: `rate` events/s, each to ten endpoints.
    pub load: RatedPhase,
    /// Each process during the load phase.
    pub processes: Vec<ProcessReport>,
}

impl Bench {
    /// Runs the `ordinary-load` mode.
    pub(crate) async fn run_ordinary_load(&mut self) -> Result<OrdinaryLoadReport, String> {
        let mode = "ordinary-load";
        eprintln!("mode {mode}: starting Herald with {DISPATCHERS} dispatchers");
        let mut running = self.start_mode(mode, DISPATCHERS, Vec::new()).await?;
        let watched = self.watched(&running);

        // The same load first, unmeasured: a broker that has just started
        // spends a core compiling its hot paths (the JVM's C2 compiler
        // thread took 30–50 % of a core for the first minute), which is
        // neither what an installation idles at nor what it delivers at.
        let warm_up_seconds = if self.options.smoke {
            1.0
        } else {
            WARM_UP_SECONDS
        };
        eprintln!("mode {mode}: warming up for {warm_up_seconds} s at the ordinary load");
        let mut warm_up = self.phase(
            mode,
            "warm-up",
            (EVENTS_PER_S * warm_up_seconds) as usize,
            false,
        );
        warm_up.rate = Some(EVENTS_PER_S);
        load::run(&warm_up, &running.kafka_source, self.tally(&running)).await?;

        tokio::time::sleep(SETTLE).await;
        let idle_seconds = if self.options.smoke { 1.0 } else { 10.0 };
        eprintln!("mode {mode}: idle for {idle_seconds} s");
        let before = herald::usages(&watched);
        tokio::time::sleep(Duration::from_secs_f64(idle_seconds)).await;
        let idle = ProcessReport::since(&watched, before, idle_seconds, 0);
        let idle_cpu_percent = idle.iter().map(|p| p.cpu_percent).sum();

        let events = ((EVENTS_PER_S * self.options.latency_seconds) as usize).max(20);
        let mut phase = self.phase(mode, "load", events, false);
        phase.rate = Some(EVENTS_PER_S);
        eprintln!(
            "mode {mode}: {EVENTS_PER_S:.0} events/s to {MAX_FANOUT} endpoints for {} s",
            self.options.latency_seconds
        );
        let before = herald::usages(&watched);
        let cpu_before = herald::MachineCpu::read();
        let result = load::run(&phase, &running.kafka_source, self.tally(&running)).await?;
        let machine = cpu_before.until(&herald::MachineCpu::read());
        let processes = ProcessReport::since(&watched, before, result.seconds, result.delivered);
        for (_, process) in running.processes.iter_mut() {
            process.stop(Duration::from_secs(30));
        }
        Ok(OrdinaryLoadReport {
            idle_seconds,
            idle,
            idle_cpu_percent,
            load: RatedPhase {
                rate: EVENTS_PER_S,
                result,
                machine,
            },
            processes,
        })
    }
}
