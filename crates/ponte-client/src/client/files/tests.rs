#![allow(clippy::unwrap_used)]
use super::*;
use ponte_wire::messages::ErrorCode;

const C: u64 = BLOB_CHUNK_MAX as u64;

fn state(offset: u64, size: u64, finished: bool) -> UploadState {
    UploadState {
        upload_id: Bytes::new(),
        offset,
        size,
        finished,
        expires_at_ms: 0,
    }
}

fn answer_state(offset: u64, size: u64, finished: bool) -> server_frame::Body {
    server_frame::Body::UploadState(state(offset, size, finished))
}

fn error(code: ErrorCode, offset: u64) -> server_frame::Body {
    server_frame::Body::Error(ErrorFrame {
        code: code as i32,
        detail: String::new(),
        message_id: Bytes::new(),
        offset,
    })
}

/// Sends while the window says so; returns (request id, offset, len).
fn fill(w: &mut UploadWindow, rid: &mut u64) -> Vec<(u64, u64, usize)> {
    let mut out = Vec::new();
    while let Step::Send { offset, len } = w.step() {
        *rid += 1;
        w.sent(*rid, offset, len).unwrap();
        out.push((*rid, offset, len));
        assert!(out.len() <= UPLOAD_WINDOW, "the window is bounded");
    }
    out
}

#[test]
fn a_window_of_appends_goes_out_and_is_acknowledged() {
    let size = 40 * C + 5;
    let mut w = UploadWindow::new(size, &state(0, size, false)).unwrap();
    let mut rid = 0;
    let first = fill(&mut w, &mut rid);
    assert_eq!(first.len(), UPLOAD_WINDOW);
    assert_eq!(first[1].1, C);
    // Answers in any order; the window refills as they come.
    let (r, o, l) = first[3];
    w.answer(r, answer_state(o + l as u64, size, false))
        .unwrap();
    assert_eq!(w.acked, 4 * C);
    let more = fill(&mut w, &mut rid);
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].1, UPLOAD_WINDOW as u64 * C);
}

#[test]
fn an_offset_mismatch_rewinds_to_the_servers_offset_without_asking() {
    let size = 10 * C;
    let mut w = UploadWindow::new(size, &state(2 * C, size, false)).unwrap();
    let mut rid = 0;
    let sent = fill(&mut w, &mut rid);
    assert_eq!(sent.len(), 8);
    assert_eq!(sent[0].1, 2 * C);
    // A dead connection's append moved the server to 3 C: the first
    // append is refused with it; the others were sent after it.
    w.answer(sent[0].0, error(ErrorCode::OffsetMismatch, 3 * C))
        .unwrap();
    assert!(matches!(w.step(), Step::Wait), "nothing goes out meanwhile");
    w.answer(sent[1].0, answer_state(4 * C, size, false))
        .unwrap();
    for &(r, _, _) in &sent[2..] {
        w.answer(r, error(ErrorCode::OffsetMismatch, 4 * C))
            .unwrap();
    }
    // Resumes from the server's offset (4 C, what it acknowledged
    // since), not from 0 and not after an UploadOffset.
    let again = fill(&mut w, &mut rid);
    assert_eq!(again[0].1, 4 * C);
    assert_eq!(again.len(), 6);
    for &(r, o, l) in &again {
        w.answer(r, answer_state(o + l as u64, size, o + l as u64 == size))
            .unwrap();
    }
    assert!(matches!(w.step(), Step::Done));
    assert_eq!(w.acked, size);
}

#[test]
fn a_refusal_is_returned_once_the_appends_in_flight_are_answered() {
    let size = 5 * C;
    let mut w = UploadWindow::new(size, &state(0, size, false)).unwrap();
    let mut rid = 0;
    let sent = fill(&mut w, &mut rid);
    w.answer(sent[0].0, answer_state(C, size, false)).unwrap();
    w.answer(sent[1].0, error(ErrorCode::Unavailable, 0))
        .unwrap();
    w.answer(sent[2].0, error(ErrorCode::OffsetMismatch, C))
        .unwrap();
    assert!(matches!(w.step(), Step::Wait));
    w.answer(sent[3].0, error(ErrorCode::OffsetMismatch, C))
        .unwrap();
    w.answer(sent[4].0, error(ErrorCode::OffsetMismatch, C))
        .unwrap();
    match w.step() {
        Step::Fail(ClientError::Server { code, .. }) => {
            assert_eq!(code, ServerCode::Unavailable)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_last_append_is_given_time_for_the_servers_check() {
    let size = 100 * 1024 * 1024;
    let mut w = UploadWindow::new(size, &state(size - C, size, false)).unwrap();
    assert_eq!(w.answer_within(), REQUEST_TIMEOUT);
    let mut rid = 0;
    fill(&mut w, &mut rid);
    assert_eq!(w.answer_within(), REQUEST_TIMEOUT + Duration::from_secs(25));
}

#[test]
fn a_complete_unfinished_upload_is_finished_by_an_empty_append() {
    let size = 3 * C;
    let mut w = UploadWindow::new(size, &state(size, size, false)).unwrap();
    let mut rid = 0;
    let sent = fill(&mut w, &mut rid);
    assert_eq!(sent, vec![(1, size, 0)]);
    w.answer(1, answer_state(size, size, true)).unwrap();
    assert!(matches!(w.step(), Step::Done));
    // An empty blob is finished at create.
    let w = UploadWindow::new(0, &state(0, 0, true)).unwrap();
    assert!(w.finished);
}

#[test]
fn a_server_that_never_advances_is_given_up_on() {
    let size = 2 * C;
    let mut w = UploadWindow::new(size, &state(0, size, false)).unwrap();
    let mut rid = 0;
    let mut refused = 0;
    for _ in 0..1000 {
        match w.step() {
            Step::Send { offset, len } => {
                rid += 1;
                if w.sent(rid, offset, len).is_err() {
                    assert!(refused > 2);
                    return;
                }
            }
            Step::Wait => {
                let r = *w.inflight.keys().next().unwrap();
                w.answer(r, error(ErrorCode::OffsetMismatch, 0)).unwrap();
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("never gave up");
}

#[test]
fn offsets_past_the_size_are_protocol_errors() {
    let size = 2 * C;
    assert!(UploadWindow::new(size, &state(size + 1, size, false)).is_err());
    assert!(UploadWindow::new(size, &state(0, size + 1, false)).is_err());
    let mut w = UploadWindow::new(size, &state(0, size, false)).unwrap();
    let mut rid = 0;
    let sent = fill(&mut w, &mut rid);
    assert!(w
        .answer(sent[0].0, error(ErrorCode::OffsetMismatch, size + 1))
        .is_err());
    assert!(w
        .answer(sent[1].0, answer_state(size + 1, size, false))
        .is_err());
}
