fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed={dir}/../rt/guest.ld");
    println!("cargo:rustc-link-arg=-T{dir}/../rt/guest.ld");
}
