//! A long campaign of the deterministic simulator (`tests/sim/`): runs a
//! range of seeds on worker threads (one per core by default, two here),
//! prints progress with seeds/s, and appends its figures to a results
//! file, one row per chunk of seeds plus a summary, so that a campaign can
//! be run in pieces (`--start` where the last one stopped).
//!
//! ```text
//! cargo run --release -p vsmcp_crdt_core --example sim_campaign -- \
//!     --seeds 100000 [--start 1] [--threads 2] [--chunk 1000] [--out bench/RESULTS-sim.md]
//! ```

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/sim/mod.rs"]
mod sim;

use std::io::Write;
use std::time::Instant;

struct Args {
    start: u64,
    seeds: u64,
    threads: usize,
    chunk: u64,
    out: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        start: 1,
        seeds: 1000,
        threads: 2,
        chunk: 500,
        out: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--start" => a.start = v.parse().expect("--start N"),
            "--seeds" => a.seeds = v.parse().expect("--seeds N"),
            "--threads" => a.threads = v.parse().expect("--threads N"),
            "--chunk" => a.chunk = v.parse::<u64>().expect("--chunk N").max(1),
            "--out" => a.out = Some(v.into()),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn append(out: &Option<std::path::PathBuf>, text: &str) {
    if let Some(p) = out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .expect("results file");
        f.write_all(text.as_bytes()).expect("write results");
    }
}

fn main() {
    let a = args();
    let command: Vec<String> = std::env::args().collect();
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::consts::ARCH
    );
    append(
        &a.out,
        &format!(
            "\n## Campaign: seeds {}..{} ({} threads, {machine})\n\n`{}`\n\n\
             | seeds | ops | packets | faults | failures | seeds/s |\n|---|---|---|---|---|---|\n",
            a.start,
            a.start + a.seeds - 1,
            a.threads,
            command.join(" ")
        ),
    );
    let began = Instant::now();
    let mut total = sim::Tally::default();
    let mut next = a.start;
    let end = a.start + a.seeds;
    while next < end {
        let upto = (next + a.chunk).min(end);
        let seeds: Vec<u64> = (next..upto).collect();
        let t = Instant::now();
        let tally = sim::run_many(&seeds, a.threads, &|o| {
            if !o.ok() {
                println!(
                    "seed {} ({}) FAILED: {} -- {}",
                    o.seed,
                    o.scenario,
                    o.symptoms().join(","),
                    o.failures.first().map_or("", |f| f.detail.as_str())
                );
            }
        });
        let rate = tally.seeds as f64 / t.elapsed().as_secs_f64().max(1e-9);
        let faults: u64 = tally.faults.values().sum();
        // The first failing seeds of the chunk (all are printed above).
        let mut failing: Vec<String> = tally
            .failures
            .iter()
            .take(12)
            .map(|f| f.0.to_string())
            .collect();
        if tally.failures.len() > failing.len() {
            failing.push("...".into());
        }
        println!(
            "seeds {next}..{}: {} failures, {rate:.2} seeds/s; {:.0} s so far",
            upto - 1,
            tally.failures.len(),
            began.elapsed().as_secs_f64()
        );
        append(
            &a.out,
            &format!(
                "| {next}..{} | {} | {} | {faults} | {} {} | {rate:.2} |\n",
                upto - 1,
                tally.ops,
                tally.packets,
                tally.failures.len(),
                if failing.is_empty() {
                    String::new()
                } else {
                    format!("({})", failing.join(" "))
                }
            ),
        );
        total.merge(tally);
        next = upto;
    }
    let summary = total.summary(began.elapsed());
    println!("{summary}");
    append(&a.out, &format!("\n```text\n{summary}```\n"));
    if !total.failures.is_empty() {
        std::process::exit(1);
    }
}
