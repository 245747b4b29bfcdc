//! The one `key=value,key=value` parser behind every flag (`--disk`, `--net`, `--vsock`,
//! `--balloon`, `--memory`): it deserializes straight into the serde types the JSON config uses,
//! so a flag and its JSON key accept the same things (booleans: on/off, true/false, yes/no, 1/0).

use serde::de::{self, DeserializeOwned, IntoDeserializer, MapAccess, Visitor};

/// Why a `key=value` list does not fit its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyValueError(String);

impl de::Error for KeyValueError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// Parse `s` (`a=1,b=on`; keys may use '-' for '_') into `T`.
pub fn from_str<T: DeserializeOwned>(s: &str) -> Result<T, KeyValueError> {
    let mut pairs = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| KeyValueError(format!("'{part}' is not key=value")))?;
        pairs.push((k.trim().replace('-', "_"), v.trim().to_string()));
    }
    T::deserialize(Pairs { pairs, next: 0 })
}

/// Parse a boolean word.
pub fn parse_bool(v: &str) -> Result<bool, KeyValueError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(KeyValueError(format!("'{v}' is not on or off"))),
    }
}

/// The whole list, as a map.
struct Pairs {
    pairs: Vec<(String, String)>,
    next: usize,
}

impl<'de> de::Deserializer<'de> for Pairs {
    type Error = KeyValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> MapAccess<'de> for Pairs {
    type Error = KeyValueError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, KeyValueError> {
        match self.pairs.get(self.next) {
            None => Ok(None),
            Some((k, _)) => seed.deserialize(k.as_str().into_deserializer()).map(Some),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, KeyValueError> {
        let (k, v) = self
            .pairs
            .get(self.next)
            .ok_or_else(|| KeyValueError("a value without a key".into()))?;
        self.next += 1;
        seed.deserialize(Value(v))
            .map_err(|e| KeyValueError(format!("{k}={v}: {e}")))
    }
}

/// One value: a word that becomes whatever type the field has.
struct Value<'a>(&'a str);

impl Value<'_> {
    fn number<T: std::str::FromStr>(&self) -> Result<T, KeyValueError> {
        self.0
            .parse()
            .map_err(|_| KeyValueError(format!("'{}' is not a number", self.0)))
    }
}

macro_rules! numbers {
    ($($method:ident $visit:ident $t:ty),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
            visitor.$visit(self.number::<$t>()?)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Value<'_> {
    type Error = KeyValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_str(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_bool(parse_bool(self.0)?)
    }

    numbers! {
        deserialize_u8 visit_u8 u8, deserialize_u16 visit_u16 u16, deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64, deserialize_i8 visit_i8 i8, deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32, deserialize_i64 visit_i64 i64
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KeyValueError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KeyValueError> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        path: std::path::PathBuf,
        #[serde(default)]
        readonly: bool,
        id: Option<String>,
        #[serde(default)]
        count: u32,
    }

    #[test]
    fn values_take_the_field_types() {
        let t: T = from_str("path=/x,readonly=yes,id=a,count=7").unwrap();
        assert_eq!(
            t,
            T {
                path: "/x".into(),
                readonly: true,
                id: Some("a".into()),
                count: 7
            }
        );
        for b in ["on", "true", "yes", "1"] {
            assert!(
                from_str::<T>(&format!("path=/x,readonly={b}"))
                    .unwrap()
                    .readonly
            );
        }
        for b in ["off", "false", "no", "0"] {
            assert!(
                !from_str::<T>(&format!("path=/x,readonly={b}"))
                    .unwrap()
                    .readonly
            );
        }
    }

    #[test]
    fn bad_lists_are_refused() {
        for bad in [
            "",
            "/x",
            "path=/x,readonly=maybe",
            "path=/x,colour=red",
            "path=/a,path=/b",
            "path=/x,count=-1",
            "path=/x,count=99999999999",
        ] {
            assert!(from_str::<T>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hyphens_in_keys_mean_underscores() {
        #[derive(Deserialize)]
        struct B {
            free_page_reporting: bool,
        }
        assert!(
            from_str::<B>("free-page-reporting=on")
                .unwrap()
                .free_page_reporting
        );
    }
}
