//! Requests to other nodes and their answers: a direct message waits for
//! its home node's `direct_ack`, an operator's act on an account for its
//! home node's `moderated`, a scatter-gather query (`who`, `stats`) for one
//! answer from every reachable node. Each waits in a table keyed
//! by request id, which the reply finds it by; this node answers other
//! nodes' requests here too.

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::frame::{self, Answer, Query, RemoteError, Routed, RoutedBody};
use super::{Mesh, clean, lock};
use crate::core::{
    CoreError, ErrorKind, Gathered, Moderated, Moderation, ModerationRequest, RemoteDirect, Sent,
    Stats, UserInfo,
};

/// How long a scatter-gather query waits for answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node that dropped out of the mesh is still named among the
/// nodes that did not answer a query.
const LOST_MEMORY: Duration = Duration::from_secs(300);
/// How long a direct message waits for its home node to commit it, and an
/// operator's act for its home node to do it.
const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests this node may have waiting on other nodes at once.
const MAX_PENDING: usize = 10_000;

/// A request waiting on another node; dropping it forgets the request, so
/// a caller that gives up leaves nothing behind.
struct Pending {
    mesh: Mesh,
    req: u64,
    /// Waits on one node (else a query).
    one_node: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.one_node {
            lock(&self.mesh.inner.awaiting).remove(&self.req);
        } else {
            lock(&self.mesh.inner.queries).remove(&self.req);
        }
    }
}

impl Mesh {
    /// Handles a routed message addressed to this node; returns the work it
    /// leaves (a store, an answer) for the link to run under its bound.
    pub(super) fn arrived(&self, src: String, body: RoutedBody) -> Option<BoxFuture<'static, ()>> {
        match body {
            RoutedBody::Direct {
                req,
                from,
                to,
                body,
                client_msg_id,
                sent_ms,
            } => {
                let stored = self.inner.core.deliver_remote_direct(
                    &from,
                    &src,
                    &to,
                    &body,
                    client_msg_id.as_deref(),
                    sent_ms,
                );
                Some(Box::pin(self.clone().ack_direct(src, req, stored)))
            }
            RoutedBody::DirectAck { req, .. } | RoutedBody::Moderated { req, .. } => {
                self.answered(&src, req, body);
                None
            }
            RoutedBody::Moderate {
                req,
                action,
                name,
                by,
                reason,
            } => Some(Box::pin(
                self.clone()
                    .moderate_here(src, req, action, name, by, reason),
            )),
            RoutedBody::Query { req, query } => {
                Some(Box::pin(self.clone().answer_query(src, req, query)))
            }
            RoutedBody::Answer { req, answer } => {
                if let Some(tx) = lock(&self.inner.queries).get(&req) {
                    let _ = tx.try_send((src, answer));
                }
                None
            }
            RoutedBody::Deliver { .. }
            | RoutedBody::Member { .. }
            | RoutedBody::Deleted { .. }
            | RoutedBody::Ended { .. }
            | RoutedBody::Removed { .. } => {
                self.sibling_committed(&src, body);
                None
            }
        }
    }

    /// Does another node's operator's act on an account homed here, and
    /// tells that node what came of it.
    async fn moderate_here(
        self,
        src: String,
        req: u64,
        action: String,
        name: String,
        by: String,
        reason: String,
    ) {
        let done = match Moderation::from_name(&action) {
            Some(action) => {
                let request = ModerationRequest {
                    action,
                    name,
                    by,
                    reason,
                };
                self.inner.core.moderate_for_node(&src, request).await
            }
            None => Err(CoreError::invalid(
                "action",
                "it is not kick, suspend or restore",
            )),
        };
        let answer = match done {
            Ok(done) => RoutedBody::Moderated {
                req,
                done: Some(frame::Done {
                    name: done.name,
                    sessions: done.sessions_ended,
                    changed: done.changed,
                }),
                error: None,
            },
            Err(e) => RoutedBody::Moderated {
                req,
                done: None,
                error: Some(remote_error(&e)),
            },
        };
        self.route_to(&src, answer);
    }

    /// Tells `src` whether its direct message `req` was stored here.
    async fn ack_direct(
        self,
        src: String,
        req: u64,
        stored: impl Future<Output = Result<Sent, CoreError>>,
    ) {
        let ack = match stored.await {
            Ok(sent) => RoutedBody::DirectAck {
                req,
                stored: Some(frame::Stored {
                    id: sent.id,
                    sent_ms: sent.sent_at_ms,
                    duplicate: sent.duplicate,
                }),
                error: None,
            },
            Err(e) => RoutedBody::DirectAck {
                req,
                stored: None,
                error: Some(remote_error(&e)),
            },
        };
        self.route_to(&src, ack);
    }

    /// Hands a `direct_ack` or a `moderated` to the request waiting for it.
    fn answered(&self, src: &str, req: u64, answer: RoutedBody) {
        let mut awaiting = lock(&self.inner.awaiting);
        // Only the node the request went to may answer it.
        if awaiting.get(&req).is_some_and(|(node, _)| node == src)
            && let Some((_, waiter)) = awaiting.remove(&req)
        {
            let _ = waiter.send(answer);
        }
    }

    /// Answers another node's query; a node that cannot read its own
    /// figures does not answer.
    async fn answer_query(self, src: String, req: u64, query: Query) {
        let answer = match query {
            Query::Who => Answer::Who {
                online: self.inner.core.local_online(),
            },
            Query::Stats => match self.inner.core.stats().await {
                Ok(s) => Answer::Stats {
                    messages: s.messages,
                    accounts: s.accounts,
                    sessions: s.sessions_online,
                    rooms: s.rooms,
                    uptime_secs: s.uptime_secs,
                },
                Err(_) => return,
            },
        };
        self.route_to(&src, RoutedBody::Answer { req, answer });
    }

    /// Routes a direct message to its recipient's home node; resolves with
    /// that node's answer. Registered and routed before this returns, so
    /// sends made one after another leave in that order.
    pub(super) fn route_direct(
        &self,
        message: RemoteDirect,
    ) -> impl Future<Output = Result<Sent, CoreError>> + Send + use<> {
        let node = message.to.node.clone();
        let req = self.next_id();
        let (tx, rx) = oneshot::channel();
        let queued = self.send_direct_now(req, tx, message);
        // Dropped with the future, so a caller that gives up leaves nothing.
        let pending = Pending {
            mesh: self.clone(),
            req,
            one_node: true,
        };
        async move {
            queued?;
            let answer = tokio::time::timeout(DIRECT_TIMEOUT, rx).await;
            drop(pending);
            match answer {
                Ok(Ok(ack)) => direct_outcome(node, ack),
                Err(_) | Ok(Err(_)) => Err(not_confirmed(&node)),
            }
        }
    }

    /// Registers direct message `req` as waiting on `tx` and routes it.
    fn send_direct_now(
        &self,
        req: u64,
        tx: oneshot::Sender<RoutedBody>,
        message: RemoteDirect,
    ) -> Result<(), CoreError> {
        let name = message.to.name.clone();
        let body = RoutedBody::Direct {
            req,
            from: message.from,
            to: message.to.name,
            body: message.body,
            client_msg_id: message.client_msg_id,
            sent_ms: message.sent_ms,
        };
        let node = message.to.node;
        self.ask_one(&node, req, tx, body).map_err(|e| {
            e.unwrap_or_else(|| {
                CoreError::Unreachable(format!(
                    "{name}'s home node {node} cannot be reached now: try again later"
                ))
            })
        })
    }

    /// Registers request `req` as waiting on `tx` for `node`'s answer and
    /// routes it there. Errs with `None` when there is no route to `node`.
    fn ask_one(
        &self,
        node: &str,
        req: u64,
        tx: oneshot::Sender<RoutedBody>,
        body: RoutedBody,
    ) -> Result<(), Option<CoreError>> {
        {
            let mut awaiting = lock(&self.inner.awaiting);
            if awaiting.len() >= MAX_PENDING {
                return Err(Some(CoreError::Limit(
                    "too many requests are waiting on other nodes: try again shortly".into(),
                )));
            }
            awaiting.insert(req, (node.to_owned(), tx));
        }
        let routed = Routed {
            src: self.inner.me.clone(),
            dst: node.to_owned(),
            hops: frame::MAX_HOPS,
            body,
        };
        if self.route(routed) {
            return Ok(());
        }
        lock(&self.inner.awaiting).remove(&req);
        Err(None)
    }

    /// Has `node` do an operator's act on one of its accounts; resolves
    /// with what it did.
    pub(super) fn route_moderation(
        &self,
        node: String,
        request: ModerationRequest,
    ) -> impl Future<Output = Result<Moderated, CoreError>> + Send + use<> {
        let req = self.next_id();
        let (tx, rx) = oneshot::channel();
        let action = request.action;
        let body = RoutedBody::Moderate {
            req,
            action: action.name().to_owned(),
            name: request.name,
            by: request.by,
            reason: request.reason,
        };
        let queued = self.ask_one(&node, req, tx, body);
        let pending = Pending {
            mesh: self.clone(),
            req,
            one_node: true,
        };
        async move {
            queued.map_err(|e| {
                e.unwrap_or_else(|| {
                    CoreError::Unreachable(format!(
                        "node {node} cannot be reached now: try again later"
                    ))
                })
            })?;
            let answer = tokio::time::timeout(DIRECT_TIMEOUT, rx).await;
            drop(pending);
            match answer {
                Ok(Ok(RoutedBody::Moderated {
                    done: Some(done), ..
                })) => Ok(Moderated {
                    name: clean(&done.name),
                    node,
                    sessions_ended: done.sessions,
                    changed: done.changed,
                }),
                Ok(Ok(RoutedBody::Moderated { error: Some(e), .. })) => Err(CoreError::FromNode {
                    node,
                    kind: ErrorKind::from_code(&e.code),
                    message: clean(&e.message),
                }),
                _ => Err(CoreError::Unreachable(format!(
                    "node {node} did not answer in time: the {} may or may not be done",
                    action.name()
                ))),
            }
        }
    }

    /// Asks every reachable node and waits for their answers, or the timeout.
    async fn gather(&self, query: Query) -> (Vec<(String, Answer)>, Vec<String>) {
        let targets = self.state().reachable();
        if targets.is_empty() {
            return (Vec::new(), self.state().recently_lost(LOST_MEMORY));
        }
        let req = self.next_id();
        let (tx, mut rx) = mpsc::channel(targets.len());
        {
            let mut queries = lock(&self.inner.queries);
            if queries.len() >= MAX_PENDING {
                return (Vec::new(), targets);
            }
            queries.insert(req, tx);
        }
        // However this ends, cancelled callers included, the entry goes.
        let _pending = Pending {
            mesh: self.clone(),
            req,
            one_node: false,
        };
        for node in &targets {
            let query = query.clone();
            self.route_to(node, RoutedBody::Query { req, query });
        }
        let mut answers: Vec<(String, Answer)> = Vec::new();
        let deadline = tokio::time::Instant::now() + self.inner.query_timeout;
        while answers.len() < targets.len() {
            let Ok(Some((node, answer))) = tokio::time::timeout_at(deadline, rx.recv()).await
            else {
                break;
            };
            let fits = matches!(
                (&query, &answer),
                (Query::Who, Answer::Who { .. }) | (Query::Stats, Answer::Stats { .. })
            );
            if fits && targets.contains(&node) && !answers.iter().any(|(n, _)| *n == node) {
                answers.push((node, answer));
            }
        }
        let mut missing: Vec<String> = targets
            .into_iter()
            .filter(|t| !answers.iter().any(|(n, _)| n == t))
            .collect();
        // A node that dropped out a moment ago did not answer either: its
        // users are missing from the answer, and the asker should know.
        missing.extend(self.state().recently_lost(LOST_MEMORY));
        missing.sort();
        missing.dedup();
        (answers, missing)
    }

    /// Who is online on every other reachable node.
    pub(super) async fn ask_who(self) -> Gathered<UserInfo> {
        let (answers, missing) = self.gather(Query::Who).await;
        let mut users = Vec::new();
        for (node, answer) in answers {
            if let Answer::Who { online } = answer {
                // Names reach users' screens: only well-formed ones.
                let valid = online
                    .into_iter()
                    .filter(|n| crate::core::names::account_key(n).is_ok());
                users.extend(valid.map(|name| UserInfo {
                    name,
                    online: true,
                    node: node.clone(),
                }));
            }
        }
        Gathered {
            answers: users,
            missing,
        }
    }

    /// Every other reachable node's own figures.
    pub(super) async fn ask_stats(self) -> Gathered<Stats> {
        let (answers, missing) = self.gather(Query::Stats).await;
        let stats = answers
            .into_iter()
            .filter_map(|(node, answer)| match answer {
                Answer::Stats {
                    messages,
                    accounts,
                    sessions,
                    rooms,
                    uptime_secs,
                } => Some(Stats {
                    messages,
                    accounts,
                    sessions_online: sessions,
                    rooms,
                    uptime_secs,
                    node,
                }),
                Answer::Who { .. } => None,
            })
            .collect();
        Gathered {
            answers: stats,
            missing,
        }
    }
}

/// What a `direct_ack` from `node` tells the sender.
fn direct_outcome(node: String, ack: RoutedBody) -> Result<Sent, CoreError> {
    match ack {
        RoutedBody::DirectAck {
            stored: Some(s), ..
        } => Ok(Sent {
            id: s.id,
            sent_at_ms: s.sent_ms,
            duplicate: s.duplicate,
        }),
        RoutedBody::DirectAck { error: Some(e), .. } => Err(CoreError::FromNode {
            node,
            kind: ErrorKind::from_code(&e.code),
            message: clean(&e.message),
        }),
        _ => Err(not_confirmed(&node)),
    }
}

/// An error as another node is told it.
fn remote_error(e: &CoreError) -> RemoteError {
    RemoteError {
        code: e.kind().code().to_owned(),
        message: e.to_string(),
    }
}

fn not_confirmed(node: &str) -> CoreError {
    CoreError::Unreachable(format!(
        "node {node} did not confirm the message in time: it may or may not be stored"
    ))
}
