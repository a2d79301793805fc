//! The hypervisor shell on the console (focus it with Ctrl-]): list, info,
//! start, stop, restart and stats. Parsing and line editing are in the pure
//! `bulkhead-shell` crate; this module acts on the VMs.

use crate::console;
use crate::system;
use crate::vm::{End, Lifecycle, Vm};
use bulkhead_shell::{Command, Key, LineEditor};
use core::fmt::Write;
use core::sync::atomic::Ordering;
use spin::Mutex;

static EDITOR: Mutex<LineEditor> = Mutex::new(LineEditor::new());
const PROMPT: &[u8] = b"bulkhead> ";

macro_rules! say {
    ($($arg:tt)*) => { console::shell_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Focus arrived at the shell.
pub fn enter() {
    say!("bulkhead shell: 'help' lists the commands, Ctrl-] returns to the first VM");
    console::shell_partial(PROMPT);
}

/// One byte typed while the shell has focus.
pub fn input(b: u8) {
    let mut ed = EDITOR.lock();
    match ed.feed(b) {
        Key::Echo(c) => console::shell_partial(&[c]),
        Key::Erase => console::shell_partial(b"\x08 \x08"),
        Key::None => {}
        Key::Enter => {
            let mut line = heapless_line();
            let _ = line.write_str(ed.line());
            ed.clear();
            drop(ed);
            // Ends the input line; the command's output starts below it.
            console::shell_fmt(format_args!(""));
            run(line.as_str());
            console::shell_partial(PROMPT);
        }
    }
}

/// A copy of the typed line, so the editor lock is not held while the
/// command runs.
struct Line {
    buf: [u8; bulkhead_shell::LINE_MAX],
    len: usize,
}

fn heapless_line() -> Line {
    Line {
        buf: [0; bulkhead_shell::LINE_MAX],
        len: 0,
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(self.buf.get(..self.len).unwrap_or_default()).unwrap_or("")
    }
}

fn find(name: &str) -> Option<&'static Vm> {
    let vm = system::vms().iter().find(|v| v.name == name);
    if vm.is_none() {
        say!("no VM named '{name}' (see 'list')");
    }
    vm
}

fn state_name(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Running => "running",
        Lifecycle::Stopping(_) => "stopping",
        Lifecycle::Stopped => "stopped",
    }
}

fn run(line: &str) {
    let cmd = match bulkhead_shell::parse(line) {
        Ok(c) => c,
        Err(bulkhead_shell::ParseError::Empty) => return,
        Err(e) => {
            say!("error: {e}");
            return;
        }
    };
    match cmd {
        Command::Help => {
            for l in bulkhead_shell::HELP {
                say!("  {l}");
            }
        }
        Command::List => {
            say!(
                "{:<16} {:<9} {:>5} {:<12} {:>8} {:>8} {}",
                "VM",
                "STATE",
                "VCPUS",
                "PCPUS",
                "MEMORY",
                "RESTARTS",
                "POLICY"
            );
            for vm in system::vms() {
                let st = vm.state.lock().lifecycle;
                let mut pcpus = heapless_line();
                for (i, p) in vm.pcpus.iter().enumerate() {
                    let _ = write!(pcpus, "{}{}", if i > 0 { "," } else { "" }, p.0);
                }
                if let Some(p) = crate::sched::pool_of(vm) {
                    let _ = write!(pcpus, "pool:{}", p.name);
                }
                say!(
                    "{:<16} {:<9} {:>5} {:<12} {:>6}Mi {:>8} {}",
                    vm.name,
                    state_name(st),
                    vm.n_vcpus(),
                    pcpus.as_str(),
                    vm.ram_size >> 20,
                    vm.restarts.load(Ordering::Relaxed),
                    vm.restart
                );
            }
        }
        Command::Info(name) => {
            let Some(vm) = find(name) else { return };
            let st = vm.state.lock().lifecycle;
            say!(
                "{}: {}, restart policy {}, restarted {} time(s), criticality {}",
                vm.name,
                state_name(st),
                vm.restart,
                vm.restarts.load(Ordering::Relaxed),
                vm.criticality
            );
            for e in &vm.ends {
                if let Some(ch) = system::channel(e.channel) {
                    say!(
                        "  channel '{}' end {}: registers {:#x}, {} bytes at {:#x}, SPI {}",
                        ch.name,
                        e.end,
                        e.regs_ipa,
                        ch.size,
                        e.shm_ipa,
                        e.spi
                    );
                }
            }
            for (n, d) in vm.virtio.iter().enumerate() {
                info_device(n, d);
            }
            say!(
                "  RAM {:#x}..{:#x} (host) at IPA {:#x}, VMID {}",
                vm.ram.0,
                vm.ram.0 + vm.ram_size,
                bulkhead_config::RAM_IPA,
                vm.id.0 + 1
            );
            match crate::sched::pool_of(vm) {
                Some(p) => say!(
                    "  entry {:#x}, {} vCPU(s) in pool '{}' (pCPUs {:?})",
                    vm.entry_ipa(),
                    vm.n_vcpus(),
                    p.name,
                    p.pcpus
                ),
                None => say!(
                    "  entry {:#x}, {} vCPU(s) on pCPUs {:?}",
                    vm.entry_ipa(),
                    vm.n_vcpus(),
                    vm.pcpus.iter().map(|p| p.0).collect::<alloc::vec::Vec<_>>()
                ),
            }
            say!("  command line: {}", vm.cmdline());
        }
        Command::Start(name) => {
            let Some(vm) = find(name) else { return };
            let mut st = vm.state.lock();
            if st.lifecycle != Lifecycle::Stopped {
                say!("error: {} is {}", vm.name, state_name(st.lifecycle));
                return;
            }
            system::vm_started();
            log::info!("{}: started from the shell", vm.name);
            vm.boot(&mut st);
        }
        Command::Stop(name) => {
            let Some(vm) = find(name) else { return };
            let mut st = vm.state.lock();
            if st.lifecycle != Lifecycle::Running {
                say!("error: {} is {}", vm.name, state_name(st.lifecycle));
                return;
            }
            vm.begin_stop(&mut st, End::ShellStop, "stopped from the shell");
        }
        Command::Restart(name) => {
            let Some(vm) = find(name) else { return };
            let mut st = vm.state.lock();
            match st.lifecycle {
                Lifecycle::Running => {
                    vm.begin_stop(&mut st, End::ShellRestart, "restarted from the shell")
                }
                Lifecycle::Stopped => {
                    system::vm_started();
                    vm.restarts.fetch_add(1, Ordering::Relaxed);
                    log::info!("{}: started from the shell", vm.name);
                    vm.boot(&mut st);
                }
                Lifecycle::Stopping(_) => say!("error: {} is stopping", vm.name),
            }
        }
        Command::Sched => crate::sched::show(),
        Command::Snapshot { vm, name } => {
            let Some(vm) = find(vm) else { return };
            let name = name.unwrap_or(&vm.name);
            match crate::snapshot::snapshot(vm, name) {
                Ok(m) => say!("{m}"),
                Err(e) => say!("error: {}: snapshot failed: {e}", vm.name),
            }
        }
        Command::Restore { vm, name } => {
            let Some(vm) = find(vm) else { return };
            let name = name.unwrap_or(&vm.name);
            match crate::snapshot::restore(vm, name) {
                Ok(m) => say!("{m}"),
                Err(e) => say!("error: {e}"),
            }
        }
        Command::Migrate { vm, to } => {
            let Some(vm) = find(vm) else { return };
            match crate::snapshot::migrate(vm, to) {
                Ok(m) => say!("{m}"),
                Err(e) => say!("error: {}: {e}", vm.name),
            }
        }
        Command::Incoming(vm) => {
            let Some(vm) = find(vm) else { return };
            match crate::snapshot::incoming(vm) {
                Ok(m) => say!("{m}"),
                Err(e) => say!("error: {e}"),
            }
        }
        Command::Track(vm) | Command::Untrack(vm) => {
            let Some(vm) = find(vm) else { return };
            let r = if matches!(cmd, Command::Track(_)) {
                crate::snapshot::track(vm)
            } else {
                crate::snapshot::untrack(vm)
            };
            match r {
                Ok(m) => say!("{m}"),
                Err(e) => say!("error: {}: {e}", vm.name),
            }
        }
        Command::Move { vm, vcpu, pcpu } => {
            let Some(vm) = find(vm) else { return };
            if vcpu >= vm.n_vcpus() {
                say!(
                    "error: {} has {} vCPU(s), numbered from 0",
                    vm.name,
                    vm.n_vcpus()
                );
                return;
            }
            match crate::sched::move_vcpu(vm, bulkhead_types::VcpuId(vcpu), usize::from(pcpu)) {
                Ok(()) => say!("{} vcpu{vcpu} moves to pCPU {pcpu}", vm.name),
                Err(e) => say!("error: {e}"),
            }
        }
        Command::Stats(which) => {
            if let Some(name) = which {
                if find(name).is_none() {
                    return;
                }
            }
            say!(
                "{:<16} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "VM",
                "VCPU",
                "HVC/SMC",
                "MMIO",
                "SYSREG",
                "IRQ",
                "OTHER",
                "INJECTED"
            );
            for vm in system::vms()
                .iter()
                .filter(|v| which.is_none_or(|n| v.name == n))
            {
                for v in 0..vm.n_vcpus() as usize {
                    let Some(c) = vm.stats.vcpus.get(v) else {
                        continue;
                    };
                    let g = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
                    say!(
                        "{:<16} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                        vm.name,
                        v,
                        g(&c.smccc),
                        g(&c.mmio),
                        g(&c.sysreg),
                        g(&c.irq),
                        g(&c.other),
                        g(&c.injected)
                    );
                }
                say!(
                    "{:<16} refused guest actions: {}",
                    vm.name,
                    vm.stats.refused.load(Ordering::Relaxed)
                );
                for (n, d) in vm.virtio.iter().enumerate() {
                    stats_device(&vm.name, n, d);
                }
            }
            if which.is_none() {
                for (i, d) in crate::virtio::disks().iter().enumerate() {
                    let d = d.lock();
                    say!(
                        "disk{i} (virtio-blk at {:#x}): requests {} ({} in flight), {} KiB, errors {}",
                        d.base,
                        d.stats.requests,
                        d.in_flight(),
                        d.stats.bytes >> 10,
                        d.stats.errors
                    );
                }
                if let Some(u) = crate::net::uplink() {
                    let u = u.lock();
                    say!(
                        "nic0 (virtio-net at {:#x}): sent {}, received {}, errors {}/{}",
                        u.base,
                        u.stats.tx,
                        u.stats.rx,
                        u.stats.tx_errors,
                        u.stats.rx_errors
                    );
                    if crate::mgmt::endpoint_configured() {
                        say!(
                            "management endpoint: {} frames dropped with its {}-frame backlog full",
                            crate::mgmt::backlog_drops(),
                            crate::mgmt::RX_BACKLOG
                        );
                    }
                }
                for s in crate::net::switches() {
                    let st = s.table.lock().stats;
                    say!(
                        "switch '{}' ({} ports): forwarded {}, flooded {}, dropped {} ({} spoofed)",
                        s.name,
                        s.ports.len(),
                        st.forwarded,
                        st.flooded,
                        st.dropped,
                        st.spoofed
                    );
                }
            }
        }
    }
}

/// `info VM`: one virtio device and its counters.
fn info_device(n: usize, d: &crate::virtio::VirtioDev) {
    use crate::virtio::Model;
    match &d.model {
        Model::Blk { blk, disk } => {
            let b = blk.lock();
            let (sl, st) = (&b.slice, b.stats);
            let serial = core::str::from_utf8(&sl.serial)
                .unwrap_or("?")
                .trim_end_matches('\0');
            say!(
                "  virtio {n}: disk{disk} sectors {}..{} ({} MiB, {}), serial '{serial}', at {:#x}, SPI {}",
                sl.start,
                sl.start + sl.sectors,
                sl.sectors >> 11,
                if sl.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
                d.ipa,
                d.intid - 32
            );
            say!(
                "    reads {} ({} KiB), writes {} ({} KiB), flushes {}, errors {}",
                st.reads,
                st.read_bytes >> 10,
                st.writes,
                st.write_bytes >> 10,
                st.flushes,
                st.errors
            );
            let x = sl.offered();
            if (x.max_discard_sectors | x.max_write_zeroes_sectors) != 0 {
                say!(
                    "    discards {} ({} KiB), write-zeroes {} ({} KiB)",
                    st.discards,
                    st.discard_bytes >> 10,
                    st.zeroes,
                    st.zero_bytes >> 10
                );
            }
        }
        Model::Net { net, switch, port } => {
            let n_ = net.lock();
            let (m, st) = (n_.mac, n_.stats);
            let name = crate::net::switches()
                .get(*switch)
                .map_or("?", |s| s.name.as_str());
            say!(
                "  virtio {n}: NIC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} on switch '{name}' port {port}, at {:#x}, SPI {}",
                m[0],
                m[1],
                m[2],
                m[3],
                m[4],
                m[5],
                d.ipa,
                d.intid - 32
            );
            say!(
                "    sent {} frames ({} KiB, {} dropped), received {} ({} KiB, {} dropped)",
                st.tx_frames,
                st.tx_bytes >> 10,
                st.tx_dropped,
                st.rx_frames,
                st.rx_bytes >> 10,
                st.rx_dropped
            );
            if st.announces + st.ctrl_errors > 0 {
                say!(
                    "    asked to announce itself {} times, acknowledged {}; control commands refused {}",
                    st.announces,
                    st.announce_acks,
                    st.ctrl_errors
                );
            }
        }
    }
}

/// `stats`: one virtio device's queue activity.
fn stats_device(vm: &str, n: usize, d: &crate::virtio::VirtioDev) {
    use crate::virtio::Model;
    match &d.model {
        Model::Blk { blk, .. } => {
            let (st, waiting) = {
                let b = blk.lock();
                (b.stats, b.in_flight())
            };
            say!(
                "{vm:<16} virtio {n} (blk): kicks {}, requests {} ({waiting} on the disk), interrupts {}, errors {}, needed reset {}",
                st.kicks,
                st.reads + st.writes + st.flushes,
                st.interrupts,
                st.errors,
                st.resets_needed
            );
        }
        Model::Net { net, .. } => {
            let st = net.lock().stats;
            say!(
                "{vm:<16} virtio {n} (net): kicks {}, frames out {} ({} TSO), in {} ({} cut into segments), interrupts {}, dropped {}/{}, needed reset {}",
                st.kicks,
                st.tx_frames,
                st.tx_tso,
                st.rx_frames,
                st.rx_segmented,
                st.interrupts,
                st.tx_dropped,
                st.rx_dropped,
                st.resets_needed
            );
        }
    }
}
