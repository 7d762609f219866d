//! The OpenAPI document against the running server, checked by schemathesis: no 5xx, and every
//! response (status, content type, headers, body) as the document says.

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_the_server_true_to_its_document() {
    let token = "schemathesis-admin-token";
    let app = TestApp::spawn_with(&[("FERRY_ADMIN_TOKEN", token)]).await;
    app.data_file("big file.bin", 10_000);
    app.data_file("docs/a.txt", 10);
    let (status, doc) = app.get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let out = tokio::process::Command::new("st")
        .arg("run")
        .arg(format!("{}/api/openapi.json", app.admin))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // A valid-looking request can still be refused by rules no schema states (the file must
        // exist); a closed link's stats stay readable by design.
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        // An endless event stream.
        .args(["--exclude-path", "/admin/events"])
        .args(["-n", "25", "--seed", "1", "--request-timeout", "10"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .expect("schemathesis (`st`) is installed: script/test installs it with pip");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    assert!(!app.log().contains(token));
}
