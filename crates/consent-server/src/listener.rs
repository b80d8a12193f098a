//! Accepting connections, with the limits a public port needs:
//!
//! - at most `limits.max_connections` open at once: past it the server stops accepting
//!   (new connections wait in the kernel's backlog) until one closes;
//! - a new connection must send its first 24 bytes (the HTTP/2 preface, or a TLS hello)
//!   within `limits.handshake_timeout_secs`, or it is closed: idle or half-open sockets
//!   cannot pile up (established HTTP/2 connections are then watched by keepalive pings);
//! - `TCP_NODELAY` on every connection: a response written in two segments must not wait
//!   for the client's delayed ACK (about 40 ms);
//! - when `accept` fails (out of file descriptors, say) the loop backs off, 10 ms doubling
//!   to 1 s, instead of spinning on the error.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client must send before the handshake deadline: the HTTP/2 client preface.
const HANDSHAKE_BYTES: usize = 24;
/// First and longest pause after a failed `accept`.
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How connections are accepted.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes.
    pub handshake_timeout: Duration,
}

/// An accepted connection: the socket, the slot it holds (freed when it closes) and the
/// deadline for its first bytes.
pub struct Connection {
    stream: TcpStream,
    handshake: Option<(Pin<Box<Sleep>>, usize)>,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.stream.peer_addr().ok())
            .field("in_handshake", &self.handshake.is_some())
            .finish()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some((deadline, received)) = &mut this.handshake {
            *received += buf.filled().len() - before;
            if *received >= HANDSHAKE_BYTES {
                this.handshake = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent no handshake within limits.handshake_timeout_secs",
                )));
            }
        }
        result
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

/// The next pause after a failed accept.
fn next_backoff(current: Option<Duration>) -> Duration {
    current.map_or(BACKOFF_START, |d| (d * 2).min(BACKOFF_MAX))
}

struct AcceptState {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    backoff: Option<Duration>,
}

/// The connections `listener` accepts, within `limits`. The stream never ends and never
/// yields an error: accept failures are logged and retried after a pause.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<Connection>> {
    let state = AcceptState {
        listener,
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        limits,
        backoff: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            // Closed only if dropped, which cannot happen while `state` holds it.
            let slot = Arc::clone(&state.slots).acquire_owned().await.ok()?;
            match state.listener.accept().await {
                Ok((stream, _)) => {
                    if state.backoff.take().is_some() {
                        tracing::info!("accepting connections again");
                    }
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                    let deadline = Box::pin(tokio::time::sleep(state.limits.handshake_timeout));
                    let connection = Connection {
                        stream,
                        handshake: Some((deadline, 0)),
                        _slot: slot,
                    };
                    return Some((Ok(connection), state));
                }
                Err(error) => {
                    drop(slot);
                    let pause = next_backoff(state.backoff);
                    if state.backoff.is_none() {
                        tracing::warn!(%error, "accept failed; backing off until it succeeds");
                    }
                    state.backoff = Some(pause);
                    tokio::time::sleep(pause).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted socket has Nagle's algorithm off: a response written in two segments
    /// must not wait for the client's delayed ACK (about 40 ms).
    #[tokio::test]
    async fn accepted_connections_have_nodelay() -> io::Result<()> {
        use futures::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepted = incoming(
            listener,
            ConnectionLimits {
                max_connections: 4,
                handshake_timeout: Duration::from_secs(60),
            },
        );
        tokio::pin!(accepted);
        let _client = TcpStream::connect(addr).await?;
        let connection = accepted
            .next()
            .await
            .ok_or_else(|| io::Error::other("no connection"))??;
        assert!(connection.stream.nodelay()?);
        Ok(())
    }

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let mut pause = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let next = next_backoff(pause);
            seen.push(next.as_millis());
            pause = Some(next);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }
}
