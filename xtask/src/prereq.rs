//! Prerequisites every verb needs: the Rust bare-metal targets and QEMU
//! (>= 7.2, installed from Debian bookworm-backports when missing); and
//! those of single verbs: U-Boot for one test, a C++ compiler for `fuzz`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use anyhow::{bail, Context, Result};

use crate::qemu::QEMU;

/// The targets the hypervisor (softfloat, so EL2 never touches FP/SIMD
/// state) and the guests build for, and the Linux user-space channel tool
/// (static musl).
const TARGETS: [&str; 3] = [
    "aarch64-unknown-none-softfloat",
    "aarch64-unknown-none",
    "aarch64-unknown-linux-musl",
];
/// Oldest QEMU known to boot `virt,virtualization=on,gic-version=3` images
/// correctly (Debian bookworm's).
const MIN_QEMU: (u32, u32) = (7, 2);
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/bulkhead-backports.sources";
const NOT_FOUND: &str =
    "qemu-system-aarch64 not found: install Debian's qemu-system-arm (>= 7.2) and ipxe-qemu";

/// Makes sure the targets and QEMU are there (once per process).
pub fn ensure() -> Result<()> {
    static DONE: Once = Once::new();
    let mut result = Ok(());
    DONE.call_once(|| result = ensure_targets().and_then(|()| ensure_qemu()));
    result
}

fn ensure_targets() -> Result<()> {
    let installed = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        // Without rustup we cannot add targets; let cargo report what is missing.
        _ => return Ok(()),
    };
    let missing: Vec<&str> = TARGETS
        .into_iter()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "adding Rust targets: rustup target add {}",
        missing.join(" ")
    );
    let status = Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .status()
        .context("cannot run rustup")?;
    if !status.success() {
        bail!("`rustup target add {}` failed", missing.join(" "));
    }
    Ok(())
}

/// `(major, minor)` from `qemu-system-aarch64 --version`'s first line,
/// e.g. "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)".
pub fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let line = text.lines().next()?;
    let rest = &line[line.find("version ")? + "version ".len()..];
    let version = rest.split_whitespace().next()?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

fn installed_qemu() -> Option<(u32, u32)> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    // An unparsable version from a working binary: assume it is new enough.
    Some(parse_qemu_version(&String::from_utf8_lossy(&out.stdout)).unwrap_or((u32::MAX, 0)))
}

fn ensure_qemu() -> Result<()> {
    let problem = match installed_qemu() {
        Some(v) if v >= MIN_QEMU => return Ok(()),
        Some((major, minor)) => format!(
            "{QEMU} {major}.{minor} is too old: install Debian's qemu-system-arm (>= 7.2) and ipxe-qemu"
        ),
        None => NOT_FOUND.to_owned(),
    };
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        bail!("{problem}");
    }
    install_qemu()?;
    match installed_qemu() {
        Some(v) if v >= MIN_QEMU => Ok(()),
        _ => bail!("{problem} (the apt-get install did not provide it)"),
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Installs `qemu-system-arm` (which provides `qemu-system-aarch64`) and
/// `ipxe-qemu` (without it QEMU cannot find `efi-virtio.rom`) from
/// `<codename>-backports`: bookworm itself only has QEMU 7.2.
fn install_qemu() -> Result<()> {
    println!("Installing QEMU 10 from bookworm-backports (qemu-system-arm, ipxe-qemu)…");
    let codename = os_codename(&read("/etc/os-release"))
        .context("cannot find VERSION_CODENAME in /etc/os-release")?;
    let backports = format!("{codename}-backports");
    if !add_backports_source(&codename)? {
        println!("{backports} is already in apt's sources");
    }

    apt(&["update"])?;
    let packages = ["qemu-system-arm", "ipxe-qemu"];
    if apt(&[&["install", "-y", "-t", &backports][..], &packages].concat()).is_err() {
        println!("installing from {backports} failed; falling back to {codename}'s qemu-system-arm (QEMU 7.2)");
        apt(&[&["install", "-y"][..], &packages].concat())?;
    }
    Ok(())
}

/// The C++ compiler the `cc` crate uses for libFuzzer (`libfuzzer-sys`
/// builds it from source): `$CXX`, else `c++`.
fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned())
}

/// Makes sure a C++ compiler exists for the fuzz targets, installing Debian's
/// `g++` when root and apt allow it.
pub fn ensure_cxx() -> Result<()> {
    let works = || {
        Command::new(cxx())
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if works() {
        return Ok(());
    }
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        bail!(
            "no C++ compiler ({}) for libFuzzer: install Debian's g++",
            cxx()
        );
    }
    println!("Installing a C++ compiler for libFuzzer (g++)…");
    if apt(&["install", "-y", "g++"]).is_err() {
        apt(&["update"])?;
        apt(&["install", "-y", "g++"])?;
    }
    if !works() {
        bail!("g++ is installed but {} does not run", cxx());
    }
    Ok(())
}

/// Debian's U-Boot for QEMU's arm64 `virt` machine (package `u-boot-qemu`),
/// used to check that the image boots with `booti` as well as `-kernel`.
pub const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// Makes sure [`UBOOT`] exists, installing `u-boot-qemu` when root and apt
/// allow it.
pub fn ensure_uboot() -> Result<PathBuf> {
    let path = PathBuf::from(UBOOT);
    if path.exists() {
        return Ok(path);
    }
    if !is_root() || !Path::new("/usr/bin/apt-get").exists() {
        bail!("{UBOOT} not found: install Debian's u-boot-qemu");
    }
    println!("Installing Debian's U-Boot for QEMU (u-boot-qemu)…");
    if apt(&["install", "-y", "u-boot-qemu"]).is_err() {
        apt(&["update"])?;
        apt(&["install", "-y", "u-boot-qemu"])?;
    }
    if !path.exists() {
        bail!("u-boot-qemu is installed but {UBOOT} is missing");
    }
    Ok(path)
}

/// Whether apt's sources (sources.list and sources.list.d) name `suite`.
pub fn apt_has_suite(suite: &str) -> bool {
    let mut sources = vec![read("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            sources.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    sources.iter().any(|s| mentions_suite(s, suite))
}

/// Adds `<codename>-backports` to apt's sources from the mirror the main
/// suite uses, unless it is there already; returns whether it added it.
/// Does not run `apt-get update`.
pub fn add_backports_source(codename: &str) -> Result<bool> {
    let backports = format!("{codename}-backports");
    if apt_has_suite(&backports) {
        return Ok(false);
    }
    let mirror = main_mirror(
        &read("/etc/apt/sources.list.d/debian.sources"),
        &read("/etc/apt/sources.list"),
        codename,
    );
    println!("adding {backports} from {mirror} to {BACKPORTS_SOURCES}");
    std::fs::write(BACKPORTS_SOURCES, backports_stanza(&mirror, codename))
        .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    Ok(true)
}

/// The running system's Debian codename, from /etc/os-release.
pub fn codename() -> Option<String> {
    os_codename(&read("/etc/os-release"))
}

/// Runs apt-get with its output on our terminal, so progress is visible.
pub fn apt(args: &[&str]) -> Result<()> {
    println!("+ apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `VERSION_CODENAME` from /etc/os-release.
pub fn os_codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let value = l.trim().strip_prefix("VERSION_CODENAME=")?;
        let value = value.trim_matches(|c| c == '"' || c == '\'');
        (!value.is_empty()).then(|| value.to_owned())
    })
}

/// Whether an apt sources file (one-line or deb822 format) names `suite`.
pub fn mentions_suite(sources: &str, suite: &str) -> bool {
    sources.lines().any(|line| {
        let line = line.split('#').next().unwrap_or("");
        if let Some(suites) = line.trim().strip_prefix("Suites:") {
            suites.split_whitespace().any(|s| s == suite)
        } else {
            let mut words = line.split_whitespace();
            matches!(words.next(), Some("deb" | "deb-src")) && words.any(|w| w == suite)
        }
    })
}

/// The mirror the main Debian suite already uses: the first URI of the
/// deb822 stanza (debian.sources) whose `Suites:` lists `codename`, else the
/// first one-line `deb` entry for `codename` (sources.list), else
/// deb.debian.org.
pub fn main_mirror(deb822: &str, one_line: &str, codename: &str) -> String {
    for stanza in deb822.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
        };
        let has_suite =
            field("Suites:").is_some_and(|s| s.split_whitespace().any(|w| w == codename));
        if has_suite {
            if let Some(uri) = field("URIs:").and_then(|u| u.split_whitespace().next()) {
                return uri.to_owned();
            }
        }
    }
    for line in one_line.lines() {
        // deb [options] URI suite components...
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.find(']').map_or("", |end| &opts[end + 1..]),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            if suite == codename {
                return uri.to_owned();
            }
        }
    }
    DEFAULT_MIRROR.to_owned()
}

/// The deb822 stanza that adds `<codename>-backports`.
pub fn backports_stanza(mirror: &str, codename: &str) -> String {
    format!(
        "Types: deb\nURIs: {mirror}\nSuites: {codename}-backports\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_version_is_read_from_first_line() {
        let text = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright";
        assert_eq!(parse_qemu_version(text), Some((10, 0)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15"),
            Some((7, 2))
        );
        assert_eq!(parse_qemu_version("something else"), None);
    }

    #[test]
    fn qemu_7_1_is_too_old_and_7_2_is_enough() {
        assert!((7, 1) < MIN_QEMU);
        assert!((7, 2) >= MIN_QEMU);
        assert!((10, 0) >= MIN_QEMU);
    }

    #[test]
    fn codename_comes_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(os_codename(text).as_deref(), Some("bookworm"));
        assert_eq!(os_codename("ID=debian\n"), None);
    }

    const DEBIAN_SOURCES: &str = "Types: deb\n\
        URIs: http://mirror.example/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://security.example/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n";

    #[test]
    fn mirror_is_taken_from_the_main_suite_stanza() {
        assert_eq!(
            main_mirror(DEBIAN_SOURCES, "", "bookworm"),
            "http://mirror.example/debian"
        );
    }

    #[test]
    fn mirror_falls_back_to_one_line_sources_then_default() {
        let list = "# comment\ndeb http://sec.example/ bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n";
        assert_eq!(
            main_mirror("", list, "bookworm"),
            "http://one.example/debian"
        );
        assert_eq!(
            main_mirror("", "deb http://x/ bookworm main", "bookworm"),
            "http://x/"
        );
        assert_eq!(main_mirror("", "", "bookworm"), DEFAULT_MIRROR);
    }

    #[test]
    fn backports_already_present_is_detected_in_both_formats() {
        assert!(!mentions_suite(DEBIAN_SOURCES, "bookworm-backports"));
        assert!(mentions_suite(
            "Suites: bookworm-backports\n",
            "bookworm-backports"
        ));
        assert!(mentions_suite(
            "deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
        assert!(!mentions_suite(
            "# deb http://deb.debian.org/debian bookworm-backports main\n",
            "bookworm-backports"
        ));
    }

    #[test]
    fn backports_stanza_names_mirror_suite_and_keyring() {
        let s = backports_stanza("http://m/debian", "bookworm");
        assert!(s.contains("URIs: http://m/debian\n"));
        assert!(s.contains("Suites: bookworm-backports\n"));
        assert!(s.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"));
    }
}
