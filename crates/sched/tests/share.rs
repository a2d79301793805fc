//! Proportional share: CPU-bound VMs get CPU time in proportion to their
//! weights, on one cpu and on two, whatever cpus their vCPUs start on.
mod common;

use bulkhead_sched::Entity;
use common::*;

/// Run `weights.len()` VMs of `vcpus` CPU-bound vCPUs each on `cpus`
/// cpus for 10 s; vCPU `j` of VM `v` starts homed on `home(v, j)`. Returns
/// each VM's share of the total CPU time, and the total against capacity.
fn run(
    cpus: usize,
    weights: &[u32],
    vcpus: usize,
    home: impl Fn(usize, usize) -> usize,
) -> (Vec<f64>, f64) {
    let mut sim = Sim::new(cpus, params(), 0);
    let vms: Vec<Vec<Entity>> = weights
        .iter()
        .enumerate()
        .map(|(v, &w)| {
            (0..vcpus)
                .map(|j| sim.add(w, None, home(v, j), Work::CpuBound))
                .collect()
        })
        .collect();
    for e in vms.iter().flatten() {
        sim.start(*e);
    }
    sim.run_until(10 * SEC);
    let total: u64 = sim.ran.iter().sum();
    let shares: Vec<f64> = vms.iter().map(|vm| frac(sim.ran_of(vm), total)).collect();
    println!(
        "shares {shares:?} schedules {} switches {}",
        sim.schedules, sim.switches
    );
    (shares, frac(total, 10 * SEC * cpus as u64))
}

fn assert_shares(shares: &[f64], weights: &[u32]) {
    let sum: u32 = weights.iter().sum();
    for (v, (&s, &w)) in shares.iter().zip(weights).enumerate() {
        let want = f64::from(w) / f64::from(sum);
        assert!(
            (s - want).abs() <= 0.10 * want,
            "VM {v}: share {s:.4}, want {want:.4} (all: {shares:?})"
        );
    }
}

const WEIGHTED: [u32; 3] = [256, 256, 512];
const EQUAL: [u32; 3] = [256, 256, 256];

#[test]
fn weighted_vms_on_two_cpus() {
    let (shares, used) = run(2, &WEIGHTED, 2, |_, j| j % 2);
    assert_shares(&shares, &WEIGHTED);
    assert!(used > 0.999, "cpus idle with work queued: {used}");
}

#[test]
fn weighted_vms_on_two_cpus_all_homed_on_one() {
    let (shares, used) = run(2, &WEIGHTED, 2, |_, _| 0);
    assert_shares(&shares, &WEIGHTED);
    assert!(used > 0.999, "cpus idle with work queued: {used}");
}

#[test]
fn weighted_vms_on_two_cpus_each_vm_on_its_own_cpu() {
    // VM 0 and 2 start on cpu 0, VM 1 on cpu 1: 1536 against 512 until
    // balancing evens the loads.
    let (shares, _) = run(2, &WEIGHTED, 2, |v, _| v % 2);
    assert_shares(&shares, &WEIGHTED);
}

#[test]
fn equal_vms_on_two_cpus() {
    let (shares, used) = run(2, &EQUAL, 2, |_, j| j % 2);
    assert_shares(&shares, &EQUAL);
    assert!(used > 0.999);
    let (shares, _) = run(2, &EQUAL, 2, |_, _| 1);
    assert_shares(&shares, &EQUAL);
}

#[test]
fn weighted_vms_on_one_cpu() {
    let (shares, used) = run(1, &WEIGHTED, 2, |_, _| 0);
    assert_shares(&shares, &WEIGHTED);
    assert!(used > 0.999);
}

#[test]
fn equal_vms_on_one_cpu() {
    let (shares, _) = run(1, &EQUAL, 2, |_, _| 0);
    assert_shares(&shares, &EQUAL);
}

#[test]
fn shares_on_one_cpu_are_exact_and_slices_are_whole() {
    // 1:3 on one cpu: 2.5 s against 7.5 s to within a slice.
    let mut sim = Sim::new(1, params(), 0);
    let a = sim.add(256, None, 0, Work::CpuBound);
    let b = sim.add(768, None, 0, Work::CpuBound);
    sim.start(a);
    sim.start(b);
    sim.run_until(10 * SEC);
    let (ra, rb) = (sim.ran[a.0 as usize], sim.ran[b.0 as usize]);
    assert!(ra.abs_diff(10 * SEC / 4) <= 10 * MS, "{ra} {rb}");
    assert_eq!(ra + rb, 10 * SEC);
    // One switch per slice at most: 10 s / 10 ms.
    assert!(sim.switches <= 1001, "{} switches", sim.switches);
}

#[test]
fn lone_entity_runs_without_deadline() {
    let mut sim = Sim::new(2, params(), 0);
    let a = sim.add(256, None, 1, Work::CpuBound);
    sim.start(a);
    sim.run_until(SEC);
    assert_eq!(sim.ran[a.0 as usize], SEC);
    // Woken, placed, picked: a handful of schedules, no slice ticks.
    assert!(sim.schedules <= 4, "{} schedules", sim.schedules);
    assert_eq!(sim.pool.entity(a).cpu, 1);
}
