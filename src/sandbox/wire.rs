//! The sandbox's side of the wire: faults that no status or body can express (a connection dropped
//! without an answer, an answer held past the client's patience, a body trickled a byte at a time,
//! a header added), requests held at a path so a test can act while one is in flight, and a count
//! of the requests being served.
//!
//! A vendor's handler decides a fault the way that vendor would answer; when the fault is one of
//! the wire's, it says so with [`mark`], and the middleware ([`layer`]) carries it out around the
//! handler. Nothing here changes an answer unless a test asked for it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

use super::Sandbox;

/// What the middleware does to one answer.
#[derive(Debug, Clone)]
pub(super) enum Wire {
    /// Drop the connection without an answer (with a TCP reset).
    Cut,
    /// Hold the answer this long before sending it.
    Hold(Duration),
    /// Send the status and headers at once, then the body one byte every this long.
    Trickle(Duration),
    /// Add this header to the answer.
    Header(&'static str, String),
}

tokio::task_local! {
    static MARKS: Arc<Mutex<Vec<Wire>>>;
}

/// Asks the middleware to do `wire` to the answer of the request being served. (A handler always
/// runs inside the middleware; outside it, as in unit tests of a handler, the mark is ignored.)
pub(super) fn mark(wire: Wire) {
    let _ = MARKS.try_with(|marks| lock(marks).push(wire));
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Requests a test asked to hold, by path, and the requests being served.
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// Answers to requests for a path are held this long, after the call was carried out.
    pub held: HashMap<String, Duration>,
    /// Requests being served (arrived, not yet answered), by path.
    pub serving: HashMap<String, usize>,
    /// Requests whose answer is being held (a test's hold or a fault's), by path.
    pub holding: HashMap<String, usize>,
}

/// Counts a request in `serving` (or `holding`) while it lasts.
struct Counted {
    sandbox: Sandbox,
    path: String,
    holding: bool,
}

impl Counted {
    fn new(sandbox: &Sandbox, path: &str, holding: bool) -> Counted {
        let mut state = sandbox.lock();
        let counts = if holding {
            &mut state.holds.holding
        } else {
            &mut state.holds.serving
        };
        *counts.entry(path.to_string()).or_default() += 1;
        Counted {
            sandbox: sandbox.clone(),
            path: path.to_string(),
            holding,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut state = self.sandbox.lock();
        let counts = if self.holding {
            &mut state.holds.holding
        } else {
            &mut state.holds.serving
        };
        if let Some(n) = counts.get_mut(&self.path) {
            *n = n.saturating_sub(1);
        }
    }
}

/// The middleware around every route: counts the request, runs the handler with room for its
/// marks, then carries them out (and any hold a test set for the path).
pub(super) async fn layer(
    State(sandbox): State<Sandbox>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let serving = Counted::new(&sandbox, &path, false);
    let marks: Arc<Mutex<Vec<Wire>>> = Arc::default();
    let mut response = MARKS.scope(Arc::clone(&marks), next.run(request)).await;
    let mut hold = sandbox.lock().holds.held.get(&path).copied();
    let marks = std::mem::take(&mut *lock(&marks));
    for wire in marks {
        match wire {
            Wire::Cut => {
                conn.0.cut.store(true, Ordering::SeqCst);
                return response;
            }
            Wire::Hold(d) => hold = Some(hold.map_or(d, |h| h.max(d))),
            Wire::Trickle(d) => *lock(&conn.0.trickle) = Some(d),
            Wire::Header(name, value) => {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(name), value);
                }
            }
        }
    }
    if let Some(hold) = hold {
        let _holding = Counted::new(&sandbox, &path, true);
        drop(serving);
        tokio::time::sleep(hold).await;
    }
    response
}

/// What the middleware may do to a connection.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// Drop it: the next read or write fails, and it closes with a reset.
    cut: AtomicBool,
    /// Trickle what is written after the next header block.
    trickle: Mutex<Option<Duration>>,
}

/// A connection's control, handed to each request on it (axum's connect info).
#[derive(Debug, Clone)]
pub(super) struct Conn(Arc<Control>);

impl Connected<IncomingStream<'_, Listener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Conn(Arc::clone(&stream.io().control))
    }
}

/// The sandbox's listener: TCP on loopback, each connection with its [`Control`].
pub(super) struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return (
                        Stream {
                            tcp,
                            control: Arc::default(),
                            trickling: None,
                            pause: None,
                        },
                        addr,
                    );
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// One connection.
pub(super) struct Stream {
    tcp: TcpStream,
    control: Arc<Control>,
    /// While trickling: one byte every this long.
    trickling: Option<Duration>,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Stream {
    fn cut(&self) -> Option<io::Error> {
        if !self.control.cut.load(Ordering::SeqCst) {
            return None;
        }
        // Closed with a reset, not a polite FIN: the client learns nothing but that it is gone.
        let _ = self.tcp.set_zero_linger();
        Some(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection dropped (injected)",
        ))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.cut() {
            return Poll::Ready(Err(e));
        }
        let this = &mut *self;
        if this.trickling.is_none() {
            if let Some(every) = lock(&this.control.trickle).take() {
                // The head goes at once; the body, a byte at a time.
                let head = buf
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(buf.len(), |at| at + 4);
                this.trickling = Some(every);
                return Pin::new(&mut this.tcp).poll_write(cx, &buf[..head]);
            }
            return Pin::new(&mut this.tcp).poll_write(cx, buf);
        }
        let every = this.trickling.unwrap_or_default();
        let pause = this
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if pause.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.pause = None;
        let one = &buf[..buf.len().min(1)];
        Pin::new(&mut this.tcp).poll_write(cx, one)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // One buffer at a time, so a trickle sees the head and the body apart.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
