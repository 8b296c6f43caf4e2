//! Groups with real processes: a `ponte server`, a `ponte proxy` relay
//! (TLS) in front of it with the direct route refused, and five `ponte`
//! profiles. A group is created, messages go both ways, a member is added,
//! one removed, one leaves, the group is renamed; the removed member
//! receives nothing sent afterwards; ticks add up over the members; a file
//! goes to the group.
//!
//! Every wait is bounded; nothing leaves 127.0.0.1.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::closed_port;
use common::{json_lines, ok, ponte, stderr, Proxy, Server, WAIT};

/// A `ponte proxy` relay with one TLS listener in front of `upstream`.
fn relay(dir: &Path, upstream: SocketAddr) -> (Proxy, String) {
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream.server]\nservers = [\"{upstream}\"]\nsend_proxy = \"v2\"\n\
             health_check_interval = \"0s\"\n\n\
             [[listener]]\nname = \"tls\"\nlisten = [\"127.0.0.1:0\"]\ntls = \"self-signed\"\nupstream = \"server\"\n"
        ),
    )
    .unwrap();
    let proxy = Proxy::start(&cfg, &["tls"], WAIT);
    let url = format!("tls://127.0.0.1:{}", proxy.addr("tls").port());
    (proxy, url)
}

struct People {
    dir: PathBuf,
}

impl People {
    fn profile(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `ponte ARGS… --json` as `name`, checked; its JSON lines.
    fn json(&self, name: &str, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        json_lines(&ok(&ponte(&self.profile(name), &args)))
    }

    fn run(&self, name: &str, args: &[&str]) -> Output {
        ponte(&self.profile(name), args)
    }

    /// The messages (not notices) `name`'s sync printed.
    fn sync(&self, name: &str) -> Vec<Value> {
        self.json(name, &["sync"])
    }
}

/// The texts of the incoming messages among `lines` (not the tick
/// changes of one's own, nor the notices of changes to a group).
fn texts(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .filter(|v| v["status"] == "received" && v["text"].is_string())
        .map(|v| v["text"].as_str().unwrap())
        .collect()
}

fn notices(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .filter(|v| v["notice"] == "group")
        .map(|v| v["text"].as_str().unwrap())
        .collect()
}

/// The line of `name`'s `history g:GROUP --json` for the outgoing `text`.
fn outgoing(people: &People, name: &str, group: &str, text: &str) -> Value {
    let lines = people.json(name, &["history", &format!("g:{group}")]);
    lines
        .into_iter()
        .find(|v| v["text"] == text && v["from"] == name)
        .unwrap_or_else(|| panic!("{name} has no outgoing {text:?}"))
}

#[test]
fn a_group_of_five_over_a_tls_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("server"));
    let (_relay, via) = relay(tmp.path(), server.addr);
    let address = server.address_at(closed_port());
    let people = People {
        dir: tmp.path().to_owned(),
    };
    for name in ["alice", "bobby", "carol", "dave", "erin"] {
        let out = people.json(
            name,
            &["register", "--server", &address, name, "--via", &via],
        );
        assert_eq!(out[0]["handle"], name);
    }

    // Create: alice is the admin of four.
    let created = people.json(
        "alice",
        &["group", "create", "team", "bobby", "carol", "dave"],
    );
    let g = created[0]["group"].as_str().unwrap().to_owned();
    assert_eq!(g.len(), 32, "{created:?}");
    assert_eq!(created[0]["title"], "team");
    assert_eq!(
        created[0]["members"],
        serde_json::json!(["alice", "bobby", "carol", "dave"])
    );
    assert_eq!(created[0]["admins"], serde_json::json!(["alice"]));
    assert_eq!(created[0]["role"], "admin");

    // Messages both ways; g:TITLE and g:ID both name it.
    let sent = people.json("alice", &["send", "g:team", "hello team 81f3"]);
    assert_eq!(sent[0]["status"], "sent", "{sent:?}");
    assert_eq!(sent[0]["to"], g.as_str());
    assert_eq!(sent[0]["group"], g.as_str());
    assert_eq!(sent[0]["of"], 3);
    let bob = people.sync("bobby");
    assert!(
        notices(&bob)
            .iter()
            .any(|n| n.contains("added you to \"team\"")),
        "{bob:?}"
    );
    let hello = bob.iter().find(|v| v["text"] == "hello team 81f3").unwrap();
    assert_eq!(hello["from"], "alice");
    assert_eq!(hello["group"], g.as_str());
    // Ticks: only bobby has it so far (alice learns it at her sync).
    people.sync("alice");
    let line = outgoing(&people, "alice", "team", "hello team 81f3");
    assert_eq!(line["status"], "sent", "{line}");
    assert_eq!(
        (line["delivered_to"].clone(), line["of"].clone()),
        (1.into(), 3.into()),
        "{line}"
    );

    let reply = people.json("bobby", &["send", &format!("g:{g}"), "hi alice 22c0"]);
    assert_eq!(reply[0]["status"], "sent", "{reply:?}");
    for name in ["carol", "dave"] {
        let got = people.sync(name);
        assert_eq!(
            texts(&got),
            ["hello team 81f3", "hi alice 22c0"],
            "{name}: {got:?}"
        );
    }
    let got = people.sync("alice");
    assert_eq!(texts(&got), ["hi alice 22c0"], "{got:?}");
    // Everyone displayed it: read by all three (their receipts went out
    // with their syncs).
    let line = outgoing(&people, "alice", "team", "hello team 81f3");
    assert_eq!(line["status"], "read", "{line}");
    assert_eq!(
        (line["delivered_to"].clone(), line["read_by"].clone()),
        (3.into(), 3.into())
    );

    // Add: erin is the fifth; she reads nothing from before she joined.
    let added = people.json("alice", &["group", "add", "g:team", "erin"]);
    assert_eq!(
        added[0]["members"].as_array().unwrap().len(),
        5,
        "{added:?}"
    );
    let erin = people.sync("erin");
    assert!(texts(&erin).is_empty(), "{erin:?}");
    assert!(
        notices(&erin).contains(&"alice added you to \"team\""),
        "{erin:?}"
    );
    let info = people.json("erin", &["group", "info", "g:team"]);
    assert_eq!(info[0]["role"], "member");
    assert_eq!(info[0]["members"].as_array().unwrap().len(), 5);
    people.json("erin", &["send", "g:team", "erin here 5d2a"]);
    for name in ["alice", "bobby", "carol", "dave"] {
        let got = people.sync(name);
        assert!(texts(&got).contains(&"erin here 5d2a"), "{name}: {got:?}");
    }
    let history = people.json("erin", &["history", "g:team"]);
    assert!(
        !history.iter().any(|v| v["text"] == "hello team 81f3"),
        "{history:?}"
    );

    // Remove: dave is out; what is sent afterwards never reaches him.
    people.json("alice", &["group", "remove", "g:team", "dave"]);
    for name in ["bobby", "carol", "erin"] {
        let got = people.sync(name);
        assert!(
            notices(&got).contains(&"alice removed dave"),
            "{name}: {got:?}"
        );
    }
    people.json("bobby", &["send", "g:team", "without dave 9a41"]);
    people.json("alice", &["send", "g:team", "alice without dave 3b7e"]);
    let dave = people.sync("dave");
    assert!(texts(&dave).is_empty(), "{dave:?}");
    assert!(notices(&dave).contains(&"alice removed you"), "{dave:?}");
    let refused = people.run("dave", &["send", "g:team", "let me in"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("removed"), "{}", stderr(&refused));
    let daveinfo = people.json("dave", &["group", "info", "g:team"]);
    assert_eq!(daveinfo[0]["status"], "removed");
    assert_eq!(daveinfo[0]["role"], Value::Null);
    // The others still talk.
    let got = people.sync("erin");
    assert_eq!(
        texts(&got),
        ["without dave 9a41", "alice without dave 3b7e"],
        "{got:?}"
    );

    // Leave: carol goes; a plain member cannot rename.
    people.json("carol", &["group", "leave", "g:team"]);
    let carol = people.json("carol", &["group", "info", "g:team"]);
    assert_eq!(carol[0]["status"], "left");
    let got = people.sync("alice");
    assert!(notices(&got).contains(&"carol left"), "{got:?}");
    let no = people.run("bobby", &["group", "rename", "g:team", "mine"]);
    assert!(!no.status.success());
    assert!(stderr(&no).contains("only an admin"), "{}", stderr(&no));

    // Rename, and promote bobby, who may then rename too.
    people.json("alice", &["group", "rename", "g:team", "crew"]);
    people.json("alice", &["group", "promote", "g:crew", "bobby"]);
    people.sync("bobby");
    let info = people.json("bobby", &["group", "info", "g:crew"]);
    assert_eq!(info[0]["title"], "crew");
    assert_eq!(info[0]["admins"], serde_json::json!(["alice", "bobby"]));
    assert_eq!(
        info[0]["members"],
        serde_json::json!(["alice", "bobby", "erin"])
    );
    let list = people.json("erin", &["group", "list"]);
    people.sync("erin");
    let list_after = people.json("erin", &["group", "list"]);
    assert_eq!(list[0]["group"], g.as_str());
    assert_eq!(list_after[0]["title"], "crew");

    // Ticks add up over the members who are left: bobby and erin.
    let last = people.json("alice", &["send", "g:crew", "final word 7c19"]);
    assert_eq!(last[0]["of"], 2, "{last:?}");
    people.sync("bobby");
    people.sync("erin");
    people.sync("alice");
    let line = outgoing(&people, "alice", "crew", "final word 7c19");
    assert_eq!(line["status"], "read", "{line}");
    assert_eq!(line["read_by"], 2);
    // And carol, who left, got none of it.
    let got = people.sync("carol");
    assert!(!texts(&got).contains(&"final word 7c19"), "{got:?}");

    // A file to the group: uploaded once, fetched by each member.
    let file = tmp.path().join("plan.txt");
    std::fs::write(&file, b"the plan, in full 40d2").unwrap();
    let sent = people.json(
        "alice",
        &[
            "send",
            "g:crew",
            "--file",
            file.to_str().unwrap(),
            "the plan",
        ],
    );
    assert_eq!(sent[0]["status"], "sent", "{sent:?}");
    assert_eq!(sent[0]["file"]["name"], "plan.txt");
    for name in ["bobby", "erin"] {
        let got = people.sync(name);
        let m = got.iter().find(|v| v["text"] == "the plan").unwrap();
        assert_eq!(m["group"], g.as_str());
        let fetched = got.iter().find(|v| v["file_fetched"].is_string()).unwrap();
        let path = fetched["file_fetched"].as_str().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"the plan, in full 40d2");
    }
}
