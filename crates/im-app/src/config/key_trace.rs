//! Every key the configuration types accept, read from their own `Deserialize` impls: a
//! deserializer that answers each struct with all of its fields, each option with a value, each
//! list with one element and each enum with its first variant, and writes down the paths it was
//! asked for. The test that `deploy/im.example.toml` documents every key walks these paths, so a
//! field added to a section without a line in the example fails it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::rc::Rc;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// What a trace found.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// Dotted paths of every key (`http.max_tokens`, `models[].name`).
    pub paths: BTreeSet<String>,
    /// Paths whose type decides its shape from the input (an untagged enum): their tables must be
    /// traced as roots of their own.
    pub opaque: BTreeSet<String>,
}

/// Traces `T`, its keys named under `root` (`""` for the document itself).
pub(crate) fn trace<T: DeserializeOwned>(root: &str, keys: &mut Keys) {
    let shared = Rc::new(RefCell::new(std::mem::take(keys)));
    let tracer = Tracer {
        path: root.to_owned(),
        keys: shared.clone(),
    };
    if let Err(e) = T::deserialize(tracer) {
        panic!("tracing {}: {e}", std::any::type_name::<T>());
    }
    *keys = Rc::try_unwrap(shared)
        .expect("the tracers are gone")
        .into_inner();
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<M: fmt::Display>(msg: M) -> TraceError {
        TraceError(msg.to_string())
    }
}

struct Tracer {
    path: String,
    keys: Rc<RefCell<Keys>>,
}

impl Tracer {
    fn child(&self, segment: &str) -> Tracer {
        let path = if self.path.is_empty() {
            segment.to_owned()
        } else if segment == "[]" {
            format!("{}[]", self.path)
        } else {
            format!("{}.{segment}", self.path)
        };
        Tracer {
            path,
            keys: self.keys.clone(),
        }
    }
}

macro_rules! answer {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Tracer {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.keys.borrow_mut().opaque.insert(self.path.clone());
        visitor.visit_str("")
    }

    answer! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0),
        deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0),
        deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0),
        deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0),
        deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0),
        deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('a'),
        deserialize_str => visit_str(""),
        deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]),
        deserialize_byte_buf => visit_bytes(&[]),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str(""),
        deserialize_ignored_any => visit_unit(),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        visitor.visit_seq(Elements {
            element: Some(self.child("[]")),
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        // A map's keys are the user's (deadlines per kind): the map itself is the key.
        visitor.visit_map(Fields {
            parent: self,
            fields: &[],
            next: 0,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        {
            let mut keys = self.keys.borrow_mut();
            for field in fields {
                keys.paths.insert(self.child(field).path);
            }
        }
        visitor.visit_map(Fields {
            parent: self,
            fields,
            next: 0,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_enum(FirstVariant {
            tracer: self,
            name: variants.first().copied().unwrap_or(""),
        })
    }
}

/// One element of a list.
struct Elements {
    element: Option<Tracer>,
}

impl<'de> SeqAccess<'de> for Elements {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, TraceError> {
        self.element.take().map(|t| seed.deserialize(t)).transpose()
    }
}

/// Every field of a struct, each once.
struct Fields {
    parent: Tracer,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(*field))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, TraceError> {
        let field = self.fields[self.next];
        self.next += 1;
        seed.deserialize(self.parent.child(field))
    }
}

/// An enum answered with its first variant.
struct FirstVariant {
    tracer: Tracer,
    name: &'static str,
}

impl<'de> EnumAccess<'de> for FirstVariant {
    type Error = TraceError;
    type Variant = Tracer;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Tracer), TraceError> {
        let name =
            seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(self.name))?;
        Ok((name, self.tracer))
    }
}

impl<'de> VariantAccess<'de> for Tracer {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, TraceError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}
