//! Criterion benchmarks of the engine's AES-256-XTS fast path
//! (`cargo bench --bench engine`): one data unit of 512 and of 4096 bytes
//! per call, and a 128 KiB request of 4096-byte units, both directions,
//! throughput in bytes. The 128 KiB request runs through
//! [`XtsKey::crypt`] (which splits across threads only from
//! [`PARALLEL_MIN_BYTES`] on, so it stays on one thread) and through
//! [`XtsKey::crypt_serial`]: the two must measure the same.
//!
//! For the comparison with OpenSSL in the same run, use
//! `icelab bench crypto`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use icelab_emulator::engine::xts::{Direction, PARALLEL_MIN_BYTES, XtsKey};
use std::hint::black_box;
use std::time::Duration;

/// One benchmarked request shape.
struct Shape {
    name: &'static str,
    len: usize,
    data_unit_size: usize,
    serial: bool,
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "unit-512",
        len: 512,
        data_unit_size: 512,
        serial: false,
    },
    Shape {
        name: "unit-4096",
        len: 4096,
        data_unit_size: 4096,
        serial: false,
    },
    Shape {
        name: "request-128KiB-units-4096",
        len: 128 << 10,
        data_unit_size: 4096,
        serial: false,
    },
    Shape {
        name: "request-128KiB-units-4096-serial",
        len: 128 << 10,
        data_unit_size: 4096,
        serial: true,
    },
];

fn xts(c: &mut Criterion) {
    assert!(
        SHAPES[2].len < PARALLEL_MIN_BYTES,
        "the 128 KiB request now takes the split path: rename its shapes"
    );
    let key: [u8; 64] = core::array::from_fn(|i| (i as u8).wrapping_mul(0x9d) ^ 0x5c);
    let xts = XtsKey::new(&key);
    let mut group = c.benchmark_group("xts");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for shape in &SHAPES {
        group.throughput(Throughput::Bytes(shape.len as u64));
        for direction in [Direction::Encrypt, Direction::Decrypt] {
            let id = BenchmarkId::new(format!("{direction:?}").to_lowercase(), shape.name);
            let mut data = vec![0x5a; shape.len];
            let mut dun = 0u128;
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    let data = black_box(data.as_mut_slice());
                    if shape.serial {
                        xts.crypt_serial(direction, data, shape.data_unit_size, dun);
                    } else {
                        xts.crypt(direction, data, shape.data_unit_size, dun);
                    }
                    dun = dun.wrapping_add((shape.len / shape.data_unit_size) as u128);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, xts);
criterion_main!(benches);
