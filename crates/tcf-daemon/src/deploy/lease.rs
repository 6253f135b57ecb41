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
                        Ok(false) => "the deploy lock was taken from this release (released with `lock release --force`, or expired and taken over)".to_string(),
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
