//! Cutting a byte stream into frames, sans-IO: the connection task feeds
//! whatever it read, and takes out whole frames, each in its own aligned
//! buffer.

use std::collections::VecDeque;

use bytes::Bytes;
use rkyv::util::AlignedVec;

use super::{Frame, FrameError, LEN_PREFIX};

/// Reassembles frames from a stream of bytes arriving in any split.
///
/// Each byte is copied once, from the caller's read buffer into the
/// buffer of the frame it belongs to: the archive must start at an aligned
/// address to be read in place, which a frame at an arbitrary offset of a
/// read buffer is not, so that one copy is the least there can be. Each
/// frame's buffer is allocated at its full length once the prefix is
/// known, so no frame is reallocated while it arrives; the length limit,
/// checked on the prefix, bounds what a peer can make us reserve.
#[derive(Debug)]
pub struct FrameReader {
    max_frame_len: usize,
    prefix: [u8; LEN_PREFIX],
    prefix_len: usize,
    /// The frame being received and its announced length.
    partial: Option<(AlignedVec, usize)>,
    ready: VecDeque<Frame>,
    /// Set by a bad prefix; everything pushed after it is ignored.
    failed: Option<FrameError>,
}

impl FrameReader {
    /// A reader refusing any frame whose archive is longer than
    /// `max_frame_len` bytes (the prefix not counted).
    pub fn new(max_frame_len: usize) -> Self {
        FrameReader {
            max_frame_len,
            prefix: [0; LEN_PREFIX],
            prefix_len: 0,
            partial: None,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Takes bytes as they arrive. Complete frames wait for
    /// [`next_frame`](Self::next_frame). After an oversized length prefix
    /// the stream cannot be followed any further, so the rest is dropped
    /// unread and `next_frame` reports the error.
    pub fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.failed.is_none() {
            match &mut self.partial {
                None => {
                    let take = (LEN_PREFIX - self.prefix_len).min(data.len());
                    self.prefix[self.prefix_len..self.prefix_len + take]
                        .copy_from_slice(&data[..take]);
                    self.prefix_len += take;
                    data = &data[take..];
                    if self.prefix_len == LEN_PREFIX {
                        self.prefix_len = 0;
                        self.start_frame();
                    }
                }
                Some((body, len)) => {
                    let take = (*len - body.len()).min(data.len());
                    body.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.finish_if_complete();
                }
            }
        }
    }

    /// The next complete frame, `Ok(None)` if none is complete yet, or the
    /// error that stopped the stream once the frames before it are taken.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match self.ready.pop_front() {
            Some(frame) => Ok(Some(frame)),
            None => match &self.failed {
                Some(error) => Err(error.clone()),
                None => Ok(None),
            },
        }
    }

    /// Whether the stream stands between frames, nothing of a next one
    /// received: where a peer may close it cleanly.
    pub fn is_between_frames(&self) -> bool {
        self.prefix_len == 0 && self.partial.is_none()
    }

    fn start_frame(&mut self) {
        // A u32 always fits in a usize on the targets we build for (64-bit
        // Linux); saturate rather than assume.
        let len = usize::try_from(u32::from_be_bytes(self.prefix)).unwrap_or(usize::MAX);
        if len > self.max_frame_len {
            self.failed = Some(FrameError::Oversized {
                len,
                max: self.max_frame_len,
            });
            return;
        }
        self.partial = Some((AlignedVec::with_capacity(len), len));
        // An empty frame is complete at once (and will not validate).
        self.finish_if_complete();
    }

    fn finish_if_complete(&mut self) {
        if let Some((body, len)) = &self.partial
            && body.len() == *len
            && let Some((body, _)) = self.partial.take()
        {
            self.ready.push_back(Frame {
                bytes: Bytes::from_owner(body),
            });
        }
    }
}
