//! The `snapshot` integration test (docs/snapshot.md): two machines, one
//! snapshot store.
//!
//! Machine A runs the counter guest (guests/counter) as a pool VM, the
//! shell snapshots it at count 100 or so into the host peer's store, stops
//! it and restores it from the store. Machine B, a fresh QEMU with a fresh
//! peer on the same store directory, boots its own counter, stops it, is
//! refused two damaged copies of the snapshot (a flipped byte, a cut
//! stream) with the VM left stopped, then restores the real one. Both
//! restored copies must go on from the snapshot's count, one tick at a
//! time, printing the sums the host computes for each count: their memory
//! came through intact. The stored file is decoded here too.

use crate::build::{self, Output};
use crate::qemu::{self, CAPTURED_CONSOLE};
use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CONFIG: &str = "configs/test-snapshot.toml";
/// The same VMs pinned, each to a pCPU of its own.
pub const CONFIG_PINNED: &str = "configs/test-snapshot-pinned.toml";
/// The guest's `counter.ticks` in that config.
const TICKS: u64 = 1000;
/// The counter guest's region and per-tick writes (guests/counter).
const WORDS: u64 = (2 << 20) / 8;
const WRITES: u64 = 16;
const TIMEOUT: Duration = Duration::from_secs(240);

fn mix(i: u64, n: u64) -> u64 {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 31;
    x.wrapping_mul(0x94d0_49bb_1331_11eb) | 1
}

/// Words of the counter's channel region in the configs that give it
/// one (`counter.chan=1` with a 4 KiB channel).
pub const CHAN_WORDS: u64 = 4096 / 8;

/// The sum the guest prints at each count 1..=ticks (index n - 1), by
/// doing what it does; `chan_words` of channel memory (0 for none).
pub fn expected_sums(ticks: u64, chan_words: u64) -> Vec<u64> {
    let mut region: Vec<u64> = (0..WORDS + chan_words).map(|i| mix(i, 0)).collect();
    let mut sum = region.iter().fold(0u64, |s, &w| s.wrapping_add(w));
    let mut out = Vec::new();
    let mut put = |region: &mut Vec<u64>, i: u64, n: u64| {
        let new = mix(i, n);
        sum = sum.wrapping_sub(region[i as usize]).wrapping_add(new);
        region[i as usize] = new;
        sum
    };
    for n in 1..=ticks {
        let mut s = 0;
        for k in 0..WRITES {
            let i = (n.wrapping_mul(7919).wrapping_add(k * 104_729)) % WORDS;
            s = put(&mut region, i, n);
        }
        if chan_words > 0 {
            s = put(&mut region, WORDS + n % chan_words, n);
        }
        out.push(s);
    }
    out
}

/// A `[counter] COUNT n sum=S` line: (n, S).
fn count_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.split("[counter] COUNT ").nth(1)?;
    let (n, sum) = rest.trim().split_once(" sum=")?;
    Some((n.parse().ok()?, u64::from_str_radix(sum.trim(), 16).ok()?))
}

/// The lines between the first line containing `from` (or the start)
/// and the first later line containing `to` (or the end).
pub fn lines_between<'a>(
    log: &'a str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<&'a str>> {
    let mut lines = log.lines();
    if let Some(f) = from {
        lines
            .by_ref()
            .find(|l| l.contains(f))
            .with_context(|| format!("{f:?} never appeared"))?;
    }
    let mut out = Vec::new();
    for l in lines {
        if to.is_some_and(|t| l.contains(t)) {
            return Ok(out);
        }
        out.push(l);
    }
    if let Some(t) = to {
        bail!("{t:?} never appeared after {from:?}");
    }
    Ok(out)
}

/// The counts printed between the first line containing `from` (or the
/// start) and the first later line containing `to` (or the end).
pub fn counts_between(log: &str, from: Option<&str>, to: Option<&str>) -> Result<Vec<(u64, u64)>> {
    Ok(lines_between(log, from, to)?
        .into_iter()
        .filter_map(count_line)
        .collect())
}

/// `counts` go up by one from `first`, each with the expected sum.
pub fn check_run(what: &str, counts: &[(u64, u64)], first: u64, sums: &[u64]) -> Result<()> {
    for (k, &(n, sum)) in counts.iter().enumerate() {
        let want = first + k as u64;
        ensure!(
            n == want,
            "{what}: count {n} where {want} was due (a gap or a repeat)"
        );
        let expect = sums
            .get(n as usize - 1)
            .with_context(|| format!("{what}: count {n} past the run's {TICKS}"))?;
        ensure!(
            sum == *expect,
            "{what}: count {n} printed sum {sum:016x}, the host computes {expect:016x}"
        );
    }
    Ok(())
}

fn machine(built: &build::Built, script: &[(&str, &str)]) -> Result<String> {
    let mut args = qemu::machine_args(built.cpus, built.ram_mib, "");
    args.extend(["-icount", "shift=0,sleep=on"].map(String::from));
    args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
    let peer = qemu::host_peer()?;
    args.extend(qemu::nic_args(&peer));
    let outcome = qemu::run_scripted(&args, TIMEOUT, script)?;
    let mut log = outcome.log.clone();
    log.push_str(&format!("\n{}", peer.stop()));
    if !outcome.succeeded() {
        bail!(
            "{}; serial log:\n{}",
            outcome.ending(TIMEOUT),
            qemu::indent(&log)
        );
    }
    // The bystander outlives the counter and the machine ends only when it
    // is stopped: a restored VM counts as running again.
    ensure!(
        log.contains("system ended: clean (counter: powered off, bystander: stopped from the shell)"),
        "the machine did not end with the counter powered off and then the bystander stopped; serial log:\n{}",
        qemu::indent(&log)
    );
    for bad in crate::itest::FORBID {
        if let Some(l) = log.lines().find(|l| l.contains(bad)) {
            bail!(
                "{bad:?} in the log: {l}\nserial log:\n{}",
                qemu::indent(&log)
            );
        }
    }
    Ok(log)
}

fn store_file(name: &str) -> PathBuf {
    crate::target_dir()
        .join("snapshots")
        .join(format!("{name}.bhsnap"))
}

/// Decodes a stored stream: its VM record and how many of each record.
fn decode_file(path: &Path) -> Result<String> {
    use bulkhead_snapshot::{Decoder, VmInfo, TAG_RAM, TAG_VCPU, TAG_VM};
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut dec = Decoder::new();
    let (mut vm, mut ram, mut vcpus) = (None, 0u64, 0u64);
    let mut pieces = bytes.chunks(7777);
    for piece in pieces.by_ref() {
        dec.push(piece, &mut |r| {
            match r.tag {
                TAG_VM => vm = Some(VmInfo::decode(r.payload)?),
                TAG_RAM => ram += 1,
                TAG_VCPU => vcpus += 1,
                _ => {}
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    dec.finish()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let vm = vm.context("no VM record")?;
    ensure!(
        vm.name == "counter" && vm.memory == 16 << 20 && vm.vcpus == 1,
        "the stream's VM is {} with {} bytes and {} vCPUs",
        vm.name,
        vm.memory,
        vm.vcpus
    );
    Ok(format!(
        "{}: {} bytes, {ram} RAM records, {vcpus} vCPU record(s)",
        path.display(),
        bytes.len()
    ))
}

/// Snapshot and restore of the pool counter (`configs/test-snapshot.toml`).
pub fn run() -> Result<()> {
    run_config(CONFIG)
}

/// The same with the counter pinned to its own pCPU.
pub fn run_pinned() -> Result<()> {
    run_config(CONFIG_PINNED)
}

/// What machine B waits for before its real restore. A pinned vCPU
/// takes its virtual timer from the hardware, and QEMU's timer never
/// fires when CNTVOFF wraps (the VM's virtual count ahead of this
/// machine's counter, which a restore early in B's uptime gives: the
/// hypervisor warns of it). A pool vCPU's waits are timed by the
/// scheduler, so the pool test restores at once.
fn restore_waits(config: &str) -> &'static str {
    if config == CONFIG_PINNED {
        "[bystander] COUNT 250 "
    } else {
        "bulkhead> "
    }
}

fn run_config(config: &str) -> Result<()> {
    let built = build::build(Path::new(config), Output::Quiet)?;
    let sums = expected_sums(TICKS, CHAN_WORDS);
    let good = store_file("counter");
    let _ = std::fs::remove_file(&good);

    // Machine A: snapshot at about 100, stop, restore.
    let log_a = machine(
        &built,
        &[
            ("[counter] COUNT 100 ", "snapshot counter\r"),
            ("snapshot 'counter' stored", "stop counter\r"),
            ("counter: stopped", "restore counter\r"),
            ("[counter] COUNTER done", "stop bystander\r"),
        ],
    )
    .context("machine A")?;
    let fail = |what: &str, e: anyhow::Error| {
        anyhow::anyhow!("{what}: {e:#}\nserial log:\n{}", qemu::indent(&log_a))
    };
    let before = counts_between(&log_a, None, Some("counter: paused for snapshot"))
        .map_err(|e| fail("machine A", e))?;
    check_run("A before the snapshot", &before, 1, &sums).map_err(|e| fail("machine A", e))?;
    let taken = before.last().map_or(0, |&(n, _)| n);
    ensure!(
        taken >= 100,
        "machine A paused at count {taken}, before 100"
    );
    let during = counts_between(
        &log_a,
        Some("counter: paused for snapshot"),
        Some("counter: runs again"),
    )
    .map_err(|e| fail("machine A", e))?;
    ensure!(
        during.is_empty(),
        "machine A printed {during:?} while paused"
    );
    let paused = log_a
        .split("counter: paused for snapshot")
        .nth(1)
        .and_then(|l| l.split("counter: runs again").next())
        .unwrap_or("");
    ensure!(
        paused.contains("[bystander] COUNT "),
        "the bystander VM did not run while counter was paused"
    );
    let after = counts_between(
        &log_a,
        Some("counter: runs again"),
        Some("counter: restored from snapshot 'counter'"),
    )
    .map_err(|e| fail("machine A", e))?;
    check_run("A after the snapshot", &after, taken + 1, &sums)
        .map_err(|e| fail("machine A", e))?;
    let restored = counts_between(
        &log_a,
        Some("counter: restored from snapshot 'counter'"),
        None,
    )
    .map_err(|e| fail("machine A", e))?;
    check_run("A restored", &restored, taken + 1, &sums).map_err(|e| fail("machine A", e))?;
    ensure!(
        restored.last().map(|&(n, _)| n) == Some(TICKS),
        "machine A's restored counter did not reach {TICKS}"
    );
    ensure!(
        log_a.matches("[counter] COUNTER boot").count() == 1,
        "machine A's counter booted more than once"
    );
    println!("  {}", decode_file(&good)?);

    // Two damaged copies for machine B to refuse.
    let bytes = std::fs::read(&good)?;
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    std::fs::write(store_file("counter-bad"), &flipped)?;
    std::fs::write(store_file("counter-cut"), &bytes[..bytes.len() / 2])?;

    // Machine B: its own counter, stopped; the damaged copies refused; the
    // real one restored.
    let log_b = machine(
        &built,
        &[
            ("[counter] COUNT 20 ", "stop counter\r"),
            ("counter: stopped", "restore counter counter-bad\r"),
            (
                "restore of 'counter-bad' failed",
                "restore counter counter-cut\r",
            ),
            ("restore of 'counter-cut' failed", "\r"),
            // Late enough that this machine's counter is past the
            // snapshot's virtual count: see `restore_waits`.
            (restore_waits(config), "restore counter\r"),
            ("[counter] COUNTER done", "stop bystander\r"),
        ],
    )
    .context("machine B")?;
    let fail = |what: &str, e: anyhow::Error| {
        anyhow::anyhow!("{what}: {e:#}\nserial log:\n{}", qemu::indent(&log_b))
    };
    for (name, why) in [("counter-bad", "checksum"), ("counter-cut", "END")] {
        let line = log_b
            .lines()
            .find(|l| l.contains(&format!("restore of '{name}' failed")))
            .with_context(|| format!("machine B: no refusal of {name}"))?;
        ensure!(
            line.contains(why) && line.contains("the VM stays stopped"),
            "machine B: the refusal of {name} does not say {why:?}: {line}"
        );
        println!("  machine B: {}", line.trim());
    }
    let stopped = counts_between(
        &log_b,
        Some("counter: stopped"),
        Some("counter: restored from snapshot 'counter'"),
    )
    .map_err(|e| fail("machine B", e))?;
    ensure!(
        stopped.is_empty(),
        "machine B's counter ran between the refused restores: {stopped:?}"
    );
    let restored = counts_between(
        &log_b,
        Some("counter: restored from snapshot 'counter'"),
        None,
    )
    .map_err(|e| fail("machine B", e))?;
    check_run("B restored", &restored, taken + 1, &sums).map_err(|e| fail("machine B", e))?;
    ensure!(
        restored.last().map(|&(n, _)| n) == Some(TICKS),
        "machine B's restored counter did not reach {TICKS}"
    );
    let line = log_a
        .lines()
        .find(|l| l.contains("snapshot 'counter' stored"))
        .unwrap_or("");
    println!("  machine A: {}", line.trim());
    for l in log_b.lines().filter(|l| l.contains("bytes from the store")) {
        println!("  machine B: {}", l.trim());
    }
    println!("  both restored copies went on from count {}", taken + 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_lines_parse() {
        assert_eq!(
            count_line("[counter] COUNT 12 sum=00000000000000ff"),
            Some((12, 255))
        );
        assert_eq!(count_line("[counter] COUNTER boot"), None);
        assert_eq!(count_line("COUNT 12 sum=ff"), None);
    }

    #[test]
    fn the_channel_region_changes_every_sum() {
        let plain = expected_sums(20, 0);
        let chan = expected_sums(20, CHAN_WORDS);
        assert!(plain.iter().zip(&chan).all(|(a, b)| a != b));
    }

    #[test]
    fn runs_must_be_consecutive_with_the_host_sums() {
        let sums = expected_sums(5, 0);
        let good: Vec<_> = (2..=4).map(|n| (n, sums[n as usize - 1])).collect();
        assert!(check_run("t", &good, 2, &sums).is_ok());
        let mut gap = good.clone();
        gap.remove(1);
        assert!(check_run("t", &gap, 2, &sums).is_err());
        let mut wrong = good.clone();
        wrong[2].1 ^= 1;
        assert!(check_run("t", &wrong, 2, &sums).is_err());
        assert!(check_run("t", &good, 1, &sums).is_err());
        // The sums change from tick to tick.
        assert!(sums.windows(2).all(|w| w[0] != w[1]));
    }
}
