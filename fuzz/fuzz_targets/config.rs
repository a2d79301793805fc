//! The config front end and the formats that travel in the bootable image.
//!
//! The input is taken three ways: as the binary config and as an image
//! payload (both read by the hypervisor from the image, so any bytes), as an
//! arm64 `Image` header, and, when it is UTF-8, as a TOML config file.
//!
//! Checks that nothing panics; that `Parsed::check` reports exactly what
//! `validate` finds, at lines that exist; and that a config that validates
//! survives encode -> decode and pack -> parse unchanged, with its images.
#![no_main]

use bulkhead_config::payload::{self, Payload, NAME_SIZE};
use bulkhead_config::toml::{parse, ImageSource};
use bulkhead_config::{decode, encode, validate, ImageInfo};
use libfuzzer_sys::fuzz_target;

/// The longest prefix of `s` of at most `max` bytes ending on a character
/// boundary: what the payload keeps of an image name.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A payload name for `source`, as the host tool would pick one. NUL pads
/// the name field, so it cannot be part of a name.
fn name_of(source: &ImageSource) -> String {
    let name = match source {
        ImageSource::Guest(name) => name.clone(),
        ImageSource::File(path) | ImageSource::Initramfs(path) => path.display().to_string(),
        ImageSource::Debian(kernel) => kernel.suite().to_owned(),
    };
    name.replace('\0', "?")
}

fn binary_formats(data: &[u8]) {
    if let Ok(cfg) = decode(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(encode(&cfg), data);
    }
    if let Ok(p) = Payload::parse(data) {
        let total = p.total_size();
        assert!(total <= data.len() as u64);
        assert!(total >= payload::HEADER_SIZE as u64);
        for i in 0..p.image_count() {
            let (name, bytes) = p.image(i).expect("a checked entry");
            assert!(name.len() <= NAME_SIZE);
            assert!(bytes.len() as u64 <= total);
        }
        assert_eq!(p.image(p.image_count()), None);
        assert!(p.config().len() as u64 <= total);
    }
    let info = ImageInfo::of(data);
    assert_eq!(info.len, data.len() as u64);
    assert!(info.mem_size >= info.len);
}

fuzz_target!(|data: &[u8]| {
    binary_formats(data);

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let n_lines = text.lines().count().max(1) + 1;
    let parsed = match parse(text, "fuzz/vm.toml") {
        Ok(parsed) => parsed,
        Err(diags) => {
            assert!(!diags.is_empty(), "a rejected config names a problem");
            for d in diags {
                assert!((1..=n_lines).contains(&d.line), "{d} of {n_lines}");
            }
            return;
        }
    };
    let cfg = &parsed.config;
    for vm in &cfg.vms {
        assert!(usize::from(vm.image) < parsed.images.len());
        if let Some(i) = vm.initramfs {
            assert!(usize::from(i) < parsed.images.len());
        }
    }

    // Small images, each with its own contents.
    let blobs: Vec<(String, Vec<u8>)> = parsed
        .images
        .iter()
        .enumerate()
        .map(|(i, source)| (name_of(source), vec![i as u8 ^ 0xa5; 0x1000 + 0x321 * i]))
        .collect();
    let infos: Vec<ImageInfo> = blobs.iter().map(|(_, b)| ImageInfo::of(b)).collect();
    let problems = validate(cfg, &infos);
    match parsed.check(&infos) {
        Ok(()) => assert!(problems.is_empty()),
        Err(diags) => {
            assert_eq!(diags.len(), problems.len());
            for d in diags {
                assert!((1..=n_lines).contains(&d.line), "{d} of {n_lines}");
            }
        }
    }
    if !problems.is_empty() {
        return;
    }

    let encoded = encode(cfg);
    assert_eq!(decode(&encoded).as_ref(), Ok(cfg));
    let named: Vec<(&str, &[u8])> = blobs
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let packed = payload::pack(&encoded, &named);
    assert_eq!(packed.len() as u64 % payload::ALIGN, 0);
    let p = Payload::parse(&packed).expect("a packed payload parses");
    assert_eq!(p.total_size(), packed.len() as u64);
    assert_eq!(p.config(), encoded.as_slice());
    assert_eq!(p.image_count(), blobs.len());
    for (i, (name, bytes)) in blobs.iter().enumerate() {
        assert_eq!(
            p.image(i),
            Some((truncated(name, NAME_SIZE), bytes.as_slice()))
        );
    }
    let back = decode(p.config()).expect("the packed config decodes");
    assert_eq!(&back, cfg);
    assert!(validate(&back, &infos).is_empty());
});
