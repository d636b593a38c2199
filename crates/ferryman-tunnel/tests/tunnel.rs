//! The tunnel in one process, over real sockets and real TLS: a gateway
//! taking carriers on a loopback port, agents dialling it, and streams
//! opened through them to origins on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferryman_http::upstream::{Conn, Connect, Connecting};
use ferryman_testkit::{eventually, within};
use ferryman_tls::CertificateAuthority;
use ferryman_tunnel::config::AgentToken;
use ferryman_tunnel::wire::{Network, Refusal};
use ferryman_tunnel::{Agent, AgentConfig, Gateway, OpenError, TunnelConfig, Via};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "office-token-0123456789";
const LIMIT: Duration = Duration::from_secs(20);

/// The agents' way to the gateway: straight there.
struct Straight;

impl Connect for Straight {
    fn name(&self) -> &str {
        "direct"
    }

    fn pool_key(&self) -> u64 {
        0
    }

    fn connect<'a>(&'a self, host: &'a str, port: u16, _: Instant) -> Connecting<'a> {
        Box::pin(async move {
            let stream = TcpStream::connect((host, port)).await.map_err(|source| {
                ferryman_http::UpstreamError::Connect {
                    addr: format!("{host}:{port}"),
                    source,
                }
            })?;
            Ok(Conn::Tcp(stream))
        })
    }
}

struct Setup {
    gateway: Arc<Gateway>,
    addr: SocketAddr,
    ca: std::path::PathBuf,
    stopping: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn gateway() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::open(dir.path(), None, 100).unwrap());
    let config = TunnelConfig {
        agents: vec![AgentToken {
            token: TOKEN.into(),
            groups: vec!["office".into()],
        }],
        ..TunnelConfig::default()
    };
    let ca_path = ca.cert_path().to_path_buf();
    let gateway = Arc::new(Gateway::new(&config, ca).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopping = CancellationToken::new();
    let (serving, stop) = (gateway.clone(), stopping.clone());
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let (gateway, stop) = (serving.clone(), stop.clone());
            tokio::spawn(async move { gateway.serve_carrier(stream, peer, stop).await });
        }
    });
    Setup {
        gateway,
        addr,
        ca: ca_path,
        stopping,
        _dir: dir,
    }
}

fn agent_config(setup: &Setup, id: &str, allow: &[&str]) -> AgentConfig {
    AgentConfig {
        gateway: format!("wss://{}", setup.addr),
        token: TOKEN.into(),
        group: "office".into(),
        id: Some(id.into()),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        gateway_ca: Some(setup.ca.clone()),
        carriers: 1,
        ..AgentConfig::default()
    }
}

/// Starts an agent; it runs until the token is cancelled.
fn start(config: AgentConfig) -> CancellationToken {
    let tls = ferryman_tls::gateway_client_config(config.gateway_ca.as_deref(), None).unwrap();
    let agent = Agent::new(config, Arc::new(Straight), tls).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(agent.run(stop.clone()));
    stop
}

/// Waits until the registry lists agents with these ids (and only them).
async fn connected(setup: &Setup, ids: &[&str]) {
    let registry = setup.gateway.registry().clone();
    let mut wanted: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    wanted.sort();
    eventually(LIMIT, &format!("agents {wanted:?} connected"), || {
        let mut listed: Vec<String> = registry.snapshot().into_iter().map(|a| a.id).collect();
        listed.sort();
        listed == wanted
    })
    .await;
}

fn office() -> Via {
    Via::Group("office".into())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// An origin that echoes what it reads, and counts connections.
async fn echo_origin(addr: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (local, accepted)
}

#[tokio::test]
async fn a_stream_reaches_an_origin_behind_the_agent_and_says_where() {
    let setup = gateway().await;
    let _agent = start(agent_config(&setup, "a1", &["127.0.0.1"]));
    connected(&setup, &["a1"]).await;
    let (origin, _) = echo_origin("127.0.0.1:0").await;
    let mut stream = setup
        .gateway
        .open(&office(), "127.0.0.1", origin.port(), Network::Tcp, soon())
        .await
        .unwrap();
    assert_eq!(stream.agent(), "a1");
    assert_eq!(stream.peer(), Some(origin.to_string().as_str()));
    stream.write_all(b"over the tunnel").await.unwrap();
    let mut back = [0u8; 15];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"over the tunnel");
    let snapshot = setup.gateway.registry().snapshot();
    assert_eq!(snapshot[0].open_streams, 1);
    drop(stream);
    eventually(LIMIT, "the stream is counted closed", || {
        setup.gateway.registry().snapshot()[0].open_streams == 0
    })
    .await;
}

#[tokio::test]
async fn a_denied_destination_is_refused_before_any_connection_attempt() {
    let setup = gateway().await;
    // Loopback is the agent's own: refused unless allowed explicitly.
    let _agent = start(agent_config(&setup, "a1", &[]));
    connected(&setup, &["a1"]).await;
    let (origin, accepted) = echo_origin("127.0.0.1:0").await;
    let refused = setup
        .gateway
        .open(&office(), "127.0.0.1", origin.port(), Network::Tcp, soon())
        .await
        .err()
        .unwrap();
    match refused {
        OpenError::Refused {
            refusal: Refusal::Denied,
            reason,
            ..
        } => assert!(
            reason.contains("refused unless allowed explicitly"),
            "{reason}"
        ),
        other => panic!("expected a denial, got {other}"),
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    // A closed port is told apart from a denial.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let _allowed = start(agent_config(&setup, "a2", &["127.0.0.1"]));
    connected(&setup, &["a1", "a2"]).await;
    let refused = setup
        .gateway
        .open(
            &Via::Agent("a2".into()),
            "127.0.0.1",
            port,
            Network::Tcp,
            soon(),
        )
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            refused,
            OpenError::Refused {
                refusal: Refusal::Refused,
                ..
            }
        ),
        "{refused}"
    );
}

#[tokio::test]
async fn a_name_with_an_allowed_and_a_denied_address_is_dialled_only_at_the_allowed_one() {
    let setup = gateway().await;
    let (allowed, allowed_hits) = echo_origin("127.0.0.1:0").await;
    // The same port on another loopback address, which the list refuses.
    let (_, denied_hits) = echo_origin(&format!("127.0.0.2:{}", allowed.port())).await;
    let config = agent_config(&setup, "a1", &["127.0.0.1"]);
    let tls = ferryman_tls::gateway_client_config(config.gateway_ca.as_deref(), None).unwrap();
    let agent = Agent::new(config, Arc::new(Straight), tls)
        .unwrap()
        .resolving_with(Arc::new(|_, port, _| {
            // The denied address first: Happy Eyeballs would try it first.
            Box::pin(async move {
                Ok(vec![
                    SocketAddr::from(([127, 0, 0, 2], port)),
                    SocketAddr::from(([127, 0, 0, 1], port)),
                ])
            })
        }));
    let stop = CancellationToken::new();
    tokio::spawn(agent.run(stop.clone()));
    connected(&setup, &["a1"]).await;
    let mut stream = setup
        .gateway
        .open(
            &office(),
            "mixed.corp.internal",
            allowed.port(),
            Network::Tcp,
            soon(),
        )
        .await
        .unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut back = [0u8; 1];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(stream.peer(), Some(allowed.to_string().as_str()));
    assert_eq!(allowed_hits.load(Ordering::SeqCst), 1);
    assert_eq!(denied_hits.load(Ordering::SeqCst), 0);
    stop.cancel();
}

#[tokio::test]
async fn a_stalled_reader_holds_back_only_its_own_stream() {
    let setup = gateway().await;
    let _agent = start(agent_config(&setup, "a1", &["127.0.0.1"]));
    connected(&setup, &["a1"]).await;
    // An origin that writes 100 MiB to whoever connects, counting what
    // each connection took.
    const SIZE: usize = 100 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let taken: Arc<std::sync::Mutex<Vec<Arc<AtomicUsize>>>> = Arc::default();
    let counts = taken.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let written = Arc::new(AtomicUsize::new(0));
            counts.lock().unwrap().push(written.clone());
            tokio::spawn(async move {
                let chunk = vec![7u8; 1 << 16];
                for _ in 0..SIZE / chunk.len() {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                    written.fetch_add(chunk.len(), Ordering::SeqCst);
                }
            });
        }
    });
    let via = office();
    let open = || {
        setup
            .gateway
            .open(&via, "127.0.0.1", origin.port(), Network::Tcp, soon())
    };
    // Never read: its window fills, and the agent stops reading its origin.
    let stalled = open().await.unwrap();
    let mut moving = open().await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    within(LIMIT * 3, "100 MiB past a stalled stream", async {
        while got < SIZE {
            let n = moving.read(&mut buf).await.unwrap();
            assert!(n > 0, "ended after {got} bytes");
            got += n;
        }
    })
    .await;
    assert_eq!(got, SIZE);
    // What the stalled stream took from its origin is its window and the
    // sockets' buffers, not everything: nobody buffered without bound.
    let stalled_took = taken.lock().unwrap()[0].load(Ordering::SeqCst);
    assert!(
        stalled_took < 24 << 20,
        "the stalled stream took {stalled_took} bytes"
    );
    drop(stalled);
}

#[tokio::test]
async fn half_close_carries_the_answer_after_the_request_ended() {
    let setup = gateway().await;
    let _agent = start(agent_config(&setup, "a1", &["127.0.0.1"]));
    connected(&setup, &["a1"]).await;
    // An origin that reads to the end, then answers how much it read.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        stream
            .write_all(format!("read {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
    });
    let mut stream = setup
        .gateway
        .open(&office(), "127.0.0.1", origin.port(), Network::Tcp, soon())
        .await
        .unwrap();
    stream.write_all(&[1u8; 300_000]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    within(
        LIMIT,
        "the answer after EOF",
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap();
    assert_eq!(answer, "read 300000 bytes");
}

#[tokio::test]
async fn streams_go_to_the_least_busy_agent_and_around_a_dead_one() {
    let setup = gateway().await;
    let first = start(agent_config(&setup, "a1", &["127.0.0.1"]));
    let _second = start(agent_config(&setup, "a2", &["127.0.0.1"]));
    connected(&setup, &["a1", "a2"]).await;
    let (origin, _) = echo_origin("127.0.0.1:0").await;
    let via = office();
    let open = || {
        setup
            .gateway
            .open(&via, "127.0.0.1", origin.port(), Network::Tcp, soon())
    };
    let one = open().await.unwrap();
    let two = open().await.unwrap();
    assert_ne!(
        one.agent(),
        two.agent(),
        "the second stream goes to the idle agent"
    );
    drop((one, two));
    first.cancel();
    connected(&setup, &["a2"]).await;
    for _ in 0..10 {
        assert_eq!(open().await.unwrap().agent(), "a2");
    }
}

#[tokio::test]
async fn a_new_session_replaces_the_old_and_the_old_never_evicts_it() {
    let setup = gateway().await;
    let old = start(agent_config(&setup, "same", &["127.0.0.1"]));
    connected(&setup, &["same"]).await;
    let first_session = setup.gateway.registry().snapshot()[0].session.clone();
    // The same agent started again (a new process: a new session).
    tokio::time::sleep(Duration::from_millis(2)).await;
    let _new = start(agent_config(&setup, "same", &["127.0.0.1"]));
    eventually(LIMIT, "the new session takes over", || {
        let agents = setup.gateway.registry().snapshot();
        agents.len() == 1 && agents[0].session != first_session && agents[0].carriers == 1
    })
    .await;
    let second_session = setup.gateway.registry().snapshot()[0].session.clone();
    // The old process tries again; it is refused, and the new one stays.
    let before = setup.gateway.carriers_refused();
    eventually(LIMIT, "the old session is refused", || {
        setup.gateway.carriers_refused() > before
    })
    .await;
    let agents = setup.gateway.registry().snapshot();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].session, second_session);
    old.cancel();
}

#[tokio::test]
async fn opening_and_dropping_streams_from_many_tasks_at_once_leaves_nothing_behind() {
    let setup = gateway().await;
    let _agent = start(agent_config(&setup, "a1", &["127.0.0.1"]));
    connected(&setup, &["a1"]).await;
    let (origin, _) = echo_origin("127.0.0.1:0").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200usize {
        let gateway = setup.gateway.clone();
        tasks.spawn(async move {
            for j in 0..10usize {
                let Ok(mut stream) = gateway
                    .open(&office(), "127.0.0.1", origin.port(), Network::Tcp, soon())
                    .await
                else {
                    continue;
                };
                // Dropped at every stage: unopened, mid-write, mid-read, done.
                match (i + j) % 4 {
                    0 => {}
                    1 => {
                        let _ = stream.write_all(&[0u8; 100_000]).await;
                    }
                    2 => {
                        let _ = stream.write_all(b"ping").await;
                        let mut b = [0u8; 2];
                        let _ = stream.read_exact(&mut b).await;
                    }
                    _ => {
                        let _ = stream.write_all(b"ping").await;
                        let _ = stream.shutdown().await;
                        let mut rest = Vec::new();
                        let _ = stream.read_to_end(&mut rest).await;
                    }
                }
            }
        });
    }
    within(LIMIT * 3, "every task done", async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await;
    eventually(LIMIT, "no stream counted open", || {
        setup.gateway.registry().snapshot()[0].open_streams == 0
    })
    .await;
    assert_eq!(setup.gateway.registry().snapshot()[0].streams_opened, 2000);
    setup.stopping.cancel();
}
