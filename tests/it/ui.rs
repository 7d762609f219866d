//! The web UI in a real browser (headless Chromium through chromedriver): log in, browse and
//! search files, share from the dialog, watch a download's progress live, terminate, history,
//! status, a phone-sized screen. Screenshots of each page land in `target/tmp/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{EMPTY_REPLY, TestApp, curl};
use crate::webdriver::Browser;

const TOKEN: &str = "ui-test-admin-token-0123";

fn shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("screenshots")
        .join(format!("{name}.png"))
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_shares_watches_and_terminates_from_the_browser() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN), ("GRACE_PERIOD_SECONDS", "2")]).await;
    let movie = app.data_file("movies/holiday.mkv", 40_000_000);
    app.data_file("docs/report.pdf", 40_000);
    app.data_file("docs/taxes/2025.pdf", 1_000);
    app.data_file("notes.txt", 300);
    let b = Browser::start().await;

    log_in(&b, &app).await;
    browse_and_search(&b).await;
    let (id, url) = share_the_movie(&b, &app).await;
    watch_the_download(&b, &id, &url, &movie).await;
    let other_id = terminate_from_the_card(&b, &app).await;
    history_shows_both(&b, &id, &other_id).await;
    status_shows_every_part(&b).await;
    an_api_error_is_shown(&b, &app).await;
    a_phone_sized_screen_fits(&b, &app).await;

    // Logging out ends the session: the API refuses the page again.
    b.click_css("#logout").await;
    b.find("#token").await;
}

/// Login first: the API refuses the page until it has a session.
async fn log_in(b: &Browser, app: &TestApp) {
    b.goto(&app.admin).await;
    let token = b.find("#token").await;
    b.screenshot(&shot("login")).await;
    b.type_into(&token, TOKEN).await;
    b.click_css("#login-form button[type=submit]").await;
}

/// The data dir's top level (folders first), a folder, then a search by name across the tree.
async fn browse_and_search(b: &Browser) {
    b.wait_for(
        "the file list",
        "document.querySelector('#file-rows tr[data-path=\"notes.txt\"]')",
    )
    .await;
    let rows = b
        .script("return [...document.querySelectorAll('#file-rows tr')].map(r => r.dataset.path)")
        .await;
    assert_eq!(rows, json!(["docs", "movies", "notes.txt"]));
    b.screenshot(&shot("files")).await;

    b.click_css("#file-rows tr[data-path=docs] button").await;
    b.wait_for(
        "docs/",
        "document.querySelector('#file-rows tr[data-path=\"docs/report.pdf\"]')",
    )
    .await;
    assert!(b.text(&b.find("#crumbs").await).await.contains("docs"));
    b.type_into(&b.find("#search").await, "2025").await;
    b.wait_for("search results", "document.querySelectorAll('#file-rows tr').length === 1 && document.querySelector('#file-rows tr[data-path=\"docs/taxes/2025.pdf\"]')").await;
    b.screenshot(&shot("search")).await;
}

/// Shares the movie from the dialog (a preset, one download, a note): its id and download URL.
async fn share_the_movie(b: &Browser, app: &TestApp) -> (String, String) {
    b.click_css("#crumbs button").await;
    b.wait_for("top level", "document.querySelector('#file-rows tr[data-path=movies]')")
        .await;
    b.script("document.getElementById('search').value = ''").await;
    b.click_css("#file-rows tr[data-path=movies] button").await;
    b.click(
        &b.find("#file-rows tr[data-path=\"movies/holiday.mkv\"] button[aria-label^=Share]")
            .await,
    )
    .await;
    b.click(&b.find("#expiry-presets button[data-seconds='900']").await)
        .await;
    let max = b.find("#max-downloads").await;
    b.script("document.getElementById('max-downloads').value = ''").await;
    b.type_into(&max, "1").await;
    b.type_into(&b.find("#note").await, "for grandma").await;
    b.screenshot(&shot("share-dialog")).await;
    b.click_css("#share-create").await;
    let url_input = b.find("#share-url").await;
    let url = b.property(&url_input, "value").await.as_str().unwrap().to_string();
    assert!(url.starts_with(&app.public) && url.contains("/holiday.mkv?t="), "{url}");
    b.wait_for("the QR code", "document.getElementById('share-qr').naturalWidth > 0")
        .await;
    b.screenshot(&shot("share-result")).await;

    let open = app.open().await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["note"], "for grandma");
    let id = open[0]["tunnel_id"].as_str().unwrap().to_string();
    let expires = millis(&open[0]["expires_at"]) - millis(&open[0]["created_at"]);
    assert!(
        (899_000..=901_000).contains(&expires),
        "the 15 min preset gave {expires} ms"
    );
    (id, url)
}

/// The open list, live: the card appears, its bar moves while curl downloads (slowly, and a
/// file larger than loopback's socket buffers, so progress is seen mid-way) and reaches 100%,
/// then the link moves to history.
async fn watch_the_download(b: &Browser, id: &str, url: &str, movie: &[u8]) {
    b.click_css("#share-done").await;
    let card = format!("#open-list li[data-id='{id}']");
    b.find(&card).await;
    b.screenshot(&shot("open")).await;
    let url = url.to_string();
    let download = tokio::spawn(async move { curl(&url, &["--limit-rate", "10M"]).await });
    b.wait_for("progress under way", &format!("(() => {{ const p = document.querySelector(\"{card} progress\"); return p && p.value > 0 && p.value < 100; }})()")).await;
    b.screenshot(&shot("open-progress")).await;
    b.wait_for(
        "100%",
        &format!("document.querySelector(\"{card} progress\")?.value === 100"),
    )
    .await;
    let got = download.await.unwrap();
    assert_eq!(got.status, 200);
    assert!(got.body == movie, "the download is the file");
    b.wait_for("the card to leave", &format!("!document.querySelector(\"{card}\")"))
        .await;
}

/// Terminates another link from its card, confirming the dialog: that link's id.
async fn terminate_from_the_card(b: &Browser, app: &TestApp) -> String {
    app.data_file("other.bin", 10);
    let other = app.link("other.bin").await;
    let other_id = other["tunnel_id"].as_str().unwrap();
    let other_card = format!("#open-list li[data-id='{other_id}']");
    b.click(&b.find(&format!("{other_card} button.danger")).await).await;
    b.accept_dialog().await;
    b.wait_for(
        "the terminated card to leave",
        &format!("!document.querySelector(\"{other_card}\")"),
    )
    .await;
    let closed = app.closed(other_id, Duration::from_secs(5)).await;
    assert_eq!(closed["close_reason"], "terminated");
    other_id.to_string()
}

/// History: both links, with reasons and bytes.
async fn history_shows_both(b: &Browser, id: &str, other_id: &str) {
    b.click_css("header nav a[data-view=history]").await;
    b.wait_for(
        "history rows",
        &format!("document.querySelector(\"#history-rows tr[data-id='{other_id}']\")"),
    )
    .await;
    let row = b
        .text(&b.find(&format!("#history-rows tr[data-id='{id}']")).await)
        .await;
    assert!(
        row.contains("movies/holiday.mkv") && row.contains("completed") && row.contains("40.0 MB"),
        "{row}"
    );
    let row = b
        .text(&b.find(&format!("#history-rows tr[data-id='{other_id}']")).await)
        .await;
    assert!(row.contains("terminated"), "{row}");
    b.screenshot(&shot("history")).await;
}

/// Status: every component, as /health says.
async fn status_shows_every_part(b: &Browser) {
    b.click_css("header nav a[data-view=status]").await;
    b.wait_for(
        "status facts",
        "document.querySelectorAll('#status-list dt').length > 3",
    )
    .await;
    let facts = b.text(&b.find("#status-list").await).await;
    assert!(
        facts.contains("nginx") && facts.contains("store") && facts.contains("ok"),
        "{facts}"
    );
    b.screenshot(&shot("status")).await;
}

/// An API error is shown as the server said it: the file vanished before it was shared.
async fn an_api_error_is_shown(b: &Browser, app: &TestApp) {
    b.click_css("header nav a[data-view=files]").await;
    b.click_css("#crumbs button").await;
    b.wait_for(
        "the file list",
        "document.querySelector('#file-rows tr[data-path=\"notes.txt\"]')",
    )
    .await;
    std::fs::remove_file(app.path("data/notes.txt")).unwrap();
    b.click(
        &b.find("#file-rows tr[data-path=\"notes.txt\"] button[aria-label^=Share]")
            .await,
    )
    .await;
    b.click_css("#share-create").await;
    let error = b.text(&b.find("#error").await).await;
    assert!(error.contains("file_path"), "the error names what was wrong: {error}");
    b.screenshot(&shot("error")).await;
}

/// A phone-sized screen: nothing wider than the viewport.
async fn a_phone_sized_screen_fits(b: &Browser, app: &TestApp) {
    b.resize(390, 844).await;
    b.goto(&format!("{}/#open", app.admin)).await;
    b.find("#open-empty").await;
    let overflow = b
        .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways by {overflow} px"
    );
    b.screenshot(&shot("phone")).await;
}

fn millis(t: &serde_json::Value) -> u128 {
    let t = humantime::parse_rfc3339(t.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// A folder bigger than a page shows its first page and a button for the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_big_folder_shows_more_a_page_at_a_time() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    for n in 0..1_005 {
        std::fs::write(app.path("data").join(format!("photo-{n:04}.jpg")), "x").unwrap();
    }
    let b = Browser::start().await;
    b.goto(&app.admin).await;
    b.type_into(&b.find("#token").await, TOKEN).await;
    b.click_css("#login-form button[type=submit]").await;
    b.wait_for(
        "the first page",
        "document.querySelectorAll('#file-rows tr').length === 1000",
    )
    .await;
    let more = b.find("#files-more").await;
    assert_eq!(b.text(&more).await, "Show more (1000 of 1005 shown)");
    b.click(&more).await;
    b.wait_for(
        "the second page",
        "document.querySelectorAll('#file-rows tr').length === 1005",
    )
    .await;
    let last = b
        .script("return document.querySelector('#file-rows tr:last-child').dataset.path")
        .await;
    assert_eq!(last, json!("photo-1004.jpg"));
    assert_eq!(
        b.script("return document.getElementById('files-more').hidden").await,
        json!(true)
    );
}

/// Two files and a folder ticked in the list and shared together as one ZIP: the result gives a
/// `.zip` URL, the archive's size and what was left out; the open link lists the members and shows
/// its CRC-32s being computed, live, until the archive is ready; the download is as long as the
/// link said; and the pages fit a phone.
#[tokio::test(flavor = "multi_thread")]
async fn owner_shares_two_files_and_a_folder_as_one_zip() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN), ("GRACE_PERIOD_SECONDS", "1")]).await;
    app.data_file("a.jpg", 30_000);
    app.data_file("b.jpg", 20_000);
    app.data_file("c.jpg", 10);
    app.data_file("photos/beach.jpg", 40_000);
    // Big enough that hashing takes a moment to watch; sparse, so it costs no disk.
    let raw = app.path("data/photos/scan.raw");
    std::fs::File::create(raw).unwrap().set_len(2 << 30).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(app.path("data/photos/pipe"))
        .status();
    assert!(fifo.unwrap().success(), "mkfifo");
    let b = Browser::start().await;
    log_in(&b, &app).await;

    let url = share_ticked_entries(&b, &app).await;
    let link = app.open().await.remove(0);
    let id = link["tunnel_id"].as_str().unwrap().to_string();
    watch_the_archive_being_prepared(&b, &app, &id).await;
    the_zip_pages_fit_a_phone(&b, &app, &id).await;

    let got = curl(&url, &["-f"]).await;
    assert_eq!((got.exit, got.status), (0, 200));
    assert_eq!(got.body.len() as u64, link["file_size"].as_u64().unwrap());
    assert!(got.body.starts_with(b"PK\x03\x04"), "a ZIP begins with a local header");
    let closed = app.closed(&id, Duration::from_secs(20)).await;
    assert_eq!(closed["close_reason"], "completed");
    a_folder_alone_is_one_zip(&b).await;
}

/// A folder's own Share button shares the folder as one ZIP named after it.
async fn a_folder_alone_is_one_zip(b: &Browser) {
    b.click_css("#file-rows tr[data-path=photos] button[aria-label^=Share]")
        .await;
    let title = b.text(&b.find("#share-title").await).await;
    assert!(title.contains("photos/ as one ZIP"), "{title}");
    b.click_css("#share-create").await;
    let url = b.property(&b.find("#share-url").await, "value").await;
    assert!(url.as_str().unwrap().contains("/photos.zip?t="), "{url}");
    assert!(b.text(&b.find("#share-size").await).await.contains("ZIP archive"));
}

/// Ticks a.jpg, b.jpg and photos/, shares them from the selection bar: the download URL.
async fn share_ticked_entries(b: &Browser, app: &TestApp) -> String {
    b.wait_for(
        "the file list",
        "document.querySelector('#file-rows tr[data-path=\"c.jpg\"]')",
    )
    .await;
    let bar_shown = "return document.getElementById('selection').getClientRects().length > 0";
    assert_eq!(b.script(bar_shown).await, json!(false), "nothing is ticked yet");
    for path in ["a.jpg", "b.jpg", "photos"] {
        b.click_css(&format!("#file-rows tr[data-path=\"{path}\"] td.pick input"))
            .await;
    }
    assert_eq!(b.text(&b.find("#selection-count").await).await, "3 selected");
    b.screenshot(&shot("zip-selection")).await;
    b.click_css("#selection-share").await;
    let title = b.text(&b.find("#share-title").await).await;
    assert!(title.contains("3 items as one ZIP"), "{title}");
    b.click_css("#share-create").await;

    let url = b.property(&b.find("#share-url").await, "value").await;
    let url = url.as_str().unwrap().to_string();
    assert!(url.starts_with(&app.public) && url.contains(".zip?t="), "{url}");
    let size = b.text(&b.find("#share-size").await).await;
    assert!(size.contains("ZIP archive") && size.contains("2.1 GB"), "{size}");
    let skipped = b.text(&b.find("#share-skipped").await).await;
    assert!(
        skipped.contains("photos/pipe") && skipped.contains("not a regular file"),
        "{skipped}"
    );
    b.screenshot(&shot("zip-share-result")).await;
    assert_eq!(
        b.script("return document.querySelectorAll('#file-rows td.pick input:checked').length")
            .await,
        json!(0),
        "the shared selection is cleared"
    );
    assert_eq!(b.script(bar_shown).await, json!(false), "the selection bar is gone");
    url
}

/// The open link's card: a ZIP, its members, and hashing shown as it goes until it is done.
async fn watch_the_archive_being_prepared(b: &Browser, app: &TestApp, id: &str) {
    let card = format!("#open-list li[data-id='{id}']");
    b.click_css("#share-done").await;
    b.find(&card).await;
    // Every text the hashing line shows, as the page changes it.
    b.script(&format!(
        "window.hashingSeen = [];
         const seen = () => {{ const h = document.querySelector(\"{card} .hashing\"); if (h) window.hashingSeen.push(h.textContent); }};
         seen();
         new MutationObserver(seen).observe(document.getElementById('open-list'), {{ childList: true, subtree: true }});"
    ))
    .await;
    b.screenshot(&shot("zip-open-preparing")).await;
    b.click_css(&format!("{card} details.members summary")).await;
    let files = b.text(&b.find(&format!("{card} ul.members")).await).await;
    for name in ["a.jpg", "b.jpg", "photos/beach.jpg", "photos/scan.raw", "2.1 GB"] {
        assert!(files.contains(name), "{name} in {files}");
    }
    assert!(!files.contains("pipe") && !files.contains("c.jpg"), "{files}");
    let zip = b.text(&b.find(&format!("{card} .zip")).await).await;
    assert!(zip.contains("ZIP archive") && zip.contains("4 files"), "{zip}");
    b.wait_for(
        "the archive to be ready",
        &format!("document.querySelector(\"{card} .hashing\")?.textContent === 'Archive ready'"),
    )
    .await;
    let seen = b.script("return window.hashingSeen").await;
    let seen: Vec<&str> = seen.as_array().unwrap().iter().filter_map(|s| s.as_str()).collect();
    assert!(
        seen.iter().any(|s| s.starts_with("Preparing archive: ")),
        "hashing was shown under way: {seen:?}"
    );
    let stats = app.get(&format!("/admin/tunnels/{id}/stats")).await.1;
    let hashing = &stats["tunnel"]["hashing"];
    assert_eq!(hashing["hashed_bytes"], hashing["total_bytes"], "{hashing}");
    assert_eq!(
        b.script(&format!(
            "return document.querySelector(\"{card} details.members\").open"
        ))
        .await,
        json!(true),
        "the members stay unfolded while the card is updated"
    );
    b.screenshot(&shot("zip-open-ready")).await;
}

/// At 390 px wide: the open ZIP link with its members unfolded, and the file list with entries
/// ticked, scroll nowhere sideways.
async fn the_zip_pages_fit_a_phone(b: &Browser, app: &TestApp, id: &str) {
    let overflow = "return document.documentElement.scrollWidth - document.documentElement.clientWidth";
    b.resize(390, 844).await;
    let card = format!("#open-list li[data-id='{id}'] ul.members");
    b.find(&card).await;
    let sideways = b.script(overflow).await;
    assert!(
        sideways.as_i64().unwrap() <= 0,
        "the open list scrolls sideways by {sideways} px"
    );
    b.screenshot(&shot("zip-phone-open")).await;

    b.goto(&format!("{}/#files", app.admin)).await;
    b.click_css("#file-rows tr[data-path=photos] td.pick input").await;
    b.click_css("#file-rows tr[data-path=\"c.jpg\"] td.pick input").await;
    b.find("#selection-share").await;
    let sideways = b.script(overflow).await;
    assert!(
        sideways.as_i64().unwrap() <= 0,
        "the file list scrolls sideways by {sideways} px"
    );
    b.screenshot(&shot("zip-phone-files")).await;
    b.resize(1200, 900).await;
}

/// Creates an upload link through the API: its create response.
async fn upload_link(app: &TestApp, body: serde_json::Value) -> serde_json::Value {
    let (status, v) = app.upload_link(body).await;
    assert_eq!(status, 201, "{v}");
    v
}

/// `size` pseudo-random bytes in a file outside the data dir, as a recipient's own file is.
fn outside_file(dir: &tempfile::TempDir, name: &str, size: usize) -> (PathBuf, Vec<u8>) {
    let bytes = crate::helpers::pseudo_random(size, 0x2545_F491_4F6C_DD1D ^ size as u64);
    let path = dir.path().join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

/// The owner makes an upload link for a folder from Files (size in MB, two files, a preset, a
/// note), gets its URL and QR code, and watches a file sent with `curl -T` arrive on the link's
/// card; History then says what came in.
#[tokio::test(flavor = "multi_thread")]
async fn owner_makes_an_upload_link_and_sees_a_file_arrive() {
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    app.data_file("inbox/old.pdf", 100);
    let b = Browser::start().await;
    log_in(&b, &app).await;

    let (id, url) = make_an_upload_link(&b, &app).await;
    let card = format!("#open-list li[data-id='{id}']");
    b.click_css("#receive-done").await;
    let top = b.text(&b.find(&format!("{card} .top")).await).await;
    assert!(top.contains("Receiving into inbox/"), "{top}");
    let meta = b.text(&b.find(&format!("{card} .meta")).await).await;
    assert!(
        meta.contains("0 of 2 files received") && meta.contains("scans from Sam"),
        "{meta}"
    );
    b.screenshot(&shot("receive-open-empty")).await;

    let sender = tempfile::tempdir().unwrap();
    let (scan, bytes) = outside_file(&sender, "scan-001.pdf", 300_000);
    let sent = curl(&url, &["-T", scan.to_str().unwrap()]).await;
    assert_eq!(
        (sent.exit, sent.status),
        (0, 201),
        "{}",
        String::from_utf8_lossy(&sent.body)
    );
    b.wait_for(
        "the received file on the card",
        &format!("document.querySelector(\"{card} ul.received\")?.textContent.includes('scan-001.pdf')"),
    )
    .await;
    let received = b.text(&b.find(&format!("{card} ul.received")).await).await;
    assert!(received.contains("300.0 KB"), "{received}");
    let meta = b.text(&b.find(&format!("{card} .meta")).await).await;
    assert!(meta.contains("1 of 2 files received"), "{meta}");
    assert!(std::fs::read(app.path("data/inbox/scan-001.pdf")).unwrap() == bytes);
    b.screenshot(&shot("receive-open-received")).await;
    the_upload_card_fits_a_phone(&b).await;

    b.click(&b.find(&format!("{card} button.danger")).await).await;
    b.accept_dialog().await;
    b.wait_for("the card to leave", &format!("!document.querySelector(\"{card}\")"))
        .await;
    assert_eq!(
        app.closed(&id, Duration::from_secs(5)).await["close_reason"],
        "terminated"
    );
    b.click_css("header nav a[data-view=history]").await;
    let row = format!("#history-rows tr[data-id='{id}']");
    let row = b.text(&b.find(&row).await).await;
    assert!(
        row.contains("inbox/") && row.contains("terminated") && row.contains("received 1 file"),
        "{row}"
    );
    b.screenshot(&shot("receive-history")).await;
}

/// Opens the dialog from the inbox folder's row, fills it in and creates the link: its id and
/// upload URL, after checking what the result and the API say about it.
async fn make_an_upload_link(b: &Browser, app: &TestApp) -> (String, String) {
    b.wait_for(
        "the file list",
        "document.querySelector('#file-rows tr[data-path=inbox]')",
    )
    .await;
    b.click_css("#file-rows tr[data-path=inbox] button.receive").await;
    let title = b.text(&b.find("#receive-title").await).await;
    assert!(title.contains("inbox/"), "{title}");
    b.script("document.getElementById('receive-size').value = ''").await;
    b.type_into(&b.find("#receive-size").await, "5").await;
    b.script("document.getElementById('receive-unit').value = '1000000'")
        .await;
    b.script("document.getElementById('receive-files').value = ''").await;
    b.type_into(&b.find("#receive-files").await, "2").await;
    b.click(&b.find("#receive-presets button[data-seconds='900']").await)
        .await;
    b.type_into(&b.find("#receive-note").await, "scans from Sam").await;
    b.screenshot(&shot("receive-dialog")).await;
    b.click_css("#receive-create").await;

    let url = b.property(&b.find("#receive-url").await, "value").await;
    let url = url.as_str().unwrap().to_string();
    assert!(
        url.starts_with(&app.public) && url.contains("/up/") && url.contains("/?t="),
        "{url}"
    );
    let what = b.text(&b.find("#receive-what").await).await;
    assert!(
        what.contains("up to 2 files") && what.contains("5.0 MB") && what.contains("inbox/"),
        "{what}"
    );
    b.wait_for("the QR code", "document.getElementById('receive-qr').naturalWidth > 0")
        .await;
    b.screenshot(&shot("receive-result")).await;

    let open = app.open().await;
    assert_eq!(open.len(), 1, "{open:?}");
    let t = &open[0];
    assert_eq!(
        (&t["kind"], &t["file_path"], &t["note"]),
        (&json!("upload"), &json!("inbox"), &json!("scans from Sam"))
    );
    assert_eq!(t["upload"]["max_files"], 2, "{t}");
    assert_eq!(t["upload"]["max_bytes"], 5_000_000, "{t}");
    let expires = millis(&t["expires_at"]) - millis(&t["created_at"]);
    assert!(
        (899_000..=901_000).contains(&expires),
        "the 15 min preset gave {expires} ms"
    );
    (t["tunnel_id"].as_str().unwrap().to_string(), url)
}

/// At 390 px wide the open list with an upload link's card scrolls nowhere sideways.
async fn the_upload_card_fits_a_phone(b: &Browser) {
    b.resize(390, 844).await;
    b.find("#open-list ul.received").await;
    let sideways = b
        .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert!(
        sideways.as_i64().unwrap() <= 0,
        "the open list scrolls sideways by {sideways} px"
    );
    b.screenshot(&shot("receive-phone-open")).await;
    b.resize(1200, 900).await;
}

/// A recipient opens the upload URL, chooses a 40 MB file, and ferry is killed and started again
/// while it is on its way: the page waits, asks the server how far it got, continues from there
/// and says the file was received; the file in the folder is the one sent, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_recipient_uploads_through_the_page_and_resumes_after_a_drop() {
    let mut app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", TOKEN)]).await;
    std::fs::create_dir(app.path("data/inbox")).unwrap();
    let created = upload_link(&app, json!({"folder": "inbox", "max_bytes": 100_000_000})).await;
    let id = created["tunnel_id"].as_str().unwrap().to_string();
    let url = created["upload_url"].as_str().unwrap().to_string();
    let sender = tempfile::tempdir().unwrap();
    let (movie, bytes) = outside_file(&sender, "holiday.mkv", 40_000_000);

    let b = Browser::start().await;
    b.goto(&url).await;
    let title = b.text(&b.find("h1").await).await;
    assert_eq!(title, "Send files");
    b.screenshot(&shot("upload-page")).await;
    // Slow enough that the upload is still going when ferry is killed.
    b.limit_uploads(8_000_000).await;
    b.choose_files("#file", &[&movie]).await;
    let row = "document.querySelector('#uploads li')";
    b.wait_for(
        "the upload under way",
        &format!(
            "(() => {{ const p = {row}?.querySelector('progress'); return p && p.value > 0 && p.value < p.max; }})()"
        ),
    )
    .await;
    b.screenshot(&shot("upload-progress")).await;

    app.kill9().await;
    b.wait_for(
        "the page to wait and retry",
        &format!("{row}.dataset.state === 'retrying'"),
    )
    .await;
    b.screenshot(&shot("upload-retrying")).await;
    app.start().await;
    b.wait_for_within(
        "the upload to finish",
        &format!("{row}.dataset.state === 'done'"),
        Duration::from_secs(60),
    )
    .await;
    let status = b.text(&b.find("#uploads li .status").await).await;
    assert_eq!(status, "Received ✓");
    b.screenshot(&shot("upload-done")).await;

    let got = std::fs::read(app.path("data/inbox/holiday.mkv")).expect("the file is in the folder");
    assert!(got == bytes, "the received file is the one sent");
    let visible: Vec<String> = std::fs::read_dir(app.path("data/inbox"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(visible, ["holiday.mkv"], "nothing else shows in the folder");
    let closed = app.closed(&id, Duration::from_secs(10)).await;
    assert_eq!(closed["close_reason"], "completed", "{closed}");
    assert_eq!(closed["files"][0]["name"], "holiday.mkv", "{closed}");
    let kept = b
        .script("return Object.keys(localStorage).filter((k) => k.startsWith('ferry-upload:')).length")
        .await;
    assert_eq!(kept, json!(0), "a finished upload is forgotten by the browser");
    the_upload_page_fits_a_phone(&b).await;
}

/// At 390 px wide the upload page, with a file's row, scrolls nowhere sideways.
async fn the_upload_page_fits_a_phone(b: &Browser) {
    b.resize(390, 844).await;
    let sideways = b
        .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert!(
        sideways.as_i64().unwrap() <= 0,
        "the upload page scrolls sideways by {sideways} px"
    );
    b.screenshot(&shot("upload-phone")).await;
}

/// The share dialog offers expiry presets up to a maximum of eight days and takes a password;
/// the link's own page copies its URL, shows its QR code and follows its requests and clients
/// live; it shows the API's refusal of too few downloads, moves the expiry by a step and to a
/// chosen time, sets and removes the password, caps the bandwidth, gives the link a new URL and
/// ends it, and fits a phone. The upload-link dialog takes a password too.
#[tokio::test(flavor = "multi_thread")]
async fn owner_edits_a_password_link_from_its_page() {
    let app = TestApp::spawn_with(&[
        ("FERRY_ADMIN_TOKEN", TOKEN),
        ("MAX_TUNNEL_SECONDS", "691200"),
        ("FERRY_DEFAULT_EXPIRES_SECONDS", "3600"),
    ])
    .await;
    let report = app.data_file("docs/report.pdf", 250_000);
    std::fs::create_dir(app.path("data/inbox")).unwrap();
    let b = Browser::start().await;
    log_in(&b, &app).await;

    let (id, url) = share_with_a_password(&b, &app).await;
    open_the_link_page(&b, &app, &id, &url).await;
    watch_requests_and_clients(&b, &app, &id, &url, &report).await;
    page_edits(&b, &app, &id, &url).await;
    let new_url = page_rotates(&b, &app, &id, &url).await;
    the_link_page_fits_a_phone(&b).await;
    page_ends_the_link(&b, &app, &id, &new_url).await;
    the_receive_dialog_takes_a_password(&b, &app).await;
}

/// Shares docs/report.pdf for 15 minutes, three downloads, at most 100 KB/s (so that a download
/// is seen under way), with a password: its id and URL, after checking the presets offered and
/// that curl needs the password.
async fn share_with_a_password(b: &Browser, app: &TestApp) -> (String, String) {
    b.wait_for(
        "the file list",
        "document.querySelector('#file-rows tr[data-path=docs]')",
    )
    .await;
    b.click_css("#file-rows tr[data-path=docs] button").await;
    b.click_css("#file-rows tr[data-path=\"docs/report.pdf\"] button[aria-label^=Share]")
        .await;
    b.find("#expiry-presets button").await;
    let presets = b
        .script("return [...document.querySelectorAll('#expiry-presets button')].map(b => [b.dataset.seconds, b.textContent, b.getAttribute('aria-pressed')])")
        .await;
    assert_eq!(
        presets,
        json!([
            ["900", "15 min", "false"],
            ["3600", "1 hour", "true"],
            ["86400", "1 day", "false"],
            ["604800", "7 days", "false"],
            ["691200", "8 days (longest)", "false"]
        ]),
        "the presets up to MAX_TUNNEL_SECONDS, the default chosen"
    );
    b.click_css("#expiry-presets button[data-seconds='900']").await;
    b.script("document.getElementById('max-downloads').value = ''").await;
    b.type_into(&b.find("#max-downloads").await, "3").await;
    b.type_into(&b.find("#rate").await, "100").await;
    b.type_into(&b.find("#share-password").await, "open sesame").await;
    b.click_css("#share-password-show").await;
    b.screenshot(&shot("share-dialog-password")).await;
    b.click_css("#share-create").await;
    let url = b.property(&b.find("#share-url").await, "value").await;
    let url = url.as_str().unwrap().to_string();
    let what = b.text(&b.find("#share-what").await).await;
    assert!(what.contains("3 times") && what.contains("the password"), "{what}");
    b.screenshot(&shot("share-result-password")).await;

    let t = app.open().await.remove(0);
    assert_eq!(
        (&t["password"], &t["max_downloads"], &t["rate_limit_bytes_per_second"]),
        (&json!(true), &json!(3), &json!(100_000)),
        "{t}"
    );
    let expires = millis(&t["expires_at"]) - millis(&t["created_at"]);
    assert!(
        (899_000..=901_000).contains(&expires),
        "the 15 min preset gave {expires} ms"
    );
    assert_eq!(curl(&url, &["-I"]).await.status, 401, "no password");
    assert_eq!(curl(&url, &["-I", "-u", ":open sesame"]).await.status, 200);
    (t["tunnel_id"].as_str().unwrap().to_string(), url)
}

/// From the result to the open list, and from the link's name on its card to its page, which shows
/// the URL and the QR code and copies the URL.
async fn open_the_link_page(b: &Browser, app: &TestApp, id: &str, url: &str) {
    b.click_css("#share-done").await;
    b.click_css(&format!("#open-list li[data-id='{id}'] a.page")).await;
    b.wait_for("the link page", &format!("location.hash === '#/links/{id}'"))
        .await;
    let shown = b.property(&b.find("#link-url").await, "value").await;
    assert_eq!(shown, json!(url), "the page shows the link's URL");
    b.wait_for("the QR code", "document.getElementById('link-qr').naturalWidth > 0")
        .await;
    let qr = app.get(&format!("/admin/tunnels/{id}/qr.svg")).await;
    assert_eq!(qr.0, 200);

    // The clipboard is the browser's own: reading it needs the permission and a focused page.
    b.cdp(
        "Browser.grantPermissions",
        json!({"origin": app.admin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]}),
    )
    .await;
    b.cdp("Emulation.setFocusEmulationEnabled", json!({"enabled": true}))
        .await;
    b.click_css("#link-copy").await;
    b.wait_for(
        "the copy to be done",
        "document.getElementById('link-copy').textContent === 'Copied'",
    )
    .await;
    let selected = b
        .script(
            "const i = document.getElementById('link-url'); return i.value.substring(i.selectionStart, i.selectionEnd)",
        )
        .await;
    assert_eq!(selected, json!(url), "the URL is selected, to copy by hand if need be");
    let clipboard = b
        .cdp(
            "Runtime.evaluate",
            json!({"expression": "navigator.clipboard.readText()", "awaitPromise": true}),
        )
        .await;
    assert_eq!(clipboard["result"]["value"], json!(url), "{clipboard}");
    b.screenshot(&shot("link-page")).await;
}

/// Two downloads with the password, each taking a few seconds at the link's cap: the page lists
/// the requests and the clients as they happen, without being reloaded.
async fn watch_requests_and_clients(b: &Browser, app: &TestApp, id: &str, url: &str, report: &[u8]) {
    let u = url.to_string();
    let slow = tokio::spawn(async move { curl(&u, &["-u", ":open sesame", "-A", "slow-reader/1.0"]).await });
    b.wait_for(
        "a request under way",
        "[...document.querySelectorAll('#link-requests tr.running')].some(r => r.textContent.includes('slow-reader/1.0'))",
    )
    .await;
    b.screenshot(&shot("link-page-sending")).await;
    let got = slow.await.unwrap();
    assert!(got.status == 200 && got.body == report, "the slow download");
    downloads_completed(app, id, 1).await;
    let got = curl(url, &["-u", ":open sesame", "-A", "second-reader/2.0"]).await;
    assert!(got.status == 200 && got.body == report, "the second download");
    b.wait_for(
        "both clients",
        "['slow-reader/1.0', 'second-reader/2.0'].every(ua => document.getElementById('link-clients').textContent.includes(ua))",
    )
    .await;
    b.wait_for(
        "both requests ended",
        "!document.querySelector('#link-requests tr.running') && ['slow-reader/1.0', 'second-reader/2.0'].every(ua => document.getElementById('link-requests').textContent.includes(ua))",
    )
    .await;
    let requests = b.text(&b.find("#link-requests").await).await;
    assert!(
        requests.contains("GET from 127.0.0.1") && requests.contains("200"),
        "{requests}"
    );
    b.wait_for(
        "the count of downloads",
        "document.getElementById('link-meta').textContent.includes('2/3 downloads')",
    )
    .await;
}

/// Downloads: fewer than are done is refused with the API's message; more is saved. Expiry: a
/// step, then a chosen time. Password: removed (HEAD needs none), then a new one. Bandwidth: capped.
async fn page_edits(b: &Browser, app: &TestApp, id: &str, url: &str) {
    let stats = async || app.get(&format!("/admin/tunnels/{id}/stats")).await.1["tunnel"].clone();
    set_value(b, "#link-downloads", "1").await;
    b.click_css("#link-downloads-form button[type=submit]").await;
    let error = b.text(&b.find("#link-error").await).await;
    assert!(error.contains("max_downloads: must be at least 2"), "{error}");
    b.screenshot(&shot("link-page-refused")).await;
    set_value(b, "#link-downloads", "5").await;
    b.click_css("#link-downloads-form button[type=submit]").await;
    b.wait_for(
        "5 downloads",
        "document.getElementById('link-meta').textContent.includes('2/5 downloads')",
    )
    .await;
    assert!(b.script("return document.getElementById('link-error').hidden").await == true);

    let before = millis(&stats().await["expires_at"]);
    b.click_css("#link-steps button[data-seconds='3600']").await;
    b.wait_for(
        "the expiry moved",
        "document.getElementById('link-said').textContent.startsWith('Expires')",
    )
    .await;
    assert_eq!(millis(&stats().await["expires_at"]) - before, 3_600_000, "+1 hour");
    let chosen = b
        .script(
            "const d = new Date(Date.now() + 3 * 86400000); d.setSeconds(0, 0);
             const p = (n) => String(n).padStart(2, '0');
             document.getElementById('link-expires-at').value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
             return d.getTime()",
        )
        .await;
    b.click_css("#link-expires-form button[type=submit]").await;
    let chosen = chosen.as_u64().unwrap() as u128;
    crate::helpers::eventually(Duration::from_secs(5), "the chosen expiry", async || {
        millis(&stats().await["expires_at"]) == chosen
    })
    .await;

    b.click_css("#link-password-clear").await;
    b.wait_for(
        "no password",
        "document.getElementById('link-password-state').textContent === '(none)'",
    )
    .await;
    assert_eq!(curl(url, &["-I"]).await.status, 200, "no password needed");
    set_value(b, "#link-password", "second").await;
    b.click_css("#link-password-form button[type=submit]").await;
    b.wait_for(
        "a password",
        "document.getElementById('link-password-state').textContent === '(one is set)'",
    )
    .await;
    assert_eq!(curl(url, &["-I"]).await.status, 401);
    assert_eq!(curl(url, &["-I", "-u", ":second"]).await.status, 200);

    set_value(b, "#link-rate", "500").await;
    b.click_css("#link-rate-form button[type=submit]").await;
    b.wait_for(
        "the cap",
        "document.getElementById('link-said').textContent.includes('500.0 KB/s')",
    )
    .await;
    assert_eq!(stats().await["rate_limit_bytes_per_second"], 500_000);
    b.screenshot(&shot("link-page-edited")).await;
}

/// New URL: the page shows it and its QR code; the old URL gets 444, the new one the file's
/// headers. The new URL.
async fn page_rotates(b: &Browser, app: &TestApp, id: &str, url: &str) -> String {
    let qr_before = b.script("return document.getElementById('link-qr').src").await;
    b.click_css("#link-rotate").await;
    b.accept_dialog().await;
    b.wait_for(
        "the new URL",
        &format!("document.getElementById('link-url').value !== {}", json!(url)),
    )
    .await;
    let new_url = b.property(&b.find("#link-url").await, "value").await;
    let new_url = new_url.as_str().unwrap().to_string();
    assert!(new_url.contains(&format!("/s/{id}/report.pdf?t=")), "{new_url}");
    assert_eq!(
        new_url,
        app.get(&format!("/admin/tunnels/{id}/stats")).await.1["download_url"]
    );
    assert_ne!(
        b.script("return document.getElementById('link-qr').src").await,
        qr_before
    );
    b.wait_for(
        "the new QR code",
        "document.getElementById('link-qr').complete && document.getElementById('link-qr').naturalWidth > 0",
    )
    .await;
    let said = b.text(&b.find("#link-said").await).await;
    assert!(said.contains("old one no longer works"), "{said}");
    assert_eq!(
        curl(url, &["-I", "-u", ":second"]).await.exit,
        EMPTY_REPLY,
        "the old URL"
    );
    assert_eq!(
        curl(&new_url, &["-I", "-u", ":second"]).await.status,
        200,
        "the new URL"
    );
    b.screenshot(&shot("link-page-rotated")).await;
    new_url
}

/// At 390 px wide the link's page scrolls nowhere sideways.
async fn the_link_page_fits_a_phone(b: &Browser) {
    b.resize(390, 844).await;
    b.find("#link-url").await;
    let sideways = b
        .script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert!(
        sideways.as_i64().unwrap() <= 0,
        "the link page scrolls sideways by {sideways} px"
    );
    b.screenshot(&shot("link-page-phone")).await;
    b.script("window.scrollTo(0, document.body.scrollHeight)").await;
    b.screenshot(&shot("link-page-phone-end")).await;
    b.resize(1200, 900).await;
}

/// End now: the page says the link closed, and the URL gets 444.
async fn page_ends_the_link(b: &Browser, app: &TestApp, id: &str, url: &str) {
    b.script("window.scrollTo(0, 0)").await;
    b.click_css("#link-end").await;
    b.accept_dialog().await;
    b.wait_for(
        "the closed link",
        "document.getElementById('link-meta').textContent.startsWith('Closed (terminated)')",
    )
    .await;
    assert_eq!(
        b.script("return document.getElementById('link-change').hidden && document.getElementById('link-live').hidden")
            .await,
        json!(true),
        "a closed link offers no changes"
    );
    assert_eq!(
        app.closed(id, Duration::from_secs(5)).await["close_reason"],
        "terminated"
    );
    assert_eq!(curl(url, &["-I", "-u", ":second"]).await.exit, EMPTY_REPLY);
    b.screenshot(&shot("link-page-ended")).await;
}

/// The upload-link dialog's password reaches the link.
async fn the_receive_dialog_takes_a_password(b: &Browser, app: &TestApp) {
    b.click_css("header nav a[data-view=files]").await;
    b.click_css("#crumbs button").await;
    b.click_css("#file-rows tr[data-path=inbox] button.receive").await;
    b.type_into(&b.find("#receive-password").await, "drop it here").await;
    b.screenshot(&shot("receive-dialog-password")).await;
    b.click_css("#receive-create").await;
    let what = b.text(&b.find("#receive-what").await).await;
    assert!(what.contains("and the password"), "{what}");
    let t = app.open().await.remove(0);
    assert_eq!((&t["kind"], &t["password"]), (&json!("upload"), &json!(true)), "{t}");
}

/// Replaces the value of the input `css` with `text`, typed as a person would.
async fn set_value(b: &Browser, css: &str, text: &str) {
    let input = b.find(css).await;
    b.script(&format!("document.querySelector({}).value = ''", json!(css)))
        .await;
    b.type_into(&input, text).await;
}

/// Waits until link `id` counts `n` complete downloads (its access-log lines are settled).
async fn downloads_completed(app: &TestApp, id: &str, n: u64) {
    crate::helpers::eventually(Duration::from_secs(10), "the download is counted", async || {
        app.get(&format!("/admin/tunnels/{id}/stats")).await.1["tunnel"]["downloads_completed"] == n
    })
    .await;
}
