//! Signing in to the web app in a real browser (Chromium through chromedriver), against a
//! real `trainyard serve` that requires keys: the sign-in view, the session cookie, what
//! each account sees, the live curve under a session, signing out, and a session that
//! ends while a page is open. See `tests/browser.rs` for the rest of the app.

use crate::common;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};
use sqlx::PgPool;

use common::browser::{Browser, js, one_at_a_time, page_problems, testid, until};
use common::procs::{Harness, Timing, submit};
use trainyard::store::Store;
use trainyard::store::accounts::QuotasPatch;

/// An HTTP client that sends `key` with every request.
fn with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A tiny spec; the server has no workers, so it stays queued.
fn spec(name: &str) -> Value {
    json!({"preset": "torch-cnn", "name": name, "epochs": 1, "device": "cpu"})
}

/// Types `key` into the sign-in form and submits it.
async fn sign_in(c: &Client, key: &str) {
    until(c, 20, "document.body.dataset.view", |v| v == "sign-in").await;
    let field = c.wait().for_element(Locator::Id("key")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(key).await.unwrap();
    c.find(Locator::Id("sign-in-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Where the page is: path and query.
const WHERE: &str = "location.pathname + location.search";

/// The names in the experiments list, top to bottom.
const NAMES: &str = "Array.from(document.querySelectorAll('[data-testid=experiment-row] td.name a')).map(a => a.textContent)";

/// Whether an element of the header is shown.
fn shown(id: &str) -> String {
    format!(
        "!document.getElementById('{id}').hidden && !document.getElementById('{id}').closest('[hidden]')"
    )
}

#[sqlx::test]
async fn a_key_signs_in_to_its_accounts_experiments_and_signing_out_ends_the_session(pool: PgPool) {
    let _one = one_at_a_time().await;
    let store = Store::from_pool(pool.clone());
    let alice = store.create_key("alice", false).await.unwrap().key;
    let bob = store.create_key("bob", false).await.unwrap().key;
    let root = store.create_key("root", true).await.unwrap();
    store
        .set_quotas(
            "alice",
            QuotasPatch {
                max_queued: Some(Some(5)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve_with("serve", 0, "127.0.0.1:0", &[]);
    let alices = submit(&with_key(&alice), &base, &spec("alice's run")).await;
    let bobs = submit(&with_key(&bob), &base, &spec("bob's run")).await;

    let b = Browser::start().await;
    let (base, store) = (&base, &store);
    b.run("sign-in", |c| async move {
        // Nobody is signed in: the list sends the user to sign in, and back afterwards.
        c.goto(&format!("{base}/")).await.unwrap();
        until(&c, 20, WHERE, |v| v == "/ui/sign-in?next=%2F").await;
        assert_eq!(js(&c, &shown("nav-main")).await, false, "no navigation to 401s");
        assert_eq!(js(&c, &shown("account")).await, false);
        // A new operator learns where the first admin key is.
        let first = testid(&c, "first-key").await.text().await.unwrap();
        assert!(
            first.contains("docker compose exec trainyard cat /var/lib/trainyard/admin-key"),
            "{first}"
        );

        sign_in(&c, "ty_not_a_key").await;
        let error = testid(&c, "sign-in-error").await.text().await.unwrap();
        assert!(error.contains("unknown or revoked key"), "{error}");
        assert_eq!(js(&c, WHERE).await, "/ui/sign-in?next=%2F");

        sign_in(&c, &alice).await;
        until(&c, 20, WHERE, |v| v == "/").await;
        until(&c, 20, NAMES, |v| *v == json!(["alice's run"])).await;
        assert_eq!(
            js(&c, "document.getElementById('account-name').textContent").await,
            "alice"
        );
        assert_eq!(js(&c, &shown("account-admin")).await, false);
        assert_eq!(js(&c, &shown("sign-out")).await, true);
        assert_eq!(
            js(&c, "document.querySelectorAll('[data-testid=account]').length").await,
            0,
            "an account sees only its own: no account column"
        );

        // The session is a cookie no script reads.
        assert_eq!(
            js(&c, "document.cookie.includes('trainyard_session')").await,
            false
        );
        let cookie = c.get_named_cookie("trainyard_session").await.unwrap();
        assert_eq!(cookie.http_only(), Some(true), "{cookie}");
        assert!(cookie.to_string().contains("SameSite=Strict"), "{cookie}");

        // It lasts across page loads; the New view says what the account uses.
        c.goto(&format!("{base}/ui/new")).await.unwrap();
        testid(&c, "quota").await;
        until(
            &c,
            20,
            "document.querySelector('[data-testid=quota]').textContent",
            |v| v == "alice: 1 of 5 queued · 0 running",
        )
        .await;

        // The live curve (an EventSource, which sends no Authorization header) opens
        // with the cookie, and tells the page what happens to the run.
        c.goto(&format!("{base}/ui/experiments/{alices}")).await.unwrap();
        until(&c, 20, "document.getElementById('live')?.textContent", |v| {
            v == "● live"
        })
        .await;
        let cancelled = with_key(&alice)
            .post(format!("{base}/experiments/{alices}/cancel"))
            .send()
            .await
            .unwrap();
        assert!(cancelled.status().is_success(), "{}", cancelled.status());
        until(
            &c,
            20,
            "document.querySelector('#exp-head [data-testid=status]')?.textContent",
            |v| v == "cancelled",
        )
        .await;

        // Signing out ends the session: the old cookie no longer works.
        c.find(Locator::Id("sign-out"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&c, 20, WHERE, |v| v == "/ui/sign-in").await;
        assert_eq!(js(&c, &shown("account")).await, false);
        let old = format!("trainyard_session={}", cookie.value());
        for path in ["/session", "/experiments"] {
            let r = reqwest::Client::new()
                .get(format!("{base}{path}"))
                .header("cookie", &old)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{path} with the old cookie");
        }

        // An admin sees every account's experiments, each with its account.
        c.goto(&format!("{base}/ui/experiments/{bobs}"))
            .await
            .unwrap();
        let back = format!("/ui/sign-in?next=%2Fui%2Fexperiments%2F{bobs}");
        until(&c, 20, WHERE, |v| *v == back).await;
        sign_in(&c, &root.key).await;
        let bobs_page = format!("/ui/experiments/{bobs}");
        until(&c, 20, WHERE, |v| *v == bobs_page).await;
        assert_eq!(js(&c, &shown("account-admin")).await, true);
        c.find(Locator::Css("[data-nav=experiments]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        until(&c, 20, NAMES, |v| *v == json!(["bob's run", "alice's run"])).await;
        let accounts = "Array.from(document.querySelectorAll('[data-testid=account]')).map(td => td.textContent)";
        assert_eq!(js(&c, accounts).await, json!(["bob", "alice"]));

        // Revoking the key ends its session: the list's next poll goes to sign in.
        store.revoke_key(root.info.id).await.unwrap();
        until(&c, 20, WHERE, |v| v == "/ui/sign-in?next=%2F").await;

        // After signing in, only a path of this site is followed.
        c.goto(&format!("{base}/ui/sign-in?next=//evil.example/ui/new"))
            .await
            .unwrap();
        sign_in(&c, &alice).await;
        until(&c, 20, "location.href", |v| *v == format!("{base}/")).await;
        assert!(
            page_problems(&c).await.is_empty(),
            "{:?}",
            page_problems(&c).await
        );
    })
    .await;
    b.close().await;
}

#[sqlx::test]
async fn without_keys_the_app_needs_no_sign_in_and_offers_no_sign_out(pool: PgPool) {
    let _one = one_at_a_time().await;
    let h = Harness::new(&pool, Timing::default());
    let (_serve, base) = h.serve("serve", 0);
    submit(&reqwest::Client::new(), &base, &spec("a run")).await;
    let b = Browser::start().await;
    let base = &base;
    b.run("auth-off", |c| async move {
        c.goto(&format!("{base}/")).await.unwrap();
        until(&c, 20, NAMES, |v| *v == json!(["a run"])).await;
        assert_eq!(js(&c, WHERE).await, "/");
        assert_eq!(
            js(&c, "document.getElementById('account-name').textContent").await,
            "default"
        );
        assert_eq!(js(&c, &shown("sign-out")).await, false);
        assert_eq!(
            js(
                &c,
                "document.querySelectorAll('[data-testid=account]').length"
            )
            .await,
            0
        );
        c.goto(&format!("{base}/ui/sign-in")).await.unwrap();
        testid(&c, "auth-off").await;
        assert_eq!(
            js(&c, "document.getElementById('key') === null").await,
            true
        );
        assert!(
            page_problems(&c).await.is_empty(),
            "{:?}",
            page_problems(&c).await
        );
    })
    .await;
    b.close().await;
}
