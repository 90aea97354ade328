//! Byte payloads in JSON: text when the bytes are UTF-8, base64 otherwise.

use std::fmt;

use base64::Engine as _;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Arbitrary bytes that travel in JSON as `"plain string"`, `{"text": "..."}` or
/// `{"base64": "..."}`. They serialize as `{"text": ...}` when valid UTF-8, else as
/// `{"base64": ...}`, so every byte round-trips.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Data(pub Vec<u8>);

impl Data {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        Data(v)
    }
}

impl From<&str> for Data {
    fn from(s: &str) -> Self {
        Data(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if s.len() <= 64 => write!(f, "Data({s:?})"),
            _ => write!(f, "Data({} bytes)", self.0.len()),
        }
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        match std::str::from_utf8(&self.0) {
            Ok(text) => map.serialize_entry("text", text)?,
            Err(_) => map.serialize_entry("base64", &B64.encode(&self.0))?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string, {"text": "..."} or {"base64": "..."}"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Data, E> {
                Ok(Data(v.as_bytes().to_vec()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(r#"expected "text" or "base64", got {}"#));
                };
                let data = match key.as_str() {
                    "text" => Data(map.next_value::<String>()?.into_bytes()),
                    "base64" => {
                        let s = map.next_value::<String>()?;
                        Data(B64.decode(s.as_bytes()).map_err(|e| {
                            de::Error::custom(format!("field \"base64\" is not valid base64: {e}"))
                        })?)
                    }
                    other => return Err(de::Error::unknown_field(other, &["text", "base64"])),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected field {extra:?}: give exactly one of \"text\" or \"base64\""
                    )));
                }
                Ok(data)
            }
        }
        d.deserialize_any(V)
    }
}

/// Encodes bytes as standard base64 (used for results that are not UTF-8).
pub fn to_base64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes standard base64.
pub fn from_base64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    B64.decode(s.as_bytes())
}

/// In the OpenAPI document: a string, `{"text": ...}` or `{"base64": ...}`.
impl utoipa::PartialSchema for Data {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        let field = |name: &str, doc: &str| {
            ObjectBuilder::new()
                .property(
                    name,
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some(doc)),
                )
                .required(name)
                .additional_properties(Some(
                    utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
                ))
        };
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("UTF-8 text")),
            )
            .item(field("text", "UTF-8 text"))
            .item(field("base64", "bytes, base64 (standard alphabet, padded)"))
            .description(Some(
                "Bytes: a string, {\"text\": ...} or {\"base64\": ...}",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Data {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_round_trip() {
        for bytes in [b"hello\n".to_vec(), vec![0xff, 0x00, 0x80]] {
            let json = serde_json::to_string(&Data(bytes.clone())).unwrap();
            let back: Data = serde_json::from_str(&json).unwrap();
            assert_eq!(back.0, bytes, "{json}");
        }
        assert_eq!(
            serde_json::to_string(&Data::from("hi")).unwrap(),
            r#"{"text":"hi"}"#
        );
    }

    #[test]
    fn accepts_plain_strings_and_rejects_ambiguity() {
        assert_eq!(serde_json::from_str::<Data>(r#""x""#).unwrap().0, b"x");
        assert_eq!(
            serde_json::from_str::<Data>(r#"{"base64":"AAE="}"#)
                .unwrap()
                .0,
            [0, 1]
        );
        let e = serde_json::from_str::<Data>(r#"{"text":"a","base64":"AA=="}"#).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = serde_json::from_str::<Data>(r#"{"base64":"!!"}"#).unwrap_err();
        assert!(e.to_string().contains("not valid base64"), "{e}");
        let e = serde_json::from_str::<Data>(r#"{"hex":"00"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `hex`"), "{e}");
    }
}
