//! The vCPU scheduler's policy for one CPU pool: a few pCPUs shared by the
//! vCPUs of several VMs. The hypervisor keeps one [`Pool`] per configured
//! pool behind a spinlock, calls it from EL2 and does what it says: program
//! the pCPU's timer for [`Pick::until`], run [`Pick::run`], interrupt the
//! cpus it names. Nothing here touches hardware, so the whole policy is
//! tested on the host with a fake clock.
//!
//! Time is an abstract tick count (the hypervisor passes the physical
//! counter). The pool keeps the largest `now` it was given and uses that, so
//! two pCPUs that read the counter before taking the lock in the other order
//! cannot make time go backwards.
//!
//! # Policy
//!
//! Each pCPU ("cpu", `0..cpus`) has its own run queue. An entity (one vCPU)
//! has a weight and a *virtual runtime* that advances by `ran * 1024 /
//! weight` while it runs, and a cpu runs the queued entity with the lowest
//! virtual runtime for a time slice. Over any interval in which the same
//! entities stay runnable on a cpu, each gets exactly `weight / sum of
//! weights` of it. This is the rule of Linux's CFS and of BVT (borrowed
//! virtual time), chosen over Xen's credit1 because credit1's shares are
//! only approximate (credits are refilled and debited by a 10 ms sampling
//! tick, and entities are sorted into coarse UNDER/OVER/BOOST classes),
//! while virtual runtime gives the exact proportional share with one number
//! per entity and a total, deterministic order (lowest virtual runtime, then
//! lowest entity index) that a test can predict.
//!
//! * A sleeper that wakes gets at most one slice of credit: its virtual
//!   runtime becomes `max(own, cpu min_vruntime - slice)`. It runs soon
//!   (low wake-up latency for an interrupt-driven vCPU) but cannot bank the
//!   time it slept and then starve the others. A woken entity preempts the
//!   running one only if it is behind by more than `wake_granularity`, so
//!   frequent wake-ups do not turn into a context switch each.
//! * Each cpu keeps a monotonic `min_vruntime`. Virtual runtimes on
//!   different cpus are unrelated, so an entity that moves is re-based
//!   (`v - src.min + dst.min`) and keeps its lead or lag.
//! * A cap limits an entity to `cap`% of every `period` (windows aligned to
//!   multiples of `period`). When the budget is spent it is `Throttled` until
//!   the next window. A late `schedule` (the timer fired late) overshoots;
//!   the overshoot is charged to the next window, so the long-run share stays
//!   at the cap.
//! * Balancing is by pulling: only a cpu that is scheduling moves work to
//!   itself, from the busiest cpu (highest load = sum of the weights of its
//!   running and queued entities). An idle cpu pulls at once; a busy one
//!   only entities that have been on their cpu for `migration_cost` (they
//!   are likely cache-hot there). A pull happens only if it strictly
//!   reduces the two cpus' imbalance (the entity's weight is less than the
//!   load difference), which makes ping-pong impossible: every pull lowers
//!   the sum of squared loads.
//! * A woken entity goes to its home cpu (the last one it ran on), unless
//!   that cpu is busy and another is idle.
//! * A cpu running one entity with nothing queued anywhere in the pool gets
//!   no deadline (`until: None`): a vCPU that has a pCPU to itself is not
//!   interrupted. As soon as work is queued anywhere, the running cpus get
//!   slice deadlines again (the calls that queue work name a cpu to
//!   interrupt, one per call), so the periodic balance check in
//!   [`Pool::schedule`] runs.
//!
//! # Untrusted arguments
//!
//! Nothing panics on a wrong index or time except [`Pool::add`] past
//! [`MAX_ENTITIES`]. An unknown entity or a cpu out of range is ignored by
//! [`Pool::wake`], [`Pool::block`], [`Pool::stop`] and [`Pool::schedule`]
//! (they return `None` or an idle [`Pick`]), rejected with a [`MoveError`]
//! by [`Pool::move_to`], and answered with an empty record by the queries.
//! Arithmetic on times saturates.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt;

/// Most entities one pool can hold: [`Entity`] is a `u16` index.
pub const MAX_ENTITIES: usize = 1 << 16;

/// A moved entity's hold on its new cpu, in migration costs: while it
/// lasts, the entity wakes there even if another cpu is idle, so a move
/// of a vCPU that mostly waits takes effect instead of being undone by
/// its next wake-up.
pub const MOVE_HOLD: u64 = 25;

/// The weight whose virtual runtime advances at the clock's pace: `slice`
/// and `wake_granularity` are compared with virtual runtimes in these units.
const NICE_0: u128 = 1024;

/// Virtual runtimes are kept with 32 fractional bits, so a heavy entity
/// (weight up to `u32::MAX`) charged for a few ticks still advances, and in
/// a `u128`, so even weight 1 over 2^64 ticks cannot overflow.
const FRAC: u32 = 32;

/// Percent at or above which a cap limits nothing: a vCPU never runs more
/// than one whole pCPU.
const FULL: u8 = 100;

/// One schedulable entity (a vCPU): its index in the order of
/// [`Pool::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entity(pub u16);

impl Entity {
    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Where an entity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started, or powered off; [`Pool::wake`] starts it.
    Stopped,
    /// On a run queue, waiting for its cpu.
    Runnable,
    /// Picked by its cpu's last [`Pool::schedule`].
    Running,
    /// Waiting for an event (guest WFI); [`Pool::wake`] makes it runnable.
    Blocked,
    /// Wants to run but has spent its cap for this period; it becomes
    /// `Runnable` at the next period start.
    Throttled,
}

/// The knobs of a pool, in ticks. Zero `slice` or `period` is raised to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// How long an entity runs before the cpu picks again when others wait.
    pub slice: u64,
    /// The window a cap is a percentage of.
    pub period: u64,
    /// How far (in weight-1024 virtual time) a woken entity must be behind
    /// the running one to preempt it.
    pub wake_granularity: u64,
    /// How long an entity must have been on its cpu before a busy cpu may
    /// pull it (an idle cpu pulls at once).
    pub migration_cost: u64,
}

/// What a cpu does after [`Pool::schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The entity to run, or `None` to idle.
    pub run: Option<Entity>,
    /// When to call [`Pool::schedule`] again at the latest: the slice end,
    /// the cap budget end, or a throttled entity's release. `None`: no
    /// deadline, wait for an interrupt.
    pub until: Option<u64>,
    /// Another cpu to interrupt so that it calls [`Pool::schedule`]: this
    /// call gave it work it cannot otherwise notice (an entity whose
    /// [`Pool::move_to`] completed here, or queued work a tickless or idle
    /// cpu should take).
    pub kick: Option<usize>,
}

impl Pick {
    const IDLE: Pick = Pick {
        run: None,
        until: None,
        kick: None,
    };
}

/// A snapshot of one entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityInfo {
    pub state: State,
    /// The cpu it runs or is queued on, or for a blocked, stopped or
    /// throttled one its home: where it goes when it wakes.
    pub cpu: usize,
    /// Ticks it has run, in total.
    pub runtime: u64,
    pub weight: u32,
    /// As given to [`Pool::add`], clamped to 1..=100 (100 limits nothing).
    pub cap: Option<u8>,
    /// Virtual runtime in weight-1024 ticks, relative to its cpu's
    /// (saturates at `u64::MAX`).
    pub vruntime: u64,
}

/// A snapshot of one cpu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInfo {
    /// The entity its last [`Pool::schedule`] picked; it stays here, even
    /// once blocked or stopped, until the cpu schedules again.
    pub running: Option<Entity>,
    /// Entities on its run queue.
    pub queued: usize,
    /// Sum of the weights of its running and queued entities.
    pub load: u64,
    /// Ticks it ran entities, in total.
    pub busy: u64,
}

/// Why [`Pool::move_to`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveError {
    NoSuchEntity,
    NoSuchCpu,
}

impl fmt::Display for MoveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchEntity => write!(f, "no such entity in the pool"),
            Self::NoSuchCpu => write!(f, "no such cpu in the pool"),
        }
    }
}

/// Virtual runtime of `ticks` at weight 1024.
fn vticks(ticks: u64) -> u128 {
    u128::from(ticks) << FRAC
}

/// Virtual runtime earned by running `ran` ticks at `weight` (at least 1).
fn vdelta(ran: u64, weight: u32) -> u128 {
    (vticks(ran) * NICE_0) / u128::from(weight.max(1))
}

/// `a` or `b`, whichever is earlier; `None` is never.
fn earliest(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[derive(Debug, Clone)]
struct Ent {
    state: State,
    cpu: usize,
    weight: u32,
    cap: Option<u8>,
    /// Ticks per period it may run; `None` when uncapped.
    budget: Option<u64>,
    vruntime: u128,
    runtime: u64,
    /// Start of the period window `used` counts in.
    window: u64,
    used: u64,
    /// When a throttled entity is released (a window start).
    throttle_until: u64,
    /// When it came to its cpu, for `migration_cost`.
    arrived: u64,
    /// After an explicit move, balancing leaves it alone until then.
    pinned_until: u64,
    /// Until when wake placement keeps it on its cpu (a move).
    hold_until: u64,
    /// A move waiting for its cpu to schedule (only while it is that cpu's
    /// current entity).
    moving: Option<usize>,
}

#[derive(Debug, Clone)]
struct Cpu {
    /// Picked by the last schedule (Running, or Blocked/Stopped since).
    current: Option<Entity>,
    queue: Vec<Entity>,
    min_vruntime: u128,
    /// When the current entity's slice ends.
    slice_end: u64,
    /// Up to when the current entity has been charged.
    accounted: u64,
    busy: u64,
    /// The `until` last returned to this cpu.
    deadline: Option<u64>,
}

/// The scheduler state of one CPU pool. See the crate documentation for the
/// policy.
#[derive(Debug, Clone)]
pub struct Pool {
    params: Params,
    cpus: Vec<Cpu>,
    ents: Vec<Ent>,
    /// The latest `now` seen.
    clock: u64,
}

impl Pool {
    /// A pool of `cpus` cpus (at least 1) and no entities.
    pub fn new(cpus: usize, params: Params) -> Pool {
        let params = Params {
            slice: params.slice.max(1),
            period: params.period.max(1),
            ..params
        };
        let cpu = Cpu {
            current: None,
            queue: Vec::new(),
            min_vruntime: 0,
            slice_end: 0,
            accounted: 0,
            busy: 0,
            deadline: None,
        };
        Pool {
            params,
            cpus: vec![cpu; cpus.max(1)],
            ents: Vec::new(),
            clock: 0,
        }
    }

    /// Add an entity, `Stopped`, homed on `cpu` (cpu 0 if out of range).
    /// A weight of 0 counts as 1; a cap is clamped to 1..=100 and 100 (all
    /// of a pCPU) limits nothing.
    ///
    /// # Panics
    ///
    /// Past [`MAX_ENTITIES`] entities: a configuration that large is a bug
    /// caught at boot, and an [`Entity`] could not name them.
    pub fn add(&mut self, weight: u32, cap: Option<u8>, cpu: usize) -> Entity {
        let e = Entity(u16::try_from(self.ents.len()).expect("more than 65536 entities in a pool"));
        let cpu = if cpu < self.cpus.len() { cpu } else { 0 };
        let cap = cap.map(|c| c.clamp(1, FULL));
        let budget = self.budget_of(cap);
        self.ents.push(Ent {
            state: State::Stopped,
            cpu,
            weight: weight.max(1),
            cap,
            budget,
            vruntime: self.cpus[cpu].min_vruntime,
            runtime: 0,
            window: self.window_of(self.clock),
            used: 0,
            throttle_until: 0,
            arrived: 0,
            pinned_until: 0,
            hold_until: 0,
            moving: None,
        });
        e
    }

    /// Make a stopped or blocked entity runnable; a runnable, running or
    /// throttled one is left as it is (a throttled one already wants to
    /// run). An unknown entity is ignored.
    ///
    /// Returns the cpu to interrupt so that it calls [`Pool::schedule`]:
    /// the idle cpu the entity was placed on, the cpu whose running entity
    /// it preempts, a cpu that must start its slice deadline because work
    /// is now waiting, or (when its cap is spent and it becomes `Throttled`)
    /// its home cpu if that cpu has no deadline for its release. `None` if
    /// nobody needs interrupting.
    ///
    /// An entity that blocked (or was stopped) but whose cpu has not
    /// scheduled since simply carries on running there (the wake-up raced
    /// with the WFI trap); `None` is returned as its cpu is about to
    /// schedule anyway.
    pub fn wake(&mut self, e: Entity, now: u64) -> Option<usize> {
        let now = self.tick(now);
        let i = self.index(e)?;
        self.unthrottle_due(now);
        match self.ents[i].state {
            State::Runnable | State::Running | State::Throttled => return None,
            State::Blocked | State::Stopped => {}
        }
        let home = self.ents[i].cpu;
        if self.cpus[home].current == Some(e) {
            self.ents[i].state = State::Running;
            self.cpus[home].accounted = now;
            return None;
        }
        if self.budget_spent(i, now) {
            self.throttle(i, now);
            return self.throttle_kick(i);
        }
        // A moved entity stays where it was moved while its hold lasts.
        let target = if self.idle(home) || now < self.ents[i].hold_until {
            home
        } else {
            (0..self.cpus.len()).find(|&k| self.idle(k)).unwrap_or(home)
        };
        if target != home {
            self.rebase(i, target, now);
            self.ents[i].arrived = now;
        }
        self.place(i, target, now);
        self.enqueue(i, target);
        self.kick_for_queued(target, i, now)
    }

    /// The running entity `e` waits (guest WFI): it is charged up to `now`
    /// and the caller then calls [`Pool::schedule`] on its cpu. A queued or
    /// throttled entity leaves the run queue the same way; a blocked or
    /// stopped one, or an unknown entity, is ignored.
    pub fn block(&mut self, e: Entity, now: u64) {
        let now = self.tick(now);
        let Some(i) = self.index(e) else { return };
        self.unthrottle_due(now);
        match self.ents[i].state {
            State::Running => {
                self.account(self.ents[i].cpu, now);
                self.ents[i].state = State::Blocked;
            }
            State::Runnable => {
                self.dequeue(i);
                self.ents[i].state = State::Blocked;
            }
            State::Throttled => self.ents[i].state = State::Blocked,
            State::Blocked | State::Stopped => {}
        }
    }

    /// Stop `e` from any state (vCPU powered off, VM stopped). Returns its
    /// cpu if it is that cpu's current entity, which must then schedule to
    /// stop running it; `None` otherwise or for an unknown entity.
    pub fn stop(&mut self, e: Entity, now: u64) -> Option<usize> {
        let now = self.tick(now);
        let i = self.index(e)?;
        self.unthrottle_due(now);
        let cpu = self.ents[i].cpu;
        match self.ents[i].state {
            State::Running => self.account(cpu, now),
            State::Runnable => {
                self.dequeue(i);
            }
            State::Blocked | State::Stopped | State::Throttled => {}
        }
        self.ents[i].state = State::Stopped;
        (self.cpus[cpu].current == Some(e)).then_some(cpu)
    }

    /// The cpu's entity so far is charged up to `now`; if it is still
    /// runnable it carries on while its slice lasts and no queued entity
    /// should preempt it, else it is requeued; if its cap budget is spent it
    /// is throttled. A pending [`Pool::move_to`] of it completes. Then the
    /// cpu pulls work if its queue is empty (or, when busy, if another cpu
    /// is more loaded by more than an entity's weight) and runs the queued
    /// entity with the lowest virtual runtime. A cpu out of range gets an
    /// idle [`Pick`] and changes nothing.
    pub fn schedule(&mut self, cpu: usize, now: u64) -> Pick {
        let now = self.tick(now);
        if cpu >= self.cpus.len() {
            return Pick::IDLE;
        }
        self.unthrottle_due(now);
        let mut kick = None;
        let mut moved_out = None;
        let mut keep = false;
        if let Some(c) = self.cpus[cpu].current {
            let ci = c.index();
            self.account(cpu, now);
            if self.ents[ci].state == State::Running && self.budget_spent(ci, now) {
                self.throttle(ci, now);
            }
            if let Some(dst) = self.ents[ci].moving.take() {
                self.cpus[cpu].current = None;
                self.rebase(ci, dst, now);
                self.ents[ci].arrived = now;
                self.ents[ci].pinned_until = now.saturating_add(self.params.migration_cost);
                self.ents[ci].hold_until = now.saturating_add(self.move_hold());
                moved_out = Some(c);
                match self.ents[ci].state {
                    State::Running => {
                        self.enqueue(ci, dst);
                        kick = self.kick_for_queued(dst, ci, now);
                    }
                    State::Throttled => kick = self.throttle_kick(ci),
                    _ => {}
                }
            } else if self.ents[ci].state == State::Running {
                if now < self.cpus[cpu].slice_end && !self.queue_preempts(cpu) {
                    keep = true;
                } else {
                    self.cpus[cpu].current = None;
                    self.enqueue(ci, cpu);
                }
            } else {
                self.cpus[cpu].current = None;
            }
        }

        let idle = !keep && self.cpus[cpu].queue.is_empty();
        if let Some((src, p)) = self.pull_candidate(cpu, now, idle, moved_out) {
            let pi = p.index();
            self.dequeue(pi);
            self.update_min(src);
            self.rebase(pi, cpu, now);
            self.ents[pi].arrived = now;
            self.enqueue(pi, cpu);
        }

        let run = if keep {
            self.cpus[cpu].current
        } else {
            let next = self.pop_min(cpu, now);
            if let Some(n) = next {
                self.ents[n.index()].state = State::Running;
                let c = &mut self.cpus[cpu];
                c.current = Some(n);
                c.slice_end = now.saturating_add(self.params.slice);
                c.accounted = now;
            }
            next
        };
        self.update_min(cpu);
        let until = self.deadline(cpu, now);
        self.cpus[cpu].deadline = until;
        // This cpu has just looked at everything; never name it.
        kick = kick.filter(|&k| k != cpu);
        if kick.is_none() {
            kick = self.kick_other(cpu, now);
        }
        Pick { run, until, kick }
    }

    /// Move `e` to `cpu` now. Balancing may move it again later (after
    /// `migration_cost`): nothing is pinned. A queued entity changes queues
    /// at once; a blocked, stopped or throttled one changes its home; the
    /// current entity of a cpu is marked and moves when that cpu next
    /// schedules. Returns the cpu to interrupt: for a current entity its
    /// cpu, for a queued one the destination if it must schedule to notice
    /// it (or another cpu, as for [`Pool::wake`]).
    pub fn move_to(&mut self, e: Entity, cpu: usize, now: u64) -> Result<Option<usize>, MoveError> {
        let now = self.tick(now);
        let i = self.index(e).ok_or(MoveError::NoSuchEntity)?;
        if cpu >= self.cpus.len() {
            return Err(MoveError::NoSuchCpu);
        }
        self.unthrottle_due(now);
        let src = self.ents[i].cpu;
        if self.cpus[src].current == Some(e) {
            self.ents[i].moving = (cpu != src).then_some(cpu);
            return Ok((cpu != src).then_some(src));
        }
        if cpu == src {
            return Ok(None);
        }
        self.rebase(i, cpu, now);
        self.ents[i].pinned_until = now.saturating_add(self.params.migration_cost);
        self.ents[i].hold_until = now.saturating_add(self.move_hold());
        Ok(match self.ents[i].state {
            State::Runnable => {
                let pos = self.cpus[src].queue.iter().position(|&q| q == e);
                if let Some(pos) = pos {
                    self.cpus[src].queue.swap_remove(pos);
                }
                self.ents[i].arrived = now;
                self.enqueue(i, cpu);
                self.kick_for_queued(cpu, i, now)
            }
            State::Throttled => self.throttle_kick(i),
            State::Blocked | State::Stopped | State::Running => None,
        })
    }

    /// Change `e`'s cap (clamped as in [`Pool::add`]; `None` or 100 limits
    /// nothing), for instance to slow a VM down while it is migrated. A
    /// newly capped entity starts an empty window now. A throttled entity
    /// whose new cap leaves it budget (or no cap) is queued at once.
    /// Returns the cpu to interrupt: the running entity's, so its next
    /// deadline follows the new budget, or where a released one was
    /// queued. An unknown entity is ignored.
    pub fn set_cap(&mut self, e: Entity, cap: Option<u8>, now: u64) -> Option<usize> {
        let now = self.tick(now);
        let i = self.index(e)?;
        self.unthrottle_due(now);
        let cap = cap.map(|c| c.clamp(1, FULL));
        let budget = self.budget_of(cap);
        let window = self.window_of(now);
        let x = &mut self.ents[i];
        if x.budget.is_none() && budget.is_some() {
            x.window = window;
            x.used = 0;
        }
        x.cap = cap;
        x.budget = budget;
        let (state, cpu) = (x.state, x.cpu);
        match state {
            State::Running => Some(cpu),
            State::Throttled if !self.budget_spent(i, now) => {
                self.place(i, cpu, now);
                self.enqueue(i, cpu);
                self.kick_for_queued(cpu, i, now)
            }
            State::Throttled => self.throttle_kick(i),
            State::Runnable | State::Blocked | State::Stopped => None,
        }
    }

    /// Ticks per period a cap allows; `None` when it limits nothing.
    fn budget_of(&self, cap: Option<u8>) -> Option<u64> {
        let period = self.params.period;
        cap.filter(|&c| c < FULL).map(|c| {
            let b = u128::from(period) * u128::from(c) / u128::from(FULL);
            u64::try_from(b).unwrap_or(u64::MAX).max(1)
        })
    }

    /// The entity `cpu`'s last schedule picked (see [`CpuInfo::running`]);
    /// `None` for a cpu out of range.
    pub fn running(&self, cpu: usize) -> Option<Entity> {
        self.cpus.get(cpu).and_then(|c| c.current)
    }

    /// A snapshot of `e`. An unknown entity reads as a stopped one with
    /// nothing run, on cpu 0, weight 0 and no cap.
    pub fn entity(&self, e: Entity) -> EntityInfo {
        match self.ents.get(e.index()) {
            Some(x) => EntityInfo {
                state: x.state,
                cpu: x.cpu,
                runtime: x.runtime,
                weight: x.weight,
                cap: x.cap,
                vruntime: u64::try_from(x.vruntime >> FRAC).unwrap_or(u64::MAX),
            },
            None => EntityInfo {
                state: State::Stopped,
                cpu: 0,
                runtime: 0,
                weight: 0,
                cap: None,
                vruntime: 0,
            },
        }
    }

    /// A snapshot of `cpu`; all zero for a cpu out of range.
    pub fn cpu(&self, cpu: usize) -> CpuInfo {
        match self.cpus.get(cpu) {
            Some(c) => CpuInfo {
                running: c.current,
                queued: c.queue.len(),
                load: self.load(cpu),
                busy: c.busy,
            },
            None => CpuInfo {
                running: None,
                queued: 0,
                load: 0,
                busy: 0,
            },
        }
    }

    /// Number of entities added.
    pub fn entities(&self) -> usize {
        self.ents.len()
    }

    /// Number of cpus.
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    /// The parameters in use (zero slice or period raised to 1).
    pub fn params(&self) -> Params {
        self.params
    }

    /// Check the pool's invariants: every entity is on at most one run
    /// queue or cpu, a queued entity is `Runnable` and queued on its own
    /// cpu, a `Running` one is its cpu's current entity, a blocked, stopped
    /// or throttled one is on no queue, indices are in range, the cpus' busy
    /// time adds up to the entities' run time. Cheap enough
    /// for debug builds of the hypervisor; the tests call it after every
    /// step.
    pub fn check(&self) -> Result<(), String> {
        let n = self.cpus.len();
        let mut seen = vec![0u32; self.ents.len()];
        for (k, c) in self.cpus.iter().enumerate() {
            for &q in &c.queue {
                let x = self
                    .ents
                    .get(q.index())
                    .ok_or_else(|| format!("cpu {k} queues unknown {q:?}"))?;
                seen[q.index()] += 1;
                if x.state != State::Runnable {
                    return Err(format!("{q:?} queued on cpu {k} but {:?}", x.state));
                }
                if x.cpu != k {
                    return Err(format!("{q:?} queued on cpu {k} but homed on {}", x.cpu));
                }
            }
            if let Some(r) = c.current {
                let x = self
                    .ents
                    .get(r.index())
                    .ok_or_else(|| format!("cpu {k} runs unknown {r:?}"))?;
                seen[r.index()] += 1;
                if x.cpu != k {
                    return Err(format!("{r:?} current on cpu {k} but homed on {}", x.cpu));
                }
                if !matches!(x.state, State::Running | State::Blocked | State::Stopped) {
                    return Err(format!("{r:?} current on cpu {k} but {:?}", x.state));
                }
            }
        }
        for (i, x) in self.ents.iter().enumerate() {
            let e = Entity(i as u16);
            if x.cpu >= n {
                return Err(format!("{e:?} on cpu {} of {n}", x.cpu));
            }
            if seen[i] > 1 {
                return Err(format!("{e:?} is in {} places", seen[i]));
            }
            let current = self.cpus[x.cpu].current == Some(e);
            match x.state {
                State::Runnable if seen[i] != 1 || current => {
                    return Err(format!("{e:?} Runnable but not queued"));
                }
                State::Running if !current => {
                    return Err(format!("{e:?} Running but not current"));
                }
                State::Throttled if seen[i] != 0 || x.budget.is_none() => {
                    return Err(format!("{e:?} Throttled but queued, current or uncapped"));
                }
                State::Blocked | State::Stopped if seen[i] != u32::from(current) => {
                    return Err(format!("{e:?} {:?} but queued", x.state));
                }
                _ => {}
            }
            if let Some(dst) = x.moving {
                if !current || dst >= n || dst == x.cpu {
                    return Err(format!("{e:?} has a bad pending move to {dst}"));
                }
            }
            if x.weight == 0 {
                return Err(format!("{e:?} has weight 0"));
            }
        }
        // Every tick an entity ran, a cpu ran it.
        let busy: u128 = self.cpus.iter().map(|c| u128::from(c.busy)).sum();
        let ran: u128 = self.ents.iter().map(|x| u128::from(x.runtime)).sum();
        if busy != ran {
            return Err(format!("cpus busy {busy} ticks, entities ran {ran}"));
        }
        Ok(())
    }

    // ----- internals -----

    fn tick(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    fn index(&self, e: Entity) -> Option<usize> {
        let i = e.index();
        (i < self.ents.len()).then_some(i)
    }

    fn window_of(&self, t: u64) -> u64 {
        t - t % self.params.period
    }

    /// The cpu's current entity, if it is still `Running`.
    fn running_entity(&self, cpu: usize) -> Option<usize> {
        self.cpus[cpu]
            .current
            .map(Entity::index)
            .filter(|&c| self.ents[c].state == State::Running)
    }

    /// Nothing running and nothing queued.
    fn idle(&self, cpu: usize) -> bool {
        self.running_entity(cpu).is_none() && self.cpus[cpu].queue.is_empty()
    }

    fn load(&self, cpu: usize) -> u64 {
        let c = &self.cpus[cpu];
        c.queue
            .iter()
            .map(|q| q.index())
            .chain(self.running_entity(cpu))
            .map(|i| u64::from(self.ents[i].weight))
            .sum()
    }

    fn any_queued(&self) -> bool {
        self.cpus.iter().any(|c| !c.queue.is_empty())
    }

    /// Charge the cpu's running entity up to `now`.
    fn account(&mut self, cpu: usize, now: u64) {
        let t0 = self.cpus[cpu].accounted;
        self.cpus[cpu].accounted = now;
        let Some(i) = self.running_entity(cpu) else {
            return;
        };
        let ran = now.saturating_sub(t0);
        if ran == 0 {
            return;
        }
        self.cpus[cpu].busy = self.cpus[cpu].busy.saturating_add(ran);
        let x = &mut self.ents[i];
        x.runtime = x.runtime.saturating_add(ran);
        x.vruntime = x.vruntime.saturating_add(vdelta(ran, x.weight));
        self.charge_cap(i, t0, now);
        // A cpu running one entity tickless for long must not leave its
        // minimum behind, or the next sleeper to wake there gets all that
        // time as credit.
        self.update_min(cpu);
    }

    /// Count `[t0, t1)` against the entity's cap windows.
    fn charge_cap(&mut self, i: usize, t0: u64, t1: u64) {
        if self.ents[i].budget.is_none() {
            return;
        }
        self.refresh_window(i, t0);
        let t0 = t0.max(self.ents[i].window);
        let end = self.ents[i].window.saturating_add(self.params.period);
        if t1 <= end {
            self.ents[i].used = self.ents[i].used.saturating_add(t1.saturating_sub(t0));
        } else {
            self.ents[i].used = self.ents[i].used.saturating_add(end - t0);
            self.refresh_window(i, t1);
            let x = &mut self.ents[i];
            x.used = x.used.saturating_add(t1 - x.window);
        }
    }

    /// Move the entity's cap accounting to the window holding `now`. What it
    /// overspent in the window just ended is charged to the new one.
    fn refresh_window(&mut self, i: usize, now: u64) {
        let w = self.window_of(now);
        let period = self.params.period;
        let x = &mut self.ents[i];
        let Some(budget) = x.budget else { return };
        if w > x.window {
            let carry = if x.window.checked_add(period) == Some(w) {
                x.used.saturating_sub(budget)
            } else {
                0
            };
            x.used = carry.min(budget);
            x.window = w;
        }
    }

    fn budget_spent(&mut self, i: usize, now: u64) -> bool {
        let Some(budget) = self.ents[i].budget else {
            return false;
        };
        self.refresh_window(i, now);
        self.ents[i].used >= budget
    }

    /// Throttle until the next window. The entity is on no queue.
    fn throttle(&mut self, i: usize, now: u64) {
        self.refresh_window(i, now);
        let x = &mut self.ents[i];
        x.state = State::Throttled;
        x.throttle_until = x.window.saturating_add(self.params.period);
    }

    /// The home cpu of throttled entity `i`, if it has no deadline by the
    /// entity's release.
    fn throttle_kick(&self, i: usize) -> Option<usize> {
        let x = &self.ents[i];
        match self.cpus[x.cpu].deadline {
            Some(d) if d <= x.throttle_until => None,
            _ => Some(x.cpu),
        }
    }

    /// Release the throttled entities whose window has come, onto their
    /// home queues. (Their home cpus have deadlines for it.)
    fn unthrottle_due(&mut self, now: u64) {
        for i in 0..self.ents.len() {
            let x = &self.ents[i];
            if x.state != State::Throttled || x.throttle_until > now {
                continue;
            }
            if self.budget_spent(i, now) {
                // Still in debt from an overshoot: another window.
                let x = &mut self.ents[i];
                x.throttle_until = x.window.saturating_add(self.params.period);
            } else {
                let cpu = self.ents[i].cpu;
                self.place(i, cpu, now);
                self.enqueue(i, cpu);
            }
        }
    }

    fn enqueue(&mut self, i: usize, cpu: usize) {
        self.ents[i].state = State::Runnable;
        self.ents[i].cpu = cpu;
        self.cpus[cpu].queue.push(Entity(i as u16));
    }

    fn dequeue(&mut self, i: usize) -> bool {
        let q = &mut self.cpus[self.ents[i].cpu].queue;
        match q.iter().position(|e| e.index() == i) {
            Some(pos) => {
                q.swap_remove(pos);
                true
            }
            None => false,
        }
    }

    /// Re-home `i` on `dst`, keeping its lead or lag on `min_vruntime`
    /// (both cpus' minimums brought up to `now` first).
    fn rebase(&mut self, i: usize, dst: usize, now: u64) {
        let src = self.ents[i].cpu;
        self.account(src, now);
        self.account(dst, now);
        let (s, d) = (self.cpus[src].min_vruntime, self.cpus[dst].min_vruntime);
        let x = &mut self.ents[i];
        x.vruntime = if d >= s {
            x.vruntime.saturating_add(d - s)
        } else {
            x.vruntime.saturating_sub(s - d)
        };
        x.cpu = dst;
    }

    /// A sleeper's credit: at most one slice behind the cpu's minimum (as
    /// of `now`).
    fn place(&mut self, i: usize, cpu: usize, now: u64) {
        self.account(cpu, now);
        let floor = self.cpus[cpu]
            .min_vruntime
            .saturating_sub(vticks(self.params.slice));
        let x = &mut self.ents[i];
        x.vruntime = x.vruntime.max(floor);
    }

    fn update_min(&mut self, cpu: usize) {
        let queued = self.cpus[cpu]
            .queue
            .iter()
            .map(|q| self.ents[q.index()].vruntime);
        let running = self.running_entity(cpu).map(|c| self.ents[c].vruntime);
        if let Some(m) = queued.chain(running).min() {
            let c = &mut self.cpus[cpu];
            c.min_vruntime = c.min_vruntime.max(m);
        }
    }

    /// The queued entity a cpu would run next: lowest virtual runtime, then
    /// lowest index.
    fn queue_min(&self, cpu: usize) -> Option<(usize, Entity)> {
        let q = &self.cpus[cpu].queue;
        (0..q.len())
            .min_by_key(|&p| (self.ents[q[p].index()].vruntime, q[p]))
            .map(|p| (p, q[p]))
    }

    /// Take the next entity off the queue; one found with no cap budget
    /// left (not expected) is throttled instead.
    fn pop_min(&mut self, cpu: usize, now: u64) -> Option<Entity> {
        while let Some((pos, e)) = self.queue_min(cpu) {
            self.cpus[cpu].queue.swap_remove(pos);
            if self.budget_spent(e.index(), now) {
                self.throttle(e.index(), now);
            } else {
                return Some(e);
            }
        }
        None
    }

    /// Would queued entity `i` preempt the entity running on `cpu`
    /// (charged up to date)?
    fn preempts(&self, cpu: usize, i: usize) -> bool {
        self.running_entity(cpu).is_some_and(|c| {
            let gran = vticks(self.params.wake_granularity);
            self.ents[i].vruntime.saturating_add(gran) < self.ents[c].vruntime
        })
    }

    fn queue_preempts(&self, cpu: usize) -> bool {
        self.queue_min(cpu)
            .is_some_and(|(_, e)| self.preempts(cpu, e.index()))
    }

    /// A running cpu whose deadline does not come by its slice end (or by
    /// `now`, if the slice is over): it would not notice queued work.
    fn late(&self, cpu: usize, now: u64) -> bool {
        let c = &self.cpus[cpu];
        c.deadline.is_none_or(|d| d > c.slice_end.max(now))
    }

    /// Which cpu to interrupt now that entity `i` is queued on `dst`.
    fn kick_for_queued(&mut self, dst: usize, i: usize, now: u64) -> Option<usize> {
        if self.running_entity(dst).is_none() {
            return Some(dst);
        }
        self.account(dst, now);
        if self.preempts(dst, i) || self.late(dst, now) {
            return Some(dst);
        }
        self.kick_other(dst, now)
    }

    /// With work queued somewhere, a cpu other than `except` that would not
    /// otherwise notice it: a running one with no slice deadline (it must
    /// start ticking for balancing), or an idle one that could pull.
    fn kick_other(&self, except: usize, now: u64) -> Option<usize> {
        if !self.any_queued() {
            return None;
        }
        (0..self.cpus.len()).filter(|&k| k != except).find(|&k| {
            if self.running_entity(k).is_some() {
                self.late(k, now)
            } else {
                self.cpus[k].deadline.is_none_or(|d| d > now)
                    && self.pull_candidate(k, now, true, None).is_some()
            }
        })
    }

    /// The entity `dst` should pull, and from where: from the most loaded
    /// cpu that has one, the queued entity that best evens the two loads,
    /// if moving it strictly reduces their difference. A busy `dst` only
    /// takes entities that have been on their cpu for `migration_cost`;
    /// nobody takes one within `migration_cost` of an explicit move, nor
    /// `skip`.
    /// How long an entity [`Pool::move_to`] moved wakes on its new cpu
    /// even when another is idle: [`MOVE_HOLD`] migration costs. (Pulls
    /// still balance it after one migration cost.)
    fn move_hold(&self) -> u64 {
        self.params.migration_cost.saturating_mul(MOVE_HOLD)
    }

    fn pull_candidate(
        &self,
        dst: usize,
        now: u64,
        idle: bool,
        skip: Option<Entity>,
    ) -> Option<(usize, Entity)> {
        let ld = self.load(dst);
        let mut best = None;
        for src in (0..self.cpus.len()).filter(|&s| s != dst) {
            let ls = self.load(src);
            if ls <= ld {
                continue;
            }
            let diff = ls - ld;
            for &e in &self.cpus[src].queue {
                let x = &self.ents[e.index()];
                let w = u64::from(x.weight);
                let settled = now.saturating_sub(x.arrived) >= self.params.migration_cost;
                if Some(e) == skip || now < x.pinned_until || (!idle && !settled) || w >= diff {
                    continue;
                }
                let key = (Reverse(ls), diff.abs_diff(2 * w), src, e);
                if best.as_ref().is_none_or(|b| key < *b) {
                    best = Some(key);
                }
            }
        }
        best.map(|(_, _, src, e)| (src, e))
    }

    /// When `cpu` must schedule again: its slice end if anything waits in
    /// the pool, its running entity's cap budget end, and the release of
    /// entities throttled on it.
    fn deadline(&mut self, cpu: usize, now: u64) -> Option<u64> {
        let mut until = None;
        if let Some(c) = self.running_entity(cpu) {
            if self.any_queued() {
                until = earliest(until, self.cpus[cpu].slice_end);
            }
            if let Some(t) = self.cap_deadline(c, now) {
                until = earliest(until, t);
            }
        }
        for x in &self.ents {
            if x.state == State::Throttled && x.cpu == cpu {
                until = earliest(until, x.throttle_until);
            }
        }
        until
    }

    /// When running entity `i`, if it runs on, spends its cap budget.
    fn cap_deadline(&mut self, i: usize, now: u64) -> Option<u64> {
        let budget = self.ents[i].budget?;
        self.refresh_window(i, now);
        let x = &self.ents[i];
        let end = x.window.saturating_add(self.params.period);
        let out = now.saturating_add(budget.saturating_sub(x.used));
        Some(if out < end {
            out
        } else {
            end.saturating_add(budget)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            slice: 10_000,
            period: 100_000,
            wake_granularity: 1_000,
            migration_cost: 500,
        }
    }

    #[test]
    fn vdelta_neither_vanishes_nor_overflows() {
        assert!(vdelta(1, u32::MAX) > 0);
        assert_eq!(vdelta(1, 1024), vticks(1));
        assert_eq!(vdelta(3, 512), vticks(6));
        assert!(vdelta(u64::MAX, 1) > vticks(u64::MAX));
        assert_eq!(vdelta(5, 0), vdelta(5, 1));
    }

    #[test]
    fn min_vruntime_never_goes_back() {
        let mut pool = Pool::new(3, params());
        for i in 0..7u32 {
            pool.add(1 + 300 * i, (i % 3 == 0).then_some(40), i as usize % 3);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut now = 0;
        let mut mins = [0u128; 3];
        for _ in 0..20_000 {
            let r = next();
            now += r % 7_000;
            let e = Entity((r >> 8) as u16 % 7);
            let cpu = (r >> 24) as usize % 3;
            match (r >> 32) % 6 {
                0 => {
                    pool.wake(e, now);
                }
                1 => pool.block(e, now),
                2 => {
                    pool.stop(e, now);
                }
                3 => {
                    let _ = pool.move_to(e, cpu, now);
                }
                _ => {
                    pool.schedule(cpu, now);
                }
            }
            pool.check().unwrap();
            for (k, m) in mins.iter_mut().enumerate() {
                assert!(pool.cpus[k].min_vruntime >= *m);
                *m = pool.cpus[k].min_vruntime;
            }
        }
    }

    #[test]
    fn moving_keeps_an_entitys_lead_on_the_minimum() {
        let mut pool = Pool::new(2, params());
        let a = pool.add(1024, None, 0);
        let b = pool.add(1024, None, 0);
        let c = pool.add(1024, None, 1);
        pool.wake(a, 0);
        pool.schedule(0, 0);
        pool.wake(c, 0);
        pool.schedule(1, 0);
        pool.wake(b, 0);
        // cpu 1's minimum runs ahead: c runs alone for 50_000 ticks.
        pool.schedule(0, 10_000); // b runs, a (10_000 ahead of b) waits
        pool.schedule(1, 50_000);
        pool.account(0, 50_000);
        let (m0, m1) = (pool.cpus[0].min_vruntime, pool.cpus[1].min_vruntime);
        assert!(m1 > m0);
        // a is at cpu 0's minimum, b ran 30_000 ahead of it.
        let lead = pool.ents[0].vruntime - m0;
        pool.move_to(a, 1, 50_000).unwrap();
        assert_eq!(pool.ents[0].vruntime - pool.cpus[1].min_vruntime, lead);
        assert!(pool.cpus[1].min_vruntime >= m1);
        pool.check().unwrap();
    }
}
