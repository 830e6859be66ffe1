//! The byte streams under the peer links.
//!
//! The peer protocol needs nothing but ordered, reliable byte streams between nodes: a way to
//! open one to an address, to adopt one the listener accepted, and to split one into a read
//! and a write half that two tasks own. [`PeerIo`] names exactly that. Production uses
//! [`Tcp`], plain sockets with `TCP_NODELAY` split into owned halves without a lock, or, when
//! the cluster file asks for it, [`super::MutualTls`]: the same sockets under mutual TLS.
//!
//! The trait exists for the simulator. It runs this module's links unchanged over madsim's
//! simulated TCP (which is what `tokio::net` is under `--cfg madsim`), and wraps those sockets
//! to break a connection mid-frame and to trace every frame, faults a socket cannot be asked
//! for. Everything above the byte stream (framing, batching, the handshake, map versions,
//! reconnects) is the same code in both.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Opens, adopts and splits the byte streams of a node's peer links.
pub trait PeerIo: Send + Sync + 'static {
    /// A whole connection, as the handshake uses it.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The half a link's reader task owns.
    type ReadHalf: AsyncRead + Unpin + Send + 'static;
    /// The half a link's writer task owns.
    type WriteHalf: AsyncWrite + Unpin + Send + 'static;

    /// Opens a connection to a peer's listener at `address` (`host:port`).
    fn connect(&self, address: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Adopts a connection the peer listener accepted from `peer`. Asynchronous because a
    /// stream may need a handshake of its own first (TLS); it runs within the link's
    /// handshake timeout.
    fn accepted(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Splits an authenticated connection between its reader and its writer.
    fn split(&self, stream: Self::Stream) -> (Self::ReadHalf, Self::WriteHalf);
}

/// Plain TCP: what `wallet node` uses (and, under `--cfg madsim`, madsim's simulated TCP).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp;

/// Owned halves need no lock between the reader and the writer. madsim's stream has no
/// `into_split`, so the simulated build uses tokio's generic (locking) split instead.
#[cfg(not(madsim))]
mod halves {
    pub type Read = tokio::net::tcp::OwnedReadHalf;
    pub type Write = tokio::net::tcp::OwnedWriteHalf;

    pub fn split(stream: tokio::net::TcpStream) -> (Read, Write) {
        stream.into_split()
    }
}

#[cfg(madsim)]
mod halves {
    pub type Read = tokio::io::ReadHalf<tokio::net::TcpStream>;
    pub type Write = tokio::io::WriteHalf<tokio::net::TcpStream>;

    pub fn split(stream: tokio::net::TcpStream) -> (Read, Write) {
        tokio::io::split(stream)
    }
}

impl PeerIo for Tcp {
    type Stream = TcpStream;
    type ReadHalf = halves::Read;
    type WriteHalf = halves::Write;

    async fn connect(&self, address: &str) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(address).await?;
        // Frames are written whole and flushed; Nagle would only hold small ones back.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn accepted(&self, stream: TcpStream, _peer: SocketAddr) -> io::Result<TcpStream> {
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn split(&self, stream: TcpStream) -> (Self::ReadHalf, Self::WriteHalf) {
        halves::split(stream)
    }
}
