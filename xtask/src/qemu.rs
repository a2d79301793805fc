//! Starting QEMU: on the terminal (`run`) or captured with a timeout
//! (`test`, `bench`).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::build::{Built, NativeLinux};

pub const QEMU: &str = "qemu-system-aarch64";

/// `-cpu max` with SVE and SME off: the hypervisor does not yet context-switch
/// their state, and under `shift=0` icount `max`'s counter ticks once per
/// instruction (1 GHz).
const CPU: &str = "max,sve=off,sme=off";

/// Machine arguments shared by every Bulkhead boot: `virt` with EL2 and a
/// GICv3 (`extra_machine` appends options such as `,dtb-randomness=off`),
/// the board's CPU count and RAM.
pub fn machine_args(cpus: u16, ram_mib: u64, extra_machine: &str) -> Vec<String> {
    vec![
        "-machine".to_owned(),
        format!("virt,virtualization=on,gic-version=3{extra_machine}"),
        "-cpu".to_owned(),
        CPU.to_owned(),
        "-smp".to_owned(),
        cpus.to_string(),
        "-m".to_owned(),
        format!("{ram_mib}M"),
    ]
}

/// The tail of every command line: console setup, no NIC (so QEMU needs no
/// `efi-virtio.rom`), and the image.
pub fn console_and_kernel(console: &[&str], image: &Path) -> Vec<String> {
    let mut args: Vec<String> = console.iter().map(|s| (*s).to_owned()).collect();
    args.extend(["-nic", "none", "-kernel"].map(String::from));
    args.push(image.display().to_string());
    args
}

/// The board's physical disks: one virtio-blk on virtio-mmio (version 2)
/// per raw image. QEMU virt gives the first `-device` the highest
/// virtio-mmio address and the hypervisor numbers disks by ascending
/// address, so they are passed last disk first.
pub fn disk_args(disks: &[PathBuf]) -> Vec<String> {
    disk_args_with(disks, "")
}

/// [`disk_args`] for images that two QEMU machines are given at once
/// (shared storage, for migration): without QEMU's image locking, which
/// would refuse the second machine. Both write through the host's page
/// cache, so each sees what the other wrote.
pub fn shared_disk_args(disks: &[PathBuf]) -> Vec<String> {
    disk_args_with(disks, ",file.locking=off")
}

fn disk_args_with(disks: &[PathBuf], drive_options: &str) -> Vec<String> {
    let mut args = Vec::new();
    if disks.is_empty() {
        return args;
    }
    args.extend(["-global", "virtio-mmio.force-legacy=false"].map(String::from));
    for (i, path) in disks.iter().enumerate().rev() {
        args.push("-drive".to_owned());
        args.push(format!(
            "if=none,id=disk{i},format=raw,file={}{drive_options}",
            path.display()
        ));
        args.push("-device".to_owned());
        args.push(format!("virtio-blk-device,drive=disk{i},queue-size=256"));
    }
    args
}

/// The board's physical NIC: a virtio-net on virtio-mmio whose backend is
/// `peer`'s stream socket on 127.0.0.1, never a route off this machine.
pub fn nic_args(peer: &crate::netpeer::NetPeer) -> Vec<String> {
    let mut args = peer.netdev_args();
    args.extend(["-global", "virtio-mmio.force-legacy=false", "-device"].map(String::from));
    args.push(format!(
        "virtio-net-device,netdev={},mac=52:54:00:00:00:fe",
        crate::netpeer::NETDEV_ID
    ));
    args
}

/// The host at the far end of the uplink in tests and `run`: 10.0.2.254,
/// a TCP greeting and echo server on port 7 (docs/network.md), and the
/// snapshot store on port 7700 keeping `target/snapshots` (docs/snapshot.md).
pub fn host_peer() -> Result<crate::netpeer::NetPeer> {
    // One directory for every peer of the run, and for later runs.
    let store = crate::target_dir().join("snapshots");
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    crate::netpeer::NetPeer::start(crate::netpeer::PeerConfig {
        mac: [0x02, 0, 0, 0, 0, 0xfe],
        ip: [10, 0, 2, 254],
        prefix: 24,
        tcp_port: 7,
        greeting: "hello from the host behind the uplink".into(),
        store: Some(store),
    })
}

/// Console for tests and benchmarks: serial on stdio, nothing else.
pub const CAPTURED_CONSOLE: &[&str] = &["-display", "none", "-monitor", "none", "-serial", "stdio"];

/// How `cargo xtask run` keeps time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Time {
    /// Virtual when the host has fewer cores than the system has vCPUs.
    Auto,
    /// `-icount shift=0,sleep=on`: QEMU runs the CPUs in turn on one
    /// thread and time is counted in guest instructions (1 GHz), so the
    /// host's scheduling cannot delay one vCPU against the others; idle
    /// time still passes at the wall clock's pace.
    Virtual,
    /// One host thread per CPU, host time: what a guest sees depends on
    /// how the host schedules those threads.
    Real,
}

/// QEMU's arguments for virtual time in an interactive run. `sleep=on`
/// lets an idle system wait for the wall clock, so a shell's `sleep 1`
/// takes a second and the safety VM reports once a second, not in a flood.
pub const INTERACTIVE_ICOUNT: [&str; 2] = ["-icount", "shift=0,sleep=on"];

/// Whether `time` means virtual time on a host with `host_cores` for a
/// system of `vcpus`, and the one line that says so and why.
pub fn decide_time(time: Time, host_cores: usize, vcpus: usize) -> (bool, String) {
    let why = format!("this host has {host_cores} core(s) for the system's {vcpus} vCPU(s)");
    match time {
        Time::Virtual => (
            true,
            "time: virtual (-icount, asked for with --time virtual): vCPUs run in turn on one \
             QEMU thread and time is counted in guest instructions"
                .to_owned(),
        ),
        Time::Real => (
            false,
            format!(
                "time: real (asked for with --time real): one host thread per CPU; {why}, and a \
                 vCPU whose thread the host leaves waiting sees that as lost time"
            ),
        ),
        Time::Auto if host_cores < vcpus => (
            true,
            format!(
                "time: virtual (-icount): {why}, so QEMU runs them in turn on one thread and \
                 guests count time in instructions, not host delays (--time real to change)"
            ),
        ),
        Time::Auto => (
            false,
            format!(
                "time: real: {why}, a thread each (--time virtual to count guest instructions)"
            ),
        ),
    }
}

/// How an interactive run ended, read from its console log.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// "system ended: clean": every VM stopped as asked.
    Clean,
    /// "system ended: failed": a VM crashed, reset without a restart, or
    /// never started. Carries the hypervisor's line.
    Failed(String),
    /// No such line: QEMU was quit (Ctrl-A X) or the hypervisor stopped
    /// before the system ended.
    Unfinished,
}

impl Ending {
    /// Reads the hypervisor's last `system ended:` line in `log`. Only the
    /// hypervisor's own lines count: they start with `bulkhead `, while a
    /// guest's always start with its `[vm] ` tag.
    pub fn of(log: &str) -> Self {
        let Some(line) = log
            .lines()
            .rev()
            .find(|l| l.starts_with("bulkhead ") && l.contains("system ended: "))
            .map(|l| l.trim_end_matches('\r'))
        else {
            return Self::Unfinished;
        };
        if line.contains("system ended: clean") {
            Self::Clean
        } else {
            Self::Failed(line.to_owned())
        }
    }

    /// `cargo xtask run`'s exit status for this ending.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Clean => 0,
            Self::Failed(_) => 1,
            Self::Unfinished => 2,
        }
    }
}

/// `cargo xtask run`: QEMU owns the terminal; the console is also written
/// to `log` (default `target/bulkhead/<image>.log`), and the exit status
/// says how the system ended ([`Ending`]).
pub fn run_interactive(built: &Built, log: Option<PathBuf>, time: Time) -> Result<ExitCode> {
    let host_cores = thread::available_parallelism().map_or(1, usize::from);
    let (virtual_time, line) = decide_time(time, host_cores, built.vcpus);
    let log = log.unwrap_or_else(|| built.image.with_extension("log"));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut args = machine_args(built.cpus, built.ram_mib, "");
    if virtual_time {
        args.extend(INTERACTIVE_ICOUNT.map(String::from));
    }
    // -nographic's console (serial and monitor muxed on stdio, Ctrl-A as
    // the escape), spelt out so the chardev can also log to a file.
    let chardev = format!(
        "stdio,id=console,mux=on,logfile={},logappend=off",
        log.display()
    );
    let console = [
        "-display",
        "none",
        "-chardev",
        &chardev,
        "-serial",
        "chardev:console",
        "-mon",
        "chardev=console,mode=readline",
    ];
    args.extend(disk_args(&built.disks));
    let peer = if built.uplink {
        let peer = host_peer()?;
        args.extend(nic_args(&peer));
        println!(
            "the uplink's far end: a host at 10.0.2.254 (TCP port 7 greets and echoes), on 127.0.0.1:{}",
            peer.port()
        );
        Some(peer)
    } else {
        None
    };
    args.extend(console_and_kernel(&console, &built.image));
    println!(
        "Booting {} in QEMU; press Ctrl-A then X to quit.\n{line}\nconsole log: {}",
        built.image.display(),
        log.display()
    );
    let status = Command::new(QEMU)
        .args(&args)
        .status()
        .with_context(|| format!("cannot start {QEMU}"))?;
    if let Some(peer) = peer {
        print!("{}", peer.stop());
    }
    let text = std::fs::read(&log).unwrap_or_default();
    let ending = Ending::of(&String::from_utf8_lossy(&text));
    match &ending {
        Ending::Clean => println!("\nsystem ended cleanly; console log in {}", log.display()),
        Ending::Failed(line) => eprintln!(
            "\nthe system ended with a VM down: {}\nconsole log in {}",
            line.trim(),
            log.display()
        ),
        Ending::Unfinished => eprintln!(
            "\nQEMU ended ({}) before the system did (quit with Ctrl-A X, or the hypervisor \
             stopped: see the console log in {})",
            match status.code() {
                Some(code) => format!("status {code}"),
                None => status.to_string(),
            },
            log.display()
        ),
    }
    Ok(ExitCode::from(ending.exit_code()))
}

/// QEMU arguments that boot `linux` directly (no hypervisor): `virt` with
/// a GICv3 and no EL2, so the kernel starts at EL1 as it would in a VM;
/// `extra_machine` appends machine options such as `,dtb-randomness=off`.
pub fn native_linux_args(
    linux: &NativeLinux,
    extra_machine: &str,
    console: &[&str],
) -> Vec<String> {
    let mut args = vec![
        "-machine".to_owned(),
        format!("virt,gic-version=3{extra_machine}"),
        "-cpu".to_owned(),
        CPU.to_owned(),
        "-smp".to_owned(),
        linux.vcpus.to_string(),
        "-m".to_owned(),
        format!("{}M", linux.memory >> 20),
    ];
    args.extend(console_and_kernel(console, &linux.kernel));
    if let Some(initrd) = &linux.initramfs {
        args.push("-initrd".to_owned());
        args.push(initrd.display().to_string());
    }
    args.push("-append".to_owned());
    args.push(linux.cmdline.clone());
    args
}

/// `cargo xtask run-native`: the Linux VM straight on QEMU on this
/// terminal; with stdin not a terminal (CI, scripts) stdin is closed so the
/// run cannot wait for input.
pub fn run_native_linux(linux: &NativeLinux) -> Result<ExitCode> {
    let args = native_linux_args(linux, "", &["-nographic"]);
    let interactive = std::io::stdin().is_terminal();
    println!(
        "Booting VM '{}' natively: {} {}{}",
        linux.name,
        QEMU,
        args.join(" "),
        if interactive {
            "\npress Ctrl-A then X to quit."
        } else {
            ""
        }
    );
    let mut cmd = Command::new(QEMU);
    cmd.args(&args);
    if !interactive {
        cmd.stdin(Stdio::null());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {QEMU}"))?;
    Ok(exit_code(status))
}

/// Our exit code for a child's status: its code, or 1 if a signal ended it.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// What a captured QEMU run produced.
pub struct Outcome {
    /// Everything QEMU wrote to stdout and stderr (serial output and QEMU's
    /// own messages), lossily decoded.
    pub log: String,
    /// Exit status; `None` when the run was killed at the timeout.
    pub status: Option<ExitStatus>,
}

impl Outcome {
    /// Whether the run ended on its own with exit status 0.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// One-line description of how the run ended.
    pub fn ending(&self, timeout: Duration) -> String {
        match self.status {
            None => format!("timed out after {} s", timeout.as_secs()),
            Some(s) => match s.code() {
                Some(code) => format!("QEMU exited with status {code}"),
                None => format!("QEMU was killed ({s})"),
            },
        }
    }
}

/// Runs QEMU with `args`, stdin closed, stdout and stderr collected into one
/// buffer as they arrive; kills it when `timeout` passes.
pub fn run_captured(args: &[String], timeout: Duration) -> Result<Outcome> {
    run_scripted(args, timeout, &[])
}

/// In a [`run_scripted`] script, instead of text to type: kill QEMU there.
pub const KILL: &str = "\0kill";

/// Like [`run_captured`], typing on QEMU's serial input: each `(wait_for,
/// send)` pair sends `send` once `wait_for` has appeared in the output
/// (after the previous pair's match), as a person at the console would.
pub fn run_scripted(
    args: &[String],
    timeout: Duration,
    script: &[(&str, &str)],
) -> Result<Outcome> {
    let mut child = Command::new(QEMU)
        .args(args)
        .stdin(if script.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {QEMU}"))?;
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        let buffer = Arc::clone(&buffer);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                if let Ok(mut buf) = buffer.lock() {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        })
    })
    .collect();

    let deadline = Instant::now() + timeout;
    let mut stdin = child.stdin.take();
    let (mut step, mut from) = (0, 0);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if let (Some((wait_for, send)), Some(input)) = (script.get(step), stdin.as_mut()) {
            let seen = buffer.lock().ok().and_then(|b| {
                let hay = b.get(from..).unwrap_or_default();
                hay.windows(wait_for.len())
                    .position(|w| w == wait_for.as_bytes())
                    .map(|at| from + at + wait_for.len())
            });
            if let Some(end) = seen {
                if *send == KILL {
                    // As if the machine lost power: the status says killed.
                    let _ = child.kill();
                } else {
                    // QEMU may already be gone; the exit status tells.
                    let _ = input
                        .write_all(send.as_bytes())
                        .and_then(|()| input.flush());
                }
                step += 1;
                from = end;
            }
        }
        if Instant::now() >= deadline {
            // Ignore the error: QEMU may have exited in between.
            let _ = child.kill();
            child.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    for reader in readers {
        let _ = reader.join();
    }
    let bytes = buffer.lock().map(|b| b.clone()).unwrap_or_default();
    Ok(Outcome {
        log: String::from_utf8_lossy(&bytes).into_owned(),
        status,
    })
}

/// `log`, each line indented, for failure reports.
pub fn indent(log: &str) -> String {
    let mut out = String::new();
    for line in log.lines() {
        out.push_str("    ");
        out.push_str(line.trim_end_matches('\r'));
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("    (no output)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_time_is_virtual_only_with_fewer_cores_than_vcpus() {
        let (v, line) = decide_time(Time::Auto, 2, 3);
        assert!(v);
        assert!(line.starts_with("time: virtual"), "{line}");
        assert!(
            line.contains("2 core(s) for the system's 3 vCPU(s)"),
            "{line}"
        );
        assert!(!decide_time(Time::Auto, 4, 3).0);
        assert!(!decide_time(Time::Auto, 3, 3).0);
        assert!(decide_time(Time::Virtual, 64, 1).0);
        assert!(!decide_time(Time::Real, 1, 8).0);
    }

    #[test]
    fn ending_is_read_from_the_last_summary_line() {
        let clean = "bulkhead cpu0 INFO  system ended: clean (a: powered off)\r\n\
                     bulkhead cpu0 INFO  all VMs stopped, powering off\r\n";
        assert_eq!(Ending::of(clean), Ending::Clean);
        assert_eq!(Ending::of(clean).exit_code(), 0);
        let failed = "bulkhead cpu1 ERROR system ended: failed (a: crashed)\r\n";
        let ending = Ending::of(failed);
        assert_eq!(ending.exit_code(), 1);
        assert!(matches!(&ending, Ending::Failed(l) if l.ends_with("(a: crashed)")));
        // Ctrl-A X before the end: no summary line at all.
        assert_eq!(Ending::of("[linux] / # \r\n").exit_code(), 2);
        // A guest printing the words does not end the run: its lines carry
        // its tag.
        let spoof = "bulkhead cpu0 ERROR system ended: failed (a: crashed)\n\
                     [a] bulkhead cpu0 INFO  system ended: clean\n";
        assert_eq!(Ending::of(spoof).exit_code(), 1);
        assert_eq!(
            Ending::of("[a] bulkhead cpu0 INFO  system ended: clean\n").exit_code(),
            2
        );
    }

    #[test]
    fn indent_prefixes_every_line_and_drops_carriage_returns() {
        assert_eq!(indent("a\r\nb\n"), "    a\n    b\n");
        assert_eq!(indent(""), "    (no output)\n");
    }

    #[test]
    #[ignore = "starts QEMU"]
    fn captured_run_is_killed_at_timeout() {
        // No kernel: the CPU spins in QEMU's empty boot ROM until killed.
        let args: Vec<String> = ["-machine", "virt", "-display", "none", "-monitor", "none"]
            .map(String::from)
            .to_vec();
        let started = Instant::now();
        let outcome = run_captured(&args, Duration::from_secs(2)).unwrap();
        assert!(outcome.status.is_none());
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    #[ignore = "starts QEMU"]
    fn captured_run_collects_output_and_status() {
        let outcome = run_captured(&["--version".to_owned()], Duration::from_secs(10)).unwrap();
        assert!(outcome.succeeded());
        assert!(outcome.log.contains("QEMU emulator version"));
    }
}
