#![allow(clippy::unwrap_used)]
//! The in-place transport agrees with snow's own, byte for byte, both
//! ways and for both ciphers; `Sealing` cuts a send as the receiver
//! expects.

use super::*;
use crate::handshake::split;
use crate::keys::builder;
use crate::{Keypair, Pattern};

/// A finished XX handshake in memory: the initiator's and the
/// responder's states, ready to split.
fn handshake(cipher: Cipher) -> (snow::HandshakeState, snow::HandshakeState) {
    let (a, b) = (Keypair::generate(), Keypair::generate());
    let mut i = builder(Pattern::Xx, cipher)
        .local_private_key(&a.secret[..])
        .build_initiator()
        .unwrap();
    let mut r = builder(Pattern::Xx, cipher)
        .local_private_key(&b.secret[..])
        .build_responder()
        .unwrap();
    let (mut msg, mut scratch) = ([0u8; 256], [0u8; 256]);
    let n = i.write_message(&[], &mut msg).unwrap();
    r.read_message(&msg[..n], &mut scratch).unwrap();
    let n = r.write_message(&[], &mut msg).unwrap();
    i.read_message(&msg[..n], &mut scratch).unwrap();
    let n = i.write_message(&[], &mut msg).unwrap();
    r.read_message(&msg[..n], &mut scratch).unwrap();
    (i, r)
}

/// The initiator's sending state and the responder's receiving one.
fn one_way(cipher: Cipher) -> (CipherState, CipherState) {
    let (mut i, mut r) = handshake(cipher);
    let (send, _) = split(&mut i, cipher).unwrap();
    let (_, recv) = split(&mut r, cipher).unwrap();
    (send, recv)
}

/// `plain` sealed by `c`: the ciphertext, then the tag.
fn sealed(c: &mut CipherState, plain: &[u8]) -> Vec<u8> {
    let mut msg = plain.to_vec();
    let tag = c.seal_in_place(&mut msg).unwrap();
    msg.extend_from_slice(&tag);
    msg
}

/// Messages of these plaintext sizes, each way.
const SIZES: [usize; 6] = [0, 1, 15, 16, 1000, MAX_NOISE_PLAINTEXT];

#[test]
fn the_in_place_transport_is_snows_transport() {
    for cipher in [Cipher::AesGcm, Cipher::ChaChaPoly] {
        let (mut i, mut r) = handshake(cipher);
        let (mut i_send, mut i_recv) = split(&mut i, cipher).unwrap();
        let (mut r_send, mut r_recv) = split(&mut r, cipher).unwrap();
        let snow_i = i.into_stateless_transport_mode().unwrap();
        let snow_r = r.into_stateless_transport_mode().unwrap();
        let mut theirs = vec![0u8; MAX_NOISE_PLAINTEXT + TAG_LEN];
        let mut opened = vec![0u8; MAX_NOISE_PLAINTEXT + TAG_LEN];
        for (nonce, &size) in SIZES.iter().enumerate() {
            let nonce = nonce as u64;
            let plain: Vec<u8> = (0..size).map(|k| (k * 7 + size) as u8).collect();
            // Ours, initiator to responder: the same bytes as snow's, and
            // snow opens them.
            let ours = sealed(&mut i_send, &plain);
            let n = snow_i.write_message(nonce, &plain, &mut theirs).unwrap();
            assert_eq!(ours, theirs[..n], "{cipher:?} sealing, {size} bytes");
            let n = snow_r.read_message(nonce, &ours, &mut opened).unwrap();
            assert_eq!(opened[..n], plain[..]);
            // Snow's, responder to initiator, opened by ours.
            let n = snow_r.write_message(nonce, &plain, &mut theirs).unwrap();
            let mut wire = theirs[..n].to_vec();
            let k = i_recv.open_in_place(&mut wire).unwrap();
            assert_eq!(wire[..k], plain[..], "{cipher:?} opening, {size} bytes");
            // Ours, responder to initiator, opened by snow.
            let ours = sealed(&mut r_send, &plain);
            let n = snow_i.read_message(nonce, &ours, &mut opened).unwrap();
            assert_eq!(opened[..n], plain[..]);
            // Snow's, initiator to responder, opened by ours.
            let n = snow_i.write_message(nonce, &plain, &mut theirs).unwrap();
            let mut wire = theirs[..n].to_vec();
            let k = r_recv.open_in_place(&mut wire).unwrap();
            assert_eq!(wire[..k], plain[..]);
        }
    }
}

#[test]
fn a_tampered_or_out_of_order_message_does_not_open() {
    let cipher = Cipher::AesGcm;
    let (mut send, mut recv) = one_way(cipher);
    let msg = sealed(&mut send, b"hello");
    let mut flipped = msg.clone();
    flipped[2] ^= 1;
    assert!(recv.open_in_place(&mut flipped).is_err());
    // The failed attempt used nonce 0: the genuine message does not open
    // at nonce 1 (the channel is closed after any failure anyway).
    assert!(recv.open_in_place(&mut msg.clone()).is_err());
    // Nor does a message sealed with the other direction's key: the
    // responder's own message opens at the initiator, not at itself.
    let (mut i, mut r) = handshake(cipher);
    let (_, mut i_recv) = split(&mut i, cipher).unwrap();
    let (mut r_send, mut r_recv) = split(&mut r, cipher).unwrap();
    let m = sealed(&mut r_send, b"x");
    assert!(r_recv.open_in_place(&mut m.clone()).is_err());
    assert!(i_recv.open_in_place(&mut m.clone()).is_ok());
}

#[test]
fn the_nonce_stops_before_the_reserved_value() {
    let mut c = CipherState::new(Cipher::ChaChaPoly, &[7; 32]).unwrap();
    c.nonce = u64::MAX - 1;
    assert!(c.seal_in_place(&mut [1, 2, 3]).is_ok());
    assert!(matches!(
        c.seal_in_place(&mut [1, 2, 3]),
        Err(TransportError::Encrypt(_))
    ));
    let mut d = CipherState::new(Cipher::ChaChaPoly, &[7; 32]).unwrap();
    d.nonce = u64::MAX;
    assert!(matches!(
        d.open_in_place(&mut [0; TAG_LEN]),
        Err(TransportError::Decrypt)
    ));
}

/// Splits `wire` into its Noise messages and opens them with `recv`:
/// each message's plaintext length, and all the plaintext.
fn open_all(recv: &mut CipherState, mut wire: &[u8]) -> (Vec<usize>, Vec<u8>) {
    let (mut lens, mut plain) = (Vec::new(), Vec::new());
    while !wire.is_empty() {
        let len = usize::from(u16::from_be_bytes([wire[0], wire[1]]));
        let mut msg = wire[2..2 + len].to_vec();
        let n = recv.open_in_place(&mut msg).unwrap();
        lens.push(n);
        plain.extend_from_slice(&msg[..n]);
        wire = &wire[2 + len..];
    }
    (lens, plain)
}

#[test]
fn a_send_is_cut_into_full_messages_whatever_its_writes() {
    let (mut send, mut recv) = one_way(Cipher::AesGcm);
    let data: Vec<u8> = (0..3 * MAX_NOISE_PLAINTEXT + 10)
        .map(|k| (k % 251) as u8)
        .collect();
    // Written in uneven pieces, one of them across a message boundary.
    let mut sealing = Sealing::new(&mut send, data.len());
    for piece in [&data[..4], &data[4..70_000], &data[70_000..]] {
        sealing.write(piece).unwrap();
    }
    let wire = sealing.finish().unwrap();
    assert_eq!(wire.len(), data.len() + 4 * (MSG_LEN_PREFIX + TAG_LEN));
    let (lens, plain) = open_all(&mut recv, &wire);
    assert_eq!(
        lens,
        [
            MAX_NOISE_PLAINTEXT,
            MAX_NOISE_PLAINTEXT,
            MAX_NOISE_PLAINTEXT,
            10
        ]
    );
    assert_eq!(plain, data);
    // Exactly one message's worth: no empty message after it.
    let mut sealing = Sealing::new(&mut send, 0);
    sealing.write(&vec![9u8; MAX_NOISE_PLAINTEXT]).unwrap();
    let wire = sealing.finish().unwrap();
    assert_eq!(open_all(&mut recv, &wire).0, [MAX_NOISE_PLAINTEXT]);
    // Nothing written: no bytes at all.
    assert!(Sealing::new(&mut send, 0).finish().unwrap().is_empty());
}
