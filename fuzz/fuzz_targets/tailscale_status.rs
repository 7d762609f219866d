//! What the `tailscale` CLI prints, as ferry reads it: `status --json` (the node's name and its
//! Funnel capability), `funnel status --json` (the serve config whose handlers ferry checks and
//! re-asserts) and a failed command's output (`classify`). Whatever the bytes, each parser
//! answers or refuses with an error naming the command; an answer is what the document says and
//! reads the same after the document is printed again.
#![no_main]

use ferry::tunnel::tailscale::{Failure, PLACEHOLDER, classify, parse_serve_config, parse_status, public_base};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|out: &str| {
    status(out);
    serve_config(out);
    failure(out);
});

fn status(out: &str) {
    let st = match parse_status(out) {
        Ok(st) => st,
        Err(e) => {
            assert_eq!(e.command, "status --json");
            assert!(!e.reason.is_empty(), "{out:?}: an error without a reason");
            return;
        }
    };
    assert!(!st.dns_name.is_empty() && !st.dns_name.ends_with('.'), "{st:?}");
    assert!(public_base(&st.dns_name, 443).ends_with(&st.dns_name));
    let doc: Value = match serde_json::from_str(out.trim()) {
        Ok(doc) => doc,
        // JSON allows what the oracle's Value cannot hold (a number beyond f64 such as 9e440, a
        // lone surrogate such as "\uDacc"); ferry skips the parts it does not read, so such a
        // document is still its to read, as long as it is JSON at all.
        Err(e) => {
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(out.trim()).is_ok(),
                "{out:?}: parse_status accepted what is not JSON ({e})"
            );
            return;
        }
    };
    let caps: Vec<&str> = doc["Self"]["Capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .chain(
            doc["Self"]["CapMap"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.as_str()),
        )
        .collect();
    assert_eq!(
        st.can_funnel,
        caps.contains(&"https") && caps.contains(&"funnel"),
        "{out:?} gave {st:?}"
    );
    let again = parse_status(&serde_json::to_string_pretty(&doc).unwrap());
    assert_eq!(again.as_ref(), Ok(&st), "{out:?} printed again reads differently");
}

fn serve_config(out: &str) {
    let sc = match parse_serve_config(out) {
        Ok(sc) => sc,
        Err(e) => {
            assert_eq!(e.command, "funnel status --json");
            return;
        }
    };
    for (hp, web) in &sc.web {
        let Some((host, port)) = hp.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else { continue };
        let links = sc.link_mounts(host, port);
        let foreign = sc.foreign_mounts(host, port);
        for m in &links {
            assert!(m.starts_with("/s/") && m != PLACEHOLDER, "{m:?} taken for a link");
            assert!(!foreign.contains(m), "{m:?} both ferry's and the owner's");
            let h = sc.handler(host, port, m).expect("a listed mount has a handler");
            assert_eq!(sc.serves(host, port, m, &h.proxy), sc.funnel_on(host, port));
        }
        for m in &foreign {
            assert!(
                m != "/s" && !m.starts_with("/s/"),
                "{m:?} is under /s/ but called foreign"
            );
        }
        assert!(links.len() + foreign.len() <= web.handlers.len());
    }
    if let Ok(doc) = serde_json::from_str::<Value>(out.trim()) {
        let again = parse_serve_config(&doc.to_string()).expect("printed again, it still parses");
        assert_eq!(again, sc, "{out:?} printed again reads differently");
    }
}

fn failure(out: &str) {
    let (stdout, stderr) = out.split_once('\0').unwrap_or((out, ""));
    match classify(stdout, stderr, 443) {
        Failure::NoFunnel { enable_url, message } => {
            assert!(enable_url.is_none_or(|u| u.starts_with("https://")));
            assert!(message.chars().count() <= 400);
        }
        Failure::Refused { remedy, message } => {
            assert!(!remedy.is_empty());
            assert!(message.chars().count() <= 400);
        }
        Failure::NoDaemon(m) | Failure::Other(m) => assert!(m.chars().count() <= 400),
        Failure::Race | Failure::NoHandler => {}
    }
}
