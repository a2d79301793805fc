//! `move_to` of queued, running, blocked, stopped and throttled entities;
//! `stop` in every state; a wake-up racing a block.
mod common;

use bulkhead_sched::{Entity, MoveError, Pick, Pool, State};
use common::*;

/// Two cpus: a runs on cpu 0 with b queued behind it, c runs on cpu 1.
fn busy() -> (Pool, Entity, Entity, Entity) {
    let mut pool = Pool::new(2, params());
    let a = pool.add(256, None, 0);
    let b = pool.add(256, None, 0);
    let c = pool.add(256, None, 1);
    pool.wake(a, 0);
    assert_eq!(pool.schedule(0, 0).run, Some(a));
    pool.wake(c, 0);
    assert_eq!(pool.schedule(1, 0).run, Some(c));
    pool.wake(b, 0);
    assert_eq!(pool.entity(b).cpu, 0);
    assert_eq!(pool.entity(b).state, State::Runnable);
    pool.check().unwrap();
    (pool, a, b, c)
}

#[test]
fn queued_entity_changes_queues_at_once() {
    let (mut pool, a, b, c) = busy();
    // cpu 1 runs c alone with no deadline: it is the one to interrupt.
    assert_eq!(pool.move_to(b, 1, 100), Ok(Some(1)));
    assert_eq!(pool.entity(b).cpu, 1);
    assert_eq!(pool.entity(b).state, State::Runnable);
    assert_eq!((pool.cpu(0).queued, pool.cpu(1).queued), (0, 1));
    assert_eq!((pool.cpu(0).load, pool.cpu(1).load), (256, 512));
    pool.check().unwrap();
    // cpu 1 now shares between b and c; cpu 0 keeps a and does not take b
    // back.
    let pick = pool.schedule(1, 100);
    assert!(pick.run == Some(b) || pick.run == Some(c));
    assert!(pick.until.is_some());
    assert_eq!(pool.schedule(0, 200).run, Some(a));
    assert_eq!(pool.entity(b).cpu, 1);
    pool.check().unwrap();
}

#[test]
fn queued_entity_moved_to_an_idle_cpu_runs_there() {
    let (mut pool, _a, b, c) = busy();
    // c blocks; before cpu 1 schedules (and would pull b), b is moved there.
    pool.block(c, 50);
    assert_eq!(pool.move_to(b, 1, 60), Ok(Some(1)));
    assert_eq!(pool.schedule(1, 60).run, Some(b));
    pool.check().unwrap();
}

#[test]
fn running_entity_moves_when_its_cpu_schedules() {
    let mut pool = Pool::new(2, params());
    let a = pool.add(256, None, 0);
    pool.wake(a, 0);
    assert_eq!(pool.schedule(0, 0).run, Some(a));
    assert_eq!(pool.move_to(a, 1, 100), Ok(Some(0)));
    // Still running on cpu 0 until cpu 0 schedules.
    assert_eq!(pool.entity(a).state, State::Running);
    assert_eq!(pool.entity(a).cpu, 0);
    assert_eq!(pool.running(0), Some(a));
    pool.check().unwrap();
    // cpu 0 lets it go (and does not pull it back although it is idle) and
    // names cpu 1, idle, to interrupt.
    let pick = pool.schedule(0, 150);
    assert_eq!(
        pick,
        Pick {
            run: None,
            until: None,
            kick: Some(1)
        }
    );
    assert_eq!(pool.entity(a).cpu, 1);
    assert_eq!(pool.entity(a).runtime, 150);
    assert_eq!(pool.schedule(1, 160).run, Some(a));
    pool.check().unwrap();
}

#[test]
fn pending_move_can_be_cancelled() {
    let (mut pool, a, _b, _c) = busy();
    assert_eq!(pool.move_to(a, 1, 100), Ok(Some(0)));
    assert_eq!(pool.move_to(a, 0, 110), Ok(None));
    pool.schedule(0, 120);
    assert_eq!(pool.entity(a).cpu, 0);
    pool.check().unwrap();
}

#[test]
fn running_entity_that_blocks_before_its_move_changes_home() {
    let (mut pool, a, _b, _c) = busy();
    assert_eq!(pool.move_to(a, 1, 100), Ok(Some(0)));
    pool.block(a, 110);
    pool.schedule(0, 120);
    assert_eq!(pool.entity(a).state, State::Blocked);
    assert_eq!(pool.entity(a).cpu, 1);
    pool.check().unwrap();
}

#[test]
fn blocked_and_stopped_entities_change_home() {
    let (mut pool, a, b, c) = busy();
    pool.block(a, 100);
    assert_eq!(pool.schedule(0, 100).run, Some(b));
    assert_eq!(pool.move_to(a, 1, 200), Ok(None));
    assert_eq!(pool.entity(a).cpu, 1);
    assert_eq!(pool.entity(a).state, State::Blocked);
    // It wakes on its new home (busy with c; cpu 0 is busy with b too).
    pool.wake(a, 300);
    assert_eq!(pool.entity(a).cpu, 1);
    assert_eq!(pool.entity(a).state, State::Runnable);

    let d = pool.add(256, None, 0);
    assert_eq!(pool.move_to(d, 1, 400), Ok(None));
    assert_eq!(pool.entity(d).cpu, 1);
    assert_eq!(pool.entity(d).state, State::Stopped);
    let _ = c;
    pool.check().unwrap();
}

#[test]
fn throttled_entity_changes_home_and_is_released_there() {
    let mut pool = Pool::new(2, params());
    let a = pool.add(256, Some(30), 0);
    pool.wake(a, 0);
    pool.schedule(0, 0);
    assert_eq!(pool.schedule(0, 30 * MS).until, Some(100 * MS));
    assert_eq!(pool.entity(a).state, State::Throttled);
    // cpu 1 has no deadline for the release: it is to be interrupted.
    assert_eq!(pool.move_to(a, 1, 40 * MS), Ok(Some(1)));
    assert_eq!(pool.schedule(1, 40 * MS).until, Some(100 * MS));
    assert_eq!(pool.schedule(1, 100 * MS).run, Some(a));
    assert_eq!(pool.entity(a).cpu, 1);
    pool.check().unwrap();
}

#[test]
fn move_errors_and_no_ops() {
    let (mut pool, a, _b, _c) = busy();
    assert_eq!(pool.move_to(Entity(3), 0, 1), Err(MoveError::NoSuchEntity));
    assert_eq!(
        pool.move_to(Entity(u16::MAX), 0, 1),
        Err(MoveError::NoSuchEntity)
    );
    assert_eq!(pool.move_to(a, 2, 1), Err(MoveError::NoSuchCpu));
    assert_eq!(pool.move_to(a, usize::MAX, 1), Err(MoveError::NoSuchCpu));
    assert_eq!(pool.move_to(a, 0, 1), Ok(None));
    assert_eq!(pool.running(0), Some(a));
    pool.check().unwrap();
}

#[test]
fn stop_of_the_running_entity() {
    let (mut pool, a, b, _c) = busy();
    assert_eq!(pool.stop(a, 100), Some(0));
    assert_eq!(pool.entity(a).state, State::Stopped);
    // It is still on the cpu until the cpu schedules, and charged to `stop`.
    assert_eq!(pool.running(0), Some(a));
    assert_eq!(pool.cpu(0).load, 256);
    assert_eq!(pool.schedule(0, 300).run, Some(b));
    assert_eq!(pool.entity(a).runtime, 100);
    assert_eq!(pool.cpu(0).busy, 100);
    // Started again: runnable at home.
    pool.wake(a, 400);
    assert_eq!(pool.entity(a).state, State::Runnable);
    pool.check().unwrap();
}

#[test]
fn stop_in_every_other_state() {
    let (mut pool, a, b, c) = busy();
    // Queued.
    assert_eq!(pool.stop(b, 100), None);
    assert_eq!(pool.entity(b).state, State::Stopped);
    assert_eq!(pool.cpu(0).queued, 0);
    // Blocked, off its cpu.
    pool.block(c, 100);
    pool.schedule(1, 100);
    assert_eq!(pool.stop(c, 200), None);
    // Stopped already, and unknown.
    assert_eq!(pool.stop(c, 200), None);
    assert_eq!(pool.stop(Entity(77), 200), None);
    // Blocked but still on its cpu: the cpu must schedule.
    pool.block(a, 300);
    assert_eq!(pool.stop(a, 300), Some(0));
    pool.schedule(0, 300);
    assert_eq!(pool.running(0), None);
    pool.check().unwrap();
}

#[test]
fn wake_racing_a_block_resumes_the_entity() {
    let mut pool = Pool::new(1, params());
    let a = pool.add(256, None, 0);
    pool.wake(a, 0);
    pool.schedule(0, 0);
    pool.block(a, 100);
    // The interrupt it waits for arrives before the cpu schedules.
    assert_eq!(pool.wake(a, 150), None);
    assert_eq!(pool.entity(a).state, State::Running);
    assert_eq!(pool.schedule(0, 200).run, Some(a));
    // Not charged for 100..150, when it was blocked.
    pool.schedule(0, 300);
    assert_eq!(pool.entity(a).runtime, 250);
    pool.check().unwrap();
}

#[test]
fn moving_cpu_bound_entities_around_keeps_them_fair() {
    // Every 35 ms one of four CPU-bound entities on two cpus is moved to
    // the other cpu; they still share the 2 cpus about evenly.
    let mut sim = Sim::new(2, params(), 0);
    let es: Vec<_> = (0..4)
        .map(|i| sim.add(256, None, i % 2, Work::CpuBound))
        .collect();
    for &e in &es {
        sim.start(e);
    }
    for step in 0..280u64 {
        sim.run_for(35 * MS);
        let e = es[(step % 4) as usize];
        let to = 1 - sim.pool.entity(e).cpu;
        if let Ok(Some(k)) = sim.pool.move_to(e, to, sim.now) {
            sim.kick(k);
        }
        sim.check();
    }
    let total: u64 = sim.ran.iter().sum();
    assert!(frac(total, 2 * sim.now) > 0.99);
    for &e in &es {
        let s = frac(sim.ran[e.0 as usize], total);
        assert!((s - 0.25).abs() < 0.025, "{e:?} {s}");
    }
}

#[test]
fn a_moved_waiting_entity_wakes_where_it_was_moved_while_the_hold_lasts() {
    // a runs on cpu 0; w waits, homed on cpu 1, which is idle.
    let mut pool = Pool::new(2, params());
    let a = pool.add(256, None, 0);
    let w = pool.add(256, None, 1);
    pool.wake(a, 0);
    assert_eq!(pool.schedule(0, 0).run, Some(a));
    pool.wake(w, 0);
    assert_eq!(pool.schedule(1, 0).run, Some(w));
    pool.block(w, 10);
    assert_eq!(pool.schedule(1, 10).run, None);
    // Moved onto the busy cpu 0: without the hold its next wake would
    // go straight back to idle cpu 1.
    assert_eq!(pool.move_to(w, 0, 20), Ok(None));
    pool.wake(w, 30);
    assert_eq!(pool.entity(w).cpu, 0);
    pool.check().unwrap();
    // Once the hold is over, wake placement prefers the idle cpu again.
    // (w waits again: from cpu 0's queue, or after running there.)
    pool.schedule(0, 40);
    pool.block(w, 50);
    pool.schedule(0, 50);
    let t = 50;
    let later = t + params().migration_cost * bulkhead_sched::MOVE_HOLD + 1;
    pool.wake(w, later);
    assert_eq!(pool.entity(w).cpu, 1);
    pool.check().unwrap();
}
