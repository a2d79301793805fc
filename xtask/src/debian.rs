//! Debian parts of Linux guests: the pinned arm64 kernel, busybox and
//! e2fsprogs packages of `xtask/debian.lock`, fetched with `apt-get
//! download`, checked against their SHA256, unpacked with `dpkg-deb -x`
//! and kept in a cache outside the repository
//! (`$XDG_CACHE_HOME/bulkhead/debian`, else `~/.cache/bulkhead/debian`).
//!
//! Cache layout:
//!
//! ```text
//! debs/<package>_<version>_arm64.deb   the verified package
//! <package>_<version>/                 its contents (dpkg-deb -x), then
//!   Image                              for a kernel: the raw arm64 Image
//!   .complete                          written last: the directory is whole
//! ```

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use bulkhead_config::toml::DebianKernel;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::prereq;

/// The lock file, as committed.
const LOCK_TEXT: &str = include_str!("../debian.lock");
/// How messages name the lock file.
const LOCK_PATH: &str = "xtask/debian.lock";
/// Every package is for the guest's architecture.
const ARCH: &str = "arm64";
/// Offset and value of the arm64 `Image` magic (Linux booting.rst).
const IMAGE_MAGIC_AT: usize = 0x38;
/// gzip's magic (RFC 1952 2.3.1, ID1 ID2).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One pinned package.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

impl Pin {
    /// `package version (arm64)`, for messages.
    fn describe(&self) -> String {
        format!("{} {} ({ARCH})", self.package, self.version)
    }

    /// A file-system safe `<package>_<version>` (epochs have a `:`).
    fn stem(&self) -> String {
        format!("{}_{}", self.package, self.version.replace(':', "%3a"))
    }
}

/// The lock file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Kernels by suite: `bookworm`, `bookworm-backports`.
    pub kernel: std::collections::BTreeMap<String, Pin>,
    pub busybox: Pin,
    /// Debian's e2fsprogs and the libraries of the tools in
    /// [`E2FSPROGS_FILES`], one `[[e2fsprogs]]` table each.
    pub e2fsprogs: Vec<Pin>,
}

impl Lock {
    /// Parses lock-file text and checks every kernel the config front-end
    /// knows is pinned and every SHA256 is 64 hex digits.
    pub fn parse(text: &str) -> Result<Self> {
        let lock: Self = toml::from_str(text).with_context(|| format!("{LOCK_PATH} is broken"))?;
        for k in DebianKernel::ALL {
            if !lock.kernel.contains_key(k.suite()) {
                bail!("{LOCK_PATH} pins no kernel for [kernel.{}]", k.suite());
            }
        }
        for (i, pin) in lock.e2fsprogs.iter().enumerate() {
            if lock.e2fsprogs[..i].iter().any(|p| p.package == pin.package) {
                bail!("{LOCK_PATH} pins {} twice in [[e2fsprogs]]", pin.package);
            }
        }
        for (package, path) in E2FSPROGS_FILES {
            if !lock.e2fsprogs.iter().any(|p| p.package == *package) {
                bail!("{LOCK_PATH} pins no {package} in [[e2fsprogs]] (for /{path})");
            }
        }
        let pins = lock.kernel.values().chain([&lock.busybox]);
        for pin in pins.chain(&lock.e2fsprogs) {
            let hex = pin.sha256.len() == 64 && pin.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                bail!(
                    "{LOCK_PATH}: the sha256 of {} is not 64 hex digits",
                    pin.package
                );
            }
        }
        Ok(lock)
    }

    /// The committed lock file.
    pub fn load() -> Result<Self> {
        Self::parse(LOCK_TEXT)
    }

    /// The pin of `kernel`.
    pub fn kernel(&self, kernel: DebianKernel) -> Result<&Pin> {
        self.kernel
            .get(kernel.suite())
            .with_context(|| format!("{LOCK_PATH} pins no kernel for {}", kernel.suite()))
    }

    /// The `[[e2fsprogs]]` pin of `package`.
    pub fn e2fsprogs_pin(&self, package: &str) -> Result<&Pin> {
        self.e2fsprogs
            .iter()
            .find(|p| p.package == package)
            .with_context(|| format!("{LOCK_PATH} pins no {package} in [[e2fsprogs]]"))
    }
}

/// Where downloaded and unpacked packages are kept.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

/// `$XDG_CACHE_HOME/bulkhead/debian` when set and absolute (XDG Base
/// Directory Specification: relative values are to be ignored), else
/// `$HOME/.cache/bulkhead/debian`, else `/tmp/bulkhead/debian`.
pub fn cache_dir_from(xdg: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    let base = match (xdg, home) {
        (Some(x), _) if x.is_absolute() => x,
        (_, Some(h)) if !h.as_os_str().is_empty() => h.join(".cache"),
        _ => PathBuf::from("/tmp"),
    };
    base.join("bulkhead").join("debian")
}

/// The raw arm64 `Image` of the pinned Debian `kernel`, fetched and
/// unpacked if it is not cached yet.
pub fn kernel_image(kernel: DebianKernel) -> Result<PathBuf> {
    let lock = Lock::load()?;
    let pin = lock.kernel(kernel)?;
    let dir = unpacked(pin, Some(kernel.suite()))?;
    let image = dir.join("Image");
    if image.is_file() {
        return Ok(image);
    }
    let vmlinuz = find_vmlinuz(&dir.join("boot"))
        .with_context(|| format!("{} has no /boot/vmlinuz-*", pin.describe()))?;
    let bytes =
        std::fs::read(&vmlinuz).with_context(|| format!("cannot read {}", vmlinuz.display()))?;
    let raw = raw_image(&bytes).with_context(|| format!("in {}", vmlinuz.display()))?;
    write_atomically(&image, &raw)?;
    Ok(image)
}

/// The UIO modules a Linux VM with channels loads, in load order
/// (directory under `kernel/`, module).
pub const UIO_MODULES: &[(&str, &str)] =
    &[("drivers/uio", "uio"), ("drivers/uio", "uio_pci_generic")];
/// What a Linux VM with any virtio device loads first, in dependency order.
pub const VIRTIO_MODULES: &[(&str, &str)] = &[
    ("drivers/virtio", "virtio"),
    ("drivers/virtio", "virtio_ring"),
    ("drivers/virtio", "virtio_mmio"),
];
/// Then, with a shared disk:
pub const VIRTIO_BLK_MODULES: &[(&str, &str)] = &[("drivers/block", "virtio_blk")];
/// And with a NIC:
pub const VIRTIO_NET_MODULES: &[(&str, &str)] = &[
    ("net/core", "failover"),
    ("drivers/net", "net_failover"),
    ("drivers/net", "virtio_net"),
];

/// Modules of a Debian kernel that a Linux VM loads with busybox's
/// insmod, from the kernel's own package: `(path in the initramfs,
/// bytes)`, at `lib/modules/<release>/<name>.ko`, decompressed (6.12
/// ships `.ko.xz`, which busybox's insmod does not read).
pub fn modules(kernel: DebianKernel, wanted: &[(&str, &str)]) -> Result<Vec<(String, Vec<u8>)>> {
    let lock = Lock::load()?;
    let pin = lock.kernel(kernel)?;
    let dir = unpacked(pin, Some(kernel.suite()))?;
    let modules = dir.join("lib/modules");
    let release = std::fs::read_dir(&modules)
        .with_context(|| format!("{} has no lib/modules", pin.describe()))?
        .flatten()
        .find(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .with_context(|| format!("{} has no lib/modules/<release>", pin.describe()))?;
    let mut out = Vec::new();
    for &(sub, name) in wanted {
        let dir = modules.join(&release).join("kernel").join(sub);
        let plain = dir.join(format!("{name}.ko"));
        let xz = dir.join(format!("{name}.ko.xz"));
        let bytes = if plain.is_file() {
            std::fs::read(&plain).with_context(|| format!("cannot read {}", plain.display()))?
        } else if xz.is_file() {
            let o = std::process::Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .with_context(|| {
                    format!(
                        "cannot run xz to unpack {} (apt-get install xz-utils)",
                        xz.display()
                    )
                })?;
            if !o.status.success() {
                bail!("xz -dc {} failed", xz.display());
            }
            o.stdout
        } else {
            bail!("{} has no {name}.ko in {}", pin.describe(), dir.display());
        };
        out.push((format!("lib/modules/{release}/{name}.ko"), bytes));
    }
    Ok(out)
}

/// Debian's static busybox for arm64, fetched and unpacked if needed.
pub fn busybox() -> Result<PathBuf> {
    let lock = Lock::load()?;
    let dir = unpacked(&lock.busybox, None)?;
    let path = dir.join("bin/busybox");
    if !path.is_file() {
        bail!("{} has no /bin/busybox", lock.busybox.describe());
    }
    Ok(path)
}

/// What an initramfs gets of Debian's e2fsprogs when its `/init` runs one
/// of its tools (see [`runs_e2fsprogs`]): `(package, path)`, the path being
/// the same in the package and in the initramfs. `mkfs.ext4` is Debian's
/// symlink to `mke2fs` (which picks the ext4 defaults of `mke2fs.conf` by
/// its name), the libraries are their sonames' symlinks and the loader
/// `/lib/ld-linux-aarch64.so.1` links to `aarch64-linux-gnu/`: each is
/// shipped with its target's bytes, as the initramfs has no symlinks.
/// The libraries are what `readelf -d` lists as `DT_NEEDED` of the two
/// tools (libss2 is only for debugfs); [`e2fsprogs`] checks that again.
pub const E2FSPROGS_FILES: &[(&str, &str)] = &[
    ("e2fsprogs", "sbin/mkfs.ext4"),
    ("e2fsprogs", "sbin/dumpe2fs"),
    ("e2fsprogs", "etc/mke2fs.conf"),
    ("libext2fs2", "lib/aarch64-linux-gnu/libext2fs.so.2"),
    ("libext2fs2", "lib/aarch64-linux-gnu/libe2p.so.2"),
    ("libcom-err2", "lib/aarch64-linux-gnu/libcom_err.so.2"),
    ("libblkid1", "usr/lib/aarch64-linux-gnu/libblkid.so.1"),
    ("libuuid1", "usr/lib/aarch64-linux-gnu/libuuid.so.1"),
    ("libc6", "lib/aarch64-linux-gnu/libc.so.6"),
    ("libc6", "lib/ld-linux-aarch64.so.1"),
];

/// Where Debian's arm64 glibc looks for libraries when there is no
/// `/etc/ld.so.cache` (as in an initramfs): its "system search path"
/// (`ld.so --help`).
const LIB_DIRS: [&str; 4] = [
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib",
    "usr/lib",
];

/// Whether an init script runs a tool of [`E2FSPROGS_FILES`] (names
/// `mkfs.ext4` or `dumpe2fs`): only such an initramfs gets them.
pub fn runs_e2fsprogs(script: &str) -> bool {
    E2FSPROGS_FILES
        .iter()
        .filter_map(|(_, path)| path.strip_prefix("sbin/"))
        .any(|tool| script.contains(tool))
}

/// The files of [`E2FSPROGS_FILES`] from the pinned packages (fetched and
/// unpacked if needed), as `(path in the initramfs, bytes)`, after checking
/// that every library and loader they name is among them.
pub fn e2fsprogs() -> Result<Vec<(String, Vec<u8>)>> {
    let lock = Lock::load()?;
    let mut out = Vec::new();
    let mut deps = Vec::new();
    for &(package, path) in E2FSPROGS_FILES {
        let pin = lock.e2fsprogs_pin(package)?;
        let dir = unpacked(pin, None)?;
        let file = resolve_in(&dir, path).with_context(|| format!("in {}", pin.describe()))?;
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        if let Some(d) =
            elf_deps(&bytes).with_context(|| format!("{} of {}", path, pin.describe()))?
        {
            deps.push((path.to_owned(), d));
        }
        out.push((path.to_owned(), bytes));
    }
    let shipped: Vec<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
    let unmet = unmet_deps(&deps, &shipped);
    if !unmet.is_empty() {
        bail!(
            "the e2fsprogs files of {LOCK_PATH} are not self-contained: {}; add the packages \
             and paths to {LOCK_PATH} and debian::E2FSPROGS_FILES",
            unmet.join("; ")
        );
    }
    Ok(out)
}

/// `rel` under `root`, its symlinks followed, which must stay inside
/// `root` (an unpacked package's absolute links would point at the host).
pub fn resolve_in(root: &Path, rel: &str) -> Result<PathBuf> {
    let path = root.join(rel);
    let real = std::fs::canonicalize(&path)
        .with_context(|| format!("there is no /{rel} (or it is a dangling link)"))?;
    let base = std::fs::canonicalize(root)
        .with_context(|| format!("cannot resolve {}", root.display()))?;
    if !real.starts_with(&base) || !real.is_file() {
        bail!(
            "/{rel} is not a file inside the package (it resolves to {})",
            real.display()
        );
    }
    Ok(real)
}

/// What a dynamically linked ELF file needs to load: its `DT_NEEDED`
/// libraries (`readelf -d`) and its `PT_INTERP` loader (`readelf -l`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfDeps {
    pub needed: Vec<String>,
    pub interp: Option<String>,
}

/// The [`ElfDeps`] of a 64-bit ELF file, `None` for a file that is not ELF
/// (a script, a config file).
pub fn elf_deps(bytes: &[u8]) -> Result<Option<ElfDeps>> {
    use object::read::elf::{Dyn as _, FileHeader as _, ProgramHeader as _};
    if !bytes.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    let header = object::elf::FileHeader64::<object::Endianness>::parse(bytes)
        .context("not a 64-bit ELF file")?;
    let endian = header.endian().context("bad ELF byte order")?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut deps = ElfDeps::default();
    for phdr in header
        .program_headers(endian, bytes)
        .context("bad ELF program headers")?
    {
        if let Some(interp) = phdr.interpreter(endian, bytes).context("bad PT_INTERP")? {
            deps.interp = Some(text(interp));
        }
    }
    let sections = header
        .sections(endian, bytes)
        .context("bad ELF section headers")?;
    if let Some((dyns, link)) = sections
        .dynamic(endian, bytes)
        .context("bad ELF dynamic section")?
    {
        let strings = sections
            .strings(endian, bytes, link)
            .context("bad ELF dynamic string table")?;
        for d in dyns {
            if d.tag32(endian) == Some(object::elf::DT_NEEDED) {
                let name = d.string(endian, strings).context("bad DT_NEEDED")?;
                deps.needed.push(text(name));
            }
        }
    }
    Ok(Some(deps))
}

/// What of `deps` (each file's path and [`ElfDeps`]) `shipped` (paths in
/// the initramfs) does not provide: a `DT_NEEDED` library that is in none
/// of the [`LIB_DIRS`], a `PT_INTERP` loader that is not at its path.
pub fn unmet_deps(deps: &[(String, ElfDeps)], shipped: &[&str]) -> Vec<String> {
    let mut unmet = Vec::new();
    for (path, d) in deps {
        for lib in &d.needed {
            let found = LIB_DIRS
                .iter()
                .any(|dir| shipped.contains(&format!("{dir}/{lib}").as_str()));
            if !found {
                unmet.push(format!("/{path} needs {lib}"));
            }
        }
        if let Some(interp) = &d.interp {
            if !shipped.contains(&interp.trim_start_matches('/')) {
                unmet.push(format!("/{path} is loaded by {interp}"));
            }
        }
    }
    unmet
}

/// The only `vmlinuz-*` in `boot`.
fn find_vmlinuz(boot: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(boot)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    (found.len() == 1).then(|| found.remove(0))
}

/// Whether `bytes` is a raw arm64 `Image`: "ARM\x64" at 0x38.
pub fn is_arm64_image(bytes: &[u8]) -> bool {
    bytes.get(IMAGE_MAGIC_AT..IMAGE_MAGIC_AT + 4) == Some(&bulkhead_config::ARM64_MAGIC[..])
}

/// A kernel as a raw arm64 `Image`: as is, or gunzipped (Debian ships
/// `vmlinuz` either way, depending on the release).
pub fn raw_image(bytes: &[u8]) -> Result<Vec<u8>> {
    if is_arm64_image(bytes) {
        return Ok(bytes.to_vec());
    }
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .context("the kernel looks gzip-compressed but does not gunzip")?;
        if is_arm64_image(&out) {
            return Ok(out);
        }
        bail!("the gunzipped kernel is not an arm64 Image (no \"ARM\\x64\" magic at 0x38)");
    }
    bail!("the kernel is neither an arm64 Image (\"ARM\\x64\" at 0x38) nor gzip-compressed")
}

/// The unpacked contents of `pin`, downloading and unpacking as needed.
/// `suite` is the suite it comes from when that is not the main one.
fn unpacked(pin: &Pin, suite: Option<&str>) -> Result<PathBuf> {
    let cache = cache_dir();
    let dir = cache.join(pin.stem());
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let deb = downloaded(pin, suite, &cache)?;
    println!("unpacking {} into {}", pin.describe(), dir.display());
    let tmp = cache.join(format!("{}.partial", pin.stem()));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tmp)
        .output()
        .context("cannot run dpkg-deb (Debian's dpkg package)")?;
    if !out.status.success() {
        bail!(
            "dpkg-deb -x {} failed ({}): {}",
            deb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    std::fs::write(tmp.join(".complete"), pin.describe())?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    Ok(dir)
}

/// The verified `.deb` of `pin` in the cache, downloaded if needed.
fn downloaded(pin: &Pin, suite: Option<&str>, cache: &Path) -> Result<PathBuf> {
    let debs = cache.join("debs");
    let deb = debs.join(format!("{}_{ARCH}.deb", pin.stem()));
    if deb.is_file() {
        match sha256_file(&deb) {
            Ok(sum) if sum == pin.sha256 => return Ok(deb),
            Ok(sum) => println!(
                "{} in the cache has SHA256 {sum}, not the pinned {}: downloading it again",
                deb.display(),
                pin.sha256
            ),
            Err(e) => println!("cannot read {}: {e:#}; downloading it again", deb.display()),
        }
        let _ = std::fs::remove_file(&deb);
    }
    ensure_apt(pin)?;
    ensure_index(pin, suite)?;

    println!(
        "downloading {} with apt-get download into {}",
        pin.describe(),
        debs.display()
    );
    let tmp = debs.join(format!("{}.partial", pin.stem()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let spec = format!("{}:{ARCH}={}", pin.package, pin.version);
    // The sandbox user `_apt` may not be able to write into a home
    // directory's cache; we run as root anyway (see `ensure_apt`).
    let out = Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", &spec])
        .current_dir(&tmp)
        .output()
        .context("cannot run apt-get")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let _ = std::fs::remove_dir_all(&tmp);
        if !archive_has(pin)? {
            bail!(gone(pin));
        }
        bail!("apt-get download {spec} failed ({}): {stderr}", out.status);
    }
    let got: Vec<PathBuf> = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    let [file] = got.as_slice() else {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(
            "apt-get download {spec} left {} .deb files instead of one",
            got.len()
        );
    };
    let sum = sha256_file(file)?;
    if let Some(problem) = sha_mismatch(pin, &sum) {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!(problem);
    }
    std::fs::rename(file, &deb)
        .with_context(|| format!("cannot move {} to {}", file.display(), deb.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(deb)
}

/// The message for a download whose SHA256 is not the pinned one, if it
/// is not.
pub fn sha_mismatch(pin: &Pin, actual: &str) -> Option<String> {
    (!actual.eq_ignore_ascii_case(&pin.sha256)).then(|| {
        format!(
            "the downloaded {} has SHA256 {actual}, but {LOCK_PATH} pins {}: the archive's \
             package is not the one that was pinned; check it, then update {LOCK_PATH}",
            pin.describe(),
            pin.sha256
        )
    })
}

/// The message for a pinned version that the archive no longer has.
pub fn gone(pin: &Pin) -> String {
    format!(
        "the pinned package {} is not in the archive any more: update {LOCK_PATH} \
         (`apt-cache madison {}:{ARCH}` lists what there is)",
        pin.describe(),
        pin.package
    )
}

/// Stops with what to install when packages cannot be fetched here.
fn ensure_apt(pin: &Pin) -> Result<()> {
    let apt = Path::new("/usr/bin/apt-get").exists();
    let dpkg_deb = which("dpkg-deb");
    if apt && dpkg_deb && prereq::is_root() {
        return Ok(());
    }
    bail!(
        "{} is not in the cache ({}), and fetching it needs a Debian system with apt-get and \
         dpkg-deb (packages apt and dpkg) run as root; {}",
        pin.describe(),
        cache_dir().display(),
        if !apt || !dpkg_deb {
            "install apt and dpkg, or run on Debian"
        } else {
            "run `cargo xtask` as root once to fill the cache"
        }
    )
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Makes apt know arm64 packages (and bookworm-backports for `suite`
/// `*-backports`), running `dpkg --add-architecture arm64` and
/// `apt-get update` when needed; then, if the pinned version is still
/// unknown, one `apt-get update` in case the lists are old.
fn ensure_index(pin: &Pin, suite: Option<&str>) -> Result<()> {
    let mut update = false;
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("cannot run dpkg")?;
    let native = Command::new("dpkg").arg("--print-architecture").output()?;
    let has_arch = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|a| a == ARCH)
    };
    if !has_arch(&foreign) && !has_arch(&native) {
        println!("+ dpkg --add-architecture {ARCH}   (to download {ARCH} guest packages)");
        let status = Command::new("dpkg")
            .args(["--add-architecture", ARCH])
            .status()?;
        if !status.success() {
            bail!("`dpkg --add-architecture {ARCH}` failed ({status})");
        }
        update = true;
    }
    if !has_arm64_lists() {
        println!("apt has no {ARCH} package index yet");
        update = true;
    }
    if suite.is_some_and(|s| s.ends_with("-backports")) {
        let codename = prereq::codename().unwrap_or_else(|| "bookworm".to_owned());
        if prereq::add_backports_source(&codename)? {
            update = true;
        }
    }
    if update {
        prereq::apt(&["update"])?;
    }
    if !archive_has(pin)? && !update {
        println!("apt does not know {}; refreshing its lists", pin.describe());
        prereq::apt(&["update"])?;
    }
    if !archive_has(pin)? {
        bail!(gone(pin));
    }
    Ok(())
}

/// Whether /var/lib/apt/lists has an arm64 `Packages` index.
fn has_arm64_lists() -> bool {
    std::fs::read_dir("/var/lib/apt/lists").is_ok_and(|dir| {
        dir.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.contains(&format!("binary-{ARCH}_Packages")))
        })
    })
}

/// Whether `apt-cache madison` lists the pinned version.
fn archive_has(pin: &Pin) -> Result<bool> {
    let out = Command::new("apt-cache")
        .args(["madison", &format!("{}:{ARCH}", pin.package)])
        .output()
        .context("cannot run apt-cache")?;
    Ok(madison_lists(
        &String::from_utf8_lossy(&out.stdout),
        &pin.version,
    ))
}

/// Whether `apt-cache madison` output (`pkg | version | source`) lists
/// `version`.
pub fn madison_lists(output: &str, version: &str) -> bool {
    output
        .lines()
        .any(|l| l.split('|').nth(1).is_some_and(|v| v.trim() == version))
}

/// Lower-case hex SHA256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `path` through a temporary file and a rename, so a half-written
/// file is never taken for a cached one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn committed_lock_pins_every_kernel_and_busybox() {
        let lock = Lock::load().unwrap();
        for k in DebianKernel::ALL {
            let pin = lock.kernel(k).unwrap();
            assert!(pin.package.starts_with("linux-image-"), "{pin:?}");
            assert!(pin.package.ends_with("-cloud-arm64"), "{pin:?}");
        }
        assert_eq!(lock.busybox.package, "busybox-static");
        assert!(lock
            .kernel(DebianKernel::BookwormBackports)
            .unwrap()
            .version
            .contains("bpo12"));
    }

    const PIN: &str = "package = \"p\"\nversion = \"1\"\nsha256 = \"";

    fn lock_text(sha: &str, suites: &[&str]) -> String {
        let mut t = String::new();
        for s in suites {
            t.push_str(&format!("[kernel.{s}]\n{PIN}{sha}\"\n"));
        }
        t.push_str(&format!("[busybox]\n{PIN}{sha}\"\n"));
        for p in e2fsprogs_packages() {
            t.push_str(&e2fsprogs_pin(p, sha));
        }
        t
    }

    /// The packages [`E2FSPROGS_FILES`] names, each once.
    fn e2fsprogs_packages() -> Vec<&'static str> {
        let mut p: Vec<&str> = E2FSPROGS_FILES.iter().map(|f| f.0).collect();
        p.dedup();
        p
    }

    fn e2fsprogs_pin(package: &str, sha: &str) -> String {
        format!("[[e2fsprogs]]\npackage = \"{package}\"\nversion = \"1\"\nsha256 = \"{sha}\"\n")
    }

    #[test]
    fn committed_lock_pins_e2fsprogs_and_its_libraries_from_bookworm() {
        let lock = Lock::load().unwrap();
        let names: Vec<&str> = lock.e2fsprogs.iter().map(|p| p.package.as_str()).collect();
        assert_eq!(
            names,
            [
                "e2fsprogs",
                "libext2fs2",
                "libcom-err2",
                "libblkid1",
                "libuuid1",
                "libc6"
            ]
        );
        let e2 = lock.e2fsprogs_pin("e2fsprogs").unwrap();
        // libext2fs2 is built from the same source at the same version.
        assert_eq!(
            lock.e2fsprogs_pin("libext2fs2").unwrap().version,
            e2.version
        );
        assert!(
            !lock.e2fsprogs.iter().any(|p| p.version.contains("bpo")),
            "{names:?}"
        );
    }

    #[test]
    fn lock_e2fsprogs_tables_are_checked() {
        let sha = "ab".repeat(32);
        let suites = ["bookworm", "bookworm-backports"];
        let good = lock_text(&sha, &suites);
        assert_eq!(Lock::parse(&good).unwrap().e2fsprogs.len(), 6);
        // A library the files need but the lock does not pin.
        let without = good.replace(&e2fsprogs_pin("libuuid1", &sha), "");
        let e = Lock::parse(&without).unwrap_err();
        assert!(
            e.to_string().contains("pins no libuuid1 in [[e2fsprogs]]"),
            "{e}"
        );
        // None at all is a missing field.
        let none = good.split("[[e2fsprogs]]").next().unwrap();
        assert!(Lock::parse(none).is_err());
        // The same package twice.
        let twice = format!("{good}{}", e2fsprogs_pin("libc6", &sha));
        let e = Lock::parse(&twice).unwrap_err();
        assert!(e.to_string().contains("pins libc6 twice"), "{e}");
        // A bad sum in one of them.
        let bad = good.replace(
            &e2fsprogs_pin("libc6", &sha),
            &e2fsprogs_pin("libc6", "xyz"),
        );
        let e = Lock::parse(&bad).unwrap_err();
        assert!(
            e.to_string()
                .contains("sha256 of libc6 is not 64 hex digits"),
            "{e}"
        );
        // Unknown keys are refused, in a pin and at the top.
        let extra = good.replace(
            "package = \"libc6\"",
            "package = \"libc6\"\narch = \"arm64\"",
        );
        assert!(Lock::parse(&extra).is_err());
        assert!(Lock::parse(&format!("[tools]\nx = 1\n{good}")).is_err());
    }

    #[test]
    fn only_scripts_that_run_e2fsprogs_get_it() {
        let linux = crate::repo_root().join("configs/linux");
        let script = |name: &str| std::fs::read_to_string(linux.join(name)).unwrap();
        assert!(runs_e2fsprogs(&script("init-disk.sh")));
        for other in ["init-bench-disk.sh", "init-stress-io.sh", "init-test.sh"] {
            assert!(!runs_e2fsprogs(&script(other)), "{other}");
        }
        assert!(runs_e2fsprogs("/sbin/dumpe2fs -h /dev/vda\n"));
        assert!(!runs_e2fsprogs("mke2fs -q /dev/vda\n"));
    }

    #[test]
    fn unmet_libraries_and_loaders_are_named() {
        let deps = |needed: &[&str], interp: Option<&str>| ElfDeps {
            needed: needed.iter().map(|s| s.to_string()).collect(),
            interp: interp.map(str::to_owned),
        };
        let files = [
            (
                "sbin/mkfs.ext4".to_owned(),
                deps(
                    &[
                        "libext2fs.so.2",
                        "libblkid.so.1",
                        "libc.so.6",
                        "ld-linux-aarch64.so.1",
                    ],
                    Some("/lib/ld-linux-aarch64.so.1"),
                ),
            ),
            (
                "lib/aarch64-linux-gnu/libc.so.6".to_owned(),
                deps(&["ld-linux-aarch64.so.1"], None),
            ),
        ];
        let all = [
            "sbin/mkfs.ext4",
            "lib/aarch64-linux-gnu/libext2fs.so.2",
            "usr/lib/aarch64-linux-gnu/libblkid.so.1",
            "lib/aarch64-linux-gnu/libc.so.6",
            "lib/ld-linux-aarch64.so.1",
        ];
        assert!(unmet_deps(&files, &all).is_empty());
        // Not in a directory the loader searches, and no loader.
        let wrong = [
            "sbin/mkfs.ext4",
            "lib/aarch64-linux-gnu/libext2fs.so.2",
            "sbin/libblkid.so.1",
            "lib/aarch64-linux-gnu/libc.so.6",
            "lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
        ];
        assert_eq!(
            unmet_deps(&files, &wrong),
            [
                "/sbin/mkfs.ext4 needs libblkid.so.1",
                "/sbin/mkfs.ext4 is loaded by /lib/ld-linux-aarch64.so.1",
            ]
        );
    }

    #[test]
    fn elf_deps_reads_needed_and_interp() {
        assert_eq!(elf_deps(b"#!/bin/sh\n").unwrap(), None);
        assert!(elf_deps(b"\x7fELF\x02\x01").is_err());
        // This test binary: a dynamically linked host program.
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
            let d = elf_deps(&me).unwrap().unwrap();
            assert!(d.needed.iter().any(|n| n == "libc.so.6"), "{d:?}");
            assert!(d.interp.is_some_and(|i| i.starts_with('/')));
        }
    }

    #[test]
    fn links_are_followed_inside_the_package_only() {
        use std::os::unix::fs::symlink;
        let root = std::env::temp_dir().join(format!("bulkhead-resolve-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("lib/aarch64-linux-gnu")).unwrap();
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::fs::write(root.join("lib/aarch64-linux-gnu/ld.so"), b"LD").unwrap();
        symlink("aarch64-linux-gnu/ld.so", root.join("lib/ld.so.1")).unwrap();
        std::fs::write(root.join("sbin/mke2fs"), b"MKE2FS").unwrap();
        symlink("mke2fs", root.join("sbin/mkfs.ext4")).unwrap();
        symlink("/etc/passwd", root.join("sbin/host")).unwrap();
        symlink("nothing", root.join("sbin/dangling")).unwrap();
        let read = |rel: &str| std::fs::read(resolve_in(&root, rel).unwrap()).unwrap();
        assert_eq!(read("lib/ld.so.1"), b"LD");
        assert_eq!(read("sbin/mkfs.ext4"), b"MKE2FS");
        assert_eq!(read("sbin/mke2fs"), b"MKE2FS");
        let e = resolve_in(&root, "sbin/host").unwrap_err();
        assert!(
            e.to_string().contains("not a file inside the package"),
            "{e}"
        );
        assert!(resolve_in(&root, "sbin/dangling").is_err());
        assert!(resolve_in(&root, "sbin").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn lock_missing_a_kernel_or_with_a_bad_sha_is_refused() {
        let sha = "ab".repeat(32);
        assert!(Lock::parse(&lock_text(&sha, &["bookworm", "bookworm-backports"])).is_ok());
        let e = Lock::parse(&lock_text(&sha, &["bookworm"])).unwrap_err();
        assert!(e.to_string().contains("[kernel.bookworm-backports]"), "{e}");
        let e = Lock::parse(&lock_text("abc", &["bookworm", "bookworm-backports"])).unwrap_err();
        assert!(e.to_string().contains("not 64 hex digits"), "{e}");
    }

    #[test]
    fn cache_dir_prefers_absolute_xdg_then_home() {
        assert_eq!(
            cache_dir_from(Some("/x".into()), Some("/home/u".into())),
            Path::new("/x/bulkhead/debian")
        );
        assert_eq!(
            cache_dir_from(Some("rel".into()), Some("/home/u".into())),
            Path::new("/home/u/.cache/bulkhead/debian")
        );
        assert_eq!(
            cache_dir_from(None, None),
            Path::new("/tmp/bulkhead/debian")
        );
    }

    #[test]
    fn epoch_colon_is_escaped_in_cache_names() {
        let pin = Pin {
            package: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            sha256: String::new(),
        };
        assert_eq!(pin.stem(), "busybox-static_1%3a1.35.0-4");
    }

    #[test]
    fn madison_output_is_matched_on_the_version_column() {
        let out = "busybox-static:arm64 | 1:1.35.0-4+deb12u1+b1 | http://deb.debian.org/debian bookworm/main arm64 Packages\n";
        assert!(madison_lists(out, "1:1.35.0-4+deb12u1+b1"));
        assert!(!madison_lists(out, "1:1.35.0-4"));
        assert!(!madison_lists("", "1"));
    }

    fn image(len: usize) -> Vec<u8> {
        let mut b: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        b[IMAGE_MAGIC_AT..IMAGE_MAGIC_AT + 4].copy_from_slice(b"ARM\x64");
        b
    }

    #[test]
    fn raw_image_is_kept_and_gzip_is_unpacked() {
        let raw = image(4096);
        assert_eq!(raw_image(&raw).unwrap(), raw);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        assert!(!is_arm64_image(&gz));
        assert_eq!(raw_image(&gz).unwrap(), raw);
    }

    #[test]
    fn non_kernels_are_refused() {
        let e = raw_image(&[0u8; 100]).unwrap_err();
        assert!(e.to_string().contains("neither an arm64 Image"), "{e}");
        let e = raw_image(&[0x1f, 0x8b, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("does not gunzip"), "{e}");
    }

    #[test]
    fn sha_mismatch_names_both_sums_and_the_lock_file() {
        let pin = Pin {
            package: "p".into(),
            version: "1".into(),
            sha256: "aa".repeat(32),
        };
        assert_eq!(sha_mismatch(&pin, &"AA".repeat(32)), None);
        let m = sha_mismatch(&pin, &"bb".repeat(32)).unwrap();
        assert!(
            m.contains(&"bb".repeat(32)) && m.contains(&"aa".repeat(32)),
            "{m}"
        );
        assert!(m.contains("xtask/debian.lock"), "{m}");
        assert!(gone(&pin).contains("is not in the archive any more: update xtask/debian.lock"));
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
