//! The fuzz targets' bodies over the seed corpus in `fuzz/seeds/` plus a
//! deterministic batch of mutations of it, on stable Rust (the real fuzzing
//! runs with `cargo +nightly fuzz run TARGET`, see fuzz/README.md).

use std::path::Path;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "no seeds for {target}");
    out.sort();
    out
}

/// Bit flips, byte insertions, truncations and splices of the seeds.
fn mutations(seeds: &[Vec<u8>], n: usize) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    (0..n)
        .map(|_| {
            let mut s = seeds[rng.usize(..seeds.len())].clone();
            for _ in 0..rng.usize(1..8) {
                match rng.u8(..4) {
                    0 if !s.is_empty() => {
                        let i = rng.usize(..s.len());
                        s[i] ^= 1 << rng.u8(..8);
                    }
                    1 => {
                        let i = rng.usize(..=s.len());
                        s.insert(i, rng.u8(..));
                    }
                    2 if !s.is_empty() => s.truncate(rng.usize(..s.len())),
                    _ => {
                        let other = &seeds[rng.usize(..seeds.len())];
                        let at = rng.usize(..=other.len());
                        s.extend_from_slice(&other[at..]);
                    }
                }
            }
            s
        })
        .collect()
}

fn run(target: &str, body: fn(&[u8])) {
    let seeds = seeds(target);
    for input in seeds.iter().chain(mutations(&seeds, 3000).iter()) {
        body(input);
    }
}

#[test]
fn fuzz_config_over_seeds_and_mutations() {
    run("config", steer::fuzzing::config);
}

#[test]
fn fuzz_route_select_over_seeds_and_mutations() {
    run("route_select", steer::fuzzing::route_select);
}

#[test]
fn fuzz_forwarding_headers_over_seeds_and_mutations() {
    run("forwarding_headers", steer::fuzzing::forwarding_headers);
}
