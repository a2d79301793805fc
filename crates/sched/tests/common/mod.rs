//! A lockstep simulator of the hypervisor around a [`Pool`]: N pCPUs on one
//! fake clock, each calling `schedule` at the `until` it was given or when
//! interrupted, and entities that are CPU-bound or run and block on a
//! pattern. It measures each entity's CPU time itself (independently of the
//! pool's accounting, which it cross-checks) and checks the pool's
//! invariants after every step.
#![allow(dead_code)]

use bulkhead_sched::{Entity, Params, Pick, Pool, State};

/// Ticks per millisecond: the tests use a 1 MHz clock.
pub const MS: u64 = 1000;
pub const SEC: u64 = 1000 * MS;

pub fn params() -> Params {
    Params {
        slice: 10 * MS,
        period: 100 * MS,
        wake_granularity: MS,
        migration_cost: MS / 2,
    }
}

/// What an entity does when it runs.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Runs whenever it can.
    CpuBound,
    /// Runs `run` ticks of CPU time, blocks for `sleep` ticks, again.
    Cycle { run: u64, sleep: u64 },
}

pub struct Sim {
    pub pool: Pool,
    pub now: u64,
    deadline: Vec<Option<u64>>,
    kicked: Vec<bool>,
    /// What each pCPU executes (None while idle or after a block).
    on_cpu: Vec<Option<Entity>>,
    last_sched: Vec<u64>,
    work: Vec<Work>,
    /// CPU time left before a cycling entity blocks.
    burst: Vec<u64>,
    wake_at: Vec<Option<u64>>,
    /// CPU time each entity got, measured by the simulator.
    pub ran: Vec<u64>,
    /// Idle time of each cpu.
    pub idle: Vec<u64>,
    /// When a runnable entity was last taken off a cpu.
    off_at: Vec<Option<u64>>,
    /// Longest time each entity waited runnable between two runs.
    pub max_wait: Vec<u64>,
    pub schedules: u64,
    pub switches: u64,
    pub trace: bool,
}

impl Sim {
    pub fn new(cpus: usize, params: Params, start: u64) -> Sim {
        Sim {
            pool: Pool::new(cpus, params),
            now: start,
            deadline: vec![None; cpus],
            kicked: vec![false; cpus],
            on_cpu: vec![None; cpus],
            last_sched: vec![start; cpus],
            work: Vec::new(),
            burst: Vec::new(),
            wake_at: Vec::new(),
            ran: Vec::new(),
            idle: vec![0; cpus],
            off_at: Vec::new(),
            max_wait: Vec::new(),
            schedules: 0,
            switches: 0,
            trace: false,
        }
    }

    /// Take over a pool in any state: every cpu schedules at once, and the
    /// entities that run from then on do `work`.
    pub fn adopt(mut pool: Pool, now: u64, work: Work) -> Sim {
        let cpus = pool.cpus();
        let n = pool.entities();
        let picks: Vec<Pick> = (0..cpus).map(|c| pool.schedule(c, now)).collect();
        let mut sim = Sim::new(cpus, pool.params(), now);
        sim.ran = (0..n)
            .map(|i| pool.entity(Entity(i as u16)).runtime)
            .collect();
        sim.pool = pool;
        sim.work = vec![work; n];
        sim.burst = vec![Self::burst_of(work); n];
        sim.wake_at = vec![None; n];
        sim.off_at = vec![None; n];
        sim.max_wait = vec![0; n];
        for (cpu, p) in picks.into_iter().enumerate() {
            sim.apply(cpu, p);
        }
        sim
    }

    fn burst_of(work: Work) -> u64 {
        match work {
            Work::CpuBound => u64::MAX,
            Work::Cycle { run, .. } => run,
        }
    }

    pub fn add(&mut self, weight: u32, cap: Option<u8>, cpu: usize, work: Work) -> Entity {
        let e = self.pool.add(weight, cap, cpu);
        self.work.push(work);
        self.burst.push(Self::burst_of(work));
        self.wake_at.push(None);
        self.ran.push(0);
        self.off_at.push(None);
        self.max_wait.push(0);
        e
    }

    /// Wake `e` at `at` (now or later).
    pub fn start_at(&mut self, e: Entity, at: u64) {
        self.wake_at[e.0 as usize] = Some(at.max(self.now));
    }

    pub fn start(&mut self, e: Entity) {
        self.start_at(e, self.now);
    }

    pub fn kick(&mut self, cpu: usize) {
        if cpu < self.kicked.len() {
            self.kicked[cpu] = true;
        }
    }

    /// Run the system until `end`.
    pub fn run_until(&mut self, end: u64) {
        loop {
            self.settle();
            let next = self.next_event();
            assert!(next > self.now, "no progress at {}", self.now);
            if next > end {
                self.advance(end);
                return;
            }
            self.advance(next);
        }
    }

    pub fn run_for(&mut self, d: u64) {
        self.run_until(self.now + d);
    }

    /// Each cpu's share of CPU time since the start, per entity.
    pub fn ran_of(&self, es: &[Entity]) -> u64 {
        es.iter().map(|e| self.ran[e.0 as usize]).sum()
    }

    fn next_event(&self) -> u64 {
        let mut next = u64::MAX;
        for d in self.deadline.iter().flatten() {
            next = next.min(*d);
        }
        for w in self.wake_at.iter().flatten() {
            next = next.min(*w);
        }
        for e in self.on_cpu.iter().flatten() {
            next = next.min(self.now.saturating_add(self.burst[e.0 as usize]));
        }
        next
    }

    fn advance(&mut self, t: u64) {
        let dt = t - self.now;
        for (cpu, e) in self.on_cpu.iter().enumerate() {
            match e {
                Some(e) => {
                    let i = e.0 as usize;
                    self.ran[i] += dt;
                    self.burst[i] = self.burst[i].saturating_sub(dt);
                }
                None => self.idle[cpu] += dt,
            }
        }
        self.now = t;
    }

    /// Handle everything due at `now`: bursts that end, wake-ups, cpus
    /// whose deadline came or that were interrupted.
    fn settle(&mut self) {
        for _round in 0..10_000 {
            let mut acted = false;
            for cpu in 0..self.on_cpu.len() {
                if let Some(e) = self.on_cpu[cpu] {
                    let i = e.0 as usize;
                    if let (0, Work::Cycle { sleep, run }) = (self.burst[i], self.work[i]) {
                        self.pool.block(e, self.now);
                        self.check();
                        if self.trace {
                            println!("{:>10} cpu{cpu} {e:?} blocks", self.now);
                        }
                        self.on_cpu[cpu] = None;
                        self.burst[i] = run;
                        self.wake_at[i] = Some(self.now + sleep);
                        self.kicked[cpu] = true;
                        acted = true;
                    }
                }
            }
            for i in 0..self.wake_at.len() {
                if self.wake_at[i].is_some_and(|w| w <= self.now) {
                    self.wake_at[i] = None;
                    let e = Entity(i as u16);
                    let k = self.pool.wake(e, self.now);
                    if self.trace {
                        println!("{:>10} wake {e:?} -> kick {k:?}", self.now);
                    }
                    if let Some(k) = k {
                        self.kicked[k] = true;
                    }
                    self.check();
                    acted = true;
                }
            }
            for cpu in 0..self.on_cpu.len() {
                if self.kicked[cpu] || self.deadline[cpu].is_some_and(|d| d <= self.now) {
                    self.kicked[cpu] = false;
                    let p = self.pool.schedule(cpu, self.now);
                    self.apply(cpu, p);
                    acted = true;
                }
            }
            if !acted {
                return;
            }
        }
        panic!("livelock at {}", self.now);
    }

    fn apply(&mut self, cpu: usize, p: Pick) {
        self.schedules += 1;
        if self.trace {
            println!("{:>10} cpu{cpu} -> {p:?}", self.now);
        }
        if let Some(u) = p.until {
            assert!(
                u > self.now,
                "cpu {cpu} deadline {u} not after {}",
                self.now
            );
        }
        let old = self.on_cpu[cpu];
        if old != p.run {
            self.switches += 1;
            if let Some(o) = old {
                if self.pool.entity(o).state == State::Runnable {
                    self.off_at[o.0 as usize] = Some(self.now);
                }
            }
        }
        if let Some(e) = p.run {
            let i = e.0 as usize;
            if let Some(off) = self.off_at[i].take() {
                self.max_wait[i] = self.max_wait[i].max(self.now - off);
            }
        }
        self.on_cpu[cpu] = p.run;
        self.deadline[cpu] = p.until;
        self.last_sched[cpu] = self.now;
        if let Some(k) = p.kick {
            assert_ne!(k, cpu, "a cpu is told to kick itself");
            self.kicked[k] = true;
        }
        assert_eq!(self.pool.running(cpu), p.run);
        self.check();
    }

    /// The pool's invariants, and its accounting against the simulator's:
    /// an entity off every cpu has been charged exactly what it ran.
    pub fn check(&self) {
        self.pool.check().unwrap();
        for i in 0..self.ran.len() {
            let e = Entity(i as u16);
            if !self.on_cpu.contains(&Some(e)) {
                assert_eq!(
                    self.pool.entity(e).runtime,
                    self.ran[i],
                    "{e:?} charged wrongly at {}",
                    self.now
                );
            }
        }
    }
}

/// Fraction `part / whole` as a float.
pub fn frac(part: u64, whole: u64) -> f64 {
    part as f64 / whole as f64
}
