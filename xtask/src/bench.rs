//! `cargo xtask bench`: the bench guest under Bulkhead and natively (the
//! same flat image booted straight at EL1), each twice, under deterministic
//! icount so the figures are instruction counts that repeat exactly; then
//! a Linux boot (configs/bench-linux.toml: kernel start to `/init`) the same
//! way, natively with the same kernel, initramfs, command line and vCPUs.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Number, Value};

use crate::build::{self, Output};
use crate::qemu::{self, CAPTURED_CONSOLE};
use crate::target_dir;

/// One `BENCH <name> <unit> <value>` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    /// The value as printed (kept for exact comparison and JSON).
    pub text: String,
    pub value: f64,
}

/// How long one benchmark boot may take.
const TIMEOUT: Duration = Duration::from_secs(600);
/// How long one Linux boot may take (natively it takes seconds).
const LINUX_TIMEOUT: Duration = Duration::from_secs(300);
/// Deterministic execution (one instruction per ns, no sleeping), fixed DTB
/// and RTC: two runs of the same image execute the same instructions.
const ICOUNT: [&str; 4] = ["-icount", "shift=0,sleep=off", "-rtc", "clock=vm"];

/// Parses a line containing `BENCH <name> <unit> <value>` anywhere (the
/// hypervisor prefixes VM output with `[vm] `).
pub fn parse_line(line: &str) -> Option<Figure> {
    let at = line.find("BENCH ")?;
    let mut words = line[at + "BENCH ".len()..].split_whitespace();
    let (name, unit, text) = (words.next()?, words.next()?, words.next()?);
    let value: f64 = text.parse().ok()?;
    value.is_finite().then(|| Figure {
        name: name.to_owned(),
        unit: unit.to_owned(),
        text: text.to_owned(),
        value,
    })
}

/// Every figure in a log, in order.
pub fn parse_log(log: &str) -> Vec<Figure> {
    log.lines().filter_map(parse_line).collect()
}

/// A figure as a JSON number: integers stay integers.
fn number(f: &Figure) -> Value {
    if let Ok(n) = f.text.parse::<u64>() {
        Value::Number(n.into())
    } else {
        Number::from_f64(f.value).map_or(Value::Null, Value::Number)
    }
}

/// One row of the results: every Bulkhead figure, with the native figure of
/// the same name if there is one.
#[derive(Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub unit: String,
    pub native: Option<Figure>,
    pub bulkhead: Figure,
}

impl Row {
    /// bulkhead / native, when both exist and native is non-zero.
    pub fn ratio(&self) -> Option<f64> {
        let native = self.native.as_ref()?.value;
        (native != 0.0).then(|| self.bulkhead.value / native)
    }
}

pub fn rows(native: &[Figure], bulkhead: &[Figure]) -> Vec<Row> {
    bulkhead
        .iter()
        .map(|b| Row {
            name: b.name.clone(),
            unit: b.unit.clone(),
            native: native.iter().find(|n| n.name == b.name).cloned(),
            bulkhead: b.clone(),
        })
        .collect()
}

pub fn results_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let ratio = r
                    .ratio()
                    .and_then(|x| Number::from_f64((x * 10_000.0).round() / 10_000.0))
                    .map_or(Value::Null, Value::Number);
                json!({
                    "name": r.name,
                    "unit": r.unit,
                    "native": r.native.as_ref().map_or(Value::Null, number),
                    "bulkhead": number(&r.bulkhead),
                    "ratio": ratio,
                })
            })
            .collect(),
    )
}

/// Differences between two runs of one side, as readable lines.
pub fn differences(side: &str, first: &[Figure], second: &[Figure]) -> Vec<String> {
    let mut out = Vec::new();
    for a in first {
        match second.iter().find(|b| b.name == a.name) {
            Some(b) if b.text != a.text => {
                out.push(format!("{side} {}: {} then {}", a.name, a.text, b.text));
            }
            Some(_) => {}
            None => out.push(format!("{side} {}: only in the first run", a.name)),
        }
    }
    for b in second {
        if !first.iter().any(|a| a.name == b.name) {
            out.push(format!("{side} {}: only in the second run", b.name));
        }
    }
    out
}

/// Boots `args` and returns the figures; errors (with the log) when QEMU
/// fails, times out or prints no figures.
fn measure(side: &str, run: usize, args: &[String], timeout: Duration) -> Result<Vec<Figure>> {
    measure_scripted(side, run, args, timeout, &[])
}

/// [`measure`], typing `script` on the console as [`qemu::run_scripted`]
/// does.
fn measure_scripted(
    side: &str,
    run: usize,
    args: &[String],
    timeout: Duration,
    script: &[(&str, &str)],
) -> Result<Vec<Figure>> {
    println!(
        "booting {side} run {run}… (timeout {} s)",
        timeout.as_secs()
    );
    let outcome = qemu::run_scripted(args, timeout, script)?;
    if !outcome.succeeded() {
        bail!(
            "{side} run {run}: {}; log:\n{}",
            outcome.ending(timeout),
            qemu::indent(&outcome.log)
        );
    }
    if let Some(line) = outcome.log.lines().find(|l| l.contains("FAIL")) {
        bail!(
            "{side} run {run} failed: {}; log:\n{}",
            line.trim(),
            qemu::indent(&outcome.log)
        );
    }
    let figures = parse_log(&outcome.log);
    if figures.is_empty() {
        bail!(
            "{side} run {run} printed no BENCH lines; log:\n{}",
            qemu::indent(&outcome.log)
        );
    }
    Ok(figures)
}

pub fn run(quick: bool) -> Result<ExitCode> {
    let quick_config = Path::new("configs/bench-quick.toml");
    let config = if quick && quick_config.exists() {
        quick_config
    } else {
        if quick {
            println!(
                "{} does not exist; using configs/bench.toml",
                quick_config.display()
            );
        }
        Path::new("configs/bench.toml")
    };
    println!("building {}…", config.display());
    let built = build::build(config, Output::Progress)?;
    let guest = target_dir().join("bulkhead/guests/bench.bin");
    if !guest.exists() {
        bail!(
            "{} was not built: {} must run guest \"bench\"",
            guest.display(),
            config.display()
        );
    }

    let mut bulkhead_args = qemu::machine_args(built.cpus, built.ram_mib, ",dtb-randomness=off");
    bulkhead_args.extend(ICOUNT.map(String::from));
    bulkhead_args.extend(qemu::disk_args(&built.disks));
    bulkhead_args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));

    // Without `virtualization=on` QEMU enters the image at EL1, as the
    // hypervisor would.
    let mut native_args: Vec<String> = [
        "-machine",
        "virt,gic-version=3,dtb-randomness=off",
        "-cpu",
        "max,sve=off,sme=off",
        "-smp",
        "2",
        "-m",
        "1G",
    ]
    .map(String::from)
    .to_vec();
    native_args.extend(ICOUNT.map(String::from));
    native_args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &guest));
    if quick {
        // The guest looks for this word in its device tree's bootargs.
        native_args.extend(["-append".to_owned(), "bench.quick".to_owned()]);
    }

    let mut native = [
        measure("native", 1, &native_args, TIMEOUT)?,
        measure("native", 2, &native_args, TIMEOUT)?,
    ];
    let mut bulkhead = [
        measure("bulkhead", 1, &bulkhead_args, TIMEOUT)?,
        measure("bulkhead", 2, &bulkhead_args, TIMEOUT)?,
    ];

    // Shared pCPUs: Bulkhead only, quick or not (the figures are few and
    // the run is short).
    let pool_failed = match pool_bench(quick) {
        Ok(b) => {
            for (all, new) in bulkhead.iter_mut().zip(b) {
                all.extend(new);
            }
            None
        }
        Err(e) => Some(e),
    };
    let track_failed = match track_bench() {
        Ok(b) => {
            for (all, new) in bulkhead.iter_mut().zip(b) {
                all.extend(new);
            }
            None
        }
        Err(e) => Some(e),
    };
    // The Linux boot, the shared disk and the network run with --quick
    // too: they are short, and their figures are the ones that matter.
    let mut merge = |r: Result<(TwoRuns, TwoRuns)>| match r {
        Ok((n, b)) => {
            for (all, new) in native.iter_mut().zip(n) {
                all.extend(new);
            }
            for (all, new) in bulkhead.iter_mut().zip(b) {
                all.extend(new);
            }
            None
        }
        Err(e) => Some(e),
    };
    let linux_failed = merge(linux_boot());
    let disk_failed = merge(disk_bench());
    let net_failed = merge(net_bench());
    // Live migration between two machines: Bulkhead only (natively there
    // is no VM to move), two runs as for every other figure.
    let migrate_failed = (|| -> Result<()> {
        for (i, all) in bulkhead.iter_mut().enumerate() {
            println!("migrating between two machines, run {}…", i + 1);
            all.extend(crate::migtest::bench_run(quick)?);
        }
        Ok(())
    })()
    .err();

    // Mixed criticality: Bulkhead only (there is no native pair); skipped
    // by --quick, which checks the harness, not the figures.
    let mixed_failed = if quick {
        None
    } else {
        match mixed_criticality() {
            Ok(b) => {
                for (all, new) in bulkhead.iter_mut().zip(b) {
                    all.extend(new);
                }
                None
            }
            Err(e) => Some(e),
        }
    };

    let rows = rows(&native[0], &bulkhead[0]);
    println!();
    print!("{}", table(&rows));

    let mut diffs = differences("native", &native[0], &native[1]);
    diffs.extend(differences("bulkhead", &bulkhead[0], &bulkhead[1]));
    if diffs.is_empty() {
        println!("\nfigures repeat exactly (two runs of each side)");
    } else {
        println!("\nfigures differ between runs:");
        for d in &diffs {
            println!("  {d}");
        }
    }

    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("results.json");
    let text = serde_json::to_string_pretty(&results_json(&rows))?;
    std::fs::write(&path, text + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    let failed = [
        ("the shared-pCPU benchmark", pool_failed),
        ("the dirty-tracking benchmark", track_failed),
        ("the Linux boot benchmark", linux_failed),
        ("the migration benchmark", migrate_failed),
        ("the disk benchmark", disk_failed),
        ("the network benchmark", net_failed),
        ("the mixed-criticality benchmark", mixed_failed),
    ];
    if let Some((what, Some(e))) = failed.into_iter().find(|(_, e)| e.is_some()) {
        println!("\n{what} failed: {e:#}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench guest's figures that a pool VM on one pCPU turns into the
/// scheduler's: (its name there, the name reported).
const POOL_FIGURES: &[(&str, &str)] = &[
    ("ipi", "ipi_shared"),
    ("ipi.min", "ipi_shared.min"),
    ("ipi.max", "ipi_shared.max"),
    ("wfi_wake", "wake_latency"),
    ("wfi_wake.min", "wake_latency.min"),
    ("wfi_wake.max", "wake_latency.max"),
    ("hvc_null", "pool_hvc_null"),
];

/// Two runs of the bench guest as a pool VM whose two vCPUs share one
/// pCPU (configs/bench-pool.toml): IPIs between vCPUs on one pCPU, the
/// wake-up of a vCPU waiting in WFI (one vCPU switch), and the null
/// hypercall of a pool vCPU; then two runs of two VMs ping-ponging on one
/// pCPU (configs/bench-vcpu-switch.toml): `vcpu_switch` between VMs.
fn pool_bench(quick: bool) -> Result<TwoRuns> {
    let pick =
        |full: &'static str, short: &'static str| Path::new(if quick { short } else { full });
    let config = pick("configs/bench-pool.toml", "configs/bench-pool-quick.toml");
    let mut runs: TwoRuns = [Vec::new(), Vec::new()];
    let args = bare_metal_args(config)?;
    for (i, run) in runs.iter_mut().enumerate() {
        let figures = measure("bulkhead pool", i + 1, &args, TIMEOUT)?;
        for &(from, to) in POOL_FIGURES {
            let f = figures
                .iter()
                .find(|f| f.name == from)
                .with_context(|| format!("the pool run printed no {from} figure"))?;
            run.push(Figure {
                name: to.to_owned(),
                ..f.clone()
            });
        }
    }
    let config = pick(
        "configs/bench-vcpu-switch.toml",
        "configs/bench-vcpu-switch-quick.toml",
    );
    let args = bare_metal_args(config)?;
    for (i, run) in runs.iter_mut().enumerate() {
        run.extend(measure("bulkhead vcpu switch", i + 1, &args, TIMEOUT)?);
    }
    Ok(runs)
}

/// Two runs of the bench guest as a pool VM (configs/bench-track.toml)
/// timing `mem_write` and `mem_stream` before and after the shell's
/// `track bench` turns on dirty tracking as a migration's pre-copy does:
/// the figures `mem_write_tracked`, `mem_stream_tracked` and their
/// `_untracked` twins, side by side in one run.
fn track_bench() -> Result<TwoRuns> {
    let args = bare_metal_args(Path::new("configs/bench-track.toml"))?;
    // The shell has the console first (no VM has a userland); Ctrl-] then
    // gives it to the guest, which waits for a key.
    let script = [
        ("press a key once tracking is on", "track bench\r"),
        ("bench: dirty pages tracked", "\x1dg"),
        ("bench done", ""),
    ];
    let mut runs: TwoRuns = [Vec::new(), Vec::new()];
    for (i, run) in runs.iter_mut().enumerate() {
        let figures = measure_scripted("bulkhead tracked", i + 1, &args, TIMEOUT, &script)?;
        let get = |want: &str| {
            figures
                .iter()
                .find(|f| f.name == want)
                .map(|f| f.value)
                .with_context(|| format!("the tracked run printed no {want} figure"))
        };
        let mut ratios = Vec::new();
        for name in ["mem_write", "mem_stream"] {
            let r = get(&format!("{name}_tracked"))? / get(&format!("{name}_untracked"))?.max(1.0);
            ratios.push(Figure {
                name: format!("{name}_tracking_ratio"),
                unit: "x".into(),
                text: format!("{r:.3}"),
                value: r,
            });
        }
        run.extend(figures);
        run.extend(ratios);
    }
    Ok(runs)
}

/// QEMU's arguments for a config of bare-metal guests, built.
fn bare_metal_args(config: &Path) -> Result<Vec<String>> {
    println!("building {}…", config.display());
    let built = build::build(config, Output::Progress)?;
    let mut args = qemu::machine_args(built.cpus, built.ram_mib, ",dtb-randomness=off");
    args.extend(ICOUNT.map(String::from));
    args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
    Ok(args)
}

/// The mixed-criticality configs: the safety VM's timer latency with Linux
/// idle (and the channel round trip from Linux user space), then with
/// Linux stressed and storming the channel.
const MIXED_CONFIGS: [&str; 2] = [
    "configs/bench-safety-idle.toml",
    "configs/bench-safety-stress.toml",
];

/// Two Bulkhead runs of each mixed-criticality config, figures merged per
/// run.
fn mixed_criticality() -> Result<TwoRuns> {
    let mut runs: TwoRuns = [Vec::new(), Vec::new()];
    for config in MIXED_CONFIGS {
        let config = Path::new(config);
        println!("building {}…", config.display());
        let built = build::build(config, Output::Progress)?;
        let mut args = qemu::machine_args(built.cpus, built.ram_mib, ",dtb-randomness=off");
        args.extend(ICOUNT.map(String::from));
        args.extend(qemu::disk_args(&built.disks));
        args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
        let side = config
            .file_stem()
            .map_or("mixed".into(), |s| s.to_string_lossy().into_owned());
        for (i, run) in runs.iter_mut().enumerate() {
            run.extend(measure(&side, i + 1, &args, LINUX_TIMEOUT)?);
        }
    }
    Ok(runs)
}

/// The figures of two runs of one side.
type TwoRuns = [Vec<Figure>; 2];

/// The Linux config of the boot benchmark.
const LINUX_CONFIG: &str = "configs/bench-linux.toml";

/// Two native and two Bulkhead boots of configs/bench-linux.toml; returns
/// the figures of each run, native first.
fn linux_boot() -> Result<(TwoRuns, TwoRuns)> {
    let pair = LinuxPair::build(LINUX_CONFIG, true)?;
    let native = [
        pair.native("native linux", 1, &[])?,
        pair.native("native linux", 2, &[])?,
    ];
    let bulkhead = [
        pair.bulkhead("bulkhead linux", 1, &[])?,
        pair.bulkhead("bulkhead linux", 2, &[])?,
    ];
    Ok((native, bulkhead))
}

/// One Linux config booted under Bulkhead and natively (the config's first
/// Linux VM alone, same kernel, initramfs and command line), both with
/// the board's disks.
struct LinuxPair {
    built: build::Built,
    bulkhead_args: Vec<String>,
    native_args: Vec<String>,
}

impl LinuxPair {
    /// Builds `config`; `icount`: in virtual time (else host time).
    fn build(config: &str, icount: bool) -> Result<LinuxPair> {
        let config = Path::new(config);
        println!("building {}…", config.display());
        let mut built = build::build(config, Output::Progress)?;
        let linux = build::native_linux(config)?;
        let time: &[&str] = if icount { &ICOUNT } else { &[] };
        if !icount {
            // In host time the disk's images live in memory when the host
            // has a tmpfs: writing 256 MiB to the host's own disk puts its
            // writeback (which lags into the next run) into the figures.
            let shm = Path::new("/dev/shm");
            if shm.is_dir() {
                for p in &mut built.disks {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    *p = shm.join(format!("bulkhead-{}", name.unwrap_or_default()));
                }
            }
        }
        let mut bulkhead_args =
            qemu::machine_args(built.cpus, built.ram_mib, ",dtb-randomness=off");
        bulkhead_args.extend(time.iter().map(|a| (*a).to_owned()));
        bulkhead_args.extend(qemu::disk_args(&built.disks));
        bulkhead_args.extend(qemu::console_and_kernel(CAPTURED_CONSOLE, &built.image));
        let mut native_args =
            qemu::native_linux_args(&linux, ",dtb-randomness=off", CAPTURED_CONSOLE);
        native_args.extend(time.iter().map(|a| (*a).to_owned()));
        native_args.extend(qemu::disk_args(&built.disks));
        Ok(LinuxPair {
            built,
            bulkhead_args,
            native_args,
        })
    }

    fn native(&self, side: &str, run: usize, must: &[&str]) -> Result<Vec<Figure>> {
        self.run(side, run, &self.native_args, must)
    }

    fn bulkhead(&self, side: &str, run: usize, must: &[&str]) -> Result<Vec<Figure>> {
        self.run(side, run, &self.bulkhead_args, must)
    }

    /// One run on blank disks, which must print every figure in `must`.
    fn run(&self, side: &str, run: usize, args: &[String], must: &[&str]) -> Result<Vec<Figure>> {
        build::blank_disks(&self.built)?;
        let figures = measure(side, run, args, LINUX_TIMEOUT)?;
        if let Some(name) = must.iter().find(|n| !figures.iter().any(|f| &f.name == *n)) {
            bail!("{side} run {run} printed no {name} figure");
        }
        Ok(figures)
    }
}

/// Disk images that [`LinuxPair::build`] put on /dev/shm are memory:
/// deleted when the pair is done with, failed runs included.
impl Drop for LinuxPair {
    fn drop(&mut self) {
        for p in self
            .built
            .disks
            .iter()
            .filter(|p| p.starts_with("/dev/shm"))
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Each figure of `a` with the higher of its value there and in `b`
/// (throughputs: the run the host disturbed less).
fn best(a: &[Figure], b: &[Figure]) -> Vec<Figure> {
    a.iter()
        .map(|f| match b.iter().find(|g| g.name == f.name) {
            Some(g) if g.value > f.value => g.clone(),
            _ => f.clone(),
        })
        .collect()
}

/// The network benchmark's config.
const NET_CONFIG: &str = "configs/bench-net.toml";

/// Two native runs (loopback in one VM: there is no KVM to nest here) and
/// two Bulkhead runs (VM to VM over the switch) of configs/bench-net.toml.
fn net_bench() -> Result<(TwoRuns, TwoRuns)> {
    const MUST: &[&str] = &["virtio_net_vm_to_vm", "virtio_net_rtt"];
    let pair = LinuxPair::build(NET_CONFIG, true)?;
    let native = [
        pair.native("native net (loopback)", 1, MUST)?,
        pair.native("native net (loopback)", 2, MUST)?,
    ];
    let bulkhead = [
        pair.bulkhead("bulkhead net", 1, MUST)?,
        pair.bulkhead("bulkhead net", 2, MUST)?,
    ];
    Ok((native, bulkhead))
}

/// The shared-disk benchmark's config.
const DISK_CONFIG: &str = "configs/bench-disk.toml";

/// The figures every run of [`DISK_CONFIG`] must print.
const DISK_FIGURES: &[&str] = &["virtio_blk_write", "virtio_blk_read", "virtio_blk_4k_iops"];

/// Two native and two Bulkhead runs of configs/bench-disk.toml, each on a
/// blank disk image: natively the kernel drives QEMU's virtio-blk-device
/// itself, under Bulkhead it drives Bulkhead's over the same device.
///
/// These run in host time, not under `-icount`: there, time a vCPU spends
/// waiting for QEMU's I/O thread is not instructions: when the vCPU
/// sleeps, virtual time jumps to its next timer. Host-time MiB/s of the
/// same workload is the comparison that means something; it is noisier,
/// so both runs are reported, and `--disk-pairs` repeats it
/// (docs/benchmarks.md).
fn disk_bench() -> Result<(TwoRuns, TwoRuns)> {
    let pair = LinuxPair::build(DISK_CONFIG, false)?;
    // Interleaved, so a busy spell of the host hits both sides alike; the
    // first run of each side reports the better of its two figures (both
    // are listed where they differ).
    let n1 = pair.native("native disk", 1, DISK_FIGURES)?;
    let b1 = pair.bulkhead("bulkhead disk", 1, DISK_FIGURES)?;
    let n2 = pair.native("native disk", 2, DISK_FIGURES)?;
    let b2 = pair.bulkhead("bulkhead disk", 2, DISK_FIGURES)?;
    Ok(([best(&n1, &n2), n2], [best(&b1, &b2), b2]))
}

/// `cargo xtask bench --disk-pairs N`: `n` interleaved native/Bulkhead
/// runs of configs/bench-disk.toml, each pair's ratios and the median
/// ratio of each figure. A pair is two runs back to back, so the host's
/// drift over the whole series (which moves both sides alike) mostly
/// cancels in its ratio.
pub fn disk_pairs(n: usize) -> Result<ExitCode> {
    if n == 0 {
        bail!("--disk-pairs needs at least one pair");
    }
    let pair = LinuxPair::build(DISK_CONFIG, false)?;
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); DISK_FIGURES.len()];
    let mut lines = Vec::new();
    for i in 1..=n {
        let native = pair.native("native disk", i, DISK_FIGURES)?;
        let bulkhead = pair.bulkhead("bulkhead disk", i, DISK_FIGURES)?;
        let mut cells = Vec::new();
        for (k, name) in DISK_FIGURES.iter().enumerate() {
            let get = |side: &[Figure]| side.iter().find(|f| f.name == *name).map(|f| f.value);
            let (Some(a), Some(b)) = (get(&native), get(&bulkhead)) else {
                bail!("pair {i} has no {name} figure");
            };
            let r = b / a.max(f64::MIN_POSITIVE);
            ratios[k].push(r);
            cells.push(format!("{name} {a:.1} / {b:.1} = {r:.3}"));
        }
        let line = format!("pair {i}: {}", cells.join(", "));
        println!("{line}");
        lines.push(line);
    }
    println!();
    for line in &lines {
        println!("{line}");
    }
    for (name, mut r) in DISK_FIGURES.iter().zip(ratios) {
        r.sort_by(f64::total_cmp);
        let median = if r.len() % 2 == 1 {
            r[r.len() / 2]
        } else {
            (r[r.len() / 2 - 1] + r[r.len() / 2]) / 2.0
        };
        let (lo, hi) = (r[0], r[r.len() - 1]);
        println!("{name}: median ratio {median:.3} of {n} pairs (from {lo:.3} to {hi:.3})");
    }
    Ok(ExitCode::SUCCESS)
}

/// The results as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let mut cells = vec![["name", "unit", "native", "bulkhead", "ratio"].map(String::from)];
    for r in rows {
        cells.push([
            r.name.clone(),
            r.unit.clone(),
            r.native.as_ref().map_or("-".to_owned(), |n| n.text.clone()),
            r.bulkhead.text.clone(),
            r.ratio().map_or("-".to_owned(), |x| format!("{x:.3}")),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| cells.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            // Name and unit left-aligned, numbers right-aligned.
            .map(|(c, (cell, w))| {
                if c < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(name: &str, text: &str) -> Figure {
        Figure {
            name: name.into(),
            unit: "instructions".into(),
            text: text.into(),
            value: text.parse().unwrap(),
        }
    }

    #[test]
    fn best_takes_the_higher_figure_of_two_runs() {
        let a = vec![fig("r", "10.5"), fig("w", "30")];
        let b = vec![fig("r", "12.0"), fig("w", "20")];
        let got: Vec<f64> = best(&a, &b).iter().map(|f| f.value).collect();
        assert_eq!(got, [12.0, 30.0]);
    }

    #[test]
    fn tagged_and_untagged_bench_lines_parse() {
        assert_eq!(
            parse_line("[bench] BENCH hvc_null instructions 123"),
            Some(fig("hvc_null", "123"))
        );
        assert_eq!(
            parse_line("BENCH hvc_null instructions 123\r"),
            Some(fig("hvc_null", "123"))
        );
    }

    #[test]
    fn malformed_bench_lines_are_ignored() {
        assert_eq!(parse_line("BENCH hvc_null instructions"), None);
        assert_eq!(parse_line("BENCH hvc_null instructions lots"), None);
        assert_eq!(parse_line("[bench] starting BENCHMARKS"), None);
        assert_eq!(parse_line("nothing here"), None);
    }

    #[test]
    fn log_keeps_figures_in_order() {
        let log = "boot\n[bench] BENCH a ns 1\nnoise\n[bench] BENCH b ns 2.5\n";
        let figs = parse_log(log);
        assert_eq!(
            figs.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(figs[1].value, 2.5);
    }

    #[test]
    fn ratio_is_null_without_a_native_figure() {
        let rows = rows(
            &[fig("a", "100")],
            &[fig("a", "150"), fig("hvc_null", "40")],
        );
        let json = results_json(&rows);
        assert_eq!(json[0]["native"], json!(100));
        assert_eq!(json[0]["bulkhead"], json!(150));
        assert_eq!(json[0]["ratio"], json!(1.5));
        assert_eq!(json[1]["native"], Value::Null);
        assert_eq!(json[1]["ratio"], Value::Null);
    }

    #[test]
    fn identical_runs_have_no_differences() {
        let run = [fig("a", "1"), fig("b", "2")];
        assert!(differences("native", &run, &run).is_empty());
    }

    #[test]
    fn changed_and_missing_figures_are_listed() {
        let d = differences(
            "bulkhead",
            &[fig("a", "1"), fig("b", "2")],
            &[fig("a", "3"), fig("c", "4")],
        );
        assert_eq!(
            d,
            [
                "bulkhead a: 1 then 3",
                "bulkhead b: only in the first run",
                "bulkhead c: only in the second run"
            ]
        );
    }

    #[test]
    fn table_has_header_and_dash_for_missing_native() {
        let t = table(&rows(&[], &[fig("hvc_null", "40")]));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("name"));
        assert!(lines[1].starts_with("hvc_null"));
        assert!(lines[1].contains(" - "));
    }
}
