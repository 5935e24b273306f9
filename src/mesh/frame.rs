//! Mesh transport framing: a u32 length, then a zstd-compressed message (DESIGN.md §4).
//!
//! This module owns the byte format of one gossip message on a stream connection and its
//! limits: at most 1 MiB compressed and 8 MiB once decompressed. It is pure: the
//! transport feeds it the bytes a connection reads and gets whole messages back, or an
//! error after which the transport closes that connection and counts it. Nothing here
//! trusts the peer: a length is checked before its body is buffered, and decompression
//! stops at the limit instead of inflating a bomb.

use std::io::Read as _;

/// Largest compressed body accepted.
pub const MAX_COMPRESSED: usize = 1024 * 1024;
/// Largest message once decompressed.
pub const MAX_DECOMPRESSED: usize = 8 * 1024 * 1024;
const LEN_PREFIX: usize = 4;
/// zstd level: messages are small and frequent; the fastest level keeps CPU low.
const LEVEL: i32 = 1;

/// Why a frame was refused. Bounded: these are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("compressed frame larger than 1 MiB")]
    TooLarge,
    #[error("message larger than 8 MiB once decompressed")]
    TooLargeDecompressed,
    #[error("frame body is not zstd")]
    Corrupt,
    #[error("empty frame")]
    Empty,
}

impl FrameError {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too-large",
            Self::TooLargeDecompressed => "too-large-decompressed",
            Self::Corrupt => "corrupt",
            Self::Empty => "empty",
        }
    }
}

/// Encodes one message as a frame.
pub fn encode(message: &[u8]) -> Result<Vec<u8>, FrameError> {
    if message.len() > MAX_DECOMPRESSED {
        return Err(FrameError::TooLargeDecompressed);
    }
    // One compression context per thread: making one per frame was a visible share of
    // a large mesh's CPU.
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    let body = COMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(zstd::bulk::Compressor::new(LEVEL)?);
            }
            cell.as_mut().expect("just made").compress(message)
        })
        .map_err(|_| FrameError::Corrupt)?;
    if body.len() > MAX_COMPRESSED {
        return Err(FrameError::TooLarge);
    }
    let mut frame = Vec::with_capacity(LEN_PREFIX + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decompress(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<zstd::zstd_safe::DCtx<'static>> =
            std::cell::RefCell::new(zstd::zstd_safe::DCtx::create());
    }
    CONTEXT.with(|context| decompress_with(body, &mut context.borrow_mut()))
}

fn decompress_with(
    body: &[u8],
    context: &mut zstd::zstd_safe::DCtx<'static>,
) -> Result<Vec<u8>, FrameError> {
    // A context left mid-frame by a corrupt body must not leak into the next one.
    context
        .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .map_err(|_| FrameError::Corrupt)?;
    let decoder = zstd::stream::read::Decoder::with_context(body, context);
    // Read one octet past the limit to tell "exactly at the limit" from "over it".
    let mut out = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| FrameError::Corrupt)?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(FrameError::TooLargeDecompressed);
    }
    Ok(out)
}

/// Reassembles frames from a connection's bytes, in whatever pieces they arrive.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed, or an error after
    /// which the connection must be closed (its stream can no longer be trusted).
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some(prefix) = self.buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        // Refuse before buffering: a peer announcing 4 GiB must not make us wait for it.
        if len > MAX_COMPRESSED {
            return Err(FrameError::TooLarge);
        }
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let message = decompress(&self.buf[LEN_PREFIX..LEN_PREFIX + len]);
        self.buf.drain(..LEN_PREFIX + len);
        message.map(Some)
    }

    /// Octets buffered towards the next frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn frames_round_trip_whatever_the_read_sizes() {
        let messages: Vec<Vec<u8>> = vec![b"syn".to_vec(), vec![7u8; 100_000], (0..=255).collect()];
        let stream: Vec<u8> = messages.iter().flat_map(|m| encode(m).unwrap()).collect();
        for piece in [1, 3, 4096, stream.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(piece) {
                d.push(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, messages, "pieces of {piece}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn oversize_and_garbage_frames_are_refused() {
        // An announced length over 1 MiB is refused before its body arrives.
        let mut d = Decoder::new();
        d.push(&(MAX_COMPRESSED as u32 + 1).to_be_bytes());
        assert_eq!(d.next_message(), Err(FrameError::TooLarge));

        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(FrameError::Empty));

        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(d.next_message(), Err(FrameError::Corrupt));

        // A decompression bomb: 9 MiB of zeros compress to a few hundred octets.
        let bomb = zstd::bulk::compress(&vec![0u8; 9 * 1024 * 1024], 19).unwrap();
        assert!(bomb.len() < 4096);
        let mut d = Decoder::new();
        d.push(&(bomb.len() as u32).to_be_bytes());
        d.push(&bomb);
        assert_eq!(d.next_message(), Err(FrameError::TooLargeDecompressed));

        assert_eq!(
            encode(&vec![0u8; MAX_DECOMPRESSED + 1]),
            Err(FrameError::TooLargeDecompressed)
        );
        let at_limit = encode(&vec![0u8; MAX_DECOMPRESSED]).unwrap();
        let mut d = Decoder::new();
        d.push(&at_limit);
        assert_eq!(
            d.next_message().unwrap().map(|m| m.len()),
            Some(MAX_DECOMPRESSED)
        );
    }

    proptest! {
        /// Random bytes from a peer never panic the decoder.
        #[test]
        fn random_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Decoder::new();
            d.push(&bytes);
            for _ in 0..8 {
                match d.next_message() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
