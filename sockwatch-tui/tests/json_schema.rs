//! Every kind of `--json` record a run writes, checked against the published schema
//! (`docs/events.schema.json`), which names what each record holds and nothing else.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{inbound_of, net, record_of, Sockwatch};

fn schema() -> jsonschema::Validator {
    let text = include_str!("../../docs/events.schema.json");
    let schema: Value = serde_json::from_str(text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// A socket from before the start, a connect with bytes (sampled) and its close, a refused
/// connect, an accepted connection, and what is open at the end: each record matches the
/// schema, and the start record says which schema.
#[test]
fn every_record_matches_the_published_schema() {
    let validator = schema();
    let pid = std::process::id();
    let server = net::CountingServer::start();
    let early = net::connected(server.port);
    let mut sw = Sockwatch::start_adopting(&["--json-samples", "--metrics", "127.0.0.1:0"]);
    assert_eq!(sw.start["schema"], 1);
    let mut records = vec![sw.start.clone()];
    records.push(sw.wait_for("the socket from before", record_of("existing", pid, early)));

    let fd = net::connected(server.port);
    net::sendto_all(fd, 1000);
    records.push(sw.wait_for("the connect", record_of("connect", pid, fd)));
    records.push(sw.wait_for("a sample of it", |r| {
        record_of("sample", pid, fd)(r) && r["bytes_sent"] == 1000
    }));
    net::close(fd);
    records.push(sw.wait_for("its close", record_of("close", pid, fd)));

    let refused = net::tcp_socket(0);
    let errno = net::connect(refused, net::closed_port());
    assert_eq!(errno, libc::ECONNREFUSED);
    net::close(refused);
    records.push(sw.wait_for("the refused connect", |r| {
        r["pid"] == pid
            && r["fd"] == refused
            && (r["event"] == "connect" || r["event"] == "close")
            && r.to_string().contains("ECONNREFUSED")
    }));

    let (listener, port) = net::raw_listener();
    let client = net::connected(port);
    let (accepted, _) = net::accept_with_peer(listener);
    net::sendto_all(accepted, 10);
    records.push(sw.wait_for("the accept", inbound_of("accept", pid, accepted)));

    records.extend(sw.stop());
    for record in &records {
        let problems: Vec<String> = validator
            .iter_errors(record)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(problems.is_empty(), "{record}\n{}", problems.join("\n"));
    }
    // Strict for socket records too (their shared fields come in through `allOf`).
    let close = records
        .iter()
        .find(|r| r["event"] == "close")
        .expect("a close record");
    let mut extra = close.clone();
    extra["surprise"] = Value::from(1);
    assert!(!validator.is_valid(&extra), "an unknown field passes");
    let mut missing = close.clone();
    missing.as_object_mut().expect("an object").remove("owner");
    assert!(
        !validator.is_valid(&missing),
        "a missing socket field passes"
    );
    let kinds: BTreeSet<&str> = records.iter().filter_map(|r| r["event"].as_str()).collect();
    for kind in [
        "start", "existing", "connect", "sample", "close", "accept", "open", "end",
    ] {
        assert!(kinds.contains(kind), "no {kind} record among {kinds:?}");
    }
    for fd in [early, client, accepted, listener] {
        net::close(fd);
    }
}

/// The schema is strict: a record with a field it does not name, or without one it requires,
/// fails (so the test above cannot pass on a schema that allows anything).
#[test]
fn the_schema_rejects_unknown_and_missing_fields() {
    let validator = schema();
    let end = serde_json::json!({"event": "end", "time": 1.0, "open": 0, "lost": 0,
        "untracked": 0, "repairs": 0, "connects": 0, "failed_connects": 0});
    assert!(validator.is_valid(&end));
    let mut extra = end.clone();
    extra["surprise"] = Value::from(1);
    assert!(!validator.is_valid(&extra));
    let mut missing = end.clone();
    missing.as_object_mut().expect("an object").remove("lost");
    assert!(!validator.is_valid(&missing));
    let unknown = serde_json::json!({"event": "nothing", "time": 1.0});
    assert!(!validator.is_valid(&unknown));
}
