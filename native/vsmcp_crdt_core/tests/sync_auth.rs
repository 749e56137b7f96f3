//! Message authentication (`sync::auth`) through the engine: stores that
//! share a secret converge, a forger's messages and altered bytes are
//! refused and counted, a replay beyond the window is refused (and one
//! inside it changes nothing), and a secret is rotated node by node with
//! the cluster syncing throughout.

mod common;

use common::net::{fast_cfg, update, Net};
use vsmcp_crdt_core::store::Access;
use vsmcp_crdt_core::sync::{EngineConfig, Keyring, Reject};
use vsmcp_crdt_core::{Kind, Mutation};

const OLD: &[u8] = b"the old cluster secret, 32 bytes";
const NEW: &[u8] = b"the new cluster secret, 32 bytes";
const FORGED: &[u8] = b"a forger's guess at the secret!!";
const TOPIC: &[u8] = b"vsmcp_crdt:Vsmcp.CRDT.ContextStore";

fn with_secrets(secrets: &[&[u8]]) -> EngineConfig {
    EngineConfig {
        auth: Some(Keyring::new(secrets, TOPIC).unwrap()),
        ..fast_cfg(30)
    }
}

/// How `Net::value` shows a set of `elems`.
fn set_of(elems: &[&[u8]]) -> String {
    format!("{elems:?}")
}

fn rejected(net: &Net, i: usize, why: Reject) -> u64 {
    net.nodes[i].engine.counters().rejected[why as usize]
}

/// `net` with node `i` running an engine of `cfg`.
fn secure(net: &mut Net, cfgs: &[EngineConfig]) {
    for (i, cfg) in cfgs.iter().enumerate() {
        net.restart_engine(i, cfg.clone());
    }
}

fn write_everywhere(net: &mut Net, ids: &[usize], tag: &str) {
    for &i in ids {
        let s = net.nodes[i].store.clone();
        let id = format!("{tag}-{i}");
        s.create(id.as_bytes(), Kind::PNCounter, Access::MayBlock)
            .unwrap();
        update(&s, id.as_bytes(), Mutation::Increment(i as i128 + 1));
        update(&s, b"shared", Mutation::Add(id.as_bytes()));
    }
}

fn assert_converged(net: &Net, ids: &[usize], tag: &str) {
    for &i in ids {
        for &j in ids {
            let id = format!("{tag}-{j}");
            assert_eq!(
                net.value(i, id.as_bytes()),
                Some(format!("Counter({})", j + 1)),
                "node {i} lacks {id}"
            );
        }
        assert_eq!(net.value(i, b"shared"), net.value(ids[0], b"shared"));
    }
}

fn net_with_shared_set(n: usize, loss: u64, seed: u64, cfgs: &[EngineConfig]) -> Net {
    let mut net = Net::new(n, loss, seed);
    secure(&mut net, cfgs);
    for i in 0..n {
        let s = net.nodes[i].store.clone();
        s.create(b"shared", Kind::ORSet, Access::MayBlock).unwrap();
    }
    net
}

#[test]
fn stores_sharing_a_secret_converge_over_a_lossy_network() {
    for seed in [3u64, 11] {
        let cfg = with_secrets(&[OLD]);
        let mut net = net_with_shared_set(3, 15, seed, &[cfg.clone(), cfg.clone(), cfg]);
        for _ in 0..5 {
            net.step(true);
        }
        write_everywhere(&mut net, &[0, 1, 2], "w");
        net.settle();
        assert_converged(&net, &[0, 1, 2], "w");
        for i in 0..3 {
            assert_eq!(rejected(&net, i, Reject::Unauthenticated), 0);
            assert_eq!(rejected(&net, i, Reject::Stale), 0);
        }
    }
}

#[test]
fn a_forging_node_and_a_node_without_the_secret_get_nothing_in() {
    let good = with_secrets(&[OLD]);
    let forger = with_secrets(&[FORGED]);
    let plain = fast_cfg(30);
    let mut net = net_with_shared_set(4, 0, 1, &[good.clone(), good, forger, plain]);
    for _ in 0..5 {
        net.step(true);
    }
    write_everywhere(&mut net, &[0, 1, 2, 3], "w");
    net.settle();
    assert_converged(&net, &[0, 1], "w");
    for honest in [0, 1] {
        for outsider in [2, 3] {
            let id = format!("w-{outsider}");
            assert_eq!(net.value(honest, id.as_bytes()), None);
        }
        // Every message of the forger and of the plain node was refused.
        assert!(rejected(&net, honest, Reject::Unauthenticated) >= 20);
        assert!(net.nodes[honest].engine.up_peers().len() == 1);
    }
    // Neither outsider took anything of the honest nodes either.
    assert_eq!(net.value(2, b"w-0"), None);
    assert_eq!(net.value(3, b"w-0"), None);
    assert!(rejected(&net, 2, Reject::Unauthenticated) > 0);
    assert!(rejected(&net, 3, Reject::Malformed) > 0);
}

#[test]
fn an_altered_byte_anywhere_in_an_authenticated_message_is_refused() {
    let cfg = with_secrets(&[OLD]);
    let mut net = net_with_shared_set(2, 0, 1, &[cfg.clone(), cfg]);
    for _ in 0..3 {
        net.step(true);
    }
    net.recorded = Some(Vec::new());
    let s0 = net.nodes[0].store.clone();
    update(&s0, b"shared", Mutation::Add(b"genuine"));
    net.step(false);
    let recorded = net.recorded.take().unwrap();
    let (_, deltas) = recorded
        .iter()
        .find(|(to, b)| *to == 1 && b.len() > 60)
        .expect("node 0's deltas")
        .clone();
    let before = rejected(&net, 1, Reject::Unauthenticated);
    for i in (0..deltas.len()).step_by(3) {
        let mut bad = deltas.clone();
        bad[i] ^= 0x20;
        let n = &mut net.nodes[1];
        let outs = n.engine.receive(&n.store, &bad, net.now, &mut Vec::new());
        assert!(outs.is_empty(), "altered byte {i} was answered");
    }
    let tried = deltas.len().div_ceil(3) as u64;
    assert_eq!(rejected(&net, 1, Reject::Unauthenticated) - before, tried);
    assert_eq!(net.value(1, b"shared"), net.value(0, b"shared"));
}

#[test]
fn a_replay_inside_the_window_changes_nothing_and_one_after_it_is_refused() {
    let cfg = EngineConfig {
        replay_window_ms: 400,
        ..with_secrets(&[OLD])
    };
    let mut net = net_with_shared_set(2, 0, 1, &[cfg.clone(), cfg]);
    for _ in 0..3 {
        net.step(true);
    }
    // Node 0 adds an element, node 1 receives it: record that message.
    net.recorded = Some(Vec::new());
    let s0 = net.nodes[0].store.clone();
    update(&s0, b"shared", Mutation::Add(b"secret-plan"));
    net.step(false);
    let old_add: Vec<Vec<u8>> = net
        .recorded
        .take()
        .unwrap()
        .into_iter()
        .filter(|(to, _)| *to == 1)
        .map(|(_, b)| b)
        .collect();
    assert!(!old_add.is_empty());
    assert_eq!(net.value(1, b"shared"), Some(set_of(&[b"secret-plan"])));
    // Then removes it everywhere.
    update(&s0, b"shared", Mutation::Remove(b"secret-plan"));
    net.settle();
    assert_eq!(net.value(1, b"shared"), Some("[]".into()));

    // A replay at once: accepted as a duplicate, and a duplicate of an
    // add the remove observed changes nothing.
    let stale_before = rejected(&net, 1, Reject::Stale);
    for b in &old_add {
        let n = &mut net.nodes[1];
        n.engine.receive(&n.store, b, net.now, &mut Vec::new());
    }
    assert_eq!(net.value(1, b"shared"), Some("[]".into()));
    assert_eq!(rejected(&net, 1, Reject::Stale), stale_before);

    // After the window: refused, counted, and still nothing changes.
    std::thread::sleep(std::time::Duration::from_millis(500));
    for b in &old_add {
        let n = &mut net.nodes[1];
        let outs = n.engine.receive(&n.store, b, net.now, &mut Vec::new());
        assert!(outs.is_empty());
    }
    assert_eq!(
        rejected(&net, 1, Reject::Stale) - stale_before,
        old_add.len() as u64
    );
    assert_eq!(net.value(1, b"shared"), Some("[]".into()));
    // Fresh traffic still flows.
    update(&s0, b"shared", Mutation::Add(b"after"));
    net.settle();
    assert_eq!(net.value(1, b"shared"), Some(set_of(&[b"after"])));
}

#[test]
fn a_secret_is_rotated_node_by_node_while_the_cluster_keeps_syncing() {
    let n = 3;
    let all: Vec<usize> = (0..n).collect();
    let mut net = net_with_shared_set(n, 5, 9, &vec![with_secrets(&[OLD]); n]);
    for _ in 0..5 {
        net.step(true);
    }
    // 1. Each node in turn accepts the new secret (still signing with the
    //    old); 2. each signs with the new one; 3. each drops the old one.
    let stages: [&[&[u8]]; 3] = [&[OLD, NEW], &[NEW, OLD], &[NEW]];
    for (s, secrets) in stages.iter().enumerate() {
        for node in 0..n {
            net.restart_engine(node, with_secrets(secrets));
            let tag = format!("stage{s}-node{node}");
            write_everywhere(&mut net, &all, &tag);
            net.settle();
            assert_converged(&net, &all, &tag);
        }
    }
    for i in 0..n {
        assert_eq!(rejected(&net, i, Reject::Unauthenticated), 0, "node {i}");
    }
    // A node left on the old secret alone is now outside.
    net.restart_engine(0, with_secrets(&[OLD]));
    write_everywhere(&mut net, &[0], "left-behind");
    net.settle();
    assert_eq!(net.value(1, b"left-behind-0"), None);
    assert!(rejected(&net, 1, Reject::Unauthenticated) > 0);
}
