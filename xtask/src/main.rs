//! `cargo xtask`: Bulkhead's host tool.
//!
//! - `build`: check a system config, build the hypervisor and the guests it
//!   names, and pack them into one bootable arm64 `Image`.
//! - `run`: build, then boot the image in QEMU on this terminal.
//! - `test`: host unit tests, a cross build of every EL2/guest crate, config
//!   rejection cases and the QEMU integration tests ([`itest`]).
//! - `bench`: the benchmark guest under Bulkhead and natively, side by side.
//! - `fuzz`: the libFuzzer targets in `fuzz/` ([`fuzz`], docs/fuzzing.md).
//! - `run-native`: boot a config's first Linux VM straight on QEMU, without
//!   the hypervisor, to check the kernel, initramfs and init script alone.

mod bench;
mod build;
mod cpio;
mod debian;
mod elf;
mod fuzz;
mod image;
mod itest;
mod migtest;
mod netpeer;
mod prereq;
mod qemu;
mod snaptest;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The config `build` and `run` use when none is given.
const DEFAULT_CONFIG: &str = "configs/default.toml";
/// The config `run-native` uses when none is given.
const DEFAULT_NATIVE_CONFIG: &str = "configs/linux-shell.toml";

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Bulkhead's build, run, test and bench tool"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Build the hypervisor and guests and pack target/bulkhead/<config>.img.
    Build {
        /// System config (TOML) [default: configs/default.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Build, then boot the image in QEMU on this terminal. Exit status: 0
    /// when every VM stopped cleanly, 1 when one crashed (or reset under
    /// restart policy `never`, or never started), 2 when QEMU ended before
    /// the system did (quit with Ctrl-A X, or the hypervisor failed).
    Run {
        /// System config (TOML) [default: configs/default.toml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Save the console (everything shown, tagged by VM) to this file
        /// [default: target/bulkhead/<config>.log].
        #[arg(long)]
        log: Option<PathBuf>,
        /// `virtual`: run QEMU under -icount (one thread, time counted in
        /// guest instructions); `real`: one host thread per CPU, host
        /// time; `auto`: virtual when this host has fewer cores than the
        /// system has vCPUs.
        #[arg(long, value_enum, default_value_t = qemu::Time::Auto)]
        time: qemu::Time,
    },
    /// Boot the config's first Linux VM directly on QEMU, without Bulkhead
    /// (same kernel, initramfs, command line, vCPUs and memory).
    RunNative {
        /// System config (TOML) [default: configs/linux-shell.toml].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Unit tests, cross builds, config rejection and QEMU integration tests.
    Test {
        /// Run only the integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Skip the host unit tests and the cross build check.
        #[arg(long)]
        no_unit: bool,
    },
    /// Benchmarks under Bulkhead against a native run of the same guest.
    Bench {
        /// Use configs/bench-quick.toml when it exists.
        #[arg(long)]
        quick: bool,
        /// Run only the shared-disk benchmark, as this many interleaved
        /// native/Bulkhead pairs, and print each pair's ratios and their
        /// median (host time is noisy: docs/benchmarks.md).
        #[arg(long, value_name = "N", conflicts_with = "quick")]
        disk_pairs: Option<usize>,
    },
    /// Fuzz the guest-facing decoders and device models with libFuzzer.
    Fuzz {
        /// One target (default: all): channel, exit_decode, psci, pl011,
        /// vgic_regs, config, guest_fdt, virtqueue, virtio_blk, virtio_net,
        /// net_offload, snapshot_stream.
        target: Option<String>,
        /// Seconds per target [default: 25 with --smoke, else 300; 0 runs
        /// one target until interrupted].
        #[arg(long)]
        seconds: Option<u64>,
        /// CI mode: each target on a temporary copy of its committed corpus,
        /// failing on any crash.
        #[arg(long)]
        smoke: bool,
        /// Minimise fuzz/corpus/<target> with the working corpus instead of
        /// fuzzing.
        #[arg(long, conflicts_with_all = ["smoke", "seconds"])]
        merge: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.verb) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(verb: Verb) -> Result<ExitCode> {
    let root = repo_root();
    let cwd = std::env::current_dir()?;
    // Paths given on the command line are relative to where the user is;
    // everything else is relative to the repository root.
    let config_or = |config: Option<PathBuf>, default: &str| match config {
        None => PathBuf::from(default),
        Some(path) => {
            let path = normalize(&cwd.join(path));
            path.strip_prefix(&root)
                .map(Path::to_path_buf)
                .unwrap_or(path)
        }
    };
    let config_path = |config: Option<PathBuf>| config_or(config, DEFAULT_CONFIG);
    std::env::set_current_dir(&root)?;
    match verb {
        Verb::Build { config } => {
            prereq::ensure()?;
            let built = build::build(&config_path(config), build::Output::Progress)?;
            println!(
                "wrote {} ({} bytes, {})",
                built.image.display(),
                built.size,
                bulkhead_config::Size(built.size)
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Run { config, log, time } => {
            let log = log.map(|p| normalize(&cwd.join(p)));
            prereq::ensure()?;
            let built = build::build(&config_path(config), build::Output::Progress)?;
            qemu::run_interactive(&built, log, time)
        }
        Verb::RunNative { config } => {
            prereq::ensure()?;
            let native = build::native_linux(&config_or(config, DEFAULT_NATIVE_CONFIG))?;
            qemu::run_native_linux(&native)
        }
        Verb::Test { filter, no_unit } => {
            prereq::ensure()?;
            itest::run_all(filter.as_deref(), !no_unit)
        }
        Verb::Bench { quick, disk_pairs } => {
            prereq::ensure()?;
            match disk_pairs {
                Some(n) => bench::disk_pairs(n),
                None => bench::run(quick),
            }
        }
        Verb::Fuzz {
            target,
            seconds,
            smoke,
            merge,
        } => fuzz::run(fuzz::Options {
            target,
            seconds,
            smoke,
            merge,
        }),
    }
}

/// `path` with `.` and `..` components resolved lexically, for messages.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push(part);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// The workspace root: xtask lives one level below it.
fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target"),
    }
}

/// The cargo that started us (so the pinned toolchain is used), or `cargo`.
fn cargo() -> std::process::Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    std::process::Command::new(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_dot_and_dot_dot() {
        assert_eq!(
            normalize(Path::new("/repo/crates/../configs/./a.toml")),
            Path::new("/repo/configs/a.toml")
        );
        assert_eq!(normalize(Path::new("../x")), Path::new("../x"));
    }
}
