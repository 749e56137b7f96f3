//! Message authentication (`sync::auth`) through the engine: stores that
//! share a secret converge, a forger's messages and altered bytes are
//! refused and counted, a replay (to the same recipient or another, of a
//! message or of an old session's hello) is refused, clocks minutes off
//! still sync, and a secret is rotated node by node with the cluster
//! syncing throughout.

mod common;

use common::net::{fast_cfg, tag, update, Net, Node};
use vsmcp_crdt_core::store::Access;
use vsmcp_crdt_core::sync::auth::{FRAME_BYTES, MAC_BYTES};
use vsmcp_crdt_core::sync::{directory_of, EngineConfig, Keyring, Reject};
use vsmcp_crdt_core::{Kind, Mutation};

const OLD: &[u8] = b"the old cluster secret, 32 bytes";
const NEW: &[u8] = b"the new cluster secret, 32 bytes";
const FORGED: &[u8] = b"a forger's guess at the secret!!";
const TOPIC: &[u8] = b"vsmcp_crdt:Vsmcp.CRDT.ContextStore";
/// The wire tag of `AnswerEnd`.
const ANSWER_END: u8 = 8;

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
        // (Duplicates the network made are refused as replays: `Stale`.)
        for i in 0..3 {
            assert_eq!(rejected(&net, i, Reject::Unauthenticated), 0);
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
fn a_replayed_message_is_refused_and_changes_nothing() {
    let cfg = with_secrets(&[OLD]);
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

    // Every replay is refused and counted, at once or later.
    for _ in 0..2 {
        let before = rejected(&net, 1, Reject::Stale);
        for b in &old_add {
            let n = &mut net.nodes[1];
            let outs = n.engine.receive(&n.store, b, net.now, &mut Vec::new());
            assert!(outs.is_empty());
        }
        assert_eq!(
            rejected(&net, 1, Reject::Stale) - before,
            old_add.len() as u64
        );
        assert_eq!(net.value(1, b"shared"), Some("[]".into()));
        net.settle();
    }
    // Fresh traffic still flows.
    update(&s0, b"shared", Mutation::Add(b"after"));
    net.settle();
    assert_eq!(net.value(1, b"shared"), Some(set_of(&[b"after"])));
}

/// What `from` sent `to` (by node index) among `recorded`, by inner tag.
fn sent(net: &Net, recorded: &[(usize, Vec<u8>)], to: usize, tag: u8) -> Vec<Vec<u8>> {
    let _ = net;
    recorded
        .iter()
        .filter(|(t, b)| *t == to && b.get(FRAME_BYTES + 2) == Some(&tag))
        .map(|(_, b)| b.clone())
        .collect()
}

#[test]
fn a_message_for_one_recipient_is_refused_by_another() {
    let cfg = with_secrets(&[OLD]);
    let mut net = net_with_shared_set(3, 0, 1, &[cfg.clone(), cfg.clone(), cfg]);
    for _ in 0..3 {
        net.step(true);
    }
    net.recorded = Some(Vec::new());
    let s0 = net.nodes[0].store.clone();
    update(&s0, b"shared", Mutation::Add(b"for everyone"));
    net.nodes[0]
        .store
        .create(b"c", Kind::GCounter, Access::MayBlock)
        .unwrap();
    net.step(false);
    let rounds = net.nodes[0].engine.round(&s0, net.now, &mut Vec::new()).1;
    net.send(0, rounds);
    net.deliver_all();
    let recorded = net.recorded.take().unwrap();
    // Every message node 0 sealed for node 2, given to node 1 instead:
    // refused, whatever its kind (deltas, digests, answers).
    let for_2: Vec<Vec<u8>> = recorded
        .iter()
        .filter(|(t, b)| *t == 2 && b[FRAME_BYTES - MAC_BYTES - 1] == 1)
        .map(|(_, b)| b.clone())
        .collect();
    assert!(for_2.len() >= 2, "{}", for_2.len());
    let before = rejected(&net, 1, Reject::Unauthenticated);
    for b in &for_2 {
        let n = &mut net.nodes[1];
        assert!(n
            .engine
            .receive(&n.store, b, net.now, &mut Vec::new())
            .is_empty());
    }
    assert_eq!(
        rejected(&net, 1, Reject::Unauthenticated) - before,
        for_2.len() as u64
    );
    assert!(!sent(&net, &recorded, 2, tag::DELTAS).is_empty());
}

#[test]
fn an_answer_end_replayed_to_another_recipient_takes_no_proof_and_loses_no_write() {
    // Node 0 answers node 2's digest; an attacker replays that answer's
    // end to node 1, which has a digest pending to node 0 and lacks node
    // 0's latest write. Were it taken, node 1's frontier of node 0 would
    // pass the write, its cut would follow, and the write would be
    // deleted as a late copy once it arrived.
    let cfg = with_secrets(&[OLD]);
    let (a, b, c) = (0usize, 1usize, 2usize);
    let mut net = net_with_shared_set(3, 0, 7, &[cfg.clone(), cfg.clone(), cfg]);
    for i in 0..30 {
        net.step(i % 2 == 0);
    }
    let sa = net.nodes[a].store.clone();
    sa.create(b"victim", Kind::PNCounter, Access::MayBlock)
        .unwrap();
    update(&sa, b"victim", Mutation::Increment(42));
    let victim_stamp = sa
        .metadata(b"victim", Access::MayBlock)
        .unwrap()
        .0
        .gen
        .stamp;
    let sb = net.nodes[b].store.clone();
    sb.create(b"junk", Kind::GCounter, Access::MayBlock)
        .unwrap();
    sb.delete(b"junk", Access::MayBlock).unwrap();
    // Node 1 hears nothing for a while.
    net.cut_in[b] = true;
    for i in 0..6 {
        net.step(i % 2 == 0);
    }
    assert_eq!(net.value(c, b"victim"), Some("Counter(42)".into()));
    assert_eq!(net.value(b, b"victim"), None);
    // Node 1's digest to node 0 (its answer lost), then node 2's, answered.
    let outs = net.nodes[b].engine.round(&sb, net.now, &mut Vec::new()).1;
    net.send(b, outs);
    net.deliver_all();
    net.recorded = Some(Vec::new());
    let sc = net.nodes[c].store.clone();
    let outs = net.nodes[c].engine.round(&sc, net.now, &mut Vec::new()).1;
    net.send(c, outs);
    net.deliver_all();
    let recorded = net.recorded.take().unwrap();
    let answer_ends = sent(&net, &recorded, c, ANSWER_END);
    assert!(!answer_ends.is_empty(), "node 0's AnswerEnd to node 2");
    let dir_a = directory_of(net.nodes[a].engine.me()).to_vec();
    let frontier_of_a = |net: &Net| {
        let info = net.nodes[b].engine.member_info();
        info.into_iter()
            .find(|m| m.directory == dir_a)
            .unwrap()
            .frontier
    };
    let before = frontier_of_a(&net);
    assert!(before < victim_stamp);
    for m in &answer_ends {
        let n = &mut net.nodes[b];
        n.engine.receive(&n.store, m, net.now, &mut Vec::new());
    }
    assert_eq!(
        frontier_of_a(&net),
        before,
        "a proof taken from a message for node 2"
    );
    for i in 0..10 {
        net.step(i % 2 == 0);
    }
    net.cut_in[b] = false;
    net.settle();
    for i in 0..3 {
        assert_eq!(
            net.value(i, b"victim"),
            Some("Counter(42)".into()),
            "node {i}"
        );
    }
}

/// A node whose wall clock reads `skew_ms` off the others', with `cfg`.
fn skewed_node(skew_ms: i64, cfg: EngineConfig) -> Node {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use vsmcp_crdt_core::hlc::WallClock;
    use vsmcp_crdt_core::store::{Store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path(), b"same");
    let now = vsmcp_crdt_core::hlc::now_ms() as i64;
    c.wall_clock = WallClock::Manual(Arc::new(AtomicU64::new((now + skew_ms) as u64)));
    let store = Store::open(c).unwrap();
    store.start_capture();
    let engine = vsmcp_crdt_core::sync::Engine::new(&store, cfg);
    Node {
        store,
        engine,
        _dir: dir,
    }
}

/// Whether node `to` gets node `from`'s write, node 1's clock `skew_ms`
/// off node 0's.
fn gets_write_across_skew(skew_ms: i64, cfg: EngineConfig, from: usize, to: usize) -> bool {
    let mut net = Net::new(1, 0, 5);
    net.restart_engine(0, cfg.clone());
    net.join(skewed_node(skew_ms, cfg));
    for (i, n) in net.nodes.iter().enumerate() {
        let id = format!("w-{i}");
        n.store
            .create(id.as_bytes(), Kind::PNCounter, Access::MayBlock)
            .unwrap();
        update(&n.store, id.as_bytes(), Mutation::Increment(1));
    }
    net.settle();
    net.settle();
    net.value(to, format!("w-{from}").as_bytes()) == Some("Counter(1)".into())
}

#[test]
fn a_node_whose_clock_is_minutes_off_still_syncs_with_a_secret() {
    // As without one: authentication adds no clock condition. Node 1's
    // clock two minutes behind: its writes reach node 0; two minutes
    // ahead: node 0's writes reach it. (The other way, entries stamped
    // beyond `max_clock_offset` wait for the receiver's clock, with or
    // without a secret.)
    for cfg in [fast_cfg(30), with_secrets(&[OLD])] {
        let auth = cfg.auth.is_some();
        assert!(
            gets_write_across_skew(-120_000, cfg.clone(), 1, 0),
            "behind, {auth}"
        );
        assert!(gets_write_across_skew(120_000, cfg, 0, 1), "ahead, {auth}");
    }
}

#[test]
fn a_hello_of_a_superseded_session_replayed_is_refused() {
    let cfg = with_secrets(&[OLD]);
    let mut net = net_with_shared_set(2, 0, 3, &[cfg.clone(), cfg.clone()]);
    net.recorded = Some(Vec::new());
    for i in 0..4 {
        net.step(i % 2 == 0);
    }
    let old_hellos = sent(&net, net.recorded.as_ref().unwrap(), 1, tag::HELLO);
    net.recorded = None;
    assert!(!old_hellos.is_empty());
    // Node 0's sync restarts: a new session supersedes the old one.
    net.restart_engine(0, cfg);
    for i in 0..4 {
        net.step(i % 2 == 0);
    }
    let live = net.nodes[1].engine.up_peers();
    assert_eq!(live.len(), 1);
    let before = rejected(&net, 1, Reject::Stale);
    for h in &old_hellos {
        let n = &mut net.nodes[1];
        assert!(n
            .engine
            .receive(&n.store, h, net.now, &mut Vec::new())
            .is_empty());
    }
    assert_eq!(
        rejected(&net, 1, Reject::Stale) - before,
        old_hellos.len() as u64
    );
    assert_eq!(
        net.nodes[1].engine.up_peers(),
        live,
        "the live session stays"
    );
    // The same latest hello again is refused too: liveness moves only
    // with fresh messages.
    net.recorded = Some(Vec::new());
    net.step(true);
    let latest = sent(&net, net.recorded.as_ref().unwrap(), 1, tag::HELLO);
    let before = rejected(&net, 1, Reject::Stale);
    for h in &latest {
        let n = &mut net.nodes[1];
        assert!(n
            .engine
            .receive(&n.store, h, net.now, &mut Vec::new())
            .is_empty());
    }
    assert_eq!(
        rejected(&net, 1, Reject::Stale) - before,
        latest.len() as u64
    );
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

#[test]
fn a_withheld_hello_after_the_session_expired_reopens_nothing_for_replay() {
    // A hello of node 0 kept from node 1; node 0's later traffic to node 1
    // recorded; node 1's session of node 0 expires (a partition); then the
    // withheld hello, and the recording. The sequence numbers of node 0's
    // session outlive its session here: every recorded message is refused.
    let cfg = with_secrets(&[OLD]);
    let mut net = net_with_shared_set(2, 0, 11, &[cfg.clone(), cfg]);
    for i in 0..6 {
        net.step(i % 2 == 0);
    }
    assert_eq!(net.nodes[1].engine.up_peers().len(), 1);
    let (s0, s1) = (net.nodes[0].store.clone(), net.nodes[1].store.clone());
    let withheld = net.nodes[0].engine.hello(&s0, &mut Vec::new()).bytes;
    net.recorded = Some(Vec::new());
    update(&s0, b"shared", Mutation::Add(b"x"));
    net.step(false);
    let outs = net.nodes[1].engine.round(&s1, net.now, &mut Vec::new()).1;
    net.send(1, outs);
    net.deliver_all();
    let recorded: Vec<Vec<u8>> = net
        .recorded
        .take()
        .unwrap()
        .into_iter()
        .filter(|(to, b)| *to == 1 && b.get(FRAME_BYTES + 2) != Some(&tag::HELLO))
        .map(|(_, b)| b)
        .collect();
    assert!(recorded
        .iter()
        .any(|b| b.get(FRAME_BYTES + 2) == Some(&ANSWER_END)));
    net.cut_in[1] = true;
    net.now += 10_000;
    net.step(false);
    net.now += 60_000;
    net.step(false);
    net.step(false);
    assert!(
        net.nodes[1].engine.peer_info().is_empty(),
        "session expired"
    );
    let stale_before = rejected(&net, 1, Reject::Stale);
    let proofs_before = net.nodes[1].engine.counters().state_proofs;
    let n = &mut net.nodes[1];
    n.engine
        .receive(&n.store, &withheld, net.now, &mut Vec::new());
    for b in &recorded {
        assert!(n
            .engine
            .receive(&n.store, b, net.now, &mut Vec::new())
            .is_empty());
    }
    assert_eq!(
        rejected(&net, 1, Reject::Stale) - stale_before,
        recorded.len() as u64
    );
    assert_eq!(net.nodes[1].engine.counters().state_proofs, proofs_before);
}

#[test]
fn a_node_whose_flushes_fail_is_heard_again_after_a_long_partition() {
    // Its hellos all carry its persisted clock (the same stamp): as
    // without a secret, node 1 takes them again once the partition heals.
    for cfg in [fast_cfg(30), with_secrets(&[OLD])] {
        let mut net = net_with_shared_set(2, 0, 5, &[cfg.clone(), cfg.clone()]);
        for i in 0..6 {
            net.step(i % 2 == 0);
        }
        assert_eq!(net.nodes[1].engine.up_peers().len(), 1);
        net.nodes[0].store.set_fail_writes(true);
        net.step(true);
        net.cut[0] = true;
        for _ in 0..70 {
            net.now += 990;
            net.step(true);
        }
        net.cut[0] = false;
        for _ in 0..30 {
            net.now += 990;
            net.step(true);
        }
        let up = net.nodes[1].engine.up_peers().len();
        net.nodes[0].store.set_fail_writes(false);
        assert_eq!(
            up,
            1,
            "auth {}: node 0 lost while its disk fails",
            cfg.auth.is_some()
        );
    }
}
