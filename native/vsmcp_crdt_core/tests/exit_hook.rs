//! At process exit the hook writes every pending relaxed write
//! to the WAL (so an exit loses nothing acknowledged) and then keeps
//! RocksDB quiet. The writer runs in a child process (this test binary
//! re-executed), which exits with writes still pending.

use std::process::Command;
use vsmcp_crdt_core::crdt::{Kind, Value};
use vsmcp_crdt_core::store::{Access, Mutation, Store, StoreConfig};

const CHILD_DIR: &str = "VSMCP_EXIT_HOOK_CHILD_DIR";

fn cfg(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir, b"node-a");
    // No flush would happen before the exit on its own.
    c.flush_interval_ms = 600_000;
    c
}

/// The child: acknowledged relaxed writes, then `exit(0)` at once.
#[test]
fn child_writes_then_exits() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let s = Store::open(cfg(std::path::Path::new(&dir))).unwrap();
    s.create(b"c", Kind::GCounter, Access::MemoryOnly).unwrap();
    for _ in 0..1000 {
        s.update(b"c", Mutation::Increment(1), Access::MemoryOnly, |_| ())
            .unwrap();
    }
    // Writers still running while the process exits.
    for _ in 0..4 {
        let s = s.clone();
        std::thread::spawn(move || loop {
            let _ = s.update(b"d", Mutation::Increment(1), Access::MemoryOnly, |_| ());
        });
    }
    std::process::exit(0);
}

#[test]
fn exit_writes_pending_relaxed_writes() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_writes_then_exits",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "child exited with {status}");
        let s = Store::open(cfg(dir.path())).unwrap();
        let n = s
            .read(b"c", Access::MayBlock, |c| match c.value() {
                Value::Counter(n) => n,
                _ => -1,
            })
            .unwrap();
        assert_eq!(n, 1000);
    }
}
