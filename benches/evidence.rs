//! Evidence benchmarks: decoding a Postgres SQL check's answer (one value in
//! the binary wire format), and the baseline judge (Mann–Whitney U with tie
//! correction) on two colors of 1000 samples each.
//!
//! `cargo bench --features postgres --bench evidence`

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use bluegreen::analysis::mann_whitney;
use bluegreen::plan::MannWhitney;
use bluegreen::postgres::decode_sql_number;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("postgres sql check answer");
    // numeric 12345.6789: digits 1, 2345, 6789, weight 1, scale 4.
    let numeric = [0, 3, 0, 1, 0, 0, 0, 4, 0, 1, 0x09, 0x29, 0x1a, 0x85];
    assert_eq!(decode_sql_number(1700, &numeric), Ok(12345.6789));
    g.bench_function("numeric 12345.6789", |b| {
        b.iter(|| decode_sql_number(1700, black_box(&numeric)))
    });
    let float8 = 0.4375f64.to_be_bytes();
    g.bench_function("float8", |b| {
        b.iter(|| decode_sql_number(701, black_box(&float8)))
    });
    let int8 = 42i64.to_be_bytes();
    g.bench_function("int8", |b| {
        b.iter(|| decode_sql_number(20, black_box(&int8)))
    });
    g.finish();
}

/// 1000 latencies around `level` ms, ties included (whole milliseconds).
fn samples(level: f64, seed: u64) -> Vec<f64> {
    let mut x = seed;
    (0..1000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (level * (0.8 + 0.4 * ((x >> 33) as f64 / (1u64 << 31) as f64))).round()
        })
        .collect()
}

fn judge(c: &mut Criterion) {
    let base = samples(200.0, 1);
    let same = samples(200.0, 2);
    let slower = samples(240.0, 3);
    let j = MannWhitney::default();
    let mut g = c.benchmark_group("mann-whitney judge, 2x1000 samples");
    g.bench_function("same distribution", |b| {
        b.iter(|| mann_whitney(black_box(&same), black_box(&base), &j))
    });
    g.bench_function("20% slower", |b| {
        b.iter(|| mann_whitney(black_box(&slower), black_box(&base), &j))
    });
    g.finish();
}

criterion_group!(benches, decode, judge);
criterion_main!(benches);
