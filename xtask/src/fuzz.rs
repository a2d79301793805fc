//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (docs/fuzzing.md).
//!
//! The fuzz package is a workspace of its own. It is built `--release` for
//! the host triple with sanitizer-coverage flags, which the stable compiler
//! accepts as codegen options: libFuzzer reads the inline 8-bit counters,
//! the PC table and the comparison hooks they insert. Naming the host triple
//! keeps the flags off build scripts and proc macros, and the separate
//! target directory (`fuzz/target`) keeps the main build's artifacts valid.
//!
//! - `--smoke` (what `cargo xtask test` runs): every target for
//!   [`SMOKE_SECONDS`] on a temporary copy of its committed corpus, failing
//!   on any crash.
//! - Otherwise targets grow a working corpus in `fuzz/target/corpus/<t>`,
//!   starting from the committed one in `fuzz/corpus/<t>`.
//! - `--merge` minimises: the committed and working corpora are merged into
//!   the smallest set with the same coverage, which replaces the committed
//!   one.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::{cargo, repo_root};

/// Every target, in the order the smoke run takes them.
pub const TARGETS: [&str; 13] = [
    "channel",
    "exit_decode",
    "psci",
    "pl011",
    "vgic_regs",
    "config",
    "guest_fdt",
    "virtqueue",
    "virtio_blk",
    "virtio_net",
    "net_offload",
    "snapshot_stream",
    "virtio_state",
];

/// Seconds per target in a smoke run: the targets take about five minutes
/// together, so the whole of `cargo xtask test` stays inside CI's 30.
pub const SMOKE_SECONDS: u64 = 25;
/// Seconds per target in a plain run.
pub const DEFAULT_SECONDS: u64 = 300;
/// libFuzzer's per-input time limit, in seconds: a slower input is reported
/// as a hang.
const INPUT_TIMEOUT_S: u32 = 10;

/// Sanitizer coverage for libFuzzer on a stable compiler (`-Cpasses` and
/// `-Cllvm-args` are stable codegen options), the `fuzzing` cfg
/// `libfuzzer-sys` expects, and the checks a fuzzer should trip.
const RUSTFLAGS: [&str; 8] = [
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg=fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// What `cargo xtask fuzz` was asked to do.
pub struct Options {
    pub target: Option<String>,
    pub seconds: Option<u64>,
    pub smoke: bool,
    pub merge: bool,
}

pub fn run(opts: Options) -> Result<ExitCode> {
    let targets = select(opts.target.as_deref())?;
    if opts.merge {
        let bins = build(&targets)?;
        for t in &targets {
            merge(&bins, t)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let default = if opts.smoke {
        SMOKE_SECONDS
    } else {
        DEFAULT_SECONDS
    };
    let seconds = opts.seconds.unwrap_or(default);
    if seconds == 0 && (opts.smoke || targets.len() > 1) {
        bail!("--seconds 0 (run until interrupted) needs one TARGET and no --smoke");
    }
    if opts.smoke {
        smoke_targets(&targets, seconds)?;
    } else {
        let bins = build(&targets)?;
        for t in &targets {
            let work = fuzz_dir().join("target/corpus").join(t);
            std::fs::create_dir_all(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            let committed = corpus_dir(t);
            let mut dirs = vec![work.clone()];
            if committed.is_dir() {
                dirs.push(committed);
            }
            let stats = fuzz_one(&bins, t, &dirs, seconds)?;
            println!("{}", stats.summary(t));
            println!("  working corpus: {}", work.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The smoke run `cargo xtask test` includes: every target for `seconds`
/// each on a temporary copy of its committed corpus. Fails naming the
/// target and the crash input if libFuzzer finds one.
pub fn smoke(seconds: u64) -> Result<()> {
    smoke_targets(&TARGETS, seconds)
}

fn smoke_targets(targets: &[&'static str], seconds: u64) -> Result<()> {
    let bins = build(targets)?;
    let scratch = std::env::temp_dir().join(format!("bulkhead-fuzz-smoke-{}", std::process::id()));
    let result = targets.iter().try_for_each(|t| {
        let corpus = scratch.join(t);
        copy_corpus(&corpus_dir(t), &corpus)?;
        let stats = fuzz_one(&bins, t, std::slice::from_ref(&corpus), seconds)?;
        println!("{}", stats.summary(t));
        Ok(())
    });
    // Best effort: a leftover directory in /tmp is harmless.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// `target`, or all of them.
fn select(target: Option<&str>) -> Result<Vec<&'static str>> {
    match target {
        None => Ok(TARGETS.to_vec()),
        Some(name) => match TARGETS.iter().find(|t| **t == name) {
            Some(t) => Ok(vec![*t]),
            None => bail!(
                "no fuzz target {name:?}; the targets are {}",
                TARGETS.join(", ")
            ),
        },
    }
}

fn fuzz_dir() -> PathBuf {
    repo_root().join("fuzz")
}

/// The committed seed corpus of `target`.
fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// Where libFuzzer writes a crashing input of `target`.
fn artifact_dir(target: &str) -> PathBuf {
    fuzz_dir().join("target/artifacts").join(target)
}

/// The host's target triple, from the pinned rustc.
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .current_dir(repo_root())
        .output()
        .context("cannot run rustc -vV")?;
    ensure!(out.status.success(), "rustc -vV failed ({})", out.status);
    parse_host(&String::from_utf8_lossy(&out.stdout)).context("rustc -vV names no host")
}

/// The `host:` line of `rustc -vV`.
fn parse_host(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("host:"))
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Builds `targets`; returns the directory holding the binaries.
fn build(targets: &[&str]) -> Result<PathBuf> {
    crate::prereq::ensure_cxx()?;
    let host = host_triple()?;
    let target_dir = fuzz_dir().join("target");
    println!(
        "building fuzz targets {} (release, sanitizer coverage)…",
        targets.join(", ")
    );
    let mut cmd = cargo();
    cmd.arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(fuzz_dir().join("Cargo.toml"))
        .args(["--target", &host])
        .arg("--target-dir")
        .arg(&target_dir);
    for t in targets {
        cmd.args(["--bin", t]);
    }
    // CARGO_ENCODED_RUSTFLAGS wins over RUSTFLAGS; both would also reach
    // the main build, so they are set for this command only.
    cmd.env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\x1f"))
        .env_remove("RUSTFLAGS");
    let status = cmd.status().context("cannot run cargo build")?;
    ensure!(
        status.success(),
        "building the fuzz targets failed ({status})"
    );
    Ok(target_dir.join(host).join("release"))
}

/// Makes `dir` an empty directory.
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Replaces `to` with a copy of the files in `from` (which may not exist).
fn copy_corpus(from: &Path, to: &Path) -> Result<()> {
    fresh_dir(to)?;
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Runs `target` for `seconds` on `dirs` (new inputs go to the first).
fn fuzz_one(bins: &Path, target: &str, dirs: &[PathBuf], seconds: u64) -> Result<Stats> {
    let bin = bins.join(target);
    let artifacts = artifact_dir(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("cannot create {}", artifacts.display()))?;
    let log_path = fuzz_dir().join("target/logs").join(format!("{target}.log"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.args(dirs)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1");
    let dict = fuzz_dir().join("dicts").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    match seconds {
        0 => println!(
            "fuzzing {target} until interrupted (log: {})…",
            log_path.display()
        ),
        s => println!("fuzzing {target} for {s} s…"),
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    // Long runs say how they are doing once a minute.
    let start = Instant::now();
    let mut reported = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
        let elapsed = start.elapsed().as_secs();
        let minutes = elapsed / 60;
        if minutes > reported && (seconds == 0 || elapsed + 10 < seconds) {
            reported = minutes;
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let s = Stats::parse(&text);
            println!(
                "  {target} after {minutes} min: coverage {} edges, corpus {}",
                s.cov_end.map_or_else(|| "?".to_owned(), |c| c.to_string()),
                s.corpus.as_deref().unwrap_or("?")
            );
        }
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{}",
            failure(target, &bin, &text, &log_path, &status.to_string())
        );
    }
    Ok(Stats::parse(&text))
}

/// The message for a target that crashed, hung or ran out of memory.
fn failure(target: &str, bin: &Path, log: &str, log_path: &Path, status: &str) -> String {
    let mut msg = format!("fuzz target {target} failed ({status})");
    match artifact(log) {
        Some(path) => {
            let _ = write!(
                msg,
                "\n  crash input: {path}\n  reproduce:   {} {path}",
                bin.display()
            );
            if let Ok(bytes) = std::fs::read(&path) {
                let shown = bytes.len().min(256);
                let _ = write!(
                    msg,
                    "\n  input ({} bytes{}): {}",
                    bytes.len(),
                    if shown < bytes.len() {
                        ", first 256"
                    } else {
                        ""
                    },
                    hex(&bytes[..shown])
                );
            }
        }
        None => msg.push_str("\n  libFuzzer wrote no crash input"),
    }
    let _ = write!(msg, "\n  full log: {}\n", log_path.display());
    msg.push_str(&excerpt(log));
    msg
}

/// The crash input libFuzzer saved, from its "Test unit written to" line.
fn artifact(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| {
        l.split_once("Test unit written to ")
            .map(|(_, p)| p.trim().to_owned())
    })
}

/// The interesting part of a failed run's log: from the panic (or
/// libFuzzer's error) on, at most 40 lines; else the last 40.
fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at") || l.contains("ERROR: libFuzzer"))
        .unwrap_or(lines.len().saturating_sub(40));
    lines
        .iter()
        .skip(start)
        .take(40)
        .map(|l| format!("  | {l}\n"))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What libFuzzer reported about a run.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    /// Executions.
    runs: Option<u64>,
    exec_per_sec: Option<u64>,
    /// Coverage (edges) once the starting corpus was loaded, and at the end.
    cov_start: Option<u64>,
    cov_end: Option<u64>,
    /// Features at the end.
    features: Option<u64>,
    /// "inputs/size" of the corpus at the end, e.g. "16/871b".
    corpus: Option<String>,
    new_units: Option<u64>,
}

impl Stats {
    fn parse(log: &str) -> Stats {
        let field = |line: &str, name: &str| -> Option<String> {
            let mut words = line.split_whitespace();
            words.find(|w| *w == name)?;
            words.next().map(str::to_owned)
        };
        let number = |line: &str, name: &str| field(line, name).and_then(|v| v.parse().ok());
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
        };
        let cov_lines: Vec<&str> = log.lines().filter(|l| l.contains(" cov: ")).collect();
        let first = cov_lines.first().copied().unwrap_or("");
        let last = cov_lines.last().copied().unwrap_or("");
        Stats {
            runs: stat("stat::number_of_executed_units:"),
            exec_per_sec: stat("stat::average_exec_per_sec:"),
            cov_start: number(first, "cov:"),
            cov_end: number(last, "cov:"),
            features: number(last, "ft:"),
            corpus: field(last, "corp:"),
            new_units: stat("stat::new_units_added:"),
        }
    }

    /// One line: executions, coverage growth, corpus.
    fn summary(&self, target: &str) -> String {
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        format!(
            "fuzz {target}: {} executions ({}/s), coverage {} -> {} edges, {} features, corpus {} ({} new)",
            n(self.runs),
            n(self.exec_per_sec),
            n(self.cov_start),
            n(self.cov_end),
            n(self.features),
            self.corpus.as_deref().unwrap_or("?"),
            n(self.new_units),
        )
    }
}

/// Minimises `target`'s committed corpus together with its working corpus
/// (libFuzzer `-merge=1`): the smallest set of inputs with the same
/// coverage replaces `fuzz/corpus/<target>`.
fn merge(bins: &Path, target: &str) -> Result<()> {
    let committed = corpus_dir(target);
    let work = fuzz_dir().join("target/corpus").join(target);
    let merged = fuzz_dir().join("target/merge").join(target);
    fresh_dir(&merged)?;
    std::fs::create_dir_all(&committed)
        .with_context(|| format!("cannot create {}", committed.display()))?;
    let before = dir_size(&committed);
    let log_path = fuzz_dir()
        .join("target/logs")
        .join(format!("{target}-merge.log"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = File::create(&log_path)?;
    let mut cmd = Command::new(bins.join(target));
    cmd.arg("-merge=1").arg(&merged).arg(&committed);
    if work.is_dir() {
        cmd.arg(&work);
    }
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("cannot run the merge")?;
    ensure!(
        status.success(),
        "merging the {target} corpus failed ({status}); see {}",
        log_path.display()
    );
    copy_corpus(&merged, &committed)?;
    let after = dir_size(&committed);
    println!(
        "fuzz/corpus/{target}: {} files, {} bytes -> {} files, {} bytes",
        before.0, before.1, after.0, after.1
    );
    Ok(())
}

/// (files, bytes) in `dir`.
fn dir_size(dir: &Path) -> (usize, u64) {
    std::fs::read_dir(dir).map_or((0, 0), |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: &str = "\
INFO: Seed: 1234
INFO: Loaded 1 modules   (2783 inline 8-bit counters): 2783 [0x1, 0x2),
#2\tINITED cov: 42 ft: 42 corp: 1/1b exec/s: 0 rss: 27Mb
#3\tNEW    cov: 50 ft: 51 corp: 2/3b lim: 4 exec/s: 0 rss: 27Mb L: 2/2 MS: 1 InsertByte-
#1112201\tDONE   cov: 223 ft: 1340 corp: 455/157Kb lim: 4096 exec/s: 101109 rss: 28Mb
Done 1112201 runs in 11 second(s)
stat::number_of_executed_units: 1112201
stat::average_exec_per_sec:     101109
stat::new_units_added:          1994
";

    #[test]
    fn stats_come_from_the_first_and_last_coverage_lines() {
        let s = Stats::parse(DONE);
        assert_eq!(s.runs, Some(1_112_201));
        assert_eq!(s.exec_per_sec, Some(101_109));
        assert_eq!(s.cov_start, Some(42));
        assert_eq!(s.cov_end, Some(223));
        assert_eq!(s.features, Some(1340));
        assert_eq!(s.corpus.as_deref(), Some("455/157Kb"));
        assert_eq!(s.new_units, Some(1994));
        let line = s.summary("pl011");
        assert!(line.contains("coverage 42 -> 223 edges"), "{line}");
    }

    #[test]
    fn stats_of_an_empty_log_are_unknown() {
        assert_eq!(Stats::parse(""), Stats::default());
        assert!(Stats::default().summary("x").contains("? executions"));
    }

    const CRASH: &str = "\
#9119\tNEW    cov: 1008 ft: 1942 corp: 101/1915b lim: 25 exec/s: 9119 rss: 29Mb
thread '<unnamed>' (25808) panicked at fuzz_targets/guest_fdt.rs:188:19:
a valid config's device tree does not build
==25808== ERROR: libFuzzer: deadly signal
MS: 2 ChangeBit-CopyPart-; base unit: 0123
artifact_prefix='/r/fuzz/target/artifacts/guest_fdt/'; Test unit written to /r/fuzz/target/artifacts/guest_fdt/crash-8005926070a5
";

    #[test]
    fn crash_input_path_is_read_from_the_log() {
        assert_eq!(
            artifact(CRASH).as_deref(),
            Some("/r/fuzz/target/artifacts/guest_fdt/crash-8005926070a5")
        );
        assert_eq!(artifact(DONE), None);
    }

    #[test]
    fn failure_names_the_target_the_input_and_the_panic() {
        let msg = failure(
            "guest_fdt",
            Path::new("/r/bin/guest_fdt"),
            CRASH,
            Path::new("/r/log"),
            "exit status: 77",
        );
        assert!(msg.starts_with("fuzz target guest_fdt failed (exit status: 77)"));
        assert!(msg.contains("crash input: /r/fuzz/target/artifacts/guest_fdt/crash-8005926070a5"));
        assert!(msg.contains("reproduce:   /r/bin/guest_fdt /r/fuzz/target/artifacts/"));
        // The excerpt starts at the panic, not at the progress lines.
        let excerpt = msg.split("full log: /r/log\n").nth(1).expect("excerpt");
        assert!(excerpt.starts_with("  | thread '<unnamed>'"), "{excerpt}");
    }

    #[test]
    fn host_triple_is_the_host_line() {
        let text = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\n";
        assert_eq!(
            parse_host(text).as_deref(),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(parse_host("rustc 1.95.0\n"), None);
    }

    #[test]
    fn targets_are_selected_by_exact_name() {
        assert_eq!(select(None).unwrap(), TARGETS.to_vec());
        assert_eq!(select(Some("psci")).unwrap(), ["psci"]);
        let err = select(Some("vgic")).unwrap_err().to_string();
        assert!(err.contains("no fuzz target \"vgic\""), "{err}");
        assert!(err.contains("vgic_regs"), "{err}");
    }

    #[test]
    fn every_target_has_a_binary_and_a_seed_corpus() {
        let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "fuzz/Cargo.toml has no [[bin]] {t}"
            );
            assert!(
                fuzz_dir().join(format!("fuzz_targets/{t}.rs")).is_file(),
                "no fuzz/fuzz_targets/{t}.rs"
            );
            let (files, _) = dir_size(&corpus_dir(t));
            assert!(files > 0, "fuzz/corpus/{t} is empty");
        }
    }

    #[test]
    fn the_smoke_run_stays_about_five_minutes() {
        // Adding a target means lowering SMOKE_SECONDS (docs/fuzzing.md).
        let total = TARGETS.len() as u64 * SMOKE_SECONDS;
        assert!((250..=330).contains(&total), "{total} s");
    }

    #[test]
    fn copy_corpus_replaces_the_destination() {
        let base = std::env::temp_dir().join(format!("xtask-fuzz-test-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(&from).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("a"), b"seed").unwrap();
        std::fs::write(to.join("stale"), b"old").unwrap();
        copy_corpus(&from, &to).unwrap();
        assert_eq!(std::fs::read(to.join("a")).unwrap(), b"seed");
        assert!(!to.join("stale").exists());
        copy_corpus(&base.join("missing"), &to).unwrap();
        assert_eq!(dir_size(&to), (0, 0));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
