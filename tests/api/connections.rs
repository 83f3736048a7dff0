//! Connections on both listeners: a slowloris flood (silent sockets,
//! half-sent HTTP requests, half an HTTP/2 preface) is closed within the
//! header timeout, room is made for real clients at the connection cap, and
//! the same server keeps answering health and ingest meanwhile; idle
//! connections are closed after the idle timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pulse::grpc::proto::ingest_service_client::IngestServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use crate::helpers::{TestApp, http_get};
use crate::ingest::{click, message};

const CAP: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_millis(500);
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a connection that sends `send` (maybe nothing) and then waits;
/// resolves to how long after opening the server closed it.
async fn slow_client(addr: SocketAddr, send: &'static [u8]) -> JoinHandle<Duration> {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let opened = Instant::now();
    tokio::spawn(async move {
        if !send.is_empty() {
            let _ = socket.write_all(send).await;
        }
        let mut buf = [0u8; 4096];
        // Whatever the server says (an HTTP/2 SETTINGS frame), the end is
        // when it closes.
        loop {
            match tokio::time::timeout(Duration::from_secs(30), socket.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return opened.elapsed(),
                Ok(Ok(_)) => {}
                Err(_) => return Duration::MAX,
            }
        }
    })
}

/// The slow clients of one wave against both listeners.
async fn wave(app: &TestApp, n: usize) -> Vec<JoinHandle<Duration>> {
    let mut clients = Vec::new();
    for i in 0..n {
        let http_send: &'static [u8] = match i % 3 {
            0 => b"",
            1 => b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
            _ => b"POST /api/v1/metrics HTTP/1.1\r\n",
        };
        let grpc_send: &'static [u8] = match i % 2 {
            0 => b"",
            _ => b"PRI * HTTP/2.0\r\n",
        };
        clients.push(slow_client(app.http_addr, http_send).await);
        clients.push(slow_client(app.grpc_addr, grpc_send).await);
    }
    clients
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowloris_on_both_listeners_is_closed_while_health_and_ingest_still_answer() {
    let app = TestApp::spawn_with(|s| {
        s.connections.grpc_max_connections = CAP;
        s.connections.http_max_connections = CAP;
        s.connections.header_read_timeout = HEADER_TIMEOUT;
        s.connections.idle_timeout = IDLE_TIMEOUT;
    })
    .await;

    // Serving before the flood: nothing is SERVING before the first probe.
    let started = Instant::now();
    while app
        .health()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .map(|r| r.into_inner().status)
        != Some(ServingStatus::Serving as i32)
    {
        assert!(started.elapsed() < Duration::from_secs(10), "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Three times the cap on each listener, then a trickle of new ones for
    // the whole test, as an attacker reconnecting would.
    let mut clients = wave(&app, 3 * CAP).await;
    let flood_app_http = app.http_addr;
    let flood_app_grpc = app.grpc_addr;
    let flood = tokio::spawn(async move {
        let mut more = Vec::new();
        for _ in 0..40 {
            more.push(slow_client(flood_app_http, b"GET / HTTP/1.1\r\n").await);
            more.push(slow_client(flood_app_grpc, b"").await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        more
    });

    // Meanwhile: new clients, new connections, every call answered.
    let mut latencies = Vec::new();
    for round in 0..5 {
        let channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("a new gRPC connection is admitted");
        let started = Instant::now();
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health answers")
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);
        let response = IngestServiceClient::new(channel)
            .ingest_events(tokio_stream::iter(vec![message(
                (0..10).map(|_| click(Uuid::new_v4(), "u")).collect(),
            )]))
            .await
            .unwrap_or_else(|s| panic!("ingest answers in round {round}: {s:?}"))
            .into_inner();
        assert_eq!(response.accepted, 10);
        latencies.push(started.elapsed());
        let (status, _) = http_get(app.http_addr, "/metrics").await;
        assert_eq!(status, 200, "the HTTP listener answers in round {round}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    clients.extend(flood.await.expect("flood task"));

    // Every slow client was closed by the server, within the header
    // timeout of its own arrival (or sooner, evicted to make room).
    let bound = HEADER_TIMEOUT + Duration::from_millis(1500);
    let mut slowest = Duration::ZERO;
    for client in clients {
        let closed_after = client.await.expect("client task");
        assert!(closed_after < bound, "a slow client lived {closed_after:?}");
        slowest = slowest.max(closed_after);
    }

    let (_, text) = http_get(app.http_addr, "/metrics").await;
    for listener in ["grpc", "http"] {
        let open = metric(
            &text,
            &format!("pulse_connections_open{{listener=\"{listener}\"}}"),
        );
        assert!(open <= CAP as f64, "{listener}: {open} open");
        for reason in ["handshake_timeout", "evicted"] {
            let closed = metric(
                &text,
                &format!(
                    "pulse_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
                ),
            );
            assert!(closed > 0.0, "{listener} {reason}: {closed}\n{text}");
        }
        let accepted = metric(
            &text,
            &format!("pulse_connections_accepted_total{{listener=\"{listener}\"}}"),
        );
        assert!(accepted >= (3 * CAP + 40) as f64, "{listener}: {accepted}");
    }
    eprintln!("slowloris: slowest close {slowest:?}; health+ingest per round {latencies:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let app = TestApp::spawn_with(|s| {
        s.connections.header_read_timeout = Duration::from_secs(5);
        s.connections.idle_timeout = IDLE_TIMEOUT;
    })
    .await;
    // HTTP/1.1 keep-alive: one request, then silence.
    let mut socket = TcpStream::connect(app.http_addr).await.expect("connect");
    socket
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", app.http_addr).as_bytes())
        .await
        .expect("write");
    let opened = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = Vec::new();
    let closed_after = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break opened.elapsed(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(elapsed) => panic!("an idle keep-alive connection stayed open 10 s ({elapsed})"),
        }
    };
    assert!(got.starts_with(b"HTTP/1.1 200"), "the request was answered");
    assert!(
        closed_after >= IDLE_TIMEOUT && closed_after < IDLE_TIMEOUT + Duration::from_secs(2),
        "closed after {closed_after:?}"
    );

    // gRPC: a call, then an idle channel; the server closes the connection
    // and the channel reconnects by itself for the next call.
    let channel = Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let request = || HealthCheckRequest {
        service: String::new(),
    };
    health.check(request()).await.expect("first call");
    tokio::time::sleep(IDLE_TIMEOUT + Duration::from_millis(800)).await;
    let (_, text) = http_get(app.http_addr, "/metrics").await;
    let idle_closed = metric(
        &text,
        "pulse_connections_closed_total{listener=\"grpc\",reason=\"idle_timeout\"}",
    );
    assert!(idle_closed >= 1.0, "{text}");
    health
        .check(request())
        .await
        .expect("the channel reconnects after an idle close");
}
