//! Pending actions and handoff tickets as MCP resources, so that a client subscribed to one
//! learns of its decision (`notifications/resources/updated`) instead of polling.
//!
//! A change commits a `NOTIFY agentcrm_resources` with the resource's URI; every serving
//! process listens and tells the subscribers it holds, whichever process made the change.
//! Subscribers are sessions (`resources/subscribe`, protocols with `initialize`) or open
//! `subscriptions/listen` requests (2026-07-28).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::ResourceUpdatedNotificationParam;
use rmcp::service::SubscriptionSink;
use rmcp::{Peer, RoleServer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::access::Principal;
use crate::error::ToolError;

pub const CHANNEL: &str = "agentcrm_resources";
const ACTIONS: &str = "agentcrm://pending-actions/";
const HANDOFFS: &str = "agentcrm://handoffs/";

pub fn action_uri(id: Uuid) -> String {
    format!("{ACTIONS}{id}")
}

pub fn handoff_uri(id: Uuid) -> String {
    format!("{HANDOFFS}{id}")
}

#[derive(Clone)]
enum Subscriber {
    /// A session, by its id (`stdio` for the one session of a stdio process).
    Session(String, Peer<RoleServer>),
    Listen(SubscriptionSink),
}

/// URI -> (registration key, subscriber).
type ByUri = HashMap<String, Vec<(u64, Subscriber)>>;

/// The subscribers this process holds, by URI.
#[derive(Clone, Default)]
pub struct Subscriptions {
    by_uri: Arc<Mutex<ByUri>>,
    next: Arc<std::sync::atomic::AtomicU64>,
    /// Set once this process LISTENs for changes: a subscription taken before would miss
    /// the changes committed meanwhile.
    listening: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Removes a `subscriptions/listen` subscriber when its request ends.
pub struct Registration {
    subscriptions: Subscriptions,
    keys: Vec<(String, u64)>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        for (uri, key) in &self.keys {
            self.subscriptions.remove(uri, |k, _| k == *key);
        }
    }
}

impl Subscriptions {
    fn add(&self, uri: &str, subscriber: Subscriber) -> u64 {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut map) = self.by_uri.lock() {
            map.entry(uri.to_owned())
                .or_default()
                .push((key, subscriber));
        }
        key
    }

    fn remove(&self, uri: &str, matches: impl Fn(u64, &Subscriber) -> bool) {
        if let Ok(mut map) = self.by_uri.lock()
            && let Some(list) = map.get_mut(uri)
        {
            list.retain(|(k, s)| !matches(*k, s));
            if list.is_empty() {
                map.remove(uri);
            }
        }
    }

    /// A session's `resources/subscribe`.
    pub fn subscribe_session(&self, uri: &str, session: &str, peer: Peer<RoleServer>) {
        self.unsubscribe_session(uri, session);
        self.add(uri, Subscriber::Session(session.to_owned(), peer));
    }

    pub fn unsubscribe_session(&self, uri: &str, session: &str) {
        self.remove(uri, |_, s| match s {
            Subscriber::Session(id, _) => id == session,
            Subscriber::Listen(_) => false,
        });
    }

    /// A `subscriptions/listen` request's URIs, until the registration is dropped.
    pub fn subscribe_listen(&self, uris: &[String], sink: &SubscriptionSink) -> Registration {
        let keys = uris
            .iter()
            .map(|uri| (uri.clone(), self.add(uri, Subscriber::Listen(sink.clone()))))
            .collect();
        Registration {
            subscriptions: self.clone(),
            keys,
        }
    }

    /// Tells every subscriber of `uri` held here; forgets those whose connection is gone.
    pub async fn updated(&self, uri: &str) {
        let subscribers: Vec<(u64, Subscriber)> = match self.by_uri.lock() {
            Ok(map) => map.get(uri).cloned().unwrap_or_default(),
            Err(_) => return,
        };
        let mut gone = Vec::new();
        for (key, subscriber) in subscribers {
            let sent = match &subscriber {
                Subscriber::Session(_, peer) => {
                    if peer.is_transport_closed() {
                        gone.push(key);
                        continue;
                    }
                    peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                        .await
                        .map_err(|e| e.to_string())
                }
                Subscriber::Listen(sink) => sink
                    .notify_resource_updated(uri)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(error) = sent {
                tracing::debug!(%error, uri, "resource update not delivered; subscriber dropped");
                gone.push(key);
            }
        }
        if !gone.is_empty() {
            self.remove(uri, |k, _| gone.contains(&k));
        }
    }

    /// Waits (up to `limit`) until this process listens for changes, so that a client that
    /// subscribes as soon as it connects misses none; says so if it does not come.
    pub async fn ready(&self, limit: Duration) {
        let mut listening = self.listening.subscribe();
        if tokio::time::timeout(limit, listening.wait_for(|up| *up))
            .await
            .is_err()
        {
            tracing::warn!(
                "resource updates: not listening yet; subscriptions may miss changes until it is"
            );
        }
    }

    /// Listens for changes committed by any process and tells local subscribers.
    pub fn start(&self, pool: PgPool, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let subscriptions = self.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    listener = crate::store::listen(&pool, CHANNEL) => match listener {
                        Some(listener) => listener,
                        None => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            continue;
                        }
                    },
                };
                subscriptions.listening.send_replace(true);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        notification = listener.recv() => match notification {
                            Ok(n) => subscriptions.updated(n.payload()).await,
                            Err(error) => {
                                tracing::warn!(%error, "resource updates: LISTEN connection lost");
                                break;
                            }
                        },
                    }
                }
            }
        })
    }
}

fn has_handoff(principal: &Principal) -> bool {
    principal
        .scopes
        .contains(crate::access::Scopes::parse(&["handoff"]).unwrap_or_default())
}

/// What `resources/list` shows: the caller's open pending actions and tickets (agents:
/// their own), newest first, at most 100 of each.
pub async fn open_items(
    pool: &PgPool,
    principal: &Principal,
) -> Result<Vec<rmcp::model::Resource>, ToolError> {
    if !has_handoff(principal) {
        return Ok(Vec::new());
    }
    // Agents: only what they asked for.
    let agent = principal.is_agent().then_some(principal.id).flatten();
    let items: Vec<(bool, Uuid, String, String)> = sqlx::query_as(
        "(SELECT true, id, 'Held: ' || tool, summary FROM pending_actions
          WHERE tenant_id = $1 AND state IN ('pending', 'escalated', 'approved')
            AND ($2::uuid IS NULL OR agent_id = $2)
          ORDER BY created_at DESC LIMIT 100)
         UNION ALL
         (SELECT false, id, 'Handoff (' || priority || ')', reason FROM handoffs
          WHERE tenant_id = $1 AND state IN ('pending', 'escalated')
            AND ($2::uuid IS NULL OR requested_by_id = $2)
          ORDER BY created_at DESC LIMIT 100)",
    )
    .bind(principal.tenant_id)
    .bind(agent)
    .fetch_all(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    let resources = items
        .into_iter()
        .map(|(is_action, id, title, description)| {
            let (uri, name) = if is_action {
                (action_uri(id), format!("pending-action-{id}"))
            } else {
                (handoff_uri(id), format!("handoff-{id}"))
            };
            rmcp::model::Resource::new(uri, name)
                .with_title(title)
                .with_description(description)
                .with_mime_type("application/json")
        })
        .collect();
    Ok(resources)
}
