//! How one field of a message travels ([`Codec`]), and [`protocol!`](crate::protocol), which
//! writes a protocol's message enum and its [`Message`](super::Message) implementation from a
//! list of kinds and their fields.
//!
//! A message is its kind byte, then its fields in the order they are declared, each in its
//! codec's layout: little-endian `u16`/`u32`/`u64`/`f32`, fixed byte arrays as they are,
//! [`Tensor`]s as a length word and contents. A field whose layout or limit is its own names
//! its codec (`labels: Vec<u32> as Labels`).

use braid_core::bytes::{Reader, Writer};

use super::{Limits, Tensor, WireError};

/// The layout of a field of type `T`: its length, how it is written, and how it is read back,
/// with every length checked against the run's [`Limits`] before anything is allocated.
pub trait Codec<T> {
    /// Bytes [`Codec::write`] writes for `value`.
    fn size(value: &T) -> usize;
    /// Writes `value`.
    fn write(value: &T, w: &mut Writer);
    /// Reads a value; `name` (the field's) goes into errors.
    fn read(r: &mut Reader<'_>, name: &'static str, limits: &Limits) -> Result<T, WireError>;
}

/// The usual layout of a field's type: numbers little-endian, arrays raw, tensors as
/// [`Tensor::encode`] writes them.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

macro_rules! plain_numbers {
    ($($t:ident),*) => {$(
        impl Codec<$t> for Plain {
            fn size(_: &$t) -> usize {
                std::mem::size_of::<$t>()
            }
            fn write(value: &$t, w: &mut Writer) {
                w.$t(*value);
            }
            fn read(r: &mut Reader<'_>, name: &'static str, _: &Limits) -> Result<$t, WireError> {
                Ok(r.$t(name)?)
            }
        }
    )*};
}

plain_numbers!(u8, u16, u32, u64, f32);

impl<const N: usize> Codec<[u8; N]> for Plain {
    fn size(_: &[u8; N]) -> usize {
        N
    }
    fn write(value: &[u8; N], w: &mut Writer) {
        w.raw(value);
    }
    fn read(r: &mut Reader<'_>, name: &'static str, _: &Limits) -> Result<[u8; N], WireError> {
        Ok(r.array(name)?)
    }
}

impl Codec<Tensor> for Plain {
    fn size(value: &Tensor) -> usize {
        value.encoded_len()
    }
    fn write(value: &Tensor, w: &mut Writer) {
        value.encode(w);
    }
    fn read(r: &mut Reader<'_>, _: &'static str, limits: &Limits) -> Result<Tensor, WireError> {
        Tensor::decode(r, limits)
    }
}

/// Class labels after a `u32` count of at most `limits.max_values`: one byte each when every
/// label is below 256 (the layout of braid's first wire version, so such messages are
/// unchanged), else the count with its top bit set and four bytes (`u32`, little-endian) each.
/// Only the shorter form is accepted for a set of labels.
#[derive(Debug, Clone, Copy)]
pub struct Labels;

/// The count bit that marks four-byte labels.
const WIDE_LABELS: u32 = 1 << 31;

fn narrow(labels: &[u32]) -> bool {
    labels.iter().all(|&l| l < 256)
}

impl Codec<Vec<u32>> for Labels {
    fn size(value: &Vec<u32>) -> usize {
        4 + value.len() * if narrow(value) { 1 } else { 4 }
    }
    fn write(value: &Vec<u32>, w: &mut Writer) {
        // Counts are bounded by `limits.max_values` (far below 2^31) when read back.
        let n = u32::try_from(value.len()).unwrap_or(u32::MAX) & !WIDE_LABELS;
        if narrow(value) {
            w.u32(n);
            for &l in value {
                w.u8(l as u8);
            }
        } else {
            w.u32(n | WIDE_LABELS);
            for &l in value {
                w.u32(l);
            }
        }
    }
    fn read(r: &mut Reader<'_>, _: &'static str, limits: &Limits) -> Result<Vec<u32>, WireError> {
        let raw = r.u32("label count")?;
        let (wide, n) = (raw & WIDE_LABELS != 0, (raw & !WIDE_LABELS) as usize);
        if n > limits.max_values {
            return Err(WireError::TooLarge {
                got: n,
                max: limits.max_values,
            });
        }
        if !wide {
            return Ok(r.take(n, "labels")?.iter().map(|&b| u32::from(b)).collect());
        }
        let labels: Vec<u32> = r
            .take(n.saturating_mul(4), "labels")?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if narrow(&labels) {
            return Err(WireError::Malformed(
                "labels below 256 sent four bytes each".into(),
            ));
        }
        Ok(labels)
    }
}

/// The round or step a field holds, widened (for [`Message::round`](super::Message::round)).
#[doc(hidden)]
pub fn step_of<T: Copy + Into<u64>>(value: &T) -> u64 {
    (*value).into()
}

/// The first of `steps`, if any (the round of a kind that declares one).
#[doc(hidden)]
pub fn round_of(steps: &[u64]) -> Option<u64> {
    steps.first().copied()
}

/// The codec a field names, or [`Plain`] (a helper of [`protocol!`](crate::protocol)).
#[doc(hidden)]
#[macro_export]
macro_rules! __wire_codec {
    ($t:ty) => {
        $crate::wire::Plain
    };
    ($t:ty, $codec:ty) => {
        $codec
    };
}

/// The kinds of a [`protocol!`] marked `[replay]`, as a slice (an accumulator over the kinds).
#[doc(hidden)]
#[macro_export]
macro_rules! __replayed {
    ([$($acc:literal),*]) => {
        &[$($acc),*]
    };
    ([$($acc:literal),*] ($k:literal replay) $($rest:tt)*) => {
        $crate::__replayed!([$($acc,)* $k] $($rest)*)
    };
    ([$($acc:literal),*] ($k:literal) $($rest:tt)*) => {
        $crate::__replayed!([$($acc),*] $($rest)*)
    };
}

/// Declares a protocol: its message enum (deriving `Debug`, `Clone` and `PartialEq`, as
/// [`Message`](crate::wire::Message) asks) and the `Message` implementation, whose layout is the
/// kind byte and then each field in order.
///
/// ```
/// use braid_engine::wire::{Body, Limits, Message, Tensor};
///
/// braid_engine::protocol! {
///     /// A tiny protocol.
///     pub enum Ping {
///         protocol: "ping", tag: 200, version: 1;
///         /// `model` for round `round`: the receiver trains from it.
///         Model(1, "model", round = round) [replay] { round: u32, model: Tensor },
///         /// Goodbye (no round).
///         Bye(2, "bye") {},
///     }
/// }
///
/// let m = Body::Msg(Ping::Model { round: 3, model: Tensor::exact(vec![1.0, 2.0]) });
/// let bytes = m.encode();
/// assert_eq!(bytes.len(), m.encoded_len());
/// assert_eq!(Body::<Ping>::decode(&bytes, &Limits::new(2)), Ok(m));
/// assert_eq!(Ping::Bye {}.round(), None);
/// assert_eq!(Ping::REPLAYED, ["model"]);
/// ```
///
/// Each kind is `Name(kind byte, "name for logs"[, round = field])[ [replay]]`: the optional
/// field is the round or step the message belongs to; `[replay]` marks a kind whose handling
/// re-does a training the receiver logs ([`Message::REPLAYED`](crate::wire::Message::REPLAYED)).
/// A field's type is written with [`Plain`] unless it names another [`Codec`]
/// (`field: Type as Codec`).
#[macro_export]
macro_rules! protocol {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            protocol: $proto:literal, tag: $tag:literal, version: $version:literal;
            $(
                $(#[$vmeta:meta])*
                $variant:ident($kind:literal, $kname:literal $(, round = $round:ident)?)
                $([$replay:ident])? {
                    $( $(#[$fmeta:meta])* $field:ident : $fty:ty $(as $codec:ty)? ),* $(,)?
                }
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant { $( $(#[$fmeta])* $field: $fty, )* },
            )*
        }

        impl $crate::wire::Message for $name {
            const PROTOCOL: &'static str = $proto;
            const TAG: u8 = $tag;
            const VERSION: u8 = $version;
            const REPLAYED: &'static [&'static str] =
                $crate::__replayed!([] $( ($kname $($replay)?) )*);

            fn kind(&self) -> &'static str {
                match self {
                    $( Self::$variant { .. } => $kname, )*
                }
            }

            fn round(&self) -> Option<u64> {
                match self {
                    $(
                        Self::$variant { $($round,)? .. } => {
                            $crate::wire::round_of(&[$( $crate::wire::step_of($round) )?])
                        }
                    )*
                }
            }

            fn encoded_len(&self) -> usize {
                match self {
                    $(
                        Self::$variant { $($field),* } => {
                            1 $( + <$crate::__wire_codec!($fty $(, $codec)?)
                                    as $crate::wire::Codec<$fty>>::size($field) )*
                        }
                    )*
                }
            }

            fn encode(&self, w: &mut $crate::wire::Writer) {
                match self {
                    $(
                        Self::$variant { $($field),* } => {
                            w.u8($kind);
                            $( <$crate::__wire_codec!($fty $(, $codec)?)
                                as $crate::wire::Codec<$fty>>::write($field, w); )*
                        }
                    )*
                }
            }

            fn decode(
                r: &mut $crate::wire::Reader<'_>,
                limits: &$crate::wire::Limits,
            ) -> Result<Self, $crate::wire::WireError> {
                let _ = limits;
                Ok(match r.u8("kind")? {
                    $(
                        $kind => Self::$variant {
                            $( $field: <$crate::__wire_codec!($fty $(, $codec)?)
                                as $crate::wire::Codec<$fty>>::read(r, stringify!($field), limits)?, )*
                        },
                    )*
                    k => return Err($crate::wire::unknown_kind($proto, k)),
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(labels: &[u32]) -> Vec<u8> {
        let mut w = Writer::new();
        Labels::write(&labels.to_vec(), &mut w);
        let bytes = w.into_vec();
        assert_eq!(bytes.len(), Labels::size(&labels.to_vec()));
        bytes
    }

    fn decode(bytes: &[u8], max: usize) -> Result<Vec<u32>, WireError> {
        let mut r = Reader::new(bytes);
        Labels::read(&mut r, "labels", &Limits::new(max))
    }

    #[test]
    fn labels_below_256_keep_the_one_byte_layout_and_wider_ones_take_four() {
        assert_eq!(encode(&[1, 2, 255]), [3, 0, 0, 0, 1, 2, 255]);
        assert_eq!(decode(&encode(&[1, 2, 255]), 3).unwrap(), [1, 2, 255]);
        let wide = encode(&[1, 999]);
        assert_eq!(wide, [2, 0, 0, 0x80, 1, 0, 0, 0, 0xe7, 3, 0, 0]);
        assert_eq!(decode(&wide, 2).unwrap(), [1, 999]);
        // The wide form of labels that fit a byte is refused: one encoding per set of labels.
        let mut w = Writer::new();
        w.u32(2 | WIDE_LABELS);
        w.u32(1);
        w.u32(2);
        assert!(matches!(
            decode(&w.into_vec(), 2),
            Err(WireError::Malformed(_))
        ));
        // Counts are bounded before anything is read, and cuts are refused.
        assert!(matches!(decode(&wide, 1), Err(WireError::TooLarge { .. })));
        assert!(decode(&wide[..wide.len() - 1], 2).is_err());
    }
}
