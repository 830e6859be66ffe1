//! Reading and writing whole frames of the wire protocol on a byte stream.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use walletd_core::wire::{decode_frame_body, frame_body_len, Frame, FRAME_HEADER_LEN};

use super::*;

/// Reads whole frames from a byte stream.
pub(super) struct FrameReader<R> {
    inner: R,
    body: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(super) fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            body: Vec::new(),
        }
    }

    /// The next frame. Not cancel safe: a caller that gives up mid-frame must drop the stream.
    pub(super) async fn next(&mut self) -> Result<Frame, NetError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        self.inner.read_exact(&mut header).await?;
        let len = frame_body_len(&header)?;
        self.body.resize(len, 0);
        self.inner.read_exact(&mut self.body).await?;
        Ok(decode_frame_body(&header, &self.body)?)
    }
}

/// Writes `buf` (whole frames) and flushes, within `limit_ms`.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    write: &mut W,
    buf: &[u8],
    limit_ms: u64,
) -> Result<(), NetError> {
    let written = timeout(ms(limit_ms), async {
        write.write_all(buf).await?;
        // The simulator's streams send only on flush; on real sockets it is a no-op.
        write.flush().await
    })
    .await;
    match written {
        Ok(result) => Ok(result?),
        Err(_) => Err(NetError::Timeout),
    }
}
