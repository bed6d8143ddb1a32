//! Sealing cost of recordings: raw AES-256-GCM (ring) on 64 KiB as the baseline, a 64 KiB chunk through
//! the recording format, and one second of a call's 20 ms μ-law frames (50 records of 160 bytes)
//! encoded and sealed as one chunk.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use voxguard::keys::KeyBytes;
use voxguard::recording::format::{Codec, Header, Record, RecordBody, seal_chunk_in_place};

fn bench(c: &mut Criterion) {
    let dek = KeyBytes::random();
    let header = Header {
        recording_id: [1; 16],
        created_ms: 0,
        codec: Codec::Mulaw,
        sample_rate: 8000,
        channels: 2,
        nonce_prefix: [2; 7],
        kek_id: "k1".into(),
    }
    .encode();

    let mut g = c.benchmark_group("recording_seal");
    g.throughput(Throughput::Bytes(64 * 1024));
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, dek.expose()).unwrap());
    let mut buf = vec![0x55u8; 64 * 1024];
    g.bench_function("raw_aes_256_gcm_64k", |b| {
        b.iter(|| {
            buf.truncate(64 * 1024);
            raw.seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&header[..]),
                &mut buf,
            )
            .unwrap();
        })
    });
    let mut counter = 0u32;
    g.bench_function("chunk_64k", |b| {
        b.iter(|| {
            buf.truncate(64 * 1024);
            counter = counter.wrapping_add(1);
            seal_chunk_in_place(&dek, &header, &[2; 7], counter, false, &mut buf)
        })
    });
    g.finish();

    let frame = vec![0x7Eu8; 160];
    let mut g = c.benchmark_group("recording_frames");
    g.throughput(Throughput::Elements(50));
    let mut plain = Vec::with_capacity(16 * 1024);
    g.bench_function("one_second_of_frames", |b| {
        b.iter(|| {
            plain.clear();
            for i in 0..50u32 {
                Record {
                    at_ms: i * 20,
                    direction: 0,
                    track: 0,
                    kind: 2,
                    body: RecordBody::Audio(frame.clone()),
                }
                .encode_into(&mut plain);
            }
            counter = counter.wrapping_add(1);
            seal_chunk_in_place(&dek, &header, &[2; 7], counter, false, &mut plain)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
