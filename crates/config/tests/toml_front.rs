//! The TOML front-end, end to end: text in, config or `file:line: field:
//! message` diagnostics out.
#![cfg(feature = "toml")]

use std::path::{Path, PathBuf};

use bulkhead_config::toml::{load, parse, DebianKernel, Diagnostic, ImageSource, Parsed};
use bulkhead_config::{Criticality, ImageInfo, RestartPolicy, DEFAULT_CMDLINE, IMAGE_LOAD_OFFSET};

const CAR: &str = include_str!("data/car.toml");
const FILE: &str = "configs/car.toml";
/// Small enough to fit every VM in car.toml.
const SIZES: &[ImageInfo] = &[ImageInfo::raw(64 << 10), ImageInfo::raw(8 << 20)];

/// 1-based line of the first occurrence of `needle` in `text`.
fn line(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    text[..at].matches('\n').count() + 1
}

fn parse_ok(text: &str) -> Parsed {
    parse(text, FILE).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn only(diags: Vec<Diagnostic>) -> Diagnostic {
    assert_eq!(diags.len(), 1, "{diags:#?}");
    diags.into_iter().next().unwrap()
}

/// The single diagnostic of `check` on `text`.
fn check_fails(text: &str, sizes: &[ImageInfo]) -> Diagnostic {
    only(parse_ok(text).check(sizes).unwrap_err())
}

#[test]
fn example_parses_into_the_expected_config() {
    let p = parse_ok(CAR);
    let c = &p.config;
    assert_eq!(c.board.cpus, 4);
    assert_eq!(c.board.ram_base, 0x4000_0000);
    assert_eq!(c.board.ram_size, 1 << 30);
    assert_eq!(c.vms.len(), 3);
    assert_eq!(c.vms[0].name, "safety");
    assert_eq!(c.vms[0].memory, 16 << 20);
    assert_eq!(c.vms[0].host_address, Some(0x5000_0000));
    assert_eq!(c.vms[0].pcpus, vec![0]);
    assert_eq!(c.vms[0].restart, RestartPolicy::Always);
    assert_eq!(c.vms[1].memory, 256 << 20);
    assert_eq!(c.vms[1].host_address, None);
    assert_eq!(c.vms[1].restart, RestartPolicy::OnCrash);
    assert_eq!(c.vms[2].memory, 0x40_0000, "hex integer size");
    assert_eq!(c.vms[2].restart, RestartPolicy::OnCrash, "default restart");
    assert_eq!(p.check(SIZES), Ok(()));
}

#[test]
fn identical_image_sources_share_one_index_and_files_resolve_beside_the_config() {
    let p = parse_ok(CAR);
    assert_eq!(
        p.images,
        vec![
            ImageSource::Guest("hello".into()),
            ImageSource::File(PathBuf::from("configs/images/Image")),
        ]
    );
    let idx: Vec<u16> = p.config.vms.iter().map(|v| v.image).collect();
    assert_eq!(idx, vec![0, 1, 0]);
}

#[test]
fn ram_base_defaults_to_the_qemu_virt_ram_address() {
    let p = parse_ok(&CAR.replace("ram_base = 0x4000_0000\n", ""));
    assert_eq!(p.config.board.ram_base, 0x4000_0000);
}

#[test]
fn load_reads_the_example_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/car.toml");
    let p = load(&path).unwrap();
    assert_eq!(p.config.vms.len(), 3);
    assert_eq!(
        p.images[1],
        ImageSource::File(path.parent().unwrap().join("images/Image"))
    );
}

#[test]
fn missing_file_is_line_0_and_says_why() {
    let d = only(load(Path::new("/nonexistent/car.toml")).unwrap_err());
    assert_eq!(d.file, "/nonexistent/car.toml");
    assert_eq!(d.line, 0);
    assert_eq!(d.field, "");
    assert!(d.message.contains("cannot read"), "{}", d.message);
    assert!(d.message.contains("No such file"), "{}", d.message);
}

#[test]
fn diagnostic_displays_file_line_field_message() {
    let d = Diagnostic {
        file: "a.toml".into(),
        line: 3,
        field: "vm[0].memory".into(),
        message: "memory is zero".into(),
    };
    assert_eq!(d.to_string(), "a.toml:3: vm[0].memory: memory is zero");
}

#[test]
fn unknown_key_is_an_error_naming_key_and_line() {
    let text = CAR.replace("pcpus = [1, 2]", "pcpus = [1, 2]\ncolour = \"red\"");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.file, FILE);
    assert_eq!(d.line, line(&text, "colour"));
    assert_eq!(d.field, "vm[1].colour");
    assert!(
        d.message.contains("unknown field `colour`"),
        "{}",
        d.message
    );
}

#[test]
fn unknown_board_key_is_an_error() {
    let text = CAR.replace("cpus = 4", "cpus = 4\nsmt = true");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "smt"), "board.smt")
    );
}

#[test]
fn syntax_error_carries_its_line() {
    let text = CAR.replace("name = \"logger\"", "name = logger");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "name = logger"));
    assert_eq!(d.field, "vm[2].name");
}

#[test]
fn wrong_type_carries_its_line() {
    let text = CAR.replace("pcpus = [1, 2]", "pcpus = [1, -2]");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "[1, -2]"));
    assert_eq!(d.field, "vm[1].pcpus");
    assert!(d.message.contains("-2"), "{}", d.message);
}

#[test]
fn bad_restart_policy_is_refused() {
    let text = CAR.replace("\"on-crash\"", "\"sometimes\"");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "sometimes"));
    assert!(d.message.contains("on-crash"), "{}", d.message);
}

#[test]
fn missing_required_key_points_at_the_vm_header() {
    let text = CAR.replace("memory = 0x40_0000\n", "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        d.line,
        text.rfind("[[vm]]")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert!(
        d.message.contains("missing field `memory`"),
        "{}",
        d.message
    );
}

#[test]
fn vm_without_pcpus_or_pool_has_no_vcpus_at_its_header() {
    let text = CAR.replace("pcpus = [3]\n", "");
    let d = check_fails(&text, SIZES);
    assert_eq!(
        d.line,
        text.rfind("[[vm]]")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert_eq!(d.field, "vm[2].pcpus");
    assert!(d.message.starts_with("0 vCPUs: "), "{}", d.message);
}

#[test]
fn bad_size_strings_are_each_reported_with_line_and_field() {
    let text = CAR
        .replace("memory = \"1G\"", "memory = \"1 gig\"")
        .replace("memory = \"256MiB\"", "memory = \"256MB\"");
    let diags = parse(&text, FILE).unwrap_err();
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert_eq!(diags[0].line, line(&text, "1 gig"));
    assert_eq!(diags[0].field, "board.memory");
    assert!(
        diags[0].message.contains("bad size \"1 gig\""),
        "{}",
        diags[0].message
    );
    assert_eq!(diags[1].line, line(&text, "256MB"));
    assert_eq!(diags[1].field, "vm[1].memory");
}

#[test]
fn guest_and_image_both_set_is_refused() {
    let text = CAR.replace(
        "guest = \"hello\"\nmemory = \"16M\"",
        "guest = \"hello\"\nimage = \"x.img\"\nmemory = \"16M\"",
    );
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "x.img"));
    assert_eq!(d.field, "vm[0].image");
    assert!(d.message.contains("not both"), "{}", d.message);
}

#[test]
fn neither_guest_nor_image_is_refused_at_the_vm_header() {
    let text = CAR.replace("image = \"images/Image\"\n", "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "name = \"infotainment\"") - 1);
    assert_eq!(d.field, "vm[1]");
}

#[test]
fn overlapping_host_regions_are_reported_on_the_later_vms_line() {
    // infotainment gets a fixed region starting inside safety's 16 MiB.
    let text = CAR.replace(
        "memory = \"256MiB\"",
        "memory = \"256MiB\"\nhost_address = 0x5080_0000",
    );
    let d = check_fails(&text, SIZES);
    assert_eq!(d.line, line(&text, "host_address = 0x5080_0000"));
    assert_eq!(d.field, "vm[1].host_address");
    assert!(d.message.contains("overlaps vm 'safety'"), "{}", d.message);
    assert!(
        d.to_string()
            .starts_with(&format!("{FILE}:{}: vm[1].host_address: ", d.line)),
        "{d}"
    );
}

#[test]
fn pcpu_out_of_range_is_reported_on_the_pcpus_line() {
    let text = CAR.replace("pcpus = [1, 2]", "pcpus = [1, 5]");
    let d = check_fails(&text, SIZES);
    assert_eq!(d.line, line(&text, "[1, 5]"));
    assert_eq!(d.field, "vm[1].pcpus");
    assert_eq!(
        d.message,
        "vCPU 1 is pinned to cpu5 but the board has 4 CPUs"
    );
}

#[test]
fn pcpu_used_twice_names_its_first_owner() {
    let text = CAR.replace("pcpus = [3]", "pcpus = [2]");
    let d = check_fails(&text, SIZES);
    assert_eq!(d.line, line(&text, "pcpus = [2]"));
    assert_eq!(d.field, "vm[2].pcpus");
    assert_eq!(d.message, "cpu2 is already given to vm 'infotainment'");
}

#[test]
fn image_larger_than_its_vm_is_reported_on_memory() {
    // The `hello` guest is used by safety (16 MiB) and logger (4 MiB).
    let big = (4 << 20) - IMAGE_LOAD_OFFSET + 1;
    let d = check_fails(CAR, &[ImageInfo::raw(big), ImageInfo::raw(8 << 20)]);
    assert_eq!(d.line, line(CAR, "memory = 0x40_0000"));
    assert_eq!(d.field, "vm[2].memory");
    assert!(
        d.message.contains("image is larger than its VM"),
        "{}",
        d.message
    );
}

#[test]
fn board_ram_size_problem_is_reported_on_board_memory() {
    let text = CAR.replace("memory = \"1G\"", "memory = \"1025M\"");
    let d = check_fails(&text, SIZES);
    assert_eq!(d.line, line(&text, "1025M"));
    assert_eq!(d.field, "board.memory");
}

#[test]
fn duplicate_vm_name_is_reported_on_the_second_name() {
    let text = CAR.replace("\"logger\"", "\"safety\"");
    let d = check_fails(&text, SIZES);
    assert_eq!(d.field, "vm[2].name");
    assert_eq!(
        d.line,
        text.rfind("name = \"safety\"")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
}

#[test]
fn config_without_vms_is_reported_at_line_1() {
    let text = "[board]\ncpus = 1\nmemory = \"128M\"\n";
    let d = check_fails(text, &[]);
    assert_eq!((d.line, d.field.as_str()), (1, "vm"));
}

#[test]
fn encoded_example_decodes_to_the_same_config() {
    let p = parse_ok(CAR);
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
}

/// One Linux VM on a 4-CPU, 1 GiB board; `vm` is the body of its table.
fn linux_config(vm: &str) -> String {
    format!(
        "[board]\ncpus = 4\nmemory = \"1G\"\n\n[[vm]]\nname = \"linux\"\n{vm}memory = \"512M\"\npcpus = [0, 1]\n"
    )
}

#[test]
fn debian_kernel_with_init_gets_an_initramfs_and_the_linux_cmdline() {
    let text = linux_config(
        "kernel = \"debian:bookworm\"\ninit = \"linux/init-test.sh\"\nappend = \"quiet\"\n",
    );
    let p = parse_ok(&text);
    assert_eq!(
        p.images,
        vec![
            ImageSource::Debian(DebianKernel::Bookworm),
            ImageSource::Initramfs(PathBuf::from("configs/linux/init-test.sh")),
        ]
    );
    let vm = &p.config.vms[0];
    assert_eq!((vm.image, vm.initramfs), (0, Some(1)));
    assert_eq!(vm.cmdline, "console=ttyAMA0 rdinit=/init panic=-1 quiet");
    assert!(vm.boots_linux());
}

#[test]
fn backports_kernel_without_init_has_no_initramfs() {
    let p = parse_ok(&linux_config("kernel = \"debian:bookworm-backports\"\n"));
    assert_eq!(
        p.images,
        vec![ImageSource::Debian(DebianKernel::BookwormBackports)]
    );
    assert_eq!(p.config.vms[0].initramfs, None);
    assert_eq!(
        p.config.vms[0].cmdline,
        "console=ttyAMA0 rdinit=/init panic=-1"
    );
}

#[test]
fn kernel_path_resolves_beside_the_config() {
    let p = parse_ok(&linux_config("kernel = \"linux/Image\"\n"));
    assert_eq!(
        p.images,
        vec![ImageSource::File(PathBuf::from("configs/linux/Image"))]
    );
}

#[test]
fn bare_metal_guest_gets_the_default_cmdline() {
    let p = parse_ok(CAR);
    assert!(p.config.vms.iter().all(|vm| vm.cmdline == DEFAULT_CMDLINE));
    assert!(p.config.vms.iter().all(|vm| vm.initramfs.is_none()));
}

#[test]
fn image_may_take_init_and_append() {
    let p = parse_ok(&linux_config(
        "image = \"Image\"\ninit = \"i.sh\"\nappend = \"  loglevel=3 \"\n",
    ));
    let vm = &p.config.vms[0];
    assert_eq!(vm.initramfs, Some(1));
    assert_eq!(
        vm.cmdline,
        "console=ttyAMA0 rdinit=/init panic=-1 loglevel=3"
    );
    let p = parse_ok(&linux_config("image = \"Image\"\nappend = \"x\"\n"));
    assert_eq!(p.config.vms[0].cmdline, "console=ttyAMA0 x");
}

#[test]
fn cmdline_is_passed_verbatim() {
    // A test program for QEMU virt that parses its arguments strictly gets
    // exactly what the config says, spaces included.
    let p = parse_ok(&linux_config(
        "kernel = \"Image\"\ncmdline = \"setup smp=2 mem=256 \"\n",
    ));
    assert_eq!(p.config.vms[0].cmdline, "setup smp=2 mem=256 ");
    let p = parse_ok(&linux_config("guest = \"hello\"\ncmdline = \"\"\n"));
    assert_eq!(p.config.vms[0].cmdline, "");
}

#[test]
fn cmdline_and_append_together_are_refused_on_the_later_line() {
    let text = linux_config("kernel = \"Image\"\ncmdline = \"a\"\nappend = \"b\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "append ="));
    assert_eq!(d.field, "vm[0].append");
    assert!(d.message.contains("not both"), "{}", d.message);
}

#[test]
fn initramfs_and_dtb_files_are_images_of_their_own() {
    let p = parse_ok(&linux_config(
        "kernel = \"k/Image\"\ninitramfs = \"k/root.cpio.gz\"\ndtb = \"k/board.dtb\"\n",
    ));
    // Both parse, but a given device tree cannot name the initramfs.
    let d = only(
        p.check(&[
            ImageInfo::raw(4 << 20),
            ImageInfo::raw(1 << 20),
            ImageInfo::raw(4096),
        ])
        .unwrap_err(),
    );
    assert_eq!(d.field, "vm[0].dtb");
    assert!(
        d.message.contains("cannot tell the guest where"),
        "{}",
        d.message
    );
    assert_eq!(
        p.images,
        vec![
            ImageSource::File(PathBuf::from("configs/k/Image")),
            ImageSource::File(PathBuf::from("configs/k/root.cpio.gz")),
            ImageSource::File(PathBuf::from("configs/k/board.dtb")),
        ]
    );
    let vm = &p.config.vms[0];
    assert_eq!((vm.image, vm.initramfs, vm.dtb), (0, Some(1), Some(2)));
    // An initramfs makes it a Linux command line.
    assert_eq!(vm.cmdline, "console=ttyAMA0 rdinit=/init panic=-1");
    assert!(vm.boots_linux());
}

#[test]
fn cmdline_with_a_dtb_is_refused_as_having_no_effect() {
    let text = linux_config("image = \"args.img\"\ndtb = \"b.dtb\"\ncmdline = \"x\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "cmdline ="));
    assert!(d.message.contains("no effect with `dtb`"), "{}", d.message);
}

#[test]
fn init_and_initramfs_together_are_refused_on_the_later_line() {
    let text = linux_config("kernel = \"Image\"\ninit = \"i.sh\"\ninitramfs = \"r.cpio\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "initramfs ="));
    assert_eq!(d.field, "vm[0].initramfs");
    assert!(
        d.message.contains("not both `init` and `initramfs`"),
        "{}",
        d.message
    );
}

#[test]
fn dtb_larger_than_the_device_tree_space_is_refused_on_its_line() {
    let text = linux_config("kernel = \"Image\"\ndtb = \"big.dtb\"\n");
    let p = parse_ok(&text);
    let images = [ImageInfo::raw(4 << 20), ImageInfo::raw(65 << 10)];
    let d = only(p.check(&images).unwrap_err());
    assert_eq!(d.line, line(&text, "dtb ="));
    assert_eq!(d.field, "vm[0].dtb");
    assert!(d.message.contains("at most 64 KiB"), "{}", d.message);
}

#[test]
fn kernel_and_guest_both_set_is_refused_on_the_later_line() {
    let text = linux_config("guest = \"hello\"\nkernel = \"debian:bookworm\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "kernel ="));
    assert_eq!(d.field, "vm[0].kernel");
    assert!(
        d.message.contains("not both `guest` and `kernel`"),
        "{}",
        d.message
    );
}

#[test]
fn all_three_sources_set_is_one_error_listing_them() {
    let text = linux_config("kernel = \"K\"\nimage = \"I\"\nguest = \"hello\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "guest ="));
    assert!(
        d.message.contains("`kernel`, `image`, `guest`"),
        "{}",
        d.message
    );
}

#[test]
fn init_without_kernel_is_refused_on_its_line() {
    let text = linux_config("guest = \"hello\"\ninit = \"linux/init-test.sh\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "init ="));
    assert_eq!(d.field, "vm[0].init");
    assert!(d.message.contains("needs `kernel`"), "{}", d.message);
}

#[test]
fn bare_metal_guest_append_goes_after_the_console_default() {
    let text = linux_config("guest = \"hello\"\nappend = \"bench.quick\"\n");
    let p = parse(&text, FILE).unwrap();
    assert_eq!(p.config.vms[0].cmdline, "console=ttyAMA0 bench.quick");
    assert_eq!(p.config.vms[0].initramfs, None);
}

#[test]
fn unknown_debian_suite_is_refused_naming_the_known_ones() {
    let text = linux_config("kernel = \"debian:sid\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "kernel ="));
    assert_eq!(d.field, "vm[0].kernel");
    assert_eq!(
        d.message,
        "unknown Debian suite \"sid\"; known: \"debian:bookworm\", \"debian:bookworm-backports\""
    );
}

#[test]
fn linux_vm_too_small_for_kernel_and_initramfs_is_reported_on_memory() {
    let text =
        linux_config("kernel = \"debian:bookworm\"\ninit = \"i.sh\"\n").replace("512M", "32M");
    let kernel = ImageInfo {
        len: 27 << 20,
        load_offset: 0,
        mem_size: 28 << 20,
    };
    let d = check_fails(&text, &[kernel, ImageInfo::raw(2 << 20)]);
    assert_eq!(d.line, line(&text, "memory = \"32M\""));
    assert_eq!(d.field, "vm[0].memory");
    assert!(
        d.message
            .contains("kernel 28 MiB + load offset 0x0 + initramfs 2 MiB + device tree 64 KiB + slack 2 MiB = 32.0 MiB"),
        "{}",
        d.message
    );
}

#[test]
fn missing_initramfs_image_is_reported_on_init() {
    let text = linux_config("kernel = \"debian:bookworm\"\ninit = \"i.sh\"\n");
    let d = check_fails(&text, &[ImageInfo::raw(1 << 20)]);
    assert_eq!(d.line, line(&text, "init ="));
    assert_eq!(d.field, "vm[0].init");
}

#[test]
fn encoded_linux_config_decodes_to_the_same_config() {
    let p = parse_ok(&linux_config(
        "kernel = \"debian:bookworm\"\ninit = \"i.sh\"\ncmdline = \"quiet\"\n",
    ));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
}

/// Two bare-metal VMs on a 4-CPU, 1 GiB board; `first` and `second` are
/// appended after each VM's table (e.g. `[[vm.passthrough]]` tables).
fn passthrough_config(first: &str, second: &str) -> String {
    format!(
        "[board]\ncpus = 4\nmemory = \"1G\"\n\n\
         [[vm]]\nname = \"safety\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [0]\n{first}\n\
         [[vm]]\nname = \"infotainment\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [1]\n{second}"
    )
}

const RTC: &str = "[[vm.passthrough]]\nname = \"rtc\"\nbase = 0x0901_0000\nsize = 0x1000\nirqs = [34]\ncompatible = [\"arm,pl031\", \"arm,primecell\"]\n";

#[test]
fn passthrough_tables_parse_into_the_vms_devices() {
    let gpio = "[[vm.passthrough]]\nname = \"gpio\"\nbase = 0x0903_0000\nsize = \"4K\"\ncompatible = [\"arm,pl061\"]\n";
    let text = passthrough_config(&format!("{RTC}\n{gpio}"), "");
    let p = parse_ok(&text);
    let devs = &p.config.vms[0].passthrough;
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[0].name, "rtc");
    assert_eq!(devs[0].base, 0x0901_0000);
    assert_eq!(devs[0].size, 0x1000);
    assert_eq!(devs[0].irqs, vec![34]);
    assert_eq!(devs[0].compatible, vec!["arm,pl031", "arm,primecell"]);
    assert_eq!(devs[1].size, 4096, "size strings work");
    assert!(devs[1].irqs.is_empty(), "irqs default to none");
    assert!(p.config.vms[1].passthrough.is_empty());
    assert_eq!(p.check(&[ImageInfo::raw(64 << 10)]), Ok(()));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
}

#[test]
fn passthrough_range_given_twice_is_reported_on_the_later_base() {
    let text = passthrough_config(RTC, &RTC.replace("[34]", "[35]"));
    let d = check_fails(&text, &[ImageInfo::raw(64 << 10)]);
    assert_eq!(d.field, "vm[1].passthrough[0].base");
    assert_eq!(
        d.line,
        text.rfind("base = 0x0901_0000")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert!(
        d.message
            .contains("0x9010000..0x9011000 is already given to vm 'safety' (rtc)"),
        "{}",
        d.message
    );
}

#[test]
fn passthrough_irq_given_twice_is_reported_on_the_later_irqs_line() {
    let other = RTC
        .replace("0x0901_0000", "0x0903_0000")
        .replace("[34]", "[40, 34]");
    let text = passthrough_config(RTC, &other);
    let d = check_fails(&text, &[ImageInfo::raw(64 << 10)]);
    assert_eq!(d.field, "vm[1].passthrough[0].irqs");
    assert_eq!(d.line, line(&text, "[40, 34]"));
    assert_eq!(d.message, "irq 34 is already given to vm 'safety'");
}

#[test]
fn passthrough_inside_the_gic_is_reported_on_base() {
    let text = passthrough_config(&RTC.replace("0x0901_0000", "0x0801_0000"), "");
    let d = check_fails(&text, &[ImageInfo::raw(64 << 10)]);
    assert_eq!(d.field, "vm[0].passthrough[0].base");
    assert_eq!(d.line, line(&text, "0x0801_0000"));
    assert!(d.message.contains("is the GIC, which the hypervisor owns"));
}

#[test]
fn passthrough_problems_point_at_their_own_keys() {
    let bad = RTC
        .replace("size = 0x1000", "size = 0x1800")
        .replace("\"rtc\"", "\"RTC\"")
        .replace("[\"arm,pl031\", \"arm,primecell\"]", "[]");
    let text = passthrough_config(&bad, "");
    let diags = parse_ok(&text)
        .check(&[ImageInfo::raw(64 << 10)])
        .unwrap_err();
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (line(&text, "\"RTC\""), "vm[0].passthrough[0].name"),
            (line(&text, "0x1800"), "vm[0].passthrough[0].size"),
            (
                line(&text, "compatible = []"),
                "vm[0].passthrough[0].compatible"
            ),
        ]
    );
}

#[test]
fn too_many_passthrough_devices_points_at_the_first_table() {
    let devices: String = (0..9)
        .map(|k| {
            format!(
                "[[vm.passthrough]]\nname = \"d{k}\"\nbase = {:#x}\nsize = 0x1000\ncompatible = [\"x,y\"]\n",
                0x1_0000_0000u64 + k * 0x1000
            )
        })
        .collect();
    let text = passthrough_config(&devices, "");
    let d = check_fails(&text, &[ImageInfo::raw(64 << 10)]);
    assert_eq!(d.field, "vm[0].passthrough");
    assert_eq!(d.line, line(&text, "[[vm.passthrough]]"));
}

#[test]
fn passthrough_missing_key_and_unknown_key_are_parse_errors() {
    let text = passthrough_config(&RTC.replace("size = 0x1000\n", ""), "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert!(d.message.contains("missing field `size`"), "{}", d.message);
    assert_eq!(d.line, line(&text, "[[vm.passthrough]]"));

    let text = passthrough_config(RTC, &RTC.replace("irqs", "irq"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert!(d.message.contains("unknown field `irq`"), "{}", d.message);
    assert_eq!(d.field, "vm[1].passthrough[0].irq");
}

#[test]
fn bad_passthrough_size_string_is_a_parse_error_on_its_line() {
    let text = passthrough_config(&RTC.replace("size = 0x1000", "size = \"4 KB\""), "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.field, "vm[0].passthrough[0].size");
    assert_eq!(d.line, line(&text, "4 KB"));
}

/// Two bare-metal VMs on a 4-CPU board, then `rest` (e.g. `[[channel]]`
/// tables); `safety` gets `vm` in its table.
fn channel_config(vm: &str, rest: &str) -> String {
    format!(
        "[board]\ncpus = 4\nmemory = \"1G\"\n\n\
         [[vm]]\nname = \"safety\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [0]\n{vm}\n\
         [[vm]]\nname = \"infotainment\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [1, 2]\n\n{rest}"
    )
}

const CONTROL: &str = "[[channel]]\nname = \"control\"\nbetween = [\"infotainment\", \"safety\"]\n";
const IMAGE: &[ImageInfo] = &[ImageInfo::raw(64 << 10)];

#[test]
fn channel_tables_parse_into_the_systems_channels() {
    let bulk =
        "[[channel]]\nname = \"bulk\"\nbetween = [\"safety\", \"infotainment\"]\nsize = \"1M\"\n";
    let text = channel_config("", &format!("{CONTROL}\n{bulk}"));
    let p = parse_ok(&text);
    let ch = &p.config.channels;
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].name, "control");
    assert_eq!(ch[0].vms, [1, 0], "end 0 is the first name");
    assert_eq!(ch[0].size, 4 << 10, "size defaults to 4 KiB");
    assert_eq!(ch[1].vms, [0, 1]);
    assert_eq!(ch[1].size, 1 << 20, "size strings work");
    assert_eq!(
        p.config.channels_of(0).collect::<Vec<_>>(),
        [(0, 0, 1), (1, 1, 0)]
    );
    assert_eq!(p.check(IMAGE), Ok(()));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
}

#[test]
fn config_without_channels_has_none() {
    assert!(parse_ok(CAR).config.channels.is_empty());
}

#[test]
fn channel_naming_an_unknown_vm_is_refused_on_its_line() {
    let text = channel_config(
        "",
        "[[channel]]\nname = \"control\"\nbetween = [\n  \"safety\",\n  \"infotanment\",\n]\n",
    );
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.file, FILE);
    assert_eq!(d.line, line(&text, "\"infotanment\""));
    assert_eq!(d.field, "channel[0].between");
    assert_eq!(
        d.message,
        "there is no VM named \"infotanment\"; the VMs are \"safety\", \"infotainment\""
    );
}

#[test]
fn channel_between_must_name_two_vms() {
    for between in [
        "[\"safety\"]",
        "[]",
        "[\"safety\", \"infotainment\", \"safety\"]",
    ] {
        let text = channel_config(
            "",
            &format!("[[channel]]\nname = \"c\"\nbetween = {between}\n"),
        );
        let d = only(parse(&text, FILE).unwrap_err());
        assert_eq!(d.line, line(&text, "between ="));
        assert_eq!(d.field, "channel[0].between");
        assert!(d.message.contains("exactly two"), "{}", d.message);
    }
}

#[test]
fn channel_to_itself_is_reported_on_between() {
    let text = channel_config("", &CONTROL.replace("\"infotainment\"", "\"safety\""));
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.line, line(&text, "between ="));
    assert_eq!(d.field, "channel[0].between");
    assert!(d.message.contains("two different VMs"), "{}", d.message);
}

#[test]
fn channel_size_problems_are_reported_on_size() {
    let text = channel_config("", &format!("{CONTROL}size = \"12K\"\n"));
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.line, line(&text, "12K"));
    assert_eq!(d.field, "channel[0].size");
    assert!(d.message.contains("power of two"), "{}", d.message);

    let text = channel_config("", &format!("{CONTROL}size = \"4 KB\"\n"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "4 KB"));
    assert_eq!(d.field, "channel[0].size");
    assert!(d.message.contains("bad size"), "{}", d.message);
}

#[test]
fn duplicate_channel_name_is_reported_on_the_second() {
    let text = channel_config("", &format!("{CONTROL}\n{CONTROL}"));
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "channel[1].name");
    assert_eq!(
        d.line,
        text.rfind("name = \"control\"")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert_eq!(d.message, "name 'control' is already used by channel[0]");
}

#[test]
fn too_many_channels_points_at_the_first_table_over_the_limit() {
    let tables: String = (0..5)
        .map(|k| CONTROL.replace("control", &format!("c{k}")))
        .collect::<Vec<_>>()
        .join("\n");
    let text = channel_config("", &tables);
    let diags = parse_ok(&text).check(IMAGE).unwrap_err();
    let fifth = text
        .match_indices("[[channel]]")
        .nth(4)
        .map(|(a, _)| text[..a].matches('\n').count() + 1)
        .unwrap();
    assert_eq!((diags[0].line, diags[0].field.as_str()), (fifth, "channel"));
    assert!(diags[0].message.contains("5 channels"), "{diags:#?}");
}

#[test]
fn channel_unknown_and_missing_keys_are_parse_errors() {
    let text = channel_config("", &format!("{CONTROL}colour = \"red\"\n"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "colour"));
    assert_eq!(d.field, "channel[0].colour");
    assert!(
        d.message.contains("unknown field `colour`"),
        "{}",
        d.message
    );

    let text = channel_config("", "[[channel]]\nname = \"c\"\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "[[channel]]"));
    assert!(
        d.message.contains("missing field `between`"),
        "{}",
        d.message
    );
}

#[test]
fn criticality_parses_and_defaults_to_normal() {
    let text = channel_config("criticality = \"critical\"\n", "");
    let p = parse_ok(&text);
    assert_eq!(p.config.vms[0].criticality, Criticality::Critical);
    assert_eq!(p.config.vms[1].criticality, Criticality::Normal);
    let text = channel_config("criticality = \"normal\"\n", "");
    assert_eq!(
        parse_ok(&text).config.vms[0].criticality,
        Criticality::Normal
    );
}

#[test]
fn bad_criticality_is_refused_on_its_line() {
    let text = channel_config("criticality = \"high\"\n", "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "\"high\""));
    assert_eq!(d.field, "vm[0].criticality");
    assert!(
        d.message.contains("`normal`") && d.message.contains("`critical`"),
        "{}",
        d.message
    );
}

#[test]
fn critical_vms_on_every_pcpu_are_reported_on_board_cpus() {
    let text = channel_config("criticality = \"critical\"\n", "")
        .replace("cpus = 4", "cpus = 3")
        .replace(
            "pcpus = [1, 2]",
            "pcpus = [1, 2]\ncriticality = \"critical\"",
        );
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.line, line(&text, "cpus = 3"));
    assert_eq!(d.field, "board.cpus");
    assert_eq!(
        d.message,
        "no pCPU left for the hypervisor's console and shell: every pCPU runs a critical VM"
    );
}

/// Two bare-metal VMs on a 4-CPU board with an 8 GiB disk `emmc` and a
/// 1 GiB disk `usb`; `first` and `second` go after each VM's table (e.g.
/// `[[vm.disk]]` tables).
fn disk_config(first: &str, second: &str) -> String {
    format!(
        "[board]\ncpus = 4\nmemory = \"1G\"\n\n\
         [[disk]]\nname = \"emmc\"\nsize = \"8G\"\n\n\
         [[disk]]\nname = \"usb\"\nsize = 0x4000_0000\n\n\
         [[vm]]\nname = \"safety\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [0]\n{first}\n\
         [[vm]]\nname = \"infotainment\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [1]\n{second}"
    )
}

const ROOT: &str = "[[vm.disk]]\ndisk = \"emmc\"\nsize = \"4G\"\n";

#[test]
fn disk_tables_parse_with_their_defaults() {
    let rest = "[[vm.disk]]\ndisk = \"emmc\"\noffset = \"4G\"\nsize = \"1G\"\nread-only = true\nserial = \"logs\"\n\n\
                [[vm.disk]]\ndisk = \"usb\"\nsize = 0x200\n";
    let text = disk_config("", &format!("{ROOT}\n{rest}"));
    let p = parse_ok(&text);
    let c = &p.config;
    assert_eq!(c.disks.len(), 2);
    assert_eq!(c.disks[0].name, "emmc");
    assert_eq!(c.disks[0].size, 8 << 30);
    assert_eq!(c.disks[1].size, 1 << 30, "integer sizes work");
    assert!(c.vms[0].disks.is_empty());
    let d = &c.vms[1].disks;
    assert_eq!(d.len(), 3);
    assert_eq!(
        (d[0].disk, d[0].offset, d[0].size, d[0].read_only),
        (0, 0, 4 << 30, false),
        "offset 0 and read-write by default"
    );
    assert_eq!(d[0].serial, "infotainment-disk0", "default serial");
    assert_eq!(
        (d[1].disk, d[1].offset, d[1].size, d[1].read_only),
        (0, 4 << 30, 1 << 30, true)
    );
    assert_eq!(d[1].serial, "logs");
    assert_eq!((d[2].disk, d[2].size), (1, 512));
    assert_eq!(d[2].serial, "infotainment-disk2");
    assert_eq!(p.check(IMAGE), Ok(()));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
}

#[test]
fn default_serial_is_cut_to_20_bytes() {
    let text = disk_config("", ROOT).replace("infotainment", "infotainment-console");
    let p = parse_ok(&text);
    assert_eq!(p.config.vms[1].disks[0].serial, "infotainment-console");
    let text = disk_config("", ROOT).replace("infotainment", "a-rather-long-vm-name");
    let p = parse_ok(&text);
    assert_eq!(p.config.vms[1].disks[0].serial, "a-rather-long-vm-nam");
    assert_eq!(p.check(IMAGE), Ok(()));
}

#[test]
fn config_without_disks_has_none() {
    let c = parse_ok(CAR).config;
    assert!(c.disks.is_empty());
    assert!(c.vms.iter().all(|vm| vm.disks.is_empty()));
}

#[test]
fn slice_of_an_unknown_disk_is_refused_on_its_disk_line() {
    let text = disk_config("", &ROOT.replace("\"emmc\"", "\"emc\""));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "\"emc\""));
    assert_eq!(d.field, "vm[1].disk[0].disk");
    assert_eq!(
        d.message,
        "there is no disk named \"emc\"; the disks are \"emmc\", \"usb\""
    );
    let text = passthrough_config("", ROOT);
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        d.message,
        "there is no disk named \"emmc\"; the config has no [[disk]]"
    );
}

#[test]
fn slice_problems_point_at_their_own_keys() {
    let bad = "[[vm.disk]]\ndisk = \"usb\"\noffset = 100\nsize = \"2G\"\nserial = \"abcdefghijklmnopqrstu\"\n";
    let text = disk_config("", bad);
    let diags = parse_ok(&text).check(IMAGE).unwrap_err();
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (line(&text, "offset = 100"), "vm[1].disk[0].offset"),
            (line(&text, "serial ="), "vm[1].disk[0].serial"),
            (line(&text, "size = \"2G\""), "vm[1].disk[0].size"),
        ]
    );
    assert!(diags[2].message.contains("runs past the end of disk 'usb'"));
}

#[test]
fn overlapping_read_write_slice_is_reported_on_the_later_tables_line() {
    let text = disk_config(&format!("{ROOT}read-only = true\n"), ROOT);
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "vm[1].disk[0].offset");
    // No `offset` written: the table's header.
    assert_eq!(
        d.line,
        text.rfind("[[vm.disk]]")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert!(
        d.message.contains("for vm 'infotainment'") && d.message.contains("of vm 'safety'"),
        "{}",
        d.message
    );
    // Both read-only: fine.
    let ro = format!("{ROOT}read-only = true\n");
    assert_eq!(parse_ok(&disk_config(&ro, &ro)).check(IMAGE), Ok(()));
}

#[test]
fn critical_vm_with_a_disk_and_too_many_slices_point_at_the_first_slice() {
    let text = disk_config(&format!("criticality = \"critical\"\n{ROOT}"), "");
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "vm[0].disk");
    assert_eq!(d.line, line(&text, "[[vm.disk]]"));
    assert!(
        d.message.starts_with(
            "a critical VM cannot use a shared disk because its I/O would wait behind other VMs' requests"
        ),
        "{}",
        d.message
    );
    let slices: String = (0..5)
        .map(|k| {
            format!(
                "[[vm.disk]]\ndisk = \"usb\"\noffset = {}\nsize = 512\n",
                k * 512
            )
        })
        .collect();
    let text = disk_config("", &slices);
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "vm[1].disk");
    assert_eq!(d.line, line(&text, "[[vm.disk]]"));
    assert_eq!(d.message, "5 disk slices; a VM may have at most 4");
}

#[test]
fn disk_problems_are_reported_on_the_disk_tables() {
    let text = disk_config("", "").replace("name = \"usb\"", "name = \"emmc\"");
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "disk[1].name");
    assert_eq!(
        d.line,
        text.rfind("name = \"emmc\"")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert_eq!(d.message, "name 'emmc' is already used by disk[0]");
    let text = disk_config("", "").replace("size = \"8G\"", "size = 1000");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "size = 1000"), "disk[0].size")
    );
}

#[test]
fn disk_unknown_keys_and_bad_values_are_parse_errors() {
    let text = disk_config("", &format!("{ROOT}readonly = true\n"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.field, "vm[1].disk[0].readonly");
    assert!(
        d.message.contains("unknown field `readonly`"),
        "{}",
        d.message
    );
    let text = disk_config("", &format!("{ROOT}read-only = \"yes\"\n"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "\"yes\""));
    let text = disk_config("", &ROOT.replace("size = \"4G\"\n", ""));
    let d = only(parse(&text, FILE).unwrap_err());
    assert!(d.message.contains("missing field `size`"), "{}", d.message);
    let text = disk_config("", "").replace("size = \"8G\"", "size = \"8 GB\"");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "8 GB"), "disk[0].size")
    );
    let text = disk_config("", &ROOT.replace("\"4G\"", "\"4 GB\""));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.field, "vm[1].disk[0].size");
    let text =
        "[board]\ncpus = 1\nmemory = \"1G\"\n[[disk]]\nname = \"a\"\nsize = \"1G\"\ncolour = 1\n";
    let d = only(parse(text, FILE).unwrap_err());
    assert_eq!(d.field, "disk[0].colour");
}

/// The GPT layout of `emmc` in [`partitioned`]: "boot" (256 MiB) at 1 MiB,
/// "root" (2 GiB) at 257 MiB, "data" (4 GiB) at 2 GiB + 257 MiB.
const PARTS: &str = "[[disk.partition]]\nname = \"boot\"\nsize = \"256M\"\n\n\
                     [[disk.partition]]\nname = \"root\"\nsize = \"2G\"\n\n\
                     [[disk.partition]]\nname = \"data\"\nsize = 0x1_0000_0000\n\n";

/// [`disk_config`] with `emmc` laid out as [`PARTS`].
fn partitioned(first: &str, second: &str) -> String {
    disk_config(first, second).replacen("size = \"8G\"\n", &format!("size = \"8G\"\n\n{PARTS}"), 1)
}

const ROOT_PART: &str = "[[vm.disk]]\ndisk = \"emmc\"\npartition = \"root\"\n";

#[test]
fn partitions_parse_and_slices_of_them_get_their_range() {
    let usb = "[[vm.disk]]\ndisk = \"usb\"\npartition = \"EFI System\"\nread-only = true\n";
    let text = partitioned(ROOT_PART, usb);
    let p = parse_ok(&text);
    let c = &p.config;
    let parts: Vec<(&str, u64)> = c.disks[0]
        .partitions
        .iter()
        .map(|p| (p.name.as_str(), p.size))
        .collect();
    assert_eq!(
        parts,
        [("boot", 256 << 20), ("root", 2 << 30), ("data", 4 << 30)]
    );
    assert!(c.disks[1].partitions.is_empty());
    let root = &c.vms[0].disks[0];
    assert_eq!(root.partition.as_deref(), Some("root"));
    assert_eq!((root.offset, root.size), (257 << 20, 2 << 30));
    assert_eq!(root.serial, "safety-disk0");
    // No layout declared: the hypervisor finds it at boot.
    let efi = &c.vms[1].disks[0];
    assert_eq!(efi.partition.as_deref(), Some("EFI System"));
    assert_eq!(
        (efi.disk, efi.offset, efi.size, efi.read_only),
        (1, 0, 0, true)
    );
    assert_eq!(p.check(IMAGE), Ok(()));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
    // Ordinary slices have no partition.
    let c = parse_ok(&disk_config("", ROOT)).config;
    assert_eq!(c.vms[1].disks[0].partition, None);
    assert!(c.disks[0].partitions.is_empty());
}

#[test]
fn partition_with_offset_or_size_is_refused_on_the_later_key() {
    let text = partitioned("", &format!("{ROOT_PART}offset = \"1G\"\n"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "offset = \"1G\""), "vm[1].disk[0].offset")
    );
    assert_eq!(
        d.message,
        "set `partition` (the slice is that partition of the disk, with its offset and size) or `offset` and `size`, not `partition` with `offset`"
    );
    let text = partitioned(
        "",
        "[[vm.disk]]\ndisk = \"emmc\"\nsize = \"1G\"\noffset = 0\npartition = \"root\"\n",
    );
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "partition = "), "vm[1].disk[0].partition")
    );
    assert!(
        d.message
            .ends_with("not `partition` with `size` and `offset`"),
        "{}",
        d.message
    );
}

#[test]
fn slice_with_neither_partition_nor_size_misses_its_size() {
    let text = partitioned("", "[[vm.disk]]\ndisk = \"emmc\"\noffset = 0\n");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str(), d.message.as_str()),
        (
            line(&text, "[[vm.disk]]"),
            "vm[1].disk[0]",
            "missing field `size`"
        )
    );
}

#[test]
fn partition_problems_point_at_the_partition_key() {
    // Not one the disk declares.
    let text = partitioned("", &ROOT_PART.replace("root", "swap"));
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "\"swap\""), "vm[1].disk[0].partition")
    );
    assert_eq!(
        d.message,
        "disk 'emmc' has no partition named \"swap\"; its partitions are \"boot\", \"root\", \"data\""
    );
    // Not a GPT name, on a disk without a layout.
    let text = disk_config("", &ROOT_PART.replace("emmc", "usb").replace("root", ""));
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "partition = "), "vm[1].disk[0].partition")
    );
    assert_eq!(
        d.message,
        "partition name \"\" must be 1 to 36 printable ASCII characters"
    );
    // A read-write partition under another VM's slice: the overlap is on
    // the partition's line.
    let text = partitioned(
        "[[vm.disk]]\ndisk = \"emmc\"\noffset = \"1G\"\nsize = 512\nread-only = true\n",
        ROOT_PART,
    );
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "partition = "), "vm[1].disk[0].partition")
    );
    assert!(
        d.message.starts_with(
            "read-write slice 0x10100000..0x90100000 of disk 'emmc' for vm 'infotainment' overlaps the read-only slice 0x40000000..0x40000200 of vm 'safety'"
        ),
        "{}",
        d.message
    );
}

#[test]
fn disk_partition_problems_are_reported_on_their_tables() {
    // A duplicate name, on the later one.
    let text = partitioned("", "").replace("name = \"data\"", "name = \"boot\"");
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "disk[0].partition[2].name");
    assert_eq!(
        d.line,
        text.rfind("name = \"boot\"")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert_eq!(
        d.message,
        "name \"boot\" is already used by partition[0] of this disk"
    );
    // One that does not fit, on its size.
    let text = partitioned("", "").replace("0x1_0000_0000", "\"6G\"");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "\"6G\""), "disk[0].partition[2].size")
    );
    assert!(
        d.message.starts_with(
            "partition \"data\" at 0x90100000..0x210100000 (6 GiB) does not fit in disk 'emmc'"
        ),
        "{}",
        d.message
    );
    // Too many: the first [[disk.partition]].
    let many: String = (0..17)
        .map(|k| format!("[[disk.partition]]\nname = \"p{k}\"\nsize = 512\n"))
        .collect();
    let text =
        disk_config("", "").replacen("size = \"8G\"\n", &format!("size = \"8G\"\n{many}"), 1);
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str(), d.message.as_str()),
        (
            line(&text, "[[disk.partition]]"),
            "disk[0].partition",
            "17 partitions; a disk may have at most 16"
        )
    );
    // Bad size strings and unknown keys are parse errors on their lines.
    let text = partitioned("", "").replace("\"256M\"", "\"256 MB\"");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "256 MB"), "disk[0].partition[0].size")
    );
    let text = partitioned("", "").replace("name = \"root\"", "name = \"root\"\ntype = \"linux\"");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "type = "), "disk[0].partition[1].type")
    );
    assert!(d.message.contains("unknown field `type`"), "{}", d.message);
}

/// The rejection files for disks, nets, pools and the virtio window fail
/// exactly as their `# expect:` first line says (the rest of configs/bad/
/// needs the host tool, which checks them all).
#[test]
fn disk_net_pool_and_virtio_rejection_files_fail_as_they_expect() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("disk-")
            || name.starts_with("net-")
            || name.starts_with("pool-")
            || name.starts_with("passthrough-virtio-"))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{name}: no `# expect:` first line"));
        let diags = match load(&path) {
            Err(d) => d,
            Ok(p) => p
                .check(&vec![ImageInfo::raw(0); p.images.len()])
                .expect_err(&name),
        };
        let shown: Vec<String> = diags.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|d| d.contains(expect)),
            "{name}: {shown:#?} lacks {expect:?}"
        );
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} files");
}

/// Two bare-metal VMs on a 4-CPU board with switches `lan` (the uplink)
/// and `dmz`; `first` and `second` go after each VM's table (e.g.
/// `[[vm.net]]` tables).
fn net_config(first: &str, second: &str) -> String {
    format!(
        "[board]\ncpus = 4\nmemory = \"1G\"\n\n\
         [[switch]]\nname = \"lan\"\nuplink = true\n\n\
         [[switch]]\nname = \"dmz\"\n\n\
         [[vm]]\nname = \"safety\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [0]\n{first}\n\
         [[vm]]\nname = \"infotainment\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [1]\n{second}"
    )
}

const LAN: &str = "[[vm.net]]\nswitch = \"lan\"\nmac = \"52:54:00:12:34:56\"\n";

#[test]
fn switch_and_net_tables_parse_with_their_defaults() {
    let dmz = "[[vm.net]]\nswitch = \"dmz\"\nmac = \"02:AB:cd:00:00:01\"\n";
    let text = net_config(
        dmz,
        &format!("{ROOT}\n{LAN}\n{}", dmz.replace(":01", ":02")),
    )
    .replace(
        "[[switch]]\nname = \"lan\"",
        "[[disk]]\nname = \"emmc\"\nsize = \"8G\"\n\n[[switch]]\nname = \"lan\"",
    );
    let p = parse_ok(&text);
    let c = &p.config;
    assert_eq!(c.switches.len(), 2);
    assert_eq!(c.switches[0].name, "lan");
    assert!(c.switches[0].uplink);
    assert!(!c.switches[1].uplink, "uplink defaults to false");
    assert_eq!(c.vms[0].nets.len(), 1);
    assert_eq!(c.vms[0].nets[0].switch, 1);
    assert_eq!(
        c.vms[0].nets[0].mac,
        [0x02, 0xab, 0xcd, 0, 0, 1],
        "any case"
    );
    let n = &c.vms[1].nets;
    assert_eq!(n.len(), 2);
    assert_eq!(
        (n[0].switch, n[0].mac),
        (0, [0x52, 0x54, 0, 0x12, 0x34, 0x56])
    );
    assert_eq!((n[1].switch, n[1].mac[5]), (1, 2));
    // infotainment's disk is virtio device 0, its nets 1 and 2.
    assert_eq!(c.vms[1].disks.len(), 1);
    assert_eq!(c.vms[1].net_virtio_index(0), 1);
    assert_eq!(c.vms[0].net_virtio_index(0), 0);
    assert_eq!(p.check(IMAGE), Ok(()));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
}

#[test]
fn config_without_switches_has_none() {
    let c = parse_ok(CAR).config;
    assert!(c.switches.is_empty());
    assert!(c.vms.iter().all(|vm| vm.nets.is_empty()));
}

#[test]
fn net_on_an_unknown_switch_is_refused_on_its_switch_line() {
    let text = net_config("", &LAN.replace("\"lan\"", "\"lna\""));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "\"lna\""));
    assert_eq!(d.field, "vm[1].net[0].switch");
    assert_eq!(
        d.message,
        "there is no switch named \"lna\"; the switches are \"lan\", \"dmz\""
    );
    let text = passthrough_config("", LAN);
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        d.message,
        "there is no switch named \"lan\"; the config has no [[switch]]"
    );
}

#[test]
fn malformed_mac_is_refused_on_its_line() {
    for bad in [
        "52:54:00:12:34",
        "52-54-00-12-34-56",
        "52:54:00:12:34:5G",
        "",
    ] {
        let text = net_config(&LAN.replace("52:54:00:12:34:56", bad), "");
        let d = only(parse(&text, FILE).unwrap_err());
        assert_eq!(d.line, line(&text, "mac ="));
        assert_eq!(d.field, "vm[0].net[0].mac");
        assert!(
            d.message.starts_with(&format!("bad MAC address \"{bad}\"")),
            "{}",
            d.message
        );
    }
    // Both a bad MAC and an unknown switch: one diagnostic each.
    let text = net_config(&LAN.replace("\"lan\"", "\"x\"").replace("34:56", "34"), "");
    let diags = parse(&text, FILE).unwrap_err();
    let got: Vec<&str> = diags.iter().map(|d| d.field.as_str()).collect();
    assert_eq!(got, ["vm[0].net[0].switch", "vm[0].net[0].mac"]);
}

#[test]
fn net_problems_point_at_their_own_keys() {
    let text = net_config(LAN, &LAN.replace("52:54", "52:55"));
    assert_eq!(parse_ok(&text).check(IMAGE), Ok(()));
    // Multicast, and the same MAC as safety's in upper case.
    let text = net_config(
        &format!("{LAN}\n{}", LAN.replace("52:54", "33:33")),
        &LAN.replace(
            "52:54:00:12:34:56",
            "52:54:00:12:34:56".to_uppercase().as_str(),
        ),
    );
    let diags = parse_ok(&text).check(IMAGE).unwrap_err();
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (line(&text, "33:33"), "vm[0].net[1].mac"),
            (
                text.rfind("mac =")
                    .map(|a| text[..a].matches('\n').count() + 1)
                    .unwrap(),
                "vm[1].net[0].mac"
            ),
        ]
    );
    assert!(
        diags[0].message.contains("is a multicast address"),
        "{}",
        diags[0].message
    );
    assert_eq!(
        diags[1].message,
        "MAC address 52:54:00:12:34:56 of vm 'infotainment' (its net[0]) is already used by vm 'safety' (its net[0]); every net needs a MAC address of its own"
    );
}

#[test]
fn critical_vm_with_a_net_and_too_many_nets_point_at_the_first_net() {
    let text = net_config(&format!("criticality = \"critical\"\n{LAN}"), "");
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "vm[0].net");
    assert_eq!(d.line, line(&text, "[[vm.net]]"));
    assert_eq!(
        d.message,
        "a critical VM cannot use a shared switch because its frames would wait behind other VMs' traffic: give it no [[vm.net]], or make it criticality = \"normal\""
    );
    let nets: String = (1..=5)
        .map(|k| format!("[[vm.net]]\nswitch = \"dmz\"\nmac = \"02:00:00:00:00:0{k}\"\n"))
        .collect();
    let text = net_config("", &nets);
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "vm[1].net");
    assert_eq!(d.line, line(&text, "[[vm.net]]"));
    assert_eq!(d.message, "5 nets; a VM may have at most 4");
}

#[test]
fn switch_problems_are_reported_on_the_switch_tables() {
    let text = net_config("", "").replace("name = \"dmz\"", "name = \"lan\"");
    let d = check_fails(&text, IMAGE);
    assert_eq!(d.field, "switch[1].name");
    assert_eq!(
        d.line,
        text.rfind("name = \"lan\"")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert_eq!(d.message, "name 'lan' is already used by switch[0]");
    let text = net_config("", "").replace("name = \"dmz\"", "name = \"dmz\"\nuplink = true");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (
            text.rfind("uplink = true")
                .map(|a| text[..a].matches('\n').count() + 1)
                .unwrap(),
            "switch[1].uplink"
        )
    );
    assert!(
        d.message.contains("switch[0] 'lan' already has"),
        "{}",
        d.message
    );
    let text = net_config("", "").replace("name = \"dmz\"", "name = \"DMZ\"");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "\"DMZ\""), "switch[1].name")
    );
}

#[test]
fn net_unknown_keys_and_bad_values_are_parse_errors() {
    let text = net_config("", &format!("{LAN}vlan = 3\n"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.field, "vm[1].net[0].vlan");
    assert!(d.message.contains("unknown field `vlan`"), "{}", d.message);
    let text = net_config("", &LAN.replace("mac = \"52:54:00:12:34:56\"\n", ""));
    let d = only(parse(&text, FILE).unwrap_err());
    assert!(d.message.contains("missing field `mac`"), "{}", d.message);
    assert_eq!(d.line, line(&text, "[[vm.net]]"));
    let text = net_config("", &LAN.replace("switch = \"lan\"\n", ""));
    let d = only(parse(&text, FILE).unwrap_err());
    assert!(
        d.message.contains("missing field `switch`"),
        "{}",
        d.message
    );
    let text = net_config("", &LAN.replace("\"52:54:00:12:34:56\"", "0x525400123456"));
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "0x525400123456"));
    let text = net_config("", "").replace("uplink = true", "uplink = \"yes\"");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "\"yes\""));
    let text = net_config("", "").replace("uplink = true", "uplink = true\nspeed = 1000");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.field, "switch[0].speed");
}

/// A 4-CPU board with pool `general` of cpu2 and cpu3, `safety` pinned to
/// cpu0 and `batch` in the pool; `batch` gets `vm` in its table, and
/// `rest` follows it.
fn pool_config(vm: &str, rest: &str) -> String {
    format!(
        "[board]\ncpus = 4\nmemory = \"1G\"\n\n\
         [[pool]]\nname = \"general\"\npcpus = [2, 3]\n\n\
         [[vm]]\nname = \"safety\"\nguest = \"hello\"\nmemory = \"16M\"\npcpus = [0]\n\n\
         [[vm]]\nname = \"batch\"\nguest = \"hello\"\nmemory = \"16M\"\n{vm}\n{rest}"
    )
}

const IN_POOL: &str = "pool = \"general\"\nvcpus = 3\n";

#[test]
fn pool_tables_parse_with_their_defaults() {
    let text = pool_config(
        IN_POOL,
        "[[pool]]\nname = \"spare\"\npcpus = [1]\n\n\
         [[vm]]\nname = \"bulk\"\nguest = \"hello\"\nmemory = \"16M\"\npool = \"general\"\n\
         vcpus = 1\nweight = 1024\ncap = 50\n",
    );
    let p = parse_ok(&text);
    let c = &p.config;
    assert_eq!(c.pools.len(), 2);
    assert_eq!(c.pools[0].name, "general");
    assert_eq!(c.pools[0].pcpus, vec![2, 3]);
    assert_eq!(c.pools[1].pcpus, vec![1], "a pool no VM uses");
    let safety = &c.vms[0];
    assert!(!safety.pooled());
    assert_eq!(
        (safety.pool, safety.vcpus, safety.weight, safety.cap),
        (None, 1, 256, None),
        "vcpus defaults to the pCPUs"
    );
    let batch = &c.vms[1];
    assert!(batch.pcpus.is_empty());
    assert_eq!(
        (batch.pool, batch.vcpus, batch.weight, batch.cap),
        (Some(0), 3, 256, None),
        "weight defaults to 256"
    );
    assert_eq!(batch.vcpu_count(), 3);
    let bulk = &c.vms[2];
    assert_eq!(
        (bulk.pool, bulk.vcpus, bulk.weight, bulk.cap),
        (Some(0), 1, 1024, Some(50))
    );
    assert_eq!(p.check(IMAGE), Ok(()));
    let bytes = bulkhead_config::encode(&p.config);
    assert_eq!(bulkhead_config::decode(&bytes), Ok(p.config));
    // `vcpus` beside `pcpus` is fine when it is their number.
    let text = pool_config(IN_POOL, "").replace("pcpus = [0]", "pcpus = [0]\nvcpus = 1");
    assert_eq!(parse_ok(&text).check(IMAGE), Ok(()));
}

#[test]
fn unknown_pool_is_refused_on_its_pool_line() {
    let text = pool_config(&IN_POOL.replace("\"general\"", "\"genral\""), "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "\"genral\""));
    assert_eq!(d.field, "vm[1].pool");
    assert_eq!(
        d.message,
        "there is no pool named \"genral\"; the pools are \"general\""
    );
    let text = passthrough_config("", IN_POOL);
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        d.message,
        "there is no pool named \"general\"; the config has no [[pool]]"
    );
}

#[test]
fn pool_problems_name_file_line_and_field() {
    // cpu3 is also dedicated to safety: reported on safety's pcpus,
    // naming the pool.
    let text = pool_config(IN_POOL, "").replace("pcpus = [0]", "pcpus = [0, 3]");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        d.to_string(),
        format!(
            "{FILE}:{}: vm[0].pcpus: cpu3 is dedicated to vm 'safety' but is also in pool[0] \
             'general'; a pCPU is either one VM's or a pool's",
            line(&text, "pcpus = [0, 3]")
        )
    );
    // A pCPU the board lacks, on the pool's own pcpus line.
    let text = pool_config(IN_POOL, "").replace("pcpus = [2, 3]", "pcpus = [2, 4]");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "pcpus = [2, 4]"), "pool[0].pcpus")
    );
    assert_eq!(d.message, "cpu4 is in the pool but the board has 4 CPUs");
    // A second pool with the first one's name and pCPU.
    let text = pool_config(IN_POOL, "[[pool]]\nname = \"general\"\npcpus = [3, 1]\n");
    let diags = parse_ok(&text).check(IMAGE).unwrap_err();
    let got: Vec<(usize, &str, &str)> = diags
        .iter()
        .map(|d| (d.line, d.field.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                text.rfind("name = \"general\"")
                    .map(|a| text[..a].matches('\n').count() + 1)
                    .unwrap(),
                "pool[1].name",
                "name 'general' is already used by pool[0]"
            ),
            (
                line(&text, "pcpus = [3, 1]"),
                "pool[1].pcpus",
                "cpu3 is already in pool[0] 'general'; a pCPU is in one pool at most"
            ),
        ]
    );
    // An empty pool.
    let text = pool_config(IN_POOL, "").replace("pcpus = [2, 3]", "pcpus = []");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str(), d.message.as_str()),
        (
            line(&text, "pcpus = []"),
            "pool[0].pcpus",
            "0 pCPUs; a pool shares 1 to 8"
        )
    );
}

#[test]
fn too_many_pools_points_at_the_fifth() {
    let pools: String = (0..5)
        .map(|k| format!("[[pool]]\nname = \"p{k}\"\npcpus = [{}]\n", 4 + k))
        .collect();
    let text = pool_config(IN_POOL, &pools).replace("cpus = 4", "cpus = 16");
    let d = check_fails(&text, IMAGE);
    let fifth = text
        .match_indices("[[pool]]")
        .nth(4)
        .map(|(a, _)| text[..a].matches('\n').count() + 1)
        .unwrap();
    assert_eq!((d.line, d.field.as_str()), (fifth, "pool"));
    assert_eq!(d.message, "6 pools; a system may have at most 4");
}

#[test]
fn pool_vm_problems_point_at_their_keys() {
    // Both pcpus and a pool.
    let text = pool_config(&format!("pcpus = [1]\n{IN_POOL}"), "");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "pool = \"general\""), "vm[1].pool")
    );
    assert_eq!(
        d.message,
        "a VM has either dedicated `pcpus` or a `pool` whose pCPUs it shares, not both"
    );
    // No vcpus: reported at the VM's header.
    let text = pool_config("pool = \"general\"\n", "");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "name = \"batch\"") - 1, "vm[1].vcpus")
    );
    assert_eq!(d.message, "0 vCPUs; a VM in a pool needs `vcpus`, 1 to 8");
    // Too many.
    let text = pool_config(&IN_POOL.replace("vcpus = 3", "vcpus = 9"), "");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "vcpus = 9"), "vm[1].vcpus")
    );
    // A critical VM in a pool.
    let text = pool_config(&format!("{IN_POOL}criticality = \"critical\"\n"), "");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "pool = \"general\""), "vm[1].pool")
    );
    assert!(
        d.message
            .starts_with("a critical VM keeps dedicated pCPUs: give it `pcpus` instead"),
        "{}",
        d.message
    );
    // Weight and cap out of range, each on its line.
    let text = pool_config(&format!("{IN_POOL}weight = 0\ncap = 101\n"), "");
    let diags = parse_ok(&text).check(IMAGE).unwrap_err();
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (line(&text, "weight = 0"), "vm[1].weight"),
            (line(&text, "cap = 101"), "vm[1].cap"),
        ]
    );
    assert!(diags[1].message.starts_with("cap 101 must be 1 to 100"));
    // A cap that is not even a byte is a type error on its line.
    let text = pool_config(&format!("{IN_POOL}cap = 300\n"), "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "cap = 300"), "vm[1].cap")
    );
}

#[test]
fn pinned_vm_vcpus_weight_and_cap_point_at_their_keys() {
    let text = pool_config(IN_POOL, "").replace("pcpus = [0]", "pcpus = [0]\nvcpus = 2");
    let d = check_fails(&text, IMAGE);
    assert_eq!(
        (d.line, d.field.as_str(), d.message.as_str()),
        (
            line(&text, "vcpus = 2"),
            "vm[0].vcpus",
            "vcpus = 2 but `pcpus` lists 1 pCPUs; a VM with dedicated pCPUs has one vCPU on each"
        )
    );
    // Written at all, even as the default: the front end refuses it.
    let text =
        pool_config(IN_POOL, "").replace("pcpus = [0]", "pcpus = [0]\nweight = 256\ncap = 10");
    let diags = parse(&text, FILE).unwrap_err();
    let got: Vec<(usize, &str)> = diags.iter().map(|d| (d.line, d.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (line(&text, "weight = 256"), "vm[0].weight"),
            (line(&text, "cap = 10"), "vm[0].cap"),
        ]
    );
    assert_eq!(
        diags[0].message,
        "`weight` applies to pool VMs, whose vCPUs share a pool's pCPUs; this VM has dedicated \
         `pcpus` to itself: drop `weight`, or put the VM in a `pool`"
    );
}

#[test]
fn pool_pcpus_count_as_free_of_critical_vms() {
    let text = pool_config(IN_POOL, "")
        .replace("pcpus = [2, 3]", "pcpus = [3]")
        .replace(
            "pcpus = [0]",
            "pcpus = [0, 1, 2]\ncriticality = \"critical\"",
        );
    assert_eq!(parse_ok(&text).check(IMAGE), Ok(()));
}

#[test]
fn pool_unknown_and_missing_keys_are_parse_errors() {
    let text = pool_config(IN_POOL, "").replace("pcpus = [2, 3]", "pcpus = [2, 3]\nquantum = 5");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        (d.line, d.field.as_str()),
        (line(&text, "quantum"), "pool[0].quantum")
    );
    assert!(
        d.message.contains("unknown field `quantum`"),
        "{}",
        d.message
    );
    let text = pool_config(IN_POOL, "").replace("pcpus = [2, 3]\n", "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(d.line, line(&text, "[[pool]]"));
    assert!(d.message.contains("missing field `pcpus`"), "{}", d.message);
}
