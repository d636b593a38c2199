//! What one policy decision costs as the rule table grows: compiles a
//! table of N rules (half domain suffixes, half networks, then a final
//! catch-all), then times decisions for a mix of names and addresses that
//! hit a rule and that miss every one. Prints `rules=N ns_per_decision=X`
//! (the median of several batches).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use ferryman_proxy::{Env, Facts, InterceptConfig, Policy, PolicySpec, RuleConfig};

fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("rule counts, e.g. 10 1000 10000"))
        .collect();
    let counts = if counts.is_empty() {
        vec![10, 1_000, 10_000]
    } else {
        counts
    };
    let tls = ferryman_tls::client_config(&[], false).expect("TLS config");
    let env = Env::detached(tls);
    for count in counts {
        let rules = table(count);
        let spec = PolicySpec {
            outbounds: &[],
            rules: &rules,
            intercept: &InterceptConfig::default(),
            base: std::path::Path::new("."),
        };
        let policy = Policy::compile(spec, &env).expect("the generated rules compile");
        let hosts = hosts(count, 4096);
        let client: IpAddr = [127, 0, 0, 1].into();
        let mut batches = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            for host in &hosts {
                let facts = Facts {
                    inbound: "http",
                    client,
                    user: None,
                    host,
                    port: 443,
                    method: None,
                    path: None,
                    addrs: &[],
                };
                black_box(policy.decide(black_box(&facts)).intercept);
            }
            batches.push(started.elapsed().as_nanos() as f64 / hosts.len() as f64);
        }
        batches.sort_by(f64::total_cmp);
        println!(
            "rules={count} ns_per_decision={:.0}",
            batches[batches.len() / 2]
        );
    }
}

/// `count` rules: domain suffixes and /24 networks in turn, then a
/// catch-all that decides interception.
fn table(count: usize) -> Vec<RuleConfig> {
    let mut rules: Vec<RuleConfig> = (0..count.saturating_sub(1))
        .map(|i| {
            let mut rule = RuleConfig {
                outbound: Some(if i % 3 == 0 { "reject" } else { "direct" }.into()),
                ..RuleConfig::default()
            };
            if i % 2 == 0 {
                rule.domain_suffix = vec![format!("d{i}.site{}.test", i % 97)];
            } else {
                rule.ip_cidr = vec![format!("10.{}.{}.0/24", (i / 256) % 256, i % 256)];
            }
            rule
        })
        .collect();
    rules.push(RuleConfig {
        intercept: Some(false),
        ..RuleConfig::default()
    });
    rules
}

/// Names and addresses to decide: a quarter each of names under a rule's
/// suffix, names no rule knows, addresses in a rule's network and
/// addresses in none.
fn hosts(count: usize, n: usize) -> Vec<String> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    (0..n)
        .map(|i| {
            let k = next() % count.max(2);
            match i % 4 {
                0 => format!("www.api.d{}.site{}.test", k & !1, (k & !1) % 97),
                1 => format!("cdn{k}.elsewhere.example.test"),
                2 => format!(
                    "10.{}.{}.{}",
                    ((k | 1) / 256) % 256,
                    (k | 1) % 256,
                    next() % 250
                ),
                _ => format!("192.168.{}.{}", k % 256, next() % 250),
            }
        })
        .collect()
}
