//! Caps: a capped entity runs its percentage of every period and no more,
//! the cpu idles (or runs others) for the rest, and the throttle ends at
//! the next period start.
mod common;

use bulkhead_sched::{Params, Pick, Pool, State};
use common::*;

fn within(got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol,
        "got {got:.4}, want {want:.4} ± {tol}"
    );
}

#[test]
fn cap_30_alone_on_a_cpu_gets_30_percent() {
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, Some(30), 0, Work::CpuBound);
    sim.start(a);
    sim.run_until(10 * SEC);
    within(frac(sim.ran[a.0 as usize], 10 * SEC), 0.30, 0.01);
    within(frac(sim.idle[0], 10 * SEC), 0.70, 0.01);
    assert_eq!(sim.pool.cpu(0).busy, sim.pool.entity(a).runtime);
    // Two schedules per period (throttle, release), nothing more.
    assert!(sim.schedules <= 2 * 100 + 2, "{} schedules", sim.schedules);
}

#[test]
fn cap_30_in_a_two_cpu_pool_gets_30_percent() {
    let mut sim = Sim::new(2, params(), 0);
    let a = sim.add(256, Some(30), 1, Work::CpuBound);
    sim.start(a);
    sim.run_until(10 * SEC);
    within(frac(sim.ran[a.0 as usize], 10 * SEC), 0.30, 0.01);
    within(frac(sim.idle[0] + sim.idle[1], 20 * SEC), 0.85, 0.01);
}

#[test]
fn capped_entity_leaves_the_rest_to_an_uncapped_one() {
    // Equal weights would give 50 % each; the cap holds one at 30 %.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, Some(30), 0, Work::CpuBound);
    let b = sim.add(256, None, 0, Work::CpuBound);
    sim.start(a);
    sim.start(b);
    sim.run_until(10 * SEC);
    within(frac(sim.ran[a.0 as usize], 10 * SEC), 0.30, 0.01);
    within(frac(sim.ran[b.0 as usize], 10 * SEC), 0.70, 0.01);
    assert!(sim.idle[0] == 0);
}

#[test]
fn cap_above_the_share_changes_nothing() {
    // 2 entities of equal weight on a cpu: 50 % each; a 60 % cap is never hit.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, Some(60), 0, Work::CpuBound);
    let b = sim.add(256, None, 0, Work::CpuBound);
    sim.start(a);
    sim.start(b);
    sim.run_until(10 * SEC);
    within(frac(sim.ran[a.0 as usize], 10 * SEC), 0.50, 0.01);
    within(frac(sim.ran[b.0 as usize], 10 * SEC), 0.50, 0.01);
}

#[test]
fn caps_are_clamped() {
    let mut pool = Pool::new(1, params());
    let full = pool.add(256, Some(100), 0);
    let over = pool.add(256, Some(250), 0);
    let zero = pool.add(256, Some(0), 0);
    assert_eq!(pool.entity(full).cap, Some(100));
    assert_eq!(pool.entity(over).cap, Some(100));
    assert_eq!(pool.entity(zero).cap, Some(1));

    // 100 % limits nothing: runs the whole 10 s with no deadline.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, Some(100), 0, Work::CpuBound);
    sim.start(a);
    sim.run_until(10 * SEC);
    assert_eq!(sim.ran[a.0 as usize], 10 * SEC);
    // 0 is taken as 1 %.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, Some(0), 0, Work::CpuBound);
    sim.start(a);
    sim.run_until(10 * SEC);
    within(frac(sim.ran[a.0 as usize], 10 * SEC), 0.01, 0.001);
}

#[test]
fn throttle_lasts_until_the_next_period_start() {
    let p = params(); // period 100 ms: windows at multiples of 100 ms
    let mut pool = Pool::new(1, p);
    let a = pool.add(256, Some(30), 0);
    // Started 40 ms into a window: 30 ms of budget, spent at 70 ms.
    let t0 = 40 * MS;
    assert_eq!(pool.wake(a, t0), Some(0));
    let pick = pool.schedule(0, t0);
    assert_eq!(
        pick,
        Pick {
            run: Some(a),
            until: Some(70 * MS),
            kick: None
        }
    );
    // Idle until the next window, then runnable again.
    let pick = pool.schedule(0, 70 * MS);
    assert_eq!(pick.run, None);
    assert_eq!(pick.until, Some(100 * MS));
    assert_eq!(pool.entity(a).state, State::Throttled);
    let pick = pool.schedule(0, 100 * MS);
    assert_eq!(pick.run, Some(a));
    assert_eq!(pick.until, Some(130 * MS));
    pool.check().unwrap();
}

#[test]
fn budget_that_outlasts_the_window_runs_into_the_next() {
    // Started at 90 ms with 30 ms of budget: the window ends first, the
    // next window's budget is spent at 100 + 30 ms.
    let mut pool = Pool::new(1, params());
    let a = pool.add(256, Some(30), 0);
    pool.wake(a, 90 * MS);
    assert_eq!(pool.schedule(0, 90 * MS).until, Some(130 * MS));
    let pick = pool.schedule(0, 130 * MS);
    assert_eq!(pick.run, None);
    assert_eq!(pick.until, Some(200 * MS));
    assert_eq!(pool.entity(a).runtime, 40 * MS);
}

#[test]
fn overshoot_from_a_late_schedule_is_paid_back_next_period() {
    let mut pool = Pool::new(1, params());
    let a = pool.add(256, Some(30), 0);
    pool.wake(a, 0);
    assert_eq!(pool.schedule(0, 0).until, Some(30 * MS));
    // The timer fires 10 ms late: 40 ms run against a 30 ms budget.
    assert_eq!(pool.schedule(0, 40 * MS).until, Some(100 * MS));
    // Next window: only 20 ms.
    let pick = pool.schedule(0, 100 * MS);
    assert_eq!(pick.run, Some(a));
    assert_eq!(pick.until, Some(120 * MS));
    pool.check().unwrap();
}

#[test]
fn blocked_capped_entity_woken_with_no_budget_waits_for_the_period() {
    let mut pool = Pool::new(1, params());
    let a = pool.add(256, Some(30), 0);
    pool.wake(a, 0);
    pool.schedule(0, 0);
    // Blocks at exactly the end of its budget.
    pool.block(a, 30 * MS);
    let pick = pool.schedule(0, 30 * MS);
    assert_eq!(
        pick,
        Pick {
            run: None,
            until: None,
            kick: None
        }
    );
    assert_eq!(pool.entity(a).state, State::Blocked);
    // Woken in the same window: throttled; the idle cpu has no deadline for
    // its release, so it is the one to interrupt.
    assert_eq!(pool.wake(a, 50 * MS), Some(0));
    assert_eq!(pool.entity(a).state, State::Throttled);
    let pick = pool.schedule(0, 50 * MS);
    assert_eq!(pick.run, None);
    assert_eq!(pick.until, Some(100 * MS));
    assert_eq!(pool.schedule(0, 100 * MS).run, Some(a));
    pool.check().unwrap();
}

#[test]
fn throttled_entity_that_blocks_is_not_released() {
    let mut pool = Pool::new(1, params());
    let a = pool.add(256, Some(30), 0);
    pool.wake(a, 0);
    pool.schedule(0, 0);
    pool.schedule(0, 30 * MS);
    assert_eq!(pool.entity(a).state, State::Throttled);
    pool.block(a, 60 * MS);
    assert_eq!(pool.entity(a).state, State::Blocked);
    let pick = pool.schedule(0, 100 * MS);
    assert_eq!(pick.run, None);
    assert_eq!(pick.until, None);
    // A wake in the new window runs it with a fresh budget.
    assert_eq!(pool.wake(a, 110 * MS), Some(0));
    assert_eq!(pool.schedule(0, 110 * MS).until, Some(140 * MS));
}

#[test]
fn capped_entity_next_to_a_lone_one_on_another_cpu_gets_its_release() {
    // cpu 0 runs b alone (no deadline); a is throttled homed on cpu 0, so
    // cpu 0's deadline is a's release.
    let p = Params {
        migration_cost: 0,
        ..params()
    };
    let mut sim = Sim::new(2, p, 0);
    let a = sim.add(256, Some(20), 0, Work::CpuBound);
    let b = sim.add(256, None, 0, Work::CpuBound);
    let c = sim.add(256, None, 1, Work::CpuBound);
    sim.start(a);
    sim.start(b);
    sim.start(c);
    sim.run_until(10 * SEC);
    within(frac(sim.ran[a.0 as usize], 10 * SEC), 0.20, 0.01);
    let rest = frac(sim.ran[b.0 as usize] + sim.ran[c.0 as usize], 20 * SEC);
    within(rest, 0.90, 0.01);
}

#[test]
fn a_cap_set_and_lifted_while_running_takes_effect_at_once() {
    // Uncapped 2 s, capped at 10 % for 4 s (a migration slowing the VM
    // down), then uncapped again for 4 s beside an uncapped rival.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, None, 0, Work::CpuBound);
    let b = sim.add(256, None, 0, Work::CpuBound);
    sim.start(a);
    sim.start(b);
    sim.run_until(2 * SEC);
    let before = sim.ran[a.0 as usize];
    within(frac(before, 2 * SEC), 0.50, 0.01);
    let now = sim.now;
    if let Some(cpu) = sim.pool.set_cap(a, Some(10), now) {
        sim.kick(cpu);
    }
    sim.check();
    sim.run_until(6 * SEC);
    let capped = sim.ran[a.0 as usize] - before;
    within(frac(capped, 4 * SEC), 0.10, 0.01);
    assert_eq!(sim.pool.entity(a).cap, Some(10));
    let now = sim.now;
    if let Some(cpu) = sim.pool.set_cap(a, None, now) {
        sim.kick(cpu);
    }
    sim.check();
    sim.run_until(10 * SEC);
    let after = sim.ran[a.0 as usize] - before - capped;
    within(frac(after, 4 * SEC), 0.50, 0.01);
    assert_eq!(sim.pool.entity(a).cap, None);
}

#[test]
fn lifting_the_cap_of_a_throttled_entity_queues_it() {
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, Some(5), 0, Work::CpuBound);
    sim.start(a);
    // Past its 5 % of the first period: throttled until the next.
    let p = params().period;
    sim.run_until(p / 2);
    assert_eq!(sim.pool.entity(a).state, State::Throttled);
    let now = sim.now;
    let kick = sim.pool.set_cap(a, None, now);
    assert_eq!(kick, Some(0));
    assert_eq!(sim.pool.entity(a).state, State::Runnable);
    sim.check();
    sim.kick(0);
    sim.run_until(p / 2 + SEC);
    within(frac(sim.ran[a.0 as usize] - p / 20, SEC), 1.0, 0.01);
}

#[test]
fn a_cap_on_an_unknown_entity_changes_nothing() {
    let mut pool = Pool::new(1, params());
    assert_eq!(pool.set_cap(bulkhead_sched::Entity(7), Some(10), 0), None);
    pool.check().unwrap();
}
