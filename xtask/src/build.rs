//! `cargo xtask build`: config → hypervisor + guests → one bootable image.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use bulkhead_config::toml::{Diagnostic, ImageSource, Parsed};
use bulkhead_config::ImageInfo;

use crate::{cargo, cpio, debian, elf, image, repo_root, target_dir};

/// The target every EL2 and guest crate is built for: softfloat, so EL2 code
/// never touches FP/SIMD registers (guests built for it do not either).
pub const TARGET: &str = "aarch64-unknown-none-softfloat";
/// The hypervisor's package and binary.
const HV_PACKAGE: &str = "bulkhead-hypervisor";
const HV_BIN: &str = "bulkhead";
/// Linker-script symbols bounding the hypervisor's memory image; the payload
/// starts at `__hv_end`.
const HV_START: &str = "__hv_start";
const HV_END: &str = "__hv_end";

/// How much `build` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Progress lines and cargo's output.
    Progress,
    /// Nothing but errors (config rejection tests).
    Quiet,
}

/// A packed image and what QEMU needs to boot it.
pub struct Built {
    pub image: PathBuf,
    pub size: u64,
    pub cpus: u16,
    pub ram_mib: u64,
    /// CPUs with vCPUs to run: every pinned vCPU's, and a pool's pCPUs
    /// (its vCPUs take turns on them), at most the vCPUs it has.
    pub vcpus: usize,
    /// The board's physical disks (`[[disk]]`), raw image files under
    /// `target/disks/`, in the config's order.
    pub disks: Vec<PathBuf>,
    /// Their `[[disk]]` tables, for [`blank_disks`].
    pub disk_configs: Vec<bulkhead_config::Disk>,
    /// A switch has the uplink, or the board has a management address: the
    /// board needs its physical NIC.
    pub uplink: bool,
}

/// Config problems, one `file:line: field: message` per line.
fn diagnostics(heading: &str, diags: &[Diagnostic]) -> anyhow::Error {
    let mut text = heading.to_owned();
    for d in diags {
        let _ = write!(text, "\n  {d}");
    }
    anyhow::anyhow!(text)
}

/// Builds and packs the system described by `config`; returns where the
/// image went.
pub fn build(config: &Path, output: Output) -> Result<Built> {
    build_with_features(config, output, &[])
}

/// [`build`] with the hypervisor's cargo `features` on (self-test images).
/// Such a hypervisor is built in its own target directory
/// ([`FEATURES_TARGET_DIR`]) and packed as `<config>+<features>.img`, so it
/// never replaces the normal binary or image another build is using.
pub fn build_with_features(config: &Path, output: Output, features: &[&str]) -> Result<Built> {
    let progress = |msg: &str| {
        if output == Output::Progress {
            println!("{msg}");
        }
    };
    let parsed = bulkhead_config::toml::load(config)
        .map_err(|d| diagnostics(&format!("{} is not a valid config:", config.display()), &d))?;

    let text = std::fs::read_to_string(config).unwrap_or_default();
    let file = config.display().to_string();
    let invalid = |d: &[Diagnostic]| diagnostics(&format!("{file} is not a valid config:"), d);
    let guests = guest_names(&parsed);
    let available = available_guests()?;

    // Problems the config crate cannot see: guests that do not exist and
    // image files that cannot be read. Files are read now, before any build.
    let mut problems: Vec<Diagnostic> = vm_guests(&parsed)
        .into_iter()
        .filter(|(_, name)| !available.iter().any(|a| a == name))
        .map(|(vm, name)| Diagnostic {
            file: file.clone(),
            line: key_line(&text, vm, "guest"),
            field: format!("vm[{vm}].guest"),
            message: format!(
                "there is no guest \"{name}\"; available guests: {}",
                available.join(", ")
            ),
        })
        .collect();
    // `None` for guests, which are built below.
    let mut images: Vec<Option<(String, Vec<u8>)>> = Vec::new();
    for (index, source) in parsed.images.iter().enumerate() {
        let extra = match source {
            ImageSource::Initramfs(_) => initramfs_extras(&parsed, index, output)?,
            _ => Vec::new(),
        };
        match read_source(source, output, &extra) {
            Ok(image) => images.push(image),
            Err(SourceError::Unreadable { what, path, error }) => {
                images.push(None);
                problems.extend(
                    vms_using(&parsed, &text, source)
                        .into_iter()
                        .map(|(vm, key)| Diagnostic {
                            file: file.clone(),
                            line: key_line(&text, vm, key),
                            field: format!("vm[{vm}].{key}"),
                            message: format!("cannot read {what} {}: {error}", path.display()),
                        }),
                );
            }
            Err(SourceError::Other(e)) => return Err(e.context(format!("in {file}"))),
        }
    }
    problems.extend(format_problems(&parsed, &text, &file, &images));
    if !problems.is_empty() {
        return Err(invalid(&problems));
    }
    // Check the rules before a long build; guests count as empty images
    // here, so only their size can still be wrong after the build.
    let sizes = |images: &[Option<(String, Vec<u8>)>]| -> Vec<ImageInfo> {
        images
            .iter()
            .map(|i| {
                i.as_ref()
                    .map_or(ImageInfo::raw(0), |(_, b)| ImageInfo::of(b))
            })
            .collect()
    };
    parsed.check(&sizes(&images)).map_err(|d| invalid(&d))?;

    progress(&format!(
        "building hypervisor{}…",
        if guests.is_empty() {
            String::new()
        } else {
            format!(" and guests {}", guests.join(", "))
        }
    ));
    cargo_build(&guests, output)?;

    let out_dir = target_dir().join("bulkhead");
    let guest_dir = out_dir.join("guests");
    std::fs::create_dir_all(&guest_dir)
        .with_context(|| format!("cannot create {}", guest_dir.display()))?;
    for (source, slot) in parsed.images.iter().zip(&mut images) {
        if let ImageSource::Guest(name) = source {
            let flat = flat_of(&elf_path(name))?;
            let bin = guest_dir.join(format!("{name}.bin"));
            std::fs::write(&bin, &flat.bytes)
                .with_context(|| format!("cannot write {}", bin.display()))?;
            *slot = Some((name.clone(), flat.bytes));
        }
    }
    parsed.check(&sizes(&images)).map_err(|d| invalid(&d))?;
    let images: Vec<(String, Vec<u8>)> = images.into_iter().flatten().collect();

    let hv_elf_path = if features.is_empty() {
        elf_path(HV_BIN)
    } else {
        cargo_build_hv_features(features, output)?
    };
    let hv_elf = std::fs::read(&hv_elf_path)
        .with_context(|| format!("cannot read {}", hv_elf_path.display()))?;
    let hv = elf::to_flat(&hv_elf).with_context(|| format!("in {}", hv_elf_path.display()))?;
    let start = elf::symbol(&hv_elf, HV_START)?;
    let end = elf::symbol(&hv_elf, HV_END)?;
    if hv.base != start {
        bail!(
            "{}: the first loadable byte is at {:#x} but {HV_START} is {start:#x}; \
             the payload offset would be wrong",
            hv_elf_path.display(),
            hv.base
        );
    }
    let named: Vec<(&str, &[u8])> = images
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let payload = bulkhead_config::payload::pack(&bulkhead_config::encode(&parsed.config), &named);
    let mut bytes = assemble(&hv.bytes, start, end, &payload)?;
    image::patch_image_size(&mut bytes)?;

    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bulkhead".to_owned());
    let path = if features.is_empty() {
        out_dir.join(format!("{stem}.img"))
    } else {
        out_dir.join(format!("{stem}+{}.img", features.join("+")))
    };
    std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    let disks = disk_images(&stem, &parsed.config.disks)?;
    Ok(Built {
        image: path,
        size: bytes.len() as u64,
        cpus: parsed.config.board.cpus,
        ram_mib: parsed.config.board.ram_size >> 20,
        vcpus: busy_cpus(&parsed.config),
        disks,
        disk_configs: parsed.config.disks.clone(),
        uplink: parsed.config.switches.iter().any(|s| s.uplink)
            || parsed.config.board.management.is_some(),
    })
}

/// The raw image of each `[[disk]]`: `target/disks/<config>-<name>.raw`,
/// created sparse at the config's size (with the GUID partition table the
/// config lays out, if any) when missing or of another size, otherwise
/// kept, so what the VMs wrote survives to the next run.
fn disk_images(stem: &str, disks: &[bulkhead_config::Disk]) -> Result<Vec<PathBuf>> {
    let dir = target_dir().join("disks");
    if !disks.is_empty() {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    disks
        .iter()
        .map(|d| {
            let path = dir.join(format!("{stem}-{}.raw", d.name));
            let fits = std::fs::metadata(&path).is_ok_and(|m| m.len() == d.size);
            if !fits {
                fresh_disk(&path, d)?;
            } else if !d.partitions.is_empty() && !table_matches(&path, d)? {
                // The layout changed: a new table, the data left as it is.
                println!(
                    "{}: partition table rewritten for the config's layout",
                    path.display()
                );
                write_table(&path, d)?;
            }
            Ok(path)
        })
        .collect()
}

/// A blank sparse image of `disk`, with its GUID partition table if the
/// config lays one out (bulkhead_config::partition_layout).
fn fresh_disk(path: &Path, disk: &bulkhead_config::Disk) -> Result<()> {
    let f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.set_len(disk.size)
        .with_context(|| format!("cannot size {}", path.display()))?;
    drop(f);
    if disk.partitions.is_empty() {
        return Ok(());
    }
    write_table(path, disk)
}

/// How many of the board's CPUs have vCPUs to run (QEMU threads that
/// compete for host cores): [`Built::vcpus`].
fn busy_cpus(cfg: &bulkhead_config::SystemConfig) -> usize {
    let pinned: usize = cfg
        .vms
        .iter()
        .filter(|vm| !vm.pooled())
        .map(|vm| vm.vcpu_count())
        .sum();
    let pooled: usize = cfg
        .pools
        .iter()
        .enumerate()
        .map(|(p, pool)| {
            let vcpus: usize = cfg
                .vms
                .iter()
                .filter(|vm| vm.pool == Some(p as u16))
                .map(|vm| vm.vcpu_count())
                .sum();
            vcpus.min(pool.pcpus.len())
        })
        .sum();
    pinned + pooled
}

/// The partitions `disk` lays out: (name, byte offset, bytes).
fn layout(disk: &bulkhead_config::Disk) -> Result<Vec<(&str, u64, u64)>> {
    let layout = bulkhead_config::partition_layout(&disk.partitions, disk.size)
        .map_err(|e| anyhow::anyhow!("disk '{}': {e}", disk.name))?;
    Ok(disk
        .partitions
        .iter()
        .zip(layout)
        .map(|(p, (offset, size))| (p.name.as_str(), offset, size))
        .collect())
}

/// Writes `disk`'s GUID partition table (both copies) into its image.
fn write_table(path: &Path, disk: &bulkhead_config::Disk) -> Result<()> {
    write_gpt(path, &gpt_pieces(disk, &layout(disk)?))
}

/// A GUID partition table for `disk` with `parts` (name, byte offset,
/// bytes), as the pieces to write (byte offset, bytes): for the config's
/// layout what [`write_table`] writes, and for any other what a test gives
/// a disk the config does not lay out. The GUIDs come from the disk's name.
pub fn gpt_pieces(disk: &bulkhead_config::Disk, parts: &[(&str, u64, u64)]) -> Vec<(u64, Vec<u8>)> {
    let seed = disk
        .name
        .bytes()
        .fold(0x5eed_u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    bulkhead_virtio::gpt::build(disk.size / 512, parts, seed)
}

/// Writes `pieces` of a partition table ([`gpt_pieces`]) into the disk
/// image at `path`.
pub fn write_gpt(path: &Path, pieces: &[(u64, Vec<u8>)]) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    for (at, bytes) in pieces {
        f.seek(SeekFrom::Start(*at))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write the partition table of {}", path.display()))?;
    }
    Ok(())
}

/// Whether the image's own table has exactly the partitions `disk` lays
/// out, where it lays them out.
fn table_matches(path: &Path, disk: &bulkhead_config::Disk) -> Result<bool> {
    use bulkhead_virtio::gpt;
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut sector = vec![0u8; 512];
    f.seek(SeekFrom::Start(512))?;
    f.read_exact(&mut sector)?;
    let Ok(h) = gpt::header(&sector) else {
        return Ok(false);
    };
    let mut array = vec![0u8; h.entries_bytes()];
    f.seek(SeekFrom::Start(h.entries_lba.saturating_mul(512)))?;
    if f.read_exact(&mut array).is_err() {
        return Ok(false);
    }
    let Ok(found) = gpt::partitions(&h, &array) else {
        return Ok(false);
    };
    let want = layout(disk)?;
    Ok(found.len() == want.len()
        && found.iter().zip(&want).all(|(p, &(name, offset, size))| {
            p.name == name && p.first * 512 == offset && p.sectors() * 512 == size
        }))
}

/// Starts every disk of `built` from zeros (and its partition table): a
/// test wants a known disk.
pub fn blank_disks(built: &Built) -> Result<()> {
    for (p, d) in built.disks.iter().zip(&built.disk_configs) {
        fresh_disk(p, d)?;
    }
    Ok(())
}

/// The hypervisor's flat binary zero-padded to its memory size
/// (`__hv_end - __hv_start`: its `.bss` and whatever else the linker script
/// reserves), then the payload, which the hypervisor therefore finds at
/// `__hv_end`.
pub fn assemble(hv_flat: &[u8], hv_start: u64, hv_end: u64, payload: &[u8]) -> Result<Vec<u8>> {
    let span = hv_end
        .checked_sub(hv_start)
        .with_context(|| format!("{HV_END} ({hv_end:#x}) is below {HV_START} ({hv_start:#x})"))?;
    let span = usize::try_from(span)?;
    if hv_flat.len() > span {
        bail!(
            "the hypervisor's flat binary ({:#x} bytes) is longer than {HV_END} - {HV_START} ({span:#x})",
            hv_flat.len()
        );
    }
    let mut out = Vec::with_capacity(span + payload.len());
    out.extend_from_slice(hv_flat);
    out.resize(span, 0);
    out.extend_from_slice(payload);
    Ok(out)
}

fn flat_of(path: &Path) -> Result<elf::Flat> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    elf::to_flat(&bytes).with_context(|| format!("in {}", path.display()))
}

pub fn elf_path(bin: &str) -> PathBuf {
    target_dir().join(TARGET).join("release").join(bin)
}

/// `(vm index, guest name)` for every VM built from a guest.
fn vm_guests(parsed: &Parsed) -> Vec<(usize, &str)> {
    parsed
        .config
        .vms
        .iter()
        .enumerate()
        .filter_map(|(i, vm)| match parsed.images.get(usize::from(vm.image)) {
            Some(ImageSource::Guest(g)) => Some((i, g.as_str())),
            _ => None,
        })
        .collect()
}

/// Files given by path that are not what their key needs: a `kernel`
/// without an arm64 Image header, an `image` that is an ELF or compressed,
/// a `dtb` that is no device tree. Each names what the file is and how to
/// make the right one.
fn format_problems(
    parsed: &Parsed,
    text: &str,
    file: &str,
    images: &[Option<(String, Vec<u8>)>],
) -> Vec<Diagnostic> {
    let bytes = |index: u16| match (
        parsed.images.get(usize::from(index)),
        images.get(usize::from(index)),
    ) {
        (Some(ImageSource::File(path)), Some(Some((_, b)))) => Some((path, b.as_slice())),
        _ => None,
    };
    let mut out = Vec::new();
    for (i, vm) in parsed.config.vms.iter().enumerate() {
        let uses = [
            (Some(vm.image), written(text, i, "kernel", "image")),
            (vm.dtb, "dtb"),
        ];
        for (index, key) in uses {
            let Some((path, b)) = index.and_then(bytes) else {
                continue;
            };
            let format = bulkhead_config::Format::of(b);
            let why = match key {
                "kernel" => format.not_a_kernel(),
                "image" => format.not_an_image(),
                _ => format.not_a_dtb(),
            };
            if let Some(why) = why {
                out.push(Diagnostic {
                    file: file.to_owned(),
                    line: key_line(text, i, key),
                    field: format!("vm[{i}].{key}"),
                    message: format!("{}: {why}", path.display()),
                });
            }
        }
    }
    out
}

/// `key` if the `vm`-th table writes it, else `other`: which of two keys
/// that fill the same field (`kernel`/`image`, `initramfs`/`init`) it used.
fn written(text: &str, vm: usize, key: &'static str, other: &'static str) -> &'static str {
    if find_key(text, vm, key).0.is_some() {
        key
    } else {
        other
    }
}

/// The VMs that use `source`, with the key that names it (`guest`, `image`,
/// `kernel`, `init`, `initramfs` or `dtb`).
fn vms_using(parsed: &Parsed, text: &str, source: &ImageSource) -> Vec<(usize, &'static str)> {
    let get = |n: u16| parsed.images.get(usize::from(n));
    let mut out = Vec::new();
    for (i, vm) in parsed.config.vms.iter().enumerate() {
        if get(vm.image) == Some(source) {
            out.push((i, written(text, i, "kernel", "image")));
        }
        if vm.initramfs.and_then(get) == Some(source) {
            out.push((i, written(text, i, "initramfs", "init")));
        }
        if vm.dtb.and_then(get) == Some(source) {
            out.push((i, "dtb"));
        }
    }
    out
}

/// What a Linux VM needs in its initramfs besides busybox, from each
/// Debian kernel that boots with initramfs `index`: with channels,
/// `/bin/bulkhead-chan` and the UIO modules; with disks or NICs, the
/// virtio-mmio modules and virtio-blk's or virtio-net's (and with disks
/// `/bin/bulkhead-io`, for random reads); when the init script runs
/// Debian's e2fsprogs (`mkfs.ext4`, `dumpe2fs`: the disk test's), those
/// tools and their libraries. Nothing for a VM with none of these.
fn initramfs_extras(
    parsed: &Parsed,
    index: usize,
    output: Output,
) -> Result<Vec<(String, Vec<u8>)>> {
    let users = || {
        parsed
            .config
            .vms
            .iter()
            .filter(move |vm| vm.initramfs.map(usize::from) == Some(index))
    };
    let mut kernels = Vec::new();
    for vm in users() {
        if let Some(ImageSource::Debian(k)) = parsed.images.get(usize::from(vm.image)) {
            if !kernels.contains(k) {
                kernels.push(*k);
            }
        }
    }
    let mut out = Vec::new();
    if !parsed.config.channels.is_empty() {
        out.push((
            "bin/bulkhead-chan".to_owned(),
            linux_tool("bulkhead-chan", output)?,
        ));
        for &k in &kernels {
            out.extend(debian::modules(k, debian::UIO_MODULES)?);
        }
    }
    let disks = users().any(|vm| !vm.disks.is_empty());
    let nets = users().any(|vm| !vm.nets.is_empty());
    if disks {
        out.push((
            "bin/bulkhead-io".to_owned(),
            linux_tool("bulkhead-io", output)?,
        ));
    }
    for &k in &kernels {
        if disks || nets {
            out.extend(debian::modules(k, debian::VIRTIO_MODULES)?);
        }
        if disks {
            out.extend(debian::modules(k, debian::VIRTIO_BLK_MODULES)?);
        }
        if nets {
            out.extend(debian::modules(k, debian::VIRTIO_NET_MODULES)?);
        }
    }
    // An unreadable script is reported by `read_source`, on its VM's key.
    let script = match parsed.images.get(index) {
        Some(ImageSource::Initramfs(init)) => std::fs::read_to_string(init).unwrap_or_default(),
        _ => String::new(),
    };
    if debian::runs_e2fsprogs(&script) {
        out.extend(debian::e2fsprogs()?);
    }
    Ok(out)
}

/// Builds Linux user-space tool `package` (tools/) as a static aarch64
/// Linux binary (musl, linked by rust-lld; see .cargo/config.toml),
/// without debug info.
fn linux_tool(package: &str, output: Output) -> Result<Vec<u8>> {
    const MUSL: &str = "aarch64-unknown-linux-musl";
    if output == Output::Progress {
        println!("building {package} (Linux user space, {MUSL})…");
    }
    let status = cargo()
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            package,
            "--target",
            MUSL,
        ])
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building {package} for {MUSL} failed");
    }
    let path = target_dir().join(MUSL).join("release").join(package);
    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// Why an image source could not be turned into bytes.
enum SourceError {
    /// A file the config names cannot be read: reported as a config problem
    /// on the VM's key.
    Unreadable {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Anything else (a failed download, a broken package).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for SourceError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

/// The name and bytes of a non-guest image (`None` for a guest, which is
/// built later): a file as is, a Debian kernel from the cache (fetched if
/// needed), an initramfs generated around its init script (also written to
/// `target/bulkhead/initramfs/<script>.cpio`).
fn read_source(
    source: &ImageSource,
    output: Output,
    extra: &[(String, Vec<u8>)],
) -> Result<Option<(String, Vec<u8>)>, SourceError> {
    let stem = |p: &Path| {
        p.file_stem()
            .map_or("image".into(), |s| s.to_string_lossy().into_owned())
    };
    match source {
        ImageSource::Guest(_) => Ok(None),
        ImageSource::File(path) => match std::fs::read(path) {
            Ok(bytes) => Ok(Some((stem(path), bytes))),
            Err(error) => Err(SourceError::Unreadable {
                what: "image file",
                path: path.clone(),
                error,
            }),
        },
        ImageSource::Debian(kernel) => {
            let path = debian::kernel_image(*kernel)?;
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some((format!("debian-{}", kernel.suite()), bytes)))
        }
        ImageSource::Initramfs(init) => {
            let script = std::fs::read(init).map_err(|error| SourceError::Unreadable {
                what: "init script",
                path: init.clone(),
                error,
            })?;
            let (path, bytes) = initramfs(init, &script, extra)?;
            if output == Output::Progress {
                println!(
                    "initramfs {} ({}) with /init = {}",
                    path.display(),
                    bulkhead_config::Size(bytes.len() as u64),
                    init.display()
                );
            }
            Ok(Some((format!("initramfs-{}", stem(init)), bytes)))
        }
    }
}

/// Builds the initramfs for the init script `init` (whose bytes are
/// `script`) and writes it to `target/bulkhead/initramfs/<stem>.cpio`.
fn initramfs(
    init: &Path,
    script: &[u8],
    extra: &[(String, Vec<u8>)],
) -> Result<(PathBuf, Vec<u8>)> {
    let busybox_path = debian::busybox()?;
    let busybox = std::fs::read(&busybox_path)
        .with_context(|| format!("cannot read {}", busybox_path.display()))?;
    let bytes = cpio::initramfs(&busybox, script, extra);
    let dir = target_dir().join("bulkhead/initramfs");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = init
        .file_stem()
        .map_or("init".into(), |s| s.to_string_lossy().into_owned());
    let path = dir.join(format!("{name}.cpio"));
    debian::write_atomically(&path, &bytes)?;
    Ok((path, bytes))
}

/// What it takes to boot a config's first Linux VM straight on QEMU.
pub struct NativeLinux {
    pub name: String,
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: usize,
    pub memory: u64,
}

/// The kernel, initramfs (written to target/), command line, vCPU count and
/// memory of the first VM in `config` that boots Linux.
pub fn native_linux(config: &Path) -> Result<NativeLinux> {
    let parsed = bulkhead_config::toml::load(config)
        .map_err(|d| diagnostics(&format!("{} is not a valid config:", config.display()), &d))?;
    let Some((i, vm)) = parsed
        .config
        .vms
        .iter()
        .enumerate()
        .find(|(_, vm)| vm.boots_linux())
    else {
        bail!(
            "{} has no Linux VM (one with `kernel = ...`)",
            config.display()
        );
    };
    let source = |n: u16| {
        parsed
            .images
            .get(usize::from(n))
            .with_context(|| format!("vm[{i}] names image {n}, which does not exist"))
    };
    let kernel = match source(vm.image)? {
        ImageSource::File(path) => path.clone(),
        ImageSource::Debian(k) => debian::kernel_image(*k)?,
        other => bail!("vm[{i}] '{}' is not a Linux kernel: {other:?}", vm.name),
    };
    let initramfs = match vm.initramfs.map(source).transpose()? {
        Some(ImageSource::Initramfs(init)) => {
            let script = std::fs::read(init)
                .with_context(|| format!("cannot read init script {}", init.display()))?;
            // The same extra files (modules, tools) as under Bulkhead.
            let index = vm.initramfs.map_or(0, usize::from);
            let extra = initramfs_extras(&parsed, index, Output::Quiet)?;
            Some(initramfs(init, &script, &extra)?.0)
        }
        Some(ImageSource::File(path)) => Some(path.clone()),
        Some(other) => bail!("vm[{i}]'s initramfs is neither a file nor generated: {other:?}"),
        None => None,
    };
    Ok(NativeLinux {
        name: vm.name.clone(),
        kernel,
        initramfs,
        cmdline: vm.cmdline.clone(),
        vcpus: vm.vcpu_count(),
        memory: vm.memory,
    })
}

/// Distinct guests the config names.
fn guest_names(parsed: &Parsed) -> Vec<String> {
    parsed
        .images
        .iter()
        .filter_map(|s| match s {
            ImageSource::Guest(g) => Some(g.clone()),
            _ => None,
        })
        .collect()
}

/// 1-based line of `key = ...` in the `vm`-th `[[vm]]` table of a config
/// file (or of that table's header, or 1), for problems the config crate
/// cannot see: guests that do not exist and image files that cannot be read.
pub fn key_line(text: &str, vm: usize, key: &str) -> usize {
    let (key_line, header) = find_key(text, vm, key);
    key_line.or(header).unwrap_or(1)
}

/// The 1-based lines of `key = ...` in the `vm`-th `[[vm]]` table and of
/// that table's header, where they exist.
fn find_key(text: &str, vm: usize, key: &str) -> (Option<usize>, Option<usize>) {
    let mut tables = 0usize;
    let mut header = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            let is_vm = line
                .strip_prefix("[[")
                .and_then(|r| r.split("]]").next())
                .map(str::trim)
                == Some("vm");
            if is_vm {
                tables += 1;
            }
            if header.is_some() {
                break;
            }
            if is_vm && tables == vm + 1 {
                header = Some(n + 1);
            }
            continue;
        }
        let is_key = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if header.is_some() && is_key {
            return (Some(n + 1), header);
        }
    }
    (None, header)
}

/// Guests that can be named: the directories under guests/ with a
/// Cargo.toml, except the shared runtime `rt`.
pub fn available_guests() -> Result<Vec<String>> {
    let dir = repo_root().join("guests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n != "rt")
        .collect();
    names.sort();
    Ok(names)
}

/// `cargo build --release --target aarch64-unknown-none-softfloat` for the
/// hypervisor and `guests` (one cargo run, so they build in parallel).
pub fn cargo_build(guests: &[String], output: Output) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", TARGET, "-p", HV_PACKAGE]);
    for g in guests {
        cmd.args(["-p", &format!("guest-{g}")]);
    }
    if output == Output::Quiet {
        cmd.arg("--quiet");
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build of the hypervisor/guests failed ({status})");
    }
    Ok(())
}

/// Where hypervisors with extra cargo features are built, under the target
/// directory.
pub const FEATURES_TARGET_DIR: &str = "hv-features";

/// Builds the hypervisor with `features` in [`FEATURES_TARGET_DIR`]; returns
/// the ELF's path.
fn cargo_build_hv_features(features: &[&str], output: Output) -> Result<PathBuf> {
    let dir = target_dir().join(FEATURES_TARGET_DIR);
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", TARGET, "-p", HV_PACKAGE]);
    cmd.arg("--features").arg(features.join(","));
    cmd.arg("--target-dir").arg(&dir);
    if output == Output::Quiet {
        cmd.arg("--quiet");
    }
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!(
            "cargo build of the hypervisor with features {} failed ({status})",
            features.join(",")
        );
    }
    Ok(dir.join(TARGET).join("release").join(HV_BIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cpus_counts_a_pool_by_its_pcpus() {
        let load = |f: &str| {
            bulkhead_config::toml::load(&crate::repo_root().join(f))
                .unwrap_or_else(|d| panic!("{f}: {d:?}"))
                .config
        };
        // The safety VM's pCPU and the pool's two, not its six vCPUs.
        assert_eq!(busy_cpus(&load("configs/test-sched.toml")), 3);
        // Two vCPUs in a pool of two pCPUs.
        assert_eq!(busy_cpus(&load("configs/test-sched-move.toml")), 2);
        // Two vCPUs in a pool of one.
        assert_eq!(busy_cpus(&load("configs/bench-pool.toml")), 1);
        // Pinned only: one per vCPU, as before.
        assert_eq!(busy_cpus(&load("configs/default.toml")), 3);
    }

    const TWO_VMS: &str = "[board]\ncpus = 2\n\n[[vm]]\nname = \"a\"\nguest = \"hello\"\n\n\
                           [[vm]]\nname = \"b\"\nimage_path = 1\nimage = \"x.bin\"\n";

    #[test]
    fn key_line_finds_the_key_in_the_right_vm_table() {
        assert_eq!(key_line(TWO_VMS, 0, "guest"), 6);
        assert_eq!(key_line(TWO_VMS, 1, "image"), 11);
    }

    #[test]
    fn key_line_falls_back_to_the_vm_header() {
        assert_eq!(key_line(TWO_VMS, 1, "guest"), 8);
        assert_eq!(key_line(TWO_VMS, 5, "guest"), 1);
    }

    #[test]
    fn payload_starts_at_hv_end() {
        let out = assemble(&[1, 2, 3], 0x4008_0000, 0x4008_1000, &[9, 9]).unwrap();
        assert_eq!(out.len(), 0x1002);
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert!(out[3..0x1000].iter().all(|&b| b == 0));
        assert_eq!(&out[0x1000..], &[9, 9]);
    }

    #[test]
    fn flat_longer_than_hv_span_is_rejected() {
        let err = assemble(&[0; 0x1001], 0x1000, 0x2000, &[]).unwrap_err();
        assert!(err
            .to_string()
            .contains("longer than __hv_end - __hv_start"));
    }

    #[test]
    fn hv_end_below_start_is_rejected() {
        assert!(assemble(&[], 0x2000, 0x1000, &[]).is_err());
    }
}
