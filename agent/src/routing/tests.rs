//! Routers as they run on nodes: real swarms over TCP on loopback, one
//! loopback IP per node (127.0.0.2, .3, …) and a registry port of its own,
//! so a wrong address in a result cannot pass for a right one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use tempfile::TempDir;

use super::*;

const DIGEST: &str = "sha256:2f3c4b1d7e0a9c8b6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c";
const TAG: &str = "docker.io/library/nginx:1.27";

/// A node: its router and the data directory that holds its identity.
struct Node {
    router: Router,
    _data_dir: TempDir,
}

impl Node {
    async fn start(ip: u8, tune: impl FnOnce(&mut RouterConfig)) -> Node {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(ip, &data_dir);
        tune(&mut config);
        let (router, _) = Router::start(config).await.expect("router starts");
        Node {
            router,
            _data_dir: data_dir,
        }
    }

    /// Where others dial it, with its peer id.
    async fn addr(&self) -> Multiaddr {
        let addrs = self.router.listen_addrs().await;
        addrs[0].clone().with(Protocol::P2p(self.router.peer_id()))
    }

    fn provider(&self, ip: u8) -> Provider {
        Provider {
            peer_id: self.router.peer_id(),
            registry: registry(ip),
        }
    }

    async fn stats(&self) -> RouterStats {
        self.router.stats().await.expect("router runs")
    }

    async fn find(&self, key: &str, limit: usize) -> Vec<Provider> {
        self.router
            .find_providers(key, limit, Duration::from_secs(5))
            .await
            .expect("router runs")
    }
}

fn config(ip: u8, data_dir: &TempDir) -> RouterConfig {
    let listen = format!("/ip4/127.0.0.{ip}/tcp/0")
        .parse()
        .expect("multiaddr");
    RouterConfig {
        lookup_cache_ttl: Duration::from_millis(100),
        ..RouterConfig::new(
            listen,
            Some(data_dir.path().to_path_buf()),
            registry(ip).port(),
        )
    }
}

/// Node 127.0.0.N runs its registry on port 5000 + N.
fn registry(ip: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, ip], 5000 + u16::from(ip)))
}

/// Joins every node to the first and waits until each knows all others.
async fn join(nodes: &[&Node]) {
    let first = nodes[0].addr().await;
    for node in &nodes[1..] {
        let peer = node.router.add_peer(first.clone()).await.expect("joins");
        assert_eq!(peer, nodes[0].router.peer_id());
        node.router.bootstrap().await.expect("bootstraps");
    }
    for node in nodes {
        eventually("every node knows every other", async || {
            node.router.routing_table_size().await == nodes.len() - 1
        })
        .await;
    }
}

async fn announced(node: &Node, count: u64) {
    eventually("the announcements are out", async || {
        node.stats().await.announcements_finished >= count
    })
    .await;
}

/// Waits up to 10 s for `check`; panics naming `what` otherwise.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    crate::testing::eventually(what, Duration::from_secs(10), async || Ok(check().await))
        .await
        .unwrap_or_else(|error| panic!("{error}"));
}

#[tokio::test]
async fn every_node_finds_the_ones_that_advertised_with_their_registry() {
    let a = Node::start(2, |_| {}).await;
    let b = Node::start(3, |_| {}).await;
    let c = Node::start(4, |_| {}).await;
    join(&[&a, &b, &c]).await;

    a.router
        .sync(vec![DIGEST.into(), TAG.into()])
        .await
        .expect("advertised");
    c.router.sync(vec![TAG.into()]).await.expect("advertised");
    announced(&a, 2).await;
    announced(&c, 1).await;

    assert_eq!(b.find(DIGEST, 1).await, vec![a.provider(2)]);
    assert_eq!(c.find(DIGEST, 1).await, vec![a.provider(2)]);
    let tagged: HashSet<Provider> = b.find(TAG, 0).await.into_iter().collect();
    assert_eq!(tagged, HashSet::from([a.provider(2), c.provider(4)]));
    assert_eq!(a.find(TAG, 0).await, vec![c.provider(4)], "never itself");
    assert_eq!(a.find(DIGEST, 0).await, vec![], "never itself");
    assert_eq!(b.find("sha256:nobody-has-this", 0).await, vec![]);
    assert_eq!(a.stats().await.provided_keys, 2);
}

/// A node starts with content, as on a node that already has images: it
/// advertises before bootstrap has found anyone. The announcement must wait
/// for a peer rather than reach nobody and leave the key unfindable until
/// its republish slice, up to 15 minutes later.
#[tokio::test]
async fn keys_advertised_before_any_peer_are_announced_once_one_joins() {
    let a = Node::start(20, |_| {}).await;
    a.router
        .sync(vec![DIGEST.into()])
        .await
        .expect("advertised");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        a.stats().await.announcements_started,
        0,
        "nobody to announce to"
    );
    let b = Node::start(21, |_| {}).await;
    join(&[&a, &b]).await;
    announced(&a, 1).await;
    assert_eq!(b.find(DIGEST, 1).await, vec![a.provider(20)]);
}

#[tokio::test]
async fn a_withdrawn_key_is_not_found_once_the_records_expire() {
    let short = |config: &mut RouterConfig| {
        config.record_ttl = Duration::from_millis(1500);
        config.republish_interval = Duration::from_millis(1000);
    };
    let a = Node::start(2, short).await;
    let b = Node::start(3, short).await;
    let c = Node::start(4, short).await;
    join(&[&a, &b, &c]).await;
    a.router
        .sync(vec![DIGEST.into(), TAG.into()])
        .await
        .expect("advertised");
    announced(&a, 2).await;
    assert_eq!(b.find(DIGEST, 1).await, vec![a.provider(2)]);

    let synced = a.router.sync(vec![TAG.into()]).await.expect("withdrawn");
    assert_eq!(synced.withdrawn, 1);
    let withdrawn = Instant::now();

    eventually("nobody finds the withdrawn key", async || {
        b.find(DIGEST, 1).await.is_empty() && c.find(DIGEST, 1).await.is_empty()
    })
    .await;
    assert!(
        withdrawn.elapsed() < Duration::from_secs(3),
        "within the TTL and cache"
    );
    assert_eq!(
        b.find(TAG, 1).await,
        vec![a.provider(2)],
        "the other key stays"
    );
    assert_eq!(a.stats().await.provided_keys, 1);
}

/// A node on a thread and runtime of its own, joined to `peers`, that hangs
/// when told: its connections stay open but it answers nothing, so a query
/// that asks it waits the full request timeout (10 s).
struct HungNode {
    hang: tokio::sync::oneshot::Sender<tokio::sync::oneshot::Sender<()>>,
    /// Dropped, lets the node go.
    release: std::sync::mpsc::Sender<()>,
}

impl HungNode {
    async fn join(ip: u8, peers: Vec<Multiaddr>) -> HungNode {
        let (joined_tx, joined) = tokio::sync::oneshot::channel();
        let (hang, hang_rx) = tokio::sync::oneshot::channel::<tokio::sync::oneshot::Sender<()>>();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let node = Node::start(ip, |_| {}).await;
                for peer in peers {
                    node.router.add_peer(peer).await.expect("joins");
                }
                let _ = joined_tx.send(());
                let Ok(hung) = hang_rx.await else { return };
                let _ = hung.send(());
                // Blocks the runtime, and with it the node's event loop.
                let _ = wait.recv();
            });
        });
        joined.await.expect("the node joined");
        HungNode { hang, release }
    }

    async fn hang(self) -> std::sync::mpsc::Sender<()> {
        let (hung, is_hung) = tokio::sync::oneshot::channel();
        let _ = self.hang.send(hung);
        is_hung.await.expect("the node hangs");
        self.release
    }
}

#[tokio::test]
async fn a_lookup_returns_once_it_has_enough_and_at_its_timeout_otherwise() {
    let a = Node::start(2, |_| {}).await;
    let b = Node::start(3, |_| {}).await;
    let c = Node::start(4, |_| {}).await;
    join(&[&a, &b, &c]).await;
    a.router
        .sync(vec![DIGEST.into()])
        .await
        .expect("advertised");
    c.router
        .sync(vec![DIGEST.into()])
        .await
        .expect("advertised");
    announced(&a, 1).await;
    announced(&c, 1).await;

    let e = HungNode::join(5, vec![a.addr().await, b.addr().await]).await;
    eventually("b knows the node about to hang", async || {
        b.router.routing_table_size().await == 3
    })
    .await;
    let release = e.hang().await;

    let started = Instant::now();
    let providers = b
        .router
        .find_providers(DIGEST, 1, Duration::from_secs(8))
        .await
        .expect("router runs");
    let early = started.elapsed();
    assert_eq!(providers.len(), 1);
    assert!(early < Duration::from_secs(2), "took {early:?}");
    assert_eq!(b.stats().await.lookups_finished_early, 1);

    // Asking for every provider waits for the hung node, until the
    // timeout, and then answers with the two found meanwhile.
    let started = Instant::now();
    let providers = b
        .router
        .find_providers(DIGEST, 0, Duration::from_secs(1))
        .await
        .expect("router runs");
    let waited = started.elapsed();
    let found: HashSet<Provider> = providers.into_iter().collect();
    assert_eq!(found, HashSet::from([a.provider(2), c.provider(4)]));
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&waited),
        "took {waited:?}"
    );
    drop(release);
}

#[tokio::test]
async fn concurrent_lookups_of_a_key_share_one_query() {
    let a = Node::start(2, |_| {}).await;
    let b = Node::start(3, |config| config.lookup_cache_ttl = Duration::ZERO).await;
    join(&[&a, &b]).await;
    a.router
        .sync(vec![DIGEST.into()])
        .await
        .expect("advertised");
    announced(&a, 1).await;

    let lookups = (0..8).map(|_| b.find(DIGEST, 0));
    let results = futures::future::join_all(lookups).await;

    assert!(
        results.iter().all(|r| r == &vec![a.provider(2)]),
        "{results:?}"
    );
    let stats = b.stats().await;
    assert_eq!(
        (
            stats.lookups_started,
            stats.lookups_joined,
            stats.lookups_cached
        ),
        (1, 7, 0)
    );

    // With a cache, a finished lookup answers the next ones for its TTL.
    let c = Node::start(4, |config| config.lookup_cache_ttl = Duration::from_secs(5)).await;
    c.router.add_peer(a.addr().await).await.expect("joins");
    assert_eq!(c.find(DIGEST, 1).await, vec![a.provider(2)]);
    assert_eq!(c.find(DIGEST, 1).await, vec![a.provider(2)]);
    let stats = c.stats().await;
    assert_eq!((stats.lookups_started, stats.lookups_cached), (1, 1));
}

#[tokio::test]
async fn keys_are_renewed_a_few_at_a_time_across_the_interval() {
    let a = Node::start(2, |config| {
        config.record_ttl = Duration::from_millis(900);
        config.republish_interval = Duration::from_millis(600);
    })
    .await;
    let b = Node::start(3, |_| {}).await;
    join(&[&a, &b]).await;
    let keys: Vec<String> = (0..10).map(|i| format!("sha256:{i:064x}")).collect();
    a.router.sync(keys.clone()).await.expect("advertised");

    // Ten first announcements, then each key renewed at least once.
    announced(&a, 20).await;

    let stats = a.stats().await;
    assert_eq!(stats.largest_republish_batch, 1, "{stats:?}");
    assert!(stats.republish_batches >= 10, "{stats:?}");
    assert_eq!(b.find(&keys[9], 1).await, vec![a.provider(2)]);
}

#[tokio::test]
async fn a_restarted_node_keeps_its_peer_id_and_a_stopped_one_says_so() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let (first, handle) = Router::start(config(2, &data_dir)).await.expect("starts");
    let peer_id = first.peer_id();
    let clone = first.clone();
    first.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("event loop ends")
        .expect("event loop did not panic");
    assert!(clone.listen_addrs().await.is_empty());
    assert!(matches!(
        clone
            .find_providers(DIGEST, 1, Duration::from_secs(1))
            .await,
        Err(RoutingError::Stopped)
    ));

    let (second, _) = Router::start(config(2, &data_dir)).await.expect("restarts");
    assert_eq!(second.peer_id(), peer_id);
}

#[tokio::test]
async fn only_nodes_with_the_same_pre_shared_key_connect() {
    let ours = PreSharedKey::new([1; 32]);
    let theirs = PreSharedKey::new([2; 32]);
    let with = |psk: Option<PreSharedKey>| {
        move |config: &mut RouterConfig| {
            config.psk = psk;
            config.connect_timeout = Duration::from_secs(1);
        }
    };
    let a = Node::start(2, with(Some(ours))).await;
    let b = Node::start(3, with(Some(ours))).await;
    let c = Node::start(4, with(Some(theirs))).await;
    let d = Node::start(5, with(None)).await;
    join(&[&a, &b]).await;
    a.router
        .sync(vec![DIGEST.into()])
        .await
        .expect("advertised");

    let (a_addr, b_addr) = (a.addr().await, b.addr().await);
    let attempts = [(&c, &a_addr), (&c, &b_addr), (&d, &a_addr), (&d, &b_addr)]
        .map(|(outsider, target)| outsider.router.add_peer(target.clone()));
    for result in futures::future::join_all(attempts).await {
        let error = result.expect_err("refused");
        assert!(matches!(error, RoutingError::Dial { .. }), "{error}");
    }
    for outsider in [&c, &d] {
        assert_eq!(outsider.router.routing_table_size().await, 0);
        assert_eq!(outsider.find(DIGEST, 0).await, vec![]);
    }
    assert_eq!(a.router.routing_table_size().await, 1);
    assert_eq!(b.find(DIGEST, 1).await, vec![a.provider(2)]);
}

#[tokio::test]
async fn a_full_store_refuses_what_does_not_fit_and_says_why() {
    let a = Node::start(2, |config| config.store_limits.max_provided_keys = 2).await;

    let error = a
        .router
        .sync(vec![
            "sha256:a".into(),
            "sha256:b".into(),
            "sha256:c".into(),
        ])
        .await
        .expect_err("refused");

    assert!(
        matches!(&error, RoutingError::StoreFull { key, limit: 2, not_stored: 1 } if key == "sha256:c"),
        "{error:?}"
    );
    assert!(error.to_string().contains("provides 2 keys"), "{error}");
    let synced = a
        .router
        .sync(vec!["sha256:a".into(), "sha256:b".into()])
        .await
        .expect("already advertised");
    assert_eq!(synced.advertised, 0, "both were stored before");
}

/// Spegel's chart may set `DATA_DIR=""`: no data directory, so the node
/// gets a new identity at every start and writes nothing.
#[tokio::test]
async fn without_a_data_dir_each_start_is_a_new_peer() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut ephemeral = config(2, &data_dir);
    ephemeral.data_dir = None;
    let (first, handle) = Router::start(ephemeral.clone()).await.expect("starts");
    let first_id = first.peer_id();
    first.shutdown().await;
    handle.await.expect("stopped");
    let (second, _) = Router::start(ephemeral).await.expect("restarts");
    assert_ne!(second.peer_id(), first_id);
    assert_eq!(
        std::fs::read_dir(data_dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[tokio::test]
async fn start_refuses_what_cannot_work() {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut slow = config(2, &data_dir);
    slow.republish_interval = slow.record_ttl;
    assert!(matches!(
        Router::start(slow).await,
        Err(RoutingError::RepublishTooSlow { .. })
    ));

    let mut udp = config(2, &data_dir);
    udp.listen = "/ip4/127.0.0.2/udp/0".parse().expect("multiaddr");
    let error = Router::start(udp).await.expect_err("refused");
    assert!(error.to_string().contains("/tcp/"), "{error}");

    let taken = std::net::TcpListener::bind("127.0.0.2:0").expect("bind");
    let mut busy = config(2, &data_dir);
    busy.listen = format!(
        "/ip4/127.0.0.2/tcp/{}",
        taken.local_addr().expect("addr").port()
    )
    .parse()
    .expect("multiaddr");
    assert!(matches!(
        Router::start(busy).await,
        Err(RoutingError::Listen { .. })
    ));
}

/// Five nodes miss one blob at the same moment. Exactly one of them leads
/// and every other names it; a follower waiting for the leader's download
/// finds the leader once it advertises the blob, and a wait for a blob
/// nobody advertises ends empty at its bound.
#[tokio::test]
async fn nodes_that_miss_a_blob_together_agree_on_one_leader() {
    let mut nodes = Vec::new();
    for ip in 60..65 {
        nodes.push(Node::start(ip, |_| {}).await);
    }
    join(&nodes.iter().collect::<Vec<_>>()).await;

    let herds = futures::future::join_all(nodes.iter().map(|n| n.router.join_herd(DIGEST))).await;
    let herds: Vec<Herd> = herds.into_iter().map(|h| h.expect("router runs")).collect();
    let leaders: Vec<usize> = (0..nodes.len())
        .filter(|i| herds[*i].leader.is_none())
        .collect();
    assert_eq!(leaders.len(), 1, "{herds:?}");
    let leader = leaders[0];
    let provider = |i: usize| nodes[i].provider(60 + u8::try_from(i).unwrap());
    for (i, herd) in herds.iter().enumerate() {
        let mut others = herd.others.clone();
        others.sort_by_key(|p| p.registry);
        let expected: Vec<Provider> = (0..nodes.len()).filter(|o| *o != i).map(provider).collect();
        assert_eq!(others, expected, "node {i} sees every other wanter");
        if i != leader {
            assert_eq!(herd.leader, Some(provider(leader)), "node {i}");
        }
    }

    let follower = &nodes[(leader + 1) % nodes.len()];
    let started = Instant::now();
    let (found, ()) = tokio::join!(
        follower
            .router
            .wait_for_providers(DIGEST, 1, started + Duration::from_secs(5)),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            nodes[leader]
                .router
                .sync(vec![DIGEST.into()])
                .await
                .expect("advertised");
        }
    );
    assert_eq!(found.expect("router runs"), vec![provider(leader)]);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let started = Instant::now();
    let none = follower
        .router
        .wait_for_providers(
            "sha256:nobody-has-this",
            1,
            started + Duration::from_millis(400),
        )
        .await
        .expect("router runs");
    assert_eq!(none, vec![]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "{took:?}"
    );
}
