//! SPDY/3.1 as Kubernetes' streaming clients speak it (draft 3.1 framing, zlib header
//! blocks with the SPDY/3 dictionary), for both ends: the server side serves remote
//! commands and port forwards; the client side exists for tests and benchmarks.
//!
//! What Kubernetes' peers rely on, and this module keeps to: every frame goes out in one
//! write; each header block is one zlib sync flush on a stream that lasts the connection
//! (one per direction); a SYN_STREAM is answered with a SYN_REPLY before any data; PINGs
//! from the peer are echoed; nothing is sent before the peer's first frame (its HTTP parser
//! may swallow bytes that follow the 101). Peers do not do SPDY flow control (they never
//! send WINDOW_UPDATE), so none is enforced here: TCP is the back-pressure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// The SPDY/3 header compression dictionary (1423 bytes, Adler-32 0xe3c6a7c2).
pub const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");

const VERSION: u16 = 3;
const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;
const FLAG_FIN: u8 = 1;
/// RST_STREAM status: the stream is refused or given up.
pub const RST_CANCEL: u32 = 5;
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// Largest frame payload accepted (SPDY's length field allows 16 MiB).
const MAX_FRAME: usize = 1 << 24;
/// Data sent in frames of at most this size.
pub const CHUNK: usize = 64 << 10;
/// Data frames at least this large are written on their own, without a copy.
const BIG_DATA: usize = 16 << 10;
/// Queued frames are written together up to about this many bytes.
const WRITE_BATCH: usize = 256 << 10;
/// Header blocks larger than this (inflated) are refused.
const MAX_HEADER_BLOCK: usize = 256 << 10;

pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE: read and ignored.
    Ignored(u16),
}

fn proto(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// The header compression of a connection: one zlib stream per direction, each made on
/// first use (a connection's writer only compresses, its reader only inflates).
#[derive(Default)]
pub struct Codec {
    deflate: Option<Compress>,
    inflate: Option<Decompress>,
}

/// The compressor's window: header blocks are small, and a small window keeps a
/// connection's zlib state near 140 KiB instead of 270 KiB (peers accept any window).
const DEFLATE_WINDOW_BITS: u8 = 11;

impl Codec {
    pub fn new() -> Self {
        Self::default()
    }

    fn deflater(&mut self) -> &mut Compress {
        self.deflate.get_or_insert_with(|| {
            let mut d =
                Compress::new_with_window_bits(Compression::default(), true, DEFLATE_WINDOW_BITS);
            // Setting the dictionary before the first block marks the stream as using it.
            let _ = d.set_dictionary(DICTIONARY);
            d
        })
    }

    fn compress(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        let deflate = self.deflater();
        loop {
            out.reserve(256);
            let before = deflate.total_in();
            // A sync flush on a vector with spare room cannot fail.
            let _ = deflate.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }

    fn decompress(&mut self, mut block: &[u8]) -> std::io::Result<Headers> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        let inflate = self.inflate.get_or_insert_with(|| Decompress::new(true));
        loop {
            raw.reserve(1024);
            let (before, out_before) = (inflate.total_in(), raw.len());
            let r = inflate.decompress_vec(block, &mut raw, FlushDecompress::Sync);
            let used = (inflate.total_in() - before) as usize;
            block = &block[used..];
            match r {
                Ok(Status::StreamEnd) => return Err(proto("SPDY header stream ended")),
                // Input left, room to write, and nothing moved: it never will.
                Ok(_) if used == 0 && raw.len() == out_before && !block.is_empty() => {
                    return Err(proto("SPDY header block makes no progress"))
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| proto(format!("SPDY header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(proto(format!("SPDY header block: {e}"))),
            }
            if raw.len() > MAX_HEADER_BLOCK {
                return Err(proto("SPDY header block too large"));
            }
            if block.is_empty() && raw.len() < raw.capacity() {
                break;
            }
        }
        parse_headers(&raw)
    }
}

fn parse_headers(raw: &[u8]) -> std::io::Result<Headers> {
    let mut p = raw;
    let mut take = |n: usize| -> std::io::Result<&[u8]> {
        if p.len() < n {
            return Err(proto("truncated SPDY header block"));
        }
        let (a, b) = p.split_at(n);
        p = b;
        Ok(a)
    };
    let u32_of = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_of(take(4)?);
    let mut out = Headers::new();
    for _ in 0..count.min(1024) {
        let n = u32_of(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).into_owned();
        let n = u32_of(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        out.push((name, value));
    }
    Ok(out)
}

/// Finds a header (names compare without case); several values are NUL-separated.
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

impl Codec {
    /// The frame's bytes, to be written in one go.
    pub fn encode(&mut self, frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(frame, &mut out);
        out
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode_into(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        if let Frame::Data { stream, fin, data } = frame {
            out.reserve(8 + data.len());
            out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
            out.push(if *fin { FLAG_FIN } else { 0 });
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
        } else {
            let f = self.encode_control(frame);
            out.extend_from_slice(&f);
        }
    }

    fn encode_control(&mut self, frame: &Frame) -> Vec<u8> {
        let fin = |b: bool| if b { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data { .. } => Vec::new(),
            Frame::SynStream {
                stream,
                fin: f,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&stream.to_be_bytes());
                p.extend_from_slice(&0u32.to_be_bytes());
                p.extend_from_slice(&[0, 0]);
                p.extend_from_slice(&self.compress(headers));
                control(TYPE_SYN_STREAM, fin(*f), &p)
            }
            Frame::SynReply {
                stream,
                fin: f,
                headers,
            } => {
                let mut p = stream.to_be_bytes().to_vec();
                p.extend_from_slice(&self.compress(headers));
                control(TYPE_SYN_REPLY, fin(*f), &p)
            }
            Frame::RstStream { stream, status } => {
                let mut p = stream.to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(TYPE_RST_STREAM, 0, &p)
            }
            Frame::Ping(id) => control(TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last, status } => {
                let mut p = last.to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(TYPE_GOAWAY, 0, &p)
            }
            Frame::Ignored(kind) => control(*kind, 0, &[]),
        }
    }

    /// Reads one frame; `None` at a clean end of the connection.
    pub async fn read(
        &mut self,
        r: &mut (impl AsyncRead + Unpin),
    ) -> std::io::Result<Option<Frame>> {
        let mut head = [0u8; 8];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(proto(format!("SPDY frame of {len} bytes")));
        }
        // Grown as bytes arrive: a peer announcing 16 MiB does not get them reserved.
        let mut payload = Vec::with_capacity(len.min(CHUNK));
        (&mut *r).take(len as u64).read_to_end(&mut payload).await?;
        if payload.len() < len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let word = |i: usize| {
            payload
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| proto("short SPDY control frame"))
        };
        if head[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: Bytes::from(payload),
            }));
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        if version != VERSION {
            return Err(proto(format!("SPDY version {version} (only 3 is spoken)")));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let fin = flags & FLAG_FIN != 0;
        Ok(Some(match kind {
            TYPE_SYN_STREAM => {
                let stream = word(0)? & 0x7fff_ffff;
                let block = payload.get(10..).ok_or_else(|| proto("short SYN_STREAM"))?;
                Frame::SynStream {
                    stream,
                    fin,
                    headers: self.decompress(block)?,
                }
            }
            TYPE_SYN_REPLY => {
                let stream = word(0)? & 0x7fff_ffff;
                Frame::SynReply {
                    stream,
                    fin,
                    headers: self.decompress(&payload[4..])?,
                }
            }
            TYPE_RST_STREAM => Frame::RstStream {
                stream: word(0)? & 0x7fff_ffff,
                status: word(4)?,
            },
            TYPE_PING => Frame::Ping(word(0)?),
            TYPE_GOAWAY => Frame::GoAway {
                last: word(0)? & 0x7fff_ffff,
                status: word(4).unwrap_or(0),
            },
            TYPE_HEADERS => {
                // Decompressed to keep the zlib stream in step, then dropped.
                if payload.len() > 4 {
                    self.decompress(&payload[4..])?;
                }
                Frame::Ignored(kind)
            }
            TYPE_SETTINGS | TYPE_WINDOW_UPDATE => Frame::Ignored(kind),
            other => return Err(proto(format!("unknown SPDY control frame type {other}"))),
        }))
    }
}

/// A stream of a connection: what the peer sends on it, and a way to send.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// Data from the peer; closed when the peer finishes or resets the stream.
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

/// Sends on one stream (data, then its end).
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl StreamWriter {
    /// Sends `data` in frames of at most [`CHUNK`]; fails once the connection is gone.
    pub async fn send(&self, data: &[u8]) -> std::io::Result<()> {
        self.send_bytes(Bytes::copy_from_slice(data)).await
    }

    /// The same without a copy: the frames share `data`.
    pub async fn send_bytes(&self, data: Bytes) -> std::io::Result<()> {
        let mut at = 0;
        while at < data.len() {
            let end = (at + CHUNK).min(data.len());
            self.out
                .send(Frame::Data {
                    stream: self.id,
                    fin: false,
                    data: data.slice(at..end),
                })
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
            at = end;
        }
        Ok(())
    }

    /// Ends this side of the stream.
    pub async fn finish(&self) {
        let _ = self
            .out
            .send(Frame::Data {
                stream: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await;
    }

    pub async fn reset(&self) {
        let _ = self
            .out
            .send(Frame::RstStream {
                stream: self.id,
                status: RST_CANCEL,
            })
            .await;
    }
}

/// One SPDY connection: a reader task dispatching frames to streams and a writer task
/// encoding frames in order.
pub struct Connection {
    out: mpsc::Sender<Frame>,
    /// Streams the peer opened (server side).
    pub incoming: mpsc::Receiver<Stream>,
    streams: Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>>,
    /// Replies to streams this side opened (client side).
    replies: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<bool>>>>,
    next_id: u32,
    last_peer_stream: Arc<std::sync::atomic::AtomicU32>,
    /// Turns true when the peer is gone (read end closed or failed, GOAWAY received).
    pub closed: watch::Receiver<bool>,
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    /// A connection dropped without `close` is cut at once (both tasks end, the socket
    /// closes).
    fn drop(&mut self) {
        self.writer.abort();
        self.reader.abort();
    }
}

impl Connection {
    /// Starts serving `io`. `server` picks stream ids (even) and whether peers' SYN_STREAMs
    /// are accepted; with `idle`, a connection quiet for its timeout is cut.
    pub fn new<T>(io: T, server: bool, idle: Option<super::Activity>) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (out, mut out_rx) = mpsc::channel::<Frame>(64);
        let (in_tx, incoming) = mpsc::channel::<Stream>(16);
        let (closed_tx, closed) = watch::channel(false);
        let streams: Arc<Mutex<HashMap<u32, mpsc::Sender<Bytes>>>> = Arc::default();
        let replies: Arc<Mutex<HashMap<u32, tokio::sync::oneshot::Sender<bool>>>> = Arc::default();
        let last_peer_stream = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (idle_w, idle_r) = (idle.clone(), idle);
        if let Some(a) = &idle_w {
            a.touch();
        }
        let writer = tokio::spawn(async move {
            let mut codec = Codec::new();
            let mut batch = Vec::with_capacity(64 << 10);
            'frames: while let Some(f) = out_rx.recv().await {
                // Whatever else is queued goes out in the same write (whole frames only).
                let mut next = Some(f);
                let mut goaway = false;
                let mut failed = false;
                while let Some(f) = next.take() {
                    goaway = matches!(f, Frame::GoAway { .. });
                    match &f {
                        // Large data is written from where it is, not copied into the batch.
                        Frame::Data { stream, fin, data } if data.len() >= BIG_DATA => {
                            batch.extend_from_slice(&stream.to_be_bytes());
                            batch.push(if *fin { FLAG_FIN } else { 0 });
                            batch.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                            failed = wr.write_all(&batch).await.is_err()
                                || wr.write_all(data).await.is_err();
                            batch.clear();
                        }
                        _ => codec.encode_into(&f, &mut batch),
                    }
                    if failed || goaway || batch.len() >= WRITE_BATCH {
                        break;
                    }
                    next = out_rx.try_recv().ok();
                }
                let failed = failed || wr.write_all(&batch).await.is_err();
                if let Some(a) = &idle_w {
                    a.touch();
                }
                batch.clear();
                if batch.capacity() > 4 * WRITE_BATCH {
                    batch.shrink_to(64 << 10);
                }
                if failed || goaway {
                    break 'frames;
                }
            }
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
        });
        let (out2, streams2, replies2, last2) = (
            out.clone(),
            streams.clone(),
            replies.clone(),
            last_peer_stream.clone(),
        );
        let reader = tokio::spawn(async move {
            let mut codec = Codec::new();
            let expired = async {
                match &idle_r {
                    Some(a) => a.expired().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            loop {
                let read = tokio::select! {
                    r = codec.read(&mut rd) => r,
                    _ = &mut expired => {
                        tracing::debug!("SPDY connection idle for too long: closed");
                        break;
                    }
                };
                let frame = match read {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!("SPDY connection: {e}");
                        break;
                    }
                };
                if let Some(a) = &idle_r {
                    a.touch();
                }
                match frame {
                    Frame::SynStream {
                        stream,
                        fin,
                        headers,
                    } => {
                        let prev = last2.load(std::sync::atomic::Ordering::Relaxed);
                        if !server || stream <= prev || stream % 2 == 0 {
                            let _ = out2
                                .send(Frame::RstStream {
                                    stream,
                                    status: RST_PROTOCOL_ERROR,
                                })
                                .await;
                            continue;
                        }
                        last2.store(stream, std::sync::atomic::Ordering::Relaxed);
                        // Replied to before anything else is sent on it.
                        if out2
                            .send(Frame::SynReply {
                                stream,
                                fin: false,
                                headers: Vec::new(),
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                        let (tx, rx) = mpsc::channel(16);
                        if !fin {
                            lock(&streams2).insert(stream, tx);
                        }
                        let s = Stream {
                            id: stream,
                            headers,
                            rx,
                            tx: StreamWriter {
                                id: stream,
                                out: out2.clone(),
                            },
                        };
                        if in_tx.send(s).await.is_err() {
                            // Nobody takes streams any more: refuse it.
                            let _ = out2
                                .send(Frame::RstStream {
                                    stream,
                                    status: RST_CANCEL,
                                })
                                .await;
                        }
                    }
                    Frame::SynReply { stream, .. } => {
                        if let Some(r) = lock(&replies2).remove(&stream) {
                            let _ = r.send(true);
                        }
                    }
                    Frame::Data { stream, fin, data } => {
                        let tx = lock(&streams2).get(&stream).cloned();
                        if let Some(tx) = tx {
                            if !data.is_empty() && tx.send(data).await.is_err() {
                                // The taker went away: what comes is dropped.
                                lock(&streams2).remove(&stream);
                            }
                        }
                        if fin {
                            lock(&streams2).remove(&stream);
                        }
                    }
                    Frame::RstStream { stream, .. } => {
                        lock(&streams2).remove(&stream);
                        if let Some(r) = lock(&replies2).remove(&stream) {
                            let _ = r.send(false);
                        }
                    }
                    Frame::Ping(id) => {
                        // The peer's pings have the other parity; ours are not sent.
                        if (id % 2 == 1) == server && out2.send(Frame::Ping(id)).await.is_err() {
                            break;
                        }
                    }
                    Frame::GoAway { .. } => break,
                    Frame::Ignored(_) => {}
                }
            }
            lock(&streams2).clear();
            lock(&replies2).clear();
            let _ = closed_tx.send(true);
        });
        Connection {
            out,
            incoming,
            streams,
            replies,
            next_id: if server { 2 } else { 1 },
            last_peer_stream,
            closed,
            writer,
            reader,
        }
    }

    /// Opens a stream with `headers` and waits for the peer's reply (client side).
    pub async fn open(&mut self, headers: Headers) -> std::io::Result<Stream> {
        let id = self.next_id;
        self.next_id += 2;
        let (tx, rx) = mpsc::channel(16);
        let (rtx, rrx) = tokio::sync::oneshot::channel();
        lock(&self.streams).insert(id, tx);
        lock(&self.replies).insert(id, rtx);
        self.out
            .send(Frame::SynStream {
                stream: id,
                fin: false,
                headers: headers.clone(),
            })
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        match rrx.await {
            Ok(true) => Ok(Stream {
                id,
                headers,
                rx,
                tx: StreamWriter {
                    id,
                    out: self.out.clone(),
                },
            }),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("SPDY stream {id} was refused"),
            )),
        }
    }

    /// Says goodbye: GOAWAY after everything queued, then the write side closes; the
    /// peer then has `linger` to read to the end and hang up (closing a socket with
    /// unread input would reset the connection under the peer's feet).
    pub async fn close(mut self, linger: Duration) {
        let last = self
            .last_peer_stream
            .load(std::sync::atomic::Ordering::Relaxed);
        let _ = self.out.send(Frame::GoAway { last, status: 0 }).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.writer).await;
        let _ = tokio::time::timeout(linger, &mut self.reader).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        let (mut a, mut b) = (1u32, 0u32);
        for &x in DICTIONARY {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    /// Two SYN_STREAMs on one header stream, as another implementation (Python's zlib
    /// at level 9 with the dictionary) wrote them.
    #[tokio::test]
    async fn frames_from_another_encoder_decode() {
        let wire = [
            unhex("80030001000000280000000100000000000078f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff"),
            unhex("800300010000002e0000000300000000000002a54748d15c04ce0516061606409ab308129599a024ce6880a119540e2502000000ffff"),
        ]
        .concat();
        let mut codec = Codec::new();
        let mut r = &wire[..];
        let f = codec.read(&mut r).await.unwrap().unwrap();
        assert_eq!(
            f,
            Frame::SynStream {
                stream: 1,
                fin: false,
                headers: vec![("streamtype".into(), "error".into())]
            }
        );
        let Some(Frame::SynStream {
            stream: 3, headers, ..
        }) = codec.read(&mut r).await.unwrap()
        else {
            panic!("second frame")
        };
        assert_eq!(header(&headers, "port"), Some("8080"));
        assert_eq!(header(&headers, "requestID"), Some("0"));
        assert_eq!(header(&headers, "streamType"), Some("data"));
        assert!(codec.read(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn frames_round_trip_on_one_header_stream() {
        let mut enc = Codec::new();
        let frames = vec![
            Frame::SynReply {
                stream: 1,
                fin: false,
                headers: vec![],
            },
            Frame::SynStream {
                stream: 5,
                fin: true,
                headers: vec![("streamtype".into(), "stdout".into())],
            },
            Frame::Data {
                stream: 5,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream: 7,
                status: RST_CANCEL,
            },
            Frame::Ping(3),
            Frame::GoAway { last: 7, status: 0 },
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| enc.encode(f)).collect();
        // A zlib stream with the dictionary named in its header.
        assert_eq!(wire[12] & 0x0f, 8, "deflate");
        assert_eq!(wire[12] >> 4, DEFLATE_WINDOW_BITS - 8, "window");
        assert_ne!(wire[13] & 0x20, 0, "FDICT");
        assert_eq!(
            u16::from_be_bytes([wire[12], wire[13]]) % 31,
            0,
            "header check"
        );
        assert_eq!(&wire[14..18], &[0xe3, 0xc6, 0xa7, 0xc2]);
        let mut dec = Codec::new();
        let mut r = &wire[..];
        for f in frames {
            assert_eq!(dec.read(&mut r).await.unwrap(), Some(f));
        }
    }

    #[tokio::test]
    async fn bad_frames_are_errors_not_panics() {
        let mut dec = Codec::new();
        // Unknown control type.
        let mut r = &[0x80, 3, 0, 99, 0, 0, 0, 0][..];
        assert!(dec.read(&mut r).await.is_err());
        // A SYN_STREAM whose header block is garbage.
        let mut r = &[
            0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2,
        ][..];
        assert!(Codec::new().read(&mut r).await.is_err());
        // Truncated.
        let mut r = &[0x80, 3, 0, 6, 0, 0, 0, 4, 0][..];
        assert!(Codec::new().read(&mut r).await.is_err());
        assert!(parse_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
    }

    /// A bounded stand-in for fuzzing (see fuzz/, target `spdy_frames`): valid frames
    /// with bytes flipped, cut and spliced. Every outcome is a frame, an error or the end,
    /// never a panic.
    #[tokio::test]
    async fn mutated_frames_never_panic() {
        let mut enc = Codec::new();
        let mut seed = [
            unhex("80030001000000280000000100000000000078f9e3c6a7c202a62346703a2b294a4dcc851625aca9a08006000000ffff"),
            unhex("800300010000002e0000000300000000000002a54748d15c04ce0516061606409ab308129599a024ce6880a119540e2502000000ffff"),
        ]
        .concat();
        for f in [
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::from_static(b"payload"),
            },
            Frame::Ping(1),
            Frame::RstStream {
                stream: 3,
                status: RST_CANCEL,
            },
            Frame::GoAway { last: 3, status: 0 },
            Frame::Ignored(TYPE_WINDOW_UPDATE),
        ] {
            seed.extend(enc.encode(&f));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut data = seed.clone();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % data.len();
                match next() % 4 {
                    0 => data[at] ^= 1 << (next() % 8),
                    1 => data[at] = [0, 0x80, 0xff, 3][(next() % 4) as usize],
                    2 => data.truncate(at.max(1)),
                    _ => {
                        let from = (next() as usize) % data.len();
                        data.insert(at, data[from]);
                    }
                }
            }
            let mut codec = Codec::new();
            let mut r = &data[..];
            for _ in 0..64 {
                match codec.read(&mut r).await {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[tokio::test]
    async fn a_connection_replies_echoes_pings_and_carries_data_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut server = Connection::new(a, true, None);
        let mut client = Connection::new(b, false, None);
        let opener = tokio::spawn(async move {
            let mut s = client
                .open(vec![("streamtype".into(), "stdin".into())])
                .await
                .unwrap();
            s.tx.send(b"ping").await.unwrap();
            s.tx.finish().await;
            let got = s.rx.recv().await.unwrap();
            (client, got)
        });
        let mut s = server.incoming.recv().await.unwrap();
        assert_eq!(header(&s.headers, "streamtype"), Some("stdin"));
        assert_eq!(&s.rx.recv().await.unwrap()[..], b"ping");
        assert!(s.rx.recv().await.is_none(), "FIN ends the stream");
        s.tx.send(b"pong").await.unwrap();
        let (client, got) = opener.await.unwrap();
        assert_eq!(&got[..], b"pong");
        client.close(Duration::ZERO).await;
        let mut closed = server.closed.clone();
        closed.wait_for(|c| *c).await.unwrap();
    }
}
