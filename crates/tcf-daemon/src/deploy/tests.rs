//! The release engine's corner cases on the fake runtime (see `testkit`): reverts after each
//! strategy, failures mid-rolling, a later service failing, a lost lease, a store that refuses
//! the final write.

use super::*;
use crate::testkit::TestPlatform;
use tcf_config::Strategy;

fn message(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Failed(m) | Outcome::Reverted(m) | Outcome::LockHeld(m) | Outcome::Invalid(m) => {
            m.clone()
        }
        other => format!("{other:?}"),
    }
}

/// Exactly these instances run, one copy each.
fn assert_live(t: &TestPlatform, ids: &[&str]) {
    let live = t.runtime.live();
    let want: BTreeMap<String, u32> = ids.iter().map(|i| (i.to_string(), 1)).collect();
    assert_eq!(live, want, "live instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_rolling_deploy_leaves_every_old_instance_serving() {
    let t = TestPlatform::start(&[("gateway", 2)], "").await;
    let (outcome, _) = t
        .deploy(Strategy::Rolling, &[("gateway", "v2-sick-after")])
        .await;
    assert!(
        matches!(outcome, Outcome::Reverted(_)),
        "{}",
        message(&outcome)
    );
    let svc = &t.p.services["gateway"];
    assert_eq!(t.serving("gateway"), ["v1", "v1"]);
    assert!(
        *svc.healthy.borrow(),
        "the service has instances in its pool"
    );
    assert_live(&t, &["gateway-blue-1", "gateway-blue-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_failing_in_its_second_batch_restarts_and_leaks_nothing() {
    let t = TestPlatform::start(&[("gateway", 2)], "").await;
    let before = t.runtime.starts();
    let (outcome, lines) = t.deploy(Strategy::Rolling, &[("gateway", "v2-bad2")]).await;
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "{}",
        message(&outcome)
    );
    // The first batch went through: one old instance was out of the pool when it failed.
    assert!(lines.iter().any(|l| l.step == "deploy.replaced"));
    assert_eq!(t.serving("gateway"), ["v1", "v1"]);
    // The old instances were put back, not started again next to their forgotten selves.
    assert_eq!(
        t.runtime.starts(),
        before + 2,
        "only the two new instances started"
    );
    assert_live(&t, &["gateway-blue-1", "gateway-blue-2"]);
    assert!(t.p.services["gateway"].colour("green").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_blue_green_and_canary_go_back_to_the_old_colour() {
    let t = TestPlatform::start(&[("api", 2)], "step_interval = \"300ms\"\n").await;
    let (outcome, _) = t
        .deploy(Strategy::BlueGreen, &[("api", "v2-sick-after")])
        .await;
    assert!(
        matches!(outcome, Outcome::Reverted(_)),
        "{}",
        message(&outcome)
    );
    assert_eq!(t.serving("api"), ["v1", "v1"]);
    assert_live(&t, &["api-blue-1", "api-blue-2"]);
    let (outcome, _) = t.deploy(Strategy::Canary, &[("api", "v3-bad2")]).await;
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "{}",
        message(&outcome)
    );
    assert_eq!(t.serving("api"), ["v1", "v1"]);
    assert_live(&t, &["api-blue-1", "api-blue-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_service_failing_reverts_the_earlier_ones() {
    let t = TestPlatform::start(&[("a", 1), ("b", 1)], "").await;
    let (outcome, _) = t
        .deploy(Strategy::Rolling, &[("a", "v2"), ("b", "v2-unhealthy")])
        .await;
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "{}",
        message(&outcome)
    );
    assert_eq!(t.serving("a"), ["v1"]);
    assert_eq!(t.serving("b"), ["v1"]);
    assert_live(&t, &["a-blue-1", "b-blue-1"]);
    let history = t.p.store.releases(10).unwrap();
    assert_eq!(history[0].status, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_loses_its_lease_stops_and_reverts() {
    let t = TestPlatform::start(&[("api", 1)], "").await;
    let p = t.p.clone();
    // Once the new version serves, someone forces the lock away and takes it.
    let thief = tokio::spawn(async move {
        let svc = p.services["api"].clone();
        while svc.serving_version() != "v2" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // In one statement, as another daemon on a shared store would after a forced release.
        p.store
            .execute_batch_for_tests(
                "UPDATE locks SET owner = 'someone else', host = 'elsewhere', expires_ms = expires_ms + 60000",
            )
            .unwrap();
    });
    let (outcome, _) = t.deploy(Strategy::BlueGreen, &[("api", "v2")]).await;
    thief.await.unwrap();
    let msg = message(&outcome);
    assert!(matches!(outcome, Outcome::Failed(_)), "{msg}");
    assert!(msg.contains("deploy lock was taken"), "{msg}");
    assert_eq!(t.serving("api"), ["v1"]);
    // The release let go of nothing that was not its own.
    let held = t.p.store.lock(DEPLOY_LOCK).unwrap().unwrap();
    assert_eq!(held.owner, "someone else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_the_store_cannot_record_is_reverted() {
    let t = TestPlatform::start(&[("api", 1)], "").await;
    // Fault injection on the real store: the final write of any release fails.
    t.p.store
        .execute_batch_for_tests(
            "CREATE TRIGGER refuse_active BEFORE UPDATE OF status ON releases
             WHEN NEW.status = 'active' BEGIN SELECT RAISE(ABORT, 'injected write failure'); END;",
        )
        .unwrap();
    let (outcome, lines) = t.deploy(Strategy::BlueGreen, &[("api", "v2")]).await;
    let msg = message(&outcome);
    assert!(matches!(outcome, Outcome::Failed(_)), "{msg}");
    assert!(msg.contains("cannot record release"), "{msg}");
    assert!(lines.iter().any(|l| l.step == "release.store_failed"));
    assert_eq!(t.serving("api"), ["v1"]);
    // What the store says runs is what runs.
    assert_eq!(
        t.p.store
            .active_versions()
            .unwrap()
            .get("api")
            .map(String::as_str),
        Some("v1")
    );
    assert_eq!(t.p.store.releases(1).unwrap()[0].status, "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_guard_releases_the_lock_on_drop() {
    let t = TestPlatform::start(&[("api", 1)], "").await;
    let lease = Lease {
        name: DEPLOY_LOCK.into(),
        owner: "me".into(),
        host: "here".into(),
        pid: 1,
        reason: None,
        acquired_ms: now_ms(),
        heartbeat_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
    };
    t.p.store.acquire_lock(&lease).unwrap();
    let guard = LeaseGuard::hold(t.p.clone(), "me".into(), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(t.p.store.lock(DEPLOY_LOCK).unwrap().is_some());
    // A panic unwinding through the release drops the guard the same way.
    drop(guard);
    assert!(t.p.store.lock(DEPLOY_LOCK).unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        t.p.store.lock(DEPLOY_LOCK).unwrap().is_none(),
        "no heartbeat after the drop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_stay_one_at_a_time_even_when_the_lock_is_released_by_hand() {
    let t = TestPlatform::start(&[("api", 1), ("other", 1)], "").await;
    let p = t.p.clone();
    let meddler = tokio::spawn(async move {
        let svc = p.services["api"].clone();
        while svc.serving_version() != "v2" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // `lock release --force` while the release watches its new version...
        p.store.release_lock(DEPLOY_LOCK, None).unwrap();
        // ...and a second release asks to start.
        let plan = Plan {
            kind: Kind::Deploy(Strategy::BlueGreen),
            specs: Default::default(),
            validate: false,
            force: false,
            targets: vec![("other".into(), "v9".into())],
            reason: None,
            actor: "second".into(),
            lock_wait: Duration::ZERO,
        };
        let (tx, _rx) = mpsc::unbounded_channel();
        run(p.clone(), plan, tx).await
    });
    let (outcome, _) = t.deploy(Strategy::BlueGreen, &[("api", "v2")]).await;
    let second = meddler.await.unwrap();
    assert_eq!(outcome, Outcome::Deployed, "{}", message(&outcome));
    assert!(
        matches!(&second, Outcome::LockHeld(m) if m.contains("release running in this daemon")),
        "{second:?}"
    );
    assert_eq!(t.serving("other"), ["v1"]);
    assert_eq!(t.serving("api"), ["v2"]);
    assert!(
        t.p.store.lock(DEPLOY_LOCK).unwrap().is_none(),
        "released at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_names_the_last_probes_and_a_long_watch_reports_progress() {
    let t = TestPlatform::start(&[("api", 1)], "watch = \"6s\"\n").await;
    let (outcome, _) = t
        .deploy(Strategy::BlueGreen, &[("api", "v2-unhealthy")])
        .await;
    let msg = message(&outcome);
    assert!(
        msg.contains("last probes: api-green-1: GET /health answered 503"),
        "{msg}"
    );
    let (outcome, lines) = t.deploy(Strategy::BlueGreen, &[("api", "v3")]).await;
    assert_eq!(outcome, Outcome::Deployed, "{}", message(&outcome));
    let progress: Vec<&str> = lines
        .iter()
        .filter(|l| l.step == "deploy.watch_progress")
        .map(|l| l.message.as_str())
        .collect();
    assert!(!progress.is_empty(), "no progress during a 6 s watch");
    assert!(
        progress[0].contains("requests") && progress[0].contains("left"),
        "{progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_release_reverts_and_says_who_aborted_it() {
    let t = TestPlatform::start(&[("api", 1)], "watch = \"6s\"\n").await;
    let p = t.p.clone();
    let aborter = tokio::spawn(async move {
        let svc = p.services["api"].clone();
        while svc.serving_version() != "v2" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *lock(&p.abort) = Some("alice".into());
    });
    let (outcome, lines) = t.deploy(Strategy::BlueGreen, &[("api", "v2")]).await;
    aborter.await.unwrap();
    let msg = message(&outcome);
    assert!(matches!(outcome, Outcome::Aborted(_)), "{msg}");
    assert!(msg.contains("aborted by alice"), "{msg}");
    assert_eq!(lines.last().unwrap().exit_code, Some(1));
    assert_eq!(t.serving("api"), ["v1"]);
    assert_eq!(t.p.store.releases(1).unwrap()[0].status, "aborted");
    // The next release is not aborted by the old request.
    let (outcome, _) = t.deploy(Strategy::BlueGreen, &[("api", "v3")]).await;
    assert_eq!(outcome, Outcome::Deployed, "{}", message(&outcome));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replaces_every_instance_on_the_same_version() {
    let t = TestPlatform::start(&[("api", 2)], "watch = \"0s\"\n").await;
    let before = t.runtime.starts();
    let (outcome, _) = t.release(Kind::Restart, &[("api", "v1")]).await;
    assert_eq!(outcome, Outcome::Restarted, "{}", message(&outcome));
    assert_eq!(t.runtime.starts(), before + 2);
    assert_eq!(t.serving("api"), ["v1", "v1"]);
    assert_eq!(t.p.store.releases(1).unwrap()[0].strategy, "restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_adds_and_removes_instances_in_place_and_undoes_a_failed_gate() {
    let t = TestPlatform::start(&[("api", 1)], "").await;
    let (outcome, _) = t.release(Kind::Scale(3), &[("api", "v1")]).await;
    assert_eq!(outcome, Outcome::Scaled, "{}", message(&outcome));
    assert_eq!(t.serving("api"), ["v1", "v1", "v1"]);
    assert_live(&t, &["api-blue-1", "api-blue-2", "api-blue-3"]);
    let (outcome, _) = t.release(Kind::Scale(1), &[("api", "v1")]).await;
    assert_eq!(outcome, Outcome::Scaled, "{}", message(&outcome));
    assert_eq!(t.serving("api"), ["v1"]);
    assert_live(&t, &["api-blue-1"]);
    assert_eq!(t.p.store.releases(1).unwrap()[0].strategy, "scale");
    // On a version whose second instance never gets healthy: the scale-up is undone.
    let (outcome, _) = t.deploy(Strategy::BlueGreen, &[("api", "v2-bad2")]).await;
    assert_eq!(outcome, Outcome::Deployed, "{}", message(&outcome));
    let (outcome, _) = t.release(Kind::Scale(2), &[("api", "v2-bad2")]).await;
    assert!(
        matches!(outcome, Outcome::Failed(_)),
        "{}",
        message(&outcome)
    );
    assert_eq!(t.serving("api"), ["v2-bad2"]);
    let green = t.p.services["api"].colour("green").unwrap();
    assert_eq!(green.count(), 1);
    assert_eq!(green.instances().len(), 1);
}
