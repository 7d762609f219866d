//! The Debian package (`cargo deb`), installed with `dpkg -i` into a fresh Debian container (the
//! stand-in `debian:bookworm-slim`, from the cached debootstrap root), with its dependency on
//! nginx taken from Debian's mirror by apt. systemd does not run in the container, so the test
//! starts `ferry serve` as the installed unit says (its user, group, environment file, working
//! and state directory, command) and shares a file from inside the container.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::stand_ins;

/// A container, removed with everything in it when dropped.
struct Container(String);

impl Container {
    fn start(image: &str) -> Container {
        let name = format!("ferry-deb-{}", std::process::id());
        let c = Container(name.clone());
        let out = docker(&["run", "-d", "--name", &name, image, "sleep", "infinity"]);
        assert!(out.status.success(), "docker run: {}", text(&out.stderr));
        c
    }

    fn sh(&self, script: &str) -> Output {
        docker(&["exec", &self.0, "sh", "-c", script])
    }

    /// Runs `script`, panicking with its output when it fails; returns its standard output.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "{script}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn copy_in(&self, from: &Path, to: &str) {
        let out = docker(&["cp", from.to_str().unwrap(), &format!("{}:{to}", self.0)]);
        assert!(out.status.success(), "docker cp: {}", text(&out.stderr));
    }

    /// The uid and command line of each process in the container.
    fn processes(&self) -> Vec<(String, String)> {
        let out = docker(&["top", &self.0, "-eo", "uid,pid,args"]);
        text(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let uid = f.next()?.to_string();
                f.next()?;
                Some((uid, f.collect::<Vec<_>>().join(" ")))
            })
            .collect()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("docker is installed")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Builds the package with `cargo deb` from this run's ferry binary (packaging only: the
/// release build `cargo deb` would run is the same program), into `dir`.
fn build_package(dir: &Path) -> std::path::PathBuf {
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_ferry"), target.join("release/ferry")).unwrap();
    let deb = dir.join("ferry.deb");
    let out = Command::new(env!("CARGO"))
        .args(["deb", "--no-build", "--strip", "--fast", "--output"])
        .arg(&deb)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb (script/test installs it: cargo install cargo-deb --locked --no-default-features): {}",
        text(&out.stderr)
    );
    deb
}

/// One directive's value in a unit file's text.
fn directive<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .trim()
}

#[test]
fn the_debian_package_installs_and_shares_as_the_user_ferry() {
    let _images = stand_ins::stack();
    let dir = tempfile::tempdir().unwrap();
    let deb = build_package(dir.path());
    let c = Container::start("debian:bookworm-slim");
    c.copy_in(&deb, "/tmp/ferry.deb");

    // dpkg alone stops at the missing nginx; apt brings it from Debian and configures ferry.
    let out = c.sh("dpkg -i /tmp/ferry.deb");
    assert!(!out.status.success(), "dpkg -i went through without nginx");
    assert!(text(&out.stderr).contains("depends on nginx"), "{}", text(&out.stderr));
    c.ok(
        "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
         && apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -f -y \
         && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends curl",
    );
    installed_as_packaged(&c);

    // The data dir that /etc/ferry/ferry.env names, with one file.
    let file = dir.path().join("a.bin");
    std::fs::write(&file, crate::helpers::pseudo_random(400_000, 7)).unwrap();
    c.ok("mkdir -p /srv/nas");
    c.copy_in(&file, "/srv/nas/a.bin");
    c.ok("chmod 644 /srv/nas/a.bin");
    let unit = c.ok("cat \"$(dpkg -L ferry | grep '/ferry.service$')\"");
    serve_as_the_unit_says(&c, &unit);
    shares_a_file(&c);
    let uid = c.ok(&format!("id -u {}", directive(&unit, "User"))).trim().to_string();

    // ferry, and nginx's master and workers, run as the unit's user.
    let procs = c.processes();
    let ours: Vec<&(String, String)> = procs
        .iter()
        .filter(|(_, a)| a.contains("ferry serve") || a.starts_with("nginx"))
        .collect();
    assert!(ours.iter().any(|(_, a)| a.contains("worker process")), "{procs:?}");
    for (u, a) in ours {
        assert_eq!(*u, uid, "{a} runs as {u}");
    }
}

/// What `dpkg -i` left: the user ferry (a system user without a login shell), the binary, the
/// unit, and `/etc/ferry/ferry.env` as a conffile only root can read.
fn installed_as_packaged(c: &Container) {
    let passwd = c.ok("getent passwd ferry");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert!(fields[2].parse::<u32>().unwrap() < 1000, "not a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    assert!(
        c.ok("dpkg-query -W -f='${Conffiles}' ferry")
            .contains("/etc/ferry/ferry.env")
    );
    assert_eq!(c.ok("stat -c '%a %U' /etc/ferry/ferry.env").trim(), "600 root");
    assert_eq!(c.ok("command -v ferry").trim(), "/usr/bin/ferry");
    assert!(c.ok("dpkg -s ferry").contains("Status: install ok installed"));
}

/// Starts the unit's command as systemd would without the sandboxing: its user and group, its
/// environment file, its state directory made for the user, its working directory.
fn serve_as_the_unit_says(c: &Container, unit: &str) {
    for d in [
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "PrivateTmp=true",
    ] {
        assert!(unit.lines().any(|l| l.trim() == d), "the unit lacks {d}");
    }
    let (user, group) = (directive(unit, "User"), directive(unit, "Group"));
    let state = format!("/var/lib/{}", directive(unit, "StateDirectory"));
    c.ok(&format!("install -d -o {user} -g {group} -m 750 {state}"));
    let script = format!(
        "cd {wd} && set -a && . {env} && set +a && exec setpriv --reuid={user} --regid={group} \
         --init-groups {cmd} >{state}/ferry.log 2>&1",
        wd = directive(unit, "WorkingDirectory"),
        env = directive(unit, "EnvironmentFile"),
        cmd = directive(unit, "ExecStart"),
    );
    let out = docker(&["exec", "-d", &c.0, "sh", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.sh("curl -sf http://127.0.0.1:8000/health").status.success() {
        let log = c.sh(&format!("cat {state}/ferry.log"));
        assert!(
            Instant::now() < deadline,
            "ferry did not come up:\n{}",
            text(&log.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ferry share` makes a link; curl downloads it byte-equal; the link completes.
fn shares_a_file(c: &Container) {
    let created: Value = serde_json::from_str(&c.ok("ferry share a.bin --json")).unwrap();
    let url = created["download_url"].as_str().unwrap();
    let status = c.ok(&format!("curl -sS -o /tmp/a.out -w '%{{http_code}}' '{url}'"));
    assert_eq!(status.trim(), "200");
    c.ok("cmp /srv/nas/a.bin /tmp/a.out");
    let id = created["tunnel_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tunnel = c.ok(&format!("curl -sf http://127.0.0.1:8000/admin/tunnels/{id}/stats"));
        let v: Value = serde_json::from_str(&tunnel).unwrap();
        if v["tunnel"]["state"] == "completed" || v["tunnel"]["close_reason"] == "completed" {
            assert_eq!(v["tunnel"]["bytes_served"], 400_000, "{v}");
            return;
        }
        assert!(Instant::now() < deadline, "the link did not complete: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
