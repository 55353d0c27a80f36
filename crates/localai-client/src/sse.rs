//! An incremental parser for LocalAI's chat event streams, both error dialects included.

use serde_json::Value;

use crate::client::ChatChunk;
use crate::error::ClientError;

/// Feed bytes with [`push`](Self::push); take items with [`next_item`](Self::next_item).
/// Each byte is scanned once for event boundaries (a chunk does not rescan the buffer), and one
/// event may not grow past [`MAX_STREAM_EVENT`](crate::client::MAX_STREAM_EVENT) bytes.
#[derive(Default, Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no event boundary.
    scanned: usize,
}

impl SseParser {
    /// Append received bytes; an event over the size limit is a protocol error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > crate::client::MAX_STREAM_EVENT
            && find_event_end(&self.buf, self.scanned).is_none()
        {
            self.buf.clear();
            self.scanned = 0;
            return Err(ClientError::Protocol(format!(
                "an event inside the stream is over {} bytes",
                crate::client::MAX_STREAM_EVENT
            )));
        }
        Ok(())
    }

    /// The next complete item: `None` if more bytes are needed, `Some(Ok(None))` at `[DONE]`,
    /// `Some(Err(_))` for an error inside the stream or an unparsable event.
    pub fn next_item(&mut self) -> Option<Result<Option<ChatChunk>, ClientError>> {
        loop {
            let Some((end, sep)) = find_event_end(&self.buf, self.scanned) else {
                // A separator may straddle the next push: rescan only its last 3 bytes.
                self.scanned = self.buf.len().saturating_sub(3);
                return None;
            };
            let event: Vec<u8> = self.buf.drain(..end + sep).take(end).collect();
            self.scanned = 0;
            let text = String::from_utf8_lossy(&event);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue; // comments, keep-alives, other fields
            }
            let data = data.join("\n");
            if data.trim() == "[DONE]" {
                return Some(Ok(None));
            }
            return Some(parse_chunk(&data));
        }
    }
}

fn find_event_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let tail = &buf[from.min(buf.len())..];
    let lf = tail
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (from + p, 2));
    let crlf = tail
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (from + p, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_chunk(data: &str) -> Result<Option<ChatChunk>, ClientError> {
    let raw: Value = serde_json::from_str(data)
        .map_err(|e| ClientError::Protocol(format!("invalid JSON in the stream: {e}")))?;
    if let Some(err) = raw.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| err.to_string(), str::to_owned);
        return Err(ClientError::Stream(msg));
    }
    // A chat chunk's `delta.content`, or a text completion chunk's `text`.
    // (Indexing, not `pointer`: a pointer allocates a string per step.)
    let choice = &raw["choices"][0];
    let delta = choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .unwrap_or("")
        .to_owned();
    if let Some(msg) = delta.strip_prefix("Internal error:") {
        return Err(ClientError::Stream(msg.trim().to_owned()));
    }
    let finish_reason = raw["choices"][0]["finish_reason"]
        .as_str()
        .map(str::to_owned);
    Ok(Some(ChatChunk {
        raw,
        delta,
        finish_reason,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &str) -> Vec<Result<Option<String>, String>> {
        let mut p = SseParser::default();
        p.push(input.as_bytes()).expect("small");
        std::iter::from_fn(|| p.next_item())
            .map(|r| r.map(|c| c.map(|c| c.delta)).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn chunks_then_done() {
        let s = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n: keep-alive\n\ndata: [DONE]\n\n";
        assert_eq!(items(s), vec![Ok(Some("Hi".into())), Ok(None)]);
    }

    #[test]
    fn split_across_pushes_and_crlf() {
        let mut p = SseParser::default();
        p.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"a")
            .expect("small");
        assert!(p.next_item().is_none());
        p.push(b"b\"}}]}\r\n\r\n").expect("small");
        assert_eq!(
            p.next_item().map(|r| r.map(|c| c.map(|c| c.delta)).ok()),
            Some(Some(Some("ab".into())))
        );
    }

    #[test]
    fn both_error_dialects() {
        let v4 = "data: {\"error\":{\"code\":500,\"message\":\"boom\",\"type\":\"x\"}}\n\n";
        assert!(matches!(items(v4)[0], Err(ref m) if m.contains("boom")));
        let v3 = "data: {\"choices\":[{\"delta\":{\"content\":\"Internal error: kaput\"}}]}\n\n";
        assert!(matches!(items(v3)[0], Err(ref m) if m.contains("kaput")));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(matches!(items("data: {not json\n\n")[0], Err(ref m) if m.contains("malformed")));
    }
}
