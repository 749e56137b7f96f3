//! Link flags of the NIF library.

fn main() {
    // The BEAM may `dlclose` a NIF library when its module is purged; this
    // one starts threads (jemalloc's background threads, RocksDB's) and an
    // exit hook that would then run unmapped code. `-z nodelete` keeps the
    // library mapped for the life of the process.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    }
}
