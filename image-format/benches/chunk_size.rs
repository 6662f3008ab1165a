//! Chunk-size benchmark: `cargo bench -p mgear-image-format --bench chunk_size`.
//!
//! Encodes one synthetic 64 MiB disk (random, text-like, sparse, zero and
//! repeated regions) at every chunk size from 64 KiB to 16 MiB and prints the
//! figures that chose the default chunk size (FORMAT.md §10). Set
//! `MGEAR_BENCH_MIB` to change the disk size.

fn main() {
    let mib: usize = std::env::var("MGEAR_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let disk = image_format::bench::synthetic_disk(mib << 20, 42);
    let sizes: Vec<u32> = (16..=24).map(|s| 1u32 << s).collect();
    match image_format::bench::run(&disk, &sizes) {
        Ok(rows) => {
            println!("synthetic disk: {mib} MiB, single thread, zstd level 3, AES-256-GCM");
            print!("{}", image_format::bench::table(&rows));
            println!(
                "default chunk size: {} KiB",
                image_format::layout::DEFAULT_CHUNK / 1024
            );
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
