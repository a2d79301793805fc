//! Wake-up placement, the cpu `wake` names, pulling by idle and by lightly
//! loaded cpus, blocked entities, sleepers.
mod common;

use bulkhead_sched::{Params, Pool, State};
use common::*;

fn no_migration_cost() -> Params {
    Params {
        migration_cost: 0,
        ..params()
    }
}

#[test]
fn wake_places_on_home_then_on_an_idle_cpu() {
    let mut pool = Pool::new(3, params());
    let a = pool.add(256, None, 1);
    let b = pool.add(256, None, 1);
    let c = pool.add(256, None, 1);
    let d = pool.add(256, None, 1);
    // Home idle: placed there, and that cpu is the one to interrupt.
    assert_eq!(pool.wake(a, 0), Some(1));
    // Queued there but not yet running: the home cpu is busy already, and
    // cpus 0 and 2 are idle: the lowest.
    assert_eq!(pool.wake(b, 0), Some(0));
    assert_eq!(pool.entity(b).cpu, 0);
    assert_eq!(pool.schedule(1, 0).run, Some(a));
    assert_eq!(pool.schedule(0, 0).run, Some(b));
    // Home running, cpu 2 idle.
    assert_eq!(pool.wake(c, 0), Some(2));
    assert_eq!(pool.entity(c).cpu, 2);
    // Each runs alone: no deadlines (cpu 1 got one while b was queued).
    for cpu in [2, 1, 0] {
        assert_eq!(pool.schedule(cpu, 0).until, None);
    }
    // Nobody idle: home, and cpu 1 (running a alone, no deadline) must
    // start a slice for it.
    assert_eq!(pool.wake(d, 1), Some(1));
    assert_eq!(pool.entity(d).cpu, 1);
    assert_eq!(pool.entity(d).state, State::Runnable);
    let pick = pool.schedule(1, 1);
    assert!(pick.until.is_some());
    pool.check().unwrap();
}

#[test]
fn wake_names_the_cpu_to_preempt_or_none() {
    let mut pool = Pool::new(1, params());
    let a = pool.add(256, None, 0);
    let b = pool.add(256, None, 0);
    let c = pool.add(256, None, 0);
    pool.wake(a, 0);
    pool.wake(b, 0);
    assert_eq!(pool.schedule(0, 0).run, Some(a));
    // b waits; a runs its slice and b takes over.
    assert_eq!(pool.schedule(0, 10 * MS).run, Some(b));
    // c has slept since 0: it gets vruntime min - slice, far behind b.
    assert_eq!(pool.wake(c, 12 * MS), Some(0));
    assert_eq!(pool.schedule(0, 12 * MS).run, Some(c));
    pool.check().unwrap();

    // With a granularity larger than any lead, a wake-up onto a cpu that
    // has a slice deadline already interrupts nobody.
    let mut pool = Pool::new(
        1,
        Params {
            wake_granularity: SEC,
            ..params()
        },
    );
    let a = pool.add(256, None, 0);
    let b = pool.add(256, None, 0);
    let c = pool.add(256, None, 0);
    pool.wake(a, 0);
    pool.wake(b, 0);
    assert_eq!(pool.schedule(0, 0).until, Some(10 * MS));
    assert_eq!(pool.wake(c, 5 * MS), None);
    // b has waited longest (lowest virtual runtime), then c.
    assert_eq!(pool.schedule(0, 10 * MS).run, Some(b));
    assert_eq!(pool.schedule(0, 20 * MS).run, Some(c));
    pool.check().unwrap();
}

#[test]
fn idle_cpu_pulls_queued_work() {
    let mut pool = Pool::new(2, params());
    let a = pool.add(256, None, 0);
    let b = pool.add(256, None, 0);
    let c = pool.add(256, None, 1);
    pool.wake(a, 0);
    assert_eq!(pool.schedule(0, 0).run, Some(a));
    pool.wake(c, 0);
    assert_eq!(pool.schedule(1, 0).run, Some(c));
    // Both busy: b is queued at home behind a.
    pool.wake(b, 0);
    assert_eq!(pool.entity(b).cpu, 0);
    // c blocks: cpu 1, now idle, pulls b (no migration cost for an idle
    // cpu) instead of idling.
    pool.block(c, 100);
    let pick = pool.schedule(1, 100);
    assert_eq!(pick.run, Some(b));
    assert_eq!(pool.entity(b).cpu, 1);
    assert_eq!(pool.cpu(0).queued, 0);
    pool.check().unwrap();
}

#[test]
fn busy_cpu_pulls_to_even_loads_but_never_ping_pongs() {
    // Four entities homed on cpu 0, cpu 1 has one of its own: loads go from
    // 4:1 (after the wake placements, 3:2) to even, and then stay put.
    let mut sim = Sim::new(2, no_migration_cost(), 0);
    let es: Vec<_> = (0..4)
        .map(|_| sim.add(256, None, 0, Work::CpuBound))
        .collect();
    let own = sim.add(256, None, 1, Work::CpuBound);
    sim.start(own);
    sim.run_for(MS);
    for &e in &es {
        sim.start(e);
    }
    sim.run_for(100 * MS);
    let moves_at = |sim: &Sim| {
        es.iter()
            .map(|&e| sim.pool.entity(e).cpu)
            .collect::<Vec<_>>()
    };
    let loads = (sim.pool.cpu(0).load, sim.pool.cpu(1).load);
    assert!(loads == (768, 512) || loads == (512, 768), "{loads:?}");
    let homes = moves_at(&sim);
    sim.run_for(SEC);
    assert_eq!(moves_at(&sim), homes, "entities moved with balanced loads");
    // Fair within each cpu, and about 2/5 of the pool each.
    for &e in &es {
        let share = frac(sim.pool.entity(e).runtime, 1101 * MS);
        assert!(share > 0.3 && share < 0.52, "{e:?} {share}");
    }
}

#[test]
fn heavy_entity_is_not_pulled_when_that_only_flips_the_imbalance() {
    let mut pool = Pool::new(2, no_migration_cost());
    let light = pool.add(256, None, 1);
    let run0 = pool.add(256, None, 0);
    let heavy = pool.add(512, None, 0);
    pool.wake(run0, 0);
    pool.schedule(0, 0);
    pool.wake(light, 0);
    pool.schedule(1, 0);
    pool.wake(heavy, 0);
    // Loads 768 vs 256: moving heavy (512) would make it 256 vs 768.
    let pick = pool.schedule(1, 10 * MS);
    assert_eq!(pick.run, Some(light));
    assert_eq!(pool.entity(heavy).cpu, 0);
    pool.check().unwrap();
}

#[test]
fn migration_cost_keeps_fresh_entities_from_busy_pullers() {
    let mut pool = Pool::new(3, params()); // migration cost 500 ticks
    let x = pool.add(256, None, 0);
    let z = pool.add(256, None, 2);
    let p = pool.add(256, None, 0);
    let q = pool.add(1024, None, 1);
    pool.wake(x, 0);
    pool.schedule(0, 0);
    pool.wake(z, 0);
    pool.schedule(2, 0);
    // p's home is busy: it goes to idle cpu 1 and arrives there at 1000;
    // q then queues at home on cpu 1 (no cpu is idle any more).
    assert_eq!(pool.wake(p, 1000), Some(1));
    assert_eq!(pool.entity(p).cpu, 1);
    pool.wake(q, 1000);
    assert_eq!(pool.entity(q).cpu, 1);
    // cpu 0 (busy, 256) sees cpu 1 at 1280: only p would even the loads,
    // and p has been there for 100 ticks.
    pool.schedule(0, 1100);
    assert_eq!(pool.entity(p).cpu, 1);
    // After the migration cost it may.
    pool.schedule(0, 1500);
    assert_eq!(pool.entity(p).cpu, 0);
    pool.check().unwrap();
}

#[test]
fn blocked_entity_consumes_nothing() {
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, None, 0, Work::CpuBound);
    let b = sim.add(
        256,
        None,
        0,
        Work::Cycle {
            run: 5 * MS,
            sleep: 2 * SEC,
        },
    );
    sim.start(a);
    sim.start(b);
    sim.run_for(SEC);
    let ran = sim.pool.entity(b).runtime;
    assert_eq!(ran, 5 * MS);
    assert_eq!(sim.pool.entity(b).state, State::Blocked);
    sim.run_for(SEC / 2);
    assert_eq!(sim.pool.entity(b).runtime, ran);
    // a had the cpu for everything else.
    assert_eq!(sim.ran[a.0 as usize], 1500 * MS - 5 * MS);
    assert_eq!(sim.idle[0], 0);
}

#[test]
fn woken_sleeper_does_not_starve_others() {
    // b sleeps 5 s while a runs alone, then turns CPU-bound. Its credit is
    // one slice, so a waits at most about two slices and the two then
    // share the cpu evenly.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, None, 0, Work::CpuBound);
    let b = sim.add(256, None, 0, Work::CpuBound);
    sim.start(a);
    sim.start_at(b, 5 * SEC);
    sim.run_until(5 * SEC);
    let (a0, b0) = (sim.ran[0], sim.ran[1]);
    assert_eq!(a0, 5 * SEC);
    sim.run_until(6 * SEC);
    let (da, db) = (sim.ran[0] - a0, sim.ran[1] - b0);
    assert!(da.abs_diff(db) <= 2 * 10 * MS, "a {da} b {db}");
    assert!(
        sim.max_wait[a.0 as usize] <= 2 * 10 * MS + MS,
        "a waited {}",
        sim.max_wait[0]
    );
}

#[test]
fn interactive_entity_gets_low_latency_and_its_share() {
    // An entity that runs 1 ms every 10 ms next to two CPU-bound ones: it
    // gets its 1 ms each time, soon after it wakes.
    let mut sim = Sim::new(1, params(), 0);
    let io = sim.add(
        256,
        None,
        0,
        Work::Cycle {
            run: MS,
            sleep: 9 * MS,
        },
    );
    let a = sim.add(256, None, 0, Work::CpuBound);
    let b = sim.add(256, None, 0, Work::CpuBound);
    for e in [io, a, b] {
        sim.start(e);
    }
    sim.run_until(10 * SEC);
    let share = frac(sim.ran[io.0 as usize], 10 * SEC);
    assert!(share > 0.09, "io share {share}");
    assert!(
        sim.max_wait[io.0 as usize] <= MS,
        "io waited {}",
        sim.max_wait[0]
    );
    let (ra, rb) = (sim.ran[a.0 as usize], sim.ran[b.0 as usize]);
    assert!(ra.abs_diff(rb) <= 20 * MS, "{ra} {rb}");
}

#[test]
fn no_cpu_idles_while_work_waits() {
    // Entities that block and wake on staggered patterns over 3 cpus: at
    // every moment, a cpu is idle only if no queue holds work it could take.
    let mut sim = Sim::new(3, no_migration_cost(), 0);
    let es: Vec<_> = (0..7)
        .map(|i| {
            sim.add(
                256 + 128 * (i % 3),
                None,
                0,
                Work::Cycle {
                    run: (3 + i as u64) * MS,
                    sleep: (1 + 2 * i as u64) * MS,
                },
            )
        })
        .collect();
    for &e in &es {
        sim.start(e);
    }
    for _ in 0..2000 {
        sim.run_for(MS / 2 + 7);
        let queued: usize = (0..3).map(|c| sim.pool.cpu(c).queued).sum();
        let running_all = (0..3).all(|c| sim.pool.running(c).is_some());
        assert!(
            queued == 0 || running_all,
            "idle cpu with {queued} queued at {}",
            sim.now
        );
    }
}
