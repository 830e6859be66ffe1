//! The gateway of a server node: what the HTTP handlers of `wallet node` do with a request,
//! without HTTP (axum cannot run under madsim). It runs each request on its own task of the
//! node, through the node's `engine::Client`: served by a local partition, or forwarded over
//! a peer link to the node that owns it. Its tasks die with the node, as a server's handlers
//! die with its process, and the client then hears nothing.

use tokio::sync::mpsc;
use walletd_runtime::engine::Client;

use crate::network::{Answer, Call, Request};

/// Requests a gateway holds before the network drops more (far above the load).
pub const GATEWAY_CAPACITY: usize = 65_536;

/// Serves the calls of one node incarnation until the network stops sending them. Each
/// request waits for its answer however long that takes (the partition answers, or fails
/// it when it stops or its link breaks); a client that gave up meanwhile ignores it.
pub async fn serve(client: Client, mut calls: mpsc::Receiver<Call>) {
    while let Some((request, reply)) = calls.recv().await {
        let client = client.clone();
        tokio::spawn(async move {
            if let Some(answer) = run(&client, request).await {
                let _ = reply.send(answer);
            }
        });
    }
}

/// Runs one request; `None` when its partition is unavailable (down or unreachable).
async fn run(client: &Client, request: Request) -> Option<Answer> {
    match request {
        Request::Command {
            command,
            wait,
            group: false,
        } => client
            .execute(command, wait)
            .await
            .ok()
            .map(Answer::Command),
        Request::Command {
            command,
            wait,
            group: true,
        } => {
            let mut answers = client.execute_many([command], wait).await;
            answers.pop()?.ok().map(Answer::Command)
        }
        Request::Query { partition, query } => {
            client.query(partition, query).await.ok().map(Answer::Query)
        }
    }
}
