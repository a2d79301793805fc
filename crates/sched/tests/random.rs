//! Randomized sequences (fixed-seed xorshift) of wake, block, stop,
//! schedule and move on 3 cpus, with unknown entities, cpus out of range
//! and time going backwards; the invariants are checked after every step,
//! and afterwards the pool, run as a real system, still gives every entity
//! CPU time.
mod common;

use bulkhead_sched::{Entity, MoveError, Params, Pool, State};
use common::*;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CPUS: usize = 3;
const ENTITIES: u16 = 8;
const SEEDS: u64 = 60;
const STEPS: usize = 3000;

/// A pool with random parameters and entities. `extreme` allows 1-tick
/// slices and periods, weights 0, 1 and 65535 and out-of-range caps; the
/// others stay in ranges where every entity gets a visible share in a
/// simulated second, for the liveness check.
fn random_pool(rng: &mut XorShift, extreme: bool) -> Pool {
    let params = if extreme {
        Params {
            slice: [1, 10 * MS, 3 * MS][rng.below(3) as usize],
            period: [100 * MS, 7 * MS, 1][rng.below(3) as usize],
            wake_granularity: rng.below(2 * MS),
            migration_cost: [0, MS / 2, 50 * MS][rng.below(3) as usize],
        }
    } else {
        Params {
            slice: [MS, 10 * MS, 3 * MS][rng.below(3) as usize],
            period: [100 * MS, 30 * MS][rng.below(2) as usize],
            wake_granularity: rng.below(2 * MS),
            migration_cost: [0, MS / 2, 5 * MS][rng.below(3) as usize],
        }
    };
    let mut pool = Pool::new(CPUS, params);
    for _ in 0..ENTITIES {
        let (weight, cap) = if extreme {
            let weight = [0, 1, 256, 512, 1024, 65535][rng.below(6) as usize];
            (weight, (rng.below(4) == 0).then(|| rng.below(130) as u8))
        } else {
            let weight = [256, 512, 1024][rng.below(3) as usize];
            (
                weight,
                (rng.below(4) == 0).then(|| 10 + rng.below(91) as u8),
            )
        };
        pool.add(weight, cap, rng.below(CPUS as u64 + 1) as usize);
    }
    pool
}

/// Run one seed; returns the pool and its clock.
fn run_seed(seed: u64, extreme: bool) -> (Pool, u64) {
    let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut pool = random_pool(&mut rng, extreme);
    let mut now = 0u64;
    let mut clock = 0u64;
    let mut runtime = vec![0u64; usize::from(ENTITIES)];
    let mut busy = [0u64; CPUS];
    for step in 0..STEPS {
        now = if rng.below(10) == 0 {
            now.saturating_sub(rng.below(5 * MS))
        } else {
            now + rng.below(20 * MS)
        };
        clock = clock.max(now);
        // Entities 8 and 9 and cpu 3 do not exist.
        let e = Entity(rng.below(u64::from(ENTITIES) + 2) as u16);
        let cpu = rng.below(CPUS as u64 + 1) as usize;
        let known = e.0 < ENTITIES;
        let what = rng.below(7);
        let kicked = match what {
            0 | 1 => pool.wake(e, now),
            2 => {
                // Mostly the running entity of some cpu, as the hypervisor does.
                let e = match pool.running(cpu) {
                    Some(r) if rng.below(4) != 0 => r,
                    _ => e,
                };
                pool.block(e, now);
                None
            }
            3 => pool.stop(e, now),
            4 => match pool.move_to(e, cpu, now) {
                Ok(k) => {
                    assert!(known && cpu < CPUS);
                    k
                }
                Err(err) => {
                    let want = if known {
                        MoveError::NoSuchCpu
                    } else {
                        MoveError::NoSuchEntity
                    };
                    assert_eq!(err, want, "seed {seed} step {step}");
                    None
                }
            },
            _ => {
                let pick = pool.schedule(cpu, now);
                if cpu >= CPUS {
                    assert_eq!((pick.run, pick.until, pick.kick), (None, None, None));
                }
                if let Some(u) = pick.until {
                    assert!(u > clock, "seed {seed} step {step}: until {u} at {clock}");
                }
                if let Some(r) = pick.run {
                    assert_eq!(pool.entity(r).state, State::Running);
                    assert_eq!(pool.entity(r).cpu, cpu);
                }
                assert_ne!(pick.kick, Some(cpu));
                pick.kick
            }
        };
        if let Some(k) = kicked {
            assert!(k < CPUS, "seed {seed} step {step}: kick {k}");
        }
        if let Err(msg) = pool.check() {
            panic!("seed {seed} step {step} op {what} {e:?} cpu {cpu} now {now}: {msg}");
        }
        // Nothing is lost or charged backwards.
        for (i, r) in runtime.iter_mut().enumerate() {
            let info = pool.entity(Entity(i as u16));
            assert!(info.runtime >= *r, "seed {seed} step {step}");
            *r = info.runtime;
        }
        for (c, b) in busy.iter_mut().enumerate() {
            assert!(pool.cpu(c).busy >= *b);
            *b = pool.cpu(c).busy;
        }
        let runnable = (0..ENTITIES)
            .filter(|&i| pool.entity(Entity(i)).state == State::Runnable)
            .count();
        let queued: usize = (0..CPUS).map(|c| pool.cpu(c).queued).sum();
        assert_eq!(runnable, queued, "seed {seed} step {step}");
    }
    (pool, clock)
}

#[test]
fn random_operations_keep_the_invariants() {
    for seed in 0..SEEDS {
        run_seed(seed, true);
        run_seed(seed, false);
    }
}

#[test]
fn after_random_operations_everyone_still_runs() {
    for seed in 0..SEEDS {
        let (mut pool, clock) = run_seed(seed, false);
        for i in 0..ENTITIES {
            pool.wake(Entity(i), clock);
        }
        pool.check().unwrap();
        let before: Vec<u64> = (0..ENTITIES)
            .map(|i| pool.entity(Entity(i)).runtime)
            .collect();
        let mut sim = Sim::adopt(pool, clock, Work::CpuBound);
        // 8 CPU-bound entities on 3 cpus: no cpu may idle while work waits.
        for _ in 0..200 {
            sim.run_for(10 * MS + 3);
            let queued: usize = (0..CPUS).map(|c| sim.pool.cpu(c).queued).sum();
            let throttled = (0..ENTITIES)
                .filter(|&i| sim.pool.entity(Entity(i)).state == State::Throttled)
                .count();
            if queued > 0 && throttled == 0 {
                let running = (0..CPUS).filter(|&c| sim.pool.running(c).is_some()).count();
                assert_eq!(
                    running, CPUS,
                    "seed {seed}: idle cpu, {queued} queued at {}",
                    sim.now
                );
            }
        }
        for i in 0..ENTITIES {
            let after = sim.pool.entity(Entity(i)).runtime;
            assert!(
                after > before[usize::from(i)],
                "seed {seed}: {i} never ran: {:?} params {:?} cpus {:?}",
                sim.pool.entity(Entity(i)),
                sim.pool.params(),
                (0..CPUS).map(|c| sim.pool.cpu(c)).collect::<Vec<_>>()
            );
        }
    }
}
