//! Network-layer tests on loopback: exactly-once in-order delivery all-to-all, reconnects and
//! restarts, refused connections and attacks, a slow peer. Every wait is bounded.
mod support;

use bytes::Bytes;
use maftia_core::NodeId;
use maftia_crypto::identity::IdentityKey;
use maftia_net::frame;
use maftia_net::{NetError, Recipients, RefusalReason, SendError};
use rand::{RngCore, SeedableRng};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every sender's indices `0..count`, each exactly once and in order.
fn assert_exactly_once_in_order(frames: &[maftia_net::Incoming], sender: NodeId, count: u64) {
    let got = indices_from(frames, sender);
    let expected: Vec<u64> = (0..count).collect();
    assert_eq!(got.len(), expected.len(), "frames from {sender}");
    assert_eq!(
        got, expected,
        "frames from {sender} out of order or duplicated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_nodes_all_to_all_exactly_once_in_order() {
    const N: usize = 4;
    const FRAMES: u64 = 1500;
    let (_group, nets, mut rxs) = cluster(N, 1).await;
    // Every sender: mostly small frames, some spanning several Noise messages.
    for (i, net) in nets.iter().enumerate() {
        let me = NodeId(i as u16);
        for k in 0..FRAMES {
            let len = if k % 250 == 7 {
                150_000
            } else {
                40 + (k as usize % 300)
            };
            let report = net.send(&Recipients::All, payload(me, k, len)).unwrap();
            assert!(report.all_queued(), "{report:?}");
        }
    }
    let expected = N * FRAMES as usize;
    let receivers = rxs.iter_mut().map(|rx| recv_n(rx, expected, secs(30)));
    let received = within("all-to-all", secs(60), futures_join_all(receivers)).await;
    for frames in &received {
        for j in 0..N {
            assert_exactly_once_in_order(frames, NodeId(j as u16), FRAMES);
        }
    }
    // Nothing more arrives, and the counters agree.
    for (i, net) in nets.iter().enumerate() {
        let stats = net.stats();
        assert_eq!(stats.self_delivered, FRAMES);
        for (peer, p) in &stats.peers {
            assert_eq!(p.frames_received, FRAMES, "node {i} from {peer}");
            assert_eq!(p.duplicates_dropped, 0);
            assert_eq!(p.protocol_violations, 0);
            assert_eq!(p.refused_sends, 0);
        }
        assert_eq!(stats.refused_total(), 0);
    }
    for rx in &mut rxs {
        assert!(drain(rx).is_empty());
    }
    // Acks drain every queue.
    wait_until("queues drained", secs(10), || {
        nets.iter()
            .all(|n| n.stats().peers.values().all(|p| p.queue_frames == 0))
    })
    .await;
    // Multipoint addressing and send errors.
    let many: BTreeSet<NodeId> = [NodeId(0), NodeId(2), NodeId(9)].into();
    let report = nets[0]
        .send(&Recipients::Many(many), payload(NodeId(0), FRAMES, 10))
        .unwrap();
    assert_eq!(report.unknown, vec![NodeId(9)]);
    assert!(report.refused.is_empty());
    let self_copy = recv_n(&mut rxs[0], 1, secs(5)).await;
    assert_eq!(parse(&self_copy[0]), (NodeId(0), FRAMES));
    let other_copy = recv_n(&mut rxs[2], 1, secs(5)).await;
    assert_eq!(parse(&other_copy[0]), (NodeId(0), FRAMES));
    let too_big = Bytes::from(vec![0u8; frame::MAX_FRAME_SIZE + 1]);
    assert!(matches!(
        nets[1].send(&Recipients::Others, too_big),
        Err(SendError::FrameTooLarge { .. })
    ));
    for net in nets {
        net.shutdown().await;
    }
}

/// `join_all` without the futures crate: run the futures as tasks-free concurrent polls.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut futures: Vec<Option<_>> = futures.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn severed_connections_reconnect_and_retransmit_without_duplicates() {
    let mut group = Group::new(2, 2);
    let proxy = Proxy::start(group.addrs[1]).await;
    let mut config = group.config(0, 10);
    config.peers.insert(NodeId(1), proxy.addr);
    let (a, _a_rx) = group.start(config).await;
    let (b, mut b_rx) = group.start(group.config(1, 11)).await;
    let me = NodeId(0);
    let mut received = Vec::new();
    let mut next = 0u64;
    for round in 0..3 {
        // Traffic flows...
        for _ in 0..300 {
            assert!(a
                .send(&Recipients::One(NodeId(1)), payload(me, next, 100))
                .unwrap()
                .all_queued());
            next += 1;
        }
        received.extend(recv_n(&mut b_rx, 300, secs(10)).await);
        // ...then the proxy swallows everything, so frames are written but never acknowledged...
        proxy.set_forwarding(false);
        for _ in 0..200 {
            a.send(&Recipients::One(NodeId(1)), payload(me, next, 100))
                .unwrap();
            next += 1;
        }
        wait_until("frames written into the void", secs(10), || {
            let stats = &a.stats().peers[&NodeId(1)];
            stats.frames_sent - stats.frames_retransmitted >= next
        })
        .await;
        assert!(a.stats().peers[&NodeId(1)].queue_frames >= 200);
        // ...and the connection is cut under both nodes.
        let accepted = proxy.accepted();
        proxy.sever().await;
        proxy.set_forwarding(true);
        wait_until("reconnected", secs(10), || {
            proxy.accepted() > accepted && a.stats().peers[&NodeId(1)].reconnects > round
        })
        .await;
        received.extend(recv_n(&mut b_rx, 200, secs(10)).await);
    }
    assert_exactly_once_in_order(&received, me, next);
    let stats = a.stats().peers[&NodeId(1)].clone();
    assert!(stats.frames_retransmitted >= 600, "{stats:?}");
    assert_eq!(stats.protocol_violations, 0);
    assert!(drain(&mut b_rx).is_empty());
    assert_eq!(b.stats().peers[&NodeId(0)].protocol_violations, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_same_incarnation_resumes_both_directions() {
    let (mut group, mut nets, mut rxs) = cluster(3, 3).await;
    let (a, b) = (NodeId(0), NodeId(1));
    let mut from_a = Vec::new(); // what B delivered from A (both B instances)
    let mut from_b = Vec::new(); // what A delivered from B
    let mut a_next = 0;
    let mut b_next = 0;
    for _ in 0..200 {
        nets[0]
            .send(&Recipients::One(b), payload(a, a_next, 64))
            .unwrap();
        nets[1]
            .send(&Recipients::One(a), payload(b, b_next, 64))
            .unwrap();
        a_next += 1;
        b_next += 1;
    }
    from_a.extend(recv_n(&mut rxs[1], 100, secs(10)).await);
    // B stops mid-stream (some of A's frames undelivered, some of B's unacknowledged).
    let b_net = nets.remove(1);
    let b_state = b_net.shutdown().await;
    assert_eq!(b_state.incarnation(), 1001);
    // Frames delivered before the stop are still in B's old channel.
    let old_b_rx = rxs.remove(1);
    let mut old_b_rx = old_b_rx;
    from_a.extend(drain(&mut old_b_rx));
    // A keeps sending while B is down.
    for _ in 0..100 {
        nets[0]
            .send(&Recipients::One(b), payload(a, a_next, 64))
            .unwrap();
        a_next += 1;
    }
    let mut config = group.config(1, 1001);
    config.resume = Some(b_state);
    let (b_net, mut b_rx) = group.start(config).await;
    for _ in 0..100 {
        b_net
            .send(&Recipients::One(a), payload(b, b_next, 64))
            .unwrap();
        b_next += 1;
    }
    let missing = a_next as usize - from_a.len();
    from_a.extend(recv_n(&mut b_rx, missing, secs(10)).await);
    from_b.extend(recv_n(&mut rxs[0], b_next as usize, secs(10)).await);
    assert_exactly_once_in_order(&from_a, a, a_next);
    assert_exactly_once_in_order(&from_b, b, b_next);
    assert!(drain(&mut b_rx).is_empty() && drain(&mut rxs[0]).is_empty());
    assert_eq!(nets[0].stats().peers[&b].duplicates_dropped, 0);
    b_net.shutdown().await;
    for net in nets {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_with_new_incarnation_resets_the_streams() {
    crash_and_restart(7777).await;
}

/// Restarting with the old incarnation but without the link state (a crash and a careless
/// configuration) must not wedge the links either: A tells the new B where B's stream stood,
/// and B renumbers its queue from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_with_reused_incarnation_and_no_state_still_delivers() {
    crash_and_restart(1001).await;
}

async fn crash_and_restart(new_incarnation: u64) {
    let (mut group, mut nets, mut rxs) = cluster(2, 4).await;
    let (a, b) = (NodeId(0), NodeId(1));
    // B's stream to A reaches frame 300.
    for k in 0..300 {
        nets[1]
            .send(&Recipients::One(a), payload(b, k, 32))
            .unwrap();
    }
    let before = recv_n(&mut rxs[0], 300, secs(10)).await;
    assert_exactly_once_in_order(&before, b, 300);
    // A streams to B; B crashes (dropped, no state) while A's frames are in flight.
    for k in 0..200 {
        nets[0]
            .send(&Recipients::One(b), payload(a, k, 32))
            .unwrap();
    }
    let mut old_b = recv_n(&mut rxs[1], 50, secs(10)).await;
    drop(nets.remove(1));
    // The crash is complete once A's connection to the old B is gone.
    wait_until("old B gone", secs(10), || {
        !nets[0].stats().peers[&b].outbound_connected
    })
    .await;
    let mut old_rx = rxs.remove(1);
    for k in 200..300 {
        nets[0]
            .send(&Recipients::One(b), payload(a, k, 32))
            .unwrap();
    }
    // Restart without state.
    let (new_b, mut new_rx) = group.start(group.config(1, new_incarnation)).await;
    // B's new frames are delivered, not dropped as duplicates of the old stream's (a new
    // incarnation resets A's position; a reused one makes B renumber).
    for k in 0..50 {
        new_b
            .send(&Recipients::One(a), payload(b, 1000 + k, 32))
            .unwrap();
    }
    let after = recv_n(&mut rxs[0], 50, secs(10)).await;
    assert_eq!(indices_from(&after, b), (1000..1050).collect::<Vec<u64>>());
    // The new B gets a gap-free suffix of A's stream (A resends everything unacknowledged), and
    // old and new B together saw every frame.
    wait_until("A's queue to new B drained", secs(10), || {
        nets[0].stats().peers[&b].queue_frames == 0
    })
    .await;
    old_b.extend(drain(&mut old_rx));
    let new_frames = drain(&mut new_rx);
    let new_indices = indices_from(&new_frames, a);
    let first = *new_indices.first().expect("new B got frames");
    assert_eq!(new_indices, (first..300).collect::<Vec<u64>>());
    let old_indices = indices_from(&old_b, a);
    assert_eq!(
        old_indices,
        (0..old_indices.len() as u64).collect::<Vec<u64>>()
    );
    assert!(
        first <= old_indices.len() as u64,
        "gap between the two incarnations"
    );
    new_b.shutdown().await;
    for net in nets {
        net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_does_not_starve_the_others() {
    let mut group = Group::new(3, 10);
    let mut config = group.config(0, 1);
    config.limits.incoming_capacity = 4;
    let (_node, mut rx) = group.start(config).await;
    let (flooder, _rx1) = group.start(group.config(1, 2)).await;
    let (quiet, _rx2) = group.start(group.config(2, 3)).await;
    const FLOOD: u64 = 4000;
    for k in 0..FLOOD {
        assert!(flooder
            .send(&Recipients::One(NodeId(0)), payload(NodeId(1), k, 200))
            .unwrap()
            .all_queued());
    }
    // The flood has filled node 0's channel before the quiet peer speaks.
    let mut received = recv_n(&mut rx, 1, secs(10)).await;
    for k in 0..10 {
        quiet
            .send(&Recipients::One(NodeId(0)), payload(NodeId(2), k, 200))
            .unwrap();
    }
    // Let the quiet peer's frames reach node 0's socket while the application is not reading.
    wait_until("quiet frames written", secs(10), || {
        quiet.stats().peers[&NodeId(0)].frames_sent == 10
    })
    .await;
    received.extend(recv_n(&mut rx, FLOOD as usize + 9, secs(20)).await);
    assert_exactly_once_in_order(&received, NodeId(1), FLOOD);
    assert_exactly_once_in_order(&received, NodeId(2), 10);
    // Slots of the channel go to the waiting connections in turn: the quiet peer's frames are
    // interleaved with the flood, not queued behind it.
    let last_quiet = received.iter().rposition(|f| f.from == NodeId(2)).unwrap();
    assert!(
        last_quiet < FLOOD as usize / 4,
        "quiet peer's last frame at position {last_quiet}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_peer_is_bounded_and_does_not_delay_the_others() {
    let mut group = Group::new(3, 5);
    let mut config0 = group.config(0, 1);
    config0.limits.max_frame_size = 64 << 10;
    config0.limits.queue_max_frames = 64;
    config0.limits.queue_max_bytes = 256 << 10;
    let mut config2 = group.config(2, 3);
    config2.limits.incoming_capacity = 4;
    let (sender, _rx0) = group.start(config0).await;
    let (_fast, mut fast_rx) = group.start(group.config(1, 2)).await;
    // Node 2 never reads its incoming channel.
    let (_slow, _slow_rx) = group.start(config2).await;
    const FRAMES: u64 = 1200; // 1200 × 16 KiB ≈ 19 MiB: more than the sockets can buffer
    let me = NodeId(0);
    let started = std::time::Instant::now();
    let consumer =
        tokio::spawn(async move { recv_n(&mut fast_rx, FRAMES as usize, secs(20)).await });
    let mut max_queue = (0usize, 0usize);
    for k in 0..FRAMES {
        // Backpressure towards the fast peer only: retry while its queue is full.
        let mut to = Recipients::Many([NodeId(1), NodeId(2)].into());
        loop {
            let report = sender.send(&to, payload(me, k, 16 << 10)).unwrap();
            if !report.refused.contains(&NodeId(1)) {
                break;
            }
            to = Recipients::One(NodeId(1));
            tokio::task::yield_now().await;
        }
        let slow = sender.stats().peers[&NodeId(2)].clone();
        max_queue = (
            max_queue.0.max(slow.queue_frames),
            max_queue.1.max(slow.queue_bytes),
        );
    }
    let fast_frames = within("fast peer", secs(30), consumer).await.unwrap();
    let elapsed = started.elapsed();
    assert_exactly_once_in_order(&fast_frames, me, FRAMES);
    let slow = sender.stats().peers[&NodeId(2)].clone();
    assert!(
        max_queue.0 <= 64 && max_queue.1 <= 256 << 10,
        "{max_queue:?}"
    );
    assert!(
        slow.refused_sends > 0,
        "the slow peer's queue never filled: {slow:?}"
    );
    assert!(
        slow.frames_sent < FRAMES / 2,
        "the slow peer absorbed {} frames",
        slow.frames_sent
    );
    assert!(elapsed < secs(25), "fast peer took {elapsed:?}");
}

/// Payload bytes delivered into node `node`'s incoming channel so far, from every peer.
fn bytes_delivered(node: &maftia_net::Network) -> u64 {
    node.stats().peers.values().map(|p| p.bytes_received).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_frames_are_bounded_in_bytes_while_the_receiver_does_not_read() {
    const FRAME: usize = 200 << 10;
    const BUDGET: usize = 1 << 20; // 5 frames fit (1000 KiB), 6 do not
    const FITTING: u64 = (BUDGET / FRAME) as u64;
    const FLOOD: u64 = 40;
    let mut group = Group::new(3, 12);
    let mut config = group.config(0, 1);
    config.limits.max_frame_size = 256 << 10;
    config.limits.incoming_max_bytes = BUDGET;
    // The channel itself (4096 frames by default) is never what stops the flood.
    assert!(config.limits.incoming_capacity > FLOOD as usize);
    let (node, mut rx) = group.start(config).await;
    let (flooder, _rx1) = group.start(group.config(1, 2)).await;
    let (quiet, _rx2) = group.start(group.config(2, 3)).await;
    for k in 0..FLOOD {
        assert!(flooder
            .send(&Recipients::One(NodeId(0)), payload(NodeId(1), k, FRAME))
            .unwrap()
            .all_queued());
    }
    let frames_from = |id: u16| node.stats().peers[&NodeId(id)].frames_received;
    wait_until("budget filled", secs(10), || frames_from(1) == FITTING).await;
    // A small frame of another peer, written to node 0's socket while it is stalled.
    quiet
        .send(&Recipients::One(NodeId(0)), payload(NodeId(2), 0, 100))
        .unwrap();
    wait_until("quiet frame written", secs(10), || {
        quiet.stats().peers[&NodeId(0)].frames_sent == 1
    })
    .await;
    // The application reads nothing: the bytes in the channel never exceed the budget.
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_millis(400) {
        let stats = node.stats();
        assert!(bytes_delivered(&node) <= BUDGET as u64);
        assert!(stats.incoming_bytes_queued <= BUDGET, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(frames_from(1), FITTING);
    assert_eq!(node.stats().incoming_bytes_queued, FITTING as usize * FRAME);
    // The flooder's next frame waits for budget first; the quiet frame does not overtake it
    // (no barging, so a big frame is never starved by small ones), and neither does a frame to
    // ourselves: it is refused, as when the channel is full.
    assert_eq!(frames_from(2), 0);
    let report = node
        .send(&Recipients::One(NodeId(0)), payload(NodeId(0), 0, 10))
        .unwrap();
    assert_eq!(report.refused, vec![NodeId(0)]);
    // The flooder's connection is stalled, not dropped: its frames wait unacknowledged.
    assert!(flooder.stats().peers[&NodeId(0)].queue_frames as u64 >= FLOOD - FITTING);

    // The budget is held by the `Incoming` values, not by the channel: receiving the frames and
    // keeping them admits nothing more.
    let kept = recv_n(&mut rx, FITTING as usize, secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(frames_from(1), FITTING);
    assert_eq!(node.stats().incoming_bytes_queued, FITTING as usize * FRAME);
    let mut order: Vec<(NodeId, u64)> = kept.iter().map(parse).collect();
    let mut consumed = kept.iter().map(|f| f.payload.len() as u64).sum::<u64>();
    // Freeing one frame's worth admits the flooder's waiting frame and then the quiet frame,
    // which fits in what is left; the flooder's next frame does not.
    let mut kept = kept.into_iter();
    drop(kept.next());
    wait_until("quiet frame admitted", secs(10), || frames_from(2) == 1).await;
    assert_eq!(frames_from(1), FITTING + 1);
    drop(kept);
    // Dropping them lets the rest in, each frame dropped as soon as it is read.
    while order.len() < FLOOD as usize + 1 {
        let frame = within("next frame", secs(10), rx.recv()).await.unwrap();
        order.push(parse(&frame));
        consumed += frame.payload.len() as u64;
        drop(frame);
        let in_channel = bytes_delivered(&node) - consumed;
        assert!(in_channel <= BUDGET as u64, "{in_channel} bytes queued");
        assert!(node.stats().incoming_bytes_queued <= BUDGET);
    }
    let from = |id: u16| -> Vec<u64> {
        order
            .iter()
            .filter(|(sender, _)| *sender == NodeId(id))
            .map(|&(_, index)| index)
            .collect()
    };
    assert_eq!(from(1), (0..FLOOD).collect::<Vec<u64>>());
    assert_eq!(from(2), vec![0]);
    // So the quiet frame is among the first FITTING + 2 frames the application saw.
    let quiet_at = order.iter().position(|(s, _)| *s == NodeId(2)).unwrap();
    assert!(quiet_at <= FITTING as usize + 1, "{order:?}");
    wait_until("budget released", secs(5), || {
        node.stats().incoming_bytes_queued == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_counted_and_the_node_keeps_serving() {
    // Nodes 0..=2 run; node 3's key plays an authenticated but malicious peer.
    let mut group = Group::new(4, 6);
    let mut config = group.config(0, 1);
    config.limits.max_pending_handshakes = 4;
    config.limits.handshake_timeout = Duration::from_millis(800);
    config.limits.max_frame_size = 1 << 20;
    config.limits.queue_max_bytes = 4 << 20;
    let (node, mut rx0) = group.start(config).await;
    let (one, mut rx1) = group.start(group.config(1, 2)).await;
    let (two, _rx2) = group.start(group.config(2, 3)).await;
    let addr = node.local_addr();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(66);
    let stranger = IdentityKey::generate(&mut rng);
    let keys = group.keys.clone();
    let (n0, n3) = (NodeId(0), NodeId(3));

    async fn expect_refused(
        node: &maftia_net::Network,
        reason: RefusalReason,
        attack: impl std::future::Future<Output = ()>,
    ) {
        let before = node.stats().refused(reason);
        within(&format!("{reason}"), secs(10), attack).await;
        wait_until(&format!("{reason} counted"), secs(5), || {
            node.stats().refused(reason) > before
        })
        .await;
    }

    // Unknown key, a known key claiming another id, wrong group, ourselves, wrong target.
    let cases = [
        (
            stranger.clone(),
            n3,
            n0,
            GROUP_TAG,
            RefusalReason::UnknownKey,
        ),
        (
            keys[2].clone(),
            n3,
            n0,
            GROUP_TAG,
            RefusalReason::WrongIdentity,
        ),
        (
            keys[3].clone(),
            n3,
            n0,
            [1u8; 32],
            RefusalReason::WrongGroup,
        ),
        (
            keys[0].clone(),
            n0,
            n0,
            GROUP_TAG,
            RefusalReason::SelfConnection,
        ),
        (
            keys[3].clone(),
            n3,
            NodeId(2),
            GROUP_TAG,
            RefusalReason::WrongTarget,
        ),
    ];
    for (key, claimed, target, tag, reason) in cases {
        expect_refused(&node, reason, async {
            let mut client = RawClient::connect(addr).await;
            assert!(client
                .handshake(&key, claimed, target, tag, 5)
                .await
                .is_err());
        })
        .await;
    }
    // Random bytes.
    expect_refused(&node, RefusalReason::Malformed, async {
        let mut client = RawClient::connect(addr).await;
        let mut garbage = vec![0u8; 600];
        rng.fill_bytes(&mut garbage);
        garbage[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let _ = client.write_raw(&garbage).await;
        client.closed_by_peer().await;
    })
    .await;
    // A well-framed but random first handshake message.
    expect_refused(&node, RefusalReason::Noise, async {
        let mut client = RawClient::connect(addr).await;
        let mut garbage = frame::record_header(20).to_vec();
        garbage.extend_from_slice(&[7u8; 20]);
        let _ = client.write_raw(&garbage).await;
        client.closed_by_peer().await;
    })
    .await;
    // Truncated handshake: half a record, then the connection closes.
    expect_refused(&node, RefusalReason::Closed, async {
        let mut client = RawClient::connect(addr).await;
        let _ = client.write_raw(&[0, 0, 0, 32, 1, 2, 3]).await;
        drop(client);
    })
    .await;
    // Truncated handshake that stalls: the deadline closes it.
    expect_refused(&node, RefusalReason::Timeout, async {
        let mut client = RawClient::connect(addr).await;
        let _ = client.write_raw(&[0, 0, 0, 32, 1, 2, 3]).await;
        client.closed_by_peer().await;
    })
    .await;
    // Slowloris: idle connections fill the handshake slots; one more is refused at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(RawClient::connect(addr).await);
    }
    expect_refused(&node, RefusalReason::TooManyPending, async {
        let mut extra = RawClient::connect(addr).await;
        extra.closed_by_peer().await;
    })
    .await;
    let closed_before = node.stats().refused(RefusalReason::Closed);
    drop(idle);
    // Their handshakes end (peer closed), freeing the slots.
    wait_until("idle handshakes closed", secs(5), || {
        node.stats().refused(RefusalReason::Closed) >= closed_before + 4
    })
    .await;
    // Replay of a recorded handshake: message 3 does not decrypt under a fresh ephemeral key.
    let recorded = {
        let mut client = RawClient::connect(addr).await;
        client
            .handshake(&keys[3], n3, n0, GROUP_TAG, 9)
            .await
            .unwrap();
        let record = client.data_record(1, &payload(n3, 0, 20));
        client.write_raw(&record).await.unwrap();
        let delivered = recv_n(&mut rx0, 1, secs(5)).await;
        assert_eq!(parse(&delivered[0]), (n3, 0));
        client.sent.clone()
    };
    expect_refused(&node, RefusalReason::Noise, async {
        let mut client = RawClient::connect(addr).await;
        let _ = client.write_raw(&recorded).await;
        client.closed_by_peer().await;
    })
    .await;

    // Authenticated misbehaviour by "node 3": each closes the connection and is evidence.
    let violations = || node.stats().peers[&n3].protocol_violations;
    type Attack = Box<dyn Fn(&mut RawClient) -> Vec<u8>>;
    let attacks: Vec<Attack> = vec![
        // A replayed ciphertext record inside the session.
        Box::new(move |c| {
            let record = c.data_record(1, &payload(n3, 0, 20));
            [record.clone(), record].concat()
        }),
        // A record longer than a Noise message.
        Box::new(move |_| frame::record_header(frame::NOISE_MAX_MESSAGE + 1).to_vec()),
        // An application frame over the limit (1 MiB here), announced in its first chunk.
        Box::new(move |c| {
            let mut plaintext = frame::encode_data_header(1, (1 << 20) + 1, 0).to_vec();
            plaintext.extend_from_slice(&[0u8; 100]);
            c.seal(&plaintext)
        }),
        // Garbage inside a valid record.
        Box::new(move |c| c.seal(&[42, 1, 2, 3])),
        // An acknowledgement where only data may come.
        Box::new(move |c| c.seal(&frame::encode_control(false, 5))),
    ];
    for (i, attack) in attacks.iter().enumerate() {
        let before = violations();
        within(&format!("attack {i}"), secs(10), async {
            let mut client = RawClient::connect(addr).await;
            if let Err(e) = client.handshake(&keys[3], n3, n0, GROUP_TAG, 9).await {
                panic!("{e}: {:?}", node.stats());
            }
            let bytes = attack(&mut client);
            let _ = client.write_raw(&bytes).await;
            client.closed_by_peer().await;
        })
        .await;
        wait_until("violation counted", secs(5), || violations() > before).await;
    }
    // A frame number jump (gap) is a violation too; the resumed position survives it.
    let before = violations();
    {
        let mut client = RawClient::connect(addr).await;
        let resume = match client.handshake(&keys[3], n3, n0, GROUP_TAG, 9).await {
            Ok(resume) => resume,
            Err(e) => panic!("{e}: {:?}", node.stats()),
        };
        assert_eq!(
            resume, 2,
            "node 0 delivered frame 1 of incarnation 9 earlier"
        );
        let record = client.data_record(5, &payload(n3, 4, 20));
        client.write_raw(&record).await.unwrap();
        within("gap", secs(5), client.closed_by_peer()).await;
    }
    wait_until("gap counted", secs(5), || violations() > before).await;
    assert!(drain(&mut rx0).is_empty(), "an attack delivered something");

    // The node still serves its honest peers, both ways.
    one.send(&Recipients::One(n0), payload(NodeId(1), 0, 50))
        .unwrap();
    two.send(&Recipients::One(n0), payload(NodeId(2), 0, 50))
        .unwrap();
    let got = recv_n(&mut rx0, 2, secs(10)).await;
    let senders: BTreeSet<NodeId> = got.iter().map(|f| parse(f).0).collect();
    assert_eq!(senders, [NodeId(1), NodeId(2)].into());
    node.send(&Recipients::One(NodeId(1)), payload(n0, 0, 50))
        .unwrap();
    assert_eq!(parse(&recv_n(&mut rx1, 1, secs(10)).await[0]), (n0, 0));
    let stats = node.stats();
    assert_eq!(stats.peers[&NodeId(1)].protocol_violations, 0);
    assert_eq!(stats.peers[&NodeId(2)].protocol_violations, 0);
    node.shutdown().await;
    one.shutdown().await;
    two.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_a_node_of_another_group_or_the_wrong_node_is_refused() {
    // Node 0 believes node 1 is at an address where node 2 (wrong target) listens, and node 2
    // at an address where a node of another group listens.
    let mut group = Group::new(3, 7);
    let mut stranger_group = Group::new(3, 8);
    let mut config = group.config(0, 1);
    config.peers.insert(NodeId(1), group.addrs[2]);
    config.peers.insert(NodeId(2), stranger_group.addrs[2]);
    let (node, _rx) = group.start(config).await;
    let (_two, _rx2) = group.start(group.config(2, 3)).await;
    let mut other = stranger_group.config(2, 4);
    other.group_tag = [9u8; 32];
    let (_other, _rx3) = stranger_group.start(other).await;
    wait_until("both refusals", secs(10), || {
        let stats = node.stats();
        stats.refused(RefusalReason::WrongTarget) > 0
            && stats.refused(RefusalReason::WrongGroup) > 0
    })
    .await;
    let stats = node.stats();
    assert!(!stats.peers[&NodeId(1)].outbound_connected);
    assert!(!stats.peers[&NodeId(2)].outbound_connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_and_bad_configuration_are_clear_errors() {
    let group = Group::new(2, 9);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = group.config(0, 1);
    config.listen = taken.local_addr().unwrap();
    let err = start_err(config.clone()).await;
    let message = err.to_string();
    assert!(matches!(err, NetError::Bind { .. }), "{message}");
    assert!(message.contains("in use"), "{message}");
    // A key that is not ours in the group.
    let mut wrong_key = group.config(0, 1);
    wrong_key.identity = group.keys[1].clone();
    assert!(matches!(start_err(wrong_key).await, NetError::Config(_)));
    // Ourselves as a peer.
    let mut self_peer = group.config(0, 1);
    self_peer.peers.insert(NodeId(0), config.listen);
    assert!(matches!(start_err(self_peer).await, NetError::Config(_)));
    // A receive budget some frame would not fit in.
    let mut small_budget = group.config(0, 1);
    small_budget.limits.incoming_max_bytes = small_budget.limits.max_frame_size - 1;
    assert!(matches!(start_err(small_budget).await, NetError::Config(_)));
}

async fn start_err(config: maftia_net::NetConfig) -> NetError {
    match maftia_net::Network::start(config).await {
        Ok(_) => panic!("started"),
        Err(e) => e,
    }
}
