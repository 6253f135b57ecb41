//! The deploy lock held by a running release.

use super::*;

/// The deploy lock held by a running release. A heartbeat renews it; losing it (someone took
/// it, or the store cannot renew it before it expires) is signalled through `lost`, and the
/// release stops and reverts. Dropping the guard, on any path out of the release including a
/// panic, stops the heartbeat and releases the lock.
pub(super) struct LeaseGuard {
    pub(super) p: Arc<Platform>,
    pub(super) owner: String,
    pub(super) heartbeat: tokio::task::JoinHandle<()>,
    pub(super) lost: watch::Receiver<Option<String>>,
}

impl LeaseGuard {
    pub(super) fn hold(p: Arc<Platform>, owner: String, ttl: Duration) -> LeaseGuard {
        let (tx, lost) = watch::channel(None);
        let heartbeat = {
            let p = p.clone();
            let owner = owner.clone();
            tokio::spawn(async move {
                let mut expires = now_ms() + ttl.as_millis() as i64;
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    let next = now_ms() + ttl.as_millis() as i64;
                    let who = owner.clone();
                    let renewed = p
                        .with_store(move |s| s.renew_lock(DEPLOY_LOCK, &who, next))
                        .await;
                    let why = match renewed {
                        Ok(true) => {
                            expires = next;
                            continue;
                        }
                        Ok(false) => {
                            // Released by hand while we run? This daemon runs one release at a
                            // time whatever the lease says, so take it again; only a lease held
                            // by someone else (another daemon on a shared store) means we lost.
                            let (me, who) = (owner.clone(), owner.clone());
                            let retaken = p
                                .with_store(move |s| {
                                    if s.lock(DEPLOY_LOCK)?.is_some() {
                                        return Ok::<_, tcf_store::StoreError>(false);
                                    }
                                    let lease = Lease {
                                        name: DEPLOY_LOCK.into(),
                                        owner: me,
                                        host: hostname(),
                                        pid: std::process::id() as i64,
                                        reason: None,
                                        acquired_ms: now_ms(),
                                        heartbeat_ms: now_ms(),
                                        expires_ms: next,
                                    };
                                    Ok(s.acquire_lock(&lease)? == Acquire::Acquired)
                                })
                                .await;
                            if matches!(retaken, Ok(true)) {
                                expires = next;
                                p.event(
                                    "lock.retaken",
                                    None,
                                    None,
                                    format!("the deploy lock was released by hand while a release runs; {who} holds it again (one release at a time)"),
                                );
                                continue;
                            }
                            "the deploy lock was taken from this release (by another holder, or it expired and was taken over)".to_string()
                        }
                        Err(e) if now_ms() >= expires => {
                            format!("the deploy lock expired: the store could not renew it ({e})")
                        }
                        Err(e) => {
                            tracing::warn!("cannot renew the deploy lock yet: {e}");
                            continue;
                        }
                    };
                    tx.send_replace(Some(why));
                    return;
                }
            })
        };
        LeaseGuard {
            p,
            owner,
            heartbeat,
            lost,
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.heartbeat.abort();
        *lock(&self.p.deploying) = None;
        if let Err(e) = self.p.store.release_lock(DEPLOY_LOCK, Some(&self.owner)) {
            tracing::error!("cannot release the deploy lock: {e}; it expires by itself");
        }
    }
}
