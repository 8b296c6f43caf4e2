#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn ids_are_time_ordered_and_distinct() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::random()).collect();
    let ms = |id: &MessageId| {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&id.0[..6]);
        u64::from_be_bytes(b)
    };
    // The prefix is the creation time and never goes back.
    assert!(ms(&ids[0]) >= now && ms(&ids[0]) < now + 60_000);
    assert!(ids.windows(2).all(|w| ms(&w[0]) <= ms(&w[1])));
    // The random tail keeps ids of the same millisecond apart.
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
}

#[test]
fn text_roundtrip_and_padding() {
    let env = Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: 1_700_000_000_123,
        payload: Payload::Text("olá, ponte".into()),
    };
    let bytes = env.encode().unwrap();
    assert_eq!(bytes.len() % PADDING_BLOCK, 0);
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
}

#[test]
fn receipt_roundtrip() {
    let ids: Vec<_> = (0..3).map(|_| MessageId::random()).collect();
    let env = Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: 5,
        payload: Payload::ReadReceipt(ids),
    };
    assert_eq!(Envelope::decode(&env.encode().unwrap()).unwrap(), env);
}

#[test]
fn rejects_hostile_input() {
    let env = Envelope {
        timer: None,
        id: MessageId([1; 16]),
        sent_at_ms: 1,
        payload: Payload::Text("hi".into()),
    };
    let good = env.encode().unwrap();
    for len in 0..good.len() {
        // Any truncation that cuts into the content fails; cutting padding is fine.
        let cut = &good[..len];
        if len < HEADER + 4 + 2 {
            assert!(Envelope::decode(cut).is_err(), "len {len}");
        }
    }
    let mut bad = good.clone();
    bad[0] = 9;
    assert!(Envelope::decode(&bad).is_err());
    let mut bad = good.clone();
    bad[1] = 77;
    assert!(Envelope::decode(&bad).is_err());
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] = 1;
    assert!(matches!(
        Envelope::decode(&bad),
        Err(Error::MalformedEnvelope("non-zero padding"))
    ));
    let mut huge = good[..HEADER].to_vec();
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(Envelope::decode(&huge).is_err());
    let too_long = Envelope {
        payload: Payload::Text("x".repeat(MAX_TEXT_BYTES + 1)),
        ..env
    };
    assert!(matches!(too_long.encode(), Err(Error::TextTooLong(_))));
}

fn file_env() -> Envelope {
    Envelope {
        timer: None,
        id: MessageId::random(),
        sent_at_ms: 9,
        payload: Payload::File(FileDescriptor {
            blob_id: [7; 16],
            key: crate::file::FileKey([8; 32]),
            sha256: [9; 32],
            size: 123_456,
            name: "../a\u{1b}b.jpg".into(),
            mime: "image/jpeg".into(),
            caption: "olá".into(),
        }),
    }
}

#[test]
fn file_roundtrip_and_caps() {
    let env = file_env();
    let bytes = env.encode().unwrap();
    assert_eq!(bytes.len() % PADDING_BLOCK, 0);
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    assert!(!format!("{env:?}").contains("jpg"));
    if let Payload::File(fd) = &env.payload {
        let alone = fd.to_bytes().unwrap();
        assert_eq!(&FileDescriptor::from_bytes(&alone).unwrap(), fd);
        assert!(FileDescriptor::from_bytes(&[alone.as_slice(), &[0]].concat()).is_err());
    }
    // Every truncation into the content fails.
    let content = HEADER + 16 + 32 + 32 + 8 + 2 + 10 + 1 + 10 + 4 + 4;
    for len in 0..content {
        assert!(Envelope::decode(&bytes[..len]).is_err(), "len {len}");
    }
    let Payload::File(fd) = &env.payload else {
        unreachable!()
    };
    let with = |f: &dyn Fn(&mut FileDescriptor)| {
        let mut fd = fd.clone();
        f(&mut fd);
        Envelope {
            payload: Payload::File(fd),
            ..env.clone()
        }
        .encode()
    };
    assert!(with(&|fd| fd.name = "n".repeat(MAX_FILE_NAME_BYTES + 1)).is_err());
    assert!(with(&|fd| fd.mime = "a b".into()).is_err());
    assert!(with(&|fd| fd.caption = "c".repeat(MAX_TEXT_BYTES + 1)).is_err());
    assert!(with(&|fd| fd.size = u64::MAX).is_err());
    // A hostile name length beyond the cap is refused before reading it.
    let mut bad = bytes.clone();
    let at = HEADER + 16 + 32 + 32 + 8;
    bad[at..at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    assert!(Envelope::decode(&bad).is_err());
    // Mime with a control byte.
    let mut bad = bytes.clone();
    bad[at + 2 + 10 + 1] = 0x1b;
    assert!(Envelope::decode(&bad).is_err());
}

#[test]
fn group_kinds_roundtrip() {
    use crate::group::{GroupOp, GroupSender, GroupState};
    let group = GroupId::random();
    let alice = crate::Identity::generate();
    let (state, _) = GroupState::create(&alice, "alice", "team", 1).unwrap();
    let op = state
        .propose(&alice, 2, GroupOp::Rename("renamed".into()))
        .unwrap();
    for payload in [
        Payload::GroupText {
            group,
            text: "hi all".into(),
        },
        Payload::SenderKey(GroupSender::new(group, 1).sender_key()),
        Payload::GroupOp(Box::new(op.clone())),
        Payload::GroupLog(vec![op.clone(), op]),
        Payload::GroupFile {
            group,
            file: match file_env().payload {
                Payload::File(fd) => fd,
                _ => unreachable!(),
            },
        },
    ] {
        let env = Envelope {
            timer: None,
            id: MessageId::random(),
            sent_at_ms: 9,
            payload,
        };
        let bytes = env.encode().unwrap();
        assert_eq!(bytes.len() % PADDING_BLOCK, 0);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        // Truncated inside the body or with a byte of padding set: refused.
        let body_end = bytes.iter().rposition(|&b| b != 0).unwrap();
        assert!(Envelope::decode(&bytes[..body_end]).is_err());
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        if last > body_end {
            bad[last] = 1;
            assert!(Envelope::decode(&bad).is_err());
        }
    }
}

#[test]
fn group_kinds_reject_hostile_lengths() {
    let mut head = vec![VERSION, KIND_SENDER_KEY];
    head.extend_from_slice(&[0; 16 + 8]);
    let mut key = head.clone();
    key.extend_from_slice(&[0; 16]);
    key.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        Envelope::decode(&key),
        Err(Error::MalformedEnvelope("too long"))
    ));
    // A well-sized but invalid session key.
    let mut key = head.clone();
    key.extend_from_slice(&[0; 16]);
    key.extend_from_slice(&4u16.to_be_bytes());
    key.extend_from_slice(&[1; 4]);
    assert!(Envelope::decode(&key).is_err());
    let mut op = head.clone();
    op[1] = KIND_GROUP_OP;
    op.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(Envelope::decode(&op).is_err());
    let mut text = head.clone();
    text[1] = KIND_GROUP_TEXT;
    text.extend_from_slice(&[0; 16]);
    text.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(Envelope::decode(&text).is_err());
    // Kind 3 is reserved and not decoded here.
    let mut files = head.clone();
    files[1] = 3;
    files.extend_from_slice(&[0; 38]);
    assert!(Envelope::decode(&files).is_err());
    // A group file: a truncated group id, then a descriptor whose name
    // length is beyond the cap.
    let mut group_file = head;
    group_file[1] = KIND_GROUP_FILE;
    group_file.extend_from_slice(&[0; 10]);
    assert!(matches!(
        Envelope::decode(&group_file),
        Err(Error::MalformedEnvelope("truncated group id"))
    ));
    group_file.extend_from_slice(&[0; 6 + 16 + 32 + 32 + 8]);
    group_file.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(Envelope::decode(&group_file).is_err());
    // A group log: no ops, too many, or an op length beyond the cap.
    let mut log = vec![VERSION, KIND_GROUP_LOG];
    log.extend_from_slice(&[0; 16 + 8]);
    for count in [0u16, MAX_LOG_OPS as u16 + 1] {
        let mut bad = log.clone();
        bad.extend_from_slice(&count.to_be_bytes());
        assert!(matches!(
            Envelope::decode(&bad),
            Err(Error::MalformedEnvelope("group log of 0 or too many ops"))
        ));
    }
    log.extend_from_slice(&1u16.to_be_bytes());
    log.extend_from_slice(&u16::MAX.to_be_bytes());
    assert!(matches!(
        Envelope::decode(&log),
        Err(Error::MalformedEnvelope("too long"))
    ));
    let too_many = Envelope {
        timer: None,
        id: MessageId([0; 16]),
        sent_at_ms: 0,
        payload: Payload::GroupLog(Vec::new()),
    };
    assert!(too_many.encode().is_err());
}

#[test]
fn a_timer_makes_a_version_2_envelope_that_roundtrips() {
    let timer = Timer::from_secs(3600).unwrap();
    for payload in [Payload::Text("gone soon".into()), file_env().payload] {
        let env = Envelope {
            timer: Some(timer),
            id: MessageId::random(),
            sent_at_ms: 1_700_000_000_000,
            payload,
        };
        let bytes = env.encode().unwrap();
        assert_eq!(bytes[0], VERSION_TIMED);
        assert_eq!(bytes[HEADER..HEADER + 4], 3600u32.to_be_bytes());
        assert_eq!(bytes.len() % PADDING_BLOCK, 0);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        // Without the timer: version 1, as before timers existed.
        let plain = Envelope { timer: None, ..env };
        assert_eq!(plain.encode().unwrap()[0], VERSION);
    }
}

#[test]
fn timers_outside_the_bounds_are_refused() {
    assert_eq!(Timer::from_secs(0), None);
    assert_eq!(Timer::from_secs(MIN_TIMER_SECS - 1), None);
    assert_eq!(Timer::from_secs(MIN_TIMER_SECS).unwrap().secs(), 5);
    assert_eq!(
        Timer::from_secs(MAX_TIMER_SECS).unwrap().duration(),
        std::time::Duration::from_secs(90 * 86_400)
    );
    assert_eq!(Timer::from_secs(MAX_TIMER_SECS + 1), None);
    let env = Envelope {
        timer: Some(Timer::from_secs(60).unwrap()),
        id: MessageId([3; 16]),
        sent_at_ms: 1,
        payload: Payload::Text("hi".into()),
    };
    let good = env.encode().unwrap();
    for secs in [0, 1, MIN_TIMER_SECS - 1, MAX_TIMER_SECS + 1, u32::MAX] {
        let mut bad = good.clone();
        bad[HEADER..HEADER + 4].copy_from_slice(&secs.to_be_bytes());
        assert!(
            matches!(
                Envelope::decode(&bad),
                Err(Error::MalformedEnvelope("timer out of range"))
            ),
            "{secs}"
        );
    }
    // Cut inside the timer or the text after it.
    for len in 0..HEADER + 4 + 4 + 2 {
        assert!(Envelope::decode(&good[..len]).is_err(), "len {len}");
    }
}

#[test]
fn timer_settings_roundtrip_and_refuse_hostile_bodies() {
    let group = GroupId([9; 16]);
    for setting in [
        TimerSetting {
            group: None,
            timer: Timer::from_secs(30),
        },
        TimerSetting {
            group: None,
            timer: None,
        },
        TimerSetting {
            group: Some(group),
            timer: Timer::from_secs(MAX_TIMER_SECS),
        },
    ] {
        let env = Envelope {
            timer: None,
            id: MessageId::random(),
            sent_at_ms: 7,
            payload: Payload::TimerSetting(setting),
        };
        let bytes = env.encode().unwrap();
        assert_eq!((bytes[0], bytes[1]), (VERSION, KIND_TIMER));
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
        let alone = setting.to_bytes();
        assert_eq!(TimerSetting::from_bytes(&alone).unwrap(), setting);
        assert!(TimerSetting::from_bytes(&[alone.as_slice(), &[0]].concat()).is_err());
        for len in 0..alone.len() {
            assert!(
                TimerSetting::from_bytes(&alone[..len]).is_err(),
                "len {len}"
            );
        }
    }
    let mut head = vec![VERSION, KIND_TIMER];
    head.extend_from_slice(&[0; 16 + 8]);
    // Unknown scope; a timer below the minimum; a truncated group id.
    for body in [&[2u8, 0, 0, 0, 60][..], &[0, 0, 0, 0, 4], &[1, 9, 9]] {
        let bytes = [head.as_slice(), body].concat();
        assert!(Envelope::decode(&bytes).is_err(), "{body:?}");
    }
}

#[test]
fn message_id_hex() {
    let id = MessageId::random();
    assert_eq!(MessageId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(MessageId::from_hex("zz"), None);
    assert_eq!(MessageId::from_hex(&"é".repeat(16)), None);
}

#[test]
fn a_reply_rides_as_an_extension_that_readers_may_skip() {
    let quoted = MessageId::random();
    let env = Envelope {
        timer: Timer::from_secs(60),
        id: MessageId::random(),
        sent_at_ms: 1_700_000_000_000,
        payload: Payload::Text("yes, that one".into()),
    };
    let bytes = env.encode_with(&Extensions::reply(quoted)).unwrap();
    assert_eq!(bytes.len() % PADDING_BLOCK, 0);
    let (back, ext) = Envelope::decode_with(&bytes).unwrap();
    assert_eq!(back, env);
    assert_eq!(ext.reply_to, Some(quoted));
    // A reader that does not care about extensions gets the message.
    assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    // Without extensions: none, and the same bytes as before extensions.
    let plain = env.encode().unwrap();
    assert_eq!(
        Envelope::decode_with(&plain).unwrap().1,
        Extensions::default()
    );
    assert_eq!(env.encode_with(&Extensions::default()).unwrap(), plain);

    // An unknown tag is skipped, the known one still read.
    let body_end = plain.iter().rposition(|&b| b != 0).unwrap() + 1;
    let mut later = plain[..body_end].to_vec();
    later.extend_from_slice(&[200, 0, 3, 7, 7, 7]);
    later.extend_from_slice(&[1, 0, 16]);
    later.extend_from_slice(&quoted.0);
    later.resize(later.len().div_ceil(PADDING_BLOCK) * PADDING_BLOCK, 0);
    assert_eq!(
        Envelope::decode_with(&later).unwrap().1.reply_to,
        Some(quoted)
    );

    // Malformed: a reply id of the wrong length, the reply twice, a
    // truncated extension, too many extensions, bytes after the padding.
    let with = |ext: &[u8]| {
        let mut b = plain[..body_end].to_vec();
        b.extend_from_slice(ext);
        b.resize(
            b.len().div_ceil(PADDING_BLOCK) * PADDING_BLOCK + PADDING_BLOCK,
            0,
        );
        b
    };
    assert!(Envelope::decode_with(&with(&[1, 0, 4, 1, 2, 3, 4])).is_err());
    let mut twice = vec![1, 0, 16];
    twice.extend_from_slice(&quoted.0);
    twice.extend_from_slice(&twice.clone());
    assert!(Envelope::decode_with(&with(&twice)).is_err());
    assert!(Envelope::decode_with(&with(&[9, 0, 200, 1])).is_err());
    let many: Vec<u8> = (0..=MAX_EXTENSIONS).flat_map(|_| [9u8, 0, 0]).collect();
    assert!(Envelope::decode_with(&with(&many)).is_err());
    let mut after = with(&[9, 0, 0]);
    let last = after.len() - 1;
    after[last] = 5;
    assert!(Envelope::decode_with(&after).is_err());
}
