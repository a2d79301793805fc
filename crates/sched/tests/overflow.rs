//! Times near u64::MAX / 2 and beyond, weight 1, huge gaps and huge
//! parameters: nothing overflows (the tests run with overflow checks).
mod common;

use bulkhead_sched::{Params, Pool, State};
use common::*;

const T0: u64 = u64::MAX / 2;

#[test]
fn weight_one_near_half_of_u64_max() {
    let mut sim = Sim::new(2, params(), T0);
    let tiny = sim.add(1, None, 0, Work::CpuBound);
    let heavy = sim.add(65535, None, 0, Work::CpuBound);
    let capped = sim.add(1, Some(25), 1, Work::CpuBound);
    let io = sim.add(
        1,
        None,
        1,
        Work::Cycle {
            run: MS,
            sleep: 3 * MS,
        },
    );
    for e in [tiny, heavy, capped, io] {
        sim.start(e);
    }
    sim.run_for(10 * SEC);
    let total: u64 = sim.ran.iter().sum();
    assert_eq!(total + sim.idle[0] + sim.idle[1], 20 * SEC);
    // The cap holds at weight 1 and T0.
    let c = frac(sim.ran[capped.0 as usize], 10 * SEC);
    assert!((c - 0.25).abs() < 0.01, "{c}");
    // Work-conserving: the 3 uncapped ones and the capped one use both cpus.
    assert!(frac(total, 20 * SEC) > 0.99);
}

#[test]
fn one_huge_run_at_weight_one() {
    let mut pool = Pool::new(1, params());
    let a = pool.add(1, None, 0);
    let b = pool.add(1, None, 0);
    pool.wake(a, T0);
    assert_eq!(pool.schedule(0, T0).run, Some(a));
    // 2^62 ticks at weight 1: 2^72 weight-1024 ticks of virtual time, past
    // what EntityInfo's u64 shows.
    let t1 = T0 + (1 << 62);
    pool.wake(b, t1);
    let pick = pool.schedule(0, t1);
    assert_eq!(pool.entity(a).runtime, 1 << 62);
    assert_eq!(pool.entity(a).vruntime, u64::MAX);
    // b woke with one slice of credit and runs a slice; then a is next
    // again (a weight-1 slice is 1024 slices of virtual time), neither
    // starved by the other's huge history.
    assert_eq!(pick.run, Some(b));
    assert_eq!(pool.schedule(0, t1 + 10 * MS).run, Some(a));
    assert_eq!(pool.schedule(0, t1 + 20 * MS).run, Some(b));
    pool.check().unwrap();
}

#[test]
fn end_of_time_saturates() {
    let mut pool = Pool::new(2, params());
    let a = pool.add(1, Some(50), 0);
    let b = pool.add(u32::MAX, None, 0);
    for now in [u64::MAX - 3 * SEC, u64::MAX - 1, u64::MAX] {
        pool.wake(a, now);
        pool.wake(b, now);
        for cpu in 0..2 {
            let pick = pool.schedule(cpu, now);
            if let Some(u) = pick.until {
                assert!(u >= now);
            }
        }
        pool.block(a, now);
        let _ = pool.move_to(b, 1, now);
        pool.check().unwrap();
    }
    // Time never goes back: an earlier `now` is taken as the latest seen.
    pool.wake(a, 0);
    pool.schedule(0, 0);
    pool.check().unwrap();
}

#[test]
fn huge_and_zero_parameters() {
    for params in [
        Params {
            slice: u64::MAX,
            period: u64::MAX,
            wake_granularity: u64::MAX,
            migration_cost: u64::MAX,
        },
        Params {
            slice: 0,
            period: 0,
            wake_granularity: 0,
            migration_cost: 0,
        },
    ] {
        let mut pool = Pool::new(2, params);
        let es: Vec<_> = (0..4).map(|i| pool.add(i * 1000, Some(30), 0)).collect();
        let mut now = T0;
        for step in 0..200u64 {
            let e = es[(step % 4) as usize];
            match step % 5 {
                0 => {
                    pool.wake(e, now);
                }
                1 => pool.block(e, now),
                2 => {
                    let _ = pool.move_to(e, (step % 2) as usize, now);
                }
                _ => {
                    pool.schedule((step % 2) as usize, now);
                }
            }
            now = now.wrapping_add(step * 7919 * MS) % (u64::MAX - 1);
            pool.check().unwrap();
        }
    }
}

#[test]
fn zero_cpus_and_weight_zero_are_clamped() {
    let mut pool = Pool::new(0, params());
    assert_eq!(pool.cpus(), 1);
    let a = pool.add(0, None, 5);
    assert_eq!(pool.entity(a).weight, 1);
    assert_eq!(pool.entity(a).cpu, 0);
    assert_eq!(pool.entity(a).state, State::Stopped);
    assert_eq!(pool.wake(a, 0), Some(0));
    assert_eq!(pool.schedule(0, 0).run, Some(a));
    pool.check().unwrap();
}
