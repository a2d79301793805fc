//! The TOML front-end, end to end: text in, config or `file:line: field:
//! message` diagnostics out.
#![cfg(feature = "toml")]

use std::path::{Path, PathBuf};

use bulkhead_config::toml::{load, parse, Diagnostic, ImageSource, Parsed};
use bulkhead_config::{RestartPolicy, IMAGE_LOAD_OFFSET};

const CAR: &str = include_str!("data/car.toml");
const FILE: &str = "configs/car.toml";
/// Small enough to fit every VM in car.toml.
const SIZES: &[u64] = &[64 << 10, 8 << 20];

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
fn check_fails(text: &str, sizes: &[u64]) -> Diagnostic {
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
    assert_eq!(c.vms[2].restart, RestartPolicy::Never, "default restart");
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
    let text = CAR.replace("pcpus = [3]\n", "");
    let d = only(parse(&text, FILE).unwrap_err());
    assert_eq!(
        d.line,
        text.rfind("[[vm]]")
            .map(|a| text[..a].matches('\n').count() + 1)
            .unwrap()
    );
    assert!(d.message.contains("missing field `pcpus`"), "{}", d.message);
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
    let d = check_fails(CAR, &[big, 8 << 20]);
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
