//! The admission decision per request: client address → allow/deny → ban list → per-IP limiter.
//! Cases: a hit (allowed, known key), a refusal (rate-limited key), and a fresh key.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use voxguard::admission::ban::{BanList, BanRule, Offence};
use voxguard::admission::client_ip::client_ip;
use voxguard::admission::ip_allow::IpLists;
use voxguard::admission::rate_limit::{Rate, RateLimitSpec, RouteLimiter};

fn spec(count: u32, burst: u32) -> RateLimitSpec {
    RateLimitSpec {
        per_ip: Some((
            Rate {
                count: NonZeroU32::new(count).unwrap(),
                per: Duration::from_secs(1),
            },
            NonZeroU32::new(burst).unwrap(),
        )),
        total: None,
        ipv6_prefix: 64,
        max_keys: 100_000,
    }
}

struct Admission {
    trusted: Vec<ipnet::IpNet>,
    lists: IpLists,
    bans: BanList,
}

fn decide(a: &Admission, peer: IpAddr, headers: &HeaderMap, limiter: &RouteLimiter) -> bool {
    let client = client_ip(peer, headers, &a.trusted).ip;
    a.lists.check(client).is_ok()
        && a.bans.banned(client).is_none()
        && limiter.check(client).is_ok()
}

/// A ban list holding 1,000 bans, so the lookup takes its locked path.
fn busy_bans() -> BanList {
    let rule = BanRule {
        name: "r".into(),
        on: Offence::RateLimited,
        count: 1,
        window: Duration::from_secs(60),
        duration: Duration::from_secs(3600),
    };
    let bans = BanList::with_system_clock(vec![rule], 100_000, 64);
    for i in 0..1000u32 {
        bans.record(Offence::RateLimited, IpAddr::V4((0xc000_0000 | i).into()));
    }
    bans
}

fn bench(c: &mut Criterion) {
    let admission = Admission {
        trusted: vec!["10.0.0.0/8".parse().unwrap()],
        lists: IpLists::new(
            vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
            vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8:dead::/48".parse().unwrap(),
            ],
        ),
        bans: busy_bans(),
    };
    let a = &admission;
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
    let peer: IpAddr = "10.1.2.3".parse().unwrap();

    let roomy = RouteLimiter::new(spec(1_000_000_000, 1_000_000_000));
    c.bench_function("admission_hit", |b| {
        b.iter(|| decide(a, peer, &headers, &roomy))
    });

    let tight = RouteLimiter::new(spec(1, 1));
    let _ = decide(a, peer, &headers, &tight);
    c.bench_function("admission_rate_limited", |b| {
        b.iter(|| decide(a, peer, &headers, &tight))
    });

    let fresh = RouteLimiter::new(spec(100, 100));
    let mut n: u32 = 0;
    c.bench_function("admission_fresh_key", |b| {
        b.iter_batched(
            || {
                n = n.wrapping_add(1);
                IpAddr::V4((0x0b00_0000 | (n & 0x00ff_ffff)).into())
            },
            |ip| decide(a, ip, &HeaderMap::new(), &fresh),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
