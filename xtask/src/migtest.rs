//! The `migrate` integration test (docs/snapshot.md, "Migration"): two
//! QEMU machines whose NICs are joined directly on the host's loopback
//! (one `-netdev stream` listens on 127.0.0.1, the other connects to it).
//!
//! Round trip: the counter guest (guests/counter) moves from machine A to
//! machine B and back while it counts. Across both consoles its counts
//! run 1..=1000 with no gap and no repeat, each with the memory sum the
//! host computes, and every migration's downtime is read from the shell
//! and bounded.
//!
//! Target killed: machine B is killed mid-stream (its QEMU, as a power
//! loss would); the counter on A must go on by itself, again with no gap.

use crate::bench::Figure;
use crate::build::{self, Output};
use crate::qemu::{self, CAPTURED_CONSOLE, KILL};
use crate::snaptest::{check_run, counts_between, expected_sums, lines_between, CHAN_WORDS};
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIG_A: &str = "configs/test-migrate-a.toml";
const CONFIG_B: &str = "configs/test-migrate-b.toml";
const CONFIG_FILL: &str = "configs/test-migrate-fill.toml";
const PINNED_A: &str = "configs/test-migrate-pinned-a.toml";
const PINNED_B: &str = "configs/test-migrate-pinned-b.toml";
/// The guest's `counter.ticks` in those configs (one every 50 ms: 16
/// pages written each, about 1.3 MB/s, which the link outruns).
const TICKS: u64 = 300;
const TIMEOUT: Duration = Duration::from_secs(240);
/// Where each machine gives the counter up. The VM is paused from the
/// "paused for the last round" line to this one; a count printed between
/// the two is from before the pause (the console's lines from two pCPUs
/// are not in strict order), so the counts are split here.
const LEFT_A: &str = "counter: stopping (migrated to 10.0.2.16";
const LEFT_B: &str = "counter: stopping (migrated to 10.0.2.15";
/// Most milliseconds (virtual time) a migration of the 16 MiB counter VM
/// (about 2 MiB of it not zero, 16 pages written every 10 ms) may keep it
/// from running: its last round is a few dozen pages (docs/snapshot.md has
/// the figures; this leaves room for a loaded host).
const MAX_DOWNTIME_MS: u64 = 100;

/// How a pair of machines runs.
#[derive(Clone, Copy)]
struct Run<'a> {
    /// Under `-icount shift=0,sleep=on` (the bare-metal cases, whose
    /// figures are then instructions), or with a host thread per CPU (the
    /// Linux case, which would take minutes under `-icount`).
    icount: bool,
    /// Raw images both machines are given (shared storage).
    shared_disks: &'a [PathBuf],
    timeout: Duration,
    /// The host peer (10.0.2.254) is on the link too.
    host: bool,
    /// How long machine B runs before machine A starts.
    b_lead: Duration,
}

const BARE: Run = Run {
    icount: true,
    shared_disks: &[],
    timeout: TIMEOUT,
    host: false,
    b_lead: Duration::ZERO,
};

/// The pinned round trip's machines. A pinned vCPU's virtual timer is
/// the hardware's, and QEMU's never fires with CNTVOFF wrapped (the VM's
/// virtual count ahead of the machine's counter: the restore warns of it,
/// and the test fails on the warning). So the VM's virtual count must stay
/// behind both machines' counters: B starts first, and both run in host
/// time, whose counters keep the same pace. Under `-icount` each
/// machine's clock goes at the pace its own instructions set, and the two
/// drifted a second and more apart in one round trip.
const PINNED: Run = Run {
    b_lead: Duration::from_secs(1),
    icount: false,
    ..BARE
};

/// One machine's QEMU arguments: its NIC on its end of the loopback
/// [`link`], on `port`.
fn args(built: &build::Built, is_a: bool, port: u16, run: Run) -> Vec<String> {
    let mut args = qemu::machine_args(built.cpus, built.ram_mib, "");
    if run.icount {
        args.extend(["-icount", "shift=0,sleep=on"].map(String::from));
    }
    args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
    args.extend(qemu::shared_disk_args(run.shared_disks));
    let end = "server=off,reconnect-ms=100";
    args.extend([
        "-netdev".to_string(),
        format!(
            "stream,id={},{end},addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
            crate::netpeer::NETDEV_ID
        ),
        "-global".to_string(),
        "virtio-mmio.force-legacy=false".to_string(),
        "-device".to_string(),
        format!(
            "virtio-net-device,netdev={},mac=52:54:00:00:00:{}",
            crate::netpeer::NETDEV_ID,
            if is_a { "0a" } else { "0b" }
        ),
    ]);
    args
}

/// The link between the two machines, on 127.0.0.1: each QEMU connects
/// to its own port here (a `-netdev stream` client), and so, with `host`,
/// does the link to the test's host peer (`qemu::host_peer`: 10.0.2.254,
/// its echo server). Between them the link is a learning Ethernet switch,
/// as the network between two boards would be: each frame goes to the port
/// its destination was last seen on, or to every other port if that is
/// not known (or a broadcast). So after a migration the host peer's frames
/// reach the VM on its new machine only once the switch has seen the VM's
/// MAC there: its announcement, or its own traffic. The announcements
/// (RARP frames) the switch sees are kept, for the test to check.
///
/// Why not one QEMU the other's stream server: QEMU turns Nagle off on a
/// stream *client*'s socket but not on a server's (`net/stream.c`), so a
/// small frame from the server's machine, sent while an earlier one was
/// not yet acknowledged, waited for the host kernel's delayed ACK: about
/// 40 ms, the best part of every migration's downtime. Here every socket
/// has `TCP_NODELAY`. And when one machine dies, the others keep their
/// connections and what is sent to it goes nowhere, as on a network whose
/// other end went away (with a direct link, A's QEMU as the server crashed
/// with SIGSEGV in about one run of three when B was killed).
fn link(host: Option<u16>) -> Result<Link> {
    let bind = || TcpListener::bind("127.0.0.1:0").context("no free port on 127.0.0.1");
    let (la, lb) = (bind()?, bind()?);
    let ports = (la.local_addr()?.port(), lb.local_addr()?.port());
    let announced = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&announced);
    std::thread::spawn(move || {
        let (Ok((a, _)), Ok((b, _))) = (la.accept(), lb.accept()) else {
            return;
        };
        let mut ends = vec![a, b];
        if let Some(port) = host {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(h) => ends.push(h),
                Err(e) => {
                    // Both machines' guests then fail to reach the host.
                    eprintln!("migration link: cannot reach the host peer on port {port}: {e}");
                    return;
                }
            }
        }
        if let Err(e) = ends.iter().try_for_each(|s| s.set_nodelay(true)) {
            // Both machines then time out, with this said first.
            eprintln!("migration link: cannot set TCP_NODELAY: {e}");
            return;
        }
        let writers: Vec<Mutex<Option<TcpStream>>> = ends
            .iter()
            .map(|s| Mutex::new(s.try_clone().ok()))
            .collect();
        let sw = Arc::new(Relay {
            writers,
            table: Mutex::new(HashMap::new()),
            announced: seen,
        });
        for (port, from) in ends.into_iter().enumerate() {
            let sw = Arc::clone(&sw);
            std::thread::spawn(move || sw.carry(port, from));
        }
    });
    Ok(Link { ports, announced })
}

/// The two machines' ends of a [`link`], and what it saw announced.
struct Link {
    ports: (u16, u16),
    announced: Arc<Mutex<Vec<Announced>>>,
}

/// An announcement of `mac` that came in on port `port` of the link
/// (0: machine A, 1: machine B, 2: the host peer): the hypervisor's RARP
/// for a VM's MAC, or the guest's own gratuitous ARP (its sender and
/// target address the same), which it sends when its virtio-net device
/// asks it to (VIRTIO_NET_F_GUEST_ANNOUNCE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Announced {
    port: usize,
    mac: [u8; 6],
    gratuitous: bool,
}

/// Whether `f` is a gratuitous ARP: an Ethernet/IPv4 ARP whose sender
/// and target protocol addresses are the same.
fn gratuitous_arp(f: &[u8]) -> bool {
    f.get(12..14) == Some(&0x0806u16.to_be_bytes()[..])
        && f.get(14..20) == Some(&[0, 1, 8, 0, 6, 4][..])
        && f.get(28..32).is_some_and(|spa| f.get(38..42) == Some(spa))
}

/// The link's switch: a writer per port, and where each MAC was seen.
struct Relay {
    writers: Vec<Mutex<Option<TcpStream>>>,
    table: Mutex<HashMap<[u8; 6], usize>>,
    announced: Arc<Mutex<Vec<Announced>>>,
}

impl Relay {
    /// Switches what comes in on `port` until it ends. A port whose
    /// writes fail is written no more (a dead machine is not passed on to
    /// the live ones).
    fn carry(&self, port: usize, mut from: TcpStream) {
        let mut buf = vec![0u8; 64 << 10];
        let mut frames = crate::netpeer::FrameDecoder::default();
        let mut out: Vec<Vec<u8>> = self.writers.iter().map(|_| Vec::new()).collect();
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => frames.push(&buf[..n]),
            }
            loop {
                match frames.next_frame() {
                    Ok(Some(f)) => self.switch(port, &f, &mut out),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("migration link: port {port}: {e}");
                        return;
                    }
                }
            }
            for (to, bytes) in out.iter_mut().enumerate() {
                if bytes.is_empty() {
                    continue;
                }
                let mut w = lock(&self.writers[to]);
                if w.as_mut().is_some_and(|s| s.write_all(bytes).is_err()) {
                    *w = None;
                }
                bytes.clear();
            }
        }
    }

    /// Where frame `f` from `port` goes: its encoded copy is added to the
    /// output of each port it is for.
    fn switch(&self, port: usize, f: &[u8], out: &mut [Vec<u8>]) {
        let (Some(dst), Some(src)) = (f.first_chunk::<6>(), f.get(6..12)) else {
            return;
        };
        let src: [u8; 6] = src.try_into().expect("six bytes");
        let multicast = |m: &[u8; 6]| m[0] & 1 != 0;
        let to = {
            let mut table = lock(&self.table);
            if !multicast(&src) {
                table.insert(src, port);
            }
            if multicast(dst) {
                None
            } else {
                table.get(dst).copied()
            }
        };
        let gratuitous = gratuitous_arp(f);
        if gratuitous || f.get(12..14) == Some(&0x8035u16.to_be_bytes()[..]) {
            lock(&self.announced).push(Announced {
                port,
                mac: src,
                gratuitous,
            });
        }
        for (p, o) in out.iter_mut().enumerate() {
            if p != port && to.is_none_or(|t| t == p) {
                crate::netpeer::encode_frame(o, f);
            }
        }
    }
}

/// A mutex of the link's, whatever a panicking thread left in it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs both machines at once with their scripts; their logs, `Err` for
/// a machine that had to end on its own but did not.
fn pair(
    a: (&build::Built, &[(&str, &str)]),
    b: (&build::Built, &[(&str, &str)]),
    b_killed: bool,
    run: Run,
) -> Result<(String, String)> {
    pair_seen(a, b, b_killed, run).map(|(a, b, _)| (a, b))
}

/// What the link between a [`pair`] saw: the announcements, and with
/// [`Run::host`] the host peer's report.
struct Seen {
    announced: Vec<Announced>,
    host: Option<crate::netpeer::PeerReport>,
}

/// [`pair`], and what its link saw.
fn pair_seen(
    a: (&build::Built, &[(&str, &str)]),
    b: (&build::Built, &[(&str, &str)]),
    b_killed: bool,
    run: Run,
) -> Result<(String, String, Seen)> {
    let timeout = run.timeout;
    let peer = if run.host {
        Some(qemu::host_peer()?)
    } else {
        None
    };
    let link = link(peer.as_ref().map(|p| p.port()))?;
    let (port_a, port_b) = link.ports;
    let (args_a, args_b) = (args(a.0, true, port_a, run), args(b.0, false, port_b, run));
    let (out_a, out_b) = std::thread::scope(|s| {
        let tb = s.spawn(|| qemu::run_scripted(&args_b, timeout + run.b_lead, b.1));
        std::thread::sleep(run.b_lead);
        let ta = s.spawn(|| qemu::run_scripted(&args_a, timeout, a.1));
        (ta.join(), tb.join())
    });
    let out_a = out_a.map_err(|_| anyhow::anyhow!("machine A's thread panicked"))??;
    let out_b = out_b.map_err(|_| anyhow::anyhow!("machine B's thread panicked"))??;
    // Both serial logs stay on disk, passed or not, as the single-machine
    // cases' do: target/itest/logs/<image>.log.
    let logs = crate::target_dir().join("itest/logs");
    std::fs::create_dir_all(&logs)?;
    for (built, out) in [(a.0, &out_a), (b.0, &out_b)] {
        let stem = built
            .image
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        std::fs::write(logs.join(format!("{stem}.log")), &out.log)?;
    }
    let both = || {
        format!(
            "machine A:\n{}\nmachine B:\n{}",
            qemu::indent(&out_a.log),
            qemu::indent(&out_b.log)
        )
    };
    if !out_a.succeeded() {
        bail!(
            "machine A {}; serial logs:\n{}",
            out_a.ending(timeout),
            both()
        );
    }
    if !b_killed && !out_b.succeeded() {
        bail!(
            "machine B {}; serial logs:\n{}",
            out_b.ending(timeout),
            both()
        );
    }
    if b_killed && out_b.status.is_some_and(|s| s.success()) {
        bail!(
            "machine B was to be killed but ended on its own; serial logs:\n{}",
            both()
        );
    }
    for (name, log) in [("A", &out_a.log), ("B", &out_b.log)] {
        for bad in crate::itest::FORBID {
            if let Some(l) = log.lines().find(|l| l.contains(bad)) {
                bail!(
                    "{bad:?} in machine {name}'s log: {l}\nserial logs:\n{}",
                    both()
                );
            }
        }
    }
    let seen = Seen {
        announced: lock(&link.announced).clone(),
        host: peer.map(|p| p.stop()),
    };
    Ok((out_a.log, out_b.log, seen))
}

/// VM `vm`'s downtime in its migration to `to`: the `N` of "..., N ms
/// from pause to the target's go" on the source's line, plus the target's
/// "resumed M ms after its OK" (the target's log `dst`, M rounded up).
/// The OK's trip is in both, so the sum is an upper bound.
fn downtime(log: &str, dst: &str, vm: &str, to: &str) -> Result<u64> {
    Ok(go_ms(log, vm, to)? + resumed_ms(dst, vm)?)
}

/// The "M" of the target's "VM: migrated in: ..., resumed M ms after its
/// OK", rounded up to whole ms.
fn resumed_ms(log: &str, vm: &str) -> Result<u64> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{vm}: migrated in:")))
        .with_context(|| format!("no \"{vm}: migrated in\" line on the target"))?;
    let ms: f64 = line
        .split(", resumed ")
        .nth(1)
        .and_then(|r| r.split(" ms after its OK").next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no resume time in {line:?}"))?;
    println!("  {}", line.trim());
    Ok(ms.ceil() as u64)
}

/// The `N` of "..., N ms from pause to the target's go" on `log`'s line
/// that says VM `vm` migrated to `to`.
fn go_ms(log: &str, vm: &str, to: &str) -> Result<u64> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{vm}: migrated to {to}:")))
        .with_context(|| format!("no \"migrated to {to}\" line"))?;
    let ms = line
        .split(" ms from pause")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no downtime in {line:?}"))?;
    // Pre-copy: a round while the VM ran, then the last one.
    ensure!(
        line.contains(" pages ")
            && line
                .split(" pages ")
                .nth(1)
                .is_some_and(|r| r.split('(').next().is_some_and(|r| r.contains(" + "))),
        "not pre-copied in rounds: {line}"
    );
    println!("  {}", line.trim());
    Ok(ms)
}

/// Both machines ended as a round trip of VM `vm` leaves them (A powered
/// it off, B let it go, each bystander stopped from the shell), and both
/// migrations' downtimes were at most `max_ms`.
fn round_trip_ended(
    log_a: &str,
    log_b: &str,
    vm: &str,
    max_ms: u64,
    logs: &dyn Fn() -> String,
) -> Result<()> {
    for (log, name, end) in [
        (log_a, "A", format!("{vm}: powered off")),
        (log_b, "B", format!("{vm}: migrated to another machine")),
    ] {
        let end = format!("{end}, bystander: stopped from the shell");
        ensure!(
            log.contains(&format!("system ended: clean ({end})")),
            "machine {name} did not end with ({end})\n{}",
            logs()
        );
    }
    let with_logs = |e: anyhow::Error| anyhow::anyhow!("{e:#}\nserial logs:\n{}", logs());
    let out = downtime(log_a, log_b, vm, "10.0.2.16").map_err(with_logs)?;
    let home = downtime(log_b, log_a, vm, "10.0.2.15").map_err(with_logs)?;
    ensure!(
        out <= max_ms && home <= max_ms,
        "downtime {out} ms and {home} ms: more than {max_ms} ms"
    );
    Ok(())
}

fn round_trip(a: &build::Built, b: &build::Built, sums: &[u64], run: Run) -> Result<()> {
    let (log_a, log_b) = pair(
        (
            a,
            &[
                ("[counter] COUNT 60 ", "migrate counter 10.0.2.16\r"),
                ("counter: migrated to 10.0.2.16", "incoming counter\r"),
                ("[counter] COUNTER done", "stop bystander\r"),
            ],
        ),
        (
            b,
            &[
                ("[counter] COUNT 5 ", "stop counter\r"),
                ("counter: stopped", "incoming counter\r"),
                ("counter: migrated in", ""),
                ("[counter] COUNT 150 ", "migrate counter 10.0.2.15\r"),
                ("counter: migrated to 10.0.2.15", "stop bystander\r"),
            ],
        ),
        false,
        run,
    )?;
    let logs = || {
        format!(
            "machine A:\n{}\nmachine B:\n{}",
            qemu::indent(&log_a),
            qemu::indent(&log_b)
        )
    };
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e:#}\nserial logs:\n{}", logs());
    if let Some(l) = [&log_a, &log_b]
        .iter()
        .find_map(|log| log.lines().find(|l| l.contains("CNTVOFF wraps")))
    {
        bail!(
            "a machine's counter was behind the VM's virtual count: {l}\n{}",
            logs()
        );
    }
    // Each source reported its rounds as they went.
    for (name, log) in [("A", &log_a), ("B", &log_b)] {
        ensure!(
            log.lines()
                .any(|l| l.contains("counter: migration round 1: ") && l.contains(" pages/s); ")),
            "machine {name} reported no pre-copy round as it went\n{}",
            logs()
        );
    }
    // A: 1..=k, then nothing until it comes back.
    let first = counts_between(&log_a, None, Some(LEFT_A)).map_err(fail)?;
    check_run("A before leaving", &first, 1, sums).map_err(fail)?;
    let k = first.last().map_or(0, |&(n, _)| n);
    let away = counts_between(&log_a, Some(LEFT_A), Some("counter: migrated in")).map_err(fail)?;
    ensure!(
        away.is_empty(),
        "machine A counted {away:?} while its counter was away\n{}",
        logs()
    );
    // B: k+1..=m, then nothing.
    let on_b = counts_between(&log_b, Some("counter: migrated in"), Some(LEFT_B)).map_err(fail)?;
    check_run("B", &on_b, k + 1, sums).map_err(fail)?;
    let m = on_b.last().map_or(k, |&(n, _)| n);
    ensure!(
        m >= 150,
        "machine B handed the counter back at {m}, before 150"
    );
    let after = counts_between(&log_b, Some(LEFT_B), None).map_err(fail)?;
    ensure!(
        after.is_empty(),
        "machine B counted {after:?} after it gave the counter back\n{}",
        logs()
    );
    // A again: m+1..=TICKS.
    let back = counts_between(&log_a, Some("counter: migrated in"), None).map_err(fail)?;
    check_run("A after coming back", &back, m + 1, sums).map_err(fail)?;
    ensure!(
        back.last().map(|&(n, _)| n) == Some(TICKS),
        "the counter did not reach {TICKS} back on machine A\n{}",
        logs()
    );
    round_trip_ended(&log_a, &log_b, "counter", MAX_DOWNTIME_MS, &logs)?;
    println!(
        "  counts 1..={k} on A, {}..={m} on B, {}..={TICKS} on A again",
        k + 1,
        m + 1
    );
    Ok(())
}

fn target_killed(fill: &build::Built, b: &build::Built, sums: &[u64]) -> Result<()> {
    let (log_a, log_b) = pair(
        (
            fill,
            &[
                ("[counter] COUNT 30 ", "migrate counter 10.0.2.16\r"),
                ("migration to 10.0.2.16 failed", ""),
                ("[counter] COUNTER done", "stop bystander\r"),
            ],
        ),
        (
            b,
            &[
                ("[counter] COUNT 5 ", "stop counter\r"),
                ("counter: stopped", "incoming counter\r"),
                ("counter: receiving the migration", KILL),
            ],
        ),
        true,
        BARE,
    )?;
    let logs = || {
        format!(
            "machine A:\n{}\nmachine B (killed):\n{}",
            qemu::indent(&log_a),
            qemu::indent(&log_b)
        )
    };
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e:#}\nserial logs:\n{}", logs());
    ensure!(
        log_a.contains(&format!(
            "[counter] COUNTER boot: 2048 KiB region, {} bytes of channel memory, 12 MiB filled",
            CHAN_WORDS * 8
        )),
        "machine A's counter did not fill its 12 MiB\n{}",
        logs()
    );
    let line = log_a
        .lines()
        .find(|l| l.contains("migration to 10.0.2.16 failed"))
        .context("no failure line")
        .map_err(fail)?;
    ensure!(
        line.contains("the VM runs on here"),
        "the failure does not say the VM runs on: {line}"
    );
    println!("  machine A: {}", line.trim());
    ensure!(
        !log_b.contains("counter: migrated in"),
        "machine B ran the counter before it was killed\n{}",
        logs()
    );
    let all = counts_between(&log_a, None, None).map_err(fail)?;
    check_run("A", &all, 1, sums).map_err(fail)?;
    ensure!(
        all.last().map(|&(n, _)| n) == Some(TICKS),
        "machine A's counter did not reach {TICKS}\n{}",
        logs()
    );
    ensure!(
        log_a.contains(
            "system ended: clean (counter: powered off, bystander: stopped from the shell)"
        ),
        "machine A did not end cleanly\n{}",
        logs()
    );
    Ok(())
}

const LINUX_A: &str = "configs/test-migrate-linux-a.toml";
const IDLE_A: &str = "configs/bench-migrate-idle-a.toml";
const IDLE_B: &str = "configs/bench-migrate-idle-b.toml";
const BUSY_A: &str = "configs/bench-migrate-busy-a.toml";
const BUSY_B: &str = "configs/bench-migrate-busy-b.toml";
/// The end of a target's "migrated in" line: a script that kills B waits
/// for it, not for the line's start, or the kill cuts the line short.
const RESUMED: &str = " ms after its OK";
/// What the memory-busy VM prints after each pass over its 64 MiB.
const BUSY_PASS: &str = "[busy] MIGTEST busy pass ";
const LINUX_B: &str = "configs/test-migrate-linux-b.toml";
/// `n` of configs/linux/init-migrate.sh.
const LINUX_COUNTS: u64 = 3000;
/// The Linux case boots two Debian kernels and moves the VM twice, with a
/// host thread per CPU of each machine on this host's cores.
const LINUX_TIMEOUT: Duration = Duration::from_secs(420);
/// Most milliseconds a migration of the Linux VM may keep it from running.
/// Host time here (no `-icount`), on a host whose two cores run both
/// machines: docs/snapshot.md has the figures measured.
const LINUX_MAX_DOWNTIME_MS: u64 = 500;

/// The counts in the Linux VM's `MIGCOUNT n end` lines among `lines`. The
/// console prints a line the guest has not finished when it pauses (a
/// vCPU switched out mid-line), and another VM's or the hypervisor's line
/// may then come between its two halves, each half tagged `[lin]`: so the
/// VM's text is put together from its pieces first, and a count is only
/// one that ends in ` end`.
fn linux_counts(lines: &[&str]) -> Vec<u64> {
    let text: String = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[lin] "))
        .collect();
    text.split("MIGCOUNT ")
        .filter_map(|c| c.split_once(" end"))
        .filter_map(|(n, _)| n.parse().ok())
        .collect()
}

/// A Debian Linux VM with an ext4 disk on an image both machines are
/// given: A -> B -> A while it counts on its console and into a file.
fn linux_round_trip() -> Result<()> {
    let a = build::build(Path::new(LINUX_A), Output::Quiet)?;
    let b = build::build(Path::new(LINUX_B), Output::Quiet)?;
    // The image of A's config is the shared disk; B's own is not used.
    build::blank_disks(&a)?;
    let run = Run {
        icount: false,
        shared_disks: &a.disks,
        timeout: LINUX_TIMEOUT,
        host: true,
        b_lead: Duration::ZERO,
    };
    let (log_a, log_b, seen) = pair_seen(
        (
            &a,
            // Console input starts with the Linux VM: two Ctrl-] (past the
            // bystander) reach the shell.
            &[
                ("[lin] MIGCOUNT 300", "\x1d\x1dmigrate lin 10.0.2.16\r"),
                ("lin: migrated to 10.0.2.16", "incoming lin\r"),
                ("[lin] MIGTEST file holds", ""),
                ("lin: stopped", "stop bystander\r"),
            ],
        ),
        (
            &b,
            &[
                ("MIGTEST target: waiting", "\x1d\x1dstop lin\r"),
                ("lin: stopped", "incoming lin\r"),
                ("lin: migrated in", ""),
                ("[lin] MIGCOUNT 900", "migrate lin 10.0.2.15\r"),
                ("lin: migrated to 10.0.2.15", "stop bystander\r"),
            ],
        ),
        false,
        run,
    )?;
    let logs = || {
        format!(
            "machine A:\n{}\nmachine B:\n{}",
            qemu::indent(&log_a),
            qemu::indent(&log_b)
        )
    };
    let fail = |e: anyhow::Error| anyhow::anyhow!("{e:#}\nserial logs:\n{}", logs());
    const IN: &str = "lin: migrated in";
    const OFF_A: &str = "lin: stopping (migrated to 10.0.2.16";
    const OFF_B: &str = "lin: stopping (migrated to 10.0.2.15";
    let first = linux_counts(&lines_between(&log_a, None, Some(OFF_A)).map_err(fail)?);
    let away = linux_counts(&lines_between(&log_a, Some(OFF_A), Some(IN)).map_err(fail)?);
    let on_b = linux_counts(&lines_between(&log_b, Some(IN), Some(OFF_B)).map_err(fail)?);
    let after = linux_counts(&lines_between(&log_b, Some(OFF_B), None).map_err(fail)?);
    let back = linux_counts(&lines_between(&log_a, Some(IN), None).map_err(fail)?);
    ensure!(
        away.is_empty() && after.is_empty(),
        "counts where the VM was not: A while away {away:?}, B after it left {after:?}\n{}",
        logs()
    );
    let all: Vec<u64> = first.iter().chain(&on_b).chain(&back).copied().collect();
    if let Some(k) = (0..all.len()).find(|&k| all[k] != k as u64 + 1) {
        bail!(
            "console count {} where {} was due (a gap or a repeat; {} on A, {} on B, {} on A again)\n{}",
            all[k],
            k + 1,
            first.len(),
            on_b.len(),
            back.len(),
            logs()
        );
    }
    ensure!(
        all.len() as u64 == LINUX_COUNTS && !on_b.is_empty() && !back.is_empty(),
        "{} counts ({} on A, {} on B, {} on A again), not 1..={LINUX_COUNTS} across all three\n{}",
        all.len(),
        first.len(),
        on_b.len(),
        back.len(),
        logs()
    );
    let file = format!("[lin] MIGTEST file holds 1..{LINUX_COUNTS} ({LINUX_COUNTS} lines)");
    ensure!(
        log_a.contains(&file),
        "the VM's file on the shared disk did not check out back on A ({file:?})\n{}",
        logs()
    );
    let session = format!(
        "[lin] MIGTEST session: {} lines echoed in order",
        LINUX_COUNTS / 10
    );
    ensure!(
        log_a.contains(&session),
        "the VM's TCP session with the host peer did not check out back on A ({session:?})\n{}",
        logs()
    );
    linux_session_moved(&seen).map_err(fail)?;
    round_trip_ended(&log_a, &log_b, "lin", LINUX_MAX_DOWNTIME_MS, &logs)?;
    println!(
        "  counts 1..={} on A, {}..={} on B, {}..={LINUX_COUNTS} on A again; the file checked out; one TCP session to the host across both moves, the VM announced 5 times on B then 5 on A, the guest announced itself on B then on A",
        first.len(),
        first.len() + 1,
        first.len() + on_b.len(),
        first.len() + on_b.len() + 1
    );
    Ok(())
}

/// How many times a VM that arrives announces its MAC (the hypervisor's
/// `net::ANNOUNCE_ROUNDS`).
const ANNOUNCE_ROUNDS: usize = 5;

/// The Linux VM's NIC in configs/test-migrate-linux-*.toml.
const LINUX_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0x01, 0x1e];

/// Runs of the Linux VM's announcements of one kind from one port of
/// the link: (port, how many), in the order they came.
fn announce_runs(seen: &Seen, gratuitous: bool) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for a in &seen.announced {
        if a.mac != LINUX_MAC || a.gratuitous != gratuitous {
            continue;
        }
        match runs.last_mut() {
            Some((q, n)) if *q == a.port => *n += 1,
            _ => runs.push((a.port, 1)),
        }
    }
    runs
}

/// What the link saw of the Linux VM's round trip: its MAC announced
/// [`ANNOUNCE_ROUNDS`] times by machine B (as it arrived there), then as
/// often by A (back), and nothing else; the guest's own gratuitous ARPs
/// from B then from A, none before it first moved; and the host peer
/// served one TCP session, not a new one after each move, and echoed
/// every line.
fn linux_session_moved(seen: &Seen) -> Result<()> {
    let runs = announce_runs(seen, false);
    ensure!(
        runs == [(1, ANNOUNCE_ROUNDS), (0, ANNOUNCE_ROUNDS)],
        "the VM's MAC was announced from ports {runs:?} of the link ((port, times)), not {ANNOUNCE_ROUNDS} times from B (1) then {ANNOUNCE_ROUNDS} times from A (0); all announcements: {:?}",
        seen.announced
    );
    let garps = announce_runs(seen, true);
    ensure!(
        garps.len() == 2 && garps[0].0 == 1 && garps[1].0 == 0,
        "the guest's gratuitous ARPs came from ports {garps:?} of the link ((port, times)), not from B (1) then from A (0): its NIC did not ask it to announce itself after each move; all announcements: {:?}",
        seen.announced
    );
    let host = seen.host.as_ref().context("no host peer on the link")?;
    ensure!(
        host.tcp_sessions == 1 && host.lines_echoed == LINUX_COUNTS / 10,
        "the host peer served {} TCP session(s) and echoed {} line(s), not 1 and {}:\n{host}",
        host.tcp_sessions,
        host.lines_echoed,
        LINUX_COUNTS / 10
    );
    Ok(())
}

/// The Linux case (`migrate_linux`).
pub fn run_linux() -> Result<()> {
    println!("  a Debian Linux VM with a shared ext4 disk, A -> B -> A:");
    linux_round_trip()
}

/// The figures of a "VM: migrated to ADDR: ..." line and the target's
/// `resumed` ms (see [`downtime`]), named `<prefix>_downtime_ms` (pause to
/// go on the source, plus `resumed`), `_resume_ms`, `_total_ms`, `_pages`
/// (sent, all rounds), `_vm_pages` (the VM's RAM) and `_rounds`.
fn migration_figures(line: &str, resumed: u64, prefix: &str, unit_ms: &str) -> Result<Vec<Figure>> {
    println!("  {}", line.trim());
    // The first number N that stands as "{before}N{after}".
    let grab = |before: &str, after: &str| -> Result<u64> {
        line.match_indices(after)
            .find_map(|(at, _)| line[..at].rsplit(before).next()?.trim().parse().ok())
            .with_context(|| format!("no \"{before}N{after}\" in {line:?}"))
    };
    let rounds = line
        .split(" pages ")
        .nth(1)
        .and_then(|r| r.split(" (").next())
        .map(|r| r.split(" + ").count() as u64)
        .with_context(|| format!("no rounds in {line:?}"))?;
    let fig = |name: &str, unit: &str, v: u64| Figure {
        name: format!("{prefix}_{name}"),
        unit: unit.to_owned(),
        text: v.to_string(),
        value: v as f64,
    };
    Ok(vec![
        fig(
            "downtime_ms",
            unit_ms,
            grab(", ", " ms from pause")? + resumed,
        ),
        fig("resume_ms", unit_ms, resumed),
        fig("total_ms", unit_ms, grab(", ", " ms in all")?),
        fig("pages", "pages", grab("(", " in all of")?),
        fig("vm_pages", "pages", grab(" in all of ", ", ")?),
        fig("rounds", "rounds", rounds),
    ])
}

/// The figures `migrate_linux_<vm>_*` of moving Linux VM `vm` A -> B
/// (configs `a`, `b`) once it prints "MIGTEST <vm>"; with `_slowed_pct`,
/// the cap it was slowed to for the migration (100: never slowed). With
/// `then`, B runs on until the VM prints it there.
fn linux_vm_moved(a: &str, b: &str, vm: &str, run: Run, then: Option<&str>) -> Result<Vec<Figure>> {
    let a = build::build(Path::new(a), Output::Quiet)?;
    let b = build::build(Path::new(b), Output::Quiet)?;
    let ready = format!("[{vm}] MIGTEST {vm}");
    let go = format!("\x1d\x1dmigrate {vm} 10.0.2.16\r");
    let moved = format!("{vm}: migrated to 10.0.2.16");
    let stop = format!("\x1d\x1dstop {vm}\r");
    let stopped = format!("{vm}: stopped");
    let incoming = format!("incoming {vm}\r");
    let came = format!("{vm}: migrated in");
    let (log_a, log_b) = pair(
        (&a, &[(&ready, &go), (&moved, "stop bystander\r")]),
        (
            &b,
            &[
                ("MIGTEST target: waiting", &stop),
                (&stopped, &incoming),
                // Its figures are A's; B need not run on.
                (&came, ""),
                // The whole line, with its resume time, before the kill.
                (then.unwrap_or(RESUMED), KILL),
            ],
        ),
        true,
        run,
    )?;
    let line = migrated_line(&log_a, vm, "10.0.2.16")?;
    let resumed = resumed_ms(&log_b, vm)?;
    let mut figs = migration_figures(line, resumed, &format!("migrate_linux_{vm}"), "ms_host")?;
    let slowed = line
        .split(", slowed to ")
        .nth(1)
        .and_then(|r| r.split('%').next()?.parse().ok())
        .unwrap_or(100u64);
    figs.push(Figure {
        name: format!("migrate_linux_{vm}_slowed_pct"),
        unit: "%".into(),
        text: slowed.to_string(),
        value: slowed as f64,
    });
    Ok(figs)
}

/// The "migrated to ADDR" line of VM `vm` in `log`.
fn migrated_line<'a>(log: &'a str, vm: &str, to: &str) -> Result<&'a str> {
    log.lines()
        .find(|l| l.contains(&format!("{vm}: migrated to {to}:")))
        .with_context(|| format!("no \"{vm}: migrated to {to}\" line"))
}

/// One run of `cargo xtask bench`'s migration figures, each VM moved
/// A -> B once: the counter VM under `-icount shift=0,sleep=on` (virtual
/// ms); then, in host ms with one host thread per CPU, an idle 512 MiB
/// Linux VM (configs/bench-migrate-idle-*.toml), unless `quick` a
/// memory-busy one (configs/bench-migrate-busy-*.toml), and the Linux VM
/// of the `migrate_linux` test, which counts and syncs its disk as it goes.
pub fn bench_run(quick: bool) -> Result<Vec<Figure>> {
    let a = build::build(Path::new(CONFIG_A), Output::Quiet)?;
    let b = build::build(Path::new(CONFIG_B), Output::Quiet)?;
    let (log_a, log_b) = pair(
        (
            &a,
            &[
                ("[counter] COUNT 60 ", "migrate counter 10.0.2.16\r"),
                ("counter: migrated to 10.0.2.16", "stop bystander\r"),
            ],
        ),
        (
            &b,
            &[
                ("[counter] COUNT 5 ", "stop counter\r"),
                ("counter: stopped", "incoming counter\r"),
                ("counter: migrated in", ""),
                ("[counter] COUNTER done", "stop bystander\r"),
            ],
        ),
        false,
        BARE,
    )?;
    let mut out = migration_figures(
        migrated_line(&log_a, "counter", "10.0.2.16")?,
        resumed_ms(&log_b, "counter")?,
        "migrate",
        "ms",
    )?;
    let run = Run {
        icount: false,
        shared_disks: &[],
        timeout: LINUX_TIMEOUT,
        host: false,
        b_lead: Duration::ZERO,
    };
    out.extend(linux_vm_moved(IDLE_A, IDLE_B, "idle", run, None)?);
    if !quick {
        // The longest of them (a minute or two): not for --quick, which
        // checks the harness.
        out.extend(linux_vm_moved(
            BUSY_A,
            BUSY_B,
            "busy",
            run,
            Some(BUSY_PASS),
        )?);
    }
    let a = build::build(Path::new(LINUX_A), Output::Quiet)?;
    let b = build::build(Path::new(LINUX_B), Output::Quiet)?;
    build::blank_disks(&a)?;
    // Its guest talks to the host peer as it counts.
    let run = Run {
        shared_disks: &a.disks,
        host: true,
        ..run
    };
    let (log_a, log_b) = pair(
        (
            &a,
            &[
                ("[lin] MIGCOUNT 300", "\x1d\x1dmigrate lin 10.0.2.16\r"),
                ("lin: migrated to 10.0.2.16", "stop bystander\r"),
            ],
        ),
        (
            &b,
            &[
                ("MIGTEST target: waiting", "\x1d\x1dstop lin\r"),
                ("lin: stopped", "incoming lin\r"),
                ("lin: migrated in", ""),
                (RESUMED, KILL),
            ],
        ),
        true,
        run,
    )?;
    out.extend(migration_figures(
        migrated_line(&log_a, "lin", "10.0.2.16")?,
        resumed_ms(&log_b, "lin")?,
        "migrate_linux_disk",
        "ms_host",
    )?);
    Ok(out)
}

/// Test `migrate_busy`: a Linux VM that rewrites 64 MiB of its memory
/// without end (configs/bench-migrate-busy-*.toml) dirties it faster than
/// the link carries it; the migration slows its vCPU down until the
/// rounds shrink, it arrives, carries on writing on B, and its downtime
/// stays that of a small last round.
pub fn run_busy() -> Result<()> {
    let run = Run {
        icount: false,
        shared_disks: &[],
        timeout: LINUX_TIMEOUT,
        host: false,
        b_lead: Duration::ZERO,
    };
    let figs = linux_vm_moved(BUSY_A, BUSY_B, "busy", run, Some(BUSY_PASS))?;
    let get = |name: &str| {
        figs.iter()
            .find(|f| f.name == format!("migrate_linux_busy_{name}"))
            .map(|f| f.value)
            .with_context(|| format!("no figure {name}"))
    };
    let (slowed, down) = (get("slowed_pct")?, get("downtime_ms")?);
    anyhow::ensure!(
        slowed < 100.0,
        "the busy VM was never slowed down: its rounds shrank on their own, so this test shows nothing"
    );
    anyhow::ensure!(
        down <= LINUX_MAX_DOWNTIME_MS as f64,
        "downtime {down} ms, over {LINUX_MAX_DOWNTIME_MS} ms"
    );
    println!(
        "  busy VM slowed to {slowed}% of a pCPU, {} rounds, {down} ms downtime",
        get("rounds")?
    );
    Ok(())
}

pub fn run() -> Result<()> {
    let a = build::build(Path::new(CONFIG_A), Output::Quiet)?;
    let b = build::build(Path::new(CONFIG_B), Output::Quiet)?;
    let fill = build::build(Path::new(CONFIG_FILL), Output::Quiet)?;
    let sums = expected_sums(TICKS, CHAN_WORDS);
    println!("  A -> B -> A while counting:");
    round_trip(&a, &b, &sums, BARE)?;
    println!("  the target killed mid-stream:");
    target_killed(&fill, &b, &sums)?;
    Ok(())
}

/// The round trip of [`run`] with the counter and the bystander each
/// pinned to a pCPU of its own (configs/test-migrate-pinned-*.toml).
pub fn run_pinned() -> Result<()> {
    let a = build::build(Path::new(PINNED_A), Output::Quiet)?;
    let b = build::build(Path::new(PINNED_B), Output::Quiet)?;
    let sums = expected_sums(TICKS, CHAN_WORDS);
    println!("  A -> B -> A while counting, pinned:");
    round_trip(&a, &b, &sums, PINNED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_learns_where_a_mac_is_and_sees_it_move() {
        let relay = Relay {
            writers: (0..3).map(|_| Mutex::new(None)).collect(),
            table: Mutex::new(HashMap::new()),
            announced: Arc::new(Mutex::new(Vec::new())),
        };
        let (vm, host) = (LINUX_MAC, [2, 0, 0, 0, 0, 0xfe]);
        let frame = |dst: [u8; 6], src: [u8; 6], kind: u16| {
            let mut f = vec![0u8; 60];
            f[..6].copy_from_slice(&dst);
            f[6..12].copy_from_slice(&src);
            f[12..14].copy_from_slice(&kind.to_be_bytes());
            f
        };
        // The ports each frame from `port` reached.
        let send = |port: usize, f: &[u8]| -> Vec<usize> {
            let mut out = vec![Vec::new(); 3];
            relay.switch(port, f, &mut out);
            (0..3).filter(|&p| !out[p].is_empty()).collect()
        };
        // The VM on A broadcasts (ARP): everyone; the host answers it on A.
        assert_eq!(send(0, &frame([0xff; 6], vm, 0x0806)), [1, 2]);
        assert_eq!(send(2, &frame(vm, host, 0x0800)), [0]);
        // It moved to B and says so: the host's next frame goes to B.
        assert_eq!(send(1, &frame([0xff; 6], vm, 0x8035)), [0, 2]);
        assert_eq!(send(2, &frame(vm, host, 0x0800)), [1]);
        // An unknown destination floods; nothing goes back where it came from.
        assert_eq!(send(1, &frame([2, 0, 0, 0, 0, 1], vm, 0x0800)), [0, 2]);
        assert_eq!(send(1, &frame(vm, vm, 0x0800)), Vec::<usize>::new());
        // Runts are dropped.
        assert_eq!(send(0, &[0u8; 11]), Vec::<usize>::new());
        // The guest's own gratuitous ARP (10.0.2.15 for itself), and an
        // ordinary request for another address, which is none.
        let mut arp = frame([0xff; 6], vm, 0x0806);
        arp[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp[28..32].copy_from_slice(&[10, 0, 2, 15]);
        arp[38..42].copy_from_slice(&[10, 0, 2, 15]);
        assert_eq!(send(1, &arp), [0, 2]);
        arp[41] = 2;
        send(1, &arp);
        assert_eq!(
            *lock(&relay.announced),
            [
                Announced {
                    port: 1,
                    mac: vm,
                    gratuitous: false
                },
                Announced {
                    port: 1,
                    mac: vm,
                    gratuitous: true
                }
            ]
        );
        // What goes out is framed as QEMU's stream expects.
        let mut out = vec![Vec::new(); 3];
        relay.switch(2, &frame(vm, host, 0x0800), &mut out);
        assert_eq!(&out[1][..4], &60u32.to_be_bytes());
        assert_eq!(out[1].len(), 64);
    }

    #[test]
    fn linux_counts_are_put_together_from_their_pieces() {
        let log = "[lin] MIGCOUNT 1 end\n[lin] MIG\n[bystander] COUNT 3 sum=1\n[lin] COUNT 2 end\nbulkhead cpu0 INFO  x\n[lin] MIGCOUNT 3 en\n[lin] d\n[lin] MIGCOUNT 4\n";
        let lines: Vec<&str> = log.lines().collect();
        // 4 has no end yet: not a count.
        assert_eq!(linux_counts(&lines), [1, 2, 3]);
    }

    #[test]
    fn bench_figures_are_read_from_the_shell_line() {
        let line = "counter: migrated to 10.0.2.16: 2549937 bytes, pages 521 + 86 + 13 (620 in all of 4096, 3575 zero pages skipped), 99 write faults, dirtied 312 pages/s while it ran, 290 ms in all, 7 ms from pause to the target's go (8 blocks merged back)";
        let f = migration_figures(line, 2, "migrate", "ms").unwrap();
        let got: Vec<(&str, &str, f64)> = f
            .iter()
            .map(|f| (f.name.as_str(), f.unit.as_str(), f.value))
            .collect();
        assert_eq!(
            got,
            [
                ("migrate_downtime_ms", "ms", 9.0),
                ("migrate_resume_ms", "ms", 2.0),
                ("migrate_total_ms", "ms", 290.0),
                ("migrate_pages", "pages", 620.0),
                ("migrate_vm_pages", "pages", 4096.0),
                ("migrate_rounds", "rounds", 3.0),
            ]
        );
        assert!(migration_figures("counter: migrated to x: nothing", 0, "m", "ms").is_err());
    }

    #[test]
    fn downtime_is_read_from_the_shell_line() {
        let log = "x\ncounter: migrated to 10.0.2.16: 2549937 bytes, pages 521 + 86 + 13 (620 in all of 4096, 3575 zero pages skipped), 99 write faults, dirtied 312 pages/s while it ran, 290 ms in all, 7 ms from pause to the target's go (8 blocks merged back)\n";
        let dst = "counter: migrated in: 620 RAM pages, 2549937 bytes in 280 ms, resumed 1.2 ms after its OK\n";
        // 7 ms to the go, the target's 1.2 rounded up.
        assert_eq!(downtime(log, dst, "counter", "10.0.2.16").unwrap(), 9);
        let stop_and_copy = log.replace("pages 521 + 86 + 13", "pages 620");
        assert!(downtime(&stop_and_copy, dst, "counter", "10.0.2.16").is_err());
        assert!(downtime(log, dst, "counter", "10.0.2.15").is_err());
        assert!(downtime(log, dst, "lin", "10.0.2.16").is_err());
        // A target that says nothing of its resume.
        assert!(downtime(
            log,
            "counter: migrated in: 620 RAM pages\n",
            "counter",
            "10.0.2.16"
        )
        .is_err());
    }
}
