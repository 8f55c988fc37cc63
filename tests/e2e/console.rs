//! The console and the portal in a real headless Chromium (driven over
//! WebDriver), against the real stack: forms that create, a webhook that
//! arrives and shows on the page, a dead letter replayed with a click, a
//! secret rotated through the page, a portal that sees one application
//! only, text that stays text. Every page is checked for failed requests
//! and console errors, and photographed into `target/browser-screenshots`.
//!
//! The session, CSRF and framing rules are checked over plain HTTP at the
//! end.

use std::time::Duration;

use herald_tests::browser::Browser;
use herald_tests::{Behaviour, Receiver, Stack, StackOptions};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Opens `path`, checks that nothing failed, saves a screenshot.
async fn visit(browser: &Browser, stack: &Stack, path: &str, screenshot: &str) {
    browser.goto(&format!("{}{path}", stack.ingest_url)).await;
    browser.find("main h1").await;
    browser.assert_no_console_errors(path).await;
    browser.screenshot(screenshot).await;
}

async fn log_in_to_console(browser: &Browser, stack: &Stack) {
    browser.goto(&format!("{}/console", stack.ingest_url)).await;
    // No session: the console sends the browser to its log-in form.
    assert!(
        browser.url().await.ends_with("/console/login"),
        "{}",
        browser.url().await
    );
    browser.fill("#key", &stack.api_key).await;
    browser.click("#login button[type=submit]").await;
    wait_for_url(browser, "/console").await;
    assert!(browser.title().await.starts_with("Overview"));
}

async fn wait_for_url(browser: &Browser, suffix: &str) {
    let ok = herald_tests::eventually_async(Duration::from_secs(10), || async {
        browser
            .url()
            .await
            .split('?')
            .next()
            .unwrap_or_default()
            .ends_with(suffix)
    })
    .await;
    assert!(
        ok,
        "the browser is on {}, not …{suffix}",
        browser.url().await
    );
}

/// Reloads `path` until `css`'s text holds `needle`.
async fn wait_for_text(browser: &Browser, stack: &Stack, path: &str, css: &str, needle: &str) {
    let ok = herald_tests::eventually_async(WAIT, || async {
        browser.goto(&format!("{}{path}", stack.ingest_url)).await;
        !browser.find_all(css).await.is_empty() && browser.text(css).await.contains(needle)
    })
    .await;
    assert!(ok, "{path}: {css} never showed {needle:?}");
}

async fn arrived(receiver: &Receiver, id: &str) -> herald_tests::receiver::Received {
    let found = herald_tests::eventually(WAIT, || {
        receiver.received().iter().any(|r| r.webhook_id() == id)
    })
    .await;
    assert!(found, "{id} did not arrive");
    receiver
        .received()
        .into_iter()
        .rev()
        .find(|r| r.webhook_id() == id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console() {
    let stack = Stack::start(StackOptions::new("console").env("HERALD_RETRY_SCHEDULE", "1s")).await;
    let receiver = Receiver::start(Behaviour::Reply {
        status: 200,
        body: "thanks from the receiver".to_owned(),
    })
    .await;
    let browser = Browser::start().await;
    log_in_to_console(&browser, &stack).await;
    browser.assert_no_console_errors("/console").await;
    browser.screenshot("console-overview-empty").await;

    // An application and an endpoint, through the forms.
    visit(
        &browser,
        &stack,
        "/console/applications",
        "console-applications",
    )
    .await;
    browser.fill("#new-id", "shop").await;
    browser.fill("#new-name", "Shop <Ltd>").await;
    browser
        .click("form[method=post][action='/console/applications'] button")
        .await;
    wait_for_url(&browser, "/console/applications/shop").await;
    assert_eq!(
        browser.text("dl.facts dd:nth-of-type(2)").await,
        "Shop <Ltd>"
    );
    let description = "<script>window.__herald_xss = 1; console.error('xss ran')</script> orders";
    browser.fill("#url", &receiver.url()).await;
    browser.fill("#event_types", "order.*").await;
    browser.fill("#description", description).await;
    browser
        .click("form[action='/console/applications/shop/endpoints'] button")
        .await;
    let secret = browser.text("#secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    browser.assert_no_console_errors("the new endpoint").await;
    browser.screenshot("console-endpoint-created").await;
    receiver.set_secret(&secret);
    browser.click("a.button").await;
    browser.find("#breaker-state").await;
    let endpoint_page = browser.url().await.replace(&stack.ingest_url, "");
    let endpoint_id = endpoint_page.rsplit('/').next().unwrap().to_owned();
    assert!(endpoint_id.starts_with("ep_"), "{endpoint_page}");

    // The description is text: shown as typed, and its script never ran
    // (a script that ran, or one the policy blocked, would have logged).
    assert_eq!(browser.text("#description").await, description);
    assert_eq!(
        browser.execute("return typeof window.__herald_xss").await,
        json!("undefined")
    );
    browser.assert_no_console_errors(&endpoint_page).await;
    let (_, listed) = stack.get_json("/v1/applications/shop/endpoints").await;
    assert_eq!(listed["data"][0]["description"], description);

    // An event, delivered and signed with the secret the page showed; its
    // attempt appears on the endpoint's page with the receiver's answer.
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "shop", "id": "evt_console_1", "type": "order.created", "payload": {"order": 1}}))
        .await;
    let first = arrived(&receiver, "evt_console_1").await;
    assert!(
        first.signature_valid,
        "signed with the secret the page showed"
    );
    wait_for_text(
        &browser,
        &stack,
        &endpoint_page,
        "table.attempts tbody",
        "thanks from the receiver",
    )
    .await;
    assert!(browser.text("table.attempts tbody").await.contains("200"));
    browser.assert_no_console_errors(&endpoint_page).await;
    browser.screenshot("console-endpoint-attempt").await;

    // The event's own page lists the attempt.
    visit(
        &browser,
        &stack,
        "/console/events?application=shop&id=evt_console_1",
        "console-event",
    )
    .await;
    assert!(browser.text("table.attempts").await.contains(&endpoint_id));
    // Its payload, read back from Kafka.
    let payload = browser.text("#payload").await;
    assert!(payload.contains("\"order\": 1"), "{payload}");

    // Rotate the secret through the page, retiring the old one at once: the
    // next webhook verifies with the new secret.
    browser
        .goto(&format!("{}{endpoint_page}", stack.ingest_url))
        .await;
    browser.fill("#grace", "0").await;
    browser.click("#rotate").await;
    let rotated = browser.text("#secret").await;
    assert!(
        rotated.starts_with("whsec_") && rotated != secret,
        "{rotated}"
    );
    browser.assert_no_console_errors("the rotation").await;
    browser.screenshot("console-secret-rotated").await;
    receiver.set_secret(&rotated);
    receiver.set_behaviour(Behaviour::VerifySignature);
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "shop", "id": "evt_console_2", "type": "order.created", "payload": {"order": 2}}))
        .await;
    let second = arrived(&receiver, "evt_console_2").await;
    assert!(second.signature_valid, "the new secret verifies");
    assert_eq!(second.answered, 200);
    let old_only = standardwebhooks::Webhook::new(&secret).unwrap();
    assert!(
        old_only.verify(&second.body, &second.headers).is_err(),
        "the old secret no longer signs"
    );

    // A delivery the receiver keeps refusing is dead-lettered; found on the
    // dead-letter page, replayed with a click, delivered.
    receiver.set_behaviour(Behaviour::AlwaysFail(503));
    stack
        .accept_event(&json!({"application": "shop", "id": "evt_console_3", "type": "order.created", "payload": {"order": 3}}))
        .await;
    stack
        .wait_for_dead_letters("application=shop", 1, WAIT)
        .await;
    receiver.set_behaviour(Behaviour::Reply {
        status: 200,
        body: "replayed fine".to_owned(),
    });
    visit(
        &browser,
        &stack,
        "/console/dead-letters?application=shop",
        "console-dead-letters",
    )
    .await;
    let rows = browser.text("#dead-letters tbody").await;
    assert!(rows.contains("evt_console_3"), "{rows}");
    let before = receiver
        .received()
        .iter()
        .filter(|r| r.webhook_id() == "evt_console_3")
        .count();
    browser.click("#dead-letters button[name=one]").await;
    assert!(browser.text("p.notice").await.contains("Sent again"));
    browser.assert_no_console_errors("the replay").await;
    let replayed = herald_tests::eventually(WAIT, || {
        receiver
            .received()
            .iter()
            .filter(|r| r.webhook_id() == "evt_console_3")
            .count()
            > before
    })
    .await;
    assert!(replayed, "the replayed dead letter was not delivered");
    let last = arrived(&receiver, "evt_console_3").await;
    assert_eq!(last.answered, 200);

    // Two more, replayed together: ticked, then "Replay selected".
    receiver.set_behaviour(Behaviour::AlwaysFail(503));
    for id in ["evt_console_4", "evt_console_5"] {
        stack
            .accept_event(&json!({"application": "shop", "id": id, "type": "order.created", "payload": {"order": id}}))
            .await;
    }
    // The replayed one left the index; these two take its place.
    let letters = stack
        .wait_for_dead_letters("application=shop", 2, WAIT)
        .await;
    let ids: Vec<&str> = letters
        .iter()
        .filter_map(|l| l["event_id"].as_str())
        .collect();
    assert!(
        ids.contains(&"evt_console_4") && ids.contains(&"evt_console_5"),
        "{ids:?}"
    );
    receiver.set_behaviour(Behaviour::Accept);
    visit(
        &browser,
        &stack,
        "/console/dead-letters?application=shop&reason=attempts_exhausted",
        "console-dead-letters-filtered",
    )
    .await;
    for checkbox in browser.find_all("#dead-letters input[name=ids]").await {
        browser.click_element(&checkbox).await;
    }
    browser.click("button[name=selected]").await;
    assert!(browser.text("p.notice").await.contains("Sent again"));
    for id in ["evt_console_4", "evt_console_5"] {
        let delivered = herald_tests::eventually(WAIT, || {
            receiver
                .received()
                .iter()
                .any(|r| r.webhook_id() == id && r.answered == 200)
        })
        .await;
        assert!(
            delivered,
            "{id}, replayed with the selection, was not delivered"
        );
    }

    // Every other page loads cleanly, now with data in its charts.
    tokio::time::sleep(herald_core::stats::FLUSH_INTERVAL + Duration::from_secs(1)).await;
    visit(&browser, &stack, "/console", "console-overview").await;
    let accepted = browser.text(".figure .value").await;
    assert!(
        accepted.ends_with("/s") && !accepted.starts_with("0.0 "),
        "the events sent show in the overview: {accepted}"
    );
    visit(
        &browser,
        &stack,
        "/console/applications?q=shop",
        "console-search",
    )
    .await;
    assert!(browser.text("table").await.contains("Shop <Ltd>"));
    visit(
        &browser,
        &stack,
        "/console/applications/shop",
        "console-application",
    )
    .await;
    visit(&browser, &stack, &endpoint_page, "console-endpoint").await;
    visit(&browser, &stack, "/console/events", "console-event-lookup").await;
    visit(
        &browser,
        &stack,
        "/console/dead-letters",
        "console-dead-letters-all",
    )
    .await;

    // Log out: the session is gone.
    browser.click("nav button.link").await;
    wait_for_url(&browser, "/console/login").await;
    browser.goto(&format!("{}/console", stack.ingest_url)).await;
    wait_for_url(&browser, "/console/login").await;
    browser.assert_no_console_errors("after logging out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_shows_one_application_and_refuses_expired_tokens() {
    let stack = Stack::start(
        StackOptions::new("portal")
            .env("HERALD_PORTAL_TITLE", "Acme Webhooks")
            .env("HERALD_PORTAL_ACCENT", "#c2410c"),
    )
    .await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    stack.create_application("tenant_a").await;
    stack.create_application("tenant_b").await;
    let a = stack
        .create_endpoint_in(
            "tenant_a",
            json!({"url": receiver.url(), "event_types": ["a.*"], "description": "A's endpoint"}),
        )
        .await;
    let b = stack
        .create_endpoint_in(
            "tenant_b",
            json!({"url": receiver.url(), "event_types": ["b.*"], "description": "B's endpoint"}),
        )
        .await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let token = |ttl: u32| {
        let stack = &stack;
        async move {
            let (status, issued) = stack
                .post_json(
                    "/v1/applications/tenant_a/tokens",
                    &json!({"scope": "portal", "ttl_seconds": ttl}),
                )
                .await;
            assert_eq!(status, 201, "{issued}");
            issued["token"].as_str().unwrap().to_owned()
        }
    };

    // The platform's link: the token rides in the fragment, which the
    // browser never sends; the page's script posts it and forgets it.
    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "{}/portal/login#token={}",
            stack.ingest_url,
            token(3600).await
        ))
        .await;
    wait_for_url(&browser, "/portal").await;
    assert!(
        !browser.url().await.contains("hat_"),
        "{}",
        browser.url().await
    );
    assert!(browser.title().await.contains("Acme Webhooks"));
    let listed = browser.text("#endpoints").await;
    assert!(listed.contains(a_id) && !listed.contains(b_id), "{listed}");
    browser.assert_no_console_errors("/portal").await;
    browser.screenshot("portal-endpoints").await;
    let accent = browser
        .execute(
            "return getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()",
        )
        .await;
    assert_eq!(accent, json!("#c2410c"));

    visit(
        &browser,
        &stack,
        &format!("/portal/endpoints/{a_id}"),
        "portal-endpoint",
    )
    .await;
    assert_eq!(browser.text("#description").await, "A's endpoint");
    visit(
        &browser,
        &stack,
        "/portal/dead-letters",
        "portal-dead-letters",
    )
    .await;
    visit(&browser, &stack, "/portal/events", "portal-events").await;

    // B's endpoint, typed into the URL, is not there for A.
    browser
        .goto(&format!("{}/portal/endpoints/{b_id}", stack.ingest_url))
        .await;
    assert_eq!(browser.text("main h1").await, "Not found");
    assert!(!browser.text("main").await.contains("B's endpoint"));
    let logged: Vec<_> = browser
        .console_entries()
        .await
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .collect();
    assert!(
        !logged.is_empty() && logged.iter().all(|e| e.message.contains("404")),
        "only the not-found page's own 404: {logged:?}"
    );
    browser.screenshot("portal-not-found").await;

    // Nor can A's session change B's endpoint: every action on it, posted
    // from A's page with A's CSRF token, is a 404, and B is as it was.
    browser.goto(&format!("{}/portal", stack.ingest_url)).await;
    let (_, b_secret) = stack
        .get_json(&format!(
            "/v1/applications/tenant_b/endpoints/{b_id}/secret"
        ))
        .await;
    // Posted as a form of A's page (its policy lets a page post forms to
    // Herald, and nothing else): the answer is a page, read by its title.
    let post = |path: String, fields: Vec<(&'static str, String)>| {
        let browser = &browser;
        let stack = &stack;
        async move {
            browser.goto(&format!("{}/portal", stack.ingest_url)).await;
            let mut script = format!(
                "const f = document.createElement('form'); f.method = 'post'; f.action = {path:?}; \
                 const add = (n, v) => {{ const i = document.createElement('input'); i.type = 'hidden'; i.name = n; i.value = v; f.appendChild(i); }}; \
                 add('csrf', document.querySelector('input[name=csrf]').value); "
            );
            for (name, value) in &fields {
                script.push_str(&format!("add({name:?}, {value:?}); "));
            }
            script.push_str("document.body.appendChild(f); f.submit();");
            browser.execute(&script).await;
            let answered = herald_tests::eventually_async(Duration::from_secs(10), || async {
                browser.title().await.starts_with("Not found")
            })
            .await;
            assert!(answered, "POST {path}: {}", browser.text("main").await);
            browser.console_entries().await; // its 404
        }
    };
    for action in ["delete", "disable", "secret", "rotate", "replay"] {
        post(format!("/portal/endpoints/{b_id}/{action}"), Vec::new()).await;
    }
    post(
        format!("/portal/endpoints/{b_id}"),
        vec![
            ("url", "http://127.0.0.1:9/x".to_owned()),
            ("event_types", "b.*".to_owned()),
        ],
    )
    .await;
    post(
        "/portal/dead-letters/replay".to_owned(),
        vec![("all_of_endpoint", b_id.to_owned())],
    )
    .await;
    let (status, b_now) = stack
        .get_json(&format!("/v1/applications/tenant_b/endpoints/{b_id}"))
        .await;
    assert_eq!(status, 200, "B's endpoint still exists");
    assert_eq!(b_now["disabled"], false);
    assert_eq!(b_now["url"], b["url"]);
    let (_, b_secret_now) = stack
        .get_json(&format!(
            "/v1/applications/tenant_b/endpoints/{b_id}/secret"
        ))
        .await;
    assert_eq!(
        b_secret_now, b_secret,
        "B's secret was neither shown nor rotated"
    );
    browser.console_entries().await; // the 404s just provoked

    // B's events are not A's either.
    stack.settle_endpoints().await;
    stack
        .accept_event(&json!({"application": "tenant_b", "id": "evt_of_b", "type": "b.created", "payload": {"secret": "of b"}}))
        .await;
    let b_delivered = herald_tests::eventually(WAIT, || {
        receiver
            .received()
            .iter()
            .any(|r| r.webhook_id() == "evt_of_b")
    })
    .await;
    assert!(b_delivered);
    let b_attempts_seen = herald_tests::eventually_async(WAIT, || async {
        let (_, attempts) = stack
            .get_json("/v1/applications/tenant_b/events/evt_of_b/attempts")
            .await;
        attempts["data"].as_array().is_some_and(|a| !a.is_empty())
    })
    .await;
    assert!(b_attempts_seen, "B's event has its attempt on record");
    browser
        .goto(&format!("{}/portal/events?id=evt_of_b", stack.ingest_url))
        .await;
    let shown = browser.text("main").await;
    assert!(
        shown.contains("No attempt") && !shown.contains("of b"),
        "{shown}"
    );
    browser.console_entries().await; // its 404

    // A's customer adds an endpoint through the portal's form.
    browser.goto(&format!("{}/portal", stack.ingest_url)).await;
    browser.fill("#url", &receiver.url_at("/from-portal")).await;
    browser.fill("#event_types", "a.created").await;
    browser.fill("#description", "added in the portal").await;
    browser
        .click("form[action='/portal/endpoints'] button")
        .await;
    assert!(browser.text("#secret").await.starts_with("whsec_"));
    browser
        .assert_no_console_errors("the portal's new endpoint")
        .await;
    let (_, listed) = stack.get_json("/v1/applications/tenant_a/endpoints").await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["description"] == "added in the portal"),
        "{listed}"
    );
    // Nor does a portal session open the console.
    browser.goto(&format!("{}/console", stack.ingest_url)).await;
    wait_for_url(&browser, "/console/login").await;

    // Log out, then follow a link whose token has expired.
    browser.goto(&format!("{}/portal", stack.ingest_url)).await;
    browser.click("nav button.link").await;
    wait_for_url(&browser, "/portal/login").await;
    let expired = token(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A link opened afresh, as from the platform's page.
    browser.goto("about:blank").await;
    browser
        .goto(&format!(
            "{}/portal/login#token={expired}",
            stack.ingest_url
        ))
        .await;
    let refused = browser.text("p.error").await;
    assert!(refused.contains("not valid"), "{refused}");
    browser.goto(&format!("{}/portal", stack.ingest_url)).await;
    wait_for_url(&browser, "/portal/login").await;
    browser.screenshot("portal-expired").await;
}

/// The `Set-Cookie` values of `response`.
fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// `name=value` of the cookie `name` among `cookies`.
fn cookie_pair(cookies: &[String], name: &str) -> String {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {cookies:?}"))
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + 64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_csrf_and_framing_hold_over_plain_http() {
    let stack = Stack::start(
        StackOptions::new("console-http")
            .ingest_only()
            .env("HERALD_PORTAL_FRAME_ANCESTORS", "https://app.example.com"),
    )
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", stack.ingest_url);

    // The log-in form, with its own token in a cookie.
    let form = http.get(url("/console/login")).send().await.unwrap();
    assert_eq!(form.status(), 200);
    let login_cookie = cookie_pair(&set_cookies(&form), "herald_console_login");
    let login_token = hidden(&form.text().await.unwrap(), "login_csrf");
    let log_in = |key: String, cookie: Option<String>, tls: bool| {
        let http = http.clone();
        let login_token = login_token.clone();
        let target = url("/console/login");
        async move {
            let mut request = http
                .post(target)
                .form(&[("login_csrf", login_token.as_str()), ("key", key.as_str())]);
            if let Some(cookie) = cookie {
                request = request.header("cookie", cookie);
            }
            if tls {
                request = request.header("x-forwarded-proto", "https");
            }
            request.send().await.unwrap()
        }
    };
    // Without the form's cookie (a form posted from another site): refused.
    let refused = log_in(stack.api_key.clone(), None, false).await;
    assert_eq!(refused.status(), 403);
    assert!(
        set_cookies(&refused)
            .iter()
            .all(|c| !c.starts_with("herald_console="))
    );
    // A wrong key: refused.
    let wrong = log_in(
        "not-the-key-0123456789".into(),
        Some(login_cookie.clone()),
        false,
    )
    .await;
    assert_eq!(wrong.status(), 401);
    // The key: a session cookie, HttpOnly and SameSite=Strict, Secure only
    // over TLS.
    let plain = log_in(stack.api_key.clone(), Some(login_cookie.clone()), false).await;
    assert_eq!(plain.status(), 303);
    let cookies = set_cookies(&plain);
    let session_cookie = cookies
        .iter()
        .find(|c| c.starts_with("herald_console="))
        .unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(session_cookie.contains(flag), "{session_cookie}");
    }
    assert!(!session_cookie.contains("Secure"), "{session_cookie}");
    let over_tls = log_in(stack.api_key.clone(), Some(login_cookie.clone()), true).await;
    let tls_cookies = set_cookies(&over_tls);
    let tls_cookie = tls_cookies
        .iter()
        .find(|c| c.starts_with("herald_console="))
        .unwrap();
    assert!(tls_cookie.ends_with("; Secure"), "{tls_cookie}");
    let session = cookie_pair(&cookies, "herald_console");

    // The console's framing and policy headers.
    let page = http
        .get(url("/console/applications"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    let policy = header(&page, "content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await.unwrap();
    let csrf = hidden(&html, "csrf");
    assert!(!html.contains("style=\""), "no inline style attribute");

    // A form without the session's CSRF token changes nothing.
    let forged = http
        .post(url("/console/applications"))
        .header("cookie", &session)
        .form(&[("id", "forged"), ("name", "Forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let wrong_token = http
        .post(url("/console/applications"))
        .header("cookie", &session)
        .form(&[
            ("csrf", "0".repeat(64).as_str()),
            ("id", "forged"),
            ("name", "Forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_token.status(), 403);
    let (status, _) = stack.get_json("/v1/applications/forged").await;
    assert_eq!(status, 404, "no forged application");
    // With it, the form works.
    let created = http
        .post(url("/console/applications"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str()), ("id", "real"), ("name", "Real")])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 303);
    let (status, app): (u16, Value) = stack.get_json("/v1/applications/real").await;
    assert_eq!(status, 200, "{app}");

    // Logging out ends the session: its cookie no longer opens a page.
    let out = http
        .post(url("/console/logout"))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        set_cookies(&out)
            .iter()
            .any(|c| c.starts_with("herald_console=;") && c.contains("Max-Age=0"))
    );
    let after = http
        .get(url("/console"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303);
    assert_eq!(header(&after, "location"), "/console/login");

    // The portal may be framed by the configured host only; the console
    // never.
    let portal = http.get(url("/portal/login")).send().await.unwrap();
    let policy = header(&portal, "content-security-policy");
    assert!(
        policy.contains("frame-ancestors https://app.example.com"),
        "{policy}"
    );
    assert_eq!(header(&portal, "x-frame-options"), "");
    let console = http.get(url("/console/login")).send().await.unwrap();
    assert!(header(&console, "content-security-policy").contains("frame-ancestors 'none'"));
    // Over TLS, the framed portal's cookie can be sent inside the
    // platform's page.
    let portal_tls = http
        .get(url("/portal/login"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let cookie = cookie_pair(&set_cookies(&portal_tls), "herald_portal_login");
    assert!(cookie.starts_with("herald_portal_login="));
    assert!(
        set_cookies(&portal_tls)[0].contains("SameSite=None; Partitioned; Secure"),
        "{:?}",
        set_cookies(&portal_tls)
    );

    // A page that does not exist is the area's own not-found page, under
    // the same policy.
    let nowhere = http.get(url("/console/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert!(header(&nowhere, "content-type").starts_with("text/html"));
    assert!(header(&nowhere, "content-security-policy").contains("frame-ancestors 'none'"));

    // The assets are served from the binary.
    let css = http
        .get(url("/console/assets/herald.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(css.status(), 200);
    assert!(header(&css, "content-type").starts_with("text/css"));
    let missing = http
        .get(url("/console/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
