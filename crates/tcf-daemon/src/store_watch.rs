//! The state store under watch: a `state.db` deleted or replaced while the daemon runs is
//! noticed within seconds, said loudly (log, event, `status`), and written again from what the
//! daemon still has open, so the next crash loses nothing that mattered.

use crate::platform::{lock, Platform};
use std::sync::Arc;
use std::time::Duration;
use tcf_store::FileState;

/// How often the store's file is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

pub async fn run(p: Arc<Platform>) {
    let mut shutdown = p.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let state = p.with_store(|s| s.file_state()).await;
        if state == FileState::Intact {
            continue;
        }
        let what = match state {
            FileState::Missing => "was deleted",
            _ => "was replaced by another file",
        };
        let path = p.store.path().display().to_string();
        tracing::error!("the state store {path} {what} while the daemon runs; writing it again from the open copy");
        let rewritten = p.with_store(|s| s.rewrite()).await;
        let warning = match rewritten {
            Ok(()) => {
                p.event(
                    "store.rewritten",
                    None,
                    None,
                    format!("the state store {path} {what}; wrote it again from the daemon's open copy (releases, history, instances, locks kept)"),
                );
                format!("the state store {what} and was written again from the daemon's open copy; check who touched {path}")
            }
            Err(e) => {
                tracing::error!("cannot write the state store again: {e}");
                format!("the state store {what} and could not be written again ({e}); releases are not being recorded")
            }
        };
        lock(&p.warnings).push(warning);
    }
}
