#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

#[test]
fn ponte_relay_links_are_exactly_the_documented_ones() {
    assert_eq!(
        ponte_relay_link("relay.example.org", 443, true),
        "ponte://relay?host=relay.example.org&port=443&tls=1"
    );
    assert_eq!(
        ponte_relay_web_link("relay.example.org", 443, true),
        "https://ponte.link/relay#host=relay.example.org&port=443&tls=1"
    );
    assert_eq!(
        ponte_relay_link("[2001:db8::1]", 5222, false),
        "ponte://relay?host=2001%3Adb8%3A%3A1&port=5222&tls=0"
    );
    // Unvalidated input cannot add parameters.
    assert_eq!(
        ponte_relay_link("a&port=1", 2, true),
        "ponte://relay?host=a%26port%3D1&port=2&tls=1"
    );
    // The type writes the same links.
    let link = RelayLink::new("relay.example.org", 443, true).unwrap();
    assert_eq!(
        link.app_link(),
        ponte_relay_link("relay.example.org", 443, true)
    );
    assert_eq!(
        link.web_link(),
        ponte_relay_web_link("relay.example.org", 443, true)
    );
    assert_eq!(link.to_string(), link.app_link());
}

#[test]
fn default_link_is_exactly_the_documented_one() {
    assert_eq!(
        whatsapp_link("proxy.example.org", 443, 587, true),
        "https://wa.me/proxy?host=proxy.example.org&chatPort=443&mediaPort=587&chatTLS=true"
    );
    assert_eq!(
        whatsapp_link("203.0.113.9", 5222, 7777, false),
        "https://wa.me/proxy?host=203.0.113.9&chatPort=5222&mediaPort=7777&chatTLS=false"
    );
}

#[test]
fn host_is_percent_encoded() {
    let link = whatsapp_link("[2001:db8::1]", 443, 587, true);
    assert_eq!(
        link,
        "https://wa.me/proxy?host=2001%3Adb8%3A%3A1&chatPort=443&mediaPort=587&chatTLS=true"
    );
    // The same without brackets, and in a non-canonical spelling.
    assert_eq!(whatsapp_link("2001:DB8:0::1", 443, 587, true), link);
    // Unvalidated input cannot break out of the query value.
    let link = whatsapp_link("a&b=c #d/é", 1, 2, true);
    assert_eq!(
        link,
        "https://wa.me/proxy?host=a%26b%3Dc%20%23d%2F%C3%A9&chatPort=1&mediaPort=2&chatTLS=true"
    );
    assert!(link.is_ascii());
    assert_eq!(link.matches('&').count(), 3);
}

#[test]
fn host_validation() {
    for good in [
        "proxy.example.org",
        "proxy.example.org.",
        "203.0.113.9",
        "2001:db8::1",
        "[2001:db8::1]",
        "xn--bcher-kva.example",
        "bücher.example",
        "localhost",
        "_srv.example",
    ] {
        assert_eq!(validate_host(good), Ok(()), "{good}");
    }
    assert_eq!(validate_host(""), Err(HostError::EmptyHost));
    let long = "a".repeat(MAX_HOST_LEN + 1);
    assert_eq!(
        validate_host(&long),
        Err(HostError::HostTooLong { len: 254 })
    );
    assert_eq!(validate_host(&long[1..]), Ok(()));
    for (bad, ch, at) in [
        ("proxy example.org", ' ', 5),
        ("proxy.example.org\n", '\n', 17),
        ("a\u{7}b", '\u{7}', 1),
        ("https://proxy.example.org", ':', 5),
        ("proxy.example.org:443", ':', 17),
        ("proxy.example.org/", '/', 17),
        ("[proxy.example.org]", '[', 0),
        ("[2001:db8::1", '[', 0),
        ("user@host", '@', 4),
        ("a\u{a0}b", '\u{a0}', 1),
        ("a!b", '!', 1),
        ("a%41", '%', 1),
        ("a+b", '+', 1),
    ] {
        assert_eq!(
            validate_host(bad),
            Err(HostError::BadHostCharacter { ch, at }),
            "{bad:?}"
        );
    }
    // The message tells the operator what to do.
    let msg = validate_host("host:443").unwrap_err().to_string();
    assert!(msg.contains("without scheme, port"), "{msg}");
}

#[test]
fn both_forms_parse() {
    let want = RelayLink::new("203.0.113.7", 443, true).unwrap();
    for text in [
        "ponte://relay?host=203.0.113.7&port=443&tls=1",
        "ponte://relay/?host=203.0.113.7&port=443&tls=true",
        "ponte://relay#host=203.0.113.7&port=443",
        "https://ponte.link/relay#host=203.0.113.7&port=443&tls=1",
        "https://mirror.example/x/relay/#port=443&&host=203.0.113.7&later=%ZZ",
        "ponte://relay?host=nope&host=203.0.113.7&port=443",
    ] {
        assert_eq!(RelayLink::parse(text), Ok(want.clone()), "{text}");
    }
    let v6: RelayLink = "https://ponte.link/relay#host=2001%3ADB8%3A0%3A%3A1&port=80&tls=0"
        .parse()
        .unwrap();
    assert_eq!(
        (v6.host.as_str(), v6.port, v6.tls),
        ("2001:db8::1", 80, false)
    );
    assert_eq!(
        RelayLink::parse("ponte://relay?host=%5B2001%3Adb8%3A%3A1%5D&port=1"),
        Ok(RelayLink::new("2001:db8::1", 1, true).unwrap())
    );
    let idn = RelayLink::parse(&ponte_relay_link("bücher.example", 443, true)).unwrap();
    assert_eq!(idn.host, "bücher.example");
}

#[test]
fn malformed_links_say_why() {
    let too_long = format!("ponte://relay?host={}", "a".repeat(MAX_LINK_LEN));
    for (text, why) in [
        (too_long.as_str(), LinkError::TooLong),
        ("", LinkError::NotALink),
        ("tls://h:1", LinkError::NotALink),
        ("ponte://h:1#AAAA", LinkError::NotALink),
        ("ponte://relay.example.org:443#AAAA", LinkError::NotALink),
        ("ponte://relay", LinkError::NoParameters),
        ("ponte://relay/host=h", LinkError::NoParameters),
        (
            "https://ponte.link/relay?host=h&port=1",
            LinkError::NoFragment,
        ),
        (
            "https://example.org/other#host=h&port=1",
            LinkError::NotRelay,
        ),
        ("ponte://relay?host=h%2&port=1", LinkError::BadEscape),
        ("ponte://relay?host=h%+1&port=1", LinkError::BadEscape),
        ("ponte://relay?host=%FF&port=1", LinkError::BadEscape),
        ("ponte://relay?port=1", LinkError::NoHost),
        ("ponte://relay?host=h", LinkError::NoPort),
        ("ponte://relay?host=h&port=0", LinkError::BadPort),
        ("ponte://relay?host=h&port=65536", LinkError::BadPort),
        ("ponte://relay?host=h&port=1&tls=maybe", LinkError::BadTls),
    ] {
        assert_eq!(RelayLink::parse(text), Err(why), "{text:?}");
    }
    assert_eq!(
        RelayLink::parse("ponte://relay?host=a%20b&port=1"),
        Err(LinkError::BadHost(HostError::BadHostCharacter {
            ch: ' ',
            at: 1
        }))
    );
    assert_eq!(RelayLink::new("h", 0, true), Err(LinkError::BadPort));
    assert_eq!(LinkError::NoHost.to_string(), "the link has no host");
}

/// A link to the longest host, every byte of it encoded, still parses.
#[test]
fn the_longest_host_fits() {
    let host = "é".repeat(MAX_HOST_LEN / 2);
    let link = RelayLink::new(&host, 65535, true).unwrap();
    assert!(link.web_link().len() <= MAX_LINK_LEN);
    assert_eq!(RelayLink::parse(&link.web_link()), Ok(link));
}

fn any_host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{1,20}(\\.[A-Za-z0-9_-]{1,20}){0,4}\\.?",
        "[a-zäöüßéиж鬼0-9-]{1,12}\\.[a-z]{2,6}",
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
    ]
}

proptest! {
    /// Any valid relay survives both forms unchanged.
    #[test]
    fn links_round_trip(host in any_host(), port in 1u16.., tls in any::<bool>()) {
        let link = RelayLink::new(&host, port, tls).unwrap();
        prop_assert!(!link.host.starts_with('['));
        for text in [link.app_link(), link.web_link()] {
            prop_assert!(text.is_ascii());
            prop_assert_eq!(text.matches('&').count(), 2);
            prop_assert_eq!(RelayLink::parse(&text), Ok(link.clone()));
        }
    }

    /// Whatever the builder is given stays inside the host value: the link
    /// reads back as that host, or is refused for its host.
    #[test]
    fn any_host_stays_in_its_value(host in "\\PC{0,40}", port in 1u16.., tls in any::<bool>()) {
        let text = ponte_relay_link(&host, port, tls);
        prop_assert!(text.is_ascii());
        prop_assert_eq!(text.matches('&').count(), 2);
        match validate_host(&host) {
            Ok(()) => prop_assert_eq!(RelayLink::parse(&text), RelayLink::new(&host, port, tls)),
            Err(e) => prop_assert_eq!(RelayLink::parse(&text), Err(LinkError::BadHost(e))),
        }
    }

    /// Reading never panics; what it reads writes back to the same relay.
    #[test]
    fn parse_is_total_and_stable(
        prefix in prop_oneof![
            Just("ponte://relay?"),
            Just("https://ponte.link/relay#"),
            Just(""),
        ],
        rest in "[a-z0-9=&%:\\[\\]./#?é ]{0,60}",
    ) {
        let text = format!("{prefix}{rest}");
        if let Ok(link) = RelayLink::parse(&text) {
            prop_assert_eq!(RelayLink::parse(&link.app_link()), Ok(link.clone()));
            prop_assert_eq!(RelayLink::parse(&link.web_link()), Ok(link));
        }
    }
}

#[test]
fn stealth_links_round_trip_in_both_forms() {
    let secret = crate::stealth::Secret::from_bytes([42; 16]);
    let link = RelayLink::new("relay.example.org", 443, true)
        .unwrap()
        .with_stealth(secret.clone(), "www.Cover.example")
        .unwrap();
    let s = link.stealth.as_ref().unwrap();
    assert_eq!(s.sni, "www.cover.example");
    for text in [
        link.app_link(),
        link.web_link(),
        link.web_link_with_base("https://www.cover.example/relay"),
    ] {
        assert!(
            text.contains(&format!("secret={}", secret.to_text())),
            "{text}"
        );
        assert_eq!(RelayLink::parse(&text).as_ref(), Ok(&link), "{text}");
    }
    let web = link.web_link_with_base("https://www.cover.example/relay/");
    let (before, after) = web.split_once('#').unwrap();
    assert_eq!(before, "https://www.cover.example/relay");
    assert!(after.contains("secret=") && after.contains("sni="));
    // Old-form links keep meaning what they meant.
    assert_eq!(
        RelayLink::parse("ponte://relay?host=a.example&port=1")
            .unwrap()
            .stealth,
        None
    );
}

#[test]
fn half_a_stealth_link_is_refused() {
    let s = crate::stealth::Secret::from_bytes([1; 16]).to_text();
    for bad in [
        format!("ponte://relay?host=a.example&port=443&secret={s}"),
        "ponte://relay?host=a.example&port=443&sni=b.example".to_owned(),
        "ponte://relay?host=a.example&port=443&secret=short&sni=b.example".to_owned(),
        format!("ponte://relay?host=a.example&port=443&secret={s}&sni=10.0.0.1"),
        format!("ponte://relay?host=a.example&port=443&secret={s}&sni=b%20c"),
    ] {
        assert_eq!(RelayLink::parse(&bad), Err(LinkError::BadStealth), "{bad}");
    }
}
