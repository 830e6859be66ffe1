//! The handshake of a peer link: HMAC-SHA256 challenge-response over the cluster secret, with
//! nonces from a keyed counter (see the module docs of [`super`] for the exchange).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use walletd_core::model::partition::NodeId;
use walletd_core::wire::{FrameWriter, Message, MAC_LEN, NONCE_LEN};

use super::*;

/// Handshake nonces: HMAC-SHA256 of a counter under a seed key. Unpredictable without the
/// seed and never repeated within a process, which is all a challenge needs.
pub(super) struct NonceSource {
    pub(super) key: [u8; 32],
    pub(super) counter: AtomicU64,
}

impl NonceSource {
    pub(super) fn next(&self) -> [u8; NONCE_LEN] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(b"walletd nonce");
        mac.update(&n.to_le_bytes());
        let digest = mac.finalize().into_bytes();
        digest[..NONCE_LEN].try_into().expect("digest is longer")
    }
}

pub(super) type HmacSha256 = Hmac<Sha256>;

/// Which end of a handshake a MAC speaks for. Distinct labels stop a reflected MAC.
#[derive(Debug, Clone, Copy)]
pub(super) enum Role {
    Connector,
    Acceptor,
}

/// What both ends of a handshake agree on; each MAC covers all of it.
pub(super) struct Transcript {
    pub(super) connector: NodeId,
    pub(super) acceptor: NodeId,
    pub(super) map_version: u64,
    pub(super) map_digest: u64,
    pub(super) connector_nonce: [u8; NONCE_LEN],
    pub(super) acceptor_nonce: [u8; NONCE_LEN],
}

impl Transcript {
    pub(super) fn hmac(&self, secret: &[u8], role: Role) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(match role {
            Role::Connector => b"walletd peer v1 connector",
            Role::Acceptor => b"walletd peer v1 acceptor.",
        });
        mac.update(&self.connector.to_le_bytes());
        mac.update(&self.acceptor.to_le_bytes());
        mac.update(&self.map_version.to_le_bytes());
        mac.update(&self.map_digest.to_le_bytes());
        mac.update(&self.connector_nonce);
        mac.update(&self.acceptor_nonce);
        mac
    }

    pub(super) fn mac(&self, secret: &[u8], role: Role) -> [u8; MAC_LEN] {
        self.hmac(secret, role).finalize().into_bytes().into()
    }

    /// Constant-time check of a MAC the other end sent.
    pub(super) fn verify(&self, secret: &[u8], role: Role, mac: &[u8; MAC_LEN]) -> bool {
        self.hmac(secret, role).verify_slice(mac).is_ok()
    }
}

/// Sends one handshake message in its own frame.
pub(super) async fn send_one<S: AsyncWrite + Unpin>(
    stream: &mut S,
    map_version: u64,
    ctx: &NodeContext,
    message: Message,
) -> Result<(), NetError> {
    let mut buf = Vec::new();
    let mut frame = FrameWriter::new(&mut buf, map_version);
    frame.push(&message);
    frame.finish();
    write_frames(stream, &buf, ctx.config.write_timeout_ms).await
}

/// Reads one handshake frame, which must hold exactly one message. Unbuffered, so nothing
/// past the handshake is read into a buffer that is about to be dropped.
pub(super) async fn receive_one<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Message, NetError> {
    let frame = FrameReader::new(stream).next().await?;
    match <[Message; 1]>::try_from(frame.messages) {
        Ok([message]) => Ok(message),
        Err(messages) => Err(NetError::Protocol(format!(
            "a handshake frame holds one message, not {}",
            messages.len()
        ))),
    }
}

/// The connecting end of the handshake: proves the secret to `remote` and checks its proof.
pub(super) async fn handshake_connector<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &NodeContext,
    remote: NodeId,
) -> Result<(), NetError> {
    // One map for the whole handshake, though a new one may come in while it runs.
    let current = ctx.map();
    let (version, digest) = (current.map.version, current.digest);
    let connector_nonce = ctx.nonces.next();
    let hello = Message::Hello {
        node: ctx.node,
        map_version: version,
        map_digest: digest,
        nonce: connector_nonce,
    };
    send_one(stream, version, ctx, hello).await?;
    let acceptor_nonce = match receive_one(stream).await? {
        Message::Hello {
            node,
            map_version,
            map_digest,
            nonce,
        } if node == remote && map_version == version => {
            check_same_map(version, digest, map_digest)?;
            nonce
        }
        Message::Hello { node, .. } if node != remote => {
            return Err(NetError::Protocol(format!(
                "expected node {remote} at its address, found node {node}"
            )))
        }
        Message::Hello { map_version, .. }
        | Message::StaleMap {
            expected: map_version,
            ..
        } => {
            return Err(NetError::StaleMap {
                expected: version,
                got: map_version,
            })
        }
        other => return Err(NetError::Protocol(format!("expected Hello, got {other:?}"))),
    };
    let transcript = Transcript {
        connector: ctx.node,
        acceptor: remote,
        map_version: version,
        map_digest: digest,
        connector_nonce,
        acceptor_nonce,
    };
    let mac = transcript.mac(&ctx.secret, Role::Connector);
    send_one(stream, version, ctx, Message::Auth { mac }).await?;
    match receive_one(stream).await {
        Ok(Message::Auth { mac }) if transcript.verify(&ctx.secret, Role::Acceptor, &mac) => Ok(()),
        Ok(Message::Auth { .. }) => Err(NetError::Auth(
            "the peer's proof does not match: it holds another cluster secret".into(),
        )),
        Ok(other) => Err(NetError::Protocol(format!("expected Auth, got {other:?}"))),
        Err(NetError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(NetError::Auth(
            "the peer closed the connection: it holds another cluster secret".into(),
        )),
        Err(other) => Err(other),
    }
}

/// The accepting end of the handshake. Returns the authenticated peer's node id.
pub(super) async fn handshake_acceptor<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ctx: &NodeContext,
) -> Result<NodeId, NetError> {
    // One map for the whole handshake, though a new one may come in while it runs.
    let current = ctx.map();
    let (version, digest) = (current.map.version, current.digest);
    let (peer, connector_nonce) = match receive_one(stream).await? {
        Message::Hello { map_version, .. } if map_version != version => {
            ctx.saw_map_version(map_version);
            let stale = Message::StaleMap {
                expected: version,
                got: map_version,
            };
            send_one(stream, version, ctx, stale).await?;
            return Err(NetError::StaleMap {
                expected: version,
                got: map_version,
            });
        }
        Message::Hello {
            node,
            map_digest,
            nonce,
            ..
        } if node != ctx.node && current.map.nodes.contains_key(&node) => {
            if map_digest != digest {
                // The connector learns why from this end's Hello, and closes with the same
                // error; nothing past the Hellos is exchanged.
                let hello = own_hello(ctx, &current, ctx.nonces.next());
                send_one(stream, version, ctx, hello).await?;
                return Err(map_mismatch(version, digest, map_digest));
            }
            (node, nonce)
        }
        Message::Hello { node, .. } => {
            return Err(NetError::Protocol(format!(
                "node {node} is not a peer in the map"
            )))
        }
        other => return Err(NetError::Protocol(format!("expected Hello, got {other:?}"))),
    };
    let acceptor_nonce = ctx.nonces.next();
    let hello = own_hello(ctx, &current, acceptor_nonce);
    send_one(stream, version, ctx, hello).await?;
    let transcript = Transcript {
        connector: peer,
        acceptor: ctx.node,
        map_version: version,
        map_digest: digest,
        connector_nonce,
        acceptor_nonce,
    };
    match receive_one(stream).await? {
        Message::Auth { mac } if transcript.verify(&ctx.secret, Role::Connector, &mac) => {}
        Message::Auth { .. } => {
            return Err(NetError::Auth(format!(
                "node {peer} does not know the cluster secret"
            )))
        }
        other => return Err(NetError::Protocol(format!("expected Auth, got {other:?}"))),
    }
    let mac = transcript.mac(&ctx.secret, Role::Acceptor);
    send_one(stream, version, ctx, Message::Auth { mac }).await?;
    Ok(peer)
}

/// This node's Hello under map `current`, with challenge `nonce`.
fn own_hello(ctx: &NodeContext, current: &CurrentMap, nonce: [u8; NONCE_LEN]) -> Message {
    Message::Hello {
        node: ctx.node,
        map_version: current.map.version,
        map_digest: current.digest,
        nonce,
    }
}

/// Refuses a peer that holds another map under this node's map version.
fn check_same_map(version: u64, ours: u64, theirs: u64) -> Result<(), NetError> {
    if ours == theirs {
        Ok(())
    } else {
        Err(map_mismatch(version, ours, theirs))
    }
}

fn map_mismatch(version: u64, ours: u64, theirs: u64) -> NetError {
    NetError::MapMismatch {
        version,
        ours,
        theirs,
    }
}
