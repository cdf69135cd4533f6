//! Messages: a type string, JSON data, and an optional raw binary body.

use crate::error::{Error, Result};
use crate::wire::{Frame, Kind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The message type of the built-in text messages.
pub const TEXT: &str = "TEXT";

/// A message: a type string, JSON data, and optionally raw bytes.
///
/// Bytes travel as bytes (not base64, not a JSON array), so any data that can
/// be represented in bytes is sent at its own size.
///
/// ```
/// use p2prs::Message;
/// let m = Message::new("ADD", 17);
/// assert_eq!(m.kind(), "ADD");
/// assert_eq!(m.data::<i64>()?, 17);
///
/// let hi = Message::text("Hi!");
/// assert_eq!(hi.kind(), "TEXT");
/// assert_eq!(hi.as_text(), Some("Hi!"));
///
/// let file = Message::bytes("FILE", vec![0, 159, 146, 150]);
/// assert_eq!(file.body(), Some(&[0u8, 159, 146, 150][..]));
/// # Ok::<(), p2prs::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    kind: String,
    data: Value,
    body: Option<Vec<u8>>,
}

impl Message {
    /// A message of type `kind` carrying `data` (anything that converts into a
    /// JSON value: numbers, strings, booleans, vectors, `serde_json::json!(..)`).
    /// For your own `Serialize` types use [`Message::with_data`].
    pub fn new(kind: impl Into<String>, data: impl Into<Value>) -> Message {
        Message {
            kind: kind.into(),
            data: data.into(),
            body: None,
        }
    }

    /// A message of type `kind` whose data is `data` serialized to JSON.
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct Point { x: i32, y: i32 }
    /// let m = p2prs::Message::with_data("POINT", &Point { x: 1, y: 2 })?;
    /// assert_eq!(m.data::<Point>()?, Point { x: 1, y: 2 });
    /// # Ok::<(), p2prs::Error>(())
    /// ```
    pub fn with_data(kind: impl Into<String>, data: &impl Serialize) -> Result<Message> {
        Ok(Message::new(kind, serde_json::to_value(data)?))
    }

    /// A built-in `TEXT` message.
    pub fn text(text: impl Into<String>) -> Message {
        Message::new(TEXT, Value::String(text.into()))
    }

    /// A message of type `kind` whose payload is raw bytes (its JSON data is null).
    pub fn bytes(kind: impl Into<String>, body: Vec<u8>) -> Message {
        Message {
            kind: kind.into(),
            data: Value::Null,
            body: Some(body),
        }
    }

    /// Attach a raw binary body to this message.
    pub fn with_body(mut self, body: Vec<u8>) -> Message {
        self.body = Some(body);
        self
    }

    /// The message type.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The JSON data as a value.
    pub fn data_value(&self) -> &Value {
        &self.data
    }

    /// The JSON data decoded into `T`; an error says what did not fit.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T> {
        T::deserialize(&self.data).map_err(Error::Json)
    }

    /// The data as text, when it is a JSON string (as in `TEXT` messages).
    pub fn as_text(&self) -> Option<&str> {
        self.data.as_str()
    }

    /// The raw binary body, if any.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// Take the raw binary body out of the message.
    pub fn into_body(self) -> Option<Vec<u8>> {
        self.body
    }

    pub(crate) fn into_parts(self) -> (String, Value, Option<Vec<u8>>) {
        (self.kind, self.data, self.body)
    }

    /// The frame of kind `kind` (and request ID `req`) that carries this message.
    pub(crate) fn into_frame(self, kind: Kind, req: Option<u64>) -> Frame {
        let mut frame = Frame::new(kind, self.kind, self.data);
        frame.req = req;
        frame.body = self.body;
        frame
    }

    /// The message a frame carries (its type, data and body).
    pub(crate) fn from_frame(frame: Frame) -> Message {
        Message {
            kind: frame.msg_type,
            data: frame.data,
            body: frame.body,
        }
    }
}
