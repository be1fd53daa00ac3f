//! The pruning job: with `--history-retention` or `--room-history-max`,
//! old messages go once a minute, in batches of a few hundred with a pause
//! between them, so the writer, which runs each batch, is never held for
//! long and sends go on meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::model::now_ms;
use crate::store::{Retention, Store};

/// How often the job looks for messages to let go.
const EVERY: Duration = Duration::from_secs(60);
/// Messages one batch deletes at most.
const BATCH: u32 = 500;
/// The pause between two batches, for the writer's other work.
const PAUSE: Duration = Duration::from_millis(20);

/// Starts the job when a rule is set; it ends when `stop` turns true.
pub(super) fn start(
    store: Arc<dyn Store>,
    keep_for: Option<Duration>,
    keep_per_room: Option<u32>,
    mut stop: watch::Receiver<bool>,
) {
    if keep_for.is_none() && keep_per_room.is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let rule = Retention {
                before_ms: keep_for.map(|d| now_ms() - d.as_millis() as i64),
                keep_per_room,
            };
            let gone = prune(&*store, rule, &stop).await;
            if gone > 0 {
                tracing::info!(messages = gone, "history past retention deleted");
            }
        }
    });
}

/// Deletes what `rule` lets go, a batch at a time; returns how many went.
async fn prune(store: &dyn Store, rule: Retention, stop: &watch::Receiver<bool>) -> u64 {
    let mut gone = 0;
    while !*stop.borrow() {
        match store.prune(rule, BATCH).await {
            Ok(batch) => {
                gone += batch;
                if batch < u64::from(BATCH) {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not delete old history; trying again later");
                break;
            }
        }
        tokio::time::sleep(PAUSE).await;
    }
    gone
}
