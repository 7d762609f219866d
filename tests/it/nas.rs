//! A NAS as it really is: a data dir that is a symlink, a mount that goes away and comes back,
//! a state disk that fills up, names that are not UTF-8, files that grow while shared, and
//! folders of a hundred thousand entries. The mounts are real tmpfs mounts (the tests run as
//! root, as CI does).

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{EMPTY_REPLY, SmallDisk, TestApp, curl, eventually};

fn url(v: &Value) -> String {
    v["download_url"].as_str().unwrap().to_string()
}

fn id(v: &Value) -> String {
    v["tunnel_id"].as_str().unwrap().to_string()
}

fn bytes(size: usize, seed: u64) -> Vec<u8> {
    crate::helpers::pseudo_random(size, seed)
}

async fn health(app: &TestApp) -> (u16, Value) {
    app.get("/health").await
}

/// The usual NAS layout: `NAS_MOUNT_PATH` is a symlink to the pool's folder.
#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_data_dir_lists_and_shares() {
    let pool = tempfile::tempdir().unwrap();
    let share = pool.path().join("pool/share");
    std::fs::create_dir_all(share.join("films")).unwrap();
    let body = bytes(300_000, 1);
    std::fs::write(share.join("films/holiday.mkv"), &body).unwrap();
    let srv = pool.path().join("srv-share");
    std::os::unix::fs::symlink(&share, &srv).unwrap();
    let app = TestApp::spawn_with(&[("NAS_MOUNT_PATH", srv.to_str().unwrap()), ("GRACE_PERIOD_SECONDS", "0")]).await;

    let (status, list) = app.get("/api/files?path=films").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["entries"][0]["path"], "films/holiday.mkv", "{list}");
    let link = app.link("films/holiday.mkv").await;
    let r = curl(&url(&link), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "the download differs from the file");
    let t = app.closed(&id(&link), Duration::from_secs(10)).await;
    assert_eq!(t["close_reason"], "completed", "{t}");
    // Still nothing outside the data dir, through the symlink or not.
    std::fs::write(pool.path().join("secret"), "no").unwrap();
    std::os::unix::fs::symlink("../../secret", share.join("out")).unwrap();
    let (status, v) = app.create(json!({"file_path": "out"})).await;
    assert_eq!(status, 400, "{v}");
}

/// The data dir's disk goes away under open links: each closes as `error` saying why (at its
/// next request, or within the file watch's interval without one), `/health` says so, and the
/// disk mounted again is used without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_unmounted_data_dir_closes_its_links_and_its_return_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("nas"), "8m");
    let body = bytes(200_000, 2);
    std::fs::write(disk.0.join("a.bin"), &body).unwrap();
    std::fs::write(disk.0.join("b.bin"), &body).unwrap();
    let app = TestApp::spawn_with(&[("NAS_MOUNT_PATH", disk.0.to_str().unwrap())]).await;
    assert_eq!(health(&app).await.1["components"]["data_dir"]["status"], "ok");
    let asked = app.link("a.bin").await;
    let quiet = app.link("b.bin").await;

    // A plain umount: ferry (and its nginx) keep nothing open on the data dir.
    disk.unmount();
    let r = curl(&url(&asked), &[]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0), "444 once the disk is gone");
    let t = app.closed(&id(&asked), Duration::from_secs(5)).await;
    assert_eq!(t["close_reason"], "error", "{t}");
    let why = t["close_detail"].as_str().unwrap_or_default();
    assert!(why.starts_with("data dir unavailable"), "{t}");
    // Nobody asks for the other link: the file watch closes it.
    let t = app.closed(&id(&quiet), Duration::from_secs(15)).await;
    assert_eq!(t["close_reason"], "error", "{t}");
    assert!(
        t["close_detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("data dir unavailable"),
        "{t}"
    );
    assert!(app.tunnel_dir_gone(&id(&quiet)).await);

    let (status, h) = health(&app).await;
    assert_eq!((status, h["status"].as_str()), (200, Some("degraded")), "{h}");
    assert_eq!(h["components"]["data_dir"]["status"], "degraded", "{h}");
    assert!(
        h["components"]["data_dir"]["detail"]
            .as_str()
            .unwrap()
            .contains("nothing is mounted"),
        "{h}"
    );
    let (status, v) = app.create(json!({"file_path": "a.bin"})).await;
    assert_eq!(status, 503, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("data dir unavailable"), "{v}");
    assert_eq!(v["details"]["component"], "data_dir", "{v}");
    let (status, v) = app.get("/api/files").await;
    assert_eq!(status, 503, "{v}");

    // Back again, with the same file on it: listed, shared and served without a restart.
    disk.mount_again("8m");
    std::fs::write(disk.0.join("a.bin"), &body).unwrap();
    let (status, h) = health(&app).await;
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")), "{h}");
    let (_, list) = app.get("/api/files").await;
    assert_eq!(list["entries"][0]["name"], "a.bin", "{list}");
    let again = app.link("a.bin").await;
    let r = curl(&url(&again), &[]).await;
    assert!(r.status == 200 && r.body == body, "the remounted file was not served");
}

/// ferry started before the disk was mounted (a boot order systemd makes easy to get wrong):
/// it serves the empty mount point, and then the disk, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_mounted_after_ferry_started_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let mount_point = dir.path().join("nas");
    std::fs::create_dir_all(&mount_point).unwrap();
    let app = TestApp::spawn_with(&[("NAS_MOUNT_PATH", mount_point.to_str().unwrap())]).await;
    let (_, list) = app.get("/api/files").await;
    assert_eq!(list["entries"], json!([]), "{list}");

    let disk = SmallDisk::mount(mount_point, "8m");
    let body = bytes(100_000, 3);
    std::fs::write(disk.0.join("late.bin"), &body).unwrap();
    let (_, list) = app.get("/api/files").await;
    assert_eq!(list["entries"][0]["path"], "late.bin", "{list}");
    let link = app.link("late.bin").await;
    let r = curl(&url(&link), &[]).await;
    assert!(
        r.status == 200 && r.body == body,
        "the file on the disk mounted late was not served"
    );
}

/// The state dir's disk fills up: the store is down (503, `/health` down) while it cannot write,
/// comes back by itself once there is room, and nothing it had committed is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_disk_takes_the_store_down_until_there_is_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("statedisk"), "8m");
    let state = disk.0.join("state");
    let mut app = TestApp::spawn_with(&[("FERRY_STATE_DIR", state.to_str().unwrap())]).await;
    app.data_file("doc.bin", 1_000);
    let mut kept = vec![];
    for _ in 0..3 {
        kept.push(id(&app.link("doc.bin").await));
    }

    disk.fill();
    // Each creation writes more of the store; one finds the disk full.
    let mut refused = None;
    for _ in 0..200 {
        let (status, v) = app.create(json!({"file_path": "doc.bin"})).await;
        match status {
            201 => kept.push(id(&v)),
            _ => {
                refused = Some((status, v));
                break;
            }
        }
    }
    let (status, v) = refused.expect("no creation failed on a full disk");
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"], "state store unavailable", "{v}");
    let (status, h) = health(&app).await;
    assert_eq!(
        (status, &h["components"]["store"]["status"]),
        (503, &json!("down")),
        "{h}"
    );

    disk.free();
    eventually(Duration::from_secs(10), "the store is back", async || {
        health(&app).await.0 == 200
    })
    .await;
    assert_eq!(health(&app).await.1["components"]["store"]["status"], "ok");
    kept.push(id(&app.link("doc.bin").await));
    // The link whose creation failed never got a URL, and its record says so.
    let unstored: Vec<Value> = app
        .history()
        .await
        .into_iter()
        .filter(|t| {
            t["close_detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("the link could not be stored"))
        })
        .collect();
    assert_eq!(unstored.len(), 1, "{unstored:?}");
    assert_eq!(unstored[0]["close_reason"], "error");

    // Everything it said was made is there, in memory and on disk.
    let open: Vec<String> = app.open().await.iter().map(id).collect();
    for k in &kept {
        assert!(open.contains(k), "link {k} is gone");
    }
    app.stop().await;
    app.start().await;
    let open: Vec<String> = app.open().await.iter().map(id).collect();
    for k in &kept {
        assert!(open.contains(k), "link {k} did not survive a restart");
    }
    assert!(!app.log().contains("Previous I/O error"), "{}", app.log());
}

/// Linux names are bytes. A name that is not UTF-8 (Latin-1 here, as old Samba shares wrote
/// them) is listed readably with an exact path, shared by that path, served under a readable
/// name, and named so in the link's record.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_that_is_not_utf8_is_listed_shared_and_served() {
    let app = TestApp::spawn().await;
    let body = bytes(50_000, 4);
    let name = std::ffi::OsStr::from_bytes(b"Men\xfc caf\xe9.pdf");
    std::fs::create_dir_all(app.path("data/old")).unwrap();
    std::fs::write(app.path("data/old").join(name), &body).unwrap();

    let (status, list) = app.get("/api/files?path=old").await;
    assert_eq!(status, 200, "{list}");
    let e = &list["entries"][0];
    assert_eq!(e["name"], "Men%FC caf%E9.pdf", "{list}");
    assert_eq!(e["path"], "old/Men\\xFC caf\\xE9.pdf", "{list}");
    let (_, found) = app.get("/api/files?q=caf%25e9").await;
    assert_eq!(found["entries"][0]["path"], e["path"], "{found}");

    let link = app.link(e["path"].as_str().unwrap()).await;
    assert_eq!(link["file_path"], "old/Men\\xFC caf\\xE9.pdf", "{link}");
    assert!(url(&link).contains("/Men%FC%20caf%E9.pdf?t="), "{link}");
    let (_, stats) = app.get(&format!("/admin/tunnels/{}/stats", id(&link))).await;
    assert_eq!(stats["tunnel"]["file_path"], "old/Men\\xFC caf\\xE9.pdf", "{stats}");

    let head = curl(&url(&link), &["-I"]).await;
    assert_eq!(head.status, 200);
    let out = tempfile::tempdir().unwrap();
    let o = tokio::process::Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", &url(&link)])
        .output()
        .await
        .unwrap();
    let headers = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(
        headers.contains(
            "content-disposition: attachment; filename=\"men%fc caf%e9.pdf\"; filename*=iso-8859-1''men%fc%20caf%e9.pdf"
        ),
        "{headers}"
    );
    // That was the download; a second one under its name is refused, so check the bytes with a
    // link of its own, saved where `curl -OJ` puts it.
    let second = app.link(e["path"].as_str().unwrap()).await;
    let o = tokio::process::Command::new("curl")
        .args(["-sS", "-OJ", &url(&second)])
        .current_dir(out.path())
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let saved = std::fs::read(out.path().join("Men%FC caf%E9.pdf")).expect("saved under its readable name");
    assert!(saved == body, "the download differs from the file");
}

/// A file written while its link is open (a recording, a copy still under way): the recipient
/// gets the bytes of the file as it was shared or nothing, never a mix, and the link closes as
/// `error` at its next request or, with nobody asking, within the file watch's interval.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_grows_closes_its_link_and_never_mixes_versions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let original = app.data_file("rec.ts", 16_000_000);
    let link = app
        .create(json!({"file_path": "rec.ts", "rate_limit_bytes_per_second": 4_000_000}))
        .await
        .1;
    let u = url(&link);
    let rest = u.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ferry-test\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    // A first megabyte, then the file grows by bytes of another version.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < 1_000_000 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let newer = bytes(4_000_000, 5);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(app.path("data/rec.ts"))
        .unwrap();
    std::io::Write::write_all(&mut f, &newer).unwrap();
    drop(f);
    let started = std::time::Instant::now();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        assert!(started.elapsed() < Duration::from_secs(30), "the response never ended");
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    let received = &got[head_end..];
    assert!(head.contains("content-length: 16000000"), "{head}");
    assert!(
        received.len() <= original.len() && received == &original[..received.len()],
        "the recipient got bytes that are not the shared file's"
    );
    // Resuming where it stopped would mix versions: refused.
    let r = curl(&u, &["-r", "1000000-"]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0));
    let t = app.closed(&id(&link), Duration::from_secs(10)).await;
    assert_eq!(t["close_reason"], "error", "{t}");
    assert_eq!(t["close_detail"], "the shared file changed or was replaced", "{t}");

    // Another link, and nobody asks for it: the file watch closes it all the same.
    app.data_file("log.txt", 10_000);
    let quiet = app.link("log.txt").await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(app.path("data/log.txt"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"one more line\n").unwrap();
    let t = app.closed(&id(&quiet), Duration::from_secs(15)).await;
    assert_eq!(
        (&t["close_reason"], &t["close_detail"]),
        (&json!("error"), &json!("the shared file changed or was replaced")),
        "{t}"
    );
    let r = curl(&url(&quiet), &[]).await;
    assert_eq!((r.exit, r.body.len()), (EMPTY_REPLY, 0));
}

/// A folder of 100,001 entries is listed a page at a time, every entry once and in order, and a
/// search through it answers with what it found.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_of_a_hundred_thousand_entries_is_listed_in_pages() {
    let app = TestApp::spawn().await;
    let big = app.path("data/camera");
    std::fs::create_dir_all(big.join("sub")).unwrap();
    for n in 0..100_000 {
        std::fs::File::create(big.join(format!("IMG_{n:06}.JPG"))).unwrap();
    }
    let (status, first) = app.get("/api/files?path=camera&limit=10000").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["total"], 100_001, "{}", first["total"]);
    assert_eq!(first["entries"][0]["name"], "sub", "folders come first");
    assert_eq!(first["entries"][1]["name"], "IMG_000000.JPG");
    let mut offset = 0u64;
    let mut seen = 0;
    let mut last = String::new();
    for _ in 0..20 {
        let (_, page) = app
            .get(&format!("/api/files?path=camera&limit=10000&offset={offset}"))
            .await;
        for e in page["entries"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap().to_string();
            if name != "sub" {
                assert!(name > last, "{name} came after {last}");
                last = name;
            }
            seen += 1;
        }
        match page["next_offset"].as_u64() {
            Some(next) => offset = next,
            None => break,
        }
    }
    assert_eq!(seen, 100_001);
    // Without a limit a page holds 1,000 entries.
    let (_, page) = app.get("/api/files?path=camera").await;
    assert_eq!(
        (page["entries"].as_array().unwrap().len(), &page["next_offset"]),
        (1000, &json!(1000))
    );
    let (status, v) = app.get("/api/files?path=camera&limit=0").await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap().starts_with("limit:"), "{v}");
    let (status, v) = app.get("/api/files?path=camera&offset=-1").await;
    assert!(
        status == 400 && v["error"].as_str().unwrap().starts_with("offset:"),
        "{v}"
    );

    let (status, found) = app.get("/api/files?q=img_09999").await;
    assert_eq!(status, 200, "{found}");
    let names: Vec<&str> = found["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 10, "{names:?}");
    assert_eq!(found["truncated"], false);
    let (_, many) = app.get("/api/files?q=IMG").await;
    assert_eq!(
        (many["entries"].as_array().unwrap().len(), &many["truncated"]),
        (500, &json!(true))
    );
}
